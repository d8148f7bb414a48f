"""Nothing exposed, nothing stuck, no unclear failure (issue 8 items 4, 6, 7, 12), on real containers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import uuid

import pytest

from helpers import PYCOR, host_overlays, layer_of, run, view_mounts, wait_for
from pycor_hooks import cli, locks, runstate

SUID_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 2 && argv[1][0] == '-' && argv[1][1] == 'u') {  /* -u PROG: become nobody, run PROG */
        if (setgid(65534) || setuid(65534)) { perror("drop"); return 2; }
        execv(argv[2], argv + 2);
        perror("exec");
        return 3;
    }
    printf("%d\n", (int)geteuid());
    return 0;
}
"""


def pycor(env, *args, check=True):
    return run(PYCOR + list(args), env=env, check=check)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)


def fresh_base(env, store, source_base, tmp_path, extra_files=None) -> str:
    """A copy of source_base imported under a new name (versions start at 1), with extra files."""
    name = f"g{uuid.uuid4().hex[:6]}"
    src = os.path.join(tmp_path, "rootfs")
    run(["cp", "-a", layer_of(store, source_base), src])
    for rel, (data, mode, uid) in (extra_files or {}).items():
        path = os.path.join(src, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, uid, uid)
        os.chmod(path, mode)  # after chown, which clears setuid
    pycor(env, "base", "import", name, "--from-dir", src)
    shutil.rmtree(src)
    return name


@pytest.fixture
def suid_base(env, store, busybox_base, tmp_path):
    """A busybox base with a setuid-root binary that prints its effective uid, and a helper that runs it as nobody."""
    c = tmp_path / "euid.c"
    c.write_text(SUID_SOURCE)
    binary = tmp_path / "euid"
    run(["gcc", "-static", "-O2", "-o", str(binary), str(c)])
    data = binary.read_bytes()
    name = fresh_base(env, store, busybox_base, tmp_path,
                      {"bin/pycor-euid": (data, 0o4755, 0), "bin/pycor-runas": (data, 0o755, 0),
                       "bin/pycor-euid1000": (data, 0o4755, 1000)})
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


@pytest.fixture
def plain_base(env, store, busybox_base, tmp_path):
    name = fresh_base(env, store, busybox_base, tmp_path)
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


def setuid_runs_inside(container) -> None:
    assert container.sh("/bin/pycor-runas -u /bin/pycor-euid").stdout.strip() == "0"
    assert container.sh("/bin/pycor-runas -u /bin/busybox id -u").stdout.strip() == "65534"


def refused_to_nobody(path: str) -> None:
    assert os.stat(path).st_mode & stat.S_ISUID  # root reaches it: the binary is there, and setuid
    proc = as_nobody(path)
    assert proc.returncode != 0 and proc.stdout == "", f"host user nobody ran {path}: {proc.stdout!r}"
    assert "Permission denied" in proc.stderr


def view_of(base: str) -> str:
    return next(p for p in view_mounts() if os.path.basename(p).startswith(f"{base}.1."))


# -- item 4: exposure ------------------------------------------------------------------------------


def test_setuid_binaries_of_a_base_do_not_run_for_host_users_lxc(make_container, env, store, suid_base):
    from_store = os.path.join(layer_of(store, suid_base), "bin/pycor-euid")
    refused_to_nobody(from_store)
    priv = make_container(base=suid_base)
    unpriv = make_container(base=suid_base, extra=("--unprivileged",))
    # a store and layers made by older pycor (everything 0755, .pycor 0711) are fixed at the next start
    os.chmod(store, 0o755)
    os.chmod(os.path.join(store, "bases"), 0o755)
    for c in (priv, unpriv):
        os.chmod(os.path.join(c.rootfs, ".pycor"), 0o711)
    priv.start()
    unpriv.start()
    try:
        setuid_runs_inside(priv)
        setuid_runs_inside(unpriv)
        assert stat.S_IMODE(os.stat(store).st_mode) & 0o077 in (0, 0o011)
        refused_to_nobody(from_store)
        view = view_of(suid_base)
        refused_to_nobody(os.path.join(view, "bin/pycor-euid"))
        # the map's own root passes through its view, which is nosuid: setuid binaries there (root's
        # show as the mapped root's, 1000's as 101000) change no uid on the host
        for binary in ("pycor-euid", "pycor-euid1000"):
            as_mapped_root = subprocess.run(["setpriv", "--reuid", "100000", "--regid", "100000", "--clear-groups",
                                             os.path.join(view, "bin", binary)], capture_output=True, text=True)
            assert as_mapped_root.stdout.strip() == "100000", as_mapped_root
        assert unpriv.sh("/bin/pycor-runas -u /bin/pycor-euid1000").stdout.strip() == "1000"  # inside, it works
        key_dir = os.stat(os.path.dirname(view))
        assert stat.S_IMODE(key_dir.st_mode) & 0o007 == 0
        assert stat.S_IMODE(os.stat("/run/pycor/views").st_mode) == 0o711
        for c in (priv, unpriv):
            pdir = os.path.join(c.rootfs, ".pycor")
            assert stat.S_IMODE(os.stat(pdir).st_mode) & 0o007 == 0, oct(os.stat(pdir).st_mode)
            assert as_nobody("ls", os.path.join(pdir, "upper")).returncode != 0
    finally:
        priv.stop()
        unpriv.stop()
    # and they still start after the fix
    unpriv.start()
    setuid_runs_inside(unpriv)
    unpriv.stop()


