"""Raw LXC, for the CLI: its tools, run as subprocesses, never parsed as tables."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass

from . import faults
from .errors import PycorError
from .layer import is_layer, rootfs_dir


def run_tool(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise PycorError(f"{argv[0]} is not installed", "install LXC: apt-get install lxc") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PycorError(f"{' '.join(argv[:3])} failed: {detail[-1] if detail else 'exit ' + str(proc.returncode)}")
    return proc


def default_lxcpath() -> str:
    return run_tool(["lxc-config", "lxc.lxcpath"]).stdout.strip() or "/var/lib/lxc"


@dataclass
class LxcContainer:
    name: str
    lxcpath: str
    rootfs: str


def config_rootfs(config: str) -> str | None:
    with open(config, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.partition("=")
            if sep and key.strip() == "lxc.rootfs.path":
                return rootfs_dir(value.strip())
    return None


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


def create(name: str, base: str, lxcpath: str, template: str, pin: str | None = None,
           network: str = "default", store: str | None = None, unprivileged: bool = False) -> None:
    if exists(name, lxcpath):
        raise PycorError(f"container {name!r} already exists in {lxcpath}", "pick another name, or 'pycor rm' it first")
    argv = ["lxc-create", "-n", name, "-P", lxcpath, "-t", template]
    conf = None
    if network == "none":
        fd, conf = tempfile.mkstemp(prefix="pycor-", suffix=".conf")
        with os.fdopen(fd, "w") as f:
            f.write("lxc.net.0.type = empty\n")
        argv += ["-f", conf]
    argv += ["--", "--base", base]
    if pin:
        argv += ["--pin", pin]
    if store:
        argv += ["--store", store]
    if unprivileged:
        argv += ["--unprivileged"]
    try:
        proc = run_tool(argv, check=False)
    finally:
        if conf:
            os.unlink(conf)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "lxc-pycor:" in line] or proc.stderr.strip().splitlines()
        raise PycorError(lines[-1].split("lxc-pycor: ", 1)[-1] if lines else f"lxc-create failed (exit {proc.returncode})")


def destroy(name: str, lxcpath: str, force: bool = False) -> None:
    if not exists(name, lxcpath):
        raise PycorError(f"no container {name!r} in {lxcpath}", "'pycor ls' lists them")
    if state(name, lxcpath) != "STOPPED":
        if not force:
            raise PycorError(f"container {name!r} is running", f"stop it first (lxc-stop -n {name}) or use --force")
        run_tool(["lxc-stop", "-n", name, "-P", lxcpath, "-k"], check=False)
    faults.point("rm.stopped")
    run_tool(["lxc-destroy", "-n", name, "-P", lxcpath])
