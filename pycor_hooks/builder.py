"""Builders: throwaway LXC containers on a base's current version whose upper becomes its next version.

`pycor base update` runs one command in a builder; `pycor base shell` opens
an interactive shell in one; `pycor base edit` keeps one running for any tool
to provision (lxc-attach, Ansible or Puppet over LXC's tools) until
`pycor base publish` or `pycor base discard`.

What a builder publishes is lean: what the command changed in the system,
not its build caches (downloaded .deb files, apt's binary caches and package
lists, dpkg's and debconf's -old backups, the builder's logs), and no file it
rewrote unchanged.
Accounts it creates take ids from the base's range, containers' from theirs
(merge.id_ranges), so a base update and a container never hand one id to two
names.

Not a hot path: the CLI uses this, never a hook.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time

from . import layer as layers
from . import linux
from .errors import InUse, NotFound, PycorError
from .flatjson import read_json, write_json
from .fsutil import same_content, walk
from .layer import LayerMeta
from .lxcconfig import LXC_CONFIG_DIR, hook_lines, line
from .store import Store, hooks_dir

BUILDER = "builder"
EDIT_RECORD = "edit.json"  # bases/NAME/edit.json while an edit session runs

# Build caches a version never carries (paths in a layer; a trailing '/' means every file directly inside).
APT_LISTS = "var/lib/apt/lists/"
BUILD_CACHES = (
    "var/cache/apt/archives/",
    "var/cache/apt/archives/partial/",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    # the builder's own logs: a container keeps its own; a version records its command (base versions)
    "var/log/",
    "var/log/apt/",
)
KEEP_IN_LISTS = ("lock", "partial", "auxfiles")


def _lower_file(stack: list[str], rel: str) -> tuple[int, os.stat_result] | None:
    """The regular file the stack shows at rel, opened (O_RDONLY) with its stat; None otherwise."""
    from .diff import LowerStack

    lower = LowerStack(stack)
    try:
        found = lower.find(rel)
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return None
        try:
            return linux.open_beneath(found[0], rel, os.O_RDONLY | os.O_NONBLOCK), found[1]
        except OSError:
            return None
    finally:
        lower.close()


def _read_lower(stack: list[str], rel: str) -> bytes | None:
    found = _lower_file(stack, rel)
    if found is None:
        return None
    with os.fdopen(found[0], "rb") as f:
        return f.read(1 << 20)


# -- the builder container ---------------------------------------------------------------


def builder_config(store: Store, base: str, rootfs: str, stack: list[str], extra: list[str]) -> str:
    lines = [
        line("lxc.rootfs.path", f"dir:{rootfs}"),
        line("lxc.include", os.path.join(LXC_CONFIG_DIR, "common.conf")),
        line("lxc.net.0.type", "none"),  # the host's network, for apt-get and the like
        line("lxc.uts.name", "pycor-builder"),
        *hook_lines(hooks_dir(), store.hook_arg, privileged=True),
        *store.base(base).lxc,
        *extra,
    ]
    if _lower_file(stack, "etc/resolv.conf") is not None:
        lines.append(line("lxc.mount.entry", "/etc/resolv.conf etc/resolv.conf none bind,ro 0 0"))
    return "\n".join(lines) + "\n"


def _id_range_mounts(staging: str, stack: list[str]) -> list[str]:
    """Bind the base's id ranges over login.defs and adduser.conf inside the builder (the files in the layer stay the containers')."""
    from . import merge

    lines = []
    for rel, rewrite in (("etc/login.defs", merge.login_defs_for), ("etc/adduser.conf", merge.adduser_conf_for)):
        data = _read_lower(stack, rel)
        if data is None:
            continue
        path = os.path.join(staging, os.path.basename(rel))
        with open(path, "wb") as f:
            f.write(rewrite("base", data))
        os.chmod(path, 0o644)
        lines.append(line("lxc.mount.entry", f"{path} {rel} none bind,ro 0 0"))
    return lines


def prepare(store: Store, base: str, staging: str, version: str, stack: list[str]) -> str:
    """Make a builder container under staging/lxc on version; returns its lxcpath."""
    lxcpath = os.path.join(staging, "lxc")
    rootfs = os.path.join(lxcpath, BUILDER, "rootfs")
    os.makedirs(rootfs, mode=0o755)
    os.chmod(staging, 0o755)  # the builder's hooks run as root; nothing unprivileged enters
    layers.create_layer(rootfs, LayerMeta(base, version, version))
    with open(os.path.join(lxcpath, BUILDER, "config"), "w", encoding="utf-8") as f:
        f.write(builder_config(store, base, rootfs, stack, _id_range_mounts(staging, stack)))
    return lxcpath


def execute(lxcpath: str, argv: list[str], interactive: bool = False) -> int:
    """Run argv in the builder (lxc-execute); interactive keeps the terminal."""
    stdin = None if interactive else subprocess.DEVNULL
    return subprocess.run(["lxc-execute", "-n", BUILDER, "-P", lxcpath, "--", *argv], stdin=stdin).returncode


def start_detached(lxcpath: str) -> None:
    """Keep the builder running (a sleeping init under lxc-init) for other tools to provision."""
    proc = subprocess.run(["lxc-execute", "-d", "-n", BUILDER, "-P", lxcpath, "--", "/bin/sh", "-c",
                           "trap 'exit 0' TERM INT PWR; while :; do sleep 3600 & wait $!; done"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PycorError(f"the builder did not start: {(proc.stderr or proc.stdout).strip()[-300:]}",
                         "run 'pycor doctor'; the base's current version must start as a container")
    subprocess.run(["lxc-wait", "-n", BUILDER, "-P", lxcpath, "-s", "RUNNING", "-t", "30"], capture_output=True)


def running(lxcpath: str) -> bool:
    if not os.path.exists(os.path.join(lxcpath, BUILDER, "config")):
        return False
    out = subprocess.run(["lxc-info", "-n", BUILDER, "-P", lxcpath, "-s", "-H"], capture_output=True, text=True).stdout
    return out.strip() not in ("", "STOPPED")


def stop(lxcpath: str) -> None:
    """Stop a builder if it runs (kill: it holds no state worth a clean shutdown)."""
    if running(lxcpath):
        subprocess.run(["lxc-stop", "-n", BUILDER, "-P", lxcpath, "-k"], capture_output=True)


# -- turning the builder's upper into a lean layer ------------------------------------


def _strip(upper: int, keep_apt_lists: bool) -> int:
    """Remove build caches from an upper directory (fd); returns how many entries went."""
    removed = 0
    for pattern in BUILD_CACHES + (() if keep_apt_lists else (APT_LISTS,)):
        if pattern.endswith("/"):
            try:
                dfd = linux.open_beneath(upper, pattern.rstrip("/"), os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                for name in os.listdir(dfd):
                    if pattern == APT_LISTS and name in KEEP_IN_LISTS:
                        continue
                    if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=dfd)
                        removed += 1
            finally:
                os.close(dfd)
        else:
            head, _, name = pattern.rpartition("/")
            try:
                dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                os.unlink(name, dir_fd=dfd)
                removed += 1
            except (FileNotFoundError, IsADirectoryError):
                pass
            finally:
                os.close(dfd)
    return removed


def _same_as_lower(parent: int, name: str, st: os.stat_result, stack: list[str], rel: str) -> bool:
    found = _lower_file(stack, rel)
    if found is None:
        return False
    fd, lst = found
    try:
        if (lst.st_mode, lst.st_uid, lst.st_gid, lst.st_size) != (st.st_mode, st.st_uid, st.st_gid, st.st_size):
            return False
        mine = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        try:
            return same_content(fd, mine)
        finally:
            os.close(mine)
    finally:
        os.close(fd)


def _drop_unchanged(upper: int, stack: list[str]) -> int:
    """Files a command rewrote with the same content, mode and owner are not changes: drop their copy-up."""
    doomed = []
    for rel, st, parent, name in walk(upper, strict=False):
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and _same_as_lower(parent, name, st, stack, rel):
            doomed.append(rel)
    for rel in doomed:
        head, _, name = rel.rpartition("/")
        dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(upper)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
    return len(doomed)


def _container_ranges(upper: int, stack: list[str]) -> None:
    """The layer carries login.defs and adduser.conf with the containers' id ranges (if the base has them)."""
    from . import merge

    for rel, rewrite in (("etc/login.defs", merge.login_defs_for), ("etc/adduser.conf", merge.adduser_conf_for)):
        try:
            fd = linux.open_beneath(upper, rel, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                current: bytes | None = f.read(1 << 20)
        except FileNotFoundError:
            current = _read_lower(stack, rel)
        except OSError:
            continue  # not a plain file: leave it as the command made it
        if current is None:
            continue
        wanted = rewrite("container", current)
        if wanted == current:
            continue
        head, _, name = rel.rpartition("/")  # head is "etc": one level
        try:
            os.mkdir(head, 0o755, dir_fd=upper)
        except FileExistsError:
            pass
        dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY)
        try:
            tmp = f".{name}.pycor-new"
            wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            with os.fdopen(wfd, "wb") as f:
                f.write(wanted)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)


