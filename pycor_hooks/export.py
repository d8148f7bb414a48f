"""Moving a base between hosts: one export stream, imported with the same version numbers and digests.

The stream is framed so it can go through a pipe (``pycor base export B -o -
| ssh host2 pycor base import B --from-export -``) without knowing a layer's
size in advance::

    b"PYCOR-EXPORT 1\\n"
    then frames: one tag byte, an 8-byte big-endian length, the payload
      H  header (JSON): base, LXC config hints, the versions (lowest first) with their
         parent, source, size and digest, and 'since' (the version the receiver must have)
      per version, in the header's order:
      M  the layer's manifest (see digest.py)
      D  a chunk of the layer as a GNU tar archive (tario's one command line: POSIX
         format, xattrs, ACLs, numeric owners, holes kept; whiteouts are character
         devices, opaque dirs xattrs)
      E  end of that layer
      Z  end of the stream (a truncated stream has none), and nothing after it

A stream comes from another host: nothing in it is trusted but what the
digest chain covers (each layer's manifest, and a first version's LXC
lines, which must be ones a base may carry: lxcconfig.BASE_KEYS). The
header is read only through parse_header(), which checks every field's type
and range; every frame is bounded before its payload is read, a layer's
archive by what its manifest lists. Import extracts each new version into
staging with GNU tar (which strips leading '/', refuses '..' members and
links that lead out, and never writes through a symlink it extracted),
recomputes its manifest and checks the digest chain before anything is
published; any failure removes the staging directories, so a damaged,
hostile or cut stream, or a full disk, leaves the store as it was.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

from . import digest as dg
from . import faults, tario
from .errors import Conflict, Damaged, NotFound, PycorError
from .flatjson import Record, write_json
from .fsutil import remove_tree
from .lxcconfig import base_lines
from .names import check_name, check_version, is_valid_name, printable
from .proc import running, tail
from .store import CREATED_MAX, SIZE_MAX, SOURCE_MAX, STORE_MODE, Store, Version
from .units import human_size

MAGIC = b"PYCOR-EXPORT 1\n"
FORMAT = 1
CHUNK = 1 << 20
HEADER_LIMIT = 16 << 20  # the header's JSON
MANIFEST_LIMIT = 128 << 20  # one layer's manifest (about a million paths)
VERSIONS_MAX = 1000  # versions in one export (overlayfs stacks at most 500 layers)
LXC_LINES_MAX = 64
# Largest payload of each frame; a D frame also has at least one byte, so a layer is a bounded number of frames.
FRAME_LIMITS = {b"H": HEADER_LIMIT, b"M": MANIFEST_LIMIT, b"D": CHUNK, b"E": 0, b"Z": 0}
_HEX = frozenset("0123456789abcdef")
_MANIFEST_BYTES = bytes(range(0x20, 0x7F)) + b"\n"  # all a manifest holds (digest.py escapes the rest)
_AGAIN = "export it again with 'pycor base export'"


def _frame(out: IO[bytes], tag: bytes, payload: bytes) -> None:
    out.write(tag + struct.pack(">Q", len(payload)))
    out.write(payload)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def versions_to_send(store: Store, name: str, version: str | None, since: str | None) -> list[Version]:
    """The stack of `version` (default current) down to, not including, `since`; lowest first."""
    store.require(name)
    top = check_version(version) if version else store.current(name)
    stack: list[Version] = []
    current: str | None = top
    while current is not None and current != since:
        v = store.version(name, current)
        if v in stack or len(stack) >= VERSIONS_MAX:
            raise Damaged(f"base {name}: the parents of version {top} loop or go deeper than {VERSIONS_MAX}",
                          "the store is damaged: 'pycor base versions' shows each version's parent")
        stack.append(v)
        current = v.parent
    if since is not None and current != since:
        raise NotFound(f"base {name}: version {since} is not below version {top}, so --since {since} cannot be used",
                       f"'pycor base versions {name}' shows each version's parent; drop --since to export the whole stack")
    return list(reversed(stack))


def _holes_recorded_plain(rootfs: str, manifest: bytes) -> bool:
    """Whether a file with holes has a manifest line recorded before holes were skipped (see digest.py): such a
    layer is sent without --sparse, so the receiver hashes that file's bytes as they were recorded."""
    plain = dg.plain_paths(manifest)
    if not plain:
        return False
    from .fsutil import walk

    for rel, st, parent, name in walk(rootfs):
        if st.st_blocks * 512 < st.st_size and dg.manifest_path(rel) in plain:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
            try:
                if os.lseek(fd, 0, os.SEEK_HOLE) < st.st_size:
                    return True
            finally:
                os.close(fd)
    return False


