"""Realism: containers on a debootstrap Debian minbase base."""

from __future__ import annotations

import os

import pytest

from helpers import PYCOR, layer_of, run, tree_checksum

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


def test_update_installs_a_package_followers_get_it_by_rollout_pinned_do_not(make_container, debian_base, env, store):
    first = layer_of(store, debian_base)
    before = tree_checksum(first)
    follower = make_container(base=debian_base)
    pinned = make_container(base=debian_base, extra=("--pin", "1"))
    follower.start()
    pinned.start()
    run(PYCOR + ["base", "update", debian_base, "--", "/bin/sh", "-c",
                 "apt-get update -q && apt-get install -y -q --no-install-recommends hello && apt-get clean"],
        env=env, timeout=900)
    assert follower.sh("command -v hello", check=False).returncode != 0  # not before its restart
    run(PYCOR + ["rollout", debian_base, "--check", "hello", "-P", follower.lxcpath], env=env)
    assert follower.sh("hello").stdout.strip() == "Hello, world!"
    assert pinned.sh("command -v hello", check=False).returncode != 0
    assert tree_checksum(first) == before  # the new version is a layer above; version 1 is untouched
