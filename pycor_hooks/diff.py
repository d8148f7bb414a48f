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
from .fsutil import walk
from .idmap import IdMap
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
        found = self.find(rel)
        return found[1] if found else None

    def find(self, rel: str) -> tuple[int, os.stat_result] | None:
        """Like lookup, with the fd of the layer that holds the entry (to read it beneath that fd)."""
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
                return None if stat_is_whiteout(st) else (fd, st)
        return None

    def listdir(self, rel: str, limit: int = 100000) -> dict[str, tuple[int, os.stat_result]]:
        """What the merged directory rel ("" for the top) shows: name -> (fd of the layer holding it, lstat),
        merged as overlayfs merges it (down to the first opaque copy; whiteouts hide). At most limit entries."""
        layers = self.fds
        parts = rel.split("/") if rel else []
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            merged = []
            for fd in layers:
                st = self._stat(fd, prefix)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break
                merged.append(fd)
                if self._opaque(fd, prefix):
                    break
            layers = merged
        out: dict[str, tuple[int, os.stat_result]] = {}
        gone: set[str] = set()
        for fd in layers:
            try:
                dfd = linux.open_beneath(fd, rel, os.O_RDONLY | os.O_DIRECTORY) if rel else os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                continue
            try:
                for name in os.listdir(dfd):
                    if name in out or name in gone:
                        continue
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat_is_whiteout(st):
                        gone.add(name)
                    elif len(out) < limit:
                        out[name] = (fd, st)
            finally:
                os.close(dfd)
        return out

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
            return is_opaque(fd)
        finally:
            os.close(fd)


def diff_layer(upper: str | int, lowers: list[str], idmap: IdMap | None = None, namespace: str | None = None) -> list[Change]:
    """Changes recorded in upper (a path or a directory fd) against the lower stack (top first), sorted by path.

    idmap: an unprivileged container's map, so that its copied-up
    directories, owned by host ids, compare equal to the base's.
    namespace: the one upper's overlay xattrs are in (the layer records it),
    so that only what the container's own mount reads counts as opaque.
    """
    stack = LowerStack(lowers)
    changes: list[Change] = []
    hidden: list[str] = []  # directories whose lower contents do not show: added or opaque
    try:
        for rel, st, parent, name in walk(upper, strict=False):
            kind = file_type(st.st_mode)
            under = any(rel.startswith(h + "/") for h in hidden)
            lower = None if under else stack.lookup(rel)
            if stat_is_whiteout(st):
                if lower is not None:
                    changes.append(Change("/" + rel, "deleted", file_type(lower.st_mode)))
                continue
            if kind != "dir":
                changes.append(Change("/" + rel, "added" if lower is None else "changed", kind))
                continue
            opaque = is_opaque_at(parent, name, namespace)
            if lower is None:
                changes.append(Change("/" + rel, "added", kind))
                hidden.append(rel)
            elif opaque:
                changes.append(Change("/" + rel, "replaced", kind))
                hidden.append(rel)
            elif _meta_differs(st, lower, idmap):
                changes.append(Change("/" + rel, "changed", kind))
    finally:
        stack.close()
    return sorted(changes, key=lambda c: c.path)


class Difference:
    """One path where two views differ: only in `a`, only in `b`, or in both with other content or type."""

    __slots__ = ("path", "kind", "a", "b")

    def __init__(self, path: str, kind: str, a: bytes | None = None, b: bytes | None = None) -> None:
        self.path, self.kind, self.a, self.b = path, kind, a, b  # a, b: a regular file's bytes (or a link's target)


def _tree(stack: LowerStack, rel: str, limit: int) -> dict[str, tuple[int, os.stat_result]]:
    found = stack.find(rel)
    if found is None:
        return {}
    out = {rel: found}
    pending = [rel] if stat.S_ISDIR(found[1].st_mode) else []
    while pending and len(out) < limit:
        d = pending.pop()
        for name, entry in stack.listdir(d, limit).items():
            path = f"{d}/{name}"
            out[path] = entry
            if stat.S_ISDIR(entry[1].st_mode):
                pending.append(path)
    return out


def _content(entry: tuple[int, os.stat_result], rel: str, limit: int) -> bytes | None:
    fd, st = entry
    try:
        if stat.S_ISLNK(st.st_mode):
            head, _, name = rel.rpartition("/")
            dfd = linux.open_beneath(fd, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                return os.fsencode(os.readlink(name, dir_fd=dfd))
            finally:
                os.close(dfd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(linux.open_beneath(fd, rel, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def compare(a_layers: list[str], b_layers: list[str], rel: str, limit: int = 100000, read_limit: int = 8 << 20,
            budget: int = 256 << 20) -> list[Difference]:
    """Where two stacks (top first) show rel differently: a file, or a directory compared entry by entry, recursively
    ("only in a", "only in b", "differs": content, link target or type). At most limit entries are looked at;
    files are compared on their first read_limit bytes, and on their sizes alone once budget bytes were read
    ("differs in size", no content). Sorted by path."""
    sa, sb = LowerStack(a_layers), LowerStack(b_layers)
    try:
        ta, tb = _tree(sa, rel, limit), _tree(sb, rel, limit)
        out = []
        for path in sorted(set(ta) | set(tb)):
            ea, eb = ta.get(path), tb.get(path)
            if ea is None or eb is None:
                # under a directory only one side has, name that directory alone
                head = path.rpartition("/")[0]
                if (ta.get(head) if ea is not None else tb.get(head)) is not None and (tb.get(head) if ea is not None else ta.get(head)) is None:
                    continue
                out.append(Difference(path, "only in a" if eb is None else "only in b"))
                continue
            if stat.S_IFMT(ea[1].st_mode) != stat.S_IFMT(eb[1].st_mode):
                out.append(Difference(path, "differs", None, None))
                continue
            if stat.S_ISDIR(ea[1].st_mode):
                continue
            if budget <= 0:
                if ea[1].st_size != eb[1].st_size:
                    out.append(Difference(path, "differs in size"))
                continue
            ca, cb = _content(ea, path, read_limit), _content(eb, path, read_limit)
            budget -= len(ca or b"") + len(cb or b"")
            if ca != cb:
                out.append(Difference(path, "differs", ca, cb))
        return out
    finally:
        sa.close()
        sb.close()


def is_opaque_at(parent: int, name: str, namespace: str | None = None) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return False  # replaced while we looked
    try:
        return is_opaque(fd, None if namespace is None else namespace == "user")
    finally:
        os.close(fd)


def _meta_differs(a: os.stat_result, b: os.stat_result, idmap: IdMap | None) -> bool:
    uid, gid = a.st_uid, a.st_gid
    if idmap is not None:
        uid, gid = idmap.host_to_ns("u", uid), idmap.host_to_ns("g", gid)
    return (a.st_mode, uid, gid) != (b.st_mode, b.st_uid, b.st_gid)
