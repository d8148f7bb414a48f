"""LXD and Incus as distributions ship them (issue 21 items 4 and 5), on daemons of their own.

A stock incusd (no INCUS_IDMAPPED_MOUNTS_DISABLE) mounts its containers' rootfs idmapped and keeps
their files unshifted on disk: pycor containers run there, shared and isolated, and their layers
stay as the container sees them. And scripts/lxd-up.sh and incus-up.sh bring back a daemon that
was killed with containers running, with its network up.

Each daemon here has its own directory (LXD_DIR, INCUS_DIR), bridge and subnet, and is started by
the up script itself: the machine's own daemons are never touched. Everything goes at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from helpers import PYCOR, layer_of, run, tree_checksum, wait_for
from pycor_hooks import runstate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYER_MOUNTS = "/run/pycor/layers/"


def mount_points(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def mount_options(point: str) -> str:
    with open("/proc/self/mountinfo") as f:
        return next(line.split()[5] for line in f if line.split()[4] == point)


def free_subnet() -> str:
    used = run(["ip", "-4", "-o", "addr"]).stdout
    third = next(n for n in range(150, 250) if f" 10.0.{n}." not in used)
    return f"10.0.{third}.1/24"


def alive(pid: int) -> bool:
    """Whether pid runs: a killed process its parent has not reaped yet (a zombie) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def processes(match: str, comm: str | None = None) -> list[int]:
    """pids whose arguments hold match (and whose name is comm)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if match in args and (comm is None or name == comm):
            found.append(int(pid))
    return found


class ScriptDaemon:
    """An LXD or Incus daemon in a directory of its own, started (and brought back) by scripts/KIND-up.sh."""

    def __init__(self, kind: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.kind, self.cli = kind, "lxc" if kind == "lxd" else "incus"
        self.dir = f"/var/lib/pycor-test-{kind}up-{tag}"
        self.bridge = f"pt{kind[0]}{tag}"
        self.address = free_subnet()
        dir_env = "LXD_DIR" if kind == "lxd" else "INCUS_DIR"
        upper = kind.upper()
        self.env = {k: v for k, v in os.environ.items() if k not in ("LXD_SOCKET", "LXD_CONF", "INCUS_SOCKET")}
        self.env.update({dir_env: self.dir, f"PYCOR_{upper}_BRIDGE": self.bridge, f"PYCOR_{upper}_BRIDGE_ADDR": self.address})
        self.env.pop(f"PYCOR_{upper}_PROJECT", None)  # the daemon's default project: it is this test's alone

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "unix.socket")

    def up(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["bash", os.path.join(REPO, "scripts", f"{self.kind}-up.sh")], env=self.env, check=check, timeout=300)

    def pid(self) -> int | None:
        """The daemon: the process listening on its socket (its container monitors carry its name too)."""
        for line in run(["ss", "-xlpnH"]).stdout.splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == self.socket and "pid=" in line:
                return int(line.split("pid=")[1].split(",")[0])
        return None

    def client(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([self.cli, *args], env=self.env, check=check, timeout=timeout)

    def query(self, path: str) -> dict | list:
        return json.loads(self.client("query", path).stdout)

    def network_status(self) -> str:
        return str(self.query(f"/1.0/networks/{self.bridge}")["status"])  # type: ignore[call-overload]

    def instance(self, name: str) -> dict:
        return self.query(f"/1.0/instances/{name}")  # type: ignore[return-value]

    def rootfs(self, name: str) -> str:
        return os.path.join(self.dir, "storage-pools", "default", "containers", name, "rootfs")

    def lxc_conf(self, name: str) -> str:
        return os.path.join(self.dir, "logs" if self.kind == "lxd" else "run", name, "lxc.conf")

    def sh(self, name: str, script: str) -> str:
        return self.client("exec", name, "--", "/bin/sh", "-c", script).stdout

    def launch(self, base: str, *extra: str) -> str:
        name = f"s{uuid.uuid4().hex[:8]}"
        self.started(name, self.client("launch", f"pycor/{base}", name, "--profile", "default", "--profile", "overlay",
                                       *extra, check=False))
        return name

    def start(self, name: str) -> None:
        self.started(name, self.client("start", name, check=False))

    def started(self, name: str, proc: subprocess.CompletedProcess[str]) -> None:
        """A start's outcome; when it failed, what LXC's log says why."""
        if proc.returncode != 0:
            log = os.path.join(self.dir, "logs", name, "lxc.log")
            raise AssertionError(f"start of {name} failed: {proc.stderr}\n"
                                 + (open(log).read()[-3000:] if os.path.exists(log) else "(no lxc.log)"))

    def stop(self, name: str) -> None:
        """Stop an instance and wait for its post-stop hook (the daemon answers before it runs)."""
        record = runstate.record_path(name, self.rootfs(name))
        self.client("stop", name)
        wait_for(lambda: not os.path.exists(record), what=f"the post-stop hook of {name}")

    def down(self) -> None:
        """Everything this daemon made goes: instances, bridge, daemon, its dnsmasq and monitors, its directory."""
        if self.pid() is not None:
            listing = self.client("list", "-c", "n", "--format", "csv", check=False).stdout.split()
            for name in listing:
                self.client("delete", "-f", name, check=False)
            self.client("profile", "device", "remove", "default", "eth0", check=False)
            self.client("network", "delete", self.bridge, check=False)
            shutdown = ["lxd", "shutdown"] if self.kind == "lxd" else ["incus", "admin", "shutdown"]
            subprocess.run([*shutdown, "--timeout", "60"], env=self.env, capture_output=True, timeout=120)
        deadline = time.monotonic() + 30
        while (pid := self.pid()) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in [*([pid] if pid else []), *processes(f"[lxc monitor] {self.dir}/"),
                    *processes(f"={self.dir}/networks/", "dnsmasq")]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        for point in sorted(mount_points(self.dir + "/"), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def stock_incus(env: dict[str, str], busybox_base: str) -> Iterator[ScriptDaemon]:
    """A second incusd as Incus ships it, started by scripts/incus-up.sh, pycor set up in its default project."""
    d = ScriptDaemon("incus")
    try:
        d.up()
        d.env.update(PYCOR_STORE=env["PYCOR_STORE"], PYCOR_HOOKS_DIR=env["PYCOR_HOOKS_DIR"],
                     PYCOR_TEMPLATES_DIR=env["PYCOR_TEMPLATES_DIR"])
        run(PYCOR + ["incus", "init"], env=d.env)
        yield d
    finally:
        d.down()


def layer_mount_of(d: ScriptDaemon, name: str) -> str:
    with open(runstate.record_path(name, d.rootfs(name))) as f:
        path = json.load(f)["layer_mount"]
    assert path and path.startswith(LAYER_MOUNTS), path
    return str(path)


# -- item 4: a stock Incus ----------------------------------------------------------------------------


def test_a_stock_incusd_runs_shared_and_isolated_pycor_containers_unshifted(stock_incus, store, busybox_base):
    d = stock_incus
    with open(f"/proc/{d.pid()}/environ", "rb") as f:
        assert b"INCUS_IDMAPPED_MOUNTS_DISABLE" not in f.read()
    assert d.query("/1.0")["environment"]["kernel_features"]["idmapped_mounts"] == "true"  # type: ignore[call-overload]
    assert d.client("profile", "get", "overlay", "raw.lxc").stdout.splitlines()[0] == "lxc.rootfs.options ="
    base_sum = tree_checksum(layer_of(store, busybox_base))
    shared = d.launch(busybox_base)
    isolated = d.launch(busybox_base, "-c", "security.idmap.isolated=true")
    maps = []
    for name in (shared, isolated):
        uid_map = d.sh(name, "cat /proc/self/uid_map").split()
        host_root = int(uid_map[1])
        assert host_root != 0
        maps.append(uid_map)
        with open(d.lxc_conf(name)) as f:  # Incus asked for an idmapped rootfs; the overlay profile cleared it
            options = [line for line in f.read().splitlines() if line.startswith("lxc.rootfs.options")]
        assert options[0] == "lxc.rootfs.options = idmap=container" and options[-1].split("=", 1)[1].strip() == ""
        assert d.instance(name)["config"]["volatile.last_state.idmap"] == "[]"  # nothing shifted on disk

        # inside: the base's files are root's, the container's own files its own
        assert d.sh(name, "stat -c %u:%g /bin/busybox /etc/passwd") == "0:0\n0:0\n"
        d.sh(name, "echo hi > /root/f && mkdir /tmp/d && echo x > /tmp/d/g && chown -R 1000:1000 /tmp/d")
        assert d.sh(name, "stat -c %u:%g /root/f /tmp/d/g && cat /root/f") == "0:0\n1000:1000\nhi\n"
        # on disk: ids as the container sees them, the layer root's own
        upper = os.path.join(d.rootfs(name), ".pycor", "upper")
        for path, owner in (("", (0, 0)), ("root/f", (0, 0)), ("tmp/d/g", (1000, 1000))):
            st = os.stat(os.path.join(upper, path))
            assert (st.st_uid, st.st_gid) == owner, path
        pycor_dir = os.stat(os.path.join(d.rootfs(name), ".pycor"))
        assert (pycor_dir.st_uid, pycor_dir.st_gid, pycor_dir.st_mode & 0o7777) == (0, 0, 0o700)

        # one idmapped mount of the rootfs directory, the container's map on it, for this start
        mount = layer_mount_of(d, name)
        assert mount in mount_points(LAYER_MOUNTS)
        options = mount_options(mount).split(",")
        assert {"idmapped", "nosuid", "nodev"} <= set(options)
        assert os.stat(os.path.join(mount, ".pycor", "upper")).st_uid == host_root
    assert maps[0] != maps[1]  # isolated: a map of its own

    for name in (shared, isolated):
        mount = layer_mount_of(d, name)
        d.stop(name)
        wait_for(lambda: mount not in mount_points(LAYER_MOUNTS) and not os.path.exists(mount),  # noqa: B023
                 what=f"post-stop to detach {mount}")
    d.start(shared)  # its changes are there at the next start
    assert d.sh(shared, "cat /root/f") == "hi\n"
    d.stop(shared)
    copy = f"c{uuid.uuid4().hex[:8]}"  # a copy carries the layer as it is on disk, and runs on it
    d.client("copy", shared, copy)
    assert os.stat(os.path.join(d.rootfs(copy), ".pycor", "upper", "tmp", "d", "g")).st_uid == 1000
    d.start(copy)
    assert d.sh(copy, "cat /root/f && stat -c %u /tmp/d/g") == "hi\n1000\n"
    d.client("delete", "-f", copy)
    assert tree_checksum(layer_of(store, busybox_base)) == base_sum


def test_a_privileged_instance_of_a_stock_incusd_needs_no_layer_mount(stock_incus, busybox_base):
    d = stock_incus
    name = d.launch(busybox_base, "-c", "security.privileged=true")
    assert d.sh(name, "cat /proc/self/uid_map").split()[:2] == ["0", "0"]
    d.sh(name, "echo p > /root/p")
    with open(runstate.record_path(name, d.rootfs(name))) as f:
        assert json.load(f)["layer_mount"] is None
    assert os.stat(os.path.join(d.rootfs(name), ".pycor", "upper", "root", "p")).st_uid == 0
    d.client("delete", "-f", name)


def test_a_killed_monitors_layer_mount_goes_with_the_next_sweep(stock_incus, env, busybox_base):
    d = stock_incus
    name = d.launch(busybox_base)
    mount = layer_mount_of(d, name)
    with open(runstate.record_path(name, d.rootfs(name))) as f:
        monitor = json.load(f)["monitor"]
    with open(f"/proc/{monitor}/cmdline") as f:
        assert f.read().startswith("[lxc monitor]")
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: d.instance(name)["status"] == "Stopped", what="Incus to see the instance stopped")
    assert mount in mount_points(LAYER_MOUNTS)  # no post-stop ran
    report = json.loads(run(PYCOR + ["doctor", "--format", "json"], env=d.env, check=False).stdout)
    assert any(r["name"] == "leftover layer mounts" and mount in r["detail"] for r in report)
    other = d.launch(busybox_base)  # the next start and stop of an unprivileged container clear it
    d.stop(other)
    wait_for(lambda: mount not in mount_points(LAYER_MOUNTS) and not os.path.exists(mount),
             what=f"the next stop to detach {mount}")
    d.start(name)  # and the container starts again, on a mount of its own
    assert d.sh(name, "echo ok") == "ok\n" and layer_mount_of(d, name) != mount
    d.client("delete", "-f", name)
    d.client("delete", "-f", other)


def test_diff_and_commit_read_an_unshifted_layer_as_the_container_saw_it(stock_incus, store, busybox_base):
    """ids in the range the container's map sends its own ids to are the container's own on an unshifted
    layer: a commit keeps them, and an opaque directory (written with userxattr) stays opaque."""
    d = stock_incus
    name = d.launch(busybox_base)
    host_root = d.sh(name, "cat /proc/self/uid_map").split()[1]
    d.sh(name, f"echo g > /root/g && chown {host_root}:{host_root} /root/g && "
               "rm -rf /etc/init.d && mkdir /etc/init.d && echo only > /etc/init.d/only")
    d.stop(name)
    changes = {c["path"]: c["change"] for c in json.loads(run(PYCOR + ["diff", name, "--format", "json"], env=d.env).stdout)}
    assert changes["/root/g"] == "added" and changes["/etc/init.d"] == "replaced"
    new = f"c{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["commit", name, "--as", new], env=d.env)
    try:
        committed = layer_of(store, new)
        st = os.stat(os.path.join(committed, "root", "g"))
        assert (st.st_uid, st.st_gid) == (int(host_root), int(host_root))
        assert os.listdir(os.path.join(committed, "etc", "init.d")) == ["only"]
        assert os.stat(os.path.join(committed, "etc", "passwd")).st_uid == 0
    finally:
        d.client("delete", "-f", name)
        run(PYCOR + ["base", "rm", new], env=d.env)


# -- item 5: the up scripts after a crash ----------------------------------------------------------


@pytest.mark.parametrize("kind,lost_pidfile", [("lxd", False), ("lxd", True), ("incus", False), ("incus", True)])
def test_a_daemon_killed_with_a_container_running_comes_back_with_its_network(kind, lost_pidfile, env, busybox_base):
    d = ScriptDaemon(kind)
    try:
        d.up()
        d.env.update(PYCOR_STORE=env["PYCOR_STORE"], PYCOR_HOOKS_DIR=env["PYCOR_HOOKS_DIR"],
                     PYCOR_TEMPLATES_DIR=env["PYCOR_TEMPLATES_DIR"])
        run(PYCOR + [kind, "init"], env=d.env)
        name = d.launch(busybox_base)
        monitors = processes(f"[lxc monitor] {d.dir}/")
        dnsmasq = processes(f"={d.dir}/networks/{d.bridge}/", "dnsmasq")
        assert monitors and len(dnsmasq) == 1 and d.network_status() == "Created"
        old = d.pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: d.pid() is None and not alive(old), what="the daemon to die")
        assert all(alive(pid) for pid in monitors + dnsmasq)  # its container and dnsmasq live on
        if lost_pidfile:  # killed while it rewrote it: the new daemon cannot tell which dnsmasq was its own
            open(os.path.join(d.dir, "networks", d.bridge, "dnsmasq.pid"), "w").close()

        d.up()
        assert d.pid() not in (None, old)
        assert d.network_status() == "Created"
        assert not alive(dnsmasq[0])
        assert len(processes(f"={d.dir}/networks/{d.bridge}/", "dnsmasq")) == 1
        assert d.instance(name)["status"] == "Running" and d.sh(name, "echo ok") == "ok\n"
        d.up()  # and again: nothing to do
        assert d.network_status() == "Created"
    finally:
        d.down()


def test_a_network_that_does_not_come_up_is_an_error_naming_what_holds_its_address(env):
    """Something that is not the dead daemon's dnsmasq holds the bridge's address: the script cannot
    tell it may stop it, so it fails, naming it."""
    d = ScriptDaemon("lxd")
    holder = None
    try:
        d.up()
        os.kill(d.pid() or 0, signal.SIGKILL)
        wait_for(lambda: d.pid() is None, what="the daemon to die")
        for pid in processes(f"={d.dir}/networks/", "dnsmasq"):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not processes(f"={d.dir}/networks/", "dnsmasq"), what="its dnsmasq to die")
        address = d.address.split("/")[0]
        holder = subprocess.Popen(["/usr/bin/python3", "-c", "import socket, sys, time; s = socket.socket(); "
                                   "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                   f"s.bind(({address!r}, 53)); s.listen(); print('bound', flush=True); time.sleep(600)"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline() == "bound\n", holder.communicate()
        proc = d.up(check=False)
        assert proc.returncode == 1
        assert f"network {d.bridge} is Unavailable: its address {address} is held by python3 (pid {holder.pid})" in proc.stderr
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        d.down()


def test_a_start_on_storage_shifted_on_disk_makes_no_layer_mount(lxd_launch, make_container):
    """LXD 5.0 and unprivileged LXC containers keep their start as it was: views only."""
    inst = lxd_launch()
    assert inst.sh("cat /proc/self/uid_map").stdout.split()[1] != "0"
    with open(runstate.record_path(f"{inst.project}_{inst.name}", inst.rootfs)) as f:
        assert json.load(f)["layer_mount"] is None
    c = make_container(extra=("--unprivileged",))
    c.start()
    with open(runstate.record_path(c.name, c.rootfs)) as f:
        assert json.load(f)["layer_mount"] is None
    c.stop()


def test_doctor_fix_detaches_the_layer_mount_of_a_killed_start_and_keeps_a_starting_ones(env, tmp_path):
    """A pre-start killed between mounting the layer and recording the start leaves a mount no record names:
    doctor lists it and --fix detaches it, told by the monitor its name records; a mount whose monitor
    still runs (a start recording itself right now, on any store) stays."""
    from pycor_hooks import idmap

    rootfs = tmp_path / "rootfs"
    (rootfs / ".pycor").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    dead = subprocess.Popen(["true"])
    dead.wait()
    idmap_ = idmap.IdMap.parse_lxc_config("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n")
    me = (os.getpid(), runstate.proc_start_time(os.getpid()) or 0)
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    paths = []
    try:
        for monitor in ((dead.pid, 1), me):
            path = idmap.layer_mount_path(f"t{uuid.uuid4().hex[:6]}-00000000", monitor)
            paths.append(idmap.mount_layer(idmap_, fd, str(rootfs), path))
        killed, starting = paths
        assert os.stat(os.path.join(starting, ".pycor")).st_uid == 100000  # the map is on it
        report = json.loads(run(PYCOR + ["doctor", "--format", "json"], env=env, check=False).stdout)
        detail = next(r["detail"] for r in report if r["name"] == "leftover layer mounts")
        assert killed in detail and starting not in detail
        run(PYCOR + ["doctor", "--fix"], env=env, check=False)
        assert killed not in mount_points(LAYER_MOUNTS) and not os.path.exists(killed)
        assert starting in mount_points(LAYER_MOUNTS)
    finally:
        os.close(fd)
        for path in paths:
            idmap.remove_layer_mount(path)


@pytest.mark.parametrize("script", ["lxd-up.sh", "incus-up.sh"])
def test_up_scripts_run_against_the_default_daemons_as_setup_runs_them(script):
    """setup.sh runs them with no LXD_DIR or INCUS_DIR set (an unset variable once stopped lxd-up.sh under set -u)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LXD_DIR", "INCUS_DIR", "PYCOR_KSM")}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