def set_container_ranges(rootfs: str) -> None:
    """Give a new base's login.defs and adduser.conf the containers' id ranges (builders bind the base's over them)."""
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _container_ranges(fd, [])
    finally:
        os.close(fd)


def finish_layer(upper_path: str, stack: list[str], keep_apt_lists: bool = False) -> bool:
    """Make a builder's upper a lean layer in place; False when nothing is left to publish."""
    upper = os.open(upper_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _strip(upper, keep_apt_lists)
        _drop_unchanged(upper, stack)
        if not os.listdir(upper):
            return False
        _container_ranges(upper, stack)
        return True
    finally:
        os.close(upper)


# -- edit sessions -----------------------------------------------------------------------


def edit_record(store: Store, base: str) -> dict | None:
    try:
        return read_json(os.path.join(store.base_dir(base), EDIT_RECORD))
    except FileNotFoundError:
        return None


def require_no_edit(store: Store, base: str) -> None:
    rec = edit_record(store, base)
    if rec is not None:
        raise InUse(f"base {base} is being edited (pycor base edit, since {time.strftime('%Y-%m-%d %H:%M', time.localtime(float(rec.get('started', 0))))})",
                    f"finish it first: 'pycor base publish {base}' or 'pycor base discard {base}'")


def save_edit(store: Store, base: str, staging: str, version: str) -> None:
    write_json(os.path.join(store.base_dir(base), EDIT_RECORD), {"staging": staging, "version": version, "started": time.time()}, mode=0o600)


def end_edit(store: Store, base: str) -> None:
    try:
        os.unlink(os.path.join(store.base_dir(base), EDIT_RECORD))
    except FileNotFoundError:
        pass


def edit_staging(store: Store, base: str) -> tuple[str, str]:
    """(staging dir, version) of the running edit session, checked to be one of the store's staging dirs."""
    rec = edit_record(store, base)
    if rec is None:
        raise NotFound(f"base {base} has no edit session", f"start one with 'pycor base edit {base}'")
    staging = str(rec.get("staging", ""))
    if os.path.dirname(staging) != store.staging_dir or not os.path.isdir(staging):
        raise PycorError(f"the edit record of base {base} names {staging!r}, not a staging directory of this store",
                         f"remove {os.path.join(store.base_dir(base), EDIT_RECORD)} and start again")
    return staging, str(rec.get("version", ""))
