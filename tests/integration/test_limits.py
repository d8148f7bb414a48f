"""Limits cover everything a container can write, and a container at its limit gets pycor's message with the fix.

What a container writes: its changes (upper), overlayfs's workdir, its
volumes, an ephemeral container's in-memory layer, the copies and clones
made of it. Each case runs real containers on a loop filesystem of its own,
so the host's disk use can be read exactly.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import Container, destroy
from test_hosting import MiB, create, fill, loop_fs, ls_row

from helpers import PYCOR, run, wait_for


def used_bytes(point: str) -> int:
    """Bytes in use on the filesystem at point, after everything written reached it."""
    run(["sync", "-f", point])
    st = os.statvfs(point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def entries(path: str) -> list[str]:
    """What a directory on the host holds ([] if it does not exist)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@pytest.fixture
def btrfs_path(session_dir: str, installed: None) -> Iterator[str]:
    with loop_fs(session_dir, ["mkfs.btrfs", "-q"]) as point:
        yield point


@pytest.fixture
def ext4_lxcpath(session_dir: str, installed: None) -> Iterator[str]:
    with loop_fs(session_dir, ["mkfs.ext4", "-q"], size="512M") as point:
        yield point


# -- ephemeral: volumes live in memory with the rest ---------------------------------------
@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_ephemeral_volume_is_capped_by_size_and_never_reaches_the_disk(ext4_lxcpath, env, busybox_base, unprivileged):
    path = ext4_lxcpath
    c = Container(f"e{uuid.uuid4().hex[:6]}", path, env)
    try:
        create(env, path, c.name, "--ephemeral", "--size", "16MiB", "--volume", "/data",
               *(["--unprivileged"] if unprivileged else []))
        c.start()
        before = used_bytes(path)
        out = fill(c, "/data/big", 40)
        assert "No space left on device" in out.stdout, out.stdout  # --size caps the volume too
        assert c.sh("ls -ln /data/big && stat -c %u /data").stdout.split()[-1] == "0"  # container root owns it
        c.sh("echo kept > /data/small; cat /data/small")
        grown = used_bytes(path) - before
        assert grown < 4 * MiB, f"the host's disk grew by {grown} bytes"
        assert entries(os.path.join(c.rootfs, ".pycor/volumes/0")) == [] and entries(c.upper) == []
        # upper, work and the volume share one in-memory limit: a full volume leaves no room in /
        assert "No space" in c.sh("echo x > /root/f 2>&1; true", check=False).stdout + \
            c.sh("dd if=/dev/zero of=/root/g bs=1M count=1 2>&1; true", check=False).stdout
        c.lxc("lxc-stop", "-k")
        wait_for(lambda: not os.path.exists(os.path.join(path, c.name)), what="LXC to destroy the ephemeral container")
    finally:
        destroy(c.name, path)


def test_clone_of_an_ephemeral_container_writes_to_memory_within_its_size(ext4_lxcpath, env, busybox_base):
    """lxc-copy -e of a container whose changes live in memory: the clone's own changes (LXC's overlay delta)
    live in memory too, capped by the original's --size, not in the clone's directory on disk."""
    path = ext4_lxcpath
    orig = Container(f"o{uuid.uuid4().hex[:6]}", path, env)
    clone = Container(f"x{uuid.uuid4().hex[:6]}", path, env)
    try:
        create(env, path, orig.name, "--ephemeral", "--size", "16MiB")
        orig.start()
        run(["lxc-copy", "-n", orig.name, "-N", clone.name, "-P", path, "-e", "--allowrunning"])
        clone.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")
        before = used_bytes(path)
        out = fill(clone, "/big", 40)
        assert "No space left on device" in out.stdout, out.stdout
        assert used_bytes(path) - before < 4 * MiB
        assert entries(os.path.join(path, clone.name, "overlay", "delta")) == []
        clone.lxc("lxc-stop", "-k")
        wait_for(lambda: not os.path.exists(os.path.join(path, clone.name)), what="LXC to destroy the clone")
    finally:
        destroy(clone.name, path)
        destroy(orig.name, path)


