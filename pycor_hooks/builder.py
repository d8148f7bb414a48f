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

import collections
import contextlib
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, NamedTuple

from . import layer as layers
from . import linux
from .diff import LowerStack
from .errors import InUse, NotFound, PycorError
from .flatjson import read_json, write_json
from .fsutil import same_content, walk
from .layer import LayerMeta
from .lxcconfig import LXC_CONFIG_DIR, hook_lines, line
from .overlay import OPAQUE_XATTRS, is_opaque
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
    return "\n".join(lines) + "\n"


# -- what a builder sees that its layer never carries --------------------------------------

# A builder's /run is a tmpfs, as in every booted Debian: what a command writes there is runtime
# state, never part of a version. The host's name servers are bound where the base's
# /etc/resolv.conf leads (systemd-resolved's stub is a link into /run), and pycor's files for the
# builder are bound under /run too: none of them is a mount point in the layer.
BUILDER_FILES = "run/pycor-builder"  # apt.conf and policy-rc.d, bound read-only from staging
BUILDER_APT = "run/pycor-apt"  # apt's lists and download cache, bound from staging (on disk: downloads can be large)
FILES_DIR, APT_DIR = "builder-files", "builder-apt"  # their sources in the staging directory
# apt reads APT_CONFIG first, then /etc/apt: nothing in the base is changed to configure it.
# - a fetch that fails (a name not resolved, a mirror unreachable) fails apt-get update (exit 100,
#   "E: Failed to fetch") instead of a warning over old lists (apt >= 2.1.16: bookworm's 2.6, trixie's 3.0);
# - no question on a changed conffile: the default answer, else the installed file (the new one as .dpkg-dist);
# - lists and downloads in APT_DIR: the builder never reads an earlier version's lists, and they
#   reach the layer only with --keep-apt-lists.
BUILDER_APT_CONF = f"""\
// pycor builder: read through APT_CONFIG, never part of a version
APT::Update::Error-Mode "any";
Dpkg::Options {{ "--force-confdef"; "--force-confold"; }};
Dir::State::Lists "/{BUILDER_APT}/lists/";
Dir::Cache "/{BUILDER_APT}/cache/";
"""
POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_RC_D_TEXT = "#!/bin/sh\n# pycor builder: no service starts while a version is built\nexit 101\n"
MAX_LINKS = 40  # symlinks followed to find where a path of the base leads (the kernel's own limit)
_MOUNT_TARGET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-/")