def export_base(store: Store, name: str, out: IO[bytes], version: str | None = None, since: str | None = None) -> dict:
    """Write the export stream of a base version (and the versions below it, down to `since`) to out."""
    check_name(name, "base name")
    if since is not None:
        check_version(since)
        store.version(name, since)
    stack = versions_to_send(store, name, version, since)
    header = {
        "format": FORMAT, "base": name, "lxc": store.base(name).lxc,
        "since": since, "since_digest": store.version_digest(name, since) if since else None,
        "versions": [{"version": v.version, "parent": v.parent, "created": v.created, "size": v.size,
                      "source": v.source, "digest": store.version_digest(name, v.version)} for v in stack],
    }
    out.write(MAGIC)
    _frame(out, b"H", json.dumps(header).encode())
    sent = 0
    for v in stack:
        with open(os.path.join(os.path.dirname(v.rootfs), dg.MANIFEST), "rb") as f:
            manifest = f.read()
        _frame(out, b"M", manifest)
        argv = tario.create_argv(v.rootfs, sparse=not _holes_recorded_plain(v.rootfs, manifest))
        with tempfile.TemporaryFile() as err, running(argv, stdout=subprocess.PIPE, stderr=err) as tar:
            assert tar.stdout is not None
            while chunk := tar.stdout.read(CHUNK):
                _frame(out, b"D", chunk)
                sent += len(chunk)
            if tar.wait() != 0:
                raise PycorError(f"tar failed on base {name} version {v.version}: {tail(err)}", "is the store readable?")
        _frame(out, b"E", b"")
        _say(f"base {name}: version {v.version} exported ({human_size(sent)} so far)")
    _frame(out, b"Z", b"")
    out.flush()
    return header


# -- the header: everything a stream says that no digest covers, checked once ---------------------------


class Entry(Record):
    """One version of an export's header, checked."""

    __slots__ = ("version", "parent", "created", "size", "source", "digest")
    version: str
    parent: str | None
    created: float
    size: int
    source: str
    digest: str


class Header(Record):
    """An export's header, checked: the only form in which import reads it."""

    __slots__ = ("base", "lxc", "since", "since_digest", "versions")
    base: str
    lxc: list[str]
    since: str | None
    since_digest: str | None
    versions: list[Entry]


def _damaged(what: str) -> Damaged:
    return Damaged(f"the export's header is damaged: {what}", _AGAIN)


