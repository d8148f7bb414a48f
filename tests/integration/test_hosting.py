"""Hosting: disk quotas, volumes, ephemeral containers, proven on real containers.

Quotas run on a loop btrfs each test makes (qgroups work on this kernel), and
on a loop ext4 with project quotas where the kernel has them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import Container, destroy

from helpers import PYCOR, run, wait_for
from pycor_hooks import quota

MiB = 1 << 20


# -- fixtures ---------------------------------------------------------------------------
@contextlib.contextmanager
def loop_fs(session_dir: str, mkfs: list[str], mount_opts: str | None = None, size: str = "1G") -> Iterator[str]:
    """A loop filesystem mounted for one test; unmounted and detached even on failure."""
    tag = uuid.uuid4().hex[:6]
    image, point = os.path.join(session_dir, f"fs-{tag}.img"), os.path.join(session_dir, f"fs-{tag}")
    run(["truncate", "-s", size, image])
    dev = run(["losetup", "-f", "--show", image]).stdout.strip()
    mounted = False
    try:
        run([*mkfs, dev])
        os.makedirs(point)
        run(["mount", *(["-o", mount_opts] if mount_opts else []), dev, point])
        mounted = True
        os.chmod(point, 0o755)
        yield point
    finally:
        if mounted:
            for name in os.listdir(point):
                if os.path.exists(os.path.join(point, name, "config")):
                    destroy(name, point)
            for _ in range(50):  # a container's last processes may still be leaving the mount
                if subprocess.run(["umount", point], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["umount", "-l", point], capture_output=True)  # the loop device detaches when it is free
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        for p in (image,):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        with contextlib.suppress(OSError):
            os.rmdir(point)


@pytest.fixture
def btrfs_lxcpath(session_dir: str, installed: None) -> Iterator[str]:
    with loop_fs(session_dir, ["mkfs.btrfs", "-q"]) as point:
        yield point


def create(env, lxcpath: str, name: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(PYCOR + ["create", name, "--base", "busybox", "-P", lxcpath, "--network", "none", *extra], env=env, check=check)


def ls_row(env, lxcpath: str, name: str) -> dict:
    rows = json.loads(run(PYCOR + ["ls", "-P", lxcpath, "--format", "json"], env=env).stdout)
    return next(r for r in rows if r["name"] == name)


def fill(c: Container, path: str, mib: int) -> subprocess.CompletedProcess[str]:
    return c.sh(f"dd if=/dev/zero of={path} bs=1M count={mib} 2>&1; sync", check=False)


# -- quotas -----------------------------------------------------------------------------
def test_size_limit_holds_privileged_and_unprivileged_and_neighbour_keeps_writing(btrfs_lxcpath, env, busybox_base):
    path = btrfs_lxcpath
    limited = [Container(f"q{uuid.uuid4().hex[:6]}", path, env) for _ in range(2)]
    neighbour = Container(f"n{uuid.uuid4().hex[:6]}", path, env)
    create(env, path, limited[0].name, "--size", "20MiB")
    create(env, path, limited[1].name, "--size", "20MiB", "--unprivileged")
    create(env, path, neighbour.name)
    assert quota.is_subvolume(limited[0].rootfs)
    for c in (*limited, neighbour):
        c.start()
    for c in limited:
        # copy-up of a base file works in a limited container (work and upper share the subvolume)
        c.sh("echo copied-up >> /etc/passwd")
        assert open(os.path.join(c.upper, "etc/passwd")).read().endswith("copied-up\n")
        out = fill(c, "/big", 40)
        assert "quota exceeded" in out.stdout.lower() or "no space" in out.stdout.lower(), out.stdout
        assert os.path.getsize(os.path.join(c.upper, "big")) <= 21 * MiB
    out = fill(neighbour, "/big", 40)
    assert "exceeded" not in out.stdout and os.path.getsize(os.path.join(neighbour.upper, "big")) == 40 * MiB
    row = ls_row(env, path, limited[0].name)
    assert row["quota"]["limit"] == 20 * MiB and row["quota"]["used"] >= 19 * MiB
    table = run(PYCOR + ["ls", "-P", path], env=env).stdout
    assert "USED/LIMIT" in table and "/20.0 MiB" in table
    # reset still works on a container at its limit, and frees its space
    limited[0].stop()
    run(PYCOR + ["reset", limited[0].name, "-P", path], env=env)
    assert ls_row(env, path, limited[0].name)["quota"]["used"] < MiB
    limited[0].start()
    assert "exceeded" not in fill(limited[0], "/again", 10).stdout


def test_set_size_changes_and_removes_the_limit(btrfs_lxcpath, env, busybox_base):
    c = Container(f"s{uuid.uuid4().hex[:6]}", btrfs_lxcpath, env)
    create(env, btrfs_lxcpath, c.name, "--size", "10MiB")
    run(PYCOR + ["set", c.name, "size=30MiB", "-P", btrfs_lxcpath], env=env)
    assert ls_row(env, btrfs_lxcpath, c.name)["quota"]["limit"] == 30 * MiB
    c.start()
    assert "exceeded" not in fill(c, "/f", 20).stdout
    run(PYCOR + ["set", c.name, "size=", "-P", btrfs_lxcpath], env=env)
    assert ls_row(env, btrfs_lxcpath, c.name)["quota"]["limit"] is None
    assert "exceeded" not in fill(c, "/g", 40).stdout
    assert "ok  disk quotas" in run(PYCOR + ["doctor", "-P", btrfs_lxcpath], env=env, check=False).stdout
    # lxc-copy snapshots the subvolume: the copy runs (a btrfs: rootfs) and gets its own limit with pycor set
    c.stop()
    copy = Container(f"s{uuid.uuid4().hex[:6]}", btrfs_lxcpath, env)
    run(["lxc-copy", "-n", c.name, "-N", copy.name, "-P", btrfs_lxcpath])
    # the snapshot refers to its original's 60 MiB: a lower limit is refused with what it uses
    low = run(PYCOR + ["set", copy.name, "size=30MiB", "-P", btrfs_lxcpath], env=env, check=False)
    assert low.returncode == 1 and "uses" in low.stderr and ls_row(env, btrfs_lxcpath, copy.name)["quota"]["limit"] is None
    run(PYCOR + ["set", copy.name, "size=100MiB", "-P", btrfs_lxcpath], env=env)
    copy.start()
    assert copy.sh("ls /f").returncode == 0
    assert "exceeded" in fill(copy, "/h", 60).stdout.lower()


def test_size_is_refused_where_there_is_no_quota(lxcpath, env, busybox_base):
    if quota.backend(lxcpath)[0] is not None:
        pytest.skip(f"{lxcpath} has quotas here")
    name = f"r{uuid.uuid4().hex[:6]}"
    proc = create(env, lxcpath, name, "--size", "1GiB", check=False)
    assert proc.returncode == 1
    assert "--size needs a quota" in proc.stderr and "hint:" in proc.stderr
    assert not os.path.exists(os.path.join(lxcpath, name))
    doctor = run(PYCOR + ["doctor", "-P", lxcpath], env=env, check=False).stdout
    assert "disk quotas" in doctor and "MISS disk quotas" in doctor


def test_project_quota_on_ext4_limits_a_container(session_dir, env, busybox_base):
    with contextlib.ExitStack() as stack:
        try:
            point = stack.enter_context(loop_fs(session_dir, ["mkfs.ext4", "-q", "-O", "quota,project"], "prjquota", "256M"))
        except AssertionError as e:
            if "'mount'" not in str(e):
                raise
            pytest.skip("this kernel cannot mount ext4 with prjquota (kernel option CONFIG_QFMT_V2 is not set; "
                        f"mount said: {next((x for x in str(e).splitlines() if 'mount:' in x), '?').strip()}): "
                        "the ext4/XFS project-quota path is unproven here")
        assert quota.backend(point)[0] == "project"
        c = Container(f"p{uuid.uuid4().hex[:6]}", point, env)
        create(env, point, c.name, "--size", "20MiB")
        c.start()
        c.sh("echo copied-up >> /etc/passwd")  # copy-up: upper and work carry one project id
        out = fill(c, "/big", 40)
        assert "exceeded" in out.stdout.lower() or "no space" in out.stdout.lower()
        assert ls_row(env, point, c.name)["quota"]["limit"] == 20 * MiB
        c.stop()
        run(PYCOR + ["reset", c.name, "-P", point], env=env)


def test_project_tagging_ioctls_on_a_real_layer(make_container):
    """The half of the project-quota path this kernel can run: FS_IOC_FSGETXATTR/FSSETXATTR with PROJINHERIT.

    ext4 without the project feature accepts only project id 0, so the id is 0
    here; lsattr (e2fsprogs) reads back what the ioctls wrote.
    """
    c = make_container()
    if quota.mount_of(c.rootfs)[1] not in ("ext4", "xfs"):
        pytest.skip(f"{c.rootfs} is not on ext4 or XFS")
    os.makedirs(os.path.join(c.upper, "etc"))
    with open(os.path.join(c.upper, "etc/kept"), "w") as f:
        f.write("x")
    quota.tag_layer(c.rootfs, 0)
    for d in ("upper", "work", "upper/etc"):
        fd = os.open(os.path.join(c.rootfs, ".pycor", d), os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags, projid = quota.get_project(fd)
        finally:
            os.close(fd)
        assert flags & quota.FS_XFLAG_PROJINHERIT and projid == 0
    out = run(["lsattr", "-pd", os.path.join(c.rootfs, ".pycor/upper"), os.path.join(c.rootfs, ".pycor/work")]).stdout
    assert [line.split()[1][-3] for line in out.splitlines()] == ["P", "P"]
    c.start()
    c.sh("echo copied-up >> /etc/passwd && mkdir /root/new")  # copy-up from work into upper, both tagged
    fd = os.open(os.path.join(c.upper, "root/new"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert quota.get_project(fd)[0] & quota.FS_XFLAG_PROJINHERIT  # inherited by what the container makes
    finally:
        os.close(fd)


# -- volumes ----------------------------------------------------------------------------
def test_volume_bypasses_overlay_survives_restart_and_copy(make_container, env, lxcpath):
    c = make_container(extra=("--volume", "/var/lib/data", "--volume", "/srv/logs"))
    c.start()
    c.sh("echo row > /var/lib/data/table && echo line > /srv/logs/app.log && echo other > /root/f")
    vol0 = os.path.join(c.rootfs, ".pycor/volumes/0")
    assert open(os.path.join(vol0, "table")).read() == "row\n"
    assert not os.path.exists(os.path.join(c.upper, "var/lib/data/table"))
    diff = run(PYCOR + ["diff", c.name, "-P", lxcpath], env=env)
    assert "/var/lib/data/table" not in diff.stdout and "/root/f" in diff.stdout
    assert "volumes left out" in diff.stderr and "/var/lib/data" in diff.stderr
    c.stop()
    commit = run(PYCOR + ["commit", c.name, "--as", f"v{c.name}", "-P", lxcpath], env=env)
    try:
        assert "volumes left out" in commit.stderr
        published = os.path.join(env["PYCOR_STORE"], "bases", f"v{c.name}", "versions", "1", "rootfs")
        assert os.path.exists(os.path.join(published, "root/f"))
        assert not os.path.exists(os.path.join(published, "var/lib/data/table"))
    finally:
        run(PYCOR + ["base", "rm", f"v{c.name}", "-P", lxcpath], env=env, check=False)
    c.start()
    assert c.sh("cat /var/lib/data/table /srv/logs/app.log").stdout == "row\nline\n"
    c.stop()
    copy = Container(f"k{uuid.uuid4().hex[:6]}", lxcpath, env)
    try:
        run(["lxc-copy", "-n", c.name, "-N", copy.name, "-P", lxcpath])
        copy.start()
        assert copy.sh("cat /var/lib/data/table").stdout == "row\n"
        copy.sh("echo copy > /var/lib/data/table")
        assert open(os.path.join(vol0, "table")).read() == "row\n"  # each copy has its own volume
    finally:
        destroy(copy.name, lxcpath)


def test_volume_refuses_a_symlink_planted_at_its_path(make_container):
    c = make_container(extra=("--volume", "/srv/v"))
    os.makedirs(os.path.join(c.upper, "srv"))
    os.symlink("/etc", os.path.join(c.upper, "srv/v"))
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    log = open(c.log).read()
    assert "cannot mount volume at /srv/v: /srv/v is not a plain directory" in log
    assert "the container's own changes put a symlink or file at /srv/v" in log  # not the base's
    assert not os.listdir(os.path.join(c.rootfs, ".pycor/volumes/0"))


@pytest.mark.parametrize("bad", ["var/db", "/proc/x", "/", "/a/../b"])
def test_bad_volume_creates_nothing(lxcpath, env, busybox_base, bad):
    name = f"b{uuid.uuid4().hex[:6]}"
    proc = create(env, lxcpath, name, "--volume", bad, check=False)
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1
    assert not os.path.exists(os.path.join(lxcpath, name))


def test_overlapping_volumes_create_nothing(lxcpath, env, busybox_base):
    name = f"b{uuid.uuid4().hex[:6]}"
    proc = create(env, lxcpath, name, "--volume", "/var/lib", "--volume", "/var/lib/db", check=False)
    assert proc.returncode == 1 and "overlaps" in proc.stderr
    assert not os.path.exists(os.path.join(lxcpath, name))


# -- ephemeral --------------------------------------------------------------------------
def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


def run_states_of(names: set[str]) -> list[str]:
    try:
        return [e for e in os.listdir("/run/pycor/containers") if e.rsplit("-", 1)[0] in names]
    except FileNotFoundError:
        return []


def test_ephemeral_container_writes_nothing_and_is_gone_after_stop(lxcpath, env, busybox_base):
    c = Container(f"e{uuid.uuid4().hex[:6]}", lxcpath, env)
    try:
        create(env, lxcpath, c.name, "--ephemeral", "--size", "8MiB")
        c.start()
        c.sh("echo mem > /root/f && echo x >> /etc/passwd")
        assert os.listdir(c.upper) == []  # changes live in memory
        assert ls_row(env, lxcpath, c.name)["quota"] == {"memory": True, "limit": 8 * MiB}
        assert "No space" in fill(c, "/big", 16).stdout  # --size limits the in-memory layer
        c.stop()
        wait_for(lambda: not os.path.exists(os.path.join(lxcpath, c.name)), what="LXC to destroy the ephemeral container")
        assert run_states_of({c.name}) == [] and mounts_mentioning(c.name) == []
    finally:
        destroy(c.name, lxcpath)


def test_fifty_ephemeral_containers_leave_nothing_behind(lxcpath, env, busybox_base):
    names = [f"f{i:02d}{uuid.uuid4().hex[:5]}" for i in range(50)]
    try:
        for name in names:
            create(env, lxcpath, name, "--ephemeral")
            Container(name, lxcpath, env).start()
        for name in names:
            assert Container(name, lxcpath, env).sh("echo ok > /root/x && cat /root/x").stdout == "ok\n"
        for name in names:
            Container(name, lxcpath, env).lxc("lxc-stop", "-k")
        wait_for(lambda: not any(os.path.exists(os.path.join(lxcpath, n)) for n in names), 60, "ephemeral containers gone")
        assert run_states_of(set(names)) == []
        assert [m for n in names for m in mounts_mentioning(n)] == []
    finally:
        for name in names:
            destroy(name, lxcpath)


def test_lxc_copy_ephemeral_of_a_pycor_container(make_container, lxcpath, env):
    c = make_container(extra=("--volume", "/srv/v"))
    c.start()
    c.sh("echo orig > /root/mine && echo vol > /srv/v/f")
    copies = [Container(f"x{uuid.uuid4().hex[:6]}", lxcpath, env) for _ in range(2)]
    try:
        # LXC's overlay clone (lxc-copy -e), even while the original runs
        for copy in copies:
            run(["lxc-copy", "-n", c.name, "-N", copy.name, "-P", lxcpath, "-e", "--allowrunning"])
            copy.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")
            assert copy.sh("cat /root/mine").stdout == "orig\n"
            # an overlay layer never crosses into submounts: the clone's volume starts empty (README says so)
            assert copy.sh("ls -A /srv/v").stdout == ""
            copy.sh("echo eph > /root/mine")
            assert c.sh("cat /root/mine").stdout == "orig\n"
        c.stop()
        for copy in copies:
            copy.lxc("lxc-stop", "-k")
            wait_for(lambda: not os.path.exists(os.path.join(lxcpath, copy.name)), what="the ephemeral copy gone")
        assert open(os.path.join(c.upper, "root/mine")).read() == "orig\n"
        assert run_states_of({x.name for x in copies}) == []
        assert [m for x in copies for m in mounts_mentioning(x.name)] == []
        c.start()
        assert c.sh("cat /root/mine").stdout == "orig\n"
    finally:
        for copy in copies:
            destroy(copy.name, lxcpath)


def test_unprivileged_ephemeral_container_with_a_volume(lxcpath, env, busybox_base):
    c = Container(f"u{uuid.uuid4().hex[:6]}", lxcpath, env)
    try:
        create(env, lxcpath, c.name, "--unprivileged", "--ephemeral", "--volume", "/srv/v")
        c.start()
        c.sh("echo kept > /srv/v/f && echo gone > /root/f")
        # the volume lives in the in-memory layer with upper and work: nothing on disk
        assert os.listdir(c.upper) == [] and not os.path.exists(os.path.join(c.rootfs, ".pycor/volumes"))
        assert c.sh("cat /srv/v/f").stdout == "kept\n" and "tmpfs" in c.sh("grep ' /srv/v ' /proc/self/mounts").stdout
        assert c.sh("stat -c %u /srv/v /root/f").stdout.split() == ["0", "0"]  # container root's, as on disk
        c.lxc("lxc-stop", "-k")
        wait_for(lambda: not os.path.exists(os.path.join(lxcpath, c.name)), what="LXC to destroy the ephemeral container")
        assert run_states_of({c.name}) == [] and mounts_mentioning(c.name) == []
    finally:
        destroy(c.name, lxcpath)


# -- LXD ----------------------------------------------------------------------------------
def test_lxd_ephemeral_instance_on_the_overlay_profile(launch, lxd_project):
    c = launch(extra=("--ephemeral",))
    c.sh("echo eph > /root/f")
    assert open(os.path.join(c.upper, "root/f")).read() == "eph\n"
    c.lxc("stop", c.name, "--force")
    wait_for(lambda: c.name not in c.lxc("list", "-c", "n", "--format", "csv").stdout.split(), 60, "LXD to delete it")
    assert not os.path.exists(c.rootfs) and run_states_of({f"{lxd_project}_{c.name}", c.name}) == []


@pytest.fixture
def lxd_btrfs_pool(lxd_env) -> Iterator[str]:
    """A loop btrfs storage pool of LXD's own, removed afterwards (pools are global: a unique name)."""
    pool = f"pycor-q-{uuid.uuid4().hex[:6]}"
    run(["lxc", "storage", "create", pool, "btrfs", "size=1GiB"], timeout=120)
    try:
        yield pool
    finally:
        subprocess.run(["lxc", "storage", "delete", pool], capture_output=True)


