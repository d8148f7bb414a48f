"""What a container changed against its base: a walk of its upper directory.

Each entry of upperdir is one of
- deleted: a whiteout (0/0 character device) hiding a file of the base;
- replaced: an opaque directory hiding the base's directory of that name;
- added: nothing of that name in the lower stack;
- changed: a copy-up of something the lower stack has (content or metadata).
A directory that only holds copied-up children, with the base's mode and
owner, is not listed itself.

Nothing is ever followed: upper is walked with lstat, and lower layers are
looked up with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
"""

from __future__ import annotations

import os
import stat

from . import linux
from .overlay import is_opaque, stat_is_whiteout


class Change:
    __slots__ = ("path", "kind", "type")

    def __init__(self, path: str, kind: str, type_: str) -> None:
        self.path, self.kind, self.type = path, kind, type_

    def to_json(self) -> dict:
        return {"path": self.path, "change": self.kind, "type": self.type}


def file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "other"


class LowerStack:
    """Lookups in a base's layers, top first, as overlayfs resolves them."""

    def __init__(self, layers: list[str]) -> None:
        self.fds = [os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p in layers]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def lookup(self, rel: str) -> os.stat_result | None:
        """The lower entry a path shows in the merged view, or None, resolved as overlayfs does:
        a directory merges the layers that have it, down to the first opaque one; a
        whiteout or a non-directory hides everything of that name below it."""
        parts = rel.split("/")
        active = self.fds
        for i in range(len(parts) - 1):
            prefix = "/".join(parts[: i + 1])
            merged = []
            for fd in active:
                st = self._stat(fd, prefix)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode):  # a whiteout or a file: no directory here
                    break
                merged.append(fd)
                if self._opaque(fd, prefix):
                    break
            if not merged:
                return None
            active = merged
        for fd in active:
            st = self._stat(fd, rel)
            if st is not None:
                return None if stat_is_whiteout(st) else st
        return None

    @staticmethod
    def _stat(dirfd: int, rel: str) -> os.stat_result | None:
        try:
            fd = linux.open_beneath(dirfd, rel, os.O_PATH | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _opaque(dirfd: int, rel: str) -> bool:
        try:
            fd = linux.open_beneath(dirfd, rel, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            return is_opaque(linux.fd_path(fd))
        finally:
            os.close(fd)


Shift = tuple[int, int, int, int]  # uid base, uid count, gid base, gid count


def diff_layer(upper: str, lowers: list[str], shift: Shift | None = None) -> list[Change]:
    """Changes recorded in upper against the lower stack (top first), sorted by path.

    shift: the host ids of an unprivileged container's root, so that its
    copied-up directories compare equal to the base's root-owned ones.
    """
    stack = LowerStack(lowers)
    changes: list[Change] = []
    try:
        _walk(upper, "", stack, changes, False, shift)
    finally:
        stack.close()
    return sorted(changes, key=lambda c: c.path)


def _walk(upper: str, rel: str, stack: LowerStack, out: list[Change], under_opaque: bool, shift: Shift | None) -> None:
    with os.scandir(os.path.join(upper, rel) if rel else upper) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        kind = file_type(st.st_mode)
        lower = None if under_opaque else stack.lookup(path)
        if stat_is_whiteout(st):
            if lower is not None:
                out.append(Change("/" + path, "deleted", file_type(lower.st_mode)))
            continue
        if kind == "dir":
            opaque = is_opaque(entry.path)
            if lower is None:
                out.append(Change("/" + path, "added", kind))
            elif opaque:
                out.append(Change("/" + path, "replaced", kind))
            elif _meta_differs(st, lower, shift):
                out.append(Change("/" + path, "changed", kind))
            _walk(upper, path, stack, out, under_opaque or opaque or lower is None, shift)
        else:
            out.append(Change("/" + path, "added" if lower is None else "changed", kind))


def _meta_differs(a: os.stat_result, b: os.stat_result, shift: Shift | None) -> bool:
    uid, gid = a.st_uid, a.st_gid
    if shift:
        ub, uc, gb, gc = shift
        uid = uid - ub if ub <= uid < ub + uc else uid
        gid = gid - gb if gb <= gid < gb + gc else gid
    return (a.st_mode, uid, gid) != (b.st_mode, b.st_uid, b.st_gid)
