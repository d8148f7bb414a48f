"""Realism: containers on a debootstrap Debian minbase base."""

from __future__ import annotations

import os

import pytest
from helpers import tree_checksum

pytestmark = pytest.mark.slow


def test_debian_containers_run_dpkg_and_change_only_their_layer(make_container, debian_base, store):
    layer = os.path.join(store, "bases", debian_base, "versions", "1", "rootfs")
    before = tree_checksum(layer)
    a, b = make_container(base=debian_base), make_container(base=debian_base)
    a.start()
    b.start()
    assert "ii  dpkg" in a.sh("dpkg -l dpkg").stdout
    a.sh("useradd -m alice && echo hi > /home/alice/note && apt-get --version >/dev/null && rm -rf /usr/share/doc")
    assert "alice" in open(os.path.join(a.upper, "etc/passwd")).read()
    assert b.sh("id alice", check=False).returncode != 0
    assert b.sh("ls /usr/share/doc | wc -l").stdout.strip() != "0"
    a.stop()
    b.stop()
    assert tree_checksum(layer) == before
