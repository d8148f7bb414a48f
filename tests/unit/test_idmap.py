"""Idmapped views of a root-owned base: parsing, the user-namespace helper, the
views themselves on the real kernel, an overlay mounted as container root on
such a view, and the registry that shares views between containers.

Runs as root. Every mount made here is undone in fixture teardown, even when
a test fails, and the session checks that none is left in /proc/self/mountinfo.
"""


from __future__ import annotations

import ctypes
import os
import sys

import pytest

from pycor_hooks import idmap, linux
from pycor_hooks.errors import PycorError
from pycor_hooks.idmap import IdMap, IdMapEntry

MAP_100K = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"


MAP_200K = "lxc.idmap = u 0 200000 65536\nlxc.idmap = g 0 200000 65536\n"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def parse(text: str) -> IdMap:
    return IdMap.parse_lxc_config(text)


def test_parse_reads_idmap_lines_and_ignores_comments_and_other_keys() -> None:
    text = """
# lxc.idmap = u 0 5 5   (a comment, not a line)
lxc.uts.name = web1
lxc.rootfs.path = dir:/var/lib/lxc/web1/rootfs
lxc.idmap = u 0 100000 65536
  lxc.idmap=g 0 100000 65536
lxc.net.0.type = empty
"""
    im = parse(text)
    assert im.entries == (IdMapEntry("u", 0, 100000, 65536), IdMapEntry("g", 0, 100000, 65536))
    assert im.check() is im
    assert not im.is_empty


def test_parse_reads_lxd_generated_config() -> None:
    # The shape of /var/log/lxd/NAME/lxc.conf.
    text = """lxc.log.file = /var/log/lxd/c1/lxc.log
lxc.log.level = warn
lxc.console.buffer.size = auto
lxc.idmap = u 0 1000000 1000000000
lxc.idmap = g 0 1000000 1000000000
lxc.mount.auto = proc:rw sys:rw cgroup:rw:force
lxc.hook.pre-start = /proc/1234/exe callhook /var/lib/lxd "default" "c1" start
lxc.rootfs.path = dir:/var/lib/lxd/containers/c1/rootfs
"""
    im = parse(text).check()
    assert im.uid_map_text() == "0 1000000 1000000000\n"
    assert im.gid_map_text() == "0 1000000 1000000000\n"


def test_parse_accepts_lxc2_key_and_empty_value_clears() -> None:
    assert parse("lxc.id_map = u 0 100000 65536\n").entries == (IdMapEntry("u", 0, 100000, 65536),)
    assert parse("lxc.idmap = u 0 100000 65536\nlxc.idmap =\nlxc.idmap = g 0 5 1\n").entries == (
        IdMapEntry("g", 0, 5, 1),
    )


def test_config_without_idmap_is_empty_privileged() -> None:
    im = parse("lxc.uts.name = web1\n# lxc.idmap = u 0 100000 65536\n")
    assert im.is_empty
    assert IdMap().is_empty


@pytest.mark.parametrize("line", ["lxc.idmap = u 0 100000", "lxc.idmap = b 0 100000 65536", "lxc.idmap = u -1 100000 5"])
def test_parse_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(PycorError, match="unreadable idmap line 1"):
        parse(line + "\n")


def test_map_texts_and_key() -> None:
    im = parse("lxc.idmap = u 1000 1000 1\nlxc.idmap = u 0 100000 1000\nlxc.idmap = g 0 100000 65536\n")
    assert im.uid_map_text() == "0 100000 1000\n1000 1000 1\n"
    assert im.gid_map_text() == "0 100000 65536\n"
    assert len(im.key) == 16 and all(c in "0123456789abcdef" for c in im.key)
    # Stable: line order does not matter, and the key is deterministic.
    reordered = parse("lxc.idmap = g 0 100000 65536\nlxc.idmap = u 0 100000 1000\nlxc.idmap = u 1000 1000 1\n")
    assert reordered.key == im.key
    assert parse(MAP_100K).key != parse(MAP_200K).key
    assert parse(MAP_100K).key == parse(MAP_100K).key


@pytest.mark.parametrize(
    "text, message",
    [
        ("lxc.idmap = u 0 0 65536\nlxc.idmap = g 0 100000 65536\n", "gives container root host uid 0 is refused"),
        ("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 0 65536\n", "gives container root host gid 0 is refused"),
        ("lxc.idmap = u 0 100000 65536\nlxc.idmap = u 1000 0 1\nlxc.idmap = g 0 100000 65536\n", "host uid 0 is refused"),
        ("lxc.idmap = u 0 100000 65536\n", "no gid entries"),
        ("lxc.idmap = g 0 100000 65536\n", "no uid entries"),
        ("", "no uid entries"),
        (MAP_100K + "lxc.idmap = u 1000 300000 1\n", "overlap on the container side"),
        (MAP_100K + "lxc.idmap = g 70000 100005 10\n", "overlap on the host side"),
        ("lxc.idmap = u 1 100000 65536\nlxc.idmap = g 0 100000 65536\n", "does not map container root"),
        ("lxc.idmap = u 0 100000 0\nlxc.idmap = g 0 100000 65536\n", "out of bounds"),
        ("lxc.idmap = u 0 4294967000 65536\nlxc.idmap = g 0 100000 65536\n", "out of bounds"),
    ],
)
def test_check_refuses_unusable_maps(text: str, message: str) -> None:
    with pytest.raises(PycorError, match=message):
        parse(text).check()


def test_check_accepts_adjacent_ranges() -> None:
    parse(MAP_100K + "lxc.idmap = u 65536 165536 100\nlxc.idmap = g 65536 165536 100\n").check()


def test_layer_ids_are_validated() -> None:
    for good in ("debian12.3", "l_1-a", "x"):
        assert idmap.check_layer_id(good) == good
    for bad in ("", ".", "..", "a..b", "a/b", "a b", "lower,x", "é"):
        with pytest.raises(PycorError):
            idmap.check_layer_id(bad)


@pytest.mark.parametrize("with_prctl", [True, False], ids=["python-prctl", "ctypes"])
def test_helper_gets_killed_with_its_parent(monkeypatch: pytest.MonkeyPatch, with_prctl: bool) -> None:
    """The death signal the helper sets, through python-prctl or the ctypes fallback."""
    if with_prctl:
        import prctl  # a dependency of pycor: its absence is a failure, not a skip
    else:
        monkeypatch.setitem(sys.modules, "prctl", None)  # import prctl now raises ImportError
    monkeypatch.setattr(idmap, "_set_pdeathsig", None)
    setter = idmap._pdeathsig_setter()
    assert setter is (prctl.set_pdeathsig if with_prctl else linux.set_pdeathsig)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            setter(idmap.SIGKILL)
            sig = ctypes.c_int(-1)
            if _libc.prctl(2, ctypes.byref(sig), 0, 0, 0) == 0:  # PR_GET_PDEATHSIG
                os.write(w, str(sig.value).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = os.read(r, 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert data == b"9"
