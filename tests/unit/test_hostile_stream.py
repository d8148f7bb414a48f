"""What an export stream, or a base's and a version's records on disk, can say, and what pycor makes of it.

Every field of an export's header is checked once, by export.parse_header;
records a stream wrote are read back bounded (store.version, store.base) and
never break a listing; text from them reaches a terminal without escapes.
The cases that need tar, a store and root are in
tests/integration/test_hostile_stream.py.
"""

from __future__ import annotations

import json
import os

import pytest

from pycor_hooks.store import Store


def make_store(tmp_path, lxc: list[str] | None = None) -> Store:
    store = Store(str(tmp_path / "store"))
    staging = store.new_staging("test")
    os.makedirs(os.path.join(staging, "rootfs", "etc"))
    store.publish_base("b", staging, "test", 1, lxc or [])
    return store


def rewrite(path: str, **fields: object) -> None:
    with open(path) as f:
        meta = json.load(f)
    meta.update(fields)
    with open(path, "w") as f:
        f.write(json.dumps(meta, allow_nan=True))


@pytest.mark.parametrize("created", [1e300, float("nan"), float("inf"), -5, "yesterday", [1], True, None])
@pytest.mark.parametrize("size", [10**30, float("inf"), float("nan"), -1, "big", 12])
def test_a_version_record_with_any_date_and_size_reads_back_bounded(tmp_path, created, size):
    store = make_store(tmp_path)
    rewrite(os.path.join(store.version_dir("b", "1"), "version.json"), created=created, size=size,
            source="x\x1b]0;pwned\x07\x1b[2J" + "y" * 5000)
    rewrite(os.path.join(store.base_dir("b"), "base.json"), created=created)
    v = store.version("b", "1")
    assert v.created == 0.0 and v.size == (12 if size == 12 else 0)
    assert "\x1b" not in v.source and "\x07" not in v.source and len(v.source) < 1100
    assert v.source.startswith("x\\x1b]0;pwned\\x07\\x1b[2J")
    assert store.base("b").created == 0.0
    found, damaged = store.scan_versions("b")
    assert [x.version for x in found] == ["1"] and damaged == {}


def test_a_record_nested_too_deep_for_the_json_module_is_damage_not_a_crash(tmp_path):
    store = make_store(tmp_path)
    with open(os.path.join(store.version_dir("b", "1"), "version.json"), "w") as f:
        f.write('{"parent": null, "source": ' + "[" * 100000 + "]" * 100000 + "}")
    found, damaged = store.scan_versions("b")
    assert found == [] and "version.json cannot be read" in damaged["1"]


def test_printable_writes_out_what_a_terminal_would_act_on():
    from pycor_hooks.names import printable

    assert printable("plain text, 1.2 - ok") == "plain text, 1.2 - ok"
    assert printable("a\x1b[31mb\r\n\t\x9b\u202e\u2028\x00") == "a\\x1b[31mb\\r\\n\\t\\x9b\\u202e\\u2028\\x00"
    assert printable("x" * 5000, 100) == "x" * 100 + "..."
    assert printable(None) == "None"


def test_tables_and_errors_reach_the_terminal_without_escapes(capsys):
    from pycor_hooks.commands._common import print_table

    print_table([{"name": "b", "source": "evil\x1b[2J\x1b]8;;http://x\x07"}], [("name", "NAME"), ("source", "SOURCE")])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J" in out


# -- sparse files: hashing skips holes, a sparse and a dense file of the same bytes hash the same -------------


def reference_content(data: bytes) -> str:
    """The manifest's content field of a regular file, computed the slow way from its bytes (the spec in digest.py)."""
    import hashlib
    import struct

    block = 4096
    blocks = [data[i:i + block] for i in range(0, len(data), block)]
    if not any(b == bytes(len(b)) for b in blocks):
        return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    h, start = hashlib.sha256(), None
    for i, b in enumerate(blocks + [b""]):
        if b and b != bytes(len(b)):
            start = i * block if start is None else start
            h.update(b)
        elif start is not None:
            h.update(struct.pack(">QQ", start, min(i * block, len(data)) - start))
            start = None
    return f"{len(data)}:z:{h.hexdigest()}"


def write_file(path: str, pieces: list[bytes | int], sparse: bool) -> bytes:
    """pieces: bytes written, or an int: that many zero bytes (a hole when sparse). Returns the file's bytes."""
    data = b"".join(p if isinstance(p, bytes) else bytes(p) for p in pieces)
    with open(path, "wb") as f:
        for p in pieces:
            if isinstance(p, int) and sparse:
                f.seek(p, os.SEEK_CUR)
            else:
                f.write(p if isinstance(p, bytes) else bytes(p))
        f.truncate(len(data))
    return data


