"""A container's own layer, kept inside its rootfs directory.

    ROOTFS/.pycor/layer.json   base name and pinned version (no paths, ever)
    ROOTFS/.pycor/upper/       overlayfs upperdir: the container's changes
    ROOTFS/.pycor/work/        overlayfs workdir

The overlay is mounted on ROOTFS itself, so the running container never sees
.pycor/, and anything that copies or removes the rootfs directory (lxc-copy,
lxc-destroy, LXD snapshots and exports) carries exactly the container's changes.

Everything under ROOTFS is opened with open_beneath(): no symlink is followed.
Hot path: the hooks import this.
"""

from __future__ import annotations

import errno
import os
import stat

from . import flatjson, linux
from .errors import PycorError
from .flatjson import Record
from .names import check_name, check_version

TYPE_CHECKING = False  # typing costs a start 2 ms; type checkers read this as True
if TYPE_CHECKING:
    from typing import Any

PYCOR_DIR = ".pycor"
META = f"{PYCOR_DIR}/layer.json"
UPPER = f"{PYCOR_DIR}/upper"
WORK = f"{PYCOR_DIR}/work"
META_LIMIT = 4096
RESET_ASIDE = ".discard"  # upper.discard, work.discard: set aside by a reset (versions.reset), emptied, renamed back
# The namespace a layer's overlay xattrs are in (trusted.overlay.*: a privileged mount; user.overlay.*: userxattr),
# or a conversion under way between them, phase 1 or 2 (see ovlxattr.py).
XATTR_STATES = ("trusted", "user", "trusted>user:1", "trusted>user:2", "user>trusted:1", "user>trusted:2")
# Daemon folders whose storage pools hold instance rootfs directories (LXD deb, LXD snap, Incus).
DAEMON_DIRS = ("/var/lib/lxd", "/var/snap/lxd/common/lxd", "/var/lib/incus")
# UPGRADE_DIR.ROOTFS-NAME beside (never in) a container's rootfs directory: the copy an upgrade works on, then
# (swapped) the old layer while the container upgrades (upgrade.scratch_path)
UPGRADE_DIR = ".pycor-upgrade"


def upgrade_scratch(rootfs: str) -> str:
    """Where an upgrade stages its copy and keeps the old layer: beside the container's rootfs directory, never in
    it (LXD's and Incus's file API reach every name in a stopped container's rootfs directory, as root; none
    outside it), on the same filesystem (RENAME_EXCHANGE). Only the admin controls the parent (the runtime's
    config, a panel's --dir checked by Driver.check_place), so host root may use the path as a string."""
    rootfs = rootfs.rstrip("/")
    return os.path.join(os.path.dirname(rootfs), f"{UPGRADE_DIR}.{os.path.basename(rootfs)}")


class LayerMeta(Record):
    """What a layer's changes run on: its base, a pinned version (or None: follow current), and the
    version its changes were last made against or reconciled with (None: not known, a layer from pycor 0.1),
    and that version's content digest (None: not known), so another host can tell whether its version of that
    number is the same tree.

    Everything here is untrusted to code running as host root: the file belongs to the layer's owner (container
    root, mapped when unprivileged, so that LXD's and Incus's publish keep it), so it is read bounded
    (META_LIMIT), every name is checked, and no path is ever taken from it."""

    __slots__ = ("base", "pin", "based_on", "digest", "volumes", "ephemeral", "size", "xattrs")
    base: str
    pin: str | None
    based_on: str | None
    digest: str | None  # of the based_on version, as its store recorded it when the layer moved there
    volumes: list[str]  # container paths of volumes; volume i lives in .pycor/volumes/i (see volumes.py)
    ephemeral: bool  # upper and work in memory (a tmpfs), the container destroyed at stop
    size: int | None  # bytes: the tmpfs limit of an ephemeral layer (on disk the qgroup/project quota is the limit)
    xattrs: str | None  # one of XATTR_STATES; None: not recorded (a layer of an older pycor, or a new image's)

    def __init__(self, base: str, pin: str | None = None, based_on: str | None = None, digest: str | None = None,
                 volumes: list[str] | None = None, ephemeral: bool = False, size: int | None = None,
                 xattrs: str | None = None) -> None:
        super().__init__(base, pin, based_on, digest, list(volumes or []), ephemeral, size, xattrs)

    def but(self, **changes: Any) -> LayerMeta:
        """A copy with some fields changed: every other field (volumes, ...) kept."""
        return LayerMeta(**{**self.to_json(), **changes})