def _shown(value: object) -> str:
    return printable(repr(value), 80)


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _number(value: object) -> str | None:
    """A version number as a header writes it: a string of digits, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9 or value[0] == "0":
        raise ValueError
    return value


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_header(payload: bytes) -> Header:
    """The header of an export stream, every field type- and range-checked; Damaged naming the first that is
    wrong, PycorError for LXC lines a base may not carry. Unknown keys are ignored (a newer pycor's additions)."""
    try:
        raw = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the json module goes
        raise _damaged("it is not JSON") from None
    if not isinstance(raw, dict):
        raise _damaged("it is not a JSON object")
    if raw.get("format") != FORMAT or isinstance(raw.get("format"), bool):
        raise Damaged(f"the export's format is {_shown(raw.get('format'))}, and this pycor reads format {FORMAT}",
                      "export it with the pycor that runs here, or update pycor here")
    base = raw.get("base")
    if not isinstance(base, str) or not is_valid_name(base):
        raise _damaged(f"its base name {_shown(base)} is not a name")
    try:
        since = _number(raw.get("since"))
    except ValueError:
        raise _damaged(f"'since' {_shown(raw.get('since'))} is not a version number") from None
    since_digest = raw.get("since_digest") if since is not None else None
    if since is not None and not _is_digest(since_digest):
        raise _damaged("'since_digest' is not a sha256 (64 lowercase hex digits)")
    lxc = raw.get("lxc")
    if lxc is None:
        lxc = []
    if not isinstance(lxc, list) or len(lxc) > LXC_LINES_MAX:
        raise _damaged(f"'lxc' is not a list of at most {LXC_LINES_MAX} LXC config lines")
    admitted, refused = base_lines(lxc)
    if refused:
        raise PycorError(f"the export's base carries LXC config a base may not carry: {printable(repr(refused[0]), 300)}",
                         "a base may set only what acts inside its containers; nothing was imported")
    items = raw.get("versions")
    if not isinstance(items, list) or not 0 < len(items) <= VERSIONS_MAX:
        raise _damaged(f"'versions' is not a list of 1 to {VERSIONS_MAX} versions")
    versions: list[Entry] = []
    below = since
    for i, item in enumerate(items):
        versions.append(_entry(item, i, below))
        below = versions[-1].version
    return Header(base, admitted, since, since_digest, versions)


def _entry(item: object, i: int, below: str | None) -> Entry:
    """Version i of a header, whose parent must be `below`: the one before it in the export, or 'since'."""
    if not isinstance(item, dict):
        raise _damaged(f"version entry {i + 1} is not a JSON object")
    try:
        number = _number(item.get("version"))
        parent = _number(item.get("parent"))
    except ValueError:
        raise _damaged(f"version entry {i + 1}: {_shown(item.get('version'))} with parent {_shown(item.get('parent'))}: "
                       "versions are positive whole numbers, written as strings") from None
    if number is None:
        raise _damaged(f"version entry {i + 1} has no version number")
    if parent != below or (parent is not None and int(parent) >= int(number)):
        raise _damaged(f"version {number}: its parent is {parent or 'none'}, but an export is one stack from "
                       f"{'version ' + below if below else 'a first version'} up, each version numbered above its parent")
    created = item.get("created", 0)
    size = item.get("size", 0)
    source = item.get("source", "")
    if not (isinstance(created, (int, float)) and not isinstance(created, bool) and math.isfinite(created)
            and 0 <= created < CREATED_MAX):
        raise _damaged(f"version {number}: 'created' {_shown(created)} is not a time (seconds since 1970, below 2**40)")
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size < SIZE_MAX):
        raise _damaged(f"version {number}: 'size' {_shown(size)} is not a size in bytes (a whole number below 2**60)")
    if not isinstance(source, str):
        raise _damaged(f"version {number}: 'source' is not text")
    if not _is_digest(item.get("digest")):
        raise _damaged(f"version {number}: 'digest' is not a sha256 (64 lowercase hex digits)")
    return Entry(number, parent, float(created), size, printable(source, SOURCE_MAX), item["digest"])


# -- frames ----------------------------------------------------------------------------------------------


