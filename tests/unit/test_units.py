"""Pure logic: names, overlay option strings, layer metadata, hook arguments, template lines."""


from __future__ import annotations

import os

import pytest

from pycor_hooks import hooks, layer, names, overlay, template
from pycor_hooks.errors import PycorError
from pycor_hooks.store import Store


@pytest.mark.parametrize("name", ["web1", "debian12", "a", "A.b_c-d", "x" * 64])
def test_valid_names(name):
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a,b", "a:b", "a=b", " a", "a b", "-a", ".a", "x" * 65, "é"])
def test_invalid_names_say_what_to_do(name):
    with pytest.raises(PycorError) as e:
        names.check_name(name, "base name")
    assert "invalid base name" in str(e.value) and "letters, digits" in str(e.value)


@pytest.mark.parametrize("v,ok", [("1", True), ("42", True), ("0", False), ("01", False), ("-1", False), ("a", False), ("", False)])
def test_version_rule(v, ok):
    if ok:
        assert names.check_version(v) == v
    else:
        with pytest.raises(PycorError):
            names.check_version(v)


def test_overlay_options_stack_top_first_and_escape_special_characters():
    opts = overlay.overlay_options(["/b/v2", "/b,x/v:1"], "/c/up", "/c/work")
    assert opts == "lowerdir=/b/v2:/b\\,x/v\\:1,upperdir=/c/up,workdir=/c/work"
    assert overlay.overlay_options(["/l"], "/u", "/w", userxattr=True).endswith(",userxattr")
    with pytest.raises(ValueError):
        overlay.overlay_options([], "/u", "/w")


def test_layer_metadata_is_validated():
    assert layer.parse_meta(b'{"base": "debian12", "pin": "3"}', "x") == layer.LayerMeta("debian12", "3")
    assert layer.parse_meta(b'{"base": "debian12", "pin": null}', "x").pin is None
    for bad in [b"{", b"[]", b'{"base": "../etc"}', b'{"base": "ok", "pin": "../1"}', b'{"pin": "1"}']:
        with pytest.raises(PycorError):
            layer.parse_meta(bad, "x")


def test_rootfs_dir_accepts_dir_and_btrfs_backends_only():
    assert layer.rootfs_dir("dir:/var/lib/lxc/a/rootfs") == "/var/lib/lxc/a/rootfs"
    assert layer.rootfs_dir("btrfs:/var/lib/lxc/a/rootfs") == "/var/lib/lxc/a/rootfs"  # a subvolume, for --size
    assert layer.rootfs_dir("/var/lib/lxc/a:b/rootfs") == "/var/lib/lxc/a:b/rootfs"
    for bad in ["overlay:/a:/b", "lvm:/dev/x", "relative/path"]:
        with pytest.raises(PycorError):
            layer.rootfs_dir(bad)


def test_hooks_run_an_overlay_clone_on_its_original_layer():
    assert layer.hook_rootfs("overlay:/l/orig/rootfs:/l/clone/delta0") == "/l/orig/rootfs"
    assert layer.hook_rootfs("dir:/l/a/rootfs") == "/l/a/rootfs"


def test_layer_meta_keeps_volumes_through_pin_and_moves():
    meta = layer.parse_meta(b'{"base": "b", "volumes": ["/srv/v"], "ephemeral": true, "size": 1024}', "x")
    assert meta.but(pin="2").volumes == ["/srv/v"] and meta.but(based_on="2").ephemeral and meta.size == 1024
    assert layer.parse_meta(b'{"base": "b"}', "x").volumes == []
    with pytest.raises(PycorError):
        layer.parse_meta(b'{"base": "b", "volumes": ["/a/../etc"]}', "x")


def test_hook_arguments_for_hook_versions_0_and_1(monkeypatch):
    monkeypatch.delenv("LXC_HOOK_TYPE", raising=False)
    assert hooks.parse_args("pre-mount", ["web1", "lxc", "pre-mount"]) == (None, False)
    assert hooks.parse_args("pre-mount", ["--store", "/s p", "web1", "lxc", "pre-mount"]) == ("/s p", False)
    assert hooks.parse_args("pre-mount", ["--prepare", "--store", "/s", "web1", "lxc", "pre-mount"]) == ("/s", True)
    with pytest.raises(PycorError, match="runs it as post-stop"):
        hooks.parse_args("pre-mount", ["web1", "lxc", "post-stop"])
    monkeypatch.setenv("LXC_HOOK_TYPE", "pre-start")
    assert hooks.parse_args("pre-start", []) == (None, False)
    with pytest.raises(PycorError):
        hooks.parse_args("pre-mount", [])
    with pytest.raises(PycorError, match="unknown option"):
        hooks.parse_args("pre-start", ["--bogus"])


