"""Unprivileged LXC containers on one root-owned base, through idmapped views."""

from __future__ import annotations

import os
import stat
import subprocess

from helpers import host_overlays, layer_of, tree_checksum, view_mounts, view_suffix


def test_container_root_sees_root_owned_base_and_writes_as_mapped_root(make_container, store, busybox_base):
    layer = layer_of(store, busybox_base)
    before = tree_checksum(layer)
    c = make_container(extra=("--unprivileged",))
    c.start()
    assert c.sh("cat /proc/self/uid_map").stdout.split()[:2] == ["0", "100000"]
    assert c.sh("stat -c %u:%g /bin/busybox /etc/passwd").stdout.split() == ["0:0", "0:0"]
    c.sh("echo new > /root/new && rm /etc/group && echo more >> /etc/passwd && chown 1000:1000 /etc/hostname 2>/dev/null; true")
    st = os.stat(os.path.join(c.upper, "root/new"))
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    wh = os.lstat(os.path.join(c.upper, "etc/group"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert c.sh("ls -a /").stdout.split().count(".pycor") == 0
    c.stop()
    assert tree_checksum(layer) == before
    assert os.stat(os.path.join(layer, "etc/passwd")).st_uid == 0


def test_container_root_cannot_write_the_base_through_the_view(make_container, store, busybox_base):
    c = make_container(extra=("--unprivileged",))
    c.start()
    view = next(p for p in view_mounts() if p.endswith(view_suffix(store, busybox_base)))
    # From the host the view shows the base as the mapped root, and refuses writes.
    assert os.stat(os.path.join(view, "etc/passwd")).st_uid == 100000
    try:
        open(os.path.join(view, "etc/passwd"), "a").close()
        raise AssertionError("the idmapped view of the base is writable")
    except OSError as e:
        assert e.errno == 30  # EROFS
    assert os.stat(os.path.join(layer_of(store, busybox_base), "etc/passwd")).st_uid == 0


def test_containers_with_one_map_share_one_view_released_after_last_stop(make_container, store, busybox_base):
    suffix = view_suffix(store, busybox_base)
    ours = lambda: [v for v in view_mounts() if v.endswith(suffix)]  # noqa: E731  (other test runs start containers meanwhile)
    before_views, before_overlays = ours(), host_overlays()
    a = make_container(extra=("--unprivileged",))
    b = make_container(extra=("--unprivileged",))
    a.start()
    b.start()
    views = [v for v in view_mounts() if v.endswith(view_suffix(store, busybox_base))]
    assert len(views) == 1  # one view for the map both share
    a.stop()
    assert views[0] in view_mounts()  # b still runs on it
    assert b.sh("cat /etc/passwd").returncode == 0
    b.stop()
    assert ours() == before_views
    assert host_overlays() == before_overlays


def test_different_maps_get_their_own_views(make_container, busybox_base):
    before = view_mounts()
    a = make_container(extra=("--unprivileged",))
    b = make_container(extra=("--unprivileged",))
    with open(b.config) as f:
        text = f.read()
    with open(b.config, "w") as f:  # another map for b
        f.write("".join(line for line in text.splitlines(keepends=True) if not line.startswith("lxc.idmap"))
                + "lxc.idmap = u 0 300000 65536\nlxc.idmap = g 0 300000 65536\n")
    os.chown(b.upper, 300000, 300000)
    os.chown(os.path.join(b.rootfs, ".pycor", "work"), 300000, 300000)
    os.chown(os.path.dirname(b.rootfs), 300000, 300000)
    a.start()
    b.start()
    assert len([v for v in view_mounts() if v not in before]) == 2
    assert b.sh("stat -c %u /etc/passwd").stdout.strip() == "0"
    b.sh("touch /root/b")
    assert os.stat(os.path.join(b.upper, "root/b")).st_uid == 300000


def test_idmap_giving_container_root_host_root_is_refused(make_container):
    c = make_container()
    with open(c.config, "a") as f:
        f.write("lxc.idmap = u 0 0 65536\nlxc.idmap = g 0 0 65536\n")
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    assert c.state() == "STOPPED"
    assert "gives container root host uid 0 is refused" in open(c.log).read()


def test_layer_not_owned_by_mapped_root_is_a_clear_error(make_container):
    before = view_mounts()
    c = make_container(extra=("--unprivileged",))
    os.chown(c.upper, 0, 0)
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    assert "not to container root 100000:100000" in open(c.log).read()
    assert view_mounts() == before


def test_without_idmapped_mounts_unprivileged_start_is_refused_clearly(make_container, env, store, busybox_base):
    """The fallback: pycor refuses rather than copying the base per idmap (forced by the switch)."""
    before = view_mounts()
    layer = layer_of(store, busybox_base)
    files = sum(len(f) for _, _, f in os.walk(os.path.join(store, "bases")))
    c = make_container(extra=("--unprivileged",))
    proc = subprocess.run(["lxc-start", "-n", c.name, "-P", c.lxcpath, "-l", "DEBUG", "-o", c.log],
                          env=dict(env, PYCOR_IDMAPPED_LAYERS="off"), capture_output=True, text=True)
    assert proc.returncode != 0
    assert c.state() == "STOPPED"
    assert "idmapped layers are turned off" in open(c.log).read()
    assert view_mounts() == before
    assert sum(len(f) for _, _, f in os.walk(os.path.join(store, "bases"))) == files
    assert os.stat(os.path.join(layer, "etc/passwd")).st_uid == 0
    c.start()  # the same container starts once idmapped layers are allowed
    assert c.sh("stat -c %u /etc/passwd").stdout.strip() == "0"
