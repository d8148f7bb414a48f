"""Filesystem helpers for the front ends: walks, sizes and removal, never following symlinks.

Container layers are walked by host root while the container may run: every
directory is entered through its parent's file descriptor with O_NOFOLLOW,
so a directory swapped for a symlink is never followed out of the tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from .errors import PycorError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(root: str | int, strict: bool = True) -> Iterator[tuple[str, os.stat_result, int, str]]:
    """Every entry below root, depth first and iteratively: (relative path, lstat, parent dir fd, name).

    Each directory is opened from root with openat2(RESOLVE_BENEATH |
    RESOLVE_NO_SYMLINKS): a directory swapped for a symlink is never followed,
    and only one directory is open at a time however wide the tree. The
    parent fd is valid while the caller handles the entry (use it with
    dir_fd= to act on the entry). A directory that cannot be entered raises
    PycorError when strict, else is skipped.
    """
    from .linux import open_beneath

    top = os.open(root, _DIR_FLAGS) if isinstance(root, str) else os.open(".", _DIR_FLAGS, dir_fd=root)
    pending = [""]
    try:
        while pending:
            rel = pending.pop()
            try:
                fd = open_beneath(top, rel, os.O_RDONLY | os.O_DIRECTORY) if rel else os.dup(top)
            except OSError as e:
                if strict:
                    raise PycorError(f"cannot enter {rel}: {e.strerror}", "was it replaced while pycor read it?") from None
                continue
            try:
                for name in sorted(os.listdir(fd), reverse=True):
                    path = f"{rel}/{name}" if rel else name
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone while we looked (a running container)
                    yield path, st, fd, name
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(top)


def disk_usage(path: str) -> int:
    """Bytes allocated under path, each hard-linked inode counted once, symlinks not followed."""
    try:
        top = os.stat(path, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = top.st_blocks * 512
    try:
        for _, st, _, _ in walk(path, strict=False):
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    except OSError:
        pass  # a tree that changes under us gets the size read so far
    return total


def remove_tree(path: str) -> None:
    """Remove a directory tree we own (root needs no mode bits); rmtree never follows symlinks inside it."""
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            if os.path.lexists(path):
                os.unlink(path)
            return
        import shutil  # its bz2 and lzma imports cost every CLI command 2 ms

        shutil.rmtree(path)
    except OSError as e:
        raise PycorError(f"cannot remove {e.filename or path}: {e.strerror}", "is something mounted or busy below it?") from None




def same_content(a: int, b: int) -> bool:
    """Whether two open files (read fds, at their start) hold the same bytes."""
    while True:
        x, y = os.read(a, 1 << 20), os.read(b, 1 << 20)
        if x != y:
            return False
        if not x:
            return True


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