def choices(meta: LayerMeta) -> str:
    """What its creator chose for a layer (base, in-memory layer, size, volumes), as one comparable text."""
    return flatjson.dumps({"base": meta.base, "ephemeral": meta.ephemeral, "size": meta.size, "volumes": meta.volumes})


def rootfs_dir(path: str) -> str:
    """The directory of an LXC rootfs path ('dir:' prefix allowed, other backends refused)."""
    for prefix in ("dir:", "btrfs:"):  # btrfs: a subvolume (lxc-create -B btrfs), e.g. for a quota
        if path.startswith(prefix):
            path = path[len(prefix):]
    if is_overlay_clone(path):
        raise PycorError(
            f"rootfs {path!r} is an LXC overlay clone of a pycor container: only its hooks run it",
            "for a lasting copy use a directory rootfs: 'lxc-copy -n ORIG -N NEW'",
        )
    if not path.startswith("/"):
        raise PycorError(
            f"rootfs {path!r} is not a directory path",
            "pycor containers use a directory rootfs (lxc.rootfs.path = dir:/...)",
        )
    return path


def is_overlay_clone(path: str) -> bool:
    """LXC's overlay rootfs (lxc-copy -s / -e of a directory container): overlay:LOWER:UPPER."""
    return path.startswith("overlay:") or path.startswith("overlayfs:")


def hook_rootfs(path: str) -> str:
    """The layer directory a hook works on: rootfs_dir, or LOWER of an overlay clone (see volumes.before_overlay)."""
    if is_overlay_clone(path):
        lower = path.split(":")[1]
        if lower.startswith("/"):
            return lower
    return rootfs_dir(path)


def open_rootfs(rootfs: str) -> int:
    try:
        return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PycorError(f"cannot open rootfs {rootfs}: {e.strerror}", "is the container's lxc.rootfs.path right?") from None


def is_layer(rootfs: str) -> bool:
    """Whether rootfs holds a pycor layer: a real .pycor directory with a layer.json (no symlink followed).

    A layer.json that is not a regular file still makes a layer, a damaged
    one: read_meta() says what is wrong, and listings show it as damaged
    rather than losing the container.
    """
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(rootfs, PYCOR_DIR)).st_mode) and \
            os.path.lexists(os.path.join(rootfs, META))
    except OSError:
        return False


def parse_meta(data: bytes, where: str) -> LayerMeta:
    try:
        raw = flatjson.load(data)
        base = check_name(str(raw["base"]), "base name")
        pin, based_on, digest = raw.get("pin"), raw.get("based_on"), raw.get("digest")
        if digest and not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError(f"digest {digest!r} is not a sha256")
        volumes = [str(v) for v in raw.get("volumes", [])]
        if any(not v.startswith("/") or "/." in v for v in volumes):  # checked in full at create (volumes.check_paths)
            raise ValueError(f"bad volume path in {volumes}")
        size = raw.get("size")
        xattrs = raw.get("xattrs")
        if xattrs is not None and xattrs not in XATTR_STATES:
            raise ValueError(f"xattrs {xattrs!r} is not one of {', '.join(XATTR_STATES)}")
        return LayerMeta(base, check_version(str(pin)) if pin else None, check_version(str(based_on)) if based_on else None,
                         digest or None, volumes, bool(raw.get("ephemeral", False)), int(size) if size is not None else None,
                         xattrs)
    except (ValueError, KeyError, TypeError, AttributeError, PycorError) as e:
        raise PycorError(f"{where} is not valid pycor layer metadata ({e})", "recreate the container with 'pycor create'") from None


def read_meta(rootfs_fd: int, rootfs: str) -> LayerMeta:
    return read_meta_stat(rootfs_fd, rootfs)[0]