# -- volume paths are checked against the base at create -----------------------------------
@pytest.mark.parametrize("volume,where,what", [
    ("/var/run/x", "/var/run", "symlink"),  # busybox's /var/run -> /run
    ("/var/run", "/var/run", "symlink"),
    ("/etc/hostname/d", "/etc/hostname", "file"),
    ("/etc/hostname", "/etc/hostname", "file"),
])
@pytest.mark.parametrize("front", ["pycor", "lxc-create"])
def test_volume_through_a_symlink_or_file_of_the_base_is_refused_at_create(lxcpath, env, template, busybox_base,
                                                                            volume, where, what, front):
    name = f"v{uuid.uuid4().hex[:6]}"
    try:
        if front == "pycor":
            proc = create(env, lxcpath, name, "--volume", volume, check=False)
        else:
            proc = run(["lxc-create", "-n", name, "-P", lxcpath, "-t", template, "--", "--base", busybox_base,
                        "--volume", volume], env=env, check=False)
        assert proc.returncode != 0
        assert f"volume {volume}: {where} is a {what} in base busybox version 1" in proc.stderr, proc.stderr
        if what == "symlink":
            assert "/run" in proc.stderr.split("hint:")[-1]  # the path the link leads to
        assert not os.path.exists(os.path.join(lxcpath, name))
    finally:
        destroy(name, lxcpath)


def test_volume_under_a_directory_of_the_base_or_missing_from_it_is_accepted(make_container):
    c = make_container(extra=("--volume", "/var/log/app", "--volume", "/srv/new/dir"))
    c.start()
    assert c.sh("echo a > /var/log/app/f && echo b > /srv/new/dir/f && cat /var/log/app/f /srv/new/dir/f").stdout == "a\nb\n"
    assert open(os.path.join(c.rootfs, ".pycor/volumes/1/f")).read() == "b\n"