def content_field(directory: str, name: str) -> str:
    from pycor_hooks.digest import layer_manifest

    line = next(x for x in layer_manifest(directory).decode().splitlines() if x.startswith(f"/{name} "))
    return line.split(" ")[4]


@pytest.mark.parametrize("pieces", [
    [],
    [b"hello"],
    [100],  # a short file of zeros: one partial zero block
    [os.urandom(10000)],
    [4096, b"x"],
    [b"head", 1 << 20, b"tail"],
    [os.urandom(4096), 8192, os.urandom(5000), 3 << 20, os.urandom(1), 4095],
    [1 << 22],
    [b"a" * 4095, 1, b"b" * 4096, 4096],
], ids=lambda p: "+".join(str(x if isinstance(x, int) else len(x)) for x in p) or "empty")
def test_a_sparse_and_a_dense_file_of_the_same_bytes_have_one_manifest_line(tmp_path, pieces):
    for kind in ("dense", "sparse"):
        os.makedirs(tmp_path / kind)
        data = write_file(str(tmp_path / kind / "f"), pieces, sparse=kind == "sparse")
    assert content_field(str(tmp_path / "dense"), "f") == content_field(str(tmp_path / "sparse"), "f") == reference_content(data)


def test_a_file_without_a_zero_block_keeps_its_plain_sha256(tmp_path):
    import hashlib

    data = os.urandom(300000)
    write_file(str(tmp_path / "f"), [data], sparse=False)
    assert content_field(str(tmp_path), "f") == f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


def test_hashing_a_sparse_file_reads_its_data_and_never_its_holes(tmp_path, monkeypatch):
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, four bytes of data at 1 GiB
        f.seek(1 << 30)
        f.write(b"data")
    if os.stat(path).st_blocks * 512 >= 1 << 20:
        pytest.skip("the filesystem under tmp_path keeps no holes")
    read = []
    real_pread, real_read = os.pread, os.read

    def pread(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, offset)

    def counted_read(fd: int, n: int) -> bytes:
        read.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "read", counted_read)
    assert content_field(str(tmp_path), "f") == f"{1 << 40}:z:" + __import__("hashlib").sha256(
        b"data" + bytes(4092) + __import__("struct").pack(">QQ", 1 << 30, 4096)).hexdigest()
    assert sum(read) <= 1 << 20


def test_a_manifest_recorded_before_holes_were_skipped_still_verifies_and_still_catches_a_change(tmp_path):
    import hashlib

    from pycor_hooks.digest import first_difference, layer_manifest

    data = write_file(str(tmp_path / "f"), [b"x", 1 << 20, b"y"], sparse=True)
    new = layer_manifest(str(tmp_path))
    assert b":z:" in new
    old = new.replace(reference_content(data).encode(), f"{len(data)}:{hashlib.sha256(data).hexdigest()}".encode())
    assert layer_manifest(str(tmp_path), recorded=old) == old  # hashed as it was recorded: plain bytes
    with open(tmp_path / "f", "r+b") as f:
        f.seek(5000)
        f.write(b"!")
    assert first_difference(old, layer_manifest(str(tmp_path), recorded=old)).startswith("/f: content differs")
    # an export stream's manifest may not make pycor read a sparse file's holes: it is hashed skipping them
    assert b":z:" in layer_manifest(str(tmp_path), recorded=old, untrusted=True)
    # but a dense file it records plainly (an older pycor's export, sent dense) is hashed plainly
    dense = str(tmp_path / "dense")
    os.mkdir(dense)
    data = write_file(os.path.join(dense, "f"), [b"x", 1 << 20, b"y"], sparse=False)
    old = layer_manifest(dense).replace(reference_content(data).encode(), f"{len(data)}:{hashlib.sha256(data).hexdigest()}".encode())
    assert layer_manifest(dense, recorded=old, untrusted=True) == old


def test_content_fields_match_the_slow_reference_on_random_files(tmp_path):
    import random

    rng = random.Random(19)
    for n in range(40):
        pieces: list[bytes | int] = []
        for _ in range(rng.randint(1, 8)):
            size = rng.choice([1, 100, 4095, 4096, 4097, 8192, 70000, 1 << 20, (1 << 20) + 3])
            pieces.append(size if rng.random() < 0.5 else rng.randbytes(size))
        for kind in ("dense", "sparse"):
            os.makedirs(tmp_path / f"{n}{kind}")
            data = write_file(str(tmp_path / f"{n}{kind}" / "f"), pieces, sparse=kind == "sparse")
        want = reference_content(data)
        assert content_field(str(tmp_path / f"{n}dense"), "f") == want, pieces
        assert content_field(str(tmp_path / f"{n}sparse"), "f") == want, pieces