def resolve_lower(stack: list[str], rel: str) -> tuple[str, os.stat_result | None] | None:
    """Where rel leads in the base, its symlinks followed inside the base (never on the host):
    (the path it ends at, its lstat or None when nothing is there); None for too many links or '/'."""
    lower = LowerStack(stack)
    try:
        parts = [p for p in rel.split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            here = "/".join([*done, part])
            found = lower.find(here)
            if found is not None and stat.S_ISLNK(found[1].st_mode):
                hops += 1
                if hops > MAX_LINKS:
                    return None
                target = _readlink_beneath(found[0], here)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            done.append(part)
            if found is None and parts:
                return "/".join(done + parts), None  # a directory on the way is missing: nothing is there
        final = "/".join(done)
        if not final:
            return None
        found = lower.find(final)
        return final, (found[1] if found else None)
    finally:
        lower.close()


def _readlink_beneath(layer: int, rel: str) -> str:
    head, _, name = rel.rpartition("/")
    fd = linux.open_beneath(layer, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=layer)
    try:
        return os.readlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def runtime_mounts(stack: list[str], staging: str) -> list[str]:
    """The builder's tmpfs /run, pycor's files for apt, policy-rc.d, and the host's name servers where
    the base's /etc/resolv.conf leads."""
    lines = [
        line("lxc.mount.entry", "tmpfs run tmpfs rw,nosuid,nodev,mode=0755,create=dir 0 0"),
        line("lxc.mount.entry", "tmpfs run/lock tmpfs rw,nosuid,nodev,noexec,mode=1777,create=dir 0 0"),
        line("lxc.mount.entry", f"{os.path.join(staging, FILES_DIR)} {BUILDER_FILES} none bind,ro,create=dir 0 0"),
        line("lxc.mount.entry", f"{os.path.join(staging, APT_DIR)} {BUILDER_APT} none bind,create=dir 0 0"),
        line("lxc.environment", f"APT_CONFIG=/{BUILDER_FILES}/apt.conf"),
    ]
    lower = LowerStack(stack)
    try:
        own_policy = lower.find(POLICY_RC_D) is not None
    finally:
        lower.close()
    if not own_policy:  # a base's own policy-rc.d stays in force
        lines.append(line("lxc.mount.entry", f"{os.path.join(staging, FILES_DIR, 'policy-rc.d')} {POLICY_RC_D} none bind,ro,create=file 0 0"))
    where = resolve_lower(stack, "etc/resolv.conf")
    if where is not None and set(where[0]) <= _MOUNT_TARGET_CHARS:
        rel, st = where
        if rel.startswith("run/"):  # on the builder's tmpfs: the mount point never reaches the layer
            lines.append(line("lxc.mount.entry", f"/etc/resolv.conf {rel} none bind,ro,create=file 0 0"))
        elif st is not None and stat.S_ISREG(st.st_mode):
            lines.append(line("lxc.mount.entry", f"/etc/resolv.conf {rel} none bind,ro 0 0"))
        # else: a link to nothing outside /run; apt-get update then fails, and says so
    return lines


def write_builder_files(staging: str) -> None:
    """pycor's files for a builder in its staging directory: apt.conf and policy-rc.d (FILES_DIR),
    apt's lists and cache folders (APT_DIR)."""
    files = os.path.join(staging, FILES_DIR)
    os.mkdir(files, 0o755)
    for name, text, mode in (("apt.conf", BUILDER_APT_CONF, 0o644), ("policy-rc.d", POLICY_RC_D_TEXT, 0o755)):
        path = os.path.join(files, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
    for sub in ("", "lists", "lists/partial", "cache", "cache/archives", "cache/archives/partial"):
        path = os.path.join(staging, APT_DIR, sub)
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)


# What apt prints on stderr for each fetch that failed: "E: Failed to fetch URL  REASON" (apt 3
# may spell the level out; W: when apt-get update only warns).
_FETCH_FAILED = re.compile(rb"(?:E|W|Error|Warning): Failed to fetch (\S+)\s*(.*)")
MAX_UNREACHED = 5  # the last ones a message names
MAX_LINE = 1 << 16
MAX_RELAYED = 16 << 20  # bytes of a builder's or container's output relayed; the rest is read and dropped


def shown(data: bytes) -> str:
    """What a container's programs printed, as it may reach the admin's terminal: UTF-8 (else U+FFFD), every
    character a terminal could act on (C0 and C1 controls, escapes, format characters) but tab and newline '?'."""
    text = data.decode("utf-8", "replace")
    return text if text.isprintable() else "".join(c if c.isprintable() or c in "\t\n" else "?" for c in text)


EXEC_TAIL = 4096  # bytes of what a command run in a container printed that run_bounded keeps
PIPE_GRACE = 10  # s its output may go on after the command ended, before hung() is called to end it


class Ran(NamedTuple):
    """What a command run in a container did (run_bounded, Runtime.exec)."""

    rc: int | None  # its exit status; None: it did not end in time and was killed
    tail: str  # the end of what it printed, control characters shown as '?' (nothing when relayed)
    unreached: list[str]  # relayed: what apt said it could not fetch
    hung: bool = False  # its output stayed open after it ended: hung() was called (the container stopped)


def run_bounded(cmd: list[str], env: dict[str, str] | None, seconds: float, relay: bool,
                hung: Callable[[], None]) -> Ran:
    """Run cmd, a command that runs something in a container, its output and errors through one pipe: relayed
    to our stderr (relay_stderr) or kept, the last EXEC_TAIL bytes. Bounded whatever the container does: its
    output is never held whole, a command that does not end within seconds is killed (status None), and if
    the pipe stays open PIPE_GRACE s after it ended (lxc-attach hands the pipe itself to the container, whose
    processes may keep it), hung() is called to end them (stop the container)."""
    import threading

    sys.stderr.flush()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out, tail, unreached = proc.stdout, bytearray(), []

    def read() -> None:
        if relay:
            unreached.extend(relay_stderr(out))
            return
        while chunk := os.read(out.fileno(), 1 << 16):
            tail.extend(chunk)
            del tail[:-EXEC_TAIL]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        rc = None
        proc.kill()
        proc.wait()
    reader.join(PIPE_GRACE)
    held = reader.is_alive()
    if held:
        try:
            hung()
        finally:
            reader.join(PIPE_GRACE)  # a stopped container's processes are gone and the pipe with them
    if not reader.is_alive():  # else left to the daemon thread: closing a pipe it reads would not wake it
        out.close()
    return Ran(rc, shown(bytes(tail)).strip(), unreached, held)


def relay_stderr(stream: IO[bytes]) -> list[str]:
    """Copy a builder's stderr to ours as it comes (to EOF), control characters shown as '?'; return what apt
    said it could not fetch, as 'URL (REASON)': the last MAX_UNREACHED, each at most 300 characters."""
    out = getattr(sys.stderr, "buffer", None)
    seen: collections.OrderedDict[str, None] = collections.OrderedDict()
    budget = MAX_RELAYED
    while chunk := stream.readline(MAX_LINE):
        budget -= len(chunk)
        if budget < 0:  # past it, only drained: showing costs CPU, and no one reads that much
            if budget + len(chunk) >= 0:
                sys.stderr.write(f"... (more than {MAX_RELAYED >> 20} MiB of output: the rest is not shown)\n")
            continue
        chunk = shown(chunk).encode()
        if out is not None:
            out.write(chunk)
            out.flush()
        else:
            sys.stderr.write(chunk.decode("utf-8", "replace"))
        m = _FETCH_FAILED.fullmatch(chunk.rstrip(b"\r\n"))
        if m:
            url, why = (g.decode("utf-8", "replace") for g in m.groups())
            text = "".join(c if c.isprintable() else "?" for c in (f"{url} ({why})" if why else url))[:300]
            seen.pop(text, None)
            seen[text] = None
            while len(seen) > MAX_UNREACHED:
                seen.popitem(last=False)
    return list(seen)


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
    write_builder_files(staging)
    with open(os.path.join(lxcpath, BUILDER, "config"), "w", encoding="utf-8") as f:
        f.write(builder_config(store, base, rootfs, stack, _id_range_mounts(staging, stack) + runtime_mounts(stack, staging)))
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
    """Files a command rewrote with the same content, mode and owner are not changes: drop their copy-up.

    Not below an opaque directory: there the lower's copy does not show, so the file is no copy-up
    but the only one (a directory removed and made again, as dpkg does on a purge and install)."""
    doomed = []
    hidden: list[str] = []  # opaque directories of the upper (what _clear_harmless_opaque left)
    for rel, st, parent, name in walk(upper, strict=False):
        if any(rel.startswith(h + "/") for h in hidden):
            continue
        if stat.S_ISDIR(st.st_mode):
            if _opaque_at(parent, name):
                hidden.append(rel)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and _same_as_lower(parent, name, st, stack, rel):
            doomed.append(rel)
    for rel in doomed:
        head, _, name = rel.rpartition("/")
        dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(upper)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
    return len(doomed)


# A builder is a privileged overlay: only trusted.overlay.* xattrs mean something in its upper
# (a base layer's user.overlay.opaque comes along with a copy-up as a plain xattr).
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_NOT_PLAIN_DIR = ("trusted.overlay.redirect", "trusted.overlay.origin")  # a renamed or indexed directory


def _open_dir_at(parent: int, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def _opaque_at(parent: int, name: str) -> bool:
    fd = _open_dir_at(parent, name)
    try:
        return is_opaque(fd, userxattr=False)
    finally:
        os.close(fd)


def _clear_harmless_opaque(upper: int, stack: list[str]) -> int:
    """Opaque marks on directories that hide nothing of the parent version go: the directory then
    merges like any other. dpkg makes a new directory as NAME.dpkg-new and renames it, and a
    directory renamed into a merged one is marked opaque. Kept: one that hides something of the
    parent version (removed and made again), and one with a redirect or an origin."""
    lower = LowerStack(stack)
    kept: list[str] = []
    cleared = 0
    try:
        for rel, st, parent, name in walk(upper, strict=False):
            if not stat.S_ISDIR(st.st_mode) or any(rel.startswith(k + "/") for k in kept):
                continue
            fd = _open_dir_at(parent, name)
            try:
                if not is_opaque(fd, userxattr=False):
                    continue
                low = lower.lookup(rel)
                if set(os.listxattr(fd)) & set(_NOT_PLAIN_DIR) or (low is not None and not _empty_lower_dir(lower, rel, low)):
                    kept.append(rel)
                    continue
                for attr in OPAQUE_XATTRS:
                    with contextlib.suppress(OSError):
                        os.removexattr(fd, attr)
                cleared += 1
            finally:
                os.close(fd)
    finally:
        lower.close()
    return cleared


def _empty_lower_dir(lower: LowerStack, rel: str, st: os.stat_result) -> bool:
    """Whether the lower stack's entry at rel is a directory with nothing in it, in any layer (a
    layer's whiteouts count as something: the answer errs on the side of keeping a mark)."""
    if not stat.S_ISDIR(st.st_mode):
        return False
    for layer in lower.fds:
        try:
            fd = linux.open_beneath(layer, rel, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            if os.listdir(fd):
                return False
        finally:
            os.close(fd)
    return True


# apt's own folders: apt sets their mode and owner itself (partial/ is _apt's, 0700), so an empty
# copy of one in the upper is no change whatever its mode.
_APT_DIRS = frozenset(p.rstrip("/") for p in (*BUILD_CACHES, APT_LISTS, APT_LISTS + "partial/", "var/cache/apt/"))


def _prune_empty_dirs(upper: int, stack: list[str]) -> int:
    """Directories left empty in the upper with the base's mode, owner and xattrs (copied up for a
    file that was then removed, stripped or dropped) are not changes: they go, deepest first.
    Opaque ones stay (they hide the base's), and so do new ones (a directory the command made)."""
    dirs = [(rel, st) for rel, st, _, _ in walk(upper, strict=False) if stat.S_ISDIR(st.st_mode)]
    lower = LowerStack(stack)
    removed = 0
    try:
        for rel, st in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
            found = lower.find(rel)
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                continue
            low = found[1]
            head, _, name = rel.rpartition("/")
            try:
                dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(upper)
            except OSError:
                continue
            try:
                fd = _open_dir_at(dfd, name)
                try:
                    if os.listdir(fd) or is_opaque(fd, userxattr=False):
                        continue
                    if rel not in _APT_DIRS:
                        if (low.st_mode, low.st_uid, low.st_gid) != (st.st_mode, st.st_uid, st.st_gid):
                            continue
                        lfd = linux.open_beneath(found[0], rel, os.O_RDONLY | os.O_DIRECTORY)
                        try:
                            if _plain_xattrs(lfd) != _plain_xattrs(fd):
                                continue
                        finally:
                            os.close(lfd)
                finally:
                    os.close(fd)
                os.rmdir(name, dir_fd=dfd)
                removed += 1
            except OSError:
                continue  # changed while we looked, or unreadable: keep it
            finally:
                os.close(dfd)
    finally:
        lower.close()
    return removed


def _plain_xattrs(fd: int) -> dict[str, bytes]:
    """A file's xattrs but overlayfs's own (ACLs, capabilities, security labels, user data)."""
    return {a: os.getxattr(fd, a) for a in os.listxattr(fd) if not a.startswith(_OVERLAY_XATTRS)}


def _drop_mount_points(upper: int, stack: list[str]) -> None:
    """What LXC made in the upper only to mount on: the empty policy-rc.d it binds pycor's over, and
    /run if the base has none (everything else of the builder's lands on the /run tmpfs)."""
    lower = LowerStack(stack)
    try:
        for rel, is_dir in ((POLICY_RC_D, False), ("run", True)):
            if lower.find(rel) is not None:
                continue
            head, _, name = rel.rpartition("/")
            try:
                dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(upper)
            except OSError:
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if is_dir and stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=dfd)  # only if empty: a command cannot write below the tmpfs anyway
                elif not is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
            finally:
                os.close(dfd)
    finally:
        lower.close()


def _upper_hides(upper: int, rel: str) -> bool:
    """Whether the upper hides the lower's rel: a whiteout, a file or an opaque directory at rel or above it."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        head, _, name = "/".join(parts[:i]).rpartition("/")
        try:
            dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(upper)
        except OSError:
            return False
        try:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(st.st_mode) or _opaque_at(dfd, name):
                return True
        finally:
            os.close(dfd)
    return False


def _upper_dir(upper: int, lower: LowerStack, rel: str) -> int:
    """An fd of directory rel in the upper, made as a copy-up would (the lower's mode and owner) where missing."""
    fd = os.dup(upper)
    try:
        done = ""
        for name in rel.split("/"):
            done = f"{done}/{name}" if done else name
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
                low = lower.lookup(done)
                mode, uid, gid = (low.st_mode, low.st_uid, low.st_gid) if low is not None and stat.S_ISDIR(low.st_mode) else (0o755, 0, 0)
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(mode), dir_fd=fd)
            except FileExistsError:
                pass
            child = linux.open_beneath(fd, name, os.O_RDONLY | os.O_DIRECTORY)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _take_staged_lists(upper: int, stack: list[str], staging: str) -> int:
    """--keep-apt-lists: the lists the builder's apt-get update fetched (into staging, see
    BUILDER_APT_CONF) move into the layer's var/lib/apt/lists."""
    try:
        src = os.open(os.path.join(staging, APT_DIR, "lists"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0  # a builder made before pycor kept lists aside
    try:
        names = [n for n in os.listdir(src) if n not in KEEP_IN_LISTS and stat.S_ISREG(os.stat(n, dir_fd=src, follow_symlinks=False).st_mode)]
        if not names or _upper_hides(upper, APT_LISTS.rstrip("/")):
            return 0
        lower = LowerStack(stack)
        try:
            dst = _upper_dir(upper, lower, APT_LISTS.rstrip("/"))
        finally:
            lower.close()
        try:
            for name in names:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        finally:
            os.close(dst)
        return len(names)
    finally:
        os.close(src)


def _hide_stale_caches(upper: int, stack: list[str]) -> int:
    """Whiteouts over what apt left in lower versions and the upper does not replace: package lists,
    downloaded .deb files, binary caches. A version never shows another version's lists (stale, or
    of another release); containers run apt-get update for their own."""
    lower = LowerStack(stack)
    made = 0
    try:
        for folder, wanted in ((APT_LISTS, lambda n: n not in KEEP_IN_LISTS), ("var/cache/apt/archives/", lambda n: n.endswith(".deb")),
                               ("var/cache/apt/", lambda n: n in ("pkgcache.bin", "srcpkgcache.bin"))):
            rel_dir = folder.rstrip("/")
            if _upper_hides(upper, rel_dir):
                continue
            names: set[str] = set()
            for layer in lower.fds:
                try:
                    dfd = linux.open_beneath(layer, rel_dir, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    continue
                try:
                    names.update(n for n in os.listdir(dfd) if wanted(n))
                finally:
                    os.close(dfd)
            stale = sorted(n for n in names if (st := lower.lookup(folder + n)) is not None and stat.S_ISREG(st.st_mode))
            if not stale:
                continue
            dfd = _upper_dir(upper, lower, rel_dir)
            try:
                for name in stale:
                    try:
                        os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=dfd)
                        made += 1
                    except FileExistsError:
                        pass  # the upper has its own (kept lists)
            finally:
                os.close(dfd)
    finally:
        lower.close()
    return made


def _take_new_ranges_conffiles(upper: int) -> None:
    """login.defs and adduser.conf as the package ships them when an upgrade brings a new one.

    Builders bind the base's id ranges over both (see _id_range_mounts), so dpkg finds them
    modified and, with --force-confold, keeps the old file and writes the new one as .dpkg-dist.
    pycor's ranges are the only change a base's copy can carry (builders cannot write them): the
    new file is taken, and _container_ranges gives it the containers' ranges, as Debian's own
    upgrade would have ended with the new file."""
    for rel in ("etc/login.defs", "etc/adduser.conf"):
        head, _, name = rel.rpartition("/")
        try:
            dfd = linux.open_beneath(upper, head, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            st = os.stat(name + ".dpkg-dist", dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                os.rename(name + ".dpkg-dist", name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)


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


def finish_layer(upper_path: str, stack: list[str], keep_apt_lists: bool = False, staging: str | None = None) -> bool:
    """Make a builder's upper a lean layer in place; False when nothing is left to publish.

    staging: the builder's staging directory, whose apt lists --keep-apt-lists publishes."""
    upper = os.open(upper_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _strip(upper, keep_apt_lists)
        _drop_mount_points(upper, stack)
        if keep_apt_lists and staging is not None:
            _take_staged_lists(upper, stack, staging)
        _take_new_ranges_conffiles(upper)
        _clear_harmless_opaque(upper, stack)
        _drop_unchanged(upper, stack)
        _prune_empty_dirs(upper, stack)
        if not os.listdir(upper):
            return False
        _hide_stale_caches(upper, stack)
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
