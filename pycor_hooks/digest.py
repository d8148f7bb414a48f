"""A base version's identity: a manifest per layer and a content digest per version.

The manifest of a layer has one line per entry, sorted by path: the path,
its type, mode, owner, and what makes its content: a regular file's sha256
and size, a symlink's target, a device's major and minor, and every xattr
(overlayfs' opaque and redirect marks, capabilities, ACLs). mtimes are left
out: they say when, not what. A whiteout is a 0/0 character device, so it is
an entry like any other.

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

import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import Damaged

if TYPE_CHECKING:
    from .store import Store

MANIFEST = "manifest"
VERSION_JSON = "version.json"
_CHUNK = 1 << 20


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


def _file_sha256(parent: int, name: str) -> str:
    import hashlib

    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def entry_line(rel: str, st: os.stat_result, parent: int, name: str) -> str:
    """The manifest line of one entry (parent: an fd of its directory, name: its name there)."""
    kind = _kind(st.st_mode)
    fields = ["/" + _quote(os.fsencode(rel)) if rel else "/", kind, f"{stat.S_IMODE(st.st_mode):o}", f"{st.st_uid}:{st.st_gid}"]
    if kind == "f":
        fields.append(f"{st.st_size}:{_file_sha256(parent, name)}")
    elif kind == "l":
        fields.append("->" + _quote(os.fsencode(os.readlink(name, dir_fd=parent))))
    elif kind in ("c", "b"):
        fields.append(f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
    fields.extend(_xattrs(f"/proc/self/fd/{parent}/{name}"))
    return " ".join(fields)


def layer_manifest(layer: str) -> bytes:
    """The sorted manifest of one layer directory (its root included as '/')."""
    from .fsutil import walk

    top = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        lines = [entry_line("", os.fstat(top), top, ".")]
        for rel, st, parent, name in walk(top):
            lines.append(entry_line(rel, st, parent, name))
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


def verify(store: Store, name: str, version: str | None = None) -> tuple[str, str, list[Finding]]:
    """Recompute every layer of a version's stack against its recorded manifest and the digest chain.

    Returns (version, digest, findings); no findings means it is intact. A
    layer with no recorded manifest (published before digests) gets one now.
    """
    store.require(name)
    top = version or store.current(name)
    stack = []
    current: str | None = top
    while current is not None:
        v = store.version(name, current)
        stack.append(v)
        current = v.parent
    findings: list[Finding] = []
    parent_digest: str | None = None
    for v in reversed(stack):  # lowest first: the chain needs parents' digests
        vdir = os.path.dirname(v.rootfs)
        if not os.path.isdir(v.rootfs):
            raise Damaged(f"base {name!r}: layer {v.rootfs} is missing", "the store is damaged; import the base again")
        actual = layer_manifest(v.rootfs)
        try:
            with open(os.path.join(vdir, MANIFEST), "rb") as f:
                kept = f.read()
        except FileNotFoundError:
            kept = None
        if kept is None:
            store.version_digest(name, v.version)
            kept = actual
        diff = first_difference(kept, actual)
        if diff:
            findings.append(Finding(v.version, diff))
        expect = chain(layer_digest(kept), parent_digest, store.base(name).lxc if parent_digest is None else ())
        rec = store.recorded_digest(name, v.version)
        if rec and rec != expect:
            findings.append(Finding(v.version, f"recorded digest {rec[:16]} does not match its manifest's {expect[:16]}"))
        parent_digest = rec or expect
    return top, parent_digest or "", findings