# -- the header: every field checked once (export.parse_header) ---------------------------------------------

from streams import DIGEST, MAGIC, entry, frame, header, header_frame  # noqa: E402


def parse(value: dict | bytes):  # type: ignore[no-untyped-def]
    from pycor_hooks.export import parse_header

    return parse_header(value if isinstance(value, bytes) else json.dumps(value).encode())


def test_a_valid_header_reads_as_a_checked_record_and_unknown_keys_are_ignored():
    got = parse(header([entry("1"), entry("2", "1", source="update: apt-get\n\x1b[2J", created=0)],
                       lxc=["lxc.signal.halt = SIGUSR1"], extra={"a": 1}))
    assert (got.base, got.since, got.since_digest, got.lxc) == ("bb", None, None, ["lxc.signal.halt = SIGUSR1"])
    assert [(v.version, v.parent, v.digest) for v in got.versions] == [("1", None, DIGEST), ("2", "1", DIGEST)]
    assert got.versions[1].source == "update: apt-get\\n\\x1b[2J" and got.versions[1].created == 0.0
    since = parse(header([entry("5", "3")], since="3", since_digest=DIGEST))
    assert since.since == "3" and since.versions[0].parent == "3"


BAD_HEADERS: list[tuple[str, object, str]] = [
    ("not JSON", b"{not json", "is not JSON"),
    ("nested too deep", b"[" * 200000 + b"]" * 200000, "is not JSON"),
    ("a list", [], "not a JSON object"),
    ("NaN literal", b'{"format": 1, "x": NaN}', "is not JSON"),
    ("format 2", header(format=2), "this pycor reads format 1"),
    ("format true", header(format=True), "this pycor reads format 1"),
    ("no format", {k: v for k, v in header().items() if k != "format"}, "this pycor reads format 1"),
    ("base name with a slash", header(base="../etc"), "base name '../etc' is not a name"),
    ("base name not text", header(base=5), "is not a name"),
    ("since not a number", header([entry("2", "x")], since="x", since_digest=DIGEST), "'since' 'x' is not a version"),
    ("since as an int", header([entry("2", "1")], since=1, since_digest=DIGEST), "'since' 1 is not a version"),
    ("since without its digest", header([entry("2", "1")], since="1"), "'since_digest' is not a sha256"),
    ("lxc not a list", header(lxc="lxc.init.cmd = /sbin/init"), "'lxc' is not a list"),
    ("too many lxc lines", header(lxc=["lxc.tty.max = 1"] * 65), "'lxc' is not a list of at most 64"),
    ("no versions", header([]), "'versions' is not a list of 1 to 1000"),
    ("too many versions", header([entry(str(i + 1), str(i) if i else None) for i in range(1001)]), "1 to 1000"),
    ("versions not a list", header(versions={"1": {}}), "'versions' is not a list"),
    ("an entry not an object", header(["1"]), "version entry 1 is not a JSON object"),
    ("version as an int", header([entry(1)]), "versions are positive whole numbers"),  # type: ignore[arg-type]
    ("version zero", header([entry("0")]), "versions are positive whole numbers"),
    ("version with a leading zero", header([entry("01")]), "versions are positive whole numbers"),
    ("version that is a path", header([entry("../1")]), "versions are positive whole numbers"),
    ("version of ten digits", header([entry("1234567890")]), "versions are positive whole numbers"),
    ("version in unicode digits", header([entry("\u0661")]), "versions are positive whole numbers"),
    ("no version number", header([{"parent": None, "digest": DIGEST}]), "has no version number"),
    ("parent outside the export", header([entry("3", "2")]), "version 3: its parent is 2"),
    ("first version with since but no parent", header([entry("3")], since="2", since_digest=DIGEST), "its parent is none"),
    ("a gap in the stack", header([entry("1"), entry("3", "2")]), "version 3: its parent is 2"),
    ("the same version twice", header([entry("1"), entry("1", "1")]), "numbered above its parent"),
    ("a child below its parent", header([entry("5"), entry("2", "5")]), "numbered above its parent"),
    ("created 1e300", header([entry(created=1e300)]), "'created' 1e+300 is not a time"),
    ("created huge", header([entry(created=2**40)]), "'created' 1099511627776 is not a time"),
    ("created 1e999", b'{"format": 1, "base": "bb", "versions": [{"version": "1", "parent": null, "created": 1e999, '
                      b'"digest": "' + DIGEST.encode() + b'"}]}', "'created' inf is not a time"),
    ("created negative", header([entry(created=-1)]), "'created' -1 is not a time"),
    ("created a string", header([entry(created="yesterday")]), "'created' 'yesterday' is not a time"),
    ("created true", header([entry(created=True)]), "'created' True is not a time"),
    ("size negative", header([entry(size=-1)]), "'size' -1 is not a size"),
    ("size 2**70", header([entry(size=2**70)]), "is not a size"),
    ("size a float", header([entry(size=1.5)]), "'size' 1.5 is not a size"),
    ("size with 5000 digits", b'{"format": 1, "base": "bb", "versions": [{"version": "1", "parent": null, "size": '
                              + b"9" * 5000 + b', "digest": "' + DIGEST.encode() + b'"}]}', "is not JSON"),
    ("source not text", header([entry(source=["a"])]), "'source' is not text"),
    ("digest upper case", header([entry(digest=DIGEST.upper())]), "'digest' is not a sha256"),
    ("digest short", header([entry(digest="ab")]), "'digest' is not a sha256"),
    ("digest a path", header([entry(digest="../" * 21 + "a")]), "'digest' is not a sha256"),
]


