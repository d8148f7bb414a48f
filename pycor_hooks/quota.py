"""Disk quotas for a container's layer, the two ways LXD limits a volume.

btrfs: the container's rootfs is a subvolume (lxc-create -B btrfs; lxc-destroy
removes it) holding .pycor/upper, work and volumes; a qgroup limit on its
referenced bytes caps everything the container writes. Quotas are enabled on
the filesystem when first needed.

ext4 / XFS: a project id per container on .pycor and everything under it,
with PROJINHERIT on the directories (FS_IOC_FSSETXATTR), and a block limit
set with quotactl(Q_SETQUOTA, PRJQUOTA) on the filesystem's block device.
upper and work carry the same id: copy-up renames from work into upper, and
different ids there give EXDEV. The filesystem must be mounted with prjquota
(ext4 also needs the 'project' and 'quota' features), and the kernel needs
CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA.

Not on the hook path: the CLI and the template use it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
import zlib

from . import layer, linux
from .errors import PycorError, Unsupported
from .units import human_size
from .volumes import VOLUMES_DIR

# include/uapi/linux/fs.h: struct fsxattr (28 bytes) and its ioctls
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_PROJINHERIT = 0x00000200
_FSXATTR = struct.Struct("=IIIII8s")  # fsx_xflags, fsx_extsize, fsx_nextents, fsx_projid, fsx_cowextsize, pad
# include/uapi/linux/quota.h
Q_SETQUOTA = 0x800008
Q_GETQUOTA = 0x800007
PRJQUOTA = 2
QIF_BLIMITS = 1
QIF_SPACE = 2
QIF_DQBLKSIZE = 1024
PROJECT_BASE = 0x50000000  # project ids pycor hands out: above any /etc/projid a person writes by hand


class _IfDqblk(ctypes.Structure):
    _fields_ = [("dqb_bhardlimit", ctypes.c_uint64), ("dqb_bsoftlimit", ctypes.c_uint64), ("dqb_curspace", ctypes.c_uint64),
                ("dqb_ihardlimit", ctypes.c_uint64), ("dqb_isoftlimit", ctypes.c_uint64), ("dqb_curinodes", ctypes.c_uint64),
                ("dqb_btime", ctypes.c_uint64), ("dqb_itime", ctypes.c_uint64), ("dqb_valid", ctypes.c_uint32)]


def mount_of(path: str) -> tuple[str, str, str, str]:
    """(mount point, fstype, source, super options) of the filesystem holding path."""
    path = os.path.realpath(path)
    best = ("/", "?", "?", "")
    for m in linux.mounts():
        if (path == m.point or path.startswith(m.point.rstrip("/") + "/")) and len(m.point) >= len(best[0]):
            best = (m.point, m.fstype, m.source, m.options)
    return best


def block_device(path: str) -> str:
    """The block device node of the filesystem holding path (pyudev, from st_dev)."""
    import pyudev

    dev = pyudev.Devices.from_device_number(pyudev.Context(), "block", os.stat(path).st_dev)
    if not dev.device_node:
        raise Unsupported(f"no block device node for the filesystem of {path}")
    return str(dev.device_node)


def backend(path: str) -> tuple[str | None, str]:
    """Which quota pycor can set on a layer under path: ('btrfs' | 'project' | None, why)."""
    point, fstype, _, opts = mount_of(path)
    if fstype == "btrfs":
        return "btrfs", f"{point} is btrfs: a subvolume per container with a qgroup limit"
    if fstype in ("ext4", "xfs"):
        if "prjquota" in opts.split(","):
            return "project", f"{point} is {fstype} mounted with prjquota: a project quota per container"
        return None, f"{point} is {fstype} without prjquota"
    return None, f"{point} is {fstype}, which has no per-directory quota"


def require(path: str) -> str:
    """The quota backend for containers under path, or Unsupported saying what to do."""
    kind, why = backend(path)
    if kind is None:
        raise Unsupported(f"--size needs a quota where the containers live, and {why}",
                          "put the LXC path (-P) on btrfs (qgroups), or on ext4 with '-O quota,project' / XFS, "
                          "mounted with prjquota (kernel CONFIG_QFMT_V2 / CONFIG_XFS_QUOTA)")
    return kind


def run_btrfs(*args: str) -> str:
    proc = subprocess.run(["btrfs", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PycorError(f"btrfs {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}",
                         "check the filesystem with 'btrfs filesystem show' and 'btrfs qgroup show'")
    return proc.stdout


def is_subvolume(path: str) -> bool:
    st = os.stat(path, follow_symlinks=False)
    return st.st_ino == 256 and mount_of(path)[1] == "btrfs"


def subvolume_id(path: str) -> str:
    return run_btrfs("inspect-internal", "rootid", path).strip()


def btrfs_quota_on(path: str) -> bool:
    return subprocess.run(["btrfs", "qgroup", "show", path], capture_output=True).returncode == 0


def set_limit(rootfs: str, size: int | None) -> None:
    """Limit (size bytes) or unlimit (None) everything the container writes under rootfs."""
    kind = require(rootfs)
    if kind == "btrfs":
        if not is_subvolume(rootfs):
            raise Unsupported(f"{rootfs} is a plain directory on btrfs, not a subvolume, so it cannot carry a qgroup limit",
                              "create the container with --size (pycor makes its rootfs a subvolume: lxc-create -B btrfs)")
        point = mount_of(rootfs)[0]
        if not btrfs_quota_on(rootfs):
            run_btrfs("quota", "enable", point)
        # named by its id, through the mount point: through the subvolume itself, btrfs refuses
        # to change the limit of a subvolume at its limit (EDQUOT), the very time to raise it
        run_btrfs("qgroup", "limit", str(size) if size else "none", f"0/{subvolume_id(rootfs)}", point)
    else:
        set_project_limit(rootfs, size)


def usage(rootfs: str) -> tuple[int, int | None] | None:
    """(bytes used, limit or None) of the container's quota group, or None when it has none."""
    try:
        if mount_of(rootfs)[1] == "btrfs":
            # LXC's btrfs rootfs is the subvolume; LXD's instance subvolume is its parent
            sub = next((p for p in (rootfs, os.path.dirname(rootfs)) if is_subvolume(p)), None)
            if sub is None or not btrfs_quota_on(sub):
                return None
            qid = f"0/{subvolume_id(sub)}"
            for line in run_btrfs("qgroup", "show", "-re", "--raw", "--sync", sub).splitlines():
                cols = line.split()
                if cols and cols[0] == qid:
                    return int(cols[1]), (None if cols[3] == "none" else int(cols[3]))
            return None
        return project_usage(rootfs)
    except (OSError, PycorError):
        return None