def test_hook_runtime_of_a_raw_lxc_config_is_lxc_and_its_lxcpath():
    # LXD and Incus are recognised by their own hook lines inside the config: tests/test_incus.py
    assert hooks.runtime_info("/srv/lxc/web1/config")[:2] == ("lxc", "/srv/lxc")


def test_template_hook_lines_quote_store_paths(tmp_path):
    from pycor_hooks.lxcconfig import hook_lines

    default = Store("/var/lib/pycor")
    assert hook_lines("/usr/share/lxc/hooks", default.hook_arg)[1] == "lxc.hook.pre-mount = /usr/share/lxc/hooks/pycor-pre-mount"
    odd = Store(str(tmp_path / "my store"))
    line = hook_lines("/h", odd.hook_arg)[0]
    assert line == f"lxc.hook.pre-start = /h/pycor-pre-start --store '{tmp_path}/my store'"


def test_template_reports_missing_network_links():
    keys = {"lxc.net.0.type": ["veth"], "lxc.net.0.link": ["no-such-br0"], "lxc.net.1.link": ["lo"]}
    assert template.missing_links(keys) == ["no-such-br0"]
    assert os.path.exists("/sys/class/net/lo")


def test_idmap_root_and_host_to_ns_cover_every_range():
    from pycor_hooks.idmap import IdMap

    m = IdMap.parse_lxc_config("lxc.idmap = u 0 100000 1000\nlxc.idmap = u 1000 1000 1\n"
                               "lxc.idmap = u 1001 101001 64535\nlxc.idmap = g 0 200000 65536\n").check()
    assert m.root() == (100000, 200000)
    assert [m.host_to_ns("u", i) for i in (100000, 100999, 1000, 101001, 165535, 7)] == [0, 999, 1000, 1001, 65535, 7]
    assert m.host_to_ns("g", 200033) == 33


def test_walk_never_follows_a_directory_swapped_for_a_symlink(tmp_path):
    from pycor_hooks.fsutil import walk

    (tmp_path / "tree" / "a" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "b" / "f").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    seen = []
    for rel, st, _, _ in walk(str(tmp_path / "tree"), strict=False):
        seen.append(rel)
        if rel == "a":  # swap a/b for a link out of the tree after it was listed
            os.rename(tmp_path / "tree" / "a" / "b", tmp_path / "moved")
            os.symlink(tmp_path / "outside", tmp_path / "tree" / "a" / "b")
    assert "a/b/secret" not in seen and seen[:2] == ["a", "a/b"]


def test_publish_version_refuses_when_current_moved(tmp_path):
    from pycor_hooks.store import Store

    store = Store(str(tmp_path / "store"))

    def staged() -> str:
        s = store.new_staging("t")
        os.makedirs(os.path.join(s, "rootfs", "etc"))
        return s

    store.publish_base("b", staged(), "test", 1, [])
    store.publish_version("b", staged(), "1", "update", 1, expected_current="1")
    with pytest.raises(PycorError, match="moved to version 2"):
        store.publish_version("b", staged(), "1", "update", 1, expected_current="1")
    assert store.current("b") == "2" and [v.version for v in store.versions("b")] == ["1", "2"]


def test_doctor_names_the_inotify_limit_that_stops_many_booted_containers(tmp_path):
    """Every privileged container's systemd takes inotify instances from host root's one budget:
    Debian's 128 lets about 17 containers boot; the 18th's systemd dies."""
    from pycor_hooks import doctor

    (tmp_path / "fs" / "inotify").mkdir(parents=True)
    limit = tmp_path / "fs" / "inotify" / "max_user_instances"
    limit.write_text("128\n")
    check = doctor.limits_check(str(tmp_path))
    assert not check.ok and not check.required
    assert "fs.inotify.max_user_instances" in check.detail and "128" in check.detail
    assert "sysctl -w fs.inotify.max_user_instances=1048576" in check.fix
    limit.write_text("1048576\n")
    assert doctor.limits_check(str(tmp_path)).ok