def read_meta_stat(rootfs_fd: int, rootfs: str) -> tuple[LayerMeta, os.stat_result]:
    """The layer's metadata and the stat of layer.json (its owner: see meta_owner_fixed)."""
    where = os.path.join(rootfs, META)
    try:
        # O_NONBLOCK: a FIFO planted here must not hang a hook
        fd = linux.open_beneath(rootfs_fd, META, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PycorError(f"{where} is missing: this is not a pycor container", "create it with 'lxc-create -t pycor' or 'pycor create'") from None
    except OSError as e:
        raise PycorError(f"refusing to open {where}: {e.strerror}", "a symlink was planted in the container's layer; remove it") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PycorError(f"{where} is not a regular file", "something replaced the container's layer metadata; recreate it")
        if st.st_nlink != 1:  # linked from the container's own files (a daemon's SFTP links), it could write it running
            raise PycorError(f"{where} has {st.st_nlink} names: something linked it into the container's files",
                             "copy it to a file of its own (cp layer.json x && mv x layer.json)")
        data = f.read(META_LIMIT + 1)
    if len(data) > META_LIMIT:
        raise PycorError(f"{where} is larger than {META_LIMIT} bytes", "it was not written by pycor")
    return parse_meta(data, where), st


def owner_at(pycor_fd: int) -> tuple[int, int] | None:
    """The layer's owner: upper's (host root, or container root's mapped ids), from a fd of .pycor; None without upper.

    Every file pycor keeps in .pycor belongs to it: LXD's and Incus's publish
    leave out what their idmap cannot map back (host root's files, when the
    container is unprivileged), and a layer without its layer.json is no layer.
    """
    try:
        st = os.stat("upper", dir_fd=pycor_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_uid, st.st_gid) if stat.S_ISDIR(st.st_mode) else None


def beside(rootfs_fd: int) -> list[str]:
    """What lies beside .pycor in the rootfs directory (an O_PATH fd of it), sorted: one listdir.

    Nothing, for a pycor container; what LXD and Incus wrote there for a file
    push into the stopped container otherwise (see inbox.py).
    """
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=rootfs_fd)
    try:
        return sorted(n for n in os.listdir(fd) if n != PYCOR_DIR)
    finally:
        os.close(fd)


def give_to_owner(fd: int, owner: tuple[int, int] | None) -> None:
    """Give a file or directory pycor just made in .pycor (an fd, not O_PATH) the layer's owner."""
    if owner is not None and owner != (0, 0):
        os.fchown(fd, *owner)