def test_setuid_binaries_of_a_base_do_not_run_for_host_users_lxd(launch, lxd_env, store, suid_base):
    pycor(lxd_env, "lxd", "init")  # the image pycor/BASE of the new base
    inst = launch(base=suid_base)
    setuid_runs_inside(inst)
    refused_to_nobody(os.path.join(layer_of(store, suid_base), "bin/pycor-euid"))
    refused_to_nobody(os.path.join(view_of(suid_base), "bin/pycor-euid"))
    pdir = os.path.join(inst.rootfs, ".pycor")
    assert stat.S_IMODE(os.stat(pdir).st_mode) & 0o077 in (0, 0o010)
    inst.lxc("stop", "-f", inst.name)
    inst.lxc("start", inst.name)
    setuid_runs_inside(inst)
    inst.lxc("delete", "-f", inst.name)


# -- item 6: races ---------------------------------------------------------------------------------


def lock_waiters(path: str) -> bool:
    """Whether some process is blocked in flock() on the file at path (/proc/locks lists waiters with '->')."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False  # nobody ever locked it
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any(len(fields) > 6 and fields[1] == "->" and fields[6] == ident for fields in map(str.split, f))


def test_reset_racing_a_start_never_deletes_the_upper_of_a_running_container(make_container, env, monkeypatch):
    """reset is held between its 'is it stopped' check and its action while the container starts."""
    from pycor_hooks import versions

    c = make_container()
    monkeypatch.setenv("PYCOR_STORE", env["PYCOR_STORE"])
    real_reset = versions.reset
    lock_path = locks.layer_lock(c.rootfs).path
    starter: list[subprocess.Popen] = []

    def reset_after_a_start(rootfs: str) -> None:
        starter.append(subprocess.Popen(["lxc-start", "-n", c.name, "-P", c.lxcpath], env=env))
        # the start either runs already (no lock: the bug) or waits for reset's lock; lxc-info would
        # hang on a monitor whose pre-start waits, so it is asked only once the start recorded itself
        wait_for(lambda: lock_waiters(lock_path) or (os.path.exists(record_path(c)) and c.state() == "RUNNING"),
                 what="the start to run or wait")
        real_reset(rootfs)

    monkeypatch.setattr(versions, "reset", reset_after_a_start)
    assert cli.main(["reset", c.name, "-P", c.lxcpath]) == 0
    starter[0].wait(60)
    c.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")
    c.sh("echo kept > /root/after-start")
    assert open(os.path.join(c.upper, "root/after-start")).read() == "kept\n"
    c.stop()


def test_reset_and_start_raced_many_times_keep_the_running_upper(make_container, env):
    c = make_container()
    for i in range(6):
        start = subprocess.Popen(["lxc-start", "-n", c.name, "-P", c.lxcpath], env=env)
        reset = subprocess.Popen(PYCOR + ["reset", c.name, "-P", c.lxcpath], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = reset.communicate(timeout=60)
        assert start.wait(60) == 0
        assert reset.returncode == 0 or "needs it stopped" in err, err
        c.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")
        c.sh(f"echo {i} > /root/mark")
        assert open(os.path.join(c.upper, "root/mark")).read() == f"{i}\n"
        c.stop()


def test_pin_racing_gc_never_leaves_a_pin_to_a_removed_version(make_container, env, store, plain_base, monkeypatch):
    from pycor_hooks import layer

    c = make_container(base=plain_base)
    pycor(env, "base", "update", plain_base, "--", "/bin/sh", "-c", "echo 2 > /etc/v")
    pycor(env, "base", "squash", plain_base)  # version 3 stands alone: versions 1 and 2 are garbage
    monkeypatch.setenv("PYCOR_STORE", env["PYCOR_STORE"])
    real_write = layer.write_meta
    lock_path = os.path.join(store, "lock")
    gc: list[subprocess.Popen] = []

    def write_after_gc(rootfs, meta):  # type: ignore[no-untyped-def]
        gc.append(subprocess.Popen(PYCOR + ["base", "gc", "-P", c.lxcpath], env=env, stdout=subprocess.DEVNULL))
        # gc either finishes between pin's check and its write (the bug) or waits for pin's lock
        wait_for(lambda: gc[0].poll() is not None or lock_waiters(lock_path), what="gc to finish or wait")
        real_write(rootfs, meta)

    monkeypatch.setattr(layer, "write_meta", write_after_gc)
    assert cli.main(["pin", c.name, "1", "-P", c.lxcpath]) == 0
    assert gc[0].wait(60) == 0
    meta = json.load(open(os.path.join(c.rootfs, ".pycor/layer.json")))
    assert meta["pin"] == "1"
    assert os.path.isdir(layer_of(store, plain_base, "1")), "gc removed the version pin had just checked"
    c.start()  # the pinned version starts
    assert c.sh("test -e /etc/v", check=False).returncode != 0
    c.stop()


# -- item 7: stale records -------------------------------------------------------------------------


def monitor_pid(c) -> int:  # type: ignore[no-untyped-def]
    init = int(c.lxc("lxc-info", "-p", "-H").stdout.strip())
    with open(f"/proc/{init}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("PPid:")))


def kill_and_destroy(c) -> None:  # type: ignore[no-untyped-def]
    pid = monitor_pid(c)
    with open(f"/proc/{pid}/cmdline") as f:
        assert f.read().startswith("[lxc monitor]")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: c.state() == "STOPPED", what="the container to die with its monitor")
    c.lxc("lxc-destroy", "-f")


def record_path(c) -> str:  # type: ignore[no-untyped-def]
    return runstate.record_path(c.name, c.rootfs)


def test_record_of_a_killed_container_is_stale_reported_and_cleared(make_container, env, store, plain_base, busybox_base):
    a = make_container(base=plain_base, extra=("--unprivileged",))
    a.start()
    view = view_of(plain_base)
    kill_and_destroy(a)
    assert os.path.exists(record_path(a))  # no post-stop ran
    report = pycor(env, "doctor", "--format", "json", check=False)
    stale = [r for r in json.loads(report.stdout) if r["name"] == "stale run records"]
    assert stale and not stale[0]["ok"] and a.name in stale[0]["detail"], report.stderr
    pycor(env, "doctor", "--fix", check=False)
    assert not os.path.exists(record_path(a))
    assert view not in view_mounts()
    again = json.loads(pycor(env, "doctor", "--format", "json", check=False).stdout)
    assert [r["ok"] for r in again if r["name"] == "stale run records"] == [True]

    # killed and destroyed again; the base removed and imported again under the same name
    b = make_container(base=plain_base, extra=("--unprivileged",))
    b.start()
    kill_and_destroy(b)
    pycor(env, "base", "rm", plain_base)
    src = os.path.join(os.path.dirname(store), f"src-{plain_base}")
    run(["cp", "-a", layer_of(store, busybox_base), src])
    try:
        pycor(env, "base", "import", plain_base, "--from-dir", src)
    finally:
        shutil.rmtree(src)
    c = make_container(base=plain_base, extra=("--unprivileged",))
    c.start()
    assert c.sh("echo ok").stdout == "ok\n"
    assert not os.path.exists(record_path(b))  # cleared by the start
    c.stop()


def test_views_of_a_killed_container_go_with_the_next_stop_even_a_privileged_one(make_container, plain_base):
    """A start clears a dead idmapped container's record under the shared lock; its views (released
    only under the exclusive one) go with the next stop, though that stop is a privileged container's."""
    a = make_container(base=plain_base, extra=("--unprivileged",))
    a.start()
    view = view_of(plain_base)
    kill_and_destroy(a)
    b = make_container()  # privileged, on another base
    b.start()
    assert not os.path.exists(record_path(a))  # cleared by b's start
    assert view in view_mounts()  # which could not release views
    b.stop()
    assert view not in view_mounts()