def test_lxd_btrfs_pool_honours_root_size_for_the_pycor_layer(lxd_launch, lxd_btrfs_pool, lxd_project):
    launch = lxd_launch
    limited = launch(extra=("--storage", lxd_btrfs_pool, "--device", "root,size=20MiB"))
    neighbour = launch(extra=("--storage", lxd_btrfs_pool))
    try:
        limited.sh("echo copied-up >> /etc/passwd")
        out = limited.sh("dd if=/dev/zero of=/big bs=1M count=40 2>&1; sync", check=False).stdout.lower()
        assert "quota exceeded" in out or "no space" in out, out
        out = neighbour.sh("dd if=/dev/zero of=/big bs=1M count=40 2>&1; sync", check=False).stdout.lower()
        assert "exceeded" not in out and "no space" not in out
    finally:
        for c in (limited, neighbour):
            c.lxc("delete", "-f", c.name, check=False)


def test_lxd_size_on_a_dir_pool_is_refused_and_creates_nothing(lxd_env, lxd_project):
    name = f"l{uuid.uuid4().hex[:6]}"
    proc = run(PYCOR + ["create", name, "--base", "busybox", "--runtime", "lxd", "--size", "20MiB"], env=lxd_env, check=False)
    assert proc.returncode == 1 and "dir pool without project quotas" in proc.stderr and "btrfs" in proc.stderr
    assert name not in run(["lxc", "list", "--project", lxd_project, "-c", "n", "--format", "csv"]).stdout.split()


