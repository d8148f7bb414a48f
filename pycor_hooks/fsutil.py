"""Filesystem helpers for the front ends: sizes and removal, never following symlinks."""

from __future__ import annotations

import os
import shutil
import stat


def disk_usage(path: str) -> int:
    """Bytes allocated under path, each hard-linked inode counted once, symlinks not followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        top = stack.pop()
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            continue
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(top) as it:
                    stack.extend(e.path for e in it)
            except (FileNotFoundError, NotADirectoryError):
                pass
    return total


def remove_tree(path: str) -> None:
    """Remove a directory tree we own; shutil.rmtree never follows symlinks inside it."""
    if os.path.islink(path) or not os.path.lexists(path):
        if os.path.lexists(path):
            os.unlink(path)
        return
    # Directories made unreadable (overlayfs' work/work is mode 000) need their mode back first.
    def onerror(func, p, exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(p)
        if not os.path.islink(parent):
            os.chmod(parent, 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
            shutil.rmtree(p, onerror=onerror)
        else:
            func(p)

    shutil.rmtree(path, onerror=onerror)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