def has_room(rootfs: str) -> bool:
    """Whether the container's layer has room for the files every start creates (layer.has_room); a layer
    that cannot be probed (damaged: its start says why) is not reported full."""
    try:
        fd = layer.open_rootfs(rootfs)
        try:
            return layer.has_room(fd)
        finally:
            os.close(fd)
    except (OSError, PycorError):
        return True


def settled_room(rootfs: str) -> bool:
    """has_room, asked again once what deletions freed is committed (btrfs counts it at the next commit)."""
    if has_room(rootfs):
        return True
    usage(rootfs)  # 'qgroup show --sync' commits
    return has_room(rootfs)


def room_error(name: str, rootfs: str, meta: layer.LayerMeta | None, after: str | None = None) -> PycorError | None:
    """None if the container has room to start; else the error saying what fills its limit and the fixes.

    after: what the command did first ('changes discarded'): the message then
    says the container still uses what it uses. Its volumes are counted apart,
    since no pycor command frees them.
    """
    if settled_room(rootfs):
        return None
    got = usage(rootfs)
    subject = f"container {name}: {after}, but it still" if after else f"container {name}"
    if got is None or got[1] is None:
        return PycorError(f"{subject} cannot start: the filesystem holding {rootfs} is full",
                          "free space on it (LXC and overlayfs create files in the container's layer at every start)")
    used, limit = got
    vols = volume_usage(rootfs, meta)
    fixes = []
    if vols:
        fixes.append("free space in its volumes, on the host: "
                     + ", ".join(f"{path} is {rootfs}/{VOLUMES_DIR}/{i}" for i, (path, _) in enumerate(vols)))
    if after is None:
        fixes.append(f"discard its changes: pycor reset {name}" + (" (its volumes are kept)" if vols else ""))
    fixes.append(f"raise the limit: pycor set {name} size={suggest_size(used)}")
    return PycorError(f"{subject} uses {usage_phrase(used, limit, vols)}: it will not start until there is room "
                      "(LXC and overlayfs create files in its layer at every start)", "; or ".join(fixes))


