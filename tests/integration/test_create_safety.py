"""Creating a container never deletes what existed before it ran (issue 8, items 1 and 2).

lxc-create removes the container directory, and a `-B dir --dir` rootfs, when
its template fails (verified on LXC 5.0.2). So pycor checks before it calls
lxc-create, adopts an existing layer only when asked (--adopt), and its
template moves pre-existing data aside before it ever fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import Container, destroy

from helpers import PYCOR, run, tree_checksum, wait_for
from pycor_hooks import locks

# -- pure logic ---------------------------------------------------------------------


def _mkdir(path):  # type: ignore[no-untyped-def]
    path.mkdir()
    (path / "f").write_text("x")
    return path


# -- real LXC ------------------------------------------------------------------------


@pytest.fixture
def kept(lxcpath: str, session_dir: str) -> Iterator[None]:
    """Remove the directories pycor kept aside during a test, and containers it re-created."""
    yield
    for path in glob.glob(os.path.join(lxcpath, ".*.pycor-kept-*")) + glob.glob(os.path.join(session_dir, ".*.pycor-kept-*")):
        shutil.rmtree(path, ignore_errors=True)


def lose_config(c: Container) -> str:
    """The container's LXC config vanishes (deleted, moved, a bad restore); its layer stays. Returns the layer's checksum."""
    os.unlink(c.config)
    return tree_checksum(os.path.join(c.rootfs, ".pycor"))


def write_change(c: Container, text: str = "mine") -> None:
    c.start()
    try:
        c.sh(f"echo {text} > /keep")
    finally:
        c.stop()


def one_error(stderr: str) -> str:
    """The single 'pycor: error:' line (no doubled prefix), with its hint."""
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "error: error:" not in stderr, stderr
    return stderr


def create(name: str, base: str, lxcpath: str, env: dict[str, str], *extra: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return run(PYCOR + ["create", name, "--base", base, "-P", lxcpath, "--network", "none", *extra], check=check, env=env)


def test_create_over_a_lost_config_refuses_and_keeps_the_changes(make_container, env, lxcpath, busybox_base):
    c = make_container()
    write_change(c)
    before = lose_config(c)
    proc = create(c.name, busybox_base, lxcpath, env)
    assert proc.returncode == 1
    assert "--adopt" in one_error(proc.stderr) and c.name in proc.stderr
    assert tree_checksum(os.path.join(c.rootfs, ".pycor")) == before
    assert not os.path.exists(c.config)


def test_create_over_a_foreign_directory_refuses_and_touches_nothing(env, lxcpath, busybox_base):
    name = f"f{uuid.uuid4().hex[:8]}"
    path = os.path.join(lxcpath, name)
    os.makedirs(path)
    try:
        with open(os.path.join(path, "notes"), "w") as f:
            f.write("not a container")
        for extra in ((), ("--adopt",)):
            proc = create(name, busybox_base, lxcpath, env, *extra)
            assert proc.returncode == 1, proc.stderr
            one_error(proc.stderr)
            assert os.listdir(path) == ["notes"]
    finally:
        shutil.rmtree(path)


def test_adopt_brings_the_container_back_with_its_changes(make_container, env, lxcpath, busybox_base):
    c = make_container()
    write_change(c, "before-the-loss")
    upper = tree_checksum(c.upper)
    lose_config(c)
    create(c.name, busybox_base, lxcpath, env, "--adopt", check=True)
    assert tree_checksum(c.upper) == upper  # byte for byte, before it starts
    c.start()
    try:
        assert c.sh("cat /keep").stdout.strip() == "before-the-loss"
    finally:
        c.stop()


def test_adopt_refuses_another_base_or_a_damaged_layer_before_lxc_create(make_container, env, lxcpath, busybox_base, store):
    other = f"bb{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["base", "import", other, "--busybox"], env=env)
    try:
        c = make_container()
        write_change(c)
        before = lose_config(c)
        proc = create(c.name, other, lxcpath, env, "--adopt")
        assert proc.returncode == 1 and busybox_base in one_error(proc.stderr)
        assert tree_checksum(os.path.join(c.rootfs, ".pycor")) == before and not os.path.exists(c.config)
        meta = os.path.join(c.rootfs, ".pycor", "layer.json")
        with open(meta, "w") as f:
            f.write("{not json")
        before = tree_checksum(os.path.join(c.rootfs, ".pycor"))
        proc = create(c.name, busybox_base, lxcpath, env, "--adopt")
        assert proc.returncode == 1 and "layer.json" in one_error(proc.stderr)
        assert tree_checksum(os.path.join(c.rootfs, ".pycor")) == before and not os.path.exists(c.config)
    finally:
        run(PYCOR + ["base", "rm", other], env=env, check=False)


def test_adopt_with_nothing_to_adopt_is_refused(env, lxcpath, busybox_base):
    name = f"n{uuid.uuid4().hex[:8]}"
    proc = create(name, busybox_base, lxcpath, env, "--adopt")
    assert proc.returncode == 1 and "nothing to adopt" in one_error(proc.stderr)
    assert not os.path.exists(os.path.join(lxcpath, name))


def test_raw_lxc_create_over_a_lost_config_keeps_the_layer_aside(make_container, env, lxcpath, busybox_base, template, kept):
    c = make_container()
    write_change(c, "raw")
    before = lose_config(c)
    proc = run(["lxc-create", "-t", template, "-n", c.name, "-P", lxcpath, "--", "--base", busybox_base], check=False, env=env)
    assert proc.returncode != 0
    aside = glob.glob(os.path.join(lxcpath, f".{c.name}.pycor-kept-*"))
    assert len(aside) == 1 and aside[0] in proc.stderr and "--adopt" in proc.stderr
    assert tree_checksum(os.path.join(aside[0], "rootfs", ".pycor")) == before
    # the hint works: put it back, adopt it, it starts with its changes
    assert not os.path.exists(os.path.join(lxcpath, c.name))
    os.rename(aside[0], os.path.join(lxcpath, c.name))
    create(c.name, busybox_base, lxcpath, env, "--adopt", check=True)
    c.start()
    try:
        assert c.sh("cat /keep").stdout.strip() == "raw"
    finally:
        c.stop()


def test_raw_lxc_create_with_adopt_keeps_the_layer(make_container, env, lxcpath, busybox_base, template, session_dir):
    c = make_container()
    write_change(c, "adopted")
    before = lose_config(c)
    conf = os.path.join(session_dir, f"{c.name}.conf")
    with open(conf, "w") as f:
        f.write("lxc.net.0.type = empty\n")
    run(["lxc-create", "-t", template, "-n", c.name, "-P", lxcpath, "-f", conf, "--", "--base", busybox_base, "--adopt"], env=env)
    os.unlink(conf)
    assert tree_checksum(os.path.join(c.rootfs, ".pycor")) == before
    c.start()
    try:
        assert c.sh("cat /keep").stdout.strip() == "adopted"
    finally:
        c.stop()


def test_raw_lxc_create_on_an_existing_dir_does_not_delete_it(env, lxcpath, busybox_base, template, session_dir, kept):
    name = f"d{uuid.uuid4().hex[:8]}"
    data = os.path.join(session_dir, f"data-{name}")
    os.makedirs(os.path.join(data, "sub"))
    with open(os.path.join(data, "sub", "precious"), "w") as f:
        f.write("precious")
    before = tree_checksum(data)
    try:
        proc = run(["lxc-create", "-t", template, "-n", name, "-P", lxcpath, "-B", "dir", "--dir", data,
                    "--", "--base", busybox_base], check=False, env=env)
        assert proc.returncode != 0
        aside = glob.glob(os.path.join(session_dir, f".data-{name}.pycor-kept-*"))
        assert len(aside) == 1 and aside[0] in proc.stderr
        assert tree_checksum(aside[0]) == before
        assert not os.path.exists(os.path.join(lxcpath, name))
        assert not glob.glob(os.path.join(lxcpath, f".{name}.pycor-kept-*"))  # lxc-create's own directory held nothing
    finally:
        destroy(name, lxcpath)
        shutil.rmtree(data, ignore_errors=True)


def test_pycor_create_on_a_non_empty_dir_refuses_before_lxc_create(env, lxcpath, busybox_base, session_dir):
    name = f"d{uuid.uuid4().hex[:8]}"
    data = os.path.join(session_dir, f"data-{name}")
    os.makedirs(data)
    with open(os.path.join(data, "precious"), "w") as f:
        f.write("precious")
    try:
        proc = create(name, busybox_base, lxcpath, env, "--dir", data)
        assert proc.returncode == 1 and data in one_error(proc.stderr)
        assert os.listdir(data) == ["precious"]
        assert not os.path.exists(os.path.join(lxcpath, name))
    finally:
        destroy(name, lxcpath)
        shutil.rmtree(data, ignore_errors=True)


def test_twenty_parallel_creates_of_one_name_leave_exactly_one_container(env, lxcpath, busybox_base, installed):
    name = f"p{uuid.uuid4().hex[:8]}"
    argv = PYCOR + ["create", name, "--base", busybox_base, "-P", lxcpath, "--network", "none"]
    try:
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for _ in range(20)]
        results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.stdout.close()  # type: ignore[union-attr]
            p.stderr.close()  # type: ignore[union-attr]
        winners = [err for rc, err in results if rc == 0]
        losers = [err for rc, err in results if rc != 0]
        assert len(winners) == 1, results
        assert len(losers) == 19
        for err in losers:
            assert "already exists" in one_error(err), err
        c = Container(name, lxcpath, env)
        c.start()
        try:
            assert c.state() == "RUNNING"
        finally:
            c.stop()
    finally:
        destroy(name, lxcpath)


def waits_on_lock(pid: int, lock_path: str) -> bool:
    """Whether process pid is blocked in flock on lock_path (a '->' waiter line in /proc/locks)."""
    ino = os.stat(lock_path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields and fields[fields.index("->") + 4] == str(pid) and fields[fields.index("->") + 5].endswith(f":{ino}"):
                return True
    return False


def test_create_checks_under_the_name_lock(env, lxcpath, busybox_base, installed):
    """A create that finds the name taken once it holds the lock refuses and leaves the winner's directory alone."""
    name = f"w{uuid.uuid4().hex[:8]}"
    path = os.path.join(lxcpath, name)
    argv = PYCOR + ["create", name, "--base", busybox_base, "-P", lxcpath, "--network", "none"]
    try:
        with locks.name_lock(lxcpath, name) as held:  # another create of this name is under way
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
            wait_for(lambda: proc.poll() is not None or waits_on_lock(proc.pid, held.path), 60, "the create to wait or end")
            os.makedirs(os.path.join(path, "rootfs"), exist_ok=True)  # what the other create has made so far
            with open(os.path.join(path, "partial"), "w") as f:
                f.write("")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, out + err
        one_error(err)
        assert sorted(os.listdir(path)) == ["partial", "rootfs"] and not os.listdir(os.path.join(path, "rootfs"))
    finally:
        destroy(name, lxcpath)
        shutil.rmtree(path, ignore_errors=True)


