"""A base version's identity: a manifest per layer and a content digest per version.

The manifest of a layer has one line per entry, sorted by path: the path,
its type, mode, owner, and what makes its content: a regular file's size and
hash, a symlink's target, a device's major and minor, and every xattr
(overlayfs' opaque and redirect marks, capabilities, ACLs). mtimes are left
out: they say when, not what. A whiteout is a 0/0 character device, so it is
an entry like any other.

A regular file's content is cut into blocks of ZERO_BLOCK bytes from its
start (the last one may be shorter). Its field is

    SIZE:SHA256        no block is all zeros: the sha256 of its bytes
    SIZE:z:SHA256      some block is: the sha256 of each run of non-zero blocks
                       followed by its offset and length (two 8-byte big-endian
                       numbers), the zero blocks left out

so holes are skipped (SEEK_DATA/SEEK_HOLE: a 2 GiB file with 4 KiB of data
costs one block's hashing), a sparse file and a dense one of the same bytes
hash the same, and a file without zero blocks keeps the plain sha256 every
manifest recorded before. Manifests recorded before the z form hashed every
file plainly: a line is recomputed the way it was recorded (plain_paths()),
except that an export stream's plain line never makes pycor read a sparse
file's holes.

    layer digest   = sha256(manifest)
    version digest = sha256(layer digest + parent version's digest)
    (a base's first version, when the base carries LXC lines:
     sha256(layer digest + "\nlxc:" + the lines, one a line))

so two versions with the same digest have the same whole stack, and the
same LXC lines: a base that arrives with other lines than it was made with
does not verify. The digest
is written into version.json and the manifest beside it
(bases/NAME/versions/N/manifest) when a version is published; versions
published before get them the first time they are needed.

A start compares two recorded strings (Driver, Store.recorded_digest) and
never imports this module.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .errors import Damaged

if TYPE_CHECKING:
    from .store import Store

MANIFEST = "manifest"
VERSION_JSON = "version.json"
_CHUNK = 1 << 20
ZERO_BLOCK = 4096
_ZERO_BLOCK = bytes(ZERO_BLOCK)
_ZERO_CHUNK = bytes(_CHUNK)


def _quote(raw: bytes) -> str:
    """A path or link target as one token: bytes outside printable ASCII, spaces and '%' escaped."""
    import urllib.parse

    return urllib.parse.quote_from_bytes(raw, safe="/!$&'()*+,-.:;<=>?@[]^_`{|}~")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISCHR, "c"),
                       (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"), (stat.S_ISSOCK, "s")):
        if test(mode):
            return name
    return "?"


def _data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) of each region of the file that may hold data, holes left out (a filesystem without
    SEEK_DATA reports one region: the whole file)."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = pos
        if data >= size:
            return
        try:
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        except OSError:
            hole = size
        yield data, hole
        pos = hole


class _ContentHash:
    """The content field of one file, fed its blocks in order (see the module's docstring)."""

    def __init__(self, size: int) -> None:
        import hashlib

        self.size, self.h = size, hashlib.sha256()
        self.zeros = False  # a zero block was seen: the z form
        self.run: int | None = None  # where the current run of non-zero blocks started

    def data(self, at: int, chunk: memoryview) -> None:
        if chunk:
            self.run = at if self.run is None else self.run
            self.h.update(chunk)

    def zero(self, at: int) -> None:
        """Blocks from at on are zeros (until the next data())."""
        self.zeros = True
        if self.run is not None:
            self.h.update(struct.pack(">QQ", self.run, at - self.run))
            self.run = None

    def field(self) -> str:
        if not self.zeros:
            return f"{self.size}:{self.h.hexdigest()}"
        self.zero(self.size)
        return f"{self.size}:z:{self.h.hexdigest()}"


def _scan(content: _ContentHash, at: int, chunk: bytes) -> None:
    """Feed one chunk read at offset at (a multiple of ZERO_BLOCK), telling its zero blocks from the others.

    Bytes, not memoryview, comparisons: CPython compares equal memoryviews
    element by element, bytes with memcmp. A block whose first byte is not
    zero is data without looking further, so random data costs one index a block.
    """
    n = len(chunk)
    if chunk[:1] == b"\0" and chunk == (_ZERO_CHUNK if n == _CHUNK else bytes(n)):
        content.zero(at)
        return
    mv, fed = memoryview(chunk), 0
    for off in range(0, n, ZERO_BLOCK):
        if chunk[off]:
            continue
        end = min(off + ZERO_BLOCK, n)
        if chunk[off:end] == (_ZERO_BLOCK if end - off == ZERO_BLOCK else bytes(end - off)):
            content.data(at + fed, mv[fed:off])
            content.zero(at + off)
            fed = end
    content.data(at + fed, mv[fed:])


def _content(parent: int, name: str, size: int, plain: bool = False, untrusted: bool = False) -> str:
    """A regular file's content field. plain: as recorded before the z form (every byte hashed, holes read as
    zeros), unless untrusted and the file has holes: an export stream never makes pycor read them."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    try:
        if plain and untrusted and size and next(_data_regions(fd, size), None) != (0, size):
            plain = False
        if plain:
            import hashlib

            h, pos = hashlib.sha256(), 0
            while chunk := os.pread(fd, _CHUNK, pos):  # pread: _data_regions() moved the offset
                h.update(chunk)
                pos += len(chunk)
            return f"{size}:{h.hexdigest()}"
        content = _ContentHash(size)
        pos = 0
        for start, end in _data_regions(fd, size):
            start = max(pos, start - start % ZERO_BLOCK)
            end = min(size, -(-end // ZERO_BLOCK) * ZERO_BLOCK)
            if start > pos:
                content.zero(pos)  # a hole
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not chunk:  # shrank while read: what was read is hashed, and differs
                    return content.field()
                _scan(content, pos, chunk)
                pos += len(chunk)
        if pos < size:
            content.zero(pos)  # a hole up to the end
        return content.field()
    finally:
        os.close(fd)


def _xattrs(path: str) -> list[str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out.append(f"x:{_quote(name.encode())}={value.hex()}")
    return out


def manifest_path(rel: str) -> str:
    """How a manifest names the entry at rel (relative to the layer's root, '' for the root)."""
    return "/" + _quote(os.fsencode(rel)) if rel else "/"


def entry_line(rel: str, st: os.stat_result, parent: int, name: str, plain: frozenset[str] = frozenset(),
               untrusted: bool = False) -> str:
    """The manifest line of one entry (parent: an fd of its directory, name: its name there); plain: paths
    whose content was recorded plainly (plain_paths())."""
    kind = _kind(st.st_mode)
    path = manifest_path(rel)
    fields = [path, kind, f"{stat.S_IMODE(st.st_mode):o}", f"{st.st_uid}:{st.st_gid}"]
    if kind == "f":
        fields.append(_content(parent, name, st.st_size, path in plain, untrusted))
    elif kind == "l":
        fields.append("->" + _quote(os.fsencode(os.readlink(name, dir_fd=parent))))
    elif kind in ("c", "b"):
        fields.append(f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
    fields.extend(_xattrs(f"/proc/self/fd/{parent}/{name}"))
    return " ".join(fields)


_HEX = frozenset(b"0123456789abcdef")


def plain_paths(manifest: bytes) -> frozenset[str]:
    """The paths of regular files whose content a manifest records in the plain form (SIZE:SHA256)."""
    found = set()
    for line in manifest.split(b"\n"):
        fields = line.split(b" ", 5)
        if len(fields) >= 5 and fields[1] == b"f":
            size, _, sha = fields[4].partition(b":")
            if size.isdigit() and len(sha) == 64 and set(sha) <= _HEX:
                found.add(fields[0].decode("ascii", "replace"))
    return frozenset(found)


def layer_manifest(layer: str, recorded: bytes | None = None, untrusted: bool = False) -> bytes:
    """The sorted manifest of one layer directory (its root included as '/').

    recorded: a manifest to compare with, whose plain lines are recomputed
    plainly; untrusted: it came in an export stream (see _content()).
    """
    from .fsutil import walk

    plain = plain_paths(recorded) if recorded else frozenset()
    top = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        lines = [entry_line("", os.fstat(top), top, ".")]
        for rel, st, parent, name in walk(top):
            lines.append(entry_line(rel, st, parent, name, plain, untrusted))
    finally:
        os.close(top)
    lines.sort(key=lambda line: line.split(" ", 1)[0])
    return ("\n".join(lines) + "\n").encode()


def layer_digest(manifest: bytes) -> str:
    import hashlib

    return hashlib.sha256(manifest).hexdigest()


def chain(layer: str, parent_digest: str | None, lxc: Sequence[str] = ()) -> str:
    """A version's digest from its layer's digest and its parent version's digest (a first version: the base's
    LXC lines too)."""
    import hashlib

    text = layer + (parent_digest or "") + ("".join("\nlxc:" + line for line in lxc) if not parent_digest else "")
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(version_dir: str, parent_digest: str | None, lxc: Sequence[str] = ()) -> str:
    """Write the manifest of version_dir/rootfs beside it and return the version digest (publishing calls this in staging)."""
    manifest = layer_manifest(os.path.join(version_dir, "rootfs"))
    _write(os.path.join(version_dir, MANIFEST), manifest)
    return chain(layer_digest(manifest), parent_digest, lxc)


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def first_difference(recorded_manifest: bytes, actual: bytes) -> str | None:
    """Name the first path whose line differs: 'PATH: what differs', or None when equal."""
    if recorded_manifest == actual:
        return None
    old = {line.split(" ", 1)[0]: line for line in recorded_manifest.decode(errors="replace").splitlines()}
    new = {line.split(" ", 1)[0]: line for line in actual.decode(errors="replace").splitlines()}
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is None:
            return f"{path}: not in the recorded manifest (added)"
        if b is None:
            return f"{path}: in the recorded manifest, missing now (removed)"
        fa, fb = a.split(" "), b.split(" ")
        names = ["path", "type", "mode", "owner", "content"]
        for i in range(max(len(fa), len(fb))):
            x, y = (fa[i] if i < len(fa) else "-"), (fb[i] if i < len(fb) else "-")
            if x != y:
                what = names[i] if i < len(names) and not x.startswith("x:") and not y.startswith("x:") else "xattrs"
                return f"{path}: {what} differs (recorded {x}, now {y})"
    return "the manifest's text differs (same entries)"


class Finding:
    def __init__(self, version: str, problem: str) -> None:
        self.version, self.problem = version, problem


class Verified:
    """What verify() found, and what it covered: the layers of the stack, and the base's LXC lines when the
    digest covers them (lxc_covered False: a first version recorded before digests covered them)."""

    def __init__(self, version: str, digest: str, findings: list[Finding], layers: int, lxc: list[str],
                 lxc_covered: bool) -> None:
        self.version, self.digest, self.findings = version, digest, findings
        self.layers, self.lxc, self.lxc_covered = layers, lxc, lxc_covered


def verify(store: Store, name: str, version: str | None = None) -> Verified:
    """Recompute every layer of a version's stack against its recorded manifest and the digest chain, and the
    base's LXC lines (base.json) against what its first version's digest covers.

    A layer with no recorded manifest (published before digests) gets one now.
    """
    from .flatjson import read_json
    from .lxcconfig import base_lines

    store.require(name)
    top = version or store.current(name)
    stack: list = []
    current: str | None = top
    while current is not None:
        if len(stack) > 1000 or any(v.version == current for v in stack):
            raise Damaged(f"base {name!r}: the parents of version {top} loop", "the store is damaged; import the base again")
        v = store.version(name, current)
        stack.append(v)
        current = v.parent
    raw = read_json(os.path.join(store.base_dir(name), "base.json")).get("lxc")
    lxc, refused = base_lines(raw if isinstance(raw, list) else [])
    findings: list[Finding] = []
    if refused or (raw is not None and not isinstance(raw, list)):
        findings.append(Finding(stack[-1].version, f"base.json holds LXC config a base may not carry, left out of every "
                                                   f"container's config: {refused[0] if refused else raw!r}"[:600]))
    lxc_covered = True
    parent_digest: str | None = None
    for v in reversed(stack):  # lowest first: the chain needs parents' digests
        vdir = os.path.dirname(v.rootfs)
        if not os.path.isdir(v.rootfs):
            raise Damaged(f"base {name!r}: layer {v.rootfs} is missing", "the store is damaged; import the base again")
        try:
            with open(os.path.join(vdir, MANIFEST), "rb") as f:
                kept = f.read()
        except FileNotFoundError:
            store.version_digest(name, v.version)  # published before digests: recorded now
            with open(os.path.join(vdir, MANIFEST), "rb") as f:
                kept = f.read()
        diff = first_difference(kept, layer_manifest(v.rootfs, recorded=kept))
        if diff:
            findings.append(Finding(v.version, diff))
        expect = chain(layer_digest(kept), parent_digest, lxc if parent_digest is None else ())
        rec = store.recorded_digest(name, v.version)
        if rec and rec != expect:
            if parent_digest is None and rec == chain(layer_digest(kept), None):
                lxc_covered = not lxc  # recorded before digests covered LXC lines
            elif parent_digest is None and not diff:
                findings.append(Finding(v.version, f"base.json's LXC lines ({len(lxc)}) are not the ones its digest "
                                                   f"{rec[:16]} covers"))
            else:
                findings.append(Finding(v.version, f"recorded digest {rec[:16]} does not match its manifest's {expect[:16]}"))
        parent_digest = rec or expect
    return Verified(top, parent_digest or "", findings, len(stack), lxc, lxc_covered)