@pytest.mark.parametrize("label,value,message", BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_a_header_field_of_the_wrong_type_or_range_is_refused_naming_it(label, value, message):
    from pycor_hooks.errors import Damaged

    with pytest.raises(Damaged) as e:
        parse(value)  # type: ignore[arg-type]
    assert message in e.value.message
    assert "\x1b" not in e.value.message


@pytest.mark.parametrize("line", [
    "lxc.hook.pre-start = /bin/sh -c 'touch /pwned'",
    "lxc.hook.mount = /tmp/x",
    "lxc.mount.entry = /etc etc none bind 0 0",
    "lxc.mount.auto = proc:rw sys:rw",
    "lxc.cgroup2.devices.allow = a",
    "lxc.cap.drop =",
    "lxc.apparmor.profile = unconfined",
    "lxc.include = /etc/shadow",
    "lxc.rootfs.path = dir:/",
    "lxc.idmap = u 0 0 65536",
    "lxc.init.cmd = /sbin/init\nlxc.hook.pre-start = /bin/evil",
    "lxc.init.cmd = /sbin/init\u2028lxc.hook.pre-start = /bin/evil",
    "lxc.signal.halt = SIGUSR1 # \x1b[2J",
    "lxc.environment = A=1\rlxc.hook.start-host = /bin/evil",
    "lxc.environment = AWS_SECRET_ACCESS_KEY",  # no '=': LXC copies the variable from whoever runs lxc-start
    "lxc.tty.max = 100000",  # LXC sets up each tty at every start
    "lxc.signal.halt = \u0663",  # an Arabic-Indic three: a digit to Python, not to LXC
    "lxc.init.cmd = /sbin/init\udc80",  # a lone surrogate: no UTF-8 config file can hold it
    5,
])
def test_a_header_whose_lxc_lines_a_base_may_not_carry_is_refused(line):
    from pycor_hooks.errors import PycorError

    with pytest.raises(PycorError) as e:
        parse(header(lxc=["lxc.signal.halt = SIGUSR1", line]))
    assert "LXC config a base may not carry" in e.value.message and "nothing was imported" in str(e.value.hint)
    assert "\x1b" not in e.value.message and "\n" not in e.value.message


def test_a_base_record_on_disk_carries_only_lines_a_base_may_carry(tmp_path):
    store = make_store(tmp_path, ["lxc.signal.halt = SIGUSR1"])
    rewrite(os.path.join(store.base_dir("b"), "base.json"),
            lxc=["lxc.hook.pre-start = /bin/evil", "lxc.signal.halt = SIGUSR1", "lxc.mount.entry = / x none bind"])
    assert store.base("b").lxc == ["lxc.signal.halt = SIGUSR1"]


# -- frames: each bounded before it is read, truncation anywhere, nothing after the end ----------------------


def reader(data: bytes):  # type: ignore[no-untyped-def]
    import io

    from pycor_hooks.export import _Reader

    return _Reader(io.BytesIO(data))


BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "ends early"),
    ("not an export", b"GARBAGE-AT-THE-START\n", "not a pycor export"),
    ("cut in the magic", MAGIC[:5], "ends early"),
    ("cut in a frame's length", MAGIC + b"H\x00\x00", "ends early"),
    ("cut in the header", MAGIC + header_frame(header())[:-3], "ends early"),
    ("an unknown tag", MAGIC + b"Q" + bytes(8), "a frame b'Q' of 0 bytes"),
    ("a layer before the header", MAGIC + frame(b"M", b"/ d 755 0:0\n"), "expected frame b'H', got b'M'"),
    ("a header over its limit", MAGIC + b"H" + (17 << 20).to_bytes(8, "big"), "a frame b'H' of 17825792 bytes"),
    ("a length of 2**64-1", MAGIC + b"H" + b"\xff" * 8, "of 18446744073709551615 bytes"),
]