def test_create_with_a_new_dir_puts_the_layer_there(env, lxcpath, busybox_base, session_dir):
    name = f"d{uuid.uuid4().hex[:8]}"
    data = os.path.join(session_dir, f"data-{name}")
    try:
        create(name, busybox_base, lxcpath, env, "--dir", data, check=True)
        assert os.path.isdir(os.path.join(data, ".pycor", "upper"))
        c = Container(name, lxcpath, env)
        c.start()
        try:
            c.sh("echo there > /keep")
        finally:
            c.stop()
        assert open(os.path.join(data, ".pycor", "upper", "keep")).read() == "there\n"
    finally:
        destroy(name, lxcpath)
        shutil.rmtree(data, ignore_errors=True)


def test_adopt_an_unprivileged_layer_needs_unprivileged(make_container, env, lxcpath, busybox_base):
    c = make_container(extra=("--unprivileged",))
    write_change(c, "mapped")
    before = lose_config(c)
    proc = create(c.name, busybox_base, lxcpath, env, "--adopt")
    assert proc.returncode == 1 and "--unprivileged" in one_error(proc.stderr)
    assert tree_checksum(os.path.join(c.rootfs, ".pycor")) == before and not os.path.exists(c.config)
    create(c.name, busybox_base, lxcpath, env, "--adopt", "--unprivileged", check=True)
    c.start()
    try:
        assert c.sh("cat /keep").stdout.strip() == "mapped"
    finally:
        c.stop()
