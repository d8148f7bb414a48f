"""Volumes and memory layers: what a container writes outside its overlay's upperdir.

A volume is a directory in the container's own layer area,

    ROOTFS/.pycor/volumes/<i>    bind-mounted at layer.json's volumes[i]

mounted at start over the overlay, so a write-heavy path (a database, logs)
pays neither copy-up nor layer lookups. It lives in the rootfs directory,
so lxc-copy, LXD copy, snapshot and export carry it like the layer; diff and
commit see only upper, so they leave it out.

An ephemeral layer keeps upper and work on a tmpfs mounted nowhere (fsopen,
fsmount): the overlay pins it, and it vanishes with the container's mount
namespace. Nothing the container writes reaches the disk.

Hot path: the pre-mount hook imports this. Imports stay minimal.
"""

from __future__ import annotations

import os
import stat

from . import layer, linux
from .errors import PycorError

VOLUMES_DIR = f"{layer.PYCOR_DIR}/volumes"
FORBIDDEN = ("/proc", "/sys", "/dev")


def check_paths(paths: list[str]) -> list[str]:
    """Container paths for volumes, normalised; one PycorError naming the first bad one."""
    hint = "give absolute paths of directories the container writes, e.g. --volume /var/lib/postgresql"
    done: list[str] = []
    for raw in paths:
        if not raw.startswith("/"):
            raise PycorError(f"volume path {raw!r} is relative", hint)
        parts = [p for p in raw.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise PycorError(f"volume path {raw!r} contains '.' or '..'", hint)
        path = "/" + "/".join(parts)
        if path == "/":
            raise PycorError("a volume cannot be '/': that is the container's whole root", hint)
        if any(path == f or path.startswith(f + "/") for f in FORBIDDEN):
            raise PycorError(f"volume path {path} is inside /proc, /sys or /dev, which the kernel provides", hint)
        for other in done:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise PycorError(f"volume {path} overlaps volume {other}", "give each volume its own, separate directory")
        done.append(path)
    return done


def create_dirs(rootfs: str, count: int, uid: int, gid: int) -> None:
    """Make .pycor/volumes/0..count-1, owned by container root (uid, gid on the host)."""
    fd = layer.open_rootfs(rootfs)
    try:
        pfd = linux.open_beneath(fd, layer.PYCOR_DIR)
        try:
            os.mkdir("volumes", 0o711, dir_fd=pfd)
        except FileExistsError:
            pass
        finally:
            os.close(pfd)
        vfd = linux.open_beneath(fd, VOLUMES_DIR, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(count):
                try:
                    os.mkdir(str(i), 0o755, dir_fd=vfd)
                except FileExistsError:
                    continue
                os.chown(str(i), uid, gid, dir_fd=vfd, follow_symlinks=False)
                os.chmod(str(i), 0o755, dir_fd=vfd, follow_symlinks=False)
        finally:
            os.close(vfd)
    finally:
        os.close(fd)


def open_mount_point(root_fd: int, path: str) -> int:
    """An O_PATH fd of directory `path` below the overlay root, made if missing; never follows a symlink."""
    cur = os.dup(root_fd)
    try:
        for part in [p for p in path.split("/") if p]:
            try:
                nxt = linux.open_beneath(cur, part)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=cur)
                except FileExistsError:
                    pass
                nxt = linux.open_beneath(cur, part)
            except OSError as e:
                raise PycorError(f"cannot mount volume at {path}: {part} is not a plain directory ({e.strerror})",
                                 "a symlink or file sits in the volume's path inside the container; remove it") from None
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise


def mount_volumes(under_fd: int, rootfs: str, meta: layer.LayerMeta) -> None:
    """pre-mount, after the overlay is on rootfs: bind each volume at its path.

    under_fd is the rootfs directory opened before the overlay covered it
    (where .pycor lives); the mount points are found in the overlay itself.
    """
    unpin()  # the overlay is mounted: it holds its own reference to an in-memory upper
    if not meta.volumes or layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):
        return  # LXC's overlay clone stacks on this view, and an overlay layer never crosses into submounts
    top = layer.open_rootfs(rootfs)  # now the overlay's root
    try:
        for i, path in enumerate(meta.volumes):
            try:
                src = linux.open_beneath(under_fd, f"{VOLUMES_DIR}/{i}")
            except OSError as e:
                raise PycorError(f"volume {path}: {rootfs}/{VOLUMES_DIR}/{i} cannot be opened ({e.strerror})",
                                 "the container's layer is damaged; recreate the volume directory") from None
            try:
                tree = linux.open_tree(src, "", linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_EMPTY_PATH)
            finally:
                os.close(src)
            try:
                target = open_mount_point(top, path)
                try:
                    linux.move_mount(tree, "", target, "", linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH)
                finally:
                    os.close(target)
            finally:
                os.close(tree)
    finally:
        os.close(top)


