"""Base versions, updates, rollouts, diffs, commits and resets, on real containers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import pytest

from helpers import PYCOR, layer_of, run, tree_checksum


@pytest.fixture
def base(installed, env):
    """A fresh busybox base per test, so versions start at 1; removed afterwards."""
    name = f"b{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["base", "import", name, "--busybox"], env=env)
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def pycor(env, *args, check=True):
    return run(PYCOR + list(args), env=env, check=check)


def versions(env, base):
    return json.loads(pycor(env, "base", "versions", base, "--format", "json").stdout)


def update(env, base, script, check=True):
    return pycor(env, "base", "update", base, "--", "/bin/sh", "-c", script, check=check)


def test_update_publishes_a_stacked_version_that_followers_see_and_pinned_do_not(make_container, env, store, base):
    follower = make_container(base=base)
    pinned = make_container(base=base, extra=("--pin", "1"))
    follower.start()
    pinned.start()
    before = tree_checksum(layer_of(store, base))
    update(env, base, "echo v2 > /etc/version && rm /etc/group")
    rows = versions(env, base)
    assert [(r["version"], r["parent"], r["depth"], r["current"]) for r in rows] == [("1", None, 1, False), ("2", "1", 2, True)]
    layer2 = layer_of(store, base, "2")
    assert sorted(os.listdir(os.path.join(layer2, "etc"))) == ["group", "version"]  # only what changed
    assert tree_checksum(layer_of(store, base)) == before  # version 1 untouched: its inodes stay shared
    # running containers stay where they started until they restart
    assert follower.sh("cat /etc/version", check=False).returncode != 0
    follower.stop()
    follower.start()
    pinned.stop()
    pinned.start()
    assert follower.sh("cat /etc/version").stdout == "v2\n"
    assert follower.sh("test -e /etc/group", check=False).returncode != 0
    assert pinned.sh("cat /etc/version", check=False).returncode != 0
    # an unchanged file is the very same inode on both versions: one copy in the page cache
    ino = str(os.stat(os.path.join(layer_of(store, base), "bin/busybox")).st_ino)
    assert follower.sh("stat -c %i /bin/busybox").stdout.strip() == ino
    assert pinned.sh("stat -c %i /bin/busybox").stdout.strip() == ino
    pycor(env, "unpin", pinned.name, "-P", pinned.lxcpath)
    pinned.stop()
    pinned.start()
    assert pinned.sh("cat /etc/version").stdout == "v2\n"
    pycor(env, "pin", pinned.name, "1", "-P", pinned.lxcpath)
    pinned.stop()
    pinned.start()
    assert pinned.sh("cat /etc/version", check=False).returncode != 0
    pinned.stop()
    out = pycor(env, "pin", pinned.name, "-P", pinned.lxcpath).stdout  # no version: where it would start, its pin
    assert "version 1" in out


def test_failing_update_publishes_nothing(env, store, base):
    proc = update(env, base, "echo half > /etc/half; exit 7", check=False)
    assert proc.returncode == 1
    assert "exited with status 7" in proc.stderr and "stays at version 1" in proc.stderr
    assert [r["version"] for r in versions(env, base)] == ["1"]
    assert os.listdir(os.path.join(store, "staging")) == []


def test_update_that_changes_nothing_publishes_nothing(env, base):
    out = update(env, base, "true").stdout
    assert "changed nothing" in out
    assert [r["version"] for r in versions(env, base)] == ["1"]


def test_updated_opaque_directories_work_for_unprivileged_containers_too(make_container, env, base):
    update(env, base, "echo old > /etc/init.d/old")
    update(env, base, "rm -rf /etc/init.d && mkdir /etc/init.d && printf '#!/bin/sh\\n' > /etc/init.d/rcS && chmod +x /etc/init.d/rcS "
                      "&& echo only > /etc/init.d/only")
    for c in (make_container(base=base), make_container(base=base, extra=("--unprivileged",))):
        c.start()
        assert sorted(c.sh("ls /etc/init.d").stdout.split()) == ["only", "rcS"]  # 'old', below the opaque dir, is hidden


def test_update_that_only_passes_through_a_directory_publishes_nothing(env, base):
    out = update(env, base, "echo tmp > /etc/scratch && rm /etc/scratch").stdout  # /etc copied up, left empty
    assert "changed nothing" in out
    assert [r["version"] for r in versions(env, base)] == ["1"]


def test_update_below_an_opaque_directory_keeps_the_files_the_directory_already_held(make_container, env, store, base):
    update(env, base, "rm -rf /etc/init.d && mkdir /etc/init.d && printf '#!/bin/sh\\n' > /etc/init.d/rcS && chmod +x /etc/init.d/rcS "
                      "&& echo only > /etc/init.d/only")  # version 2: /etc/init.d opaque
    update(env, base, "echo new > /etc/init.d/new")  # version 3: one file added in it
    c = make_container(base=base)
    c.start()
    assert sorted(c.sh("ls /etc/init.d").stdout.split()) == ["new", "only", "rcS"]


def test_update_that_recreates_a_directory_keeps_files_equal_to_the_old_ones(make_container, env, store, base):
    # the directory goes and comes back (dpkg purge then install): opaque, its files no longer come from below
    rcs = open(os.path.join(layer_of(store, base), "etc/init.d/rcS")).read()
    update(env, base, "cp /etc/init.d/rcS /rcS.keep && rm -rf /etc/init.d && mkdir /etc/init.d && cp /rcS.keep /etc/init.d/rcS "
                      "&& chmod 755 /etc/init.d/rcS && rm /rcS.keep && echo added > /etc/init.d/added")
    c = make_container(base=base)
    c.start()
    assert sorted(c.sh("ls /etc/init.d").stdout.split()) == ["added", "rcS"]
    assert c.sh("cat /etc/init.d/rcS").stdout == rcs


def test_rollout_moves_followers_batch_by_batch_and_never_breaks_one(make_container, env, base):
    followers = [make_container(base=base) for _ in range(3)]
    pinned = make_container(base=base, extra=("--pin", "1"))
    for c in followers + [pinned]:
        c.start()
    update(env, base, "echo v2 > /etc/version")
    seen: list[str] = []
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            for c in followers:
                proc = c.sh("cat /etc/version 2>/dev/null || echo v1", check=False)
                if proc.returncode == 0:
                    seen.append(proc.stdout.strip())
            time.sleep(0.05)

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        out = pycor(env, "rollout", base, "--batch", "2", "--check", "grep -q v2 /etc/version", "-P", followers[0].lxcpath,
                    "--format", "json").stdout
    finally:
        stop.set()
        watcher.join()
    rows = {r["name"]: r for r in json.loads(out)}
    assert {rows[c.name]["status"] for c in followers} == {"moved"}
    assert pinned.name not in rows
    assert set(seen) <= {"v1", "v2"} and "v2" in seen
    for c in followers:
        assert c.sh("cat /etc/version").stdout == "v2\n"
    assert pinned.sh("cat /etc/version", check=False).returncode != 0


def test_failing_check_stops_the_rollout_and_the_rest_stay_on_the_old_version(make_container, env, base):
    followers = [make_container(base=base) for _ in range(3)]
    for c in followers:
        c.start()
    update(env, base, "echo v2 > /etc/version")
    proc = pycor(env, "rollout", base, "--batch", "1", "--check", "test -e /nonexistent", "-P", followers[0].lxcpath,
                 "--format", "json", check=False)
    assert proc.returncode == 1 and "stopped at a failure" in proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["failed", "not moved", "not moved"]
    not_moved = [c for c in followers if c.name in {r["name"] for r in rows if r["status"] == "not moved"}]
    for c in not_moved:
        assert c.state() == "RUNNING"
        assert c.sh("cat /etc/version", check=False).returncode != 0  # still version 1


def test_a_check_whose_output_a_tenant_keeps_open_fails_that_container_without_hanging_the_rollout(make_container, env, base):
    """The check runs the container's own /bin/sh: a tenant's leaves a process holding the check's output (and
    prints without end). The rollout neither waits on it nor holds what it prints: that container is stopped
    and its move reported failed; the rollout stops there, the others run on."""
    tenant, other = make_container(base=base), make_container(base=base)
    for c in (tenant, other):
        c.start()
    tenant.sh("rm /bin/sh && printf '#!/bin/busybox sh\n/bin/busybox sleep 600 &\n"
              "/bin/busybox yes | /bin/busybox head -c 50000000\nexec /bin/busybox sh \"$@\"\n' > /bin/sh "
              "&& /bin/busybox chmod 755 /bin/sh")
    update(env, base, "echo v2 > /etc/version")
    proc = pycor(env, "rollout", base, "--batch", "1", "--check", "true", "-P", tenant.lxcpath, "--format", "json",
                 check=False)
    assert proc.returncode == 1
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows[tenant.name]["status"] == "failed" and "kept its output open" in rows[tenant.name]["detail"], rows
    assert tenant.state() == "STOPPED"
    assert rows[other.name]["status"] in ("moved", "not moved") and other.state() == "RUNNING"


def test_rollout_of_unknown_base_is_a_clear_error(installed, env):
    proc = pycor(env, "rollout", "no-such-base", check=False)
    assert proc.returncode == 1 and "unknown base 'no-such-base'" in proc.stderr


def test_gc_removes_only_unused_versions(make_container, env, store, base):
    pinned = make_container(base=base, extra=("--pin", "1"))
    update(env, base, "echo v2 > /etc/version")
    running = make_container(base=base)
    running.start()  # runs on version 2
    update(env, base, "echo v3 > /etc/version")
    update(env, base, "echo v4 > /etc/version")
    update(env, base, "echo v5 > /etc/version")  # current; 3 and 4 are used by nobody... but 4 is below 5
    out = pycor(env, "base", "gc", "-P", pinned.lxcpath).stdout
    left = [r["version"] for r in versions(env, base)]
    assert left == ["1", "2", "3", "4", "5"]  # 5 stacks on 4 on 3 on 2 on 1: all needed
    assert f"removed {base} " not in out  # (other tests' bases in the session store are not this test's business)
    pycor(env, "base", "squash", base)  # 6: one layer
    running.stop()
    pycor(env, "base", "gc", "-P", pinned.lxcpath)
    # pinned 1, current 6, and 2: the stopped follower's changes were made against it (its move merges against it)
    assert [r["version"] for r in versions(env, base)] == ["1", "2", "6"]
    running.start()  # moves to 6
    assert running.sh("cat /etc/version").stdout == "v5\n"
    running.stop()
    pycor(env, "base", "gc", "-P", pinned.lxcpath)
    assert [r["version"] for r in versions(env, base)] == ["1", "6"]


def test_diff_lists_exactly_what_the_container_did(make_container, env, base):
    c = make_container(base=base)
    c.start()
    baseline = {(e["path"], e["change"]) for e in json.loads(pycor(env, "diff", c.name, "-P", c.lxcpath, "--format", "json").stdout)}
    c.sh("echo new > /root/new; echo more >> /etc/passwd; rm /etc/group; rm -rf /etc/init.d; mkdir /etc/init.d; "
         "mkdir -p /srv/a/b; ln -s /etc/passwd /srv/link; chmod 700 /home; mv /bin/vi /bin/vi2")
    entries = {(e["path"], e["change"]) for e in json.loads(pycor(env, "diff", c.name, "-P", c.lxcpath, "--format", "json").stdout)}
    assert entries - baseline == {
        ("/root/new", "added"), ("/etc/passwd", "changed"), ("/etc/group", "deleted"), ("/etc/init.d", "replaced"),
        ("/srv", "added"), ("/srv/a", "added"), ("/srv/a/b", "added"), ("/srv/link", "added"), ("/home", "changed"),
        ("/bin/vi", "deleted"), ("/bin/vi2", "added"),
    }
    text = pycor(env, "diff", c.name, "-P", c.lxcpath).stdout.splitlines()
    assert "D /etc/group" in text and "R /etc/init.d/" in text and "A /root/new" in text


def test_diff_of_unprivileged_container_ignores_its_id_shift(make_container, env, base):
    c = make_container(base=base, extra=("--unprivileged",))
    c.start()
    c.sh("echo x > /root/x")
    entries = {(e["path"], e["change"]) for e in json.loads(pycor(env, "diff", c.name, "-P", c.lxcpath, "--format", "json").stdout)}
    assert ("/root/x", "added") in entries
    assert ("/root", "changed") not in entries


def test_diff_of_unknown_container_is_a_clear_error(installed, env, lxcpath):
    proc = pycor(env, "diff", "ghost", "-P", lxcpath, check=False)
    assert proc.returncode == 1 and "no pycor container named 'ghost'" in proc.stderr


def container_view(c) -> list[str]:
    """Every path of the running container's root filesystem with type, mode, owner, size, mtime and content.

    '/' itself is the container's own upper directory (overlayfs takes the
    merged root's attributes from upperdir), so its mtime is the container's,
    not the base's: it is compared without it.
    """
    script = ("find / -xdev -mindepth 1 ! -path '/run*' ! -path '/tmp*' ! -path /dev ! -path /proc ! -path /sys | sort | while read -r p; do "
              "if [ -f \"$p\" ] && [ ! -L \"$p\" ]; then s=$(md5sum < \"$p\"); else s=-; fi; "
              "echo \"$p $(stat -c '%F %a %u %g %s %Y' \"$p\") $(readlink \"$p\") $s\"; done; stat -c '/ %F %a %u %g' /")
    return c.sh(script).stdout.splitlines()


@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_commit_then_create_reproduces_the_view(make_container, env, base, unprivileged):
    extra = ("--unprivileged",) if unprivileged else ()
    c = make_container(base=base, extra=extra)
    c.start()
    c.sh("echo app > /srv-app; mkdir -p /srv/www && chown 33:44 /srv/www && chmod 2750 /srv/www; rm /etc/group; "
         "rm -rf /etc/init.d && mkdir /etc/init.d && printf '#!/bin/sh\\n' > /etc/init.d/rcS && chmod 755 /etc/init.d/rcS; "
         "ln -s ../srv-app /srv/www/link; touch -d 2020-01-01 /srv-app")
    c.stop()
    c.start()
    seen = container_view(c)
    c.stop()
    app = f"{base}-app"
    clone_name = f"{c.name}-clone"
    try:
        pycor(env, "commit", c.name, "--as", app, "-P", c.lxcpath)
        clone = make_container(base=app, name=clone_name, extra=extra)
        clone.start()
        assert container_view(clone) == seen
        # the committed container is unchanged and runs as before
        c.start()
        assert container_view(c) == seen
    finally:
        subprocess.run(["lxc-stop", "-k", "-n", clone_name, "-P", c.lxcpath], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", clone_name, "-P", c.lxcpath], capture_output=True)
        subprocess.run(PYCOR + ["base", "rm", app, "-P", c.lxcpath], env=env, capture_output=True)


def test_commit_to_own_base_stacks_the_layer(make_container, env, store, base):
    c = make_container(base=base)
    c.start()
    c.sh("echo committed > /etc/motd")
    c.stop()
    pycor(env, "commit", c.name, "--to", base, "-P", c.lxcpath)
    rows = versions(env, base)
    assert [(r["version"], r["parent"], r["current"]) for r in rows][-1] == ("2", "1", True)
    fresh = make_container(base=base)
    fresh.start()
    assert fresh.sh("cat /etc/motd").stdout == "committed\n"


def test_commit_of_running_container_is_refused(make_container, env, store, base):
    c = make_container(base=base)
    c.start()
    proc = pycor(env, "commit", c.name, "--as", "never", "-P", c.lxcpath, check=False)
    assert proc.returncode == 1 and "needs it stopped" in proc.stderr
    assert not os.path.exists(os.path.join(store, "bases", "never"))


def test_reset_discards_changes_and_keeps_the_container(make_container, env, base):
    c = make_container(base=base, extra=("--unprivileged",))
    c.start()
    c.sh("echo gone > /root/gone; rm /etc/group")
    proc = pycor(env, "reset", c.name, "-P", c.lxcpath, check=False)
    assert proc.returncode == 1 and "needs it stopped" in proc.stderr
    c.stop()
    pycor(env, "reset", c.name, "-P", c.lxcpath)
    assert os.listdir(c.upper) == []
    assert os.stat(c.upper).st_uid == 100000
    c.start()
    assert c.sh("test -e /root/gone", check=False).returncode != 0
    assert c.sh("cat /etc/group").returncode == 0


def test_squash_folds_the_stack_and_keeps_the_view(make_container, env, store, base):
    update(env, base, "echo v2 > /etc/version && rm /etc/group")
    update(env, base, "echo v3 > /etc/version && mkdir -p /opt/x")
    c = make_container(base=base)
    c.start()
    before = container_view(c)
    c.stop()
    pycor(env, "base", "squash", base)
    rows = versions(env, base)
    assert rows[-1]["depth"] == 1 and rows[-1]["current"]
    c.start()
    assert container_view(c) == before


def test_doctor_reports_every_check_as_json(installed, env):
    checks = json.loads(pycor(env, "doctor", "--format", "json").stdout)
    names = {c["name"] for c in checks}
    for needed in ("overlay filesystem", "overlay userxattr (unprivileged containers)", "idmapped layers (unprivileged containers)",
                   "overlay redirect_dir", "overlay metacopy", "overlay index", "overlay volatile", "store filesystem",
                   "trusted.* xattrs on the store", "CAP_SYS_ADMIN", "LXC", "block device under the store"):
        assert needed in names
    assert all(c["ok"] for c in checks if c["required"])
    assert all(c["fix"] for c in checks if not c["ok"])
    device = next(c for c in checks if c["name"] == "block device under the store")
    assert device["detail"].startswith("/dev/")
