"""Volumes and memory layers: what a container writes outside its overlay's upperdir.

A volume is a directory in the container's own layer area,

    ROOTFS/.pycor/volumes/<i>    bind-mounted at layer.json's volumes[i]

mounted at start over the overlay, so a write-heavy path (a database, logs)
pays neither copy-up nor layer lookups. It lives in the rootfs directory,
so lxc-copy, LXD copy, snapshot and export carry it like the layer; diff and
commit see only upper, so they leave it out.

An ephemeral layer keeps upper, work and its volumes on one tmpfs mounted
nowhere (fsopen, fsmount), so --size caps them together: the overlay and the
volumes' bind mounts pin it, and it vanishes with the container's mount
namespace. Nothing the container writes reaches the disk, and an ephemeral
container has no volume directories on disk. LXC's overlay clone of an
ephemeral container (lxc-copy -e) keeps its own delta in memory too.

Hot path: the pre-mount hook imports this. Imports stay minimal.
"""

from __future__ import annotations

import errno
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


def check_in_base(paths: list[str], lowers: list[str], where: str) -> None:
    """Refuse a volume whose path, or a directory on its way, is a symlink or not a directory in the base
    (lowers, top first, as overlayfs merges them; where: 'base B version V'), naming it and what to do.

    The bind mount at start opens the path without following any symlink: such
    a volume could never start. A path missing from the base is made at start.
    """
    from .diff import LowerStack, file_type

    stack = LowerStack(lowers)
    try:
        for path in paths:
            parts = path.strip("/").split("/")
            for n in range(1, len(parts) + 1):
                rel = "/".join(parts[:n])
                found = stack.find(rel)
                if found is None:
                    break  # missing: made at start, with everything below it
                layer_fd, st = found
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise PycorError(f"volume {path}: /{rel} is a {file_type(st.st_mode)} in {where}",
                                     "a volume is mounted on a directory: give a path that is a directory in the base, "
                                     "or that the base does not have")
                head, _, name = rel.rpartition("/")
                pfd = linux.open_beneath(layer_fd, head, os.O_PATH | os.O_DIRECTORY) if head else os.dup(layer_fd)
                try:
                    target = os.readlink(name, dir_fd=pfd)
                finally:
                    os.close(pfd)
                led = os.path.normpath(os.path.join("/" + head, target)) + path[len(rel) + 1:]
                raise PycorError(f"volume {path}: /{rel} is a symlink in {where} (to {target})",
                                 f"a volume is mounted on a real directory, never through a symlink: "
                                 f"give the path the link leads to, --volume {led}")
    finally:
        stack.close()


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


class NotADirectory(PycorError):
    """A volume's mount point, or a directory on its way, is a symlink or not a directory in the container's view."""

    def __init__(self, path: str, where: str, why: str) -> None:
        super().__init__(f"cannot mount volume at {path}: {where} is not a plain directory ({why})")
        self.path, self.where = path, where


def open_mount_point(root_fd: int, path: str) -> int:
    """An O_PATH fd of directory `path` below the overlay root, made if missing; never follows a symlink."""
    cur = os.dup(root_fd)
    done: list[str] = []
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
                raise NotADirectory(path, "/" + "/".join(done + [part]), e.strerror or str(e)) from None
            done.append(part)
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
    try:
        if not meta.volumes or layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):
            return  # LXC's overlay clone stacks on this view, and an overlay layer never crosses into submounts
        top = layer.open_rootfs(rootfs)  # now the overlay's root
        try:
            for i, path in enumerate(meta.volumes):
                _bind_volume(under_fd, top, rootfs, i, path)
        finally:
            os.close(top)
    finally:
        unpin()  # the overlay and the bind mounts hold their own references to an in-memory layer


