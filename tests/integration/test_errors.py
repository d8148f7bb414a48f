"""Bad input: one clear error, and nothing made, touched or left mounted."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import PYCOR, host_overlays, run, tree_checksum

BAD_NAMES = ["..", "a/b", "a,b", "a:b", "", "x" * 65, "-lead", "sp ace"]


def test_create_on_unknown_base_makes_nothing(installed, env, lxcpath):
    proc = run(PYCOR + ["create", "nobase", "--base", "does-not-exist", "-P", lxcpath], check=False, env=env)
    assert proc.returncode == 1
    assert "unknown base 'does-not-exist'" in proc.stderr
    assert not os.path.exists(os.path.join(lxcpath, "nobase"))


def test_lxc_create_template_on_unknown_base_makes_nothing(installed, env, lxcpath, template):
    proc = run(["lxc-create", "-t", template, "-n", "nobase2", "-P", lxcpath, "--", "--base", "nope", "--store", env["PYCOR_STORE"]],
               check=False)
    assert proc.returncode != 0
    assert "unknown base 'nope'" in proc.stderr
    assert not os.path.exists(os.path.join(lxcpath, "nobase2"))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_container_name_is_refused(busybox_base, env, lxcpath, name):
    before = sorted(os.listdir(lxcpath))
    proc = run(PYCOR + ["create", "--base", busybox_base, "-P", lxcpath, "--", name], check=False, env=env)
    assert proc.returncode != 0
    assert "invalid container name" in proc.stderr
    assert sorted(os.listdir(lxcpath)) == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_base_name_is_refused(installed, env, store, name):
    before = os.listdir(os.path.join(store, "bases")) if os.path.isdir(os.path.join(store, "bases")) else []
    proc = run(PYCOR + ["base", "import", "--busybox", "--", name], check=False, env=env)
    assert proc.returncode == 1
    assert "invalid base name" in proc.stderr
    after = os.listdir(os.path.join(store, "bases")) if os.path.isdir(os.path.join(store, "bases")) else []
    assert after == before


def test_name_already_taken_is_one_error_and_keeps_the_first(make_container, env, lxcpath, busybox_base, template):
    c = make_container()
    with open(os.path.join(c.upper, "keep"), "w") as f:
        f.write("mine")
    proc = run(PYCOR + ["create", c.name, "--base", busybox_base, "-P", lxcpath], check=False, env=env)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    proc = run(["lxc-create", "-t", template, "-n", c.name, "-P", lxcpath, "--", "--base", busybox_base], check=False, env=env)
    assert proc.returncode != 0
    assert open(os.path.join(c.upper, "keep")).read() == "mine"


def test_import_from_missing_dir_and_non_rootfs_tar(installed, env, store, session_dir):
    proc = run(PYCOR + ["base", "import", "nodir", "--from-dir", "/nonexistent/rootfs"], check=False, env=env)
    assert proc.returncode == 1 and "/nonexistent/rootfs" in proc.stderr
    junk = os.path.join(session_dir, "junk")
    os.makedirs(os.path.join(junk, "docs"), exist_ok=True)
    with open(os.path.join(junk, "docs", "readme"), "w") as f:
        f.write("not an OS")
    tarball = os.path.join(session_dir, "junk.tar.gz")
    run(["tar", "-czf", tarball, "-C", junk, "."])
    proc = run(PYCOR + ["base", "import", "junk", "--from-tar", tarball], check=False, env=env)
    assert proc.returncode == 1 and "root filesystem" in proc.stderr
    assert "junk" not in os.listdir(os.path.join(store, "bases"))
    assert os.listdir(os.path.join(store, "staging")) == []


@pytest.mark.parametrize("hook", ["pre-start", "pre-mount", "post-stop"])
def test_hook_without_lxc_environment_fails_clearly(installed, hooks_dir, hook):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXC_")}
    proc = subprocess.run([f"{hooks_dir}/pycor-{hook}"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "LXC_NAME and LXC_ROOTFS_PATH are not set" in proc.stderr


def test_container_whose_base_was_removed_by_hand_refuses_to_start(make_container, env, lxcpath, store):
    run(PYCOR + ["base", "import", "doomed", "--busybox"], env=env)
    c = make_container(base="doomed")
    c.start()
    c.sh("echo precious > /root/data")
    c.stop()
    shutil.rmtree(os.path.join(store, "bases", "doomed"))
    before = host_overlays()
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    assert c.state() == "STOPPED"
    log = open(c.log).read()
    assert "pycor-pre-mount: container" in log and "base 'doomed', which is not in store" in log  # privileged: one hook does it all
    assert open(os.path.join(c.upper, "root/data")).read() == "precious\n"
    assert host_overlays() == before


def test_base_rm_refuses_while_used_and_names_users(make_container, env, lxcpath, store):
    run(PYCOR + ["base", "import", "used", "--busybox"], env=env)
    layer = os.path.join(store, "bases", "used", "versions", "1", "rootfs")
    before = tree_checksum(layer)
    c = make_container(base="used")
    proc = run(PYCOR + ["base", "rm", "used", "-P", lxcpath], check=False, env=env)
    assert proc.returncode == 1 and c.name in proc.stderr
    assert tree_checksum(layer) == before
    run(PYCOR + ["rm", c.name, "-P", lxcpath], env=env)
    run(PYCOR + ["base", "rm", "used", "-P", lxcpath], env=env)
    assert not os.path.exists(os.path.join(store, "bases", "used"))


def test_fifo_planted_as_layer_metadata_fails_the_start_instead_of_hanging(make_container):
    c = make_container()
    meta = os.path.join(c.rootfs, ".pycor", "layer.json")
    os.unlink(meta)
    os.mkfifo(meta)
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    assert "layer.json is not a regular file" in open(c.log).read()


@pytest.mark.parametrize("planted", ["upper", "work", "layer.json"])
def test_planted_symlink_in_layer_stops_the_start_and_touches_nothing_outside(make_container, session_dir, planted):
    c = make_container()
    outside = os.path.join(session_dir, f"outside-{planted}")
    os.makedirs(outside, exist_ok=True)
    target = os.path.join(c.rootfs, ".pycor", planted)
    if os.path.isdir(target):
        shutil.rmtree(target)
    else:
        os.unlink(target)
    os.symlink(outside, target)
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0
    assert c.state() == "STOPPED"
    assert os.listdir(outside) == []
    assert "pycor-pre-mount: container" in open(c.log).read()  # privileged: pre-mount --prepare
