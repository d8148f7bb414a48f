"""Importing a base: build a root filesystem in the store's staging area, then publish it.

This is the logic behind ``pycor base import NAME``. It runs from the CLI, never
from a hook, so it may use standard tools (GNU tar, debootstrap) as helpers.

Every import follows the same path: validate the name and the source before any
long work, build ``staging/rootfs``, check that the result is a root filesystem,
and publish it as version 1 in one rename. On any failure, Ctrl-C included, the
helpers are stopped and the staging directory is removed: nothing is left in
the store and the source is never written.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Callable, Iterator, Sequence

from . import faults
from .errors import PycorError
from .fsutil import disk_usage, human_size, remove_tree
from .names import check_name
from .store import Store, Version

log = logging.getLogger(__name__)

BUSYBOX = "/bin/busybox"
DEBOOTSTRAP_SCRIPTS = "/usr/share/debootstrap/scripts"
APT_DIR = "/etc/apt"
VARIANTS = ("minbase", "buildd", "default")  # "default": debootstrap without --variant

# GNU tar options that carry everything a root filesystem needs. The posix
# format is required for xattrs and ACLs; '*' includes security.* and trusted.*
# (on extraction GNU tar otherwise restores only user.*).
TAR_METADATA = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
TAR_CREATE = ["tar", "--create", "--file=-", "--format=posix", "--sparse", *TAR_METADATA]
# No --absolute-names: GNU tar strips a leading '/', refuses members with '..'
# and defers symlinks that could lead outside the target.
TAR_EXTRACT = ["tar", "--extract", "--file=-", "--same-owner", "--same-permissions", *TAR_METADATA]

COMPRESSION_MAGIC: list[tuple[bytes, str, str]] = [
    (b"\x1f\x8b", "--gzip", "gzip"),
    (b"\xfd7zXZ\x00", "--xz", "xz"),
    (b"\x28\xb5\x2f\xfd", "--zstd", "zstd"),
    (b"BZh", "--bzip2", "bzip2"),
]

CHUNK = 1 << 20


# -- progress ------------------------------------------------------------------


class Progress:
    """Reports the progress of one step on stderr.

    On a terminal one line is updated in place with '\\r'; otherwise a line is
    printed at most every INTERVAL seconds or every 10 %, so logs stay short.
    """

    INTERVAL = 5.0
    TTY_INTERVAL = 0.1

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.label = ""
        self.total = 0
        self._last_time = 0.0
        self._last_fraction = 0.0
        self._in_place = False  # a '\r' line is on screen without its newline

    def start(self, label: str, total: int = 0) -> None:
        self.label = label
        self.total = total
        self._last_time = time.monotonic()
        self._last_fraction = 0.0
        self._show(label, force=True)

    def update(self, done: int) -> None:
        """Done so far, in the unit of total (bytes here)."""
        text = f"{self.label}: {human_size(done)}"
        fraction = 0.0
        if self.total > 0:
            fraction = min(done / self.total, 1.0)
            text += f" of about {human_size(self.total)} ({fraction:.0%})"
        force = not self.tty and fraction - self._last_fraction >= 0.1
        if self._show(text, force=force):
            self._last_fraction = fraction

    def note(self, text: str, important: bool = False) -> None:
        """A status line from a helper (debootstrap's output); important ones always show."""
        self._show(f"{self.label}: {text}" if self.label else text, force=important)

    def finish(self, text: str) -> None:
        self._show(text, force=True)
        self.close()

    def close(self) -> None:
        """End a line left open in place, so what follows (an error) starts on its own line."""
        if self._in_place:
            self.stream.write("\n")
            self.stream.flush()
            self._in_place = False

    def _show(self, text: str, force: bool = False) -> bool:
        now = time.monotonic()
        interval = self.TTY_INTERVAL if self.tty else self.INTERVAL
        if not force and now - self._last_time < interval:
            return False
        self._last_time = now
        if self.tty:
            # A line longer than the terminal would wrap and '\r' could not rewrite it.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self._in_place = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        return True


# -- public API ----------------------------------------------------------------


def import_from_dir(store: Store, name: str, src: str, progress: Progress | None = None) -> Version:
    """Copy a root filesystem directory into a new base, keeping every attribute."""
    _check_new_base(store, name)
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        problem = "is not a directory" if os.path.lexists(src) else "does not exist"
        raise PycorError(f"source directory {src} {problem}", "give the path of a root filesystem directory (one with etc/ and bin/sh)")
    _refuse_store_inside(store, src)
    _check_rootfs(src, f"directory {src}")
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        os.mkdir(rootfs, 0o755)
        copy_tree(src, rootfs, progress)
        return []

    return _import(store, name, f"dir:{src}", build, f"directory {src}", progress)


def import_from_tar(store: Store, name: str, tarball: str, progress: Progress | None = None) -> Version:
    """Extract a root filesystem tarball (plain, gzip, xz, zstd or bzip2) into a new base."""
    _check_new_base(store, name)
    tarball = os.path.abspath(tarball)
    if not os.path.isfile(tarball):
        problem = "is not a file" if os.path.lexists(tarball) else "does not exist"
        raise PycorError(f"tarball {tarball} {problem}", "give the path of a .tar, .tar.gz, .tar.xz or .tar.zst file of a root filesystem")
    compression = detect_compression(tarball)
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        os.mkdir(rootfs, 0o755)
        _extract_tar(tarball, compression, rootfs, progress)
        return []

    return _import(store, name, f"tar:{tarball}", build, f"tarball {tarball}", progress,
                   hint="the archive must hold the root filesystem at its top (./etc, ./bin/sh), not inside a folder")


def import_busybox(store: Store, name: str, progress: Progress | None = None) -> Version:
    """A minimal base from the host's static busybox: one binary, its applets, busybox init."""
    _check_new_base(store, name)
    _check_static_busybox(BUSYBOX)
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        progress.start(f"busybox base from {BUSYBOX}")
        count = _build_busybox_rootfs(rootfs, BUSYBOX)
        progress.finish(f"busybox base: {count} applets linked")
        # busybox init halts on SIGUSR1 and reboots on SIGTERM, not LXC's defaults.
        return ["lxc.signal.halt = SIGUSR1", "lxc.signal.reboot = SIGTERM"]

    return _import(store, name, "busybox", build, "the busybox base", progress)


def import_debootstrap(
    store: Store,
    name: str,
    suite: str,
    variant: str = "minbase",
    include: list[str] | None = None,
    progress: Progress | None = None,
    bootable: bool = False,
) -> Version:
    """A Debian base made by debootstrap from the mirror apt on this machine uses.

    bootable: a system container's base: systemd as init, DHCP on eth0
    (systemd-networkd, names through systemd-resolved) and a web server
    (nginx-light), so every container boots to 'running' with an address.
    """
    _check_new_base(store, name)
    include = list(include or [])
    _check_debootstrap_args(suite, variant, include)
    if bootable:
        include += [p for p in BOOTABLE_PACKAGES if p not in include]
    mirror = apt_mirror()
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        _run_debootstrap(rootfs, suite, variant, include, mirror, progress)
        _finish_debian_rootfs(rootfs, keep_hostname=not bootable)
        if bootable:
            _make_bootable(rootfs, progress)
        # Our init (if we had to add one) exits on SIGPWR, LXC's default halt signal.
        # systemd halts on SIGRTMIN+3, which LXC sends when the init is systemd.
        return []

    source = f"debootstrap:{suite}/{variant}" + ("+bootable" if bootable else "")
    return _import(store, name, source, build, f"debootstrap {suite}", progress)


def apt_mirror(apt_dir: str | None = None) -> str:
    """The Debian mirror URL apt on this machine is configured with.

    Reads apt_dir/sources.list and apt_dir/sources.list.d/ (*.list one-line
    entries, *.sources deb822 entries) in apt's order. An entry for a plain
    release (bookworm, stable) wins over one for -updates or -backports;
    security archives never qualify. apt_dir defaults to /etc/apt.
    """
    apt_dir = apt_dir or APT_DIR
    entries = list(_apt_entries(apt_dir))
    for wanted_rank in (0, 1):
        for uri, suite in entries:
            if _suite_rank(suite) == wanted_rank:
                return uri
    raise PycorError(
        f"no Debian mirror found in {apt_dir}/sources.list or {apt_dir}/sources.list.d/",
        "add a 'deb' entry for a Debian release (e.g. bookworm) to apt's sources",
    )


def detect_compression(tarball: str) -> tuple[str, str] | None:
    """(tar option, tool) for a compressed tarball, None for a plain one; by magic bytes, not by name."""
    with open(tarball, "rb") as f:
        head = f.read(512)
    for magic, option, tool in COMPRESSION_MAGIC:
        if head.startswith(magic):
            return option, tool
    return None


# -- the common path -----------------------------------------------------------


def _check_new_base(store: Store, name: str) -> None:
    check_name(name, "base name")
    if store.exists(name):
        raise PycorError(f"base {name!r} already exists in store {store.root}", f"remove it first with 'pycor base rm {name}', or pick another name")


def _import(store: Store, name: str, source: str, build: Callable[[str], list[str]], what: str,
            progress: Progress, hint: str | None = None) -> Version:
    """Build staging/rootfs with build (which returns the base's LXC lines), check it, publish it."""
    try:
        with staging_dir(store, name) as staging:
            rootfs = os.path.join(staging, "rootfs")
            faults.point("import.staging")
            lxc = build(rootfs)
            _check_rootfs(rootfs, what, hint)
            from .builder import set_container_ranges

            set_container_ranges(rootfs)
            faults.point("import.built")
            return store.publish_base(name, staging, source=source, size=disk_usage(rootfs), lxc=lxc)
    finally:
        progress.close()


@contextlib.contextmanager
def staging_dir(store: Store, name: str) -> Iterator[str]:
    """A staging directory that is removed unless the body published it (renamed it away)."""
    staging = store.new_staging(name)
    try:
        yield staging
    finally:
        store.end_staging(staging)


def discard_staging(staging: str) -> None:
    if not os.path.lexists(staging):
        return
    # Never walk into a mount (a helper's /proc or /sys bind): detach them first.
    if not _detach_mounts_under(staging):
        log.error("left %s in place: something is still mounted under it", staging)
        return
    try:
        remove_tree(staging)
    except OSError:
        time.sleep(0.5)  # a helper killed a moment ago may still be closing files
        remove_tree(staging)


def _detach_mounts_under(path: str) -> bool:
    """Lazily unmount every mount at or below path, deepest first; True if none is left."""
    mounts = _mounts_under(path)
    if mounts:
        from .linux import MNT_DETACH, umount2

        for mnt in sorted(mounts, key=len, reverse=True):
            try:
                umount2(mnt, MNT_DETACH)
            except OSError as e:
                log.warning("cannot unmount %s: %s", mnt, e.strerror)
    return not _mounts_under(path)


def _mounts_under(path: str) -> list[str]:
    top = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == top or point.startswith(top + "/"):
                found.append(point)
    return found


def _refuse_store_inside(store: Store, src: str) -> None:
    """Copying a tree that holds the store would copy the copy, forever."""
    real_src, real_store = os.path.realpath(src), os.path.realpath(store.root)
    if os.path.commonpath([real_src, real_store]) == real_src:
        raise PycorError(f"the store {store.root} is inside the source {src}", "import from a directory that does not contain the store")


# -- root filesystem checks ----------------------------------------------------


def resolve_inside(root: str, relpath: str, follow_last: bool = False) -> str:
    """The host path of relpath in the tree at root, symlinks resolved inside root.

    Absolute link targets and '..' are taken relative to root (as the
    container will see them), so the walk never leaves the tree.
    """
    todo = [c for c in relpath.split("/") if c not in ("", ".")]
    done: list[str] = []
    follows = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        path = os.path.join(root, *done, part)
        if (todo or follow_last) and os.path.islink(path):
            follows += 1
            if follows > 40:
                raise PycorError(f"too many levels of symbolic links at {path}", "the tree has a symlink loop")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            todo = [c for c in target.split("/") if c not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def lexists_inside(root: str, relpath: str) -> bool:
    return os.path.lexists(resolve_inside(root, relpath))


def missing_rootfs_parts(root: str) -> list[str]:
    """What keeps root from being a root filesystem; empty if it is one."""
    missing = []
    if not os.path.isdir(resolve_inside(root, "etc", follow_last=True)):
        missing.append("etc directory")
    if not (lexists_inside(root, "bin/sh") or lexists_inside(root, "usr/bin/sh")):
        missing.append("shell at bin/sh or usr/bin/sh")
    return missing


def _check_rootfs(root: str, what: str, hint: str | None = None) -> None:
    missing = missing_rootfs_parts(root)
    if missing:
        raise PycorError(f"{what} is not a root filesystem: it has no {' and no '.join(missing)}",
                         hint or "give a tree with etc/ and bin/sh at its top")


# -- helper processes ---------------------------------------------------------


@contextlib.contextmanager
def _running(cmd: Sequence[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start a helper in its own process group; on an early exit stop the whole group.

    Its own group means Ctrl-C reaches only us, and we stop the helper (and the
    children debootstrap or tar started) before the staging directory goes.
    """
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc.returncode is not None:
        return  # reaped by the caller: it finished on its own
    # Until we reap the leader its pid, which is the group id, cannot be
    # reused, so signalling the group cannot hit a stranger.
    _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _has_exited(proc.pid):
        time.sleep(0.05)
    # Children of the leader (dpkg under debootstrap, tar's compressor) may outlive it.
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _has_exited(pid: int) -> bool:
    """True once pid has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _tail(f: IO[bytes], lines: int = 10) -> str:
    f.seek(0)
    text = f.read().decode("utf-8", "replace").strip().splitlines()
    return "\n".join(text[-lines:])


def _pump(src: IO[bytes], dst: IO[bytes], progress: Progress) -> None:
    """Copy src to dst counting bytes; stop quietly when dst's reader has gone."""
    done = 0
    while chunk := src.read(CHUNK):
        try:
            dst.write(chunk)
        except BrokenPipeError:
            break
        done += len(chunk)
        progress.update(done)
    with contextlib.suppress(BrokenPipeError):
        dst.close()


# -- from a directory ----------------------------------------------------------


def copy_tree(src: str, rootfs: str, progress: Progress) -> None:
    """GNU tar from src piped through us into tar in rootfs, so we can count the bytes."""
    progress.start(f"copying {src}", disk_usage(src))
    with tempfile.TemporaryFile() as err_c, tempfile.TemporaryFile() as err_x, \
            _running([*TAR_CREATE, f"--directory={src}", "."], stdout=subprocess.PIPE, stderr=err_c) as create, \
            _running([*TAR_EXTRACT, f"--directory={rootfs}"], stdin=subprocess.PIPE, stderr=err_x) as extract:
        assert create.stdout is not None and extract.stdin is not None
        _pump(create.stdout, extract.stdin, progress)
        create.stdout.close()
        rc_x, rc_c = extract.wait(), create.wait()
        # When the extracting side fails first, the creating side dies of SIGPIPE.
        if rc_c not in (0, -signal.SIGPIPE) or (rc_c != 0 and rc_x == 0):
            raise PycorError(f"reading {src} failed:\n{_tail(err_c)}", "make sure nothing writes to the source during the import, then retry")
        if rc_x != 0:
            raise PycorError(f"copying {src} failed:\n{_tail(err_x)}", "check free space in the store and that its filesystem supports xattrs and ACLs")
    progress.finish(f"copied {src}")


# -- from a tarball ------------------------------------------------------------


def _extract_tar(tarball: str, compression: tuple[str, str] | None, rootfs: str, progress: Progress) -> None:
    """Feed the tarball through us into tar, so progress counts the input bytes read."""
    cmd = [*TAR_EXTRACT, f"--directory={rootfs}"]
    if compression:
        option, tool = compression
        if shutil.which(tool) is None:
            raise PycorError(f"{tarball} is {tool}-compressed but {tool} is not installed", f"apt-get install {tool}")
        cmd.append(option)
    progress.start(f"extracting {tarball}", os.path.getsize(tarball))
    with open(tarball, "rb") as src, tempfile.TemporaryFile() as err, \
            _running(cmd, stdin=subprocess.PIPE, stderr=err) as tar:
        assert tar.stdin is not None
        _pump(src, tar.stdin, progress)
        if tar.wait() != 0:
            raise PycorError(f"extracting {tarball} failed:\n{_tail(err)}", "check that it is a complete tar archive and that the store has free space")
    progress.finish(f"extracted {tarball}")


# -- busybox -------------------------------------------------------------------


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    import struct

    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f.read(48 if is64 else 36)  # the rest of the ELF header
        # Offsets of e_phoff and e_phentsize/e_phnum within that rest.
        phoff_fmt, phoff_at, counts_at = ("Q", 16, 38) if is64 else ("I", 12, 26)
        (phoff,) = struct.unpack_from(order + phoff_fmt, header, phoff_at)
        phentsize, phnum = struct.unpack_from(order + "HH", header, counts_at)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(order + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader
                return False
    return True


def _check_static_busybox(path: str) -> None:
    if not os.path.isfile(path):
        raise PycorError(f"{path} is missing", "apt-get install busybox-static")
    if not is_static_elf(path):
        raise PycorError(f"{path} is not statically linked: it would not run without the host's libraries", "apt-get install busybox-static")


INITTAB = """\
# pycor busybox base: busybox init under lxc-start.
# lxc-stop sends SIGUSR1 (halt); a reboot request sends SIGTERM.
::sysinit:/etc/init.d/rcS
console::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""

RCS = """\
#!/bin/sh
# LXC has already set up /dev, /proc and /sys; mount only what is missing and private.
[ -e /proc/self ] || mount -t proc proc /proc
mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
exit 0
"""

BUSYBOX_FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644),
    # Locked root: shells come from lxc-attach and the console, never a password.
    "etc/shadow": ("root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n", 0o600),
    "etc/group": ("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
    "etc/hostname": ("localhost\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
    "etc/fstab": ("", 0o644),
}

BUSYBOX_DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc/init.d": 0o755,
    "root": 0o700, "tmp": 0o1777, "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755,
    "var/log": 0o755, "home": 0o755, "mnt": 0o755,
}


def busybox_applets(busybox: str) -> list[str]:
    """Applet paths relative to / ('bin/ls', 'sbin/init'), from busybox --list-full."""
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout
    applets = []
    for line in out.split():
        rel = os.path.normpath(line).lstrip("/")
        # Only paths inside the usual bin directories: no 'linuxrc' at the top, nothing odd.
        if "/" in rel and ".." not in rel.split("/") and rel != "bin/busybox":
            applets.append(rel)
    return applets


def _build_busybox_rootfs(rootfs: str, busybox: str) -> int:
    os.mkdir(rootfs, 0o755)
    for rel, mode in BUSYBOX_DIRS.items():
        path = os.path.join(rootfs, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)  # makedirs' mode is filtered by the umask
    shutil.copyfile(busybox, os.path.join(rootfs, "bin/busybox"))
    os.chmod(os.path.join(rootfs, "bin/busybox"), 0o755)
    os.symlink("/run", os.path.join(rootfs, "var/run"))
    applets = busybox_applets(busybox)
    for rel in applets:
        link = os.path.join(rootfs, rel)
        os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    if not os.path.lexists(os.path.join(rootfs, "sbin/init")):
        os.symlink("/bin/busybox", os.path.join(rootfs, "sbin/init"))
    for rel, (text, mode) in BUSYBOX_FILES.items():
        _write_file(os.path.join(rootfs, rel), text, mode)
    return len(applets)


def _write_file(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


# -- debootstrap ---------------------------------------------------------------

_SUITE = re.compile(r"[a-z][a-z0-9.-]*")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def _check_debootstrap_args(suite: str, variant: str, include: list[str]) -> None:
    if shutil.which("debootstrap") is None:
        raise PycorError("debootstrap is not installed", "apt-get install debootstrap")
    if not _SUITE.fullmatch(suite) or not os.path.exists(os.path.join(DEBOOTSTRAP_SCRIPTS, suite)):
        raise PycorError(f"debootstrap does not know the suite {suite!r}", f"pick one of the names in {DEBOOTSTRAP_SCRIPTS}, e.g. bookworm")
    if variant not in VARIANTS:
        raise PycorError(f"unknown debootstrap variant {variant!r}", f"use one of: {', '.join(VARIANTS)}")
    bad = [p for p in include if not _PACKAGE.fullmatch(p)]
    if bad:
        raise PycorError(f"invalid package name(s) to include: {', '.join(map(repr, bad))}", "give Debian package names such as 'iproute2'")


def _run_debootstrap(rootfs: str, suite: str, variant: str, include: list[str], mirror: str, progress: Progress) -> None:
    cmd = ["debootstrap"]
    if variant != "default":
        cmd.append(f"--variant={variant}")
    if include:
        cmd.append("--include=" + ",".join(include))
    # A private mount namespace: whatever debootstrap mounts in the target
    # (proc, sys) vanishes with it, even if it is killed halfway.
    cmd = ["unshare", "--mount", "--propagation", "private", "--", *cmd, suite, rootfs, mirror]
    last: collections.deque[str] = collections.deque(maxlen=15)
    progress.start(f"debootstrap {suite}")
    with _running(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                last.append(line)
                progress.note(line, important=line.startswith(("E:", "W:")))
        rc = proc.wait()
    if rc != 0:
        log_tail = _file_tail(os.path.join(rootfs, "debootstrap", "debootstrap.log"))
        details = "\n".join(last) + (f"\n--- debootstrap.log ---\n{log_tail}" if log_tail else "")
        raise PycorError(f"debootstrap {suite} from {mirror} failed (exit status {rc}):\n{details}",
                         "check the suite name, the network and the mirror in apt's sources")
    progress.finish(f"debootstrap {suite}: done")


def _file_tail(path: str, lines: int = 10) -> str:
    try:
        with open(path, "rb") as f:
            return _tail(f, lines)
    except OSError:
        return ""


INIT_SCRIPT = """\
#!/bin/sh
# pycor: a minimal init for a base that has none (a debootstrap minbase).
# It only idles. lxc-stop sends SIGPWR, LXC's default halt signal; TERM and
# INT stop it too. As PID 1 a signal without a handler is ignored, hence the trap.
trap 'exit 0' TERM INT PWR
while :; do sleep 3600 & wait $!; done
"""


def _finish_debian_rootfs(rootfs: str, keep_hostname: bool = True) -> None:
    """Add an init if the tree has none; drop the host's hostname debootstrap copied in.

    Without keep_hostname /etc/hostname goes entirely: systemd then keeps the
    name LXC gave the container instead of naming every one 'localhost'.
    """
    if not (lexists_inside(rootfs, "sbin/init") or lexists_inside(rootfs, "usr/sbin/init")):
        # sbin is usually a symlink to usr/sbin: resolve it inside the tree, never on the host.
        path = resolve_inside(rootfs, "sbin/init")
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        _write_file(path, INIT_SCRIPT, 0o755)
    hostname = resolve_inside(rootfs, "etc/hostname")
    if os.path.isfile(hostname) and not os.path.islink(hostname):
        os.unlink(hostname)  # the base is shared: LXC gives each container its own name
        if keep_hostname:
            _write_file(hostname, "localhost\n", 0o644)


# -- a bootable Debian -----------------------------------------------------------

# systemd as PID 1; networkd for DHCP and resolved for names (no extra DHCP
# client or ifupdown); nginx-light as the service (no per-container host keys,
# unlike an SSH server); iproute2 to look at addresses; dbus for hostnamectl & co.
BOOTABLE_PACKAGES = ("systemd-sysv", "systemd-resolved", "dbus", "iproute2", "nginx-light")

ETH0_NETWORK = """\
# pycor bootable base: DHCP on the container's first interface (LXC and LXD name it eth0).
[Match]
Name=eth0

[Network]
DHCP=yes
"""

# networkd waits for udev to announce a link whenever /sys is writable, and
# LXC's userns.conf mounts /sys read-write in unprivileged containers, where
# no udev runs: eth0 would stay 'pending' and get no address. A read-only /sys
# for networkd alone tells it there is no udev to wait for.
NETWORKD_DROPIN = """\
# pycor bootable base: no udev in a container; see pycor_hooks/imports.py
[Service]
ReadOnlyPaths=/sys
"""

# Units that cannot work in any container: they fail the same in a plain LXC
# container of this tree, so masking them lets 'systemctl is-system-running'
# say 'running' and keeps real failures visible.
CONTAINER_MASKED_UNITS = ("sys-kernel-debug.mount",)


def wait_for_boot_script(timeout: int = 180) -> str:
    """A shell script that, run in a container of a bootable base, waits until
    systemd has finished booting and prints its state ('running', 'degraded').
    Right after a start systemctl finds no socket yet: wait for it first."""
    return (f"i=0; while [ ! -S /run/systemd/private ] && [ $i -lt {timeout * 10} ]; do sleep 0.1; i=$((i+1)); done; "
            f"timeout {timeout} systemctl is-system-running --wait")


def _make_bootable(rootfs: str, progress: Progress) -> None:
    """Finish a debootstrap tree with systemd-sysv into a base every container boots from."""
    progress.start("making the base bootable")
    network = resolve_inside(rootfs, "etc/systemd/network/80-pycor-eth0.network")
    os.makedirs(os.path.dirname(network), 0o755, exist_ok=True)
    _write_file(network, ETH0_NETWORK, 0o644)
    dropin = resolve_inside(rootfs, "etc/systemd/system/systemd-networkd.service.d/pycor-container.conf")
    os.makedirs(os.path.dirname(dropin), 0o755, exist_ok=True)
    _write_file(dropin, NETWORKD_DROPIN, 0o644)
    # The tree's own systemctl, offline in a chroot: it creates the links (Also= units included).
    subprocess.run(["chroot", rootfs, "systemctl", "enable", "--quiet", "systemd-networkd.service",
                    "systemd-resolved.service", "nginx.service"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    subprocess.run(["chroot", rootfs, "systemctl", "mask", "--quiet", *CONTAINER_MASKED_UNITS],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    # One machine-id shared by every container would give them one DHCP client
    # id (networkd's DUID derives from it), so one address. Empty: systemd makes
    # a fresh one at each container's first boot and commits it to its layer.
    machine_id = resolve_inside(rootfs, "etc/machine-id")
    if os.path.lexists(machine_id):
        os.unlink(machine_id)
    _write_file(machine_id, "", 0o444)
    dbus_id = resolve_inside(rootfs, "var/lib/dbus/machine-id")
    if os.path.isfile(dbus_id) and not os.path.islink(dbus_id):
        os.unlink(dbus_id)
    # Names through resolved's stub, whatever debootstrap copied from the host.
    resolv = resolve_inside(rootfs, "etc/resolv.conf")
    if os.path.lexists(resolv):
        os.unlink(resolv)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)
    progress.finish("bootable: systemd, DHCP on eth0, nginx")


# -- apt sources ---------------------------------------------------------------

DEBIAN_CODENAMES = frozenset(
    "buzz rex bo hamm slink potato woody sarge etch lenny squeeze wheezy jessie stretch buster "
    "bullseye bookworm trixie forky duke sid oldoldstable oldstable stable testing unstable experimental".split()
)
URI_SCHEMES = ("http://", "https://", "ftp://", "file:")


def _suite_rank(suite: str) -> int | None:
    """0 for a plain Debian release, 1 for one of its -updates/-backports, None otherwise."""
    if suite in DEBIAN_CODENAMES:
        return 0
    release, _, pocket = suite.partition("-")
    if release in DEBIAN_CODENAMES and pocket and pocket != "security" and "/" not in suite:
        return 1
    return None


def _apt_entries(apt_dir: str) -> Iterator[tuple[str, str]]:
    """(uri, suite) of every enabled 'deb' entry, in the order apt reads them."""
    yield from _one_line_entries(os.path.join(apt_dir, "sources.list"))
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*"))):
        if path.endswith(".list"):
            yield from _one_line_entries(path)
        elif path.endswith(".sources"):
            yield from _deb822_entries(path)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""


_ONE_LINE = re.compile(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def _one_line_entries(path: str) -> Iterator[tuple[str, str]]:
    """'deb [opts] URI SUITE COMPONENTS...' lines; deb-src and comments skipped."""
    for line in _read_text(path).splitlines():
        m = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if m and m.group(1).startswith(URI_SCHEMES):
            yield m.group(1), m.group(2)


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _deb822_entries(path: str) -> Iterator[tuple[str, str]]:
    for p in _deb822_paragraphs(_read_text(path)):
        if p.get("enabled", "yes").lower() == "no" or "deb" not in p.get("types", "").split():
            continue
        for uri in p.get("uris", "").split():
            if uri.startswith(URI_SCHEMES):
                for suite in p.get("suites", "").split():
                    yield uri, suite
