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
      D  a chunk of the layer as a GNU tar archive (POSIX format: xattrs, ACLs,
         numeric owners; whiteouts are character devices, opaque dirs xattrs)
      E  end of that layer
      Z  end of the stream (a truncated stream has none)

Import extracts each new version into staging, recomputes its manifest and
checks the digest chain before anything is published; any failure removes
the staging directories, so a damaged stream leaves the store as it was.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import IO

from . import digest as dg
from . import faults
from .errors import Conflict, Damaged, NotFound, PycorError
from .flatjson import write_json
from .fsutil import remove_tree
from .lxcconfig import base_lines
from .names import check_name, check_version
from .store import Store, Version
from .units import human_size

MAGIC = b"PYCOR-EXPORT 1\n"
CHUNK = 1 << 20
HEADER_LIMIT = 16 << 20
TAR_COMMON = ["--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]


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
        stack.append(v)
        current = v.parent
    if since is not None and current != since:
        raise NotFound(f"base {name}: version {since} is not below version {top}, so --since {since} cannot be used",
                       f"'pycor base versions {name}' shows each version's parent; drop --since to export the whole stack")
    return list(reversed(stack))


def export_base(store: Store, name: str, out: IO[bytes], version: str | None = None, since: str | None = None) -> dict:
    """Write the export stream of a base version (and the versions below it, down to `since`) to out."""
    check_name(name, "base name")
    if since is not None:
        check_version(since)
        store.version(name, since)
    stack = versions_to_send(store, name, version, since)
    header = {
        "format": 1, "base": name, "lxc": store.base(name).lxc,
        "since": since, "since_digest": store.version_digest(name, since) if since else None,
        "versions": [{"version": v.version, "parent": v.parent, "created": v.created, "size": v.size,
                      "source": v.source, "digest": store.version_digest(name, v.version)} for v in stack],
    }
    out.write(MAGIC)
    _frame(out, b"H", json.dumps(header).encode())
    sent = 0
    for v in stack:
        with open(os.path.join(os.path.dirname(v.rootfs), dg.MANIFEST), "rb") as f:
            _frame(out, b"M", f.read())
        tar = subprocess.Popen(["tar", "-C", v.rootfs, "--create", "--format=posix", *TAR_COMMON, "-f", "-", "."],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdout is not None
        while chunk := tar.stdout.read(CHUNK):
            _frame(out, b"D", chunk)
            sent += len(chunk)
        err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        if tar.wait() != 0:
            raise PycorError(f"tar failed on base {name} version {v.version}: {err.strip()}", "is the store readable?")
        _frame(out, b"E", b"")
        _say(f"base {name}: version {v.version} exported ({human_size(sent)} so far)")
    _frame(out, b"Z", b"")
    out.flush()
    return header


class _Reader:
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

    def frame(self, limit: int = CHUNK) -> tuple[bytes, bytes]:
        head = self.exact(9)
        tag, (length,) = head[:1], struct.unpack(">Q", head[1:])
        if tag not in (b"H", b"M", b"D", b"E", b"Z") or length > limit:
            raise Damaged(f"the export stream is damaged (frame {tag!r} of {length} bytes)", "export it again")
        return tag, self.exact(length)

    def expect(self, tag: bytes, limit: int = CHUNK) -> bytes:
        got, payload = self.frame(limit)
        if got != tag:
            raise Damaged(f"the export stream is damaged (expected frame {tag!r}, got {got!r})", "export it again")
        return payload

    def layer(self) -> Iterator[bytes]:
        while True:
            tag, payload = self.frame()
            if tag == b"E":
                return
            if tag != b"D":
                raise Damaged(f"the export stream is damaged (frame {tag!r} inside a layer)", "export it again")
            yield payload


def read_header(r: _Reader) -> dict:
    if r.exact(len(MAGIC)) != MAGIC:
        raise Damaged("this is not a pycor export", "make one with 'pycor base export NAME -o FILE'")
    try:
        header = json.loads(r.expect(b"H", HEADER_LIMIT))
        versions = header["versions"]
        for v in versions:
            check_version(str(v["version"]))
            if v["parent"] is not None:
                check_version(str(v["parent"]))
            if not isinstance(v["digest"], str) or len(v["digest"]) != 64:
                raise ValueError("a digest is not a sha256")
        lxc = header.get("lxc") or []
        if not isinstance(lxc, list):
            raise ValueError("its LXC lines are not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise Damaged(f"the export's header is damaged ({e})", "export it again") from None
    admitted, refused = base_lines(lxc)
    if refused:
        raise PycorError(f"the export's base carries LXC config a base may not carry: {refused[0]!r}",
                         "a base may set only what acts inside its containers; nothing was imported")
    header["lxc"] = admitted
    return header


def _extract(r: _Reader, rootfs: str, label: str) -> int:
    """Unpack one layer's tar frames into rootfs; returns the bytes received."""
    tar = subprocess.Popen(["tar", "-C", rootfs, "--extract", *TAR_COMMON, "--same-owner", "--same-permissions",
                            "-f", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tar.stdin is not None
    got, shown = 0, 0
    try:
        for chunk in r.layer():
            tar.stdin.write(chunk)
            got += len(chunk)
            if got - shown >= 64 << 20:
                _say(f"{label}: {human_size(got)} received")
                shown = got
    except BrokenPipeError:
        for _ in r.layer():  # tar gave up: keep the stream in step, the error comes from its status
            pass
    finally:
        try:
            tar.stdin.close()
        except BrokenPipeError:
            pass
        err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        status = tar.wait()
    if status != 0:
        raise Damaged(f"{label}: the layer's archive is damaged (tar: {err.strip()[:300]})", "export it again")
    return got


def import_export(store: Store, name: str, src: IO[bytes]) -> list[tuple[str, str]]:
    """Recreate the versions of an export stream in base `name`; returns [(version, 'imported'|'present')]."""
    check_name(name, "base name")
    r = _Reader(src)
    header = read_header(r)
    versions = header["versions"]
    exists = store.exists(name)
    # refuse before any long work: a number that means another tree here, or a missing starting point
    present: set[str] = set()
    digests: dict[str, str] = {}
    if header.get("since"):
        since = check_version(str(header["since"]))
        if not exists:
            raise NotFound(f"this export holds base {name} from version {since} on, and base {name} is not here",
                           f"export the whole base (without --since), or import version {since} first")
        try:
            ours = store.version_digest(name, since)
        except PycorError:
            raise NotFound(f"this export of base {name} builds on version {since}, which is not here",
                           f"export without --since, or from a version this host has ('pycor base versions {name}')") from None
        if ours != header.get("since_digest"):
            raise Conflict(f"base {name} version {since} here is not the tree the export builds on (digest {ours[:16]})",
                           "export without --since, or check both with 'pycor base verify'")
        digests[since] = ours
    for v in versions:
        number = str(v["version"])
        if exists and os.path.isdir(store.version_dir(name, number)):
            ours = store.version_digest(name, number)
            if ours != v["digest"]:
                raise Conflict(f"base {name} version {number} exists here with another digest ({ours[:16]}, the export's "
                               f"is {v['digest'][:16]})", "the two hosts built different trees under one number; import "
                               "into another base name, or remove that version here")
            present.add(number)
    stagings: dict[str, str] = {}
    done: list[tuple[str, str]] = []
    try:
        for v in versions:
            number, parent = str(v["version"]), (str(v["parent"]) if v["parent"] is not None else None)
            manifest = r.expect(b"M", HEADER_LIMIT * 8)
            label = f"base {name} version {number}"
            if number in present:
                for _ in r.layer():
                    pass
                digests[number] = v["digest"]
                done.append((number, "present"))
                _say(f"{label}: already here with the same digest")
                continue
            if parent is not None and parent not in digests:
                raise Damaged(f"{label}: its parent version {parent} is neither in the export nor checked here",
                              "export the whole base again")
            staging = store.new_staging(f"import-{name}")
            stagings[number] = staging
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs, 0o755)
            got = _extract(r, rootfs, label)
            actual = dg.layer_manifest(rootfs)
            diff = dg.first_difference(manifest, actual)
            if diff:
                raise Damaged(f"{label}: what arrived differs from what was exported: {diff}", "export it again")
            computed = dg.chain(dg.layer_digest(actual), digests.get(parent) if parent else None,
                                header["lxc"] if parent is None else ())
            if computed != v["digest"]:
                raise Damaged(f"{label}: digest {computed[:16]} does not match the export's {v['digest'][:16]}",
                              "export it again")
            with open(os.path.join(staging, dg.MANIFEST), "wb") as f:
                f.write(actual)
            write_json(os.path.join(staging, "version.json"),
                       {"version": int(number), "parent": int(parent) if parent else None, "created": v.get("created", 0),
                        "size": v.get("size", 0), "source": v.get("source", ""), "digest": computed})
            digests[number] = computed
            done.append((number, "imported"))
            _say(f"{label}: {human_size(got)} received, digest {computed[:16]} checked")
        r.expect(b"Z", 0)
        faults.point("import-staged")
        _publish(store, name, header, stagings)
        stagings.clear()
    finally:
        for staging in stagings.values():
            store.end_staging(staging)  # the directory and its lock file
    return done


def _publish(store: Store, name: str, header: dict, stagings: dict[str, str]) -> None:
    """Rename the checked versions into the store; a new base appears whole, in one rename."""
    top = str(header["versions"][-1]["version"]) if header["versions"] else None
    with store.lock():
        if not store.exists(name):
            if not stagings:
                return
            os.makedirs(store.bases_dir, mode=0o755, exist_ok=True)
            tmp = os.path.join(store.bases_dir, f".{name}.new{os.getpid()}")
            os.makedirs(os.path.join(tmp, "versions"), mode=0o755)
            try:
                for number, staging in stagings.items():
                    os.rename(staging, os.path.join(tmp, "versions", number))
                    os.chmod(os.path.join(tmp, "versions", number), 0o755)
                write_json(os.path.join(tmp, "base.json"),
                           {"name": name, "created": header["versions"][0].get("created", 0),
                            "lxc": header["lxc"]})
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
        if top is not None and int(top) > int(store.current(name)):
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
