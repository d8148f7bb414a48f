"""Shared-base overlay containers on raw LXC, proven on real lxc-start containers."""

from __future__ import annotations

import json
import os
import stat

import pytest

from helpers import PYCOR, host_overlays, layer_of, run, tree_checksum, tree_paths


def test_merged_view_is_the_base_and_hides_pycor_dir(make_container, store, busybox_base):
    c = make_container()
    c.start()
    inside = set(c.sh("find / -xdev").stdout.split())
    base = tree_paths(layer_of(store, busybox_base))
    upper = tree_paths(c.upper)
    assert inside - {"/"} == base | upper
    assert "/.pycor" not in inside
    assert c.sh("cat /etc/passwd").stdout == open(os.path.join(layer_of(store, busybox_base), "etc/passwd")).read()


def test_write_in_container_lands_in_upper_never_in_base(make_container, store, busybox_base):
    c = make_container()
    c.start()
    c.sh("echo hello > /root/new.txt && echo changed >> /etc/passwd")
    assert open(os.path.join(c.upper, "root/new.txt")).read() == "hello\n"
    assert open(os.path.join(c.upper, "etc/passwd")).read().endswith("changed\n")
    assert not os.path.exists(os.path.join(layer_of(store, busybox_base), "root/new.txt"))
    assert "changed" not in open(os.path.join(layer_of(store, busybox_base), "etc/passwd")).read()


def test_delete_in_container_leaves_whiteout_in_upper(make_container):
    c = make_container()
    c.start()
    c.sh("rm /etc/group")
    st = os.lstat(os.path.join(c.upper, "etc/group"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert c.sh("test -e /etc/group", check=False).returncode == 1


def test_recreated_base_directory_is_opaque(make_container):
    c = make_container()
    c.start()
    c.sh("rm -rf /etc/init.d && mkdir /etc/init.d && echo x > /etc/init.d/only")
    assert os.getxattr(os.path.join(c.upper, "etc/init.d"), "trusted.overlay.opaque") == b"y"
    assert c.sh("ls /etc/init.d").stdout.split() == ["only"]


def test_rename_of_base_directory_works(make_container):
    c = make_container()
    c.start()
    c.sh("mv /etc/init.d /etc/init.moved")
    assert c.sh("ls /etc/init.moved").stdout.split() == ["rcS"]
    assert c.sh("test -e /etc/init.d", check=False).returncode == 1


def test_base_checksum_unchanged_by_container_writes_deletes_renames(make_container, store, busybox_base):
    layer = layer_of(store, busybox_base)
    before = tree_checksum(layer)
    c = make_container()
    c.start()
    c.sh("echo x >> /etc/passwd; rm -f /bin/vi; mv /etc/init.d /etc/i2; mkdir /var/new; chmod 700 /root; "
         "chown 5:5 /etc/hostname 2>/dev/null; touch /bin/busybox; ln -s /x /etc/lnk")
    c.stop()
    assert tree_checksum(layer) == before


def test_two_containers_do_not_see_each_others_changes(make_container):
    a, b = make_container(), make_container()
    a.start()
    b.start()
    a.sh("echo a > /root/mine && rm /etc/group")
    assert b.sh("test -e /root/mine", check=False).returncode == 1
    assert b.sh("cat /etc/group").returncode == 0


def test_restart_keeps_changes(make_container):
    c = make_container()
    c.start()
    c.sh("echo kept > /root/kept && rm /etc/group")
    c.stop()
    c.start()
    assert c.sh("cat /root/kept").stdout == "kept\n"
    assert c.sh("test -e /etc/group", check=False).returncode == 1


def test_no_overlay_on_host_while_running_or_after_stop(make_container):
    before = host_overlays()
    c = make_container()
    c.start()
    assert host_overlays() == before
    assert c.sh("grep -c ' / overlay ' /proc/mounts").stdout.strip() == "1"
    c.stop()
    assert host_overlays() == before
    assert not any(c.name in f for f in os.listdir("/run/pycor/containers"))


def test_lxc_copy_copies_only_changes_and_runs_on_same_base(make_container, lxcpath, env):
    a = make_container()
    a.start()
    a.sh("echo from-a > /root/a && rm /etc/group")
    a.stop()
    b = make_container(name=a.name + "-copy")
    # make_container created b; replace it by a real lxc-copy of a
    run(["lxc-destroy", "-n", b.name, "-P", lxcpath])
    run(["lxc-copy", "-n", a.name, "-N", b.name, "-P", lxcpath])
    assert sorted(os.listdir(b.rootfs)) == [".pycor"]
    assert sorted(os.listdir(b.upper)) == sorted(os.listdir(a.upper))
    b.start()
    assert b.sh("cat /root/a").stdout == "from-a\n"
    assert b.sh("test -e /etc/group", check=False).returncode == 1
    b.sh("echo from-b > /root/b")
    a.start()
    assert a.sh("test -e /root/b", check=False).returncode == 1
    listed = json.loads(run(PYCOR + ["ls", "-P", lxcpath, "--format", "json"], env=env).stdout)
    assert {a.name, b.name} <= {row["name"] for row in listed}


def test_lxc_destroy_removes_changes_and_leaves_base(make_container, lxcpath, store, busybox_base):
    layer = layer_of(store, busybox_base)
    before = tree_checksum(layer)
    c = make_container()
    c.start()
    c.sh("echo x > /root/x")
    c.stop()
    run(["lxc-destroy", "-n", c.name, "-P", lxcpath])
    assert not os.path.exists(c.rootfs)
    assert tree_checksum(layer) == before


def test_hook_version_1_starts_too(make_container):
    c = make_container()
    with open(c.config, "a") as f:
        f.write("lxc.hook.version = 1\n")
    c.start()
    assert c.sh("cat /etc/hostname || true").returncode == 0
    assert c.sh("grep -c ' / overlay ' /proc/mounts").stdout.strip() == "1"


@pytest.mark.parametrize("odd", ["with space", "comma,colon:x", "quote'dollar$"])
def test_special_characters_in_paths(make_container, session_dir, odd):
    path = os.path.join(session_dir, odd)
    os.makedirs(path, exist_ok=True)
    c = make_container(path=path)
    c.start()
    c.sh("echo ok > /root/ok")
    assert open(os.path.join(c.upper, "root/ok")).read() == "ok\n"