def test_a_base_version_that_puts_a_symlink_on_a_volume_path_is_blamed_not_the_container(lxcpath, env, store,
                                                                                         busybox_base, session_dir):
    base, tree = f"sl{uuid.uuid4().hex[:6]}", os.path.join(session_dir, f"tree-{uuid.uuid4().hex[:6]}")
    run(["cp", "-a", os.path.join(store, "bases", busybox_base, "versions", "1", "rootfs"), tree])
    run(PYCOR + ["base", "import", base, "--from-dir", tree], env=env)
    c = Container(f"b{uuid.uuid4().hex[:6]}", lxcpath, env)
    try:
        run(PYCOR + ["create", c.name, "--base", base, "-P", lxcpath, "--network", "none", "--volume", "/srv/v"], env=env)
        run(PYCOR + ["base", "update", base, "--", "sh", "-c", "mkdir -p /srv && ln -s /tmp /srv/v"], env=env)
        assert c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False).returncode != 0
        log = open(c.log).read()
        assert "cannot mount volume at /srv/v" in log and "its base, in the version it starts on, has a symlink" in log
        assert "pycor pin" in log and "container's own changes" not in log
        run(PYCOR + ["pin", c.name, "1", "-P", lxcpath], env=env)  # the fix it names
        c.start()
        assert c.sh("echo ok > /srv/v/f && cat /srv/v/f").stdout == "ok\n"
    finally:
        destroy(c.name, lxcpath)
        subprocess.run(PYCOR + ["base", "rm", base], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", tree])


# -- at the limit: pycor's message, and the fix works -------------------------------------------
@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_full_volume_stops_the_start_with_pycors_message_and_raising_the_limit_fixes_it(btrfs_path, env, busybox_base,
                                                                                         unprivileged):
    path = btrfs_path
    c = Container(f"f{uuid.uuid4().hex[:6]}", path, env)
    create(env, path, c.name, "--size", "20MiB", "--volume", "/data", *(["--unprivileged"] if unprivileged else []))
    c.start()
    c.sh("echo mine > /root/f")
    assert "quota exceeded" in fill(c, "/data/big", 40).stdout.lower()
    c.stop()
    # reset discards the changes, but the volume still fills the limit: said, with the fix, exit 1
    reset = run(PYCOR + ["reset", c.name, "-P", path], env=env, check=False)
    assert reset.returncode == 1, reset
    assert f"container {c.name}: changes discarded, but it still uses" in reset.stderr and "of its limit 20.0 MiB" in reset.stderr
    assert "/data" in reset.stderr and f"pycor set {c.name} size=" in reset.stderr
    assert not os.path.exists(os.path.join(c.upper, "root/f"))
    # ls and doctor say it is full
    assert ls_row(env, path, c.name)["quota"]["full"] is True
    assert "full" in next(line for line in run(PYCOR + ["ls", "-P", path], env=env).stdout.splitlines() if c.name in line)
    doctor = run(PYCOR + ["doctor", "-P", path], env=env, check=False).stdout
    assert f"{c.name} (uses" in doctor, doctor
    # the start stops in pycor's hook, before LXC pins the rootfs or overlayfs falls back to read-only
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    log = open(c.log).read()
    assert proc.returncode != 0 and c.state() == "STOPPED", log[-2000:]
    assert f"container {c.name} uses" in log and "/data" in log and f"pycor set {c.name} size=" in log, log[-2000:]
    assert "Failed to pin rootfs" not in log
    # the fix the message gives works at the limit
    run(PYCOR + ["set", c.name, "size=100MiB", "-P", path], env=env)
    assert ls_row(env, path, c.name)["quota"]["full"] is False
    c.start()
    assert c.sh("cat /data/big | wc -c").stdout.strip() != "0" and c.sh("echo rw > /root/g && cat /root/g").stdout == "rw\n"


def test_a_limit_that_leaves_no_room_to_start_is_refused_and_the_old_one_kept(btrfs_path, env, busybox_base):
    path = btrfs_path
    c = Container(f"s{uuid.uuid4().hex[:6]}", path, env)
    create(env, path, c.name, "--size", "50MiB", "--volume", "/data")
    c.start()
    c.sh("dd if=/dev/zero of=/data/f bs=1M count=10 2>&1; sync")
    c.stop()
    used = ls_row(env, path, c.name)["quota"]["used"]
    proc = run(PYCOR + ["set", c.name, f"size={used + 16384}", "-P", path], env=env, check=False)
    assert proc.returncode == 1 and "no room" in proc.stderr and "/data" in proc.stderr, proc.stderr
    assert ls_row(env, path, c.name)["quota"]["limit"] == 50 * MiB
    c.start()


def test_copy_up_of_a_large_base_file_counts_against_the_limit(btrfs_path, env, store, busybox_base, session_dir):
    """overlayfs copies a file up through the workdir: work lives in the limited subvolume with upper."""
    base, tree = f"big{uuid.uuid4().hex[:6]}", os.path.join(session_dir, f"tree-{uuid.uuid4().hex[:6]}")
    run(["cp", "-a", os.path.join(store, "bases", busybox_base, "versions", "1", "rootfs"), tree])
    run(["dd", "if=/dev/urandom", f"of={tree}/big", "bs=1M", "count=30"])
    run(PYCOR + ["base", "import", base, "--from-dir", tree], env=env)
    c = Container(f"w{uuid.uuid4().hex[:6]}", btrfs_path, env)
    try:
        run(PYCOR + ["create", c.name, "--base", base, "-P", btrfs_path, "--network", "none", "--size", "20MiB"], env=env)
        c.start()
        before = used_bytes(btrfs_path)
        out = c.sh("{ echo more >> /big; } 2>&1; sync", check=False).stdout
        assert "quota exceeded" in out.lower(), out
        assert used_bytes(btrfs_path) - before < 4 * MiB
        assert entries(c.upper) == [] and entries(os.path.join(c.rootfs, ".pycor/work/work")) == []
        assert c.sh("echo small > /small && cat /small").stdout == "small\n"  # what failed left nothing behind
    finally:
        destroy(c.name, btrfs_path)
        subprocess.run(PYCOR + ["base", "rm", base], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", tree])


# -- copies ------------------------------------------------------------------------------------
def test_lxc_copy_of_a_limited_container_keeps_its_limit(btrfs_path, env, busybox_base):
    path = btrfs_path
    c = Container(f"l{uuid.uuid4().hex[:6]}", path, env)
    copy = Container(f"k{uuid.uuid4().hex[:6]}", path, env)
    create(env, path, c.name, "--size", "20MiB", "--volume", "/data")
    run(["lxc-copy", "-n", c.name, "-N", copy.name, "-P", path])
    assert ls_row(env, path, copy.name)["quota"]["limit"] == 20 * MiB
    copy.start()
    assert "quota exceeded" in fill(copy, "/data/big", 40).stdout.lower()
    assert "quota exceeded" in fill(copy, "/root/big", 10).stdout.lower()
    copy.stop()
    snap = Container(f"p{uuid.uuid4().hex[:6]}", path, env)
    run(["lxc-copy", "-s", "-n", c.name, "-N", snap.name, "-P", path])  # a snapshot clone: the same
    assert ls_row(env, path, snap.name)["quota"]["limit"] == 20 * MiB
    subprocess.run(["lxc-destroy", "-n", snap.name, "-P", path], capture_output=True)