def test_record_of_an_lxd_instance_whose_monitor_was_killed_is_stale(launch, lxd_env):
    inst = launch()
    path = runstate.record_path(f"{inst.project}_{inst.name}", inst.rootfs)
    record = json.load(open(path))
    with open(f"/proc/{record['monitor']}/cmdline") as f:  # LXD's 'lxd forkstart', retitled by liblxc
        assert f.read().startswith("[lxc monitor]")
    os.kill(record["monitor"], signal.SIGKILL)
    wait_for(lambda: inst.status() == "STOPPED", what="LXD to see the instance stopped")
    stale = [r for r in json.loads(pycor(lxd_env, "doctor", "--format", "json", check=False).stdout)
             if r["name"] == "stale run records"]
    assert inst.name in stale[0]["detail"]
    pycor(lxd_env, "doctor", "--fix", check=False)
    assert not os.path.exists(path)
    inst.lxc("start", inst.name)  # and it starts again
    assert inst.sh("echo ok").stdout == "ok\n"
    inst.lxc("delete", "-f", inst.name)


# -- item 12: unclear errors -----------------------------------------------------------------------


def test_pre_mount_run_by_hand_in_the_host_namespace_mounts_nothing(make_container, env, hooks_dir):
    c = make_container()
    c.start()
    before = host_overlays()
    hook_env = dict(env, LXC_NAME=c.name, LXC_ROOTFS_PATH=c.rootfs, LXC_HOOK_TYPE="pre-mount")
    proc = subprocess.run([os.path.join(hooks_dir, "pycor-pre-mount")], env=hook_env, capture_output=True, text=True)
    try:
        assert host_overlays() == before
        assert proc.returncode == 1 and "mount namespace" in proc.stderr
    finally:
        while any(line.split()[1] == c.rootfs for line in host_overlays()):
            subprocess.run(["umount", "-l", c.rootfs])
        c.stop()


