"""Export streams built by hand, frame by frame: what a hostile sender can put on the wire.

A stream is MAGIC, then frames (a tag byte, an 8-byte big-endian length, the
payload): H the header, then per version M its manifest, D chunks of its tar,
E; then Z. These helpers build each part so a test can get any of them wrong.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile

MAGIC = b"PYCOR-EXPORT 1\n"
DIGEST = "ab" * 32


def frame(tag: bytes, payload: bytes = b"") -> bytes:
    return tag + struct.pack(">Q", len(payload)) + payload


def entry(version: str = "1", parent: str | None = None, **fields: object) -> dict:
    """One version of a header, valid unless fields say otherwise."""
    return {"version": version, "parent": parent, "created": 1700000000.5, "size": 4096, "source": "test",
            "digest": DIGEST, **fields}


def header(versions: list[dict] | None = None, **fields: object) -> dict:
    """A valid header (one version, no LXC lines) unless fields say otherwise."""
    return {"format": 1, "base": "bb", "lxc": [], "since": None, "since_digest": None,
            "versions": versions if versions is not None else [entry()], **fields}


def header_frame(value: dict | bytes) -> bytes:
    return frame(b"H", value if isinstance(value, bytes) else json.dumps(value).encode())


def layer_frames(manifest: bytes, tar: bytes, chunk: int = 1 << 20) -> bytes:
    """M, then D frames of at most chunk bytes, then E."""
    return frame(b"M", manifest) + b"".join(frame(b"D", tar[i:i + chunk]) for i in range(0, len(tar), chunk)) + frame(b"E")


def stream(head: dict | bytes, layers: list[tuple[bytes, bytes]], end: bytes = frame(b"Z")) -> bytes:
    return MAGIC + header_frame(head) + b"".join(layer_frames(m, t) for m, t in layers) + end


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "", mode: int = 0o644,
           uid: int = 0, gid: int = 0, pax: dict[str, str] | None = None, dev: tuple[int, int] = (0, 0)) -> tuple:
    return (name, kind, data, linkname, mode, uid, gid, pax or {}, dev)


def tar_of(members: list[tuple]) -> bytes:
    """A POSIX tar of hand-made members (tarfile writes whatever it is given: '..', absolute names, links out)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, linkname, mode, uid, gid, pax, dev in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, linkname
            info.devmajor, info.devminor = dev
            info.pax_headers = dict(pax)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()