def detached_mount(fstype: str, options: dict[str, str]) -> int:
    """A new filesystem instance mounted nowhere: the fd of its root (see _pinned)."""
    fs = linux.fsopen(fstype)
    try:
        for key, value in options.items():
            linux.fsconfig(fs, linux.FSCONFIG_SET_STRING, key, value)
        linux.fsconfig(fs, linux.FSCONFIG_CMD_CREATE)
        return linux.fsmount(fs)
    finally:
        os.close(fs)


def memory_layer(upper_fd: int, size: int | None) -> tuple[int, int]:
    """O_PATH fds of a fresh upper and work on a detached tmpfs (optionally size-limited).

    upper gets the mode and owner of the on-disk upper: they become the container's '/'.
    """
    st = os.fstat(upper_fd)
    opts = {"mode": "0700"}
    if size:
        opts["size"] = str(size)
    try:
        mnt = detached_mount("tmpfs", opts)
    except OSError as e:
        raise PycorError(f"cannot make the in-memory layer (tmpfs): {e.strerror}",
                         "the kernel needs the new mount API (5.2+); or create the container without --ephemeral") from None
    try:
        fds = []
        for name, mode in (("upper", stat.S_IMODE(st.st_mode)), ("work", 0o700)):
            os.mkdir(name, mode, dir_fd=mnt)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=mnt, follow_symlinks=False)
            os.chmod(name, mode, dir_fd=mnt, follow_symlinks=False)
            fds.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=mnt))
        _pinned.append(mnt)
        return fds[0], fds[1]
    except BaseException:
        os.close(mnt)
        raise


# The fd of a detached mount's root keeps it mounted: closing it dissolves the
# mount even while fds inside it stay open, and overlayfs then cannot clone
# upperpath. Held until the overlay has pinned it (mount_volumes), else to exit.
_pinned: list[int] = []


def unpin() -> None:
    while _pinned:
        os.close(_pinned.pop())


def before_overlay(fds: list[int], rootfs: str, meta: layer.LayerMeta) -> None:
    """pre-mount: for an ephemeral layer (meta) swap upper and work (fds[1], fds[2]) for memory.

    fds is [rootfs, upper, work]; the caller appends the base's lowerdirs
    after it, top first. For LXC's overlay clone of this container (lxc-copy
    -e: LXC_ROOTFS_PATH overlay:ROOTFS:DELTA) the original's upper is never
    an upperdir here: it becomes the top lowerdir (fds[3]) under an unused
    in-memory upper, and LXC then mounts its own overlay, whose upperdir is
    the clone's delta (destroyed at stop), on top of this view.
    """
    clone = layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", ""))
    if meta.ephemeral or clone:
        upper, work = memory_layer(fds[1], meta.size)
        if clone:
            fds.append(fds[1])  # the original's changes, read-only
        else:
            os.close(fds[1])
        os.close(fds[2])
        fds[1], fds[2] = upper, work
