"""Tiny typed wrappers over the Linux syscalls pycor needs, one per call.

Hot path: every hook imports this. Please don't import any extra modules here.
Each wrapper raises OSError through oserror(): the errno, the syscall by name, the path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2

SYS_openat2 = 437  # same number on every architecture
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def oserror(syscall: str, path: str | None, err: int | None = None, detail: str = "") -> OSError:
    """The one way a failed syscall is reported: its errno, its name and the path it was given.

    ENOSYS becomes a sentence, so a user learns why (an old kernel, or a
    seccomp filter in a container manager), not just that. detail: what the
    kernel said besides the errno (a filesystem context's log).
    """
    err = ctypes.get_errno() if err is None else err
    if err == errno.ENOSYS:
        text = f"{syscall}: your kernel lacks this system call (or a seccomp filter blocks it)"
    else:
        text = f"{syscall}: {os.strerror(err)}"
    return OSError(err, f"{text} ({detail})" if detail else text, path)


def _check(ret: int, path: str | None, syscall: str) -> int:
    if ret < 0:
        raise oserror(syscall, path)
    return ret


def mount(source: str, target: str, fstype: str | None, flags: int = 0, options: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            options.encode() if options is not None else None,
        ),
        target,
        "mount",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), target, "umount2")


def syncfs(fd: int) -> None:
    """Write out everything of the filesystem holding fd (an fsync of one file leaves other inodes' xattrs behind)."""
    _check(_libc.syncfs(ctypes.c_int(fd)), fd_path(fd), "syncfs")


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(SYS_openat2, ctypes.c_int(dirfd), path.encode(), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
        path,
        "openat2",
    )


def open_beneath(dirfd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """Open path below dirfd without following any symlink or leaving the tree.

    Used on everything inside a container's rootfs directory: a link planted
    there makes this fail with ELOOP or EXDEV instead of escaping.
    """
    return openat2(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)


def open_in_root(rootfd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """Open path as a process chrooted at rootfd would: symlinks followed, absolute ones and '..' kept inside.

    For a container's own view (its merged root), where its /lib -> usr/lib
    must lead where it leads for the container, and nowhere else.
    """
    return openat2(rootfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def fd_path(fd: int) -> str:
    """A path naming exactly what fd refers to, for syscalls that take strings."""
    return f"/proc/self/fd/{fd}"


def shared_fd_path(fd: int) -> str:
    """A path naming what fd refers to, valid in this process and in the children it starts (tar, cp)."""
    return f"/proc/{os.getpid()}/fd/{fd}"


# --- kernel constants (include/uapi/linux/mount.h, fcntl.h, sched.h, stat.h) --

SYS_open_tree = 428  # x86_64; since 424 the numbers are shared by every architecture but alpha
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_mount_setattr = 442

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

RENAME_EXCHANGE = 1 << 1  # renameat2: swap the two entries atomically

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC

MOVE_MOUNT_F_SYMLINKS = 0x01
MOVE_MOUNT_F_AUTOMOUNTS = 0x02
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_SYMLINKS = 0x10
MOVE_MOUNT_T_AUTOMOUNTS = 0x20
MOVE_MOUNT_T_EMPTY_PATH = 0x40

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6

MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_SIZE_VER0 = 32


UMOUNT_NOFOLLOW = 0x8

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

PR_SET_PDEATHSIG = 1
SIGKILL = 9

STATX_TYPE = 0x1
STATX_INO = 0x100
STATX_BTIME = 0x800
STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256  # struct statx is 256 bytes; we read stx_attributes (8) and stx_attributes_mask (56)


# --- tiny typed syscall wrappers ----------------------------------------------

_libc.unshare.argtypes = (ctypes.c_int,)
_libc.statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)


def renameat2(olddirfd: int, oldpath: str, newdirfd: int, newpath: str, flags: int) -> None:
    _check(_libc.renameat2(olddirfd, os.fsencode(oldpath), newdirfd, os.fsencode(newpath), flags), newpath, "renameat2")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(
        _libc.syscall(SYS_open_tree, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags)),
        path,
        "open_tree",
    )


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str, flags: int) -> None:
    _check(
        _libc.syscall(
            SYS_move_mount,
            ctypes.c_int(from_dfd),
            os.fsencode(from_path),
            ctypes.c_int(to_dfd),
            os.fsencode(to_path),
            ctypes.c_uint(flags),
        ),
        to_path,
        "move_mount",
    )


def mount_setattr(
    dfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, userns_fd: int = 0, propagation: int = 0
) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    _check(
        _libc.syscall(
            SYS_mount_setattr,
            ctypes.c_int(dfd),
            os.fsencode(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        path,
        "mount_setattr",
    )


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """A filesystem context fd (new mount API, Linux 5.2+)."""
    return _check(_libc.syscall(SYS_fsopen, fstype.encode(), ctypes.c_uint(flags)), fstype, "fsopen")


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0) -> None:
    """Set one parameter of a filesystem context, or run a command on it (FSCONFIG_CMD_CREATE)."""
    _check(
        _libc.syscall(
            SYS_fsconfig,
            ctypes.c_int(fs_fd),
            ctypes.c_uint(cmd),
            key.encode() if key is not None else None,
            os.fsencode(value) if value is not None else None,
            ctypes.c_int(aux),
        ),
        value if value is not None else (f"fd {aux}" if cmd == FSCONFIG_SET_FD else None),
        f"fsconfig({key})" if key is not None else "fsconfig(create)",
    )


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """A detached mount of a created filesystem context: attached nowhere until move_mount."""
    return _check(_libc.syscall(SYS_fsmount, ctypes.c_int(fs_fd), ctypes.c_uint(flags), ctypes.c_uint(attr_flags)),
                  None, "fsmount")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), None, "unshare")


def statx_attributes(dirfd: int, path: str, flags: int = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT) -> tuple[int, int]:
    """(stx_attributes, stx_attributes_mask) of path, symlinks not followed."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    _check(_libc.statx(dirfd, os.fsencode(path), flags, STATX_TYPE | STATX_INO, buf), path, "statx")
    (attributes,) = struct.unpack_from("=Q", buf, 8)
    (mask,) = struct.unpack_from("=Q", buf, 56)
    return attributes, mask


def birth_time(fd: int) -> int | None:
    """When the file of fd was created (ns since the epoch), or None where the filesystem does not say."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    _check(_libc.statx(fd, b"", AT_EMPTY_PATH, STATX_BTIME, buf), None, "statx")
    (mask,) = struct.unpack_from("=I", buf, 0)
    if not mask & STATX_BTIME:
        return None
    sec, nsec = struct.unpack_from("=qI", buf, 80)  # stx_btime: tv_sec, tv_nsec
    return int(sec) * 1_000_000_000 + int(nsec)


def set_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the calling process gets sig when its parent dies."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0), None, "prctl(PR_SET_PDEATHSIG)")


def quotactl(cmd: int, device: str, qid: int, addr: object) -> None:
    """quotactl(2): cmd already combined with the quota type (QCMD(cmd, type))."""
    _check(_libc.quotactl(ctypes.c_int(cmd), os.fsencode(device), ctypes.c_int(qid), addr), device, "quotactl")


class Mount:
    """One line of /proc/self/mountinfo: where, what filesystem, from what source, with which options."""

    __slots__ = ("point", "fstype", "source", "options")

    def __init__(self, point: str, fstype: str, source: str, options: str) -> None:
        self.point, self.fstype, self.source, self.options = point, fstype, source, options


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 space, \\011 tab, \\012 line end, \\134 backslash)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[Mount]:
    """The mount table of this process's mount namespace, in mount order (the one mountinfo reader)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for text in f:
            left, _, right = text.partition(" - ")
            fields, more = left.split(), right.split()
            if len(fields) >= 5:
                more += ["", "", ""]
                found.append(Mount(_unescape(fields[4]), more[0], _unescape(more[1]), more[2]))
    return found


def mounts_under(path: str) -> list[str]:
    """Mount points at or below path (its real path), in mount order."""
    top = os.path.realpath(path)
    return [m.point for m in mounts() if m.point == top or m.point.startswith(top.rstrip("/") + "/")]


def container_cgroups(names: Callable[[str], bool] | None = None) -> list[str]:
    """The top cgroups LXC makes for containers (lxc.payload.NAME, lxc.monitor.NAME) in every hierarchy, those
    whose NAME passes names (a callable) if given."""
    tops = ["/sys/fs/cgroup"] + [e.path for e in os.scandir("/sys/fs/cgroup") if e.is_dir() and not e.is_symlink()]
    found = []
    for top in tops:
        try:
            entries = os.listdir(top)
        except OSError:  # a cgroup (v2: a container's) gone meanwhile
            continue
        for entry in entries:
            kind, _, name = entry.partition(".")[2].partition(".")
            if entry.startswith("lxc.") and kind in ("payload", "monitor") and (names is None or names(name)):
                found.append(os.path.join(top, entry))
    return found


def remove_cgroup_if_empty(top: str, settled: float = 30) -> None:
    """Remove cgroup top and those below it if no process is in any of them (its container is gone: a running
    container's empty cgroups, systemd's, stay) and top was made or changed over settled s ago (a container
    starting into it). LXC leaves them when a container's monitor was killed."""
    import time

    try:
        if os.stat(top).st_ctime > time.time() - settled:
            return
    except OSError:
        return
    dirs = [d for d, _, _ in os.walk(top, topdown=False)]
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                if f.read().strip():
                    return
        except OSError:
            return
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:  # a process moved in meanwhile: EBUSY
            pass
