"""gc keeps what any layer pycor can find references, goes on past damage; recovery; reset on a full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid

import pytest

from helpers import PYCOR, run


def pycor(env, *args, check=True):
    return run(PYCOR + list(args), env=env, check=check)


def versions(env, base):
    return [r["version"] for r in json.loads(pycor(env, "base", "versions", base, "--format", "json").stdout)]


@pytest.fixture
def base(installed, env):
    name = f"g{uuid.uuid4().hex[:6]}"
    pycor(env, "base", "import", name, "--busybox")
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def v1_needed_only_by_pins(env, base):
    """Versions 2 (on 1) and 3 (squashed, one layer, current): nothing but a pin keeps 1."""
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
    pycor(env, "base", "squash", base)


# -- what gc can see -------------------------------------------------------------------


def test_gc_keeps_a_version_pinned_by_an_lxc_snapshot(base, make_container, env):
    c = make_container(base=base, extra=("--pin", "1"))
    try:
        c.lxc("lxc-snapshot")
        snap = os.path.join(c.lxcpath, c.name, "snaps", "snap0", "rootfs", ".pycor", "layer.json")
        assert json.load(open(snap))["pin"] == "1"  # lxc-snapshot of a dir container copies .pycor
        pycor(env, "unpin", c.name, "-P", c.lxcpath)
        v1_needed_only_by_pins(env, base)
        pycor(env, "base", "gc", "-P", c.lxcpath)
        assert versions(env, base) == ["1", "3"]
        c.lxc("lxc-snapshot", "-r", "snap0")  # back to the pinned layer: it starts on version 1
        c.start()
        assert c.sh("test -e /etc/version; echo $?").stdout == "1\n"  # runs, on version 1
        c.stop()
    finally:
        c.lxc("lxc-snapshot", "-d", "ALL", check=False)


def test_gc_keeps_a_version_pinned_by_a_copy_in_an_lxcpath_seen_before(base, make_container, env, session_dir, lxcpath):
    other = os.path.join(session_dir, f"other-{uuid.uuid4().hex[:6]}")
    os.makedirs(other)
    c = make_container(base=base, path=other, extra=("--pin", "1"))
    copy = f"{c.name}-copy"
    try:
        c.lxc("lxc-copy", "-N", copy)  # never started, never registered
        c.lxc("lxc-destroy")  # the only registered container there goes
        v1_needed_only_by_pins(env, base)
        pycor(env, "base", "gc", "-P", lxcpath)  # gc is told of another lxcpath
        assert versions(env, base) == ["1", "3"]
        run(["lxc-start", "-n", copy, "-P", other])
        run(["lxc-wait", "-n", copy, "-P", other, "-s", "RUNNING", "-t", "20"])
    finally:
        subprocess.run(["lxc-stop", "-n", copy, "-P", other, "-k"], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", copy, "-P", other], capture_output=True)


def test_gc_keeps_a_version_pinned_by_an_lxd_snapshot(lxd_launch, lxd_env, lxd_project):
    launch = lxd_launch  # LXD's alone
    name = f"g{uuid.uuid4().hex[:6]}"
    pycor(lxd_env, "base", "import", name, "--busybox")  # 'pycor lxd init' ran: this adds image pycor/NAME
    try:
        inst = launch(base=name, start=False)
        pycor(lxd_env, "pin", inst.name, "1")
        inst.lxc("snapshot", inst.name, "s0")
        snap = f"/var/lib/lxd/storage-pools/default/containers-snapshots/{lxd_project}_{inst.name}/s0/rootfs/.pycor/layer.json"
        assert json.load(open(snap))["pin"] == "1"
        pycor(lxd_env, "unpin", inst.name)
        v1_needed_only_by_pins(lxd_env, name)
        pycor(lxd_env, "base", "gc")
        assert versions(lxd_env, name) == ["1", "3"]
        inst.lxc("restore", inst.name, "s0")
        inst.lxc("start", inst.name)
        assert inst.sh("test -e /etc/version; echo $?").stdout == "1\n"  # runs, on version 1
    finally:
        listing = subprocess.run(["lxc", "list", "--project", lxd_project, "-c", "n", "--format", "csv"],
                                 capture_output=True, text=True).stdout.split()
        for n in listing:
            subprocess.run(["lxc", "delete", "-f", n, "--project", lxd_project], capture_output=True)
        subprocess.run(PYCOR + ["base", "rm", name], env=lxd_env, capture_output=True)


def test_held_version_is_kept_and_listed_until_unheld(base, env, lxcpath):
    v1_needed_only_by_pins(env, base)
    pycor(env, "base", "hold", base, "1")
    rows = json.loads(pycor(env, "base", "versions", base, "--format", "json").stdout)
    assert [(r["version"], r["held"]) for r in rows] == [("1", True), ("2", False), ("3", False)]
    pycor(env, "base", "gc", "-P", lxcpath)
    assert versions(env, base) == ["1", "3"]
    pycor(env, "base", "unhold", base, "1")
    pycor(env, "base", "gc", "-P", lxcpath)
    assert versions(env, base) == ["3"]
    proc = pycor(env, "base", "hold", base, "7", check=False)
    assert proc.returncode == 1 and "has no version 7" in proc.stderr
    proc = pycor(env, "base", "unhold", base, "3", check=False)
    assert proc.returncode == 1 and "is not held" in proc.stderr


# -- damage ---------------------------------------------------------------------------------


def test_gc_reports_a_damaged_base_and_collects_the_others(env, store, installed, make_container, lxcpath):
    broken, unreadable, good = (f"d{uuid.uuid4().hex[:6]}" for _ in range(3))
    try:
        for name in (broken, unreadable, good):
            pycor(env, "base", "import", name, "--busybox")
            pycor(env, "base", "update", name, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
        pycor(env, "base", "squash", good)  # good: 1 and 2 unused
        shutil.rmtree(os.path.join(store, "bases", broken, "versions", "1"))  # deleted by hand under current 2
        with open(os.path.join(store, "bases", unreadable, "versions", "2", "version.json"), "w") as f:
            f.write("{not json")
        c = make_container(base=good)
        with open(os.path.join(c.rootfs, ".pycor", "layer.json"), "w") as f:
            json.dump({"base": good, "pin": "9"}, f)  # a dangling pin
        os.makedirs(os.path.join(store, "bases", good, "versions", ".7.rm", "etc"))  # an earlier gc was killed here
        proc = pycor(env, "base", "gc", "-P", lxcpath, check=False)
        assert proc.returncode == 1
        assert f"base {broken}: version 1, needed by version 2, cannot be read" in proc.stderr
        assert f"base {unreadable}: version 2, needed by version 2, cannot be read" in proc.stderr
        assert f"warning: base {good}: version 9 is referenced (pinned or held) but does not exist" in proc.stderr
        assert sorted(os.listdir(os.path.join(store, "bases", good, "versions"))) == ["3"]
        assert sorted(os.listdir(os.path.join(store, "bases", broken, "versions"))) == ["2"]
        rows = json.loads(pycor(env, "base", "versions", broken, "--format", "json").stdout)
        assert [(r["version"], r["damaged"]) for r in rows] == [("2", "its parent version 1 is missing")]
        table = pycor(env, "base", "versions", unreadable).stdout
        assert "DAMAGED: version.json cannot be read" in table
        pycor(env, "base", "ls")  # lists every base, damaged ones too
        checks = json.loads(pycor(env, "doctor", "--format", "json", check=False).stdout)
        consistency = next(c for c in checks if c["name"] == "store consistency")
        assert not consistency["ok"] and f"base {broken}" in consistency["detail"]
    finally:
        for name in (broken, unreadable, good):
            subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)
            shutil.rmtree(os.path.join(store, "bases", name), ignore_errors=True)  # damaged: rm may refuse; later tests' gc must not see it


# -- recovery of leftovers ------------------------------------------------------------------------


def fill(path: str) -> None:
    """Use up every free inode and block of path's filesystem."""
    for i in range(1 << 20):
        try:
            os.mkdir(os.path.join(path, f"d{i}"))
        except OSError as e:
            assert e.errno == errno.ENOSPC
            break
    for i in range(1 << 20):
        try:
            open(os.path.join(path, f"f{i}"), "w").close()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            break


