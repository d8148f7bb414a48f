"""Base updates on the default bootable base (the README's workflow): apt reaches the network from
the builder, a fetch that fails publishes nothing, and no version shows another version's package
lists or apt's download cache."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import host_suite

from helpers import PYCOR, layer_of, run
from pycor_hooks import merge

pytestmark = pytest.mark.slow

LIST_KEEP = {"lock", "partial", "auxfiles"}  # what apt keeps in its lists folder besides the lists


@pytest.fixture(scope="module")
def boot_export(bootable_base: str, env: dict[str, str], session_dir: str) -> str:
    """Version 1 of the session's bootable base as an export file: each test imports its own copy (about 1 s)."""
    path = os.path.join(session_dir, f"{bootable_base}.1.export")
    run(PYCOR + ["base", "export", bootable_base, "--version", "1", "-o", path], env=env, timeout=600)
    return path


@pytest.fixture
def boot(boot_export: str, env: dict[str, str]) -> Iterator[str]:
    """A fresh copy of the bootable base, at version 1, removed afterwards."""
    name = f"u{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["base", "import", name, "--from-export", boot_export], env=env, timeout=600)
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def update(env: dict[str, str], base: str, script: str, *options: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(PYCOR + ["base", "update", *options, base, "--", "/bin/sh", "-c", script], env=env, check=check, timeout=900)


def versions(env: dict[str, str], base: str) -> list[str]:
    return [str(r["version"]) for r in json.loads(run(PYCOR + ["base", "versions", base, "--format", "json"], env=env).stdout)]


def files_of(layer: str) -> dict[str, str]:
    """Every entry below a layer that is not a directory: relative path -> 'whiteout' or 'file'."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(layer):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, layer)] = "whiteout" if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else "file"
    return found


def list_files(sh) -> list[str]:  # type: ignore[no-untyped-def]
    return [n for n in sh("ls -A /var/lib/apt/lists").stdout.split() if n not in LIST_KEEP]


def test_import_carries_no_deb_cache_and_no_package_lists(bootable_base, store):
    layer = layer_of(store, bootable_base)
    debs = [n for n in os.listdir(os.path.join(layer, "var/cache/apt/archives")) if n.endswith(".deb")]
    assert debs == []  # debootstrap's downloads (42 MiB): a cache, not the system
    assert set(os.listdir(os.path.join(layer, "var/lib/apt/lists"))) <= LIST_KEEP  # the import day's lists would go stale
    assert os.path.isdir(os.path.join(layer, "var/cache/apt/archives/partial"))  # apt's own folders stay


def test_update_installs_a_package_through_the_network_and_publishes_only_it(boot, env, store, make_container):
    update(env, boot, "apt-get update -q && apt-get install -y -q --no-install-recommends hello")
    assert versions(env, boot) == ["1", "2"]
    c = make_container(base=boot)
    c.start()
    assert c.sh("hello").stdout.strip() == "Hello, world!"
    own = {p.lstrip("/") for p in c.sh("dpkg -L hello").stdout.split()}
    layer = files_of(layer_of(store, boot, "2"))
    others = {p for p in layer if p not in own}
    # the package's files, and the databases that record it: no lists, no .deb, no logs, no caches
    assert others and all(p.startswith("var/lib/dpkg/") or p == "var/lib/apt/extended_states" for p in others), sorted(others)
    assert list_files(c.sh) == []  # the container runs apt-get update for its own lists


def test_apt_get_update_alone_publishes_nothing(boot, env):
    out = update(env, boot, "apt-get update -q").stdout
    assert "changed nothing" in out
    assert versions(env, boot) == ["1"]


def test_a_fetch_that_fails_publishes_nothing_and_names_what_it_could_not_reach(boot, env, store):
    # The command hides apt-get's status (';' then 'true'), as a script with set +e would.
    proc = update(env, boot, "echo 'deb http://pycor-unreachable.invalid/debian bookworm main' > /etc/apt/sources.list.d/bad.list; "
                             "apt-get update -q; true", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pycor-unreachable.invalid" in proc.stderr and "stays at version 1" in proc.stderr
    assert versions(env, boot) == ["1"]
    assert os.listdir(os.path.join(store, "staging")) == []


def test_no_container_sees_an_earlier_versions_package_lists(boot, env, store, make_container):
    update(env, boot, "apt-get update -q", "--keep-apt-lists")
    assert [n for n in os.listdir(os.path.join(layer_of(store, boot, "2"), "var/lib/apt/lists")) if n not in LIST_KEEP]
    update(env, boot, "echo v3 > /etc/pycor-v3")  # any later version, made without --keep-apt-lists
    on2, on3 = make_container(base=boot, extra=("--pin", "2")), make_container(base=boot)
    on2.start()
    on3.start()
    assert list_files(on2.sh)  # the version that kept its lists shows them
    assert list_files(on3.sh) == []  # the next one hides them: they are an earlier version's
    assert on3.sh("cat /etc/pycor-v3").stdout == "v3\n"


def test_release_upgrade_ends_with_the_new_releases_conffiles_and_pycors_ranges(boot, env, store, make_container):
    """bookworm to trixie in one update (about 40 s here, most of it the download). Builders bind the
    base's id ranges over login.defs and adduser.conf, so dpkg keeps them as modified and writes the
    new release's as .dpkg-dist: the version must carry the new files, with the containers' ranges."""
    if host_suite() != "bookworm":
        pytest.skip("this upgrade goes from bookworm, the suite of this host's bases, to trixie")
    update(env, boot, "sed -i 's/bookworm/trixie/g' /etc/apt/sources.list && apt-get update -q >/dev/null && "
                      "DEBIAN_FRONTEND=noninteractive apt-get -y -q full-upgrade >/dev/null && "
                      "cp /etc/login.defs.dpkg-dist /root/login.defs.shipped && cp /etc/adduser.conf.dpkg-dist /root/adduser.conf.shipped")
    layer = layer_of(store, boot, "2")
    for rel, rewrite in (("etc/login.defs", merge.login_defs_for), ("etc/adduser.conf", merge.adduser_conf_for)):
        shipped = open(os.path.join(layer, "root", os.path.basename(rel) + ".shipped"), "rb").read()
        assert open(os.path.join(layer, rel), "rb").read() == rewrite("container", shipped), rel
        assert not os.path.lexists(os.path.join(layer, rel + ".dpkg-dist"))
    c = make_container(base=boot)
    c.start()
    assert c.sh("cat /etc/debian_version").stdout.startswith("13")
    assert "UID_MIN\t\t\t 30000" in c.sh("cat /etc/login.defs").stdout  # the containers' range
    assert c.sh("ls /etc/login.defs.dpkg-dist /etc/adduser.conf.dpkg-dist", check=False).returncode != 0