@pytest.fixture
def lxd_btrfs_project(lxd_btrfs_pool, env) -> Iterator[dict]:
    """A private LXD project whose default profile puts the root disk on a loop btrfs pool; pycor set up in it."""
    project = f"pycor-q-{uuid.uuid4().hex[:6]}"
    run(["lxc", "project", "create", project, "-c", "features.images=true", "-c", "features.profiles=true"])
    try:
        run(["lxc", "profile", "device", "add", "default", "root", "disk", "path=/", f"pool={lxd_btrfs_pool}",
             "--project", project])
        penv = dict(env, PYCOR_LXD_PROJECT=project)
        run(PYCOR + ["lxd", "init"], env=penv)
        yield penv
    finally:
        names = run(["lxc", "list", "--project", project, "-c", "n", "--format", "csv"], check=False).stdout.split()
        for name in names:
            subprocess.run(["lxc", "delete", "-f", name, "--project", project], capture_output=True)
        images = run(["lxc", "image", "list", "--project", project, "-c", "f", "--format", "csv"], check=False).stdout.split()
        for fp in images:
            subprocess.run(["lxc", "image", "delete", fp, "--project", project], capture_output=True)
        subprocess.run(["lxc", "profile", "delete", "overlay", "--project", project], capture_output=True)
        subprocess.run(["lxc", "profile", "device", "remove", "default", "root", "--project", project], capture_output=True)
        subprocess.run(["lxc", "project", "delete", project], capture_output=True)