def volume_usage(rootfs: str, meta: layer.LayerMeta | None) -> list[tuple[str, int]]:
    """(container path, bytes on the host) of each of an on-disk container's volumes."""
    from .fsutil import disk_usage

    if meta is None or meta.ephemeral:
        return []
    return [(path, disk_usage(os.path.join(rootfs, VOLUMES_DIR, str(i)))) for i, path in enumerate(meta.volumes)]


def usage_phrase(used: int, limit: int | None, vols: list[tuple[str, int]]) -> str:
    """'20.0 MiB of its limit 20.0 MiB, 19.9 MiB of it in its volumes (/data 19.9 MiB)'."""
    text = f"{human_size(used)} of its limit {human_size(limit)}" if limit else human_size(used)
    if vols:
        text += (f", {human_size(sum(n for _, n in vols))} of it in its volumes ("
                 + ", ".join(f"{path} {human_size(n)}" for path, n in vols) + ")")
    return text


def suggest_size(used: int) -> str:
    """A limit that leaves a container room: a quarter more than it uses, at least 64 MiB more, in whole MiB."""
    mib = 1 << 20
    return f"{-(-(used + max(used // 4, 64 * mib)) // mib)}MiB"


# -- ext4 / XFS project quotas ------------------------------------------------------
def project_id(rootfs: str) -> int:
    """One project id per container layer, stable for its path."""
    return PROJECT_BASE + (zlib.crc32(os.path.realpath(rootfs).encode()) & 0x0FFFFFFF)


def get_project(fd: int) -> tuple[int, int]:
    """(fsx_xflags, fsx_projid) of an open file."""
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
    flags, _, _, projid, _, _ = _FSXATTR.unpack(buf)
    return flags, projid


def set_project(fd: int, projid: int, inherit: bool) -> None:
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf)
    flags, extsize, nextents, _, cow, pad = _FSXATTR.unpack(buf)
    if inherit:
        flags |= FS_XFLAG_PROJINHERIT
    fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(flags, extsize, nextents, projid, cow, pad))


def tag_layer(rootfs: str, projid: int) -> None:
    """Give .pycor and everything in it (upper, work, volumes) the project id; PROJINHERIT on directories.

    Walks by fds (os.fwalk never follows a symlink); symlinks themselves cannot
    be opened for the ioctl and stay in their old project (a few bytes each).
    """
    fd = layer.open_rootfs(rootfs)
    try:
        top = linux.open_beneath(fd, layer.PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(fd)
    try:
        for _, dirs, files, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            set_project(dfd, projid, True)
            for name in files:
                try:
                    f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
                except OSError:
                    continue  # a symlink, socket or device: not taggable
                try:
                    set_project(f, projid, False)
                finally:
                    os.close(f)
    finally:
        os.close(top)


def quotactl(cmd: int, device: str, qid: int, dq: _IfDqblk) -> None:
    linux.quotactl((cmd << 8) | PRJQUOTA, device, qid, ctypes.byref(dq))


def set_project_limit(rootfs: str, size: int | None) -> None:
    projid = project_id(rootfs)
    tag_layer(rootfs, projid)
    dq = _IfDqblk()
    dq.dqb_bhardlimit = dq.dqb_bsoftlimit = ((size or 0) + QIF_DQBLKSIZE - 1) // QIF_DQBLKSIZE
    dq.dqb_valid = QIF_BLIMITS
    try:
        quotactl(Q_SETQUOTA, block_device(rootfs), projid, dq)
    except OSError as e:
        raise PycorError(f"cannot set the project quota of {rootfs}: {e.strerror}",
                         "mount the filesystem with prjquota (ext4 needs '-O quota,project')") from None


def project_usage(rootfs: str) -> tuple[int, int | None] | None:
    fd = os.open(os.path.join(rootfs, layer.PYCOR_DIR), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        projid = get_project(fd)[1]
    finally:
        os.close(fd)
    if projid != project_id(rootfs):
        return None
    dq = _IfDqblk()
    quotactl(Q_GETQUOTA, block_device(rootfs), projid, dq)
    return int(dq.dqb_curspace), (int(dq.dqb_bhardlimit) * QIF_DQBLKSIZE or None)