def _bind_volume(under_fd: int, top: int, rootfs: str, i: int, path: str) -> None:
    """Bind volume i (on disk, or in the in-memory layer of an ephemeral container) at path in the overlay top."""
    if _memory_volumes:
        src = os.dup(_memory_volumes[i])
    else:
        try:
            src = linux.open_beneath(under_fd, f"{VOLUMES_DIR}/{i}")
        except OSError as e:
            raise PycorError(f"volume {path}: {rootfs}/{VOLUMES_DIR}/{i} cannot be opened ({e.strerror})",
                             "the container's layer is damaged; recreate the volume directory") from None
    try:
        tree = linux.open_tree(src, "", linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_EMPTY_PATH)
    except OSError as e:
        raise PycorError(f"volume {path}: cannot bind its directory ({e.strerror})",
                         "an ephemeral container's volumes live in its in-memory layer, which this kernel cannot bind "
                         "from (open_tree of a detached mount); create it without --ephemeral or without --volume"
                         if _memory_volumes else "check the kernel log (dmesg)") from None
    finally:
        os.close(src)
    try:
        try:
            target = open_mount_point(top, path)
        except NotADirectory as e:
            raise PycorError(e.message, blame(under_fd, rootfs, e.where)) from None
        try:
            linux.move_mount(tree, "", target, "", linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(target)
    finally:
        os.close(tree)


def blame(under_fd: int, rootfs: str, where: str) -> str:
    """Who put a symlink or file on a volume's path, and what to do: the container's changes, or the base."""
    try:
        os.close(linux.open_beneath(under_fd, f"{layer.UPPER}{where}", os.O_PATH | os.O_NOFOLLOW))
        mine = True
    except OSError as e:
        mine = e.errno == errno.ELOOP  # a symlink on the way in upper is the container's own too
    if mine:
        return (f"the container's own changes put a symlink or file at {where} (on the host: {rootfs}/{layer.UPPER}{where}); "
                "remove it there, or discard the changes with 'pycor reset'")
    return (f"its base, in the version it starts on, has a symlink or file at {where}, and a volume is mounted on "
            "directories only: pin the container to a version where it is a directory ('pycor pin NAME VERSION'), "
            "or make it one in the base ('pycor base update')")


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


def memory_tmpfs(size: int | None, mode: str = "0700") -> int:
    """A detached tmpfs (optionally size-limited), or a PycorError saying what the kernel lacks."""
    opts = {"mode": mode}
    if size:
        opts["size"] = str(size)
    try:
        return detached_mount("tmpfs", opts)
    except OSError as e:
        raise PycorError(f"cannot make the in-memory layer (tmpfs): {e.strerror}",
                         "the kernel needs the new mount API (5.2+); or create the container without --ephemeral") from None


def memory_layer(upper_fd: int, size: int | None, volumes: int = 0) -> tuple[int, int]:
    """O_PATH fds of a fresh upper and work on a detached tmpfs (optionally size-limited), and volumes/0..N-1
    beside them (their fds kept for mount_volumes): --size caps all of them together.

    upper gets the mode and owner of the on-disk upper: they become the container's
    '/'; the volumes belong to the same owner (container root), mode 0755.
    """
    st = os.fstat(upper_fd)
    mnt = memory_tmpfs(size)
    try:
        fds = []
        dirs = [("upper", stat.S_IMODE(st.st_mode)), ("work", 0o700)]
        if volumes:
            os.mkdir("volumes", 0o711, dir_fd=mnt)
            dirs += [(f"volumes/{i}", 0o755) for i in range(volumes)]
        for name, mode in dirs:
            os.mkdir(name, mode, dir_fd=mnt)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=mnt, follow_symlinks=False)
            os.chmod(name, mode, dir_fd=mnt, follow_symlinks=False)
            fds.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=mnt))
        _pinned.append(mnt)
        _memory_volumes.extend(fds[2:])
        return fds[0], fds[1]
    except BaseException:
        os.close(mnt)
        raise


# The fd of a detached mount's root keeps it mounted: closing it dissolves the
# mount even while fds inside it stay open, and overlayfs then cannot clone
# upperpath. Held until the overlay and the volumes' bind mounts have pinned it
# (mount_volumes), else to exit. _memory_volumes: O_PATH fds of the in-memory
# volumes of an ephemeral layer, bound by mount_volumes.
_pinned: list[int] = []
_memory_volumes: list[int] = []


def unpin() -> None:
    while _memory_volumes:
        os.close(_memory_volumes.pop())
    while _pinned:
        os.close(_pinned.pop())


def clone_delta_in_memory(rootfs_path: str, size: int | None) -> None:
    """For LXC's overlay clone of an ephemeral container (rootfs_path overlay:LOWER:DELTA): a tmpfs of the
    original's size on DELTA's folder, so LXC's overlay puts the clone's changes (DELTA) and its workdir
    (a sibling of DELTA) in memory too. The same as 'lxc-copy -e -t' does, by LXC's own pre-mount hook;
    in this mount namespace only, gone with it.
    """
    cut = rootfs_path.rfind(":/")
    if cut < 0:
        return
    folder = os.path.dirname(rootfs_path[cut + 1:])
    try:
        target = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise PycorError(f"cannot open {folder}, the folder of this overlay clone's changes: {e.strerror}",
                         "make the clone again with lxc-copy -e") from None
    try:
        mnt = memory_tmpfs(size, mode="0755")
        try:
            linux.move_mount(mnt, "", target, "", linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(mnt)  # attached now: the mount stays
    finally:
        os.close(target)


def before_overlay(fds: list[int], rootfs: str, meta: layer.LayerMeta) -> None:
    """pre-mount: for an ephemeral layer (meta) swap upper and work (fds[1], fds[2]) for memory.

    fds is [rootfs, upper, work]; the caller appends the base's lowerdirs
    after it, top first. For LXC's overlay clone of this container (lxc-copy
    -e: LXC_ROOTFS_PATH overlay:ROOTFS:DELTA) the original's upper is never
    an upperdir here: it becomes the top lowerdir (fds[3]) under an unused
    in-memory upper, and LXC then mounts its own overlay, whose upperdir is
    the clone's delta (destroyed at stop), on top of this view.
    """
    rootfs_path = os.environ.get("LXC_ROOTFS_PATH", "")
    clone = layer.is_overlay_clone(rootfs_path)
    if clone and meta.ephemeral:
        clone_delta_in_memory(rootfs_path, meta.size)
    if meta.ephemeral or clone:
        upper, work = memory_layer(fds[1], meta.size, len(meta.volumes) if meta.ephemeral and not clone else 0)
        if clone:
            fds.append(fds[1])  # the original's changes, read-only
        else:
            os.close(fds[1])
        os.close(fds[2])
        fds[1], fds[2] = upper, work
