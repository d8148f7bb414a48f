"""Overlayfs vocabulary: mount options, the mount itself, whiteouts and opaque dirs.

Hot path: the pre-mount hook imports this.
"""

from __future__ import annotations

import os
import stat

from . import linux

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def escape(path: str) -> str:
    """Escape a layer path for an overlay option string (',' ':' and '\\' are special)."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def overlay_options(lowerdirs: list[str], upperdir: str, workdir: str, userxattr: bool = False) -> str:
    """lowerdir is top first, as overlayfs stacks it."""
    if not lowerdirs:
        raise ValueError("an overlay needs at least one lowerdir")
    opts = [
        "lowerdir=" + ":".join(escape(p) for p in lowerdirs),
        "upperdir=" + escape(upperdir),
        "workdir=" + escape(workdir),
    ]
    if userxattr:
        opts.append("userxattr")  # no trusted.* xattrs inside a user namespace
    return ",".join(opts)


def mount_overlay(lower_fds: list[int], upper_fd: int, work_fd: int, target_fd: int, userxattr: bool = False) -> None:
    """Mount an overlay of already-opened directories on target.

    Layers are named by /proc/self/fd paths: the kernel resolves exactly the
    directories we opened (no path can be swapped or planted in between) and
    no escaping of special characters in real paths is ever needed.
    """
    options = overlay_options(
        [linux.fd_path(fd) for fd in lower_fds], linux.fd_path(upper_fd), linux.fd_path(work_fd), userxattr
    )
    linux.mount("overlay", linux.fd_path(target_fd), "overlay", 0, options)


def stat_is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dir_fd: int) -> bool:
    """Whether a directory (an O_RDONLY fd) in a layer hides everything below it."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(dir_fd, name) == b"y":
                return True
        except OSError:
            continue
    return False