class _Reader:
    """Frames of an export stream, each bounded (FRAME_LIMITS) before its payload is read."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src = src

    def exact(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            data = self.src.read(min(left, CHUNK))
            if not data:
                raise Damaged("the export stream ends early", "it was cut short in transfer: export it again")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def frame(self) -> tuple[bytes, bytes]:
        head = self.exact(9)
        tag, (length,) = head[:1], struct.unpack(">Q", head[1:])
        limit = FRAME_LIMITS.get(tag)
        if limit is None or length > limit or (tag == b"D" and length == 0):
            raise Damaged(f"the export stream is damaged (a frame {tag!r} of {length} bytes)", _AGAIN)
        return tag, self.exact(length)

    def expect(self, tag: bytes) -> bytes:
        got, payload = self.frame()
        if got != tag:
            raise Damaged(f"the export stream is damaged (expected frame {tag!r}, got {got!r})", _AGAIN)
        return payload

    def layer(self, limit: int) -> Iterator[bytes]:
        """The D frames of one layer, up to its E frame; at most limit bytes in all."""
        got = 0
        while True:
            tag, payload = self.frame()
            if tag == b"E":
                return
            if tag != b"D":
                raise Damaged(f"the export stream is damaged (a frame {tag!r} inside a layer)", _AGAIN)
            got += len(payload)
            if got > limit:
                raise Damaged(f"the export stream is damaged (a layer's archive is larger than its manifest allows, "
                              f"{human_size(limit)})", _AGAIN)
            yield payload

    def end(self) -> None:
        """The Z frame, and nothing after it."""
        self.expect(b"Z")
        if self.src.read(1):
            raise Damaged("the export stream is damaged (bytes after its end)", _AGAIN)


def read_header(r: _Reader) -> Header:
    if r.exact(len(MAGIC)) != MAGIC:
        raise Damaged("this is not a pycor export", "make one with 'pycor base export NAME -o FILE'")
    return parse_header(r.expect(b"H"))


def check_manifest(manifest: bytes, label: str) -> int:
    """A manifest as a stream carries it: printable ASCII lines (digest.py escapes everything else), each path
    absolute. Returns the most bytes that layer's tar can take: each entry's tar headers and its data."""
    if not manifest.endswith(b"\n") or manifest.translate(None, _MANIFEST_BYTES):
        raise Damaged(f"{label}: the export's manifest is damaged (not lines of printable text)", _AGAIN)
    bound = 1 << 20
    for line in manifest[:-1].split(b"\n"):
        fields = line.split(b" ", 5)
        if len(fields) < 4 or not fields[0].startswith(b"/"):
            raise Damaged(f"{label}: the export's manifest is damaged (a line {printable(line[:80].decode())!r})", _AGAIN)
        bound += 4 * 512 + 2 * len(line)
        if fields[1] == b"f":
            size = fields[4].split(b":", 1)[0] if len(fields) > 4 else b""
            if not size.isdigit() or len(size) > 19 or int(size) >= SIZE_MAX:
                raise Damaged(f"{label}: the export's manifest is damaged (the size of {fields[0][:200].decode()})", _AGAIN)
            bound += 2 * int(size)
    return bound


# -- import ----------------------------------------------------------------------------------------------


def _store_full(store: Store, label: str) -> PycorError:
    return PycorError(f"{label}: the store's filesystem is full ({store.root}); nothing was imported",
                      f"free space there ('df -h {store.root}'), or use a store on a larger filesystem "
                      "(--store), then run the import again")


def _extract(r: _Reader, store: Store, rootfs: str, label: str, limit: int) -> int:
    """Unpack one layer's tar frames into rootfs with tario's one extract command; returns the bytes received."""
    got, shown = 0, 0
    with tempfile.TemporaryFile() as err, \
            running(tario.extract_argv(rootfs), stdin=subprocess.PIPE, stderr=err, env={**os.environ, **tario.TAR_ENV}) as tar:
        assert tar.stdin is not None
        try:
            for chunk in r.layer(limit):
                tar.stdin.write(chunk)
                got += len(chunk)
                if got - shown >= 64 << 20:
                    _say(f"{label}: {human_size(got)} received")
                    shown = got
        except BrokenPipeError:
            for _ in r.layer(limit - got):  # tar gave up: keep the stream in step, the error comes from its status
                pass
        finally:
            try:
                tar.stdin.close()
            except BrokenPipeError:
                pass
        status = tar.wait()
        if status != 0:
            text = tail(err)
            if tario.no_space(text, rootfs):
                raise _store_full(store, label)
            raise Damaged(f"{label}: the layer's archive is damaged or refused:\n{text[:600]}", _AGAIN)
    return got


def import_export(store: Store, name: str, src: IO[bytes]) -> list[tuple[str, str]]:
    """Recreate the versions of an export stream in base `name`; returns [(version, 'imported'|'present')]."""
    check_name(name, "base name")
    r = _Reader(src)
    header = read_header(r)
    exists = store.exists(name)
    # refuse before any long work: a number that means another tree here, or a missing starting point
    present: set[str] = set()
    digests: dict[str, str] = {}
    if header.since is not None:
        since = header.since
        if not exists:
            raise NotFound(f"this export holds base {name} from version {since} on, and base {name} is not here",
                           f"export the whole base (without --since), or import version {since} first")
        try:
            ours = store.version_digest(name, since)
        except PycorError:
            raise NotFound(f"this export of base {name} builds on version {since}, which is not here",
                           f"export without --since, or from a version this host has ('pycor base versions {name}')") from None
        if ours != header.since_digest:
            raise Conflict(f"base {name} version {since} here is not the tree the export builds on (digest {ours[:16]})",
                           "export without --since, or check both with 'pycor base verify'")
        digests[since] = ours
    for v in header.versions:
        if exists and os.path.isdir(store.version_dir(name, v.version)):
            ours = store.version_digest(name, v.version)
            if ours != v.digest:
                raise Conflict(f"base {name} version {v.version} exists here with another digest ({ours[:16]}, the export's "
                               f"is {v.digest[:16]})", "the two hosts built different trees under one number; import "
                               "into another base name, or remove that version here")
            present.add(v.version)
    lxc = header.lxc
    if exists and lxc != store.base(name).lxc and any(v.parent is None and v.version not in present for v in header.versions):
        raise Conflict(f"base {name} here carries other LXC config lines than the export's first version was made with",
                       "import into another base name")
    stagings: dict[str, str] = {}
    done: list[tuple[str, str]] = []
    label = f"base {name}"
    try:
        for v in header.versions:
            label = f"base {name} version {v.version}"
            manifest = r.expect(b"M")
            limit = check_manifest(manifest, label)
            if v.version in present:
                for _ in r.layer(limit):
                    pass
                digests[v.version] = v.digest
                done.append((v.version, "present"))
                _say(f"{label}: already here with the same digest")
                continue
            staging = store.new_staging(f"import-{name}")
            stagings[v.version] = staging
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            got = _extract(r, store, rootfs, label, limit)
            actual = dg.layer_manifest(rootfs, recorded=manifest, untrusted=True)
            diff = dg.first_difference(manifest, actual)
            if diff:
                raise Damaged(f"{label}: what arrived differs from what was exported: {diff}", _AGAIN)
            computed = dg.chain(dg.layer_digest(actual), digests[v.parent] if v.parent else None,
                                lxc if v.parent is None else ())
            if computed != v.digest and v.parent is None and lxc and dg.chain(dg.layer_digest(actual), None) == v.digest:
                # an older pycor's digest, which covers no LXC lines: they are not taken on its word
                _say(f"{label}: its digest does not cover the export's LXC config lines (an older pycor made it), so "
                     f"the base does not carry them: {'; '.join(lxc)}")
                lxc, computed = [], v.digest
            if computed != v.digest:
                raise Damaged(f"{label}: digest {computed[:16]} does not match the export's {v.digest[:16]}", _AGAIN)
            with open(os.path.join(staging, dg.MANIFEST), "wb") as f:
                f.write(actual)
            write_json(os.path.join(staging, "version.json"),
                       {"version": int(v.version), "parent": int(v.parent) if v.parent else None, "created": v.created,
                        "size": v.size, "source": v.source, "digest": computed})
            digests[v.version] = computed
            done.append((v.version, "imported"))
            _say(f"{label}: {human_size(got)} received, digest {computed[:16]} checked")
        label = f"base {name}"
        r.end()
        faults.point("import-staged")
        _publish(store, name, header, lxc, stagings)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _store_full(store, label) from None
        raise
    finally:
        for staging in stagings.values():
            store.end_staging(staging)  # its lock file, and the directory unless it was published
    return done


def _publish(store: Store, name: str, header: Header, lxc: list[str], stagings: dict[str, str]) -> None:
    """Rename the checked versions into the store; a new base appears whole, in one rename."""
    top = header.versions[-1].version
    with store.lock():
        if not store.exists(name):
            if not stagings:
                return
            os.makedirs(store.bases_dir, mode=STORE_MODE, exist_ok=True)
            tmp = os.path.join(store.bases_dir, f".{name}.new{os.getpid()}")
            os.makedirs(os.path.join(tmp, "versions"), mode=0o755)
            try:
                for number, staging in stagings.items():
                    os.rename(staging, os.path.join(tmp, "versions", number))
                    os.chmod(os.path.join(tmp, "versions", number), 0o755)
                write_json(os.path.join(tmp, "base.json"),
                           {"name": name, "created": header.versions[0].created, "lxc": lxc})
                os.symlink(f"versions/{top}", os.path.join(tmp, "current"))
                os.rename(tmp, store.base_dir(name))
            except BaseException:
                remove_tree(tmp)
                raise
            return
        for number, staging in stagings.items():
            target = store.version_dir(name, number)
            if os.path.lexists(target):
                raise Conflict(f"base {name} version {number} appeared while importing", "run the import again")
            os.rename(staging, target)  # the version appears whole, or not at all
            os.chmod(target, 0o755)
        if int(top) > int(store.current(name)):
            store.set_current(name, top)


def import_from_file(store: Store, name: str, source: str) -> Version:
    """Import an export file ('-': stdin); returns the export's top version as now stored here."""
    if source == "-":
        done = import_export(store, name, sys.stdin.buffer)
    else:
        try:
            f = open(source, "rb")
        except OSError as e:
            raise PycorError(f"cannot read export {source}: {e.strerror}", "make one with 'pycor base export NAME -o FILE'") from None
        with f:
            done = import_export(store, name, f)
    if not done:
        raise Damaged(f"the export {source} holds no version", "export a version with 'pycor base export NAME'")
    imported = [n for n, how in done if how == "imported"]
    _say(f"base {name}: imported version(s) {', '.join(imported) or 'none'}; "
         f"already here: {', '.join(n for n, how in done if how == 'present') or 'none'}")
    return store.version(name, done[-1][0])
