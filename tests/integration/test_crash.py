"""Crash safety: every long command killed at named steps (PYCOR_FAULT=STEP, as kill -9), then run again.

After each kill the store must be consistent (Store.check finds no damage),
the same command run again must succeed, and afterwards nothing may be left:
no staging directory, no .new/.rm, no mount under the store, no builder.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid

import pytest

from helpers import PYCOR, run, wait_for
from pycor_hooks.store import Store


def pycor(env, *args, check=True, fault=None):
    return run(PYCOR + list(args), env=dict(env, PYCOR_FAULT=fault) if fault else env, check=check)


@pytest.fixture
def base(installed, env):
    name = f"k{uuid.uuid4().hex[:6]}"
    pycor(env, "base", "import", name, "--busybox")
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def damage(store: str) -> list[str]:
    return [p for p in Store(store).check() if not p.startswith(("leftover ", "mount left "))]


def processes_under(path: str) -> list[str]:
    """Command lines of processes naming path (a builder left running in a staging directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if path in cmd:
                found.append(cmd)
    return found


def run_states_under(path: str) -> list[str]:
    """Records of starts (under /run/pycor) of containers whose rootfs is below path."""
    found = []
    for entry in os.listdir("/run/pycor/containers"):
        try:
            with open(os.path.join("/run/pycor/containers", entry)) as f:
                if json.load(f)["rootfs"].startswith(path + "/"):
                    found.append(entry)
        except (OSError, ValueError, KeyError):
            continue
    return found


def assert_clean(store: str) -> None:
    assert Store(store).check() == []
    staging = os.path.join(store, "staging")
    assert processes_under(staging) == []
    assert run_states_under(staging) == []


def killed(env, *args, fault: str) -> None:
    """Run a pycor command that dies at fault (its output to a file: an orphaned child may keep a pipe open)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(PYCOR + list(args), env=dict(env, PYCOR_FAULT=fault), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, timeout=300)
        out.seek(0)
        assert proc.returncode == -9, out.read().decode(errors="replace")


def two_unneeded_versions(env, base):
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
    pycor(env, "base", "squash", base)  # 3, one layer: 1 and 2 are needed by nothing


@pytest.mark.parametrize("fault", ["import.staging", "import.built", "publish.base-assembled"])
def test_import_killed_then_run_again(env, store, installed, fault):
    name = f"i{uuid.uuid4().hex[:6]}"
    try:
        killed(env, "base", "import", name, "--busybox", fault=fault)
        assert damage(store) == [] and not os.path.exists(os.path.join(store, "bases", name))
        pycor(env, "base", "import", name, "--busybox")
        assert_clean(store)
    finally:
        subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


@pytest.mark.parametrize("fault", ["update.built", "update.staged", "publish.version-renamed", "publish.current-linked"])
def test_update_killed_then_run_again(env, store, base, fault):
    cmd = ("base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
    killed(env, *cmd, fault=fault)
    assert damage(store) == []
    pycor(env, *cmd)
    assert_clean(store)
    assert open(os.path.join(store, "bases", base, "current", "rootfs", "etc", "version")).read() == "v2\n"


def test_update_killed_while_its_builder_runs_the_command_stops_the_builder(env, store, base):
    killed(env, "base", "update", base, "--", "/bin/sh", "-c", "sleep 600", fault="update.builder")
    staging = os.path.join(store, "staging")
    wait_for(lambda: any("lxc-execute" in c for c in processes_under(staging)), what="the orphaned builder")
    assert damage(store) == []
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
    wait_for(lambda: processes_under(staging) == [], what="the builder to go")
    assert_clean(store)


@pytest.mark.parametrize("fault", ["squash.mounted", "squash.staged", "publish.current-linked"])
def test_squash_killed_then_run_again(env, store, base, fault):
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version")
    killed(env, "base", "squash", base, fault=fault)
    assert damage(store) == []
    pycor(env, "base", "squash", base)
    assert_clean(store)


@pytest.mark.parametrize("fault", ["commit.mounted", "commit.staged", "publish.base-assembled"])
def test_commit_killed_then_run_again(env, store, base, make_container, fault):
    c = make_container(base=base)
    c.start()
    c.sh("echo mine > /root/mine")
    c.stop()
    target = f"m{uuid.uuid4().hex[:6]}"
    try:
        killed(env, "commit", c.name, "--as", target, "-P", c.lxcpath, fault=fault)
        assert damage(store) == [] and not os.path.exists(os.path.join(store, "bases", target))
        pycor(env, "commit", c.name, "--as", target, "-P", c.lxcpath)
        assert_clean(store)
        assert open(os.path.join(store, "bases", target, "current", "rootfs", "root", "mine")).read() == "mine\n"
    finally:
        subprocess.run(PYCOR + ["base", "rm", target], env=env, capture_output=True)


def test_gc_killed_then_run_again(env, store, base, lxcpath):
    two_unneeded_versions(env, base)
    killed(env, "base", "gc", "-P", lxcpath, fault="gc.renamed")
    assert damage(store) == []
    pycor(env, "base", "gc", "-P", lxcpath)
    assert_clean(store)
    assert sorted(os.listdir(os.path.join(store, "bases", base, "versions"))) == ["3"]


def test_base_rm_killed_then_the_next_command_finishes_it(env, store, installed, lxcpath):
    name = f"r{uuid.uuid4().hex[:6]}"
    pycor(env, "base", "import", name, "--busybox")
    killed(env, "base", "rm", name, "-P", lxcpath, fault="base-rm.renamed")
    assert damage(store) == [] and name not in Store(store).base_names()
    pycor(env, "base", "gc", "-P", lxcpath)  # any command taking the store lock
    assert_clean(store)


def test_create_killed_then_run_again(env, store, base, lxcpath, template):
    name = f"c{uuid.uuid4().hex[:8]}"
    try:
        proc = pycor(env, "create", name, "--base", base, "-P", lxcpath, "--network", "none", check=False, fault="create.layer")
        assert proc.returncode == 1  # the template died; lxc-create reports it
        assert damage(store) == []
        pycor(env, "create", name, "--base", base, "-P", lxcpath, "--network", "none")
        assert_clean(store)
        run(["lxc-start", "-n", name, "-P", lxcpath])
        run(["lxc-wait", "-n", name, "-P", lxcpath, "-s", "RUNNING", "-t", "20"])
    finally:
        subprocess.run(["lxc-stop", "-n", name, "-P", lxcpath, "-k"], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", name, "-P", lxcpath], capture_output=True)


def test_rm_killed_then_run_again(env, store, base, make_container):
    c = make_container(base=base)
    c.start()
    killed(env, "rm", c.name, "-f", "-P", c.lxcpath, fault="rm.stopped")
    assert damage(store) == []
    pycor(env, "rm", c.name, "-f", "-P", c.lxcpath)
    assert not os.path.exists(c.rootfs)
    assert_clean(store)


@pytest.mark.parametrize("fault", ["reset.upper-aside", "reset.upper-emptied", "reset.work-aside", "reset.work-emptied"])
def test_reset_killed_then_run_again(env, store, base, make_container, fault):
    c = make_container(base=base)
    c.start()
    c.sh("echo gone > /root/gone")
    c.stop()
    killed(env, "reset", c.name, "-P", c.lxcpath, fault=fault)
    if fault.startswith("reset.upper"):  # changes set aside: no start may see them half gone
        assert c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False).returncode != 0
        log = open(c.log).read()
        assert "a 'pycor reset' was interrupted" in log and f"finish it: 'pycor reset {c.name}'" in log
    pycor(env, "reset", c.name, "-P", c.lxcpath)
    assert sorted(os.listdir(os.path.join(c.rootfs, ".pycor"))) == ["layer.json", "upper", "work"]
    assert os.listdir(c.upper) == []
    c.start()
    assert c.sh("test -e /root/gone", check=False).returncode != 0
    c.stop()
    assert_clean(store)
