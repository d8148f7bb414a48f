"""Raw LXC, for the CLI: its tools, run as subprocesses, never parsed as tables."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from . import locks
from .errors import Conflict, NotFound, PycorError
from .flatjson import Record
from .layer import PYCOR_DIR, is_layer, rootfs_dir
from .lxcconfig import check_value, line, read_keys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import ContainerSpec


def run_tool(argv: list[str], check: bool = True, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, pass_fds=pass_fds)
    except FileNotFoundError:
        raise PycorError(f"{argv[0]} is not installed", "install LXC: apt-get install lxc") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PycorError(f"{' '.join(argv[:3])} failed: {detail[-1] if detail else 'exit ' + str(proc.returncode)}")
    return proc


def default_lxcpath() -> str:
    return run_tool(["lxc-config", "lxc.lxcpath"]).stdout.strip() or "/var/lib/lxc"


class LxcContainer(Record):
    __slots__ = ("name", "lxcpath", "rootfs")
    name: str
    lxcpath: str
    rootfs: str


def config_rootfs(config: str) -> str | None:
    """The rootfs directory an LXC config names (its last lxc.rootfs.path), or None."""
    values = read_keys(config).get("lxc.rootfs.path")
    return rootfs_dir(values[-1]) if values else None


def containers(lxcpath: str) -> list[LxcContainer]:
    """pycor containers in an lxcpath: those whose rootfs holds a pycor layer."""
    found = []
    try:
        names = sorted(os.listdir(lxcpath))
    except FileNotFoundError:
        return []
    for name in names:
        config = os.path.join(lxcpath, name, "config")
        if not os.path.isfile(config):
            continue
        try:
            rootfs = config_rootfs(config)
        except (OSError, PycorError):
            continue
        if rootfs and is_layer(rootfs):
            found.append(LxcContainer(name, lxcpath, rootfs))
    return found


def state(name: str, lxcpath: str) -> str:
    proc = run_tool(["lxc-info", "-n", name, "-P", lxcpath, "-s", "-H"], check=False)
    return proc.stdout.strip() or "UNKNOWN"


def exists(name: str, lxcpath: str) -> bool:
    return os.path.exists(os.path.join(lxcpath, name, "config"))


def check_free(name: str, lxcpath: str, base: str, rootfs: str | None = None, adopt: bool = False) -> str:
    """Refuse, before lxc-create runs, anything its failure cleanup would delete; return the rootfs.

    lxc-create removes the container directory and a --dir rootfs when its
    template fails, whatever they held before. The caller holds the name lock.
    """
    path = os.path.join(lxcpath, name)
    rootfs = os.path.abspath(rootfs) if rootfs else os.path.join(path, "rootfs")
    if os.path.lexists(os.path.join(path, "config")):
        raise Conflict(f"container {name!r} already exists in {lxcpath}", "pick another name, or 'pycor rm' it first")
    if adopt:
        if not os.path.lexists(os.path.join(rootfs, PYCOR_DIR)):
            raise NotFound(f"nothing to adopt: {rootfs} holds no pycor layer", "drop --adopt to create a new container")
        return rootfs
    if os.path.lexists(os.path.join(rootfs, PYCOR_DIR)):
        raise Conflict(f"{rootfs} holds the changes of a container whose LXC config is missing",
                       f"re-create the container around them, keeping them: pycor create {name} --base {base} --adopt"
                       + (f" --dir {rootfs}" if rootfs != os.path.join(path, "rootfs") else ""))
    if os.path.lexists(path):
        raise Conflict(f"{path} already exists, and lxc-create would delete it if creating failed",
                       "move it away, or pick another name")
    if os.path.lexists(rootfs) and (not os.path.isdir(rootfs) or os.path.islink(rootfs) or os.listdir(rootfs)):
        raise Conflict(f"--dir {rootfs} is not an empty directory, and lxc-create would delete it if creating failed",
                       "pass a new or empty directory")
    return rootfs


def template_error(stderr: str, returncode: int) -> PycorError:
    """The template's own 'error:' and 'hint:' lines, else lxc-create's last line."""
    said = {kind: [line.split(f"lxc-pycor: {kind}: ", 1)[1] for line in stderr.splitlines() if f"lxc-pycor: {kind}: " in line]
            for kind in ("error", "hint")}
    if said["error"]:
        return PycorError(said["error"][-1], said["hint"][-1] if said["hint"] else None)
    lines = stderr.strip().splitlines()
    return PycorError(f"lxc-create failed: {lines[-1] if lines else 'exit ' + str(returncode)}")


def create(want: ContainerSpec, lxcpath: str, template: str, store_arg: str | None = None,
           check: Callable[[str], None] | None = None, backing: str | None = None) -> None:
    """lxc-create -t pycor, refusing first whatever its failure cleanup would delete.

    Holds the name lock from the check to the end of lxc-create, so two
    creates of one name never both pass the check (the loser's cleanup would
    remove the winner's directory). check(rootfs) runs under it too.
    """
    name = want.name
    with locks.name_lock(lxcpath, name) as held:
        rootfs = check_free(name, lxcpath, want.base, want.rootfs, want.adopt)
        if check:
            check(rootfs)
        argv = ["lxc-create", "-n", name, "-P", lxcpath, "-t", template]
        if rootfs != os.path.join(lxcpath, name, "rootfs"):
            argv += ["-B", "dir", "--dir", rootfs]
        elif backing:
            argv += ["-B", backing]  # btrfs: the rootfs a subvolume, for its quota
        conf = None
        if want.network == "none":
            import tempfile

            fd, conf = tempfile.mkstemp(prefix="pycor-", suffix=".conf")
            with os.fdopen(fd, "w") as f:
                f.write(line("lxc.net.0.type", "empty") + "\n")
            argv += ["-f", conf]
        argv += ["--", *want.template_args()]
        if store_arg:
            argv += ["--store", check_value(store_arg, "--store")]
        try:
            # lxc-create holds the lock too: if this process is killed, no other create slips in while it runs
            proc = run_tool(argv, check=False, pass_fds=(held.fd,))
        finally:
            if conf:
                os.unlink(conf)
    if proc.returncode != 0:
        raise template_error(proc.stderr, proc.returncode)