@pytest.mark.parametrize("label,data,message", BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
def test_a_stream_cut_or_framed_wrong_before_its_header_is_refused(label, data, message):
    from pycor_hooks.errors import Damaged
    from pycor_hooks.export import read_header

    with pytest.raises(Damaged) as e:
        read_header(reader(data))
    assert message in e.value.message


def test_layer_frames_are_bounded_and_typed_and_nothing_may_follow_the_end():
    from pycor_hooks.errors import Damaged

    def layer(data: bytes, limit: int = 100) -> list[bytes]:
        return list(reader(data).layer(limit))

    assert layer(frame(b"D", b"a" * 60) + frame(b"D", b"b" * 40) + frame(b"E")) == [b"a" * 60, b"b" * 40]
    for data, message in [
        (frame(b"D", b"a" * 60) + frame(b"D", b"b" * 41) + frame(b"E"), "larger than its manifest allows"),
        (frame(b"D") + frame(b"E"), "a frame b'D' of 0 bytes"),  # empty frames would make a layer endless
        (b"D" + (2 << 20).to_bytes(8, "big"), "a frame b'D' of 2097152 bytes"),
        (frame(b"D", b"a") + frame(b"E", b"x"), "a frame b'E' of 1 bytes"),
        (frame(b"D", b"a") + frame(b"M", b"/ d 755 0:0\n"), "a frame b'M' inside a layer"),
        (frame(b"D", b"a") + frame(b"Z"), "a frame b'Z' inside a layer"),
        (frame(b"D", b"a"), "ends early"),  # no E
        (frame(b"D", b"abc")[:-1], "ends early"),  # cut mid-frame
    ]:
        with pytest.raises(Damaged) as e:
            layer(data)
        assert message in e.value.message, data
    reader(frame(b"Z")).end()
    for data, message in [(b"", "ends early"), (frame(b"Z", b"x"), "a frame b'Z' of 1 bytes"),
                          (frame(b"Z") + b"\x00", "bytes after its end"), (frame(b"E"), "expected frame b'Z'")]:
        with pytest.raises(Damaged) as e:
            reader(data).end()
        assert message in e.value.message


@pytest.mark.parametrize("manifest,message", [
    (b"", "not lines of printable text"),
    (b"/ d 755 0:0", "not lines of printable text"),
    (b"/ d 755 0:0\n/\x1b[2J f 644 0:0 1:" + b"a" * 64 + b"\n", "not lines of printable text"),
    ("/ d 755 0:0\n/\u00e9 d 755 0:0\n".encode(), "not lines of printable text"),
    (b"/ d 755 0:0\nrelative d 755 0:0\n", "damaged (a line 'relative d 755 0:0')"),
    (b"/ d 755 0:0\n/x f 644 0:0 huge:" + b"a" * 64 + b"\n", "the size of /x"),
    (b"/ d 755 0:0\n/x f 644 0:0 " + str(2**61).encode() + b":" + b"a" * 64 + b"\n", "the size of /x"),
])
def test_a_manifest_that_is_not_printable_lines_is_refused(manifest, message):
    from pycor_hooks.errors import Damaged
    from pycor_hooks.export import check_manifest

    with pytest.raises(Damaged) as e:
        check_manifest(manifest, "base b version 1")
    assert message in e.value.message


def test_a_manifest_bounds_its_layers_archive_by_what_it_lists():
    from pycor_hooks.export import check_manifest

    small = check_manifest(b"/ d 755 0:0\n/f f 644 0:0 10:" + b"a" * 64 + b"\n", "x")
    big = check_manifest(b"/ d 755 0:0\n/f f 644 0:0 1000000000:z:" + b"a" * 64 + b"\n", "x")
    assert small < 2 << 20 and 2 * 10**9 < big < 2 * 10**9 + (2 << 20)