def test_config_lines_end_only_at_newlines_as_in_lxc():
    """A value holding \\x85, \\x0b or U+2028 stays inside its line, as LXC reads it: it cannot pose
    as a daemon's callhook line or an idmap line."""
    from pycor_hooks.idmap import IdMap

    forged = 'lxc.environment = A\x85lxc.hook.pre-start = /x callhook /var/lib/evil "p" "n" start\n'
    assert hooks.scan_config(forged) == (None, False)
    assert IdMap.parse_lxc_config("lxc.environment = A\u2028lxc.idmap = u 0 100000 65536\n").is_empty


def test_a_transient_lock_whose_file_went_with_its_holder_is_taken_again_by_the_path(tmp_path, monkeypatch):
    """A locker that opened the file just before its holder removed it must not hold the removed file
    while a third locker holds the file now at the path (two holders of one lock)."""
    import fcntl

    from pycor_hooks import locks
    from pycor_hooks.errors import Busy

    path = str(tmp_path / "layer-x")
    holder = locks.Flock(path, transient=True).__enter__()
    third: list[locks.Flock] = []
    real_flock = fcntl.flock
    armed = [True]

    def late_flock(fd: int, op: int) -> None:  # the holder lets go, and a third locker comes, between open and flock
        if armed:
            armed.clear()
            holder.__exit__()
            third.append(locks.Flock(path, transient=True).__enter__())
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", late_flock)
    with pytest.raises(Busy):
        locks.Flock(path, wait=False, transient=True).__enter__()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    third[0].__exit__()
    assert not os.path.exists(path)  # gone with its last holder
    with locks.Flock(path, transient=True):
        assert os.path.exists(path)
    assert not os.path.exists(path)
    with locks.Flock(path):  # not transient: stays
        pass
    assert os.path.exists(path)


def test_a_lock_sweep_removes_only_transient_lock_files_nobody_holds(tmp_path, monkeypatch):
    from pycor_hooks import locks

    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path))
    for name in ("layer-a", "layer-b", "name-c", "rollout-d"):
        (tmp_path / name).write_text("")
    with locks.Flock(str(tmp_path / "layer-b")):  # held: stays
        assert locks.sweep() == 2
    assert sorted(os.listdir(tmp_path)) == ["layer-b", "rollout-d"]


def test_a_transient_lock_left_by_a_failure_stays_for_a_child_that_holds_it(tmp_path):
    """pycor create passes the name lock to lxc-create: interrupted, it must not remove the file while
    the child still holds it, or a second command would take a fresh one and run alongside."""
    import subprocess

    from pycor_hooks import locks
    from pycor_hooks.errors import Busy

    path = str(tmp_path / "name-x")
    child = None
    try:
        with pytest.raises(KeyboardInterrupt):
            with locks.Flock(path, transient=True) as held:
                child = subprocess.Popen(["sleep", "30"], pass_fds=(held.fd,))
                raise KeyboardInterrupt
        with pytest.raises(Busy):
            locks.Flock(path, wait=False, transient=True).__enter__()
    finally:
        if child:
            child.kill()
            child.wait()
    with locks.Flock(path, wait=False, transient=True):  # the child gone, the lock is free again
        pass
    assert not os.path.exists(path)


def test_a_lock_sweep_leaves_what_is_not_a_lock_file(tmp_path, monkeypatch):
    from pycor_hooks import locks

    monkeypatch.setattr(locks, "LOCK_DIR", str(tmp_path))
    (tmp_path / "layer-dir").mkdir()
    (tmp_path / "layer-link").symlink_to(tmp_path / "elsewhere")
    assert locks.sweep() == 0
    assert sorted(os.listdir(tmp_path)) == ["layer-dir", "layer-link"]


def test_base_update_reads_its_options_before_the_command_wherever_they_stand():
    from pycor_hooks.cli import parser
    from pycor_hooks.commands.builds import command_after_options

    for argv, want in ((["base", "update", "b", "--keep-apt-lists", "--", "apt-get", "-y", "upgrade"], True),
                       (["base", "update", "--keep-apt-lists", "b", "--", "apt-get", "-y", "upgrade"], True),
                       (["base", "update", "b", "--", "apt-get", "-y", "upgrade"], False)):
        args = parser(argv).parse_args(argv)
        assert command_after_options(args.cmd, args.keep_apt_lists) == (["apt-get", "-y", "upgrade"], want), argv
    with pytest.raises(PycorError, match="unknown option '--bogus'"):
        command_after_options(["--bogus", "--", "true"], False)
    assert command_after_options(["apt-get", "-y", "upgrade"], False) == (["apt-get", "-y", "upgrade"], False)
