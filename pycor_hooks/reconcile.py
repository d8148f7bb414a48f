"""Reconciliation: move a container's own changes from the base version they
were made against (A) onto another version (B).

A container's upper directory shadows whole files: once it changed
/etc/passwd, it no longer sees the base's /etc/passwd at all. When the base
changed the same paths between A and B, the container would keep a frozen
copy. For every path both changed:

- shared databases (merge.DATABASES: accounts, dpkg, apt, debconf) are merged
  three ways, record by record (A's file, B's file, the container's copy);
  a result equal to B's file drops the container's copy, so it follows the
  base again;
- derived caches (merge.DERIVED) are dropped: B's copy shows instead of a
  stale one;
- per-container paths (merge.IGNORED_PREFIXES, logs) stay as they are;
- a file the container holds byte for byte as the base now has it is dropped:
  it follows the base again, and nobody has anything to decide;
- a whiteout over a file of a package the container removed or purged, which
  the base upgraded, stays (the container's decision), and the files the
  base's new version of that package adds are whited out too;
- anything else stays the container's and is reported as a conflict, as dpkg
  keeps an admin's modified conffile; a conflict stays reported, move after
  move, until it is resolved or the container's copy is gone or equal.

An opaque directory the container made where A showed nothing (dpkg makes a
directory as NAME.dpkg-new and renames it; overlayfs marks the renamed
directory opaque) hid nothing: its opaque mark goes, so what later versions
add there shows (and its entries are reconciled like any other).

A uid or gid used by two names after the merge, or a package that apt-get
check would find broken after the move and not before (the base moved a
library on under the container's own packages: depcheck), stops the move
(Conflict), unless forced; `pycor rebase NAME --upgrade` moves the container
and brings its own packages along (upgrade.py).

Writes go only into the container's own layer, through directory fds, never
following a symlink. Crash safety: every new file is staged in
.pycor/reconcile/, then a plan naming every replacement and removal is
written and renamed into place (the commit point), then applied. recover()
rolls a committed plan forward (renames already done are skipped) and
discards an uncommitted one, so a crash leaves the old state or the new
one, and running it again changes nothing.

Not on a normal start: pre-start imports this only when a container's version moved.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator

from . import linux, merge
from .diff import LowerStack, file_type, is_opaque_at
from .errors import Conflict, Damaged, PycorError
from .fsutil import same_content, walk
from .layer import give_to_owner, owner_at
from .overlay import stat_is_whiteout

RECONCILE_DIR = "reconcile"  # in .pycor/: staged files and the plan
PLAN = "plan"
CONFLICTS = "conflicts.json"  # in .pycor/: what the last reconciliations found, until resolved
READ_LIMIT = 64 << 20  # a base's file larger than this is not merged (a container's: merge.SIZE_LIMITS)
MERGE_SECONDS = 30  # a move merges databases for this long at most; the rest stay the container's, reported
REPORTED_RECORDS = 20  # record conflicts listed per file (then one line counts the rest)


HOLDING = ("collision", "breaks")  # findings that hold a move back unless forced
OPEN = ("conflict",) + HOLDING  # findings someone must act on


class Finding:
    """One path reconciliation looked at: merged, dropped, unopaque, whiteout, conflict, collision or breaks.

    record: for a conflict on one record of a database, its key (merge.RecordConflict.key).
    """

    __slots__ = ("path", "kind", "detail", "record")

    def __init__(self, path: str, kind: str, detail: str = "", record: str = "") -> None:
        self.path, self.kind, self.detail, self.record = path, kind, detail, record

    def to_json(self) -> dict:
        out = {"path": self.path, "kind": self.kind, "detail": self.detail}
        if self.record:
            out["record"] = self.record
        return out

    def __repr__(self) -> str:
        return f"Finding({self.path!r}, {self.kind!r}, {self.detail!r})"


class Plan:
    """What reconciling A -> B will do: staged contents, removals, and what it found."""

    def __init__(self) -> None:
        self.replace: dict[str, tuple[bytes, os.stat_result]] = {}  # rel -> (new content, the container's copy)
        self.drop: list[str] = []
        self.unopaque: list[str] = []  # opaque directories that hid nothing in A: the mark goes
        self.mkdir: list[tuple[str, int, int, int]] = []  # (rel, mode, uid, gid): parents a whiteout needs
        self.whiteout: list[str] = []  # files the base adds to packages the container removed
        self.findings: list[Finding] = []
        self.read: dict[str, bytes] = {}  # the container's files as the plan read them (read once)
        self.deadline = time.monotonic() + MERGE_SECONDS
        self.root = (0, 0)  # the host ids of container root: what ids in upper are offset by

    @property
    def conflicts(self) -> list[Finding]:
        return [f for f in self.findings if f.kind in OPEN]

    @property
    def holding(self) -> list[Finding]:
        """What holds this move back unless forced: id collisions, packages it would break."""
        return [f for f in self.findings if f.kind in HOLDING]

    @property
    def empty(self) -> bool:
        return not (self.replace or self.drop or self.unopaque or self.whiteout)


# -- reading the two base versions -------------------------------------------------


class TooLarge(Damaged):
    """A file past the limit of its kind: not read."""


def read_bounded(dirfd: int, rel: str, limit: int = READ_LIMIT) -> bytes:
    """The one reader of a file reconciliation merges, from a container's upper or a base layer.

    Opened below dirfd without following any symlink (an O_PATH fd: a FIFO or
    a device node planted there is never opened for reading), checked on that
    fd to be a regular file of at most `limit` bytes, then read once, through
    that same fd (re-opened by /proc/self/fd), to at most limit + 1 bytes: a
    file swapped or grown meanwhile is not followed. Raises Damaged (TooLarge
    past the limit), or OSError when it cannot be opened.
    """
    path_fd = linux.open_beneath(dirfd, rel, os.O_PATH)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            raise Damaged(f"{rel} is not a regular file ({file_type(st.st_mode)})")
        if st.st_size > limit:
            raise TooLarge(f"{rel} is larger than {limit >> 20} MiB ({st.st_size} bytes), the limit for it")
        fd = os.open(linux.fd_path(path_fd), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise TooLarge(f"{rel} grew past {limit >> 20} MiB while it was read")
    return b"".join(chunks)


def _read_link(dirfd: int, rel: str) -> str:
    parent, name = _parent_and_name(dirfd, rel)
    try:
        return os.readlink(name, dir_fd=parent)
    finally:
        os.close(parent)


def _parent_and_name(dirfd: int, rel: str) -> tuple[int, str]:
    head, _, name = rel.rpartition("/")
    parent = linux.open_beneath(dirfd, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(dirfd)
    return parent, name


def _same_content(a_fd: int, b_fd: int, rel: str) -> bool:
    fa = linux.open_beneath(a_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fb = linux.open_beneath(b_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return same_content(fa, fb)
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _entries_equal(a: tuple[int, os.stat_result] | None, b: tuple[int, os.stat_result] | None, rel: str) -> bool:
    """Whether the base shows the same thing at rel in A and in B (directories count as equal: they merge)."""
    if a is None or b is None:
        return a is b
    (afd, ast), (bfd, bst) = a, b
    if (ast.st_dev, ast.st_ino) == (bst.st_dev, bst.st_ino):
        return True  # one layer below both: untouched by the update
    if (ast.st_mode, ast.st_uid, ast.st_gid) != (bst.st_mode, bst.st_uid, bst.st_gid):
        return False
    if stat.S_ISDIR(ast.st_mode):
        return True
    if stat.S_ISLNK(ast.st_mode):
        return _read_link(afd, rel) == _read_link(bfd, rel)
    if stat.S_ISREG(ast.st_mode):
        return ast.st_size == bst.st_size and _same_content(afd, bfd, rel)
    return ast.st_rdev == bst.st_rdev


class _Versions:
    """The lower stacks of A and B, and the layers B has that A lacks (what the update changed)."""

    def __init__(self, a_layers: list[str], b_layers: list[str]) -> None:
        self.a, self.b = LowerStack(a_layers), LowerStack(b_layers)
        real = [os.path.realpath(p) for p in a_layers]
        # B stacks new layers on A when A's stack is a suffix of B's (an update): only those can differ.
        is_suffix = len(b_layers) >= len(a_layers) and [os.path.realpath(p) for p in b_layers[len(b_layers) - len(a_layers):]] == real
        self.new_fds = self.b.fds[: len(b_layers) - len(a_layers)] if is_suffix else None

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def touched(self, rel: str) -> bool:
        """Whether the update may have changed rel: a new layer holds it, or one of its parent directories."""
        if self.new_fds is None:
            return True  # unrelated stacks (a squash): compare every path
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for fd in self.new_fds:
            for p in prefixes:
                try:
                    os.stat(p, dir_fd=fd, follow_symlinks=False)
                    return True
                except OSError:
                    continue
        return False

    def changed(self, rel: str) -> bool:
        return self.touched(rel) and not _entries_equal(self.a.find(rel), self.b.find(rel), rel)

    def subtree_changed(self, rel: str) -> bool:
        """For an opaque directory: did the update change anything at or below rel?"""
        if self.new_fds is not None:
            if not self.touched(rel):
                return False
            return any(_exists(fd, rel) for fd in self.new_fds) or self.changed(rel)
        return self.changed(rel) or _listing(self.a, rel) != _listing(self.b, rel)


def _exists(fd: int, rel: str) -> bool:
    """Whether something is at rel below fd, never following a symlink (in a parent directory either)."""
    try:
        os.close(linux.open_beneath(fd, rel, os.O_PATH | os.O_NOFOLLOW))
        return True
    except OSError:
        return False


def _listing(stack: LowerStack, rel: str, limit: int = 10000) -> list[tuple[str, int, int, int]] | None:
    """Names and sizes below rel as the stack shows them (None past limit entries: treat as changed)."""
    found = stack.find(rel)
    if found is None:
        return []
    out: list[tuple[str, int, int, int]] = []
    try:
        top = linux.open_beneath(found[0], rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for path, st, _, _ in walk(top, strict=False):
            out.append((path, st.st_mode, st.st_size, st.st_mtime_ns))
            if len(out) > limit:
                return None
    finally:
        os.close(top)
    return sorted(out)


# -- planning ------------------------------------------------------------------------------


def plan(upper_fd: int, a_layers: list[str], b_layers: list[str], root: tuple[int, int] | None = None) -> Plan:
    """What moving the layer at upper_fd from A's stack to B's (both top first) does; changes nothing.

    root: the host ids of container root (default: the owner of upper, which belongs to container root).
    """
    result = Plan()
    versions = _Versions(a_layers, b_layers)
    removed = _Removed(upper_fd, versions)
    shift = result.root = root if root is not None else _owner_shift(upper_fd)
    hidden: list[str] = []  # opaque directories: the base does not show below them
    try:
        for rel, st, parent, name in walk(upper_fd, strict=False):
            if any(rel.startswith(h + "/") for h in hidden):
                continue
            if stat.S_ISDIR(st.st_mode):
                if is_opaque_at(parent, name):
                    if _hid_nothing(versions.a, rel, parent, name):
                        result.unopaque.append(rel)  # its entries are reconciled like any other
                        continue
                    hidden.append(rel)
                    if versions.subtree_changed(rel):
                        result.findings.append(Finding("/" + rel, "conflict", "replaced here (opaque directory); the base changed it"))
                continue
            if not versions.changed(rel):
                continue
            _plan_path(result, versions, rel, st, parent, name, removed, shift)
        removed.hide_new_files(result, shift)
    finally:
        versions.close()
    for rel in result.unopaque:
        result.findings.append(Finding("/" + rel, "unopaque", "a directory made here that hid nothing: the base's entries show"))
    _check_ids(result, upper_fd, b_layers)
    _check_packages(result, upper_fd, a_layers, b_layers)
    return result


def _hid_nothing(a: LowerStack, rel: str, parent: int, name: str) -> bool:
    """An opaque directory of upper that hid nothing in A: A shows nothing there, or an empty directory,
    and it is a plain new directory (no redirect, no origin)."""
    from .overlay import is_plain

    low = a.lookup(rel)
    if low is not None and not (stat.S_ISDIR(low.st_mode) and not a.listdir(rel, limit=1)):
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return False
    try:
        return is_plain(fd)
    finally:
        os.close(fd)


def _owner_shift(upper_fd: int) -> tuple[int, int]:
    """The host ids of container root (upper's owner): 0, 0 when privileged. Ids in upper are the base's
    plus these (a contiguous idmap; another map only makes fewer files compare equal)."""
    st = os.fstat(upper_fd)
    return st.st_uid, st.st_gid


def _same_as_base(st: os.stat_result, parent: int, name: str, b: tuple[int, os.stat_result], rel: str,
                  shift: tuple[int, int]) -> bool:
    """Whether the container's entry is what B shows at rel: type, mode, owner and content (or link target)."""
    bfd, bst = b
    if (st.st_mode, st.st_uid - shift[0], st.st_gid - shift[1]) != (bst.st_mode, bst.st_uid, bst.st_gid):
        return False
    try:
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(name, dir_fd=parent) == _read_link(bfd, rel)
        if not stat.S_ISREG(st.st_mode) or st.st_size != bst.st_size:
            return False
        ours = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        try:
            theirs = linux.open_beneath(bfd, rel, os.O_RDONLY | os.O_NONBLOCK)
            try:
                return same_content(ours, theirs)
            finally:
                os.close(theirs)
        finally:
            os.close(ours)
    except OSError:
        return False


def _plan_path(result: Plan, versions: _Versions, rel: str, st: os.stat_result, parent: int, name: str,
               removed: _Removed, shift: tuple[int, int]) -> None:
    path = "/" + rel
    b = versions.b.find(rel)
    if stat_is_whiteout(st):
        if b is not None and not removed.covers(rel):
            result.findings.append(Finding(path, "conflict", "deleted here; the base changed it"))
        return
    action = merge.classify(rel)
    if action.action == "keep":
        return
    if action.action == "drop":
        result.drop.append(rel)
        result.findings.append(Finding(path, "dropped", "a derived cache: the base's copy shows"))
        return
    kind = action.kind if action.action == "merge" else None
    a = versions.a.find(rel)
    if kind is None or not stat.S_ISREG(st.st_mode) or any(e is not None and not stat.S_ISREG(e[1].st_mode) for e in (a, b)):
        if b is not None and _same_as_base(st, parent, name, b, rel, shift):
            result.drop.append(rel)  # nothing to decide: it follows the base again
            result.findings.append(Finding(path, "dropped", "the same as the base's: it follows the base again"))
            return
        what = "added here and in the base" if a is None else "changed here; the base changed it too"
        result.findings.append(Finding(path, "conflict", f"{what} ({file_type(st.st_mode)} kept)"))
        return
    if time.monotonic() > result.deadline:
        result.findings.append(Finding(path, "conflict", f"not merged: this move's {MERGE_SECONDS} s for merging ran out; "
                                                         "kept as it was"))
        return
    limit = merge.SIZE_LIMITS.get(kind, READ_LIMIT)
    try:
        ours = read_bounded(parent, name, limit)
        result.read[rel] = ours
        ancestor = read_bounded(a[0], rel, READ_LIMIT) if a else None
        theirs = read_bounded(b[0], rel, READ_LIMIT) if b else None
        merged = merge.merge3(kind, ancestor, theirs, ours)
    except (Damaged, OSError) as e:
        result.findings.append(Finding(path, "conflict", f"could not merge ({e}); kept as it was"))
        return
    if merged.data is None:
        if b is None:
            result.drop.append(rel)
        else:
            result.findings.append(Finding(path, "conflict", "the merge left nothing; kept as it was"))
            return
    elif merged.same_as_base and b is not None and stat.S_IMODE(b[1].st_mode) == stat.S_IMODE(st.st_mode):
        result.drop.append(rel)
    elif merged.data != ours:
        result.replace[rel] = (merged.data, st)
    if merged.merged:
        result.findings.append(Finding(path, "merged", "from the base: " + ", ".join(merged.merged[:20])
                                       + (f" and {len(merged.merged) - 20} more" if len(merged.merged) > 20 else "")))
    for c in merged.conflicts[:REPORTED_RECORDS]:
        result.findings.append(Finding(path, "conflict", f"record {c.key}: {c.base} in the base, {c.ours} here; the container's kept",
                                       c.key))
    if len(merged.conflicts) > REPORTED_RECORDS:
        result.findings.append(Finding(path, "conflict", f"and {len(merged.conflicts) - REPORTED_RECORDS} more records "
                                                         "changed both here and in the base; the container's kept"))


STATUS = "var/lib/dpkg/status"
INFO = "var/lib/dpkg/info"
STATUS_LIMIT = merge.SIZE_LIMITS["dpkg-status"]  # the most of a container's dpkg status read to check its packages


def _read_db(stack: LowerStack, rel: str) -> bytes | None:
    """A base's file (None when missing or unreadable), through the one bounded reader."""
    found = stack.find(rel)
    try:
        return read_bounded(found[0], rel) if found else None
    except (OSError, Damaged):
        return None


def _resolve_dir(stack: LowerStack, rel: str) -> str:
    """Where a directory path leads in a stack, its symlinks followed inside the stack (/lib -> usr/lib)."""
    parts = [p for p in rel.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/".join(done + [part])
        found = stack.find(here)
        if found is not None and stat.S_ISLNK(found[1].st_mode) and hops < 40:
            hops += 1
            target = _read_link(found[0], here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/".join(done)


def _upper_entry(upper_fd: int, rel: str) -> os.stat_result | None:
    try:
        parent, name = _parent_and_name(upper_fd, rel)
    except OSError:
        return None
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)


class _Removed:
    """Packages the container removed or purged that A had and B upgraded.

    Whiteouts over their files in A (and over their dpkg info files) are the
    container's decision, not conflicts; the files B's version of them adds
    are whited out too, so nothing of a package the container removed comes
    back. Worked out on first use, from the three dpkg status files and the
    packages' file lists (their paths resolved through the base's symlinks,
    /lib/x being usr/lib/x).
    """

    def __init__(self, upper_fd: int, versions: _Versions) -> None:
        self.upper_fd, self.versions = upper_fd, versions
        self._stems: set[str] | None = None  # info file names without their suffix: "nginx", "libfoo:amd64"
        self._packages: dict[str, list[str]] = {}  # package -> its stems
        self._files: set[str] = set()  # their files in A, as paths in the layers

    def _load(self) -> None:
        if self._stems is not None:
            return
        self._stems = set()
        if _upper_entry(self.upper_fd, STATUS) is None:
            return  # its packages are the base's
        from . import depcheck

        try:
            ours = read_bounded(self.upper_fd, STATUS, STATUS_LIMIT)
        except (OSError, Damaged):
            return
        a_status, b_status = _read_db(self.versions.a, STATUS), _read_db(self.versions.b, STATUS)
        if a_status is None or b_status is None:
            return
        mine, a_st, b_st = depcheck.states(ours), depcheck.states(a_status), depcheck.states(b_status)
        for name, (state, arch) in a_st.items():
            if state in depcheck.PRESENT and b_st.get(name, ("", ""))[0] in depcheck.PRESENT \
                    and mine.get(name, ("not-installed", ""))[0] in depcheck.GONE:
                self._packages[name] = [f"{name}:{arch}", name]
                self._stems.update(self._packages[name])
        cache: dict[str, str] = {}
        for stems in self._packages.values():
            for path in self._file_list(self.versions.a, stems):
                self._files.add(self._physical(self.versions.a, path, cache))

    @staticmethod
    def _file_list(stack: LowerStack, stems: list[str]) -> list[str]:
        for stem in stems:
            data = _read_db(stack, f"{INFO}/{stem}.list")
            if data is not None:
                return [line for line in data.decode("utf-8", "surrogateescape").split("\n") if line.startswith("/")]
        return []

    @staticmethod
    def _physical(stack: LowerStack, path: str, cache: dict[str, str]) -> str:
        head, _, name = path.strip("/").rpartition("/")
        if head not in cache:
            cache[head] = _resolve_dir(stack, head)
        return f"{cache[head]}/{name}" if cache[head] else name

    def covers(self, rel: str) -> bool:
        """Whether a whiteout at rel is over a file of a package the container removed."""
        self._load()
        if rel in self._files:
            return True
        head, _, name = rel.rpartition("/")
        return head == INFO and name.rpartition(".")[0] in (self._stems or ())

    def hide_new_files(self, result: Plan, shift: tuple[int, int]) -> None:
        """Whiteouts (and the parent directories they need) for what B adds to the removed packages."""
        self._load()
        if not self._packages:
            return
        a, b = self.versions.a, self.versions.b
        cache: dict[str, str] = {}
        wanted = {self._physical(b, p, cache) for stems in self._packages.values() for p in self._file_list(b, stems)}
        stems = tuple(s + "." for s in self._stems or ())
        wanted.update(f"{INFO}/{n}" for n in b.listdir(INFO) if n.startswith(stems))
        made: set[str] = set()
        for rel in sorted(wanted):
            found = b.find(rel)
            if found is None or stat.S_ISDIR(found[1].st_mode) or a.lookup(rel) is not None:
                continue  # not a file of B's, or one A showed too (shared, or kept by the container)
            parents = self._parents_needed(rel, result)
            if parents is None:
                continue  # the container does not see that directory at all
            for p in parents:
                if p not in made:
                    pst = b.lookup(p)
                    if pst is None:
                        break
                    result.mkdir.append((p, stat.S_IMODE(pst.st_mode), pst.st_uid + shift[0], pst.st_gid + shift[1]))
                    made.add(p)
            else:
                result.whiteout.append(rel)
                result.findings.append(Finding("/" + rel, "whiteout", "new in the base, of a package removed here: hidden"))

    def _parents_needed(self, rel: str, result: Plan) -> list[str] | None:
        """The parent directories of rel that upper lacks (to be made first), or None when a whiteout there is
        not needed: upper has an entry at rel, or a parent of rel in upper hides it (a whiteout, a file, an
        opaque directory)."""
        parts = rel.split("/")
        missing: list[str] = []
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if missing:
                missing.append(prefix)  # below a directory upper lacks
                continue
            st = _upper_entry(self.upper_fd, prefix)
            if st is None:
                missing.append(prefix)
            elif not stat.S_ISDIR(st.st_mode) or (prefix not in result.unopaque and _opaque_in(self.upper_fd, prefix)):
                return None
        if not missing and _upper_entry(self.upper_fd, rel) is not None:
            return None
        return missing


def _opaque_in(upper_fd: int, rel: str) -> bool:
    from .overlay import is_opaque

    try:
        fd = linux.open_beneath(upper_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        return is_opaque(fd)
    finally:
        os.close(fd)


def _check_packages(result: Plan, upper_fd: int, a_layers: list[str], b_layers: list[str]) -> None:
    """What apt-get check would say about the container's packages after the move and not before, nor on B
    itself: `breaks` findings (only where the container has its own dpkg status: packages of its own)."""
    if _upper_entry(upper_fd, STATUS) is None:
        return
    from . import depcheck

    b = LowerStack(b_layers)
    try:
        before = result.read.get(STATUS) or read_bounded(upper_fd, STATUS, STATUS_LIMIT)
        after = _final_view(upper_fd, b, STATUS, result)
        base_own = _read_db(b, STATUS)
    except (OSError, Damaged):
        return  # an unreadable status is reported by its merge
    finally:
        b.close()
    if after is None:
        return
    def problem(line: str) -> str:
        return line.partition(" but ")[0]  # "perl : Depends: perl-base (= 5.36.0-7)", whatever is installed

    known = {problem(line) for line in depcheck.check(before) + depcheck.check(base_own or b"")}
    for line in depcheck.check(after):
        if problem(line) not in known:
            result.findings.append(Finding("/" + STATUS, "breaks", line))


def package_problems(upper_fd: int, layers: list[str]) -> list[str]:
    """What apt-get check would say of the packages the container sees (its own status over the stack),
    less what it says of the base's own; [] when the container has no status of its own."""
    if _upper_entry(upper_fd, STATUS) is None:
        return []
    from . import depcheck

    stack = LowerStack(layers)
    try:
        base_own = _read_db(stack, STATUS)
    finally:
        stack.close()
    try:
        ours = read_bounded(upper_fd, STATUS, STATUS_LIMIT)
    except (OSError, Damaged) as e:
        return [f"the container's {STATUS} cannot be read: {e}"]
    known = {line.partition(" but ")[0] for line in depcheck.check(base_own or b"")}
    return [line for line in depcheck.check(ours) if line.partition(" but ")[0] not in known]


def _final_view(upper_fd: int, b: LowerStack, rel: str, result: Plan) -> bytes | None:
    """The content rel will have in the container after the plan, or None if it will not be a readable file."""
    if rel in result.replace:
        return result.replace[rel][0]
    if rel in result.read and rel not in result.drop:
        return result.read[rel]
    try:
        if rel not in result.drop and upper_fd >= 0:
            return read_bounded(upper_fd, rel, merge.SIZE_LIMITS[merge.DATABASES[rel]])
    except FileNotFoundError:
        pass
    except (OSError, Damaged):
        return None
    found = b.find(rel)
    try:
        return read_bounded(found[0], rel) if found else None
    except (OSError, Damaged):
        return None


def _check_ids(result: Plan, upper_fd: int, b_layers: list[str]) -> None:
    """A uid or gid that two names share after the move is a collision (only where the container has its own accounts)."""
    if not any(_exists(upper_fd, p) for p in ("etc/passwd", "etc/group")):
        return
    stack = LowerStack(b_layers)
    try:
        passwd, group = (_final_view(upper_fd, stack, p, result) for p in ("etc/passwd", "etc/group"))
        base_own = [_final_view(-1, stack, p, Plan()) for p in ("etc/passwd", "etc/group")]
        try:
            known = set(merge.id_collisions(base_own[0] or b"", base_own[1] or b""))  # the base's own: not this move's doing
            found = merge.id_collisions(passwd or b"", group or b"")
        except Damaged as e:
            if not any(f.path in ("/etc/passwd", "/etc/group") and f.kind == "conflict" for f in result.findings):
                result.findings.append(Finding("/etc/passwd", "conflict", f"cannot check ids: {e}"))
            return
    finally:
        stack.close()
    for what in found:
        if what not in known:
            result.findings.append(Finding("/etc/passwd" if what.startswith("uid") else "/etc/group", "collision", what))


# -- applying ----------------------------------------------------------------------------------


def _open_pycor(rootfs_fd: int) -> int:
    from .layer import PYCOR_DIR

    return linux.open_beneath(rootfs_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)


def _encode(fields: list[str]) -> bytes:
    return b"\0".join(os.fsencode(f) for f in fields) + b"\n"


def _records(data: bytes) -> Iterator[list[str]]:
    for line in data.split(b"\n"):
        if line:
            yield [os.fsdecode(f) for f in line.split(b"\0")]


def apply(rootfs_fd: int, upper_fd: int, result: Plan, target: str) -> None:
    """Stage every new file, commit the plan with one rename, then carry it out (see recover())."""
    pycor = _open_pycor(rootfs_fd)
    try:
        _discard_uncommitted(pycor)
        os.mkdir(RECONCILE_DIR, 0o700, dir_fd=pycor)
        rdir = os.open(RECONCILE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pycor)
        owner = owner_at(pycor)  # what pycor keeps in .pycor is the layer owner's: a daemon's publish keeps it
        try:
            give_to_owner(rdir, owner)
            lines = [_encode(["target", target])]
            for i, (rel, (data, like)) in enumerate(sorted(result.replace.items())):
                fd = os.open(str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=rdir)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchown(fd, like.st_uid, like.st_gid)
                    os.fchmod(fd, stat.S_IMODE(like.st_mode))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                lines.append(_encode(["replace", str(i), rel]))
            lines += [_encode(["drop", rel]) for rel in result.drop]
            lines += [_encode(["unopaque", rel]) for rel in result.unopaque]
            lines += [_encode(["mkdir", rel, str(mode), str(uid), str(gid)]) for rel, mode, uid, gid in result.mkdir]
            lines += [_encode(["whiteout", rel, str(result.root[0]), str(result.root[1])]) for rel in result.whiteout]
            fd = _create_new(rdir, "plan.new")
            try:
                give_to_owner(fd, owner)
                os.write(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)
            from . import faults

            faults.point("reconcile-staged")
            os.rename("plan.new", PLAN, src_dir_fd=rdir, dst_dir_fd=rdir)  # the commit point
            os.fsync(rdir)
        finally:
            os.close(rdir)
        faults.point("reconcile-committed")
        _carry_out(pycor, upper_fd)
    finally:
        os.close(pycor)


PLAN_LIMIT = 64 << 20  # bytes: a plan names each path it changes once
_PLAN_FIELDS = {"target": 2, "replace": 3, "drop": 2, "unopaque": 2, "mkdir": 5, "whiteout": 4}


def _below_upper(rel: str) -> bool:
    """A path below upper as pycor writes one into a plan: relative, no empty, '.' or '..' part."""
    return bool(rel) and all(part not in ("", ".", "..") for part in rel.split("/"))


def read_plan(rdir: int) -> list[list[str]]:
    """The committed plan's records, each checked: the plan lies in .pycor, which belongs to the layer's owner and
    which a daemon's file push writes, and host root carries it out. Raises Damaged, having done nothing, for
    anything pycor would not have written: a staged file is named by its number in the plan's folder, every path
    is one below upper, modes and ids are in range."""
    from .names import check_version

    fd = os.open(PLAN, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=rdir)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Damaged(f"{RECONCILE_DIR}/{PLAN} is not a regular file", _PLAN_FIX)
        data = f.read(PLAN_LIMIT + 1)
    try:
        if len(data) > PLAN_LIMIT:
            raise ValueError(f"larger than {PLAN_LIMIT} bytes")
        records = list(_records(data))
        for fields in records:
            if _PLAN_FIELDS.get(fields[0]) != len(fields):
                raise ValueError(f"a record {fields[0][:20]!r} of {len(fields)} fields")
            if fields[0] == "target":
                check_version(fields[1])
                continue
            if fields[0] == "replace" and not (fields[1].isdigit() and fields[1].isascii()):
                raise ValueError(f"a staged file named {fields[1][:80]!r}")
            rel = fields[2] if fields[0] == "replace" else fields[1]
            if not _below_upper(rel):
                raise ValueError(f"a path {rel[:200]!r}")
            numbers = fields[2:] if fields[0] in ("mkdir", "whiteout") else []  # MODE UID GID, UID GID
            if not all(n.isdigit() and n.isascii() for n in numbers):
                raise ValueError(f"a mode or id {numbers!r}")
            if fields[0] == "mkdir" and int(fields[2]) > 0o7777:
                raise ValueError(f"a mode {fields[2]}")
            if fields[0] in ("mkdir", "whiteout") and any(int(n) > ID_MAX for n in fields[-2:]):
                raise ValueError(f"an id out of range in {fields[-2:]}")
    except (ValueError, PycorError) as e:
        raise Damaged(f".pycor/{RECONCILE_DIR}/{PLAN} was not written by pycor ({e})", _PLAN_FIX) from None
    return records


_PLAN_FIX = ("remove .pycor/reconcile in the container's rootfs directory (the interrupted move is then dropped, "
             "as 'pycor reset' would drop it) and start it again: it moves afresh")
ID_MAX = (1 << 32) - 2


def _carry_out(pycor: int, upper_fd: int) -> str:
    """Do what a committed plan says (each step is skipped when already done), then remove the plan."""
    from . import faults

    rdir = os.open(RECONCILE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pycor)
    try:
        records = read_plan(rdir)
        target = ""
        for fields in records:
            if fields[0] == "target":
                target = fields[1]
            elif fields[0] == "replace":
                parent, name = _parent_and_name(upper_fd, fields[2])
                try:
                    os.rename(fields[1], name, src_dir_fd=rdir, dst_dir_fd=parent)
                except FileNotFoundError:
                    pass  # done before a crash
                finally:
                    os.close(parent)
                faults.point("reconcile-replaced")
            elif fields[0] == "drop":
                parent, name = _parent_and_name(upper_fd, fields[1])
                try:
                    os.unlink(name, dir_fd=parent)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(parent)
            elif fields[0] == "unopaque":
                from .overlay import clear_opaque

                fd = linux.open_beneath(upper_fd, fields[1], os.O_RDONLY | os.O_DIRECTORY)
                try:
                    clear_opaque(fd)
                finally:
                    os.close(fd)
            elif fields[0] in ("mkdir", "whiteout"):
                _make(upper_fd, fields)
        for entry in os.listdir(rdir):
            os.unlink(entry, dir_fd=rdir)
    finally:
        os.close(rdir)
    os.rmdir(RECONCILE_DIR, dir_fd=pycor)
    return target


def _make(upper_fd: int, fields: list[str]) -> None:
    """A plan's mkdir (REL MODE UID GID) or whiteout (REL UID GID) in upper; done already is fine."""
    parent, name = _parent_and_name(upper_fd, fields[1])
    try:
        try:
            if fields[0] == "mkdir":
                os.mkdir(name, 0o700, dir_fd=parent)
            else:
                os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        except FileExistsError:
            if fields[0] == "whiteout":
                return  # a crash between mknod and chown leaves a root-owned whiteout: it hides all the same
        # a directory made before a crash gets its owner and mode now
        ids = [int(f) for f in fields[-2:]]
        try:
            os.chown(name, ids[0], ids[1], dir_fd=parent, follow_symlinks=False)
        except PermissionError:
            if fields[0] == "mkdir":
                raise  # a whiteout's owner means nothing to overlayfs: one left as made hides all the same
        if fields[0] == "mkdir":
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.fchmod(fd, int(fields[2]))  # after chown: a setgid bit survives
            finally:
                os.close(fd)
    finally:
        os.close(parent)


def _discard_uncommitted(pycor: int) -> None:
    try:
        rdir = os.open(RECONCILE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pycor)
    except FileNotFoundError:
        return
    try:
        for entry in os.listdir(rdir):
            os.unlink(entry, dir_fd=rdir)
    finally:
        os.close(rdir)
    os.rmdir(RECONCILE_DIR, dir_fd=pycor)


def recover(rootfs_fd: int, upper_fd: int) -> str | None:
    """After a crash: finish a committed plan (returns its target version) or discard an uncommitted one."""
    pycor = _open_pycor(rootfs_fd)
    try:
        try:
            os.stat(f"{RECONCILE_DIR}/{PLAN}", dir_fd=pycor, follow_symlinks=False)
        except FileNotFoundError:
            _discard_uncommitted(pycor)
            return None
        return _carry_out(pycor, upper_fd)
    finally:
        os.close(pycor)


def pending(rootfs_fd: int) -> bool:
    """Whether a reconciliation was interrupted (cheap: one stat, for the start path)."""
    from .layer import PYCOR_DIR

    try:
        os.stat(f"{PYCOR_DIR}/{RECONCILE_DIR}", dir_fd=rootfs_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


# -- settling a conflict with the base's version --------------------------------------------------------


def take_base(upper_fd: int, rel: str, b_layers: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Make the base's version of rel show in the container (resolve --base); returns (replaced, kept, deleted).

    replaced: the container's entries that went, so the base's show there (a whiteout going brings the base's
    file back); kept: what the container made that the base has not, left in place; deleted: the container's
    entries that went with nothing of the base's in their place.

    A file, link or whiteout: the container's entry goes. A directory where the base has one: entry by entry,
    what the base also has goes, the container's own stays, and the directory (with those below it that the
    base has) stops hiding the base's: its opaque marks go. A directory where the base has none (or a file):
    the whole directory goes, every entry named in deleted.
    """
    import shutil

    from .overlay import clear_opaque

    parent, name = _parent_and_name(upper_fd, rel)
    stack = LowerStack(b_layers)
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return [], [], []
        base = stack.lookup(rel)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return (["/" + rel], [], []) if base is not None else ([], [], [] if stat_is_whiteout(st) else ["/" + rel])
        top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            entries = [(f"{rel}/{r}", est) for r, est, _, _ in walk(top, strict=False)]
        finally:
            os.close(top)
        if base is None or not stat.S_ISDIR(base.st_mode):
            shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows a symlink
            gone = ["/" + r for r, est in entries if not stat.S_ISDIR(est.st_mode) and not stat_is_whiteout(est)]
            return (["/" + rel] if base is not None else []), [], sorted(gone)
        replaced, kept = [], []
        for path, est in sorted(entries, key=lambda e: e[0].count("/"), reverse=True):  # deepest first
            shown = stack.lookup(path)
            if stat.S_ISDIR(est.st_mode):
                if shown is not None and stat.S_ISDIR(shown.st_mode):
                    fd = linux.open_beneath(upper_fd, path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        clear_opaque(fd)
                    finally:
                        os.close(fd)
                continue
            if shown is None:
                if not stat_is_whiteout(est):
                    kept.append("/" + path)
                continue
            p, n = _parent_and_name(upper_fd, path)
            try:
                os.unlink(n, dir_fd=p)
            finally:
                os.close(p)
            replaced.append("/" + path)
        fd = linux.open_beneath(upper_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            clear_opaque(fd)
        finally:
            os.close(fd)
        return sorted(replaced), sorted(kept), []
    finally:
        stack.close()
        os.close(parent)


# -- the conflicts record ------------------------------------------------------------------------


FINDINGS_LIMIT = 4 << 20
_FINDINGS_FIX = ("remove it (.pycor/conflicts.json in the container's rootfs directory): "
                 "the next move reports what still conflicts")


def read_findings(rootfs_fd: int) -> dict:
    """{"from": A, "to": B, "findings": [...]} of the layer's reconciliations, or an empty record."""
    pycor = _open_pycor(rootfs_fd)
    try:
        fd = os.open(CONFLICTS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pycor)
    except FileNotFoundError:
        return {"findings": []}
    finally:
        os.close(pycor)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise Damaged(f"{CONFLICTS} is not a regular file", _FINDINGS_FIX)
        data = f.read(FINDINGS_LIMIT + 1)
    # The file is the layer owner's, and a daemon's file push into the stopped container writes it: every
    # reader (ls, doctor, a start's move) gets this shape or Damaged, never a crash.
    try:
        if len(data) > FINDINGS_LIMIT:
            raise ValueError(f"larger than {FINDINGS_LIMIT} bytes")
        raw = json.loads(data or b"{}")
        findings = raw.get("findings", []) if isinstance(raw, dict) else None
        if not isinstance(findings, list) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("kind"), str)
                and isinstance(f.get("detail", ""), str) for f in findings):
            raise ValueError("not pycor's findings")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the json module goes
        raise Damaged(f"{CONFLICTS} was not written by pycor", _FINDINGS_FIX) from None
    for f in findings:
        f.setdefault("detail", "")
    return raw


def _create_new(dir_fd: int, name: str) -> int:
    """A new file NAME in dir_fd (in the layer: whoever may push into the stopped container may have put a FIFO, a
    symlink or a directory there, whose open would hang or lead elsewhere): what is there goes first."""
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            import shutil

            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)


def write_findings(rootfs_fd: int, record: dict) -> None:
    pycor = _open_pycor(rootfs_fd)
    try:
        fd = _create_new(pycor, f"{CONFLICTS}.new")
        give_to_owner(fd, owner_at(pycor))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(f"{CONFLICTS}.new", CONFLICTS, src_dir_fd=pycor, dst_dir_fd=pycor)
    finally:
        os.close(pycor)


def record_move(rootfs_fd: int, old: str, new: str, result: Plan, held_back: bool = False, upper_fd: int = -1,
                on_layers: list[str] | None = None) -> None:
    """Write this move's findings, with the conflicts of earlier moves that still apply.

    held_back: the move did not happen (what holds it: collisions, breaks; see Plan.holding).
    upper_fd, on_layers: the layer and the stack it is on now, to tell which earlier conflicts still
    apply: the container still has its copy of the path and, for a record, that record differs from
    the base's. A conflict this move reports again replaces the earlier one; collisions and breaks
    are found afresh at every move.
    """
    try:
        previous = read_findings(rootfs_fd)
    except (Damaged, ValueError):
        previous = {"findings": []}
    seen = {(f.path, f.record) for f in result.findings if f.kind == "conflict"}
    stack = LowerStack(on_layers) if on_layers is not None and upper_fd >= 0 else None
    try:
        kept = [f for f in previous.get("findings", []) if isinstance(f, dict) and f.get("kind") == "conflict"
                and (f.get("path"), f.get("record", "")) not in seen and _still_applies(f, upper_fd, stack)]
    finally:
        if stack is not None:
            stack.close()
    write_findings(rootfs_fd, {"from": old, "to": new, "held_back": held_back,
                               "findings": kept + [f.to_json() for f in result.findings]})


def _still_applies(finding: dict, upper_fd: int, stack: LowerStack | None) -> bool:
    """An earlier conflict is moot once the container's copy is gone, or (a record) equals the base's."""
    if stack is None:
        return True
    rel = str(finding.get("path", "")).strip("/")
    if not rel or _upper_entry(upper_fd, rel) is None:
        return False
    key = finding.get("record")
    action = merge.classify(rel)
    if not key or action.action != "merge":
        return True
    try:
        ours = read_bounded(upper_fd, rel, merge.SIZE_LIMITS.get(action.kind, READ_LIMIT))
        theirs = _read_db(stack, rel)
        return theirs is None or merge.record(action.kind, ours, str(key)) != merge.record(action.kind, theirs, str(key))
    except (OSError, Damaged):
        return True


def unresolved(rootfs_fd: int) -> list[dict]:
    try:
        return [f for f in read_findings(rootfs_fd).get("findings", []) if f.get("kind") in OPEN]
    except (Damaged, ValueError, OSError):
        return []


def holding_message(findings: list[Finding] | list[dict]) -> str:
    """Why a move is held back, in one sentence."""
    kinds = {f.kind if isinstance(f, Finding) else f.get("kind") for f in findings}
    why = []
    if "collision" in kinds:
        why.append("would give two names one id")
    if "breaks" in kinds:
        why.append("would break the container's own packages (apt-get check would fail)")
    return " and ".join(why) or "was held back"


def reconcile(rootfs_fd: int, upper_fd: int, old: str, new: str, a_layers: list[str], b_layers: list[str],
              force: bool = False, dry_run: bool = False, allow_breaks: bool = False, root: tuple[int, int] | None = None) -> Plan:
    """Plan, check, apply and record a move from version old to new.

    Raises Conflict, changing nothing but the record, when the move would give two names one id or
    break the container's own packages, unless forced (allow_breaks: the caller upgrades them next).
    """
    result = plan(upper_fd, a_layers, b_layers, root)
    if dry_run:
        return result
    holding = [f for f in result.holding if not (allow_breaks and f.kind == "breaks")]
    if holding and not force:
        held = Plan()
        held.findings = holding
        record_move(rootfs_fd, old, new, held, held_back=True, upper_fd=upper_fd, on_layers=a_layers)
        hint = "see 'pycor conflicts NAME'; "
        if any(f.kind == "breaks" for f in holding):
            hint += "'pycor rebase NAME --upgrade' moves it and upgrades its own packages"
            if any(f.kind == "collision" for f in holding):
                hint += "; fix the container's user"
        else:
            hint += "fix the container's user, or move anyway with 'pycor rebase NAME --force'"
        shown = "; ".join(f.detail for f in holding[:3]) + (f" and {len(holding) - 3} more" if len(holding) > 3 else "")
        raise Conflict(f"moving {holding_message(holding)}: {shown}", hint)
    apply(rootfs_fd, upper_fd, result, new)
    record_move(rootfs_fd, old, new, result, upper_fd=upper_fd, on_layers=b_layers)
    return result
