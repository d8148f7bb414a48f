"""Beyond one host: base digests, export and import, containers that move between LXD daemons as their diff.

The second host is a second LXD daemon on this machine with its own pycor
store (see second_lxd.py); it is always shut down and its directory removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from second_lxd import LxdCluster, SecondLxd, mounts_under

from helpers import PYCOR, layer_of, run, view_suffix


def version_json(store: str, base: str, version: str = "1") -> dict:
    with open(os.path.join(store, "bases", base, "versions", version, "version.json")) as f:
        return json.load(f)


def digest_of(store: str, base: str, version: str = "1") -> str:
    return str(version_json(store, base, version)["digest"])


def pycor(env: dict[str, str], store: str, *args: str, check: bool = True, stdin_text: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return run(PYCOR + ["--store", store, *args], env=env, check=check, stdin_text=stdin_text)


def publish_tricky_version(store: str, base: str) -> str:
    """Publish a version holding what a plain copy loses: a whiteout, an opaque dir, xattrs, an ACL,
    setuid, a FIFO, a device node, a hard link, an odd file name, a foreign owner."""
    from pycor_hooks.store import Store

    s = Store(store)
    staging = s.new_staging("test")
    root = os.path.join(staging, "rootfs")
    os.mkdir(root, 0o755)
    os.mknod(os.path.join(root, "README"), 0o600 | 0o020000, os.makedev(0, 0))  # whiteout of a lower file
    os.makedirs(os.path.join(root, "etc", "opaque"))
    os.setxattr(os.path.join(root, "etc", "opaque"), "trusted.overlay.opaque", b"y")
    with open(os.path.join(root, "etc", "data"), "w") as f:
        f.write("version two\n")
    os.setxattr(os.path.join(root, "etc", "data"), "user.pycor", b"\x00\x01value")
    subprocess.run(["setfacl", "-m", "u:1234:r", os.path.join(root, "etc", "data")], check=True)
    os.link(os.path.join(root, "etc", "data"), os.path.join(root, "etc", "data.link"))
    with open(os.path.join(root, "etc", "setuid"), "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(os.path.join(root, "etc", "setuid"), 0o4755)
    os.chown(os.path.join(root, "etc", "setuid"), 1000, 1001)
    os.mkfifo(os.path.join(root, "etc", "fifo"))
    os.mknod(os.path.join(root, "etc", "null"), 0o666 | 0o020000, os.makedev(1, 3))
    with open(os.path.join(root, "etc", "name with space\tand tab"), "w") as f:
        f.write("x")
    os.symlink("../etc/data", os.path.join(root, "etc", "link"))
    v = s.publish_version(base, staging, s.current(base), "test", 1)
    return v.version


@pytest.fixture
def stores(installed: None, env: dict[str, str], session_dir: str) -> Iterator[tuple[str, str]]:
    """Two empty stores, as two hosts have; base 'bb' (busybox) in the first."""
    a, b = (os.path.join(session_dir, f"host-{uuid.uuid4().hex[:6]}") for _ in range(2))
    pycor(env, a, "base", "import", "bb", "--busybox")
    yield a, b
    for s in (a, b):
        shutil.rmtree(s, ignore_errors=True)


def export_to(env: dict[str, str], store: str, path: str, *args: str) -> None:
    pycor(env, store, "base", "export", "bb", "-o", path, *args)


# -- pure logic ------------------------------------------------------------------------------


# -- digests, export and import (stores only) --------------------------------------------------


def test_export_import_reproduces_numbers_digests_and_every_attribute(stores, env, session_dir):
    a, b = stores
    two = publish_tricky_version(a, "bb")
    assert digest_of(a, "bb", two) != digest_of(a, "bb", "1")
    full = os.path.join(session_dir, "full.export")
    export_to(env, a, full, "--version", "1")
    pycor(env, b, "base", "import", "bb", "--from-export", full)
    assert digest_of(b, "bb") == digest_of(a, "bb")
    # --since: only what b lacks, through a pipe
    exp = subprocess.run(PYCOR + ["--store", a, "base", "export", "bb", "--since", "1", "-o", "-"], env=env,
                         capture_output=True, check=True)
    assert len(exp.stdout) < os.path.getsize(full) / 4  # the busybox layer is not in it
    imp = subprocess.run(PYCOR + ["--store", b, "base", "import", "bb", "--from-export", "-"], env=env,
                         input=exp.stdout, capture_output=True)
    assert imp.returncode == 0, imp.stderr
    assert b"version 2" in imp.stderr and b"checked" in imp.stderr  # progress
    assert digest_of(b, "bb", two) == digest_of(a, "bb", two)
    assert os.readlink(os.path.join(b, "bases", "bb", "current")) == f"versions/{two}"
    layer = layer_of(b, "bb", two)
    assert os.getxattr(os.path.join(layer, "etc", "opaque"), "trusted.overlay.opaque") == b"y"
    assert os.stat(os.path.join(layer, "README")).st_rdev == 0
    assert os.stat(os.path.join(layer, "etc", "data")).st_ino == os.stat(os.path.join(layer, "etc", "data.link")).st_ino
    assert "user:1234:r--" in run(["getfacl", "-p", os.path.join(layer, "etc", "data")]).stdout
    for s in (a, b):
        assert "intact" in pycor(env, s, "base", "verify", "bb").stdout
    listed = json.loads(pycor(env, b, "base", "versions", "bb", "--format", "json").stdout)
    assert [r["digest"] for r in listed] == [digest_of(a, "bb", "1"), digest_of(a, "bb", two)]
    # the same export again: every version is already here with its digest
    again = pycor(env, b, "base", "import", "bb", "--from-export", full)
    assert "already here" in again.stderr
    assert sorted(os.listdir(os.path.join(b, "bases", "bb", "versions"))) == ["1", two]


def test_since_a_version_the_target_lacks_is_refused_and_nothing_written(stores, env, session_dir):
    a, b = stores
    publish_tricky_version(a, "bb")
    part = os.path.join(session_dir, "since.export")
    export_to(env, a, part, "--since", "1")
    proc = pycor(env, b, "base", "import", "bb", "--from-export", part, check=False)
    assert proc.returncode == 1
    assert "without --since" in proc.stderr
    assert not os.path.exists(os.path.join(b, "bases", "bb"))


def test_import_refuses_a_version_number_that_exists_with_another_digest(stores, env, session_dir):
    a, b = stores
    tampered = os.path.join(session_dir, f"tampered-{uuid.uuid4().hex[:6]}")
    shutil.copytree(layer_of(a, "bb"), tampered, symlinks=True)
    with open(os.path.join(tampered, "etc", "motd"), "w") as f:
        f.write("another tree\n")
    pycor(env, b, "base", "import", "bb", "--from-dir", tampered)
    shutil.rmtree(tampered)
    before = version_json(b, "bb")
    full = os.path.join(session_dir, "conflict.export")
    export_to(env, a, full)
    proc = pycor(env, b, "base", "import", "bb", "--from-export", full, check=False)
    assert proc.returncode == 1
    assert "version 1 exists here with another digest" in proc.stderr
    assert version_json(b, "bb") == before
    assert os.listdir(os.path.join(b, "staging")) == []


@pytest.mark.parametrize("damage", ["content", "truncated"])
def test_damaged_export_fails_and_leaves_nothing(stores, env, session_dir, damage):
    a, b = stores
    full = os.path.join(session_dir, f"damaged-{damage}.export")
    export_to(env, a, full)
    with open(full, "rb") as f:
        data = f.read()
    if damage == "content":
        at = data.index(b"busybox base: ") if b"busybox base: " in data else data.index(b"BusyBox v")
        data = data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]  # one byte of one file's content
    else:
        data = data[: len(data) // 2]
    with open(full, "wb") as f:
        f.write(data)
    proc = pycor(env, b, "base", "import", "bb", "--from-export", full, check=False)
    assert proc.returncode == 1
    assert "export it again" in proc.stderr
    assert not os.path.exists(os.path.join(b, "bases", "bb"))
    assert os.listdir(os.path.join(b, "staging")) == []


def test_import_killed_before_publishing_leaves_no_base_and_runs_again(stores, env, session_dir):
    a, b = stores
    full = os.path.join(session_dir, "killed.export")
    export_to(env, a, full)
    killed = run(PYCOR + ["--store", b, "base", "import", "bb", "--from-export", full], env=dict(env, PYCOR_FAULT="import-staged"),
                 check=False)
    assert killed.returncode == -9
    assert not os.path.exists(os.path.join(b, "bases", "bb"))
    pycor(env, b, "base", "import", "bb", "--from-export", full)
    assert digest_of(b, "bb") == digest_of(a, "bb")
    pycor(env, b, "base", "gc")  # the killed import's staging goes with any other stale one
    assert os.listdir(os.path.join(b, "staging")) == []


def test_verify_names_a_file_changed_in_place(stores, env):
    a, _ = stores
    target = os.path.join(layer_of(a, "bb"), "bin", "busybox")
    with open(target, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = pycor(env, a, "base", "verify", "bb", "1", check=False)
    assert proc.returncode == 1
    assert "/bin/busybox: content differs" in proc.stdout
    assert "does not match its recorded digest" in proc.stderr


def test_version_published_before_digests_gets_one_on_first_need(stores, env):
    a, _ = stores
    path = os.path.join(a, "bases", "bb", "versions", "1")
    meta = version_json(a, "bb")
    digest = meta.pop("digest")
    with open(os.path.join(path, "version.json"), "w") as f:
        json.dump(meta, f)
    os.unlink(os.path.join(path, "manifest"))
    assert digest in pycor(env, a, "base", "verify", "bb").stdout
    assert digest_of(a, "bb") == digest
    assert os.path.exists(os.path.join(path, "manifest"))


def test_lxc_start_on_a_store_whose_version_is_another_tree_is_refused(stores, env, make_container, session_dir):
    """A container moved to a host whose base of the same name and number differs does not start there."""
    a, b = stores
    c = make_container(base="busybox")
    with open(os.path.join(c.rootfs, ".pycor", "layer.json")) as f:
        meta = json.load(f)
    assert meta["digest"] == digest_of(env["PYCOR_STORE"], "busybox")
    tampered = os.path.join(session_dir, f"tampered-{uuid.uuid4().hex[:6]}")
    shutil.copytree(layer_of(env["PYCOR_STORE"], "busybox"), tampered, symlinks=True)
    with open(os.path.join(tampered, "etc", "motd"), "w") as f:
        f.write("another tree\n")
    pycor(env, b, "base", "import", "busybox", "--from-dir", tampered)
    shutil.rmtree(tampered)
    with open(c.config) as f:
        config = f.read()
    with open(c.config, "w") as f:  # the container, moved to host b
        f.write(config.replace(f"--store {env['PYCOR_STORE']}", f"--store {b}"))
    proc = c.lxc("lxc-start", "-o", os.path.join(session_dir, f"{c.name}.log"), "-l", "DEBUG", check=False)
    log = open(os.path.join(session_dir, f"{c.name}.log")).read()
    assert proc.returncode != 0 or c.state() != "RUNNING"
    assert "base busybox version 1" in log and "another tree under the same number" in log
    assert "pycor base import busybox --from-export" in log
    assert not any(c.rootfs in line for line in open("/proc/self/mounts"))


# -- two LXD daemons ----------------------------------------------------------------------------


@dataclass
class Host2:
    """The second LXD daemon (remote 'h2' in its client config) and its pycor store."""

    daemon: SecondLxd
    store: str
    env: dict[str, str]  # pycor aimed at daemon 2 and store 2

    def lxc(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(["lxc", *args], env=self.daemon.client_env, check=check, timeout=timeout)

    def rootfs(self, name: str) -> str:
        return self.daemon.rootfs(name)


@pytest.fixture(scope="module")
def host2(lxd_env: dict[str, str], busybox_base: str, session_dir: str) -> Iterator[Host2]:
    daemon = SecondLxd()
    store2 = os.path.join(session_dir, f"store2-{uuid.uuid4().hex[:6]}")
    try:
        daemon.start()
        env2 = daemon.pycor_env(lxd_env, store2)
        exp = subprocess.run(PYCOR + ["base", "export", busybox_base, "-o", "-"], env=lxd_env, capture_output=True, check=True)
        imp = subprocess.run(PYCOR + ["base", "import", busybox_base, "--from-export", "-"], env=env2, input=exp.stdout,
                             capture_output=True)
        assert imp.returncode == 0, imp.stderr
        run(PYCOR + ["lxd", "init"], env=env2)
        assert f"--store {store2}" in run(["lxc", "profile", "show", "overlay"], env=daemon.daemon_env).stdout
        yield Host2(daemon, store2, env2)
    finally:
        daemon.stop()
        shutil.rmtree(store2, ignore_errors=True)
    assert not os.path.exists(daemon.lxd_dir)


def du_bytes(path: str) -> int:
    return int(run(["du", "-sb", path]).stdout.split()[0])


def test_lxc_copy_move_and_refresh_carry_only_the_diff(host2, lxd_launch, lxd_project, env, busybox_base, store):
    launch = lxd_launch  # LXD's alone
    src = launch()
    src.sh("echo moved-with-me > /root/mine && rm /etc/motd 2>/dev/null; true")
    src.lxc("stop", src.name)
    diff_size = du_bytes(src.rootfs)
    base_size = du_bytes(layer_of(store, busybox_base))
    meta = json.load(open(os.path.join(src.rootfs, ".pycor", "layer.json")))
    assert meta["digest"] == digest_of(store, busybox_base) and meta["based_on"] == "1"

    copy = f"c{uuid.uuid4().hex[:6]}"
    host2.lxc("copy", f"local:{src.name}", f"h2:{copy}", "--project", lxd_project, "--target-project", "default",
              "--mode", "relay")
    copied = host2.rootfs(copy)
    assert du_bytes(copied) < base_size / 10, (du_bytes(copied), base_size)  # only the diff travelled
    assert diff_size < base_size / 10
    host2.lxc("start", f"h2:{copy}")
    try:
        out = host2.lxc("exec", f"h2:{copy}", "--", "/bin/sh", "-c", "cat /root/mine; ls /bin/busybox; test -e /etc/motd || echo gone").stdout
        assert "moved-with-me" in out and "/bin/busybox" in out and "gone" in out
        # the overlay is mounted on daemon 2's rootfs, from store 2's base
        state = [f for f in os.listdir("/run/pycor/containers") if f.startswith(copy + "-")]
        assert state
        with open(os.path.join("/run/pycor/containers", state[0])) as f:
            assert json.load(f)["lowerdirs"][0].endswith(view_suffix(host2.store, busybox_base))
    finally:
        host2.lxc("stop", "-f", f"h2:{copy}")

    # --refresh: a later change on the source reaches the copy, again as the diff only
    src.lxc("start", src.name)
    src.sh("echo second > /root/later")
    src.lxc("stop", src.name)
    host2.lxc("copy", f"local:{src.name}", f"h2:{copy}", "--refresh", "--project", lxd_project,
              "--target-project", "default", "--mode", "relay")
    host2.lxc("start", f"h2:{copy}")
    try:
        assert "second" in host2.lxc("exec", f"h2:{copy}", "--", "cat", "/root/later").stdout
    finally:
        host2.lxc("stop", "-f", f"h2:{copy}")
        host2.lxc("delete", f"h2:{copy}")

    # move: gone here, runs there with its changes
    moved = f"m{uuid.uuid4().hex[:6]}"
    host2.lxc("move", f"local:{src.name}", f"h2:{moved}", "--project", lxd_project, "--target-project", "default",
              "--mode", "relay")
    assert src.lxc("info", src.name, check=False).returncode != 0
    host2.lxc("start", f"h2:{moved}")
    try:
        assert "moved-with-me" in host2.lxc("exec", f"h2:{moved}", "--", "cat", "/root/mine").stdout
    finally:
        host2.lxc("stop", "-f", f"h2:{moved}")
        host2.lxc("delete", f"h2:{moved}")


def test_start_on_a_daemon_whose_base_is_another_tree_is_refused(host2, lxd_launch, lxd_env, lxd_project, session_dir, store):
    launch = lxd_launch  # LXD's alone
    # base 'tb' on host 1, and on host 2 a separately imported 'tb' with one file changed
    name = f"tb{uuid.uuid4().hex[:4]}"
    run(PYCOR + ["base", "import", name, "--busybox"], env=lxd_env)
    run(PYCOR + ["lxd", "init"], env=lxd_env)
    tampered = os.path.join(session_dir, f"tampered-{uuid.uuid4().hex[:6]}")
    shutil.copytree(layer_of(store, name), tampered, symlinks=True)
    with open(os.path.join(tampered, "etc", "motd"), "w") as f:
        f.write("another tree\n")
    run(PYCOR + ["base", "import", name, "--from-dir", tampered], env=host2.env)
    shutil.rmtree(tampered)
    run(PYCOR + ["lxd", "init"], env=host2.env)
    src = launch(base=name, start=False)
    src.lxc("start", src.name)
    src.lxc("stop", src.name)
    target = f"t{uuid.uuid4().hex[:6]}"
    host2.lxc("copy", f"local:{src.name}", f"h2:{target}", "--project", lxd_project, "--target-project", "default",
              "--mode", "relay")
    try:
        proc = host2.lxc("start", f"h2:{target}", check=False)
        assert proc.returncode != 0
        log = host2.lxc("info", f"h2:{target}", "--show-log").stdout
        assert f"base {name} version 1" in log and "another tree under the same number" in log, log
        assert f"pycor base import {name} --from-export" in log
        assert not mounts_under(host2.rootfs(target))
    finally:
        host2.lxc("delete", "-f", f"h2:{target}")


def test_published_layer_image_launches_on_another_host_with_the_base(host2, lxd_launch, lxd_env, session_dir):
    src = lxd_launch()
    src.sh("echo golden > /root/golden && rm /etc/hostname")
    src.lxc("stop", "--force", src.name)
    alias = f"golden-{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["publish", src.name, "--alias", alias], env=lxd_env)
    exported = os.path.join(session_dir, alias)
    src.lxc("image", "export", alias, exported)  # LXD 5.0's 'image copy' finds no image of a project's
    made = [os.path.join(session_dir, f) for f in os.listdir(session_dir) if f.startswith(alias)]
    host2.lxc("image", "import", *made, "h2:", "--alias", alias)
    target = f"g{uuid.uuid4().hex[:6]}"
    try:
        host2.lxc("launch", f"h2:{alias}", f"h2:{target}", "--profile", "default", "--profile", "overlay")
        out = host2.lxc("exec", f"h2:{target}", "--", "/bin/sh", "-c", "cat /root/golden; test -e /etc/hostname || echo gone")
        assert out.stdout.split() == ["golden", "gone"]
        assert sorted(os.listdir(host2.rootfs(target))) == [".pycor"]  # only the changes travelled
    finally:
        host2.lxc("delete", "-f", f"h2:{target}", check=False)
        host2.lxc("image", "delete", f"h2:{alias}", check=False)


def test_start_on_a_daemon_without_the_base_names_base_version_and_fix(host2, lxd_launch, lxd_env, lxd_project):
    launch = lxd_launch  # LXD's alone
    name = f"nb{uuid.uuid4().hex[:4]}"
    run(PYCOR + ["base", "import", name, "--busybox"], env=lxd_env)
    run(PYCOR + ["lxd", "init"], env=lxd_env)
    src = launch(base=name)
    src.lxc("stop", src.name)
    target = f"n{uuid.uuid4().hex[:6]}"
    host2.lxc("copy", f"local:{src.name}", f"h2:{target}", "--project", lxd_project, "--target-project", "default",
              "--mode", "relay")
    try:
        assert host2.lxc("start", f"h2:{target}", check=False).returncode != 0
        log = host2.lxc("info", f"h2:{target}", "--show-log").stdout
        assert f"runs on base '{name}', which is not in store {host2.store} (its changes were made on version 1)" in log, log
        assert f"pycor base import {name} --from-export" in log
        assert not mounts_under(host2.rootfs(target))
    finally:
        host2.lxc("delete", "-f", f"h2:{target}")


def test_cluster_members_run_a_pycor_container_placed_with_target_and_moved_between_them(lxd_env, busybox_base):
    """A two-member LXD cluster (one machine, so both members share the store): profile and image cluster-wide."""
    cluster = LxdCluster()
    try:
        cluster.start()
        env = dict(lxd_env, **cluster.env)
        env.pop("PYCOR_LXD_PROJECT", None)
        run(PYCOR + ["lxd", "init"], env=env)
        run(["lxc", "launch", f"pycor/{busybox_base}", "k1", "--target", "m2", "--profile", "default", "--profile", "overlay"],
            env=env, timeout=180)
        assert run(["lxc", "list", "k1", "-c", "L", "--format", "csv"], env=env).stdout.strip() == "m2"
        run(["lxc", "exec", "k1", "--", "/bin/sh", "-c", "echo placed-on-m2 > /root/mine"], env=env)
        run(["lxc", "stop", "k1"], env=env)
        run(["lxc", "move", "k1", "--target", "m1"], env=env, timeout=180)
        run(["lxc", "start", "k1"], env=env)
        assert run(["lxc", "list", "k1", "-c", "L", "--format", "csv"], env=env).stdout.strip() == "m1"
        assert "placed-on-m2" in run(["lxc", "exec", "k1", "--", "cat", "/root/mine"], env=env).stdout
        run(["lxc", "delete", "-f", "k1"], env=env)
    finally:
        cluster.stop()
    assert not any(os.path.exists(m.lxd_dir) for m in cluster.members)