def write_meta(rootfs: str, meta: LayerMeta, durable: bool = False) -> None:
    """Replace layer.json with one rename, owned by the layer's owner; durable: fsync'd (a step others rely on)."""
    fd = open_rootfs(rootfs)
    try:
        dfd = linux.open_beneath(fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(fd)
    tmp = f"layer.json.tmp{os.getpid()}"
    try:
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        try:
            give_to_owner(wfd, owner_at(dfd))
            with os.fdopen(wfd, "w", encoding="utf-8") as f:
                f.write(flatjson.dumps(meta.to_json()))
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(tmp, "layer.json", src_dir_fd=dfd, dst_dir_fd=dfd)
            if durable:
                os.fsync(dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def meta_owner_fixed(lay: OpenLayer) -> bool:
    """Give layer.json the layer's owner if it has another (written as host root by an older pycor); True if it did.

    Costs one fstat of upper when nothing is to be done.
    """
    up = os.fstat(lay.upper_fd)
    if (lay.meta_stat.st_uid, lay.meta_stat.st_gid) == (up.st_uid, up.st_gid):
        return False
    dfd = linux.open_beneath(lay.rootfs_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("layer.json", "conflicts.json"):  # the records an older pycor wrote as host root (reconcile's too)
            try:
                os.chown(name, up.st_uid, up.st_gid, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
    finally:
        os.close(dfd)
    return True


def create_layer(rootfs: str, meta: LayerMeta, uid: int = 0, gid: int = 0) -> None:
    """Make .pycor/ with upper, work and metadata in an existing, empty rootfs directory.

    uid/gid own upper and work: host root for a privileged container, the
    host id of container root for an unprivileged one. upper's own mode and
    owner become those of the container's '/'.
    """
    if os.path.lexists(os.path.join(rootfs, PYCOR_DIR)):
        raise PycorError(f"{rootfs} already holds a pycor layer", "pick a new container name")
    fd = open_rootfs(rootfs)
    try:
        os.mkdir(PYCOR_DIR, 0o700, dir_fd=fd)
        secure_pycor_dir(fd, rootfs, (uid, gid) if uid else None)
        for sub, mode in (("upper", 0o755), ("work", 0o700)):
            path = f"{PYCOR_DIR}/{sub}"
            os.mkdir(path, mode, dir_fd=fd)
            sfd = linux.open_beneath(fd, path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchown(sfd, uid, gid)
                os.fchmod(sfd, mode)  # mkdir honoured the umask
            finally:
                os.close(sfd)
    finally:
        os.close(fd)
    write_meta(rootfs, meta)


def secure_pycor_dir(rootfs_fd: int, rootfs: str, mapped_root: tuple[int, int] | None) -> None:
    """Make .pycor reachable by no host user but root and, if unprivileged, the container's mapped root.

    upper holds whatever the container wrote, setuid binaries and device
    nodes included: a host user who could reach it would run them. Privileged:
    root 0700. Unprivileged (pre-mount opens upper and work as the mapped
    root): root:MAPPED_GID 0710, so the mapped root traverses but cannot
    rename what is in it; a .pycor owned by the mapped root itself (LXD shifts
    its image's rootfs to the map) becomes 0700. Layers made by older pycor
    (0711) are fixed at their next start.
    """
    dfd = linux.open_beneath(rootfs_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.fstat(dfd)
        mode, gid = 0o700, st.st_gid
        if mapped_root is not None and st.st_uid != mapped_root[0]:
            mode, gid = 0o710, mapped_root[1]
        if gid != st.st_gid:
            os.fchown(dfd, st.st_uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(dfd, mode)
    except OSError as e:
        raise PycorError(f"cannot restrict {os.path.join(rootfs, PYCOR_DIR)} to root: {e.strerror}",
                         "the container's layer must be on a filesystem that keeps owners and modes") from None
    finally:
        os.close(dfd)


def has_room(rootfs_fd: int) -> bool:
    """Whether a new file fits in the layer: every start creates some (LXC pins a privileged rootfs with one,
    overlayfs remakes its workdir's), and a layer at its quota, or a full disk, refuses them.

    The probe is an unnamed file (O_TMPFILE) in .pycor: it allocates an inode as
    a create does, and leaves nothing behind, even when killed.
    """
    pfd = linux.open_beneath(rootfs_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=pfd)
    except OSError as e:
        if e.errno in (errno.EDQUOT, errno.ENOSPC):
            return False
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return True  # a filesystem without O_TMPFILE: not probed
        raise
    finally:
        os.close(pfd)
    os.close(fd)
    return True


def open_layer_dirs(rootfs_fd: int, rootfs: str) -> tuple[int, int]:
    """O_PATH fds of upper and work, refusing symlinks and anything outside the rootfs."""
    fds: list[int] = []
    try:
        for rel in (UPPER, WORK):
            try:
                fds.append(linux.open_beneath(rootfs_fd, rel))
            except OSError as e:
                raise PycorError(
                    f"cannot open {os.path.join(rootfs, rel)}: {e.strerror}",
                    f"a 'pycor reset' of this container was interrupted ({rel}{RESET_ASIDE}): run it again" if e.errno == errno.ENOENT
                    else "the container's layer is damaged or a symlink was planted there",
                ) from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


class OpenLayer:
    """A container's layer, checked and held open: meta, and O_PATH fds of rootfs, upper and work.

    Callers act on the fds (or their /proc/self/fd paths), never on path
    strings, so nothing swapped in after the check is followed.
    """

    def __init__(self, rootfs: str) -> None:
        self.rootfs = rootfs
        self.rootfs_fd = open_rootfs(rootfs)
        try:
            self.meta, self.meta_stat = read_meta_stat(self.rootfs_fd, rootfs)
            self.upper_fd, self.work_fd = open_layer_dirs(self.rootfs_fd, rootfs)
        except BaseException:
            os.close(self.rootfs_fd)
            raise

    @property
    def upper(self) -> str:
        """upper as a path naming exactly the checked directory, valid in this process and its children."""
        return f"/proc/{os.getpid()}/fd/{self.upper_fd}"

    def __enter__(self) -> "OpenLayer":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self.upper_fd, self.work_fd, self.rootfs_fd):
            os.close(fd)
