"""Unprivileged LXD containers on one root-owned base, and LXD's own operations on them.

Tests that take the launch fixture run twice: on LXD, then on Incus."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading

import helpers
from helpers import PYCOR, host_overlays, layer_of, run, tree_checksum, view_mounts


def test_lxd_init_is_safe_to_repeat_and_makes_profile_and_image(lxd_env, lxd_project, busybox_base, hooks_dir):
    run(PYCOR + ["lxd", "init"], env=lxd_env)  # bases imported since the session's init (other tests') get their image
    again = run(PYCOR + ["lxd", "init"], env=lxd_env).stdout
    assert "already set up" in again
    raw = run(["lxc", "profile", "get", "overlay", "raw.lxc", "--project", lxd_project]).stdout
    assert f"lxc.hook.pre-mount = {hooks_dir}/pycor-pre-mount" in raw
    images = json.loads(run(["lxc", "image", "list", "--project", lxd_project, "--format", "json"]).stdout)
    aliases = {a["name"] for i in images for a in i["aliases"]}
    assert f"pycor/{busybox_base}" in aliases
    assert all(i["size"] < 4096 for i in images)  # nearly empty: only the .pycor layout


def test_base_import_adds_lxd_image_when_lxd_is_set_up(lxd_env, lxd_project):
    run(PYCOR + ["base", "import", "late", "--busybox"], env=lxd_env)
    try:
        images = json.loads(run(["lxc", "image", "list", "--project", lxd_project, "--format", "json"]).stdout)
        assert "pycor/late" in {a["name"] for i in images for a in i["aliases"]}
    finally:
        run(PYCOR + ["base", "rm", "late"], env=lxd_env)
    images = json.loads(run(["lxc", "image", "list", "--project", lxd_project, "--format", "json"]).stdout)
    assert "pycor/late" not in {a["name"] for i in images for a in i["aliases"]}


def test_launch_boots_unprivileged_on_the_shared_root_owned_base(launch, store, busybox_base):
    from conftest import DAEMON_DIRS

    layer = layer_of(store, busybox_base)
    before = tree_checksum(layer)
    c = launch()
    assert c.sh("cat /proc/self/uid_map").stdout.split()[1] != "0"
    assert c.sh("stat -c %u:%g /etc/passwd /bin/busybox").stdout.split() == ["0:0", "0:0"]
    assert ".pycor" not in c.sh("ls -a /").stdout.split()
    c.sh("echo mine > /root/mine && rm /etc/group && chmod 777 /bin && echo x >> /etc/passwd")
    assert open(os.path.join(c.upper, "root/mine")).read() == "mine\n"
    assert not os.path.exists(os.path.join(layer, "root/mine"))
    # the hooks knew which daemon runs it, and where (from the daemon's own hook lines)
    volumes = os.path.join(store, "volumes")
    regs = [json.load(open(os.path.join(volumes, f))) for f in os.listdir(volumes)]
    assert [(r["runtime"], r["lxcpath"]) for r in regs if r["rootfs"] == c.rootfs] == [
        ("lxd" if c.cli == "lxc" else "incus", DAEMON_DIRS[c.cli])]
    c.lxc("stop", c.name)
    assert tree_checksum(layer) == before
    assert os.stat(os.path.join(layer, "etc/passwd")).st_uid == 0


def test_isolated_idmaps_share_the_base_without_copies(launch, store, busybox_base):
    layer = layer_of(store, busybox_base)
    bases = os.path.join(store, "bases")
    before, files_before = tree_checksum(layer), sum(len(f) for _, _, f in os.walk(bases))
    a = launch(extra=("-c", "security.idmap.isolated=true"))
    b = launch(extra=("-c", "security.idmap.isolated=true"))
    map_a = a.sh("cat /proc/self/uid_map").stdout.split()[1]
    map_b = b.sh("cat /proc/self/uid_map").stdout.split()[1]
    assert map_a != map_b
    mine = [v for v in view_mounts() if f"/{busybox_base}.1." in v]
    assert len(mine) >= 2
    for c, host_root in ((a, map_a), (b, map_b)):
        c.sh("touch /root/owned")  # on disk: the container's root as its map shifts it, or as it sees it
        assert str(os.stat(os.path.join(c.upper, "root/owned")).st_uid) == (host_root if c.shifted() else "0")
        assert c.sh("stat -c %u /etc/passwd").stdout.strip() == "0"
    assert tree_checksum(layer) == before
    assert sum(len(f) for _, _, f in os.walk(bases)) == files_before  # no shifted copy of the base


def test_exec_file_push_pull_and_restart_keep_changes(launch, session_dir):
    c = launch()
    src = os.path.join(session_dir, "pushed.txt")
    with open(src, "w") as f:
        f.write("pushed\n")
    c.lxc("file", "push", src, f"{c.name}/root/pushed.txt")
    assert c.sh("cat /root/pushed.txt").stdout == "pushed\n"
    c.sh("echo made-inside > /root/inside")
    out = os.path.join(session_dir, "pulled.txt")
    c.lxc("file", "pull", f"{c.name}/root/inside", out)
    assert open(out).read() == "made-inside\n"
    c.lxc("restart", c.name)
    assert c.sh("cat /root/pushed.txt /root/inside").stdout == "pushed\nmade-inside\n"
    c.lxc("stop", c.name)
    c.lxc("start", c.name)
    assert c.sh("cat /root/inside").stdout == "made-inside\n"


def test_snapshot_and_restore(launch):
    c = launch()
    c.sh("echo one > /root/state")
    c.snapshot("snap0")
    snap = c.rootfs.replace("/containers/", "/containers-snapshots/").rsplit("/rootfs", 1)[0] + "/snap0/rootfs"
    assert sorted(os.listdir(snap)) == [".pycor"]  # the snapshot holds only the container's own layer
    c.sh("echo two > /root/state && rm /etc/group")
    c.restore("snap0")
    if c.status() != "RUNNING":
        c.lxc("start", c.name)
    assert c.sh("cat /root/state").stdout == "one\n"
    assert c.sh("test -e /etc/group").returncode == 0


def test_copy_runs_on_the_same_base_with_the_changes(launch, busybox_base):
    a = launch()
    a.sh("echo from-a > /root/a && rm /etc/group")
    a.lxc("stop", a.name)
    b_name = a.name + "c"
    a.lxc("copy", a.name, b_name)
    b = a.other(b_name)
    assert sorted(os.listdir(b.rootfs)) == [".pycor"]
    b.lxc("start", b_name)
    assert b.sh("cat /root/a").stdout == "from-a\n"
    assert b.sh("test -e /etc/group", check=False).returncode != 0
    b.sh("echo from-b > /root/b")
    a.lxc("start", a.name)
    assert a.sh("test -e /root/b", check=False).returncode != 0


def test_export_then_import_holds_only_the_changes(launch, session_dir):
    a = launch()
    a.sh("echo exported > /root/e && rm /etc/group && mkdir -p /etc/init.d && rm -rf /etc/init.d && mkdir /etc/init.d")
    a.lxc("stop", a.name)
    backup = os.path.join(session_dir, f"{a.name}.tar.gz")
    a.lxc("export", a.name, backup, "--instance-only")
    with tarfile.open(backup) as tar:
        names = [m.name for m in tar.getmembers() if "/rootfs/" in m.name]
    assert names and all("/rootfs/.pycor" in n for n in names)
    assert os.path.getsize(backup) < 64 * 1024
    a.lxc("delete", a.name)
    a.lxc("import", backup)
    a.lxc("start", a.name)
    assert a.sh("cat /root/e").stdout == "exported\n"
    assert a.sh("test -e /etc/group", check=False).returncode != 0
    assert a.sh("ls /etc/init.d").stdout.strip() == ""


def test_rename_and_delete(launch, store, busybox_base):
    layer = layer_of(store, busybox_base)
    before = tree_checksum(layer)
    a = launch()
    a.sh("echo kept > /root/k")
    a.lxc("stop", a.name)
    new = a.name + "r"
    a.lxc("rename", a.name, new)
    r = a.other(new)
    r.lxc("start", new)
    assert r.sh("cat /root/k").stdout == "kept\n"
    rootfs = r.rootfs
    r.lxc("delete", "-f", new)
    assert not os.path.exists(rootfs)
    assert tree_checksum(layer) == before


def test_pycor_create_ls_rm_cover_lxd(lxd_env, lxd_project, busybox_base):
    name = "pycorlxd"
    run(PYCOR + ["create", name, "--base", busybox_base, "--runtime", "lxd"], env=lxd_env)
    try:
        rows = {r["name"]: r for r in json.loads(run(PYCOR + ["ls", "--format", "json"], env=lxd_env).stdout)}
        assert rows[name]["runtime"] == "lxd" and rows[name]["base"] == busybox_base and rows[name]["state"] == "STOPPED"
        proc = run(PYCOR + ["base", "rm", busybox_base], env=lxd_env, check=False)
        assert proc.returncode == 1 and name in proc.stderr
        run(["lxc", "start", name, "--project", lxd_project])
        proc = run(PYCOR + ["rm", name], env=lxd_env, check=False)
        assert proc.returncode == 1 and "running" in proc.stderr
        run(PYCOR + ["rm", name, "--force"], env=lxd_env)
        assert subprocess.run(["lxc", "info", name, "--project", lxd_project], capture_output=True).returncode != 0
    finally:
        subprocess.run(["lxc", "delete", "-f", name, "--project", lxd_project], capture_output=True)


def test_twenty_containers_at_once_share_one_view_and_leave_nothing(launch, busybox_base, store):
    # views of this store's base only: other test sessions may start containers meanwhile
    layer_ino = f".{os.stat(layer_of(store, busybox_base)).st_ino:x}"

    def view_mounts() -> list[str]:
        return [v for v in helpers.view_mounts() if v.endswith(layer_ino)]

    before_views, before_overlays = view_mounts(), host_overlays()
    containers = [launch(start=False) for _ in range(20)]
    cli, project = containers[0].cli, containers[0].project
    errors: list[str] = []

    def start(name: str) -> None:
        proc = subprocess.run([cli, "start", name, "--project", project], capture_output=True, text=True)
        if proc.returncode != 0:
            errors.append(f"{name}: {proc.stderr}")

    threads = [threading.Thread(target=start, args=(c.name,)) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for c in containers:
        assert c.sh("cat /etc/passwd").returncode == 0
    new_views = [v for v in view_mounts() if v not in before_views]
    assert len(new_views) <= 1  # one view for the shared map (or the one already there)
    assert len([v for v in view_mounts() if f"/{busybox_base}.1." in v]) == len(
        [v for v in before_views if f"/{busybox_base}.1." in v]) + len(new_views)
    run([cli, "stop", "--force", *[c.name for c in containers], "--project", project], timeout=300)
    assert [v for v in view_mounts() if v not in before_views] == []
    assert host_overlays() == before_overlays


def test_planted_links_in_a_stopped_lxd_container_touch_nothing_outside(launch, session_dir):
    c = launch()
    c.lxc("stop", "--force", c.name)  # busybox init, just started, may not handle SIGPWR yet
    outside = os.path.join(session_dir, "lxd-outside")
    os.makedirs(outside, exist_ok=True)
    os.chmod(outside, 0o777)
    layer_json = os.path.join(c.rootfs, ".pycor", "layer.json")
    os.unlink(layer_json)
    os.symlink("/etc/hostname", layer_json)
    proc = c.lxc("start", c.name, check=False)
    assert proc.returncode != 0
    log = c.lxc("info", c.name, "--show-log").stdout
    assert "pycor-pre-start: container" in log and "refusing to open" in log
    import shutil

    shutil.rmtree(c.upper)
    os.symlink(outside, c.upper)
    os.unlink(layer_json)
    with open(layer_json, "w") as f:  # a valid layer again, but upper now leads outside
        f.write('{"base": "busybox", "pin": null}')
    assert c.lxc("start", c.name, check=False).returncode != 0
    assert os.listdir(outside) == []
    assert c.status() == "STOPPED"


def _aliases(project: str, cli: str = "lxc") -> dict[str, str]:
    images = json.loads(run([cli, "image", "list", "--project", project, "--format", "json"]).stdout)
    return {a["name"]: i["fingerprint"] for i in images for a in i["aliases"]}


def test_another_store_never_touches_this_stores_lxd_images_and_profile(lxd_env, lxd_project, busybox_base, session_dir):
    other = dict(lxd_env, PYCOR_STORE=os.path.join(session_dir, "other-store"))
    shared = f"s{os.getpid()}"  # a base name both stores have, that no container uses
    run(PYCOR + ["base", "import", shared, "--busybox"], env=lxd_env)
    try:
        check_other_store_leaves_images_alone(lxd_env, lxd_project, other, shared)
    finally:
        run(PYCOR + ["base", "rm", shared], env=lxd_env)


def check_other_store_leaves_images_alone(lxd_env, lxd_project, other, shared):
    before = _aliases(lxd_project)
    raw_before = run(["lxc", "profile", "get", "overlay", "raw.lxc", "--project", lxd_project]).stdout
    assert f"pycor/{shared}" in before
    # a base of the same name and a new one, imported into another store: neither touches this store's images
    run(PYCOR + ["base", "import", shared, "--busybox"], env=other)
    run(PYCOR + ["base", "import", "otherbase", "--busybox"], env=other)
    assert _aliases(lxd_project) == before
    # removing the other store's base leaves this store's image of that name
    run(PYCOR + ["base", "rm", shared], env=other)
    assert _aliases(lxd_project) == before
    # 'lxd init' from the other store refuses to take over this store's profile
    proc = run(PYCOR + ["lxd", "init"], env=other, check=False)
    assert proc.returncode == 1
    assert "belongs to pycor store" in proc.stderr and lxd_env["PYCOR_STORE"] in proc.stderr
    assert run(["lxc", "profile", "get", "overlay", "raw.lxc", "--project", lxd_project]).stdout == raw_before
    assert _aliases(lxd_project) == before


def test_images_and_profile_say_which_store_they_belong_to(lxd_env, lxd_project, busybox_base):
    store = lxd_env["PYCOR_STORE"]
    assert run(["lxc", "profile", "get", "overlay", "user.pycor.store", "--project", lxd_project]).stdout.strip() == store
    fp = _aliases(lxd_project)[f"pycor/{busybox_base}"]
    props = json.loads(run(["lxc", "query", f"/1.0/images/{fp}?project={lxd_project}"]).stdout)["properties"]
    assert props["pycor.store"] == store and props["pycor.base"] == busybox_base
