"""Beyond one host: base digests, export and import, containers that move between LXD daemons as their diff.

The second host is a second LXD daemon on this machine with its own pycor
store (see second_lxd.py); it is always shut down and its directory removed.
"""


from __future__ import annotations

import json

import pytest


def test_first_difference_names_the_path_and_what_differs():
    from pycor_hooks.digest import first_difference

    old = b"/ d 755 0:0\n/etc/a f 644 0:0 3:aaa\n/etc/b l 777 0:0 ->x\n"
    assert first_difference(old, old) is None
    assert first_difference(old, old.replace(b"3:aaa", b"3:bbb")) == "/etc/a: content differs (recorded 3:aaa, now 3:bbb)"
    assert first_difference(old, old.replace(b"644 0:0 3", b"600 0:0 3")).startswith("/etc/a: mode differs")
    assert first_difference(old, old + b"/etc/c p 644 0:0\n") == "/etc/c: not in the recorded manifest (added)"
    assert first_difference(old, old.replace(b"/etc/b l 777 0:0 ->x\n", b"")).startswith("/etc/b: in the recorded")


def test_layer_metadata_keeps_a_digest_and_refuses_one_that_is_not_sha256():
    from pycor_hooks.errors import PycorError
    from pycor_hooks.layer import LayerMeta, parse_meta

    d = "ab" * 32
    assert parse_meta(json.dumps({"base": "b", "pin": None, "based_on": "2", "digest": d}).encode(), "x") == LayerMeta("b", None, "2", d)
    assert parse_meta(b'{"base": "b"}', "x").digest is None
    with pytest.raises(PycorError):
        parse_meta(json.dumps({"base": "b", "based_on": "2", "digest": "../etc"}).encode(), "x")


def test_export_reader_refuses_a_stream_that_is_not_an_export_or_is_cut():
    import io

    from pycor_hooks.errors import Damaged
    from pycor_hooks.export import MAGIC, _Reader, read_header

    with pytest.raises(Damaged, match="not a pycor export"):
        read_header(_Reader(io.BytesIO(b"GARBAGE-AT-THE-START\n")))
    with pytest.raises(Damaged, match="ends early"):
        read_header(_Reader(io.BytesIO(MAGIC + b"H\x00\x00")))
    with pytest.raises(Damaged, match="frame"):
        read_header(_Reader(io.BytesIO(MAGIC + b"Q" + bytes(8))))
