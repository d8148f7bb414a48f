"""What a tenant (root in a container) controls, and what it must not reach: real containers, hostile layers.

Four classes, each closed at one place (README, "What pycor guarantees"):
- a layer moves between base versions only through reconciliation (commit, overlay clones);
- a running container's layer is written by nobody but the container;
- parsing a container's databases is bounded: a hostile file becomes a reported conflict, never a failed start;
- an interrupted operation is finished or cleared by the next command, and `pycor doctor` lists it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid

import pytest
from conftest import Container, destroy

from helpers import PYCOR, run, wait_for

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"


def pycor(env, *args, check=True, fault=None):  # type: ignore[no-untyped-def]
    return run(PYCOR + list(args), env=dict(env, PYCOR_FAULT=fault) if fault else env, check=check)


@pytest.fixture
def base(installed, env):  # type: ignore[no-untyped-def]
    name = f"t{uuid.uuid4().hex[:6]}"
    pycor(env, "base", "import", name, "--busybox")
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def add_system_user(env, base: str, user: str, uid: int) -> None:  # type: ignore[no-untyped-def]
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", f"echo '{user}:x:{uid}:{uid}::/:/bin/false' >> /etc/passwd")


def own_file(c: Container, rel: str, data: bytes | str) -> str:
    """Write a file into the stopped container's layer, as the container would have."""
    path = os.path.join(c.upper, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def layer_bytes(c: Container) -> dict[str, bytes | None]:
    """The parts of a layer a move writes: its metadata and the databases in upper."""
    out: dict[str, bytes | None] = {}
    for rel in (".pycor/layer.json", ".pycor/upper/etc/passwd", ".pycor/upper/etc/group"):
        try:
            with open(os.path.join(c.rootfs, rel), "rb") as f:
                out[rel] = f.read()
        except FileNotFoundError:
            out[rel] = None
    return out


def based_on(c: Container) -> str:
    with open(os.path.join(c.rootfs, ".pycor", "layer.json")) as f:
        return json.load(f)["based_on"]


def conflicts(env, c: Container) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(pycor(env, "conflicts", c.name, "-P", c.lxcpath, "--format", "json").stdout)[0]


def users(c: Container) -> set[str]:
    return set(c.sh("cut -d: -f1 /etc/passwd").stdout.split())


def versions(env, base: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [r["version"] for r in json.loads(pycor(env, "base", "versions", base, "--format", "json").stdout)]


@pytest.fixture
def clones(lxcpath: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """LXC overlay clones (lxc-copy -e) of a container, stopped and gone at the end."""
    made: list[Container] = []

    def clone(origin: Container, running: bool = False) -> Container:
        copy = Container(f"e{uuid.uuid4().hex[:7]}", lxcpath, env)
        made.append(copy)
        run(["lxc-copy", "-n", origin.name, "-N", copy.name, "-P", lxcpath, "-e", *(["--allowrunning"] if running else [])])
        copy.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")
        return copy

    yield clone
    for copy in made:
        destroy(copy.name, lxcpath)
        wait_for(lambda: not os.path.exists(os.path.join(lxcpath, copy.name)), what="the ephemeral clone gone")


# -- 1. a layer moves between versions only through reconciliation ---------------------------------------------


def test_commit_to_of_a_container_made_on_an_older_version_refuses_and_keeps_later_system_users(make_container, base, env):
    """Issue 19.2: a container made on 1, versions 2 and 3 each add a system user; its commit must not strip them."""
    c = make_container(base=base)
    follower = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    add_system_user(env, base, "sys2", 102)
    add_system_user(env, base, "sys3", 103)
    refused = pycor(env, "commit", c.name, "--to", base, "-P", c.lxcpath, check=False)
    assert refused.returncode == 1, refused.stdout
    assert f"pycor rebase {c.name}" in refused.stderr and "version 1" in refused.stderr, refused.stderr
    assert versions(env, base) == ["1", "2", "3"]  # nothing published
    pycor(env, "rebase", c.name, "-P", c.lxcpath)
    pycor(env, "commit", c.name, "--to", base, "-P", c.lxcpath)
    follower.start()
    assert {"sys2", "sys3", "alice", "root"} <= users(follower)


def test_commit_as_a_new_base_of_a_container_on_an_older_version_refuses(make_container, base, env):
    """The merged view of stale changes over the current version would hide its new system user just the same."""
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    add_system_user(env, base, "sys2", 102)
    new = f"n{uuid.uuid4().hex[:6]}"
    try:
        refused = pycor(env, "commit", c.name, "--as", new, "-P", c.lxcpath, check=False)
        assert refused.returncode == 1 and f"pycor rebase {c.name}" in refused.stderr, refused.stderr
        assert new not in pycor(env, "base", "ls").stdout
    finally:
        subprocess.run(PYCOR + ["base", "rm", new], env=env, capture_output=True)


def test_overlay_clone_runs_on_its_origins_version_and_leaves_the_origin_untouched(make_container, base, env, clones):
    """lxc-copy -e: the clone's start must not move (reconcile, rewrite) the origin's layer."""
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    add_system_user(env, base, "sys2", 102)
    before = layer_bytes(c)
    copy = clones(c)
    assert layer_bytes(c) == before
    assert based_on(c) == "1"
    seen = users(copy)
    assert "alice" in seen and "sys2" not in seen  # the origin's changes, on the version they were made on
    # the origin's own start moves it, as always, once its clone is gone
    copy.lxc("lxc-stop", "-k")
    wait_for(lambda: not os.path.exists(os.path.join(copy.lxcpath, copy.name)), what="the ephemeral clone gone")
    c.start()
    assert {"alice", "sys2"} <= users(c)


# -- 2. a running container's layer is written by nobody but the container -------------------------------------------


def test_overlay_clone_of_a_running_container_does_not_write_its_layer(make_container, base, env, clones):
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    c.start()
    add_system_user(env, base, "sys2", 102)
    before = layer_bytes(c)
    copy = clones(c, running=True)
    assert layer_bytes(c) == before
    assert "alice" in users(copy)


def test_origin_start_does_not_rewrite_the_layer_its_running_clone_reads(make_container, base, env, clones):
    """A clone mounts its origin's upper as a lowerdir: the origin's start must not move it under the clone."""
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    copy = clones(c)
    add_system_user(env, base, "sys2", 102)
    before = layer_bytes(c)
    c.start()
    assert layer_bytes(c) == before  # held on version 1 while its clone runs
    assert "sys2" not in users(c)
    held = conflicts(env, c)
    assert held["held_back"] and "clone" in json.dumps(held["findings"]), held
    copy.lxc("lxc-stop", "-k")
    c.stop()
    c.start()
    assert {"alice", "sys2"} <= users(c)


def test_writers_refuse_a_running_container(make_container, base, env):
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    c.start()
    before = layer_bytes(c)
    for argv in (["rebase", c.name], ["reset", c.name], ["commit", c.name, "--to", base], ["resolve", c.name, "/etc/passwd", "--base"]):
        out = pycor(env, *argv, "-P", c.lxcpath, check=False)
        assert out.returncode == 1 and "is running" in out.stderr, (argv, out.stderr)
    assert layer_bytes(c) == before


# -- 3. parsing is bounded: a hostile database is a reported conflict, and the start goes on -----------------------


def _plant(kind: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "symlink to a host file":
        os.symlink("/etc/shadow", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "binary":
        with open(path, "wb") as f:
            f.write(os.urandom(1 << 16))
    elif kind == "sparse 200 GiB":
        with open(path, "wb") as f:
            f.truncate(200 << 30)
    elif kind == "uid of 5000 digits":
        with open(path, "w") as f:
            f.write(PASSWD + "x:x:" + "9" * 5000 + ":0::/:/bin/sh\n")
    elif kind == "uid past 2**32-2":
        with open(path, "w") as f:
            f.write(PASSWD + "x:x:4294967295:0::/:/bin/sh\n")
    elif kind == "too many records":
        with open(path, "w") as f:
            f.write(PASSWD + "".join(f"u{i}:x:{40000 + i}:100::/:/bin/sh\n" for i in range(300000)))
    else:
        raise AssertionError(kind)


HOSTILE = ["symlink to a host file", "fifo", "device", "binary", "sparse 200 GiB", "uid of 5000 digits",
           "uid past 2**32-2", "too many records"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_passwd_is_kept_and_reported_and_the_start_goes_on(make_container, base, env, kind):
    c = make_container(base=base)
    path = os.path.join(c.upper, "etc", "passwd")
    _plant(kind, path)
    st = os.lstat(path)
    with open("/etc/shadow", "rb") as f:
        host_shadow = f.read()
    add_system_user(env, base, "sys2", 102)
    c.start()
    assert c.state() == "RUNNING"
    assert based_on(c) == "2"  # it moved; the file stayed the container's
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino, after.st_size) == (st.st_mode, st.st_ino, st.st_size)
    found = [f for f in conflicts(env, c)["findings"] if f["path"] == "/etc/passwd"]
    assert found and {f["kind"] for f in found} == {"conflict"}, found
    with open("/etc/shadow", "rb") as f:
        assert f.read() == host_shadow


def test_deep_continuation_lines_in_dpkg_status_do_not_stall_the_start(make_container, base, env):
    """A paragraph both sides changed merges field by field: a million continuation lines must stay linear."""
    para = "Package: p\nStatus: install ok installed\nVersion: 1\nDescription: d\n"
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c",
          "mkdir -p /var/lib/dpkg && printf '%s\\n' " + " ".join(f"'{line}'" for line in para.splitlines()) + " > /var/lib/dpkg/status")
    c = make_container(base=base)
    own = para.replace("Version: 1", "Version: 1\nDepends: a") + " x\n" * 1_000_000
    own_file(c, "var/lib/dpkg/status", own)
    pycor(env, "base", "update", base, "--", "/bin/sh", "-c", "sed -i 's/Version: 1/Version: 2/' /var/lib/dpkg/status")
    c.start()
    assert c.state() == "RUNNING"
    assert based_on(c) == "3"


# -- 4. an interrupted operation is finished or cleared by the next command, and doctor lists it --------------------


def killed(env, *args: str, fault: str) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(PYCOR + list(args), env=dict(env, PYCOR_FAULT=fault), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, timeout=300)
        out.seek(0)
        assert proc.returncode == -9, out.read().decode(errors="replace")


def interrupted(env) -> dict:  # type: ignore[no-untyped-def]
    checks = json.loads(pycor(env, "doctor", "--format", "json", check=False).stdout)
    return next(ch for ch in checks if ch["name"] == "interrupted layer operations")


def test_reset_after_an_interrupted_rebase_does_not_bring_changes_back(make_container, base, env):
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    add_system_user(env, base, "sys2", 102)
    killed(env, "rebase", c.name, "-P", c.lxcpath, fault="reconcile-committed")
    check = interrupted(env)
    assert not check["ok"] and c.name in check["detail"] and f"pycor rebase {c.name}" in check["detail"], check
    pycor(env, "reset", c.name, "-P", c.lxcpath)
    assert os.listdir(c.upper) == []
    c.start()
    assert os.listdir(c.upper) == [] or not os.path.exists(os.path.join(c.upper, "etc", "passwd"))
    assert "alice" not in users(c)
    assert c.name not in interrupted(env)["detail"]


def test_an_interrupted_reset_is_named_by_start_and_doctor_and_finished_by_reset(make_container, base, env):
    c = make_container(base=base)
    own_file(c, "etc/passwd", PASSWD + "alice:x:30000:30000::/home/alice:/bin/sh\n")
    killed(env, "reset", c.name, "-P", c.lxcpath, fault="reset.upper-aside")
    failed = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert failed.returncode != 0
    with open(c.log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert ".pycor/upper.discard" in log and f"pycor reset {c.name}" in log, log[-2000:]
    check = interrupted(env)
    assert not check["ok"] and f"pycor reset {c.name}" in check["detail"], check
    refused = pycor(env, "rebase", c.name, "-P", c.lxcpath, check=False)
    assert refused.returncode == 1 and f"pycor reset {c.name}" in refused.stderr, refused.stderr
    pycor(env, "reset", c.name, "-P", c.lxcpath)
    c.start()
    assert "alice" not in users(c)
    assert c.name not in interrupted(env)["detail"]
