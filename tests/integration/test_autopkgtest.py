"""Debian's own test runner on pycor: autopkgtest's LXC backend runs a real package's tests
(hello's: its own smoke test and its upstream test suite) on an ephemeral clone of a pycor
container of the bootable base, and leaves the container it cloned as it was.

autopkgtest-virt-lxc clones its template from LXC's default lxcpath (it passes -P only to the
clone), so the test runs it in a private mount namespace with a folder of its own bound over
/var/lib/lxc: the host's containers are never seen nor touched."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO, host_suite

from helpers import PYCOR, run, tree_checksum
from pycor_hooks.debian import apt_mirror

pytestmark = pytest.mark.slow

CLONE_PREFIX = "autopkgtest-lxc-"  # how autopkgtest-virt-lxc names its clones
DEFAULT_LXCPATH = "/var/lib/lxc"


def in_private_lxcpath(lxcpath: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """argv in a private mount namespace where lxcpath is LXC's default lxcpath."""
    script = f"mount --bind {shlex.quote(lxcpath)} {DEFAULT_LXCPATH} && exec \"$@\""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def clones(lxcpath: str) -> list[str]:
    return sorted(n for n in os.listdir(lxcpath) if n.startswith(CLONE_PREFIX))


def autopkgtest_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "autopkgtest"], capture_output=True, text=True)
    assert proc.returncode == 0 and shutil.which("autopkgtest"), "autopkgtest is not installed: run scripts/setup.sh"
    return proc.stdout


def test_autopkgtest_runs_hellos_tests_on_an_ephemeral_clone_of_a_pycor_container(bootable_base, env, session_dir):
    print(f"autopkgtest {autopkgtest_version()}")
    run(["bash", os.path.join(REPO, "scripts", "lxc-net-up.sh")])  # the testbed fetches hello's source and build tools
    lxcpath = os.path.join(session_dir, "autopkgtest-lxc")
    os.makedirs(lxcpath)
    testbed = "testbed"
    run(PYCOR + ["create", testbed, "--base", bootable_base, "-P", lxcpath, "--network", "default"], env=env)
    try:
        layer = os.path.join(lxcpath, testbed, "rootfs", ".pycor")
        before = tree_checksum(layer)
        source = f"deb-src {apt_mirror()} {host_suite()} main"
        proc = in_private_lxcpath(lxcpath, [
            "autopkgtest", "hello", "--setup-commands",
            f"echo '{source}' > /etc/apt/sources.list.d/pycor-src.list && apt-get update -q",
            "--", "lxc", "--ephemeral", testbed], timeout=900)
        assert proc.returncode == 0, f"autopkgtest exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        results = dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)  # "TEST  RESULT"
        assert results.get("command1") == "PASS" and results.get("upstream-tests") == "PASS", proc.stdout[-3000:]
        assert clones(lxcpath) == []  # the ephemeral clone went with its stop
        assert tree_checksum(layer) == before  # the testbed it was cloned from is as it was
    finally:
        for name in clones(lxcpath):  # what a failed run left: stopped and destroyed, in the same private lxcpath
            in_private_lxcpath(lxcpath, ["lxc-stop", "-k", "-n", name], timeout=60)
            in_private_lxcpath(lxcpath, ["lxc-destroy", "-f", "-n", name], timeout=60)
        subprocess.run(["lxc-destroy", "-f", "-n", testbed, "-P", lxcpath], capture_output=True)