DAMAGE = {
    "garbage": lambda p: open(p, "w").write("{not json"),
    "oversized": lambda p: open(p, "w").write(json.dumps({"base": "x", "pad": "x" * 10000})),
    "fifo": lambda p: (os.unlink(p), os.mkfifo(p)),
    "symlink": lambda p: (os.unlink(p), os.symlink("/etc/hostname", p)),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_layer_metadata_is_listed_and_blocks_base_rm(make_container, env, plain_base, kind):
    c = make_container(base=plain_base)
    DAMAGE[kind](os.path.join(c.rootfs, ".pycor/layer.json"))
    rows = json.loads(pycor(env, "ls", "-P", c.lxcpath, "--format", "json").stdout)
    mine = [r for r in rows if r["name"] == c.name]
    assert len(mine) == 1 and mine[0]["damaged"] and mine[0]["base"] == "?", mine
    proc = pycor(env, "base", "rm", plain_base, "-P", c.lxcpath, check=False)
    assert proc.returncode == 1 and c.name in proc.stderr, proc.stderr
    assert os.path.isdir(os.path.join(env["PYCOR_STORE"], "bases", plain_base))


def test_pin_to_an_empty_version_fails_clearly(make_container, env):
    c = make_container()
    before = open(os.path.join(c.rootfs, ".pycor/layer.json")).read()
    proc = pycor(env, "pin", c.name, "", "-P", c.lxcpath, check=False)
    assert proc.returncode == 1 and "invalid version ''" in proc.stderr
    assert open(os.path.join(c.rootfs, ".pycor/layer.json")).read() == before


def test_a_second_rollout_of_one_base_refuses_while_the_first_runs(env, busybox_base):
    from pycor_hooks import rollout
    from pycor_hooks.store import Store

    with rollout.rollout_lock(Store(env["PYCOR_STORE"]), busybox_base):
        proc = pycor(env, "rollout", busybox_base, check=False)
    assert proc.returncode == 1 and f"rollout of base {busybox_base}" in proc.stderr, proc.stderr
    pycor(env, "rollout", busybox_base)  # and runs once the first is done


def test_a_container_leaves_no_lock_file_behind(make_container, busybox_base, lxcpath):
    """/run/pycor/locks holds a file per lock only while it is held: not one per container ever created or started."""
    c = make_container()
    name_lock, layer_lock = locks.name_lock(lxcpath, c.name).path, locks.layer_lock(c.rootfs).path
    assert not os.path.exists(name_lock)  # create took it
    c.start()
    assert c.sh("true").returncode == 0
    c.stop()
    wait_for(lambda: not os.path.exists(layer_lock), 20, "post-stop to let go of the layer lock")  # pre-mount and post-stop took it
    pycor(c.env, "diff", c.name, "-P", lxcpath)
    assert not os.path.exists(layer_lock)


def test_doctor_fix_removes_lock_files_left_by_killed_commands(env, installed):
    from pycor_hooks import locks

    os.makedirs(locks.LOCK_DIR, mode=0o700, exist_ok=True)
    left = os.path.join(locks.LOCK_DIR, f"layer-left{uuid.uuid4().hex[:8]}")
    open(left, "w").close()  # what a command killed while holding its layer lock leaves
    pycor(env, "doctor", "--fix", check=False)
    assert not os.path.exists(left)