def test_pycor_create_lxd_size_and_ephemeral_on_a_btrfs_pool(lxd_btrfs_project, busybox_base):
    penv, project = lxd_btrfs_project, lxd_btrfs_project["PYCOR_LXD_PROJECT"]
    name, eph = f"l{uuid.uuid4().hex[:6]}", f"e{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["create", name, "--base", "busybox", "--runtime", "lxd", "--size", "20MiB"], env=penv)
    run(PYCOR + ["create", eph, "--base", "busybox", "--runtime", "lxd", "--ephemeral"], env=penv)
    run(["lxc", "start", name, eph, "--project", project], timeout=120)
    dd = "dd if=/dev/zero of=/big bs=1M count=40 2>&1; sync"
    out = run(["lxc", "exec", name, "--project", project, "--", "sh", "-c", dd], check=False).stdout.lower()
    assert "quota exceeded" in out or "no space" in out, out
    rows = json.loads(run(PYCOR + ["ls", "--format", "json"], env=penv).stdout)
    row = next(r for r in rows if r["name"] == name)
    assert row["quota"]["limit"] == 20 * MiB and row["quota"]["used"] >= 19 * MiB
    run(PYCOR + ["set", name, "size=100MiB"], env=penv)
    out = run(["lxc", "exec", name, "--project", project, "--", "sh", "-c", "rm /big; " + dd], check=False).stdout.lower()
    assert "exceeded" not in out and "no space" not in out
    run(["lxc", "stop", eph, "--force", "--project", project], timeout=120)
    wait_for(lambda: eph not in run(["lxc", "list", "--project", project, "-c", "n", "--format", "csv"]).stdout.split(),
             60, "LXD to delete the ephemeral instance")