def test_reset_works_on_a_full_disk(make_container, env, session_dir):
    """A container fills its filesystem to ENOSPC; reset discards its changes without needing a free block."""
    image, mnt = os.path.join(session_dir, f"full-{uuid.uuid4().hex[:6]}.img"), os.path.join(session_dir, f"full-{uuid.uuid4().hex[:6]}")
    os.makedirs(mnt)
    with open(image, "wb") as f:
        f.truncate(24 << 20)
    run(["mkfs.ext4", "-q", "-m", "0", image])
    run(["mount", "-o", "loop", image, mnt])
    name = f"f{uuid.uuid4().hex[:8]}"
    try:
        c = make_container(path=mnt, name=name)
        c.start()
        assert c.sh("dd if=/dev/zero of=/fill bs=1M count=100", check=False).returncode != 0  # ENOSPC
        c.stop()
        fill(c.upper)  # what stopping freed (overlay's work files), as root writing into the upper would
        with pytest.raises(OSError) as full:
            os.mkdir(os.path.join(c.rootfs, ".pycor", "one-more"))
        assert full.value.errno == errno.ENOSPC
        pycor(env, "reset", c.name, "-P", mnt)
        assert os.listdir(c.upper) == []
        c.start()
        assert c.sh("test -e /fill", check=False).returncode != 0
    finally:
        subprocess.run(["lxc-stop", "-n", name, "-k", "-P", mnt], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", name, "-P", mnt], capture_output=True)
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        os.rmdir(mnt)
        os.unlink(image)
