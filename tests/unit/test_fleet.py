"""A fleet of booted containers on one host: the default base's per-container settings, the kernel limits
scripts/sysctl-up.sh sets, 'pycor doctor --fleet N''s verdict, and the fleet benchmark's own logic."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType

import pytest

from pycor_hooks import doctor
from pycor_hooks.debian import one_nginx_worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSCTL_UP = os.path.join(REPO, "scripts", "sysctl-up.sh")
MiB, GiB = 1 << 20, 1 << 30


# -- the default base: one nginx worker ----------------------------------------------------------------------

DEBIAN_NGINX_CONF = """user www-data;
worker_processes auto;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
include /etc/nginx/modules-enabled/*.conf;

events {
\tworker_connections 768;
}
"""


def test_nginx_conf_gets_one_worker_and_nothing_else_changes():
    out = one_nginx_worker(DEBIAN_NGINX_CONF)
    assert "worker_processes 1;" in out and "worker_processes auto" not in out
    assert out.replace(out.splitlines()[1], "worker_processes auto;") == DEBIAN_NGINX_CONF
    assert one_nginx_worker(out) == out  # already done: unchanged
    assert one_nginx_worker("worker_processes 4;\n") == "worker_processes 4;\n"  # an admin's own number stays
    assert one_nginx_worker("# worker_processes auto;\n") == "# worker_processes auto;\n"


# -- scripts/sysctl-up.sh, against a scratch /proc/sys and /etc/sysctl.d --------------------------------------

DEBIAN_DEFAULTS = {
    "fs.inotify.max_user_instances": 128, "fs.inotify.max_user_watches": 8192, "fs.inotify.max_queued_events": 16384,
    "fs.aio-max-nr": 65536, "vm.max_map_count": 65530, "net.core.bpf_jit_limit": 528482304, "kernel.pty.max": 4096,
    "kernel.pid_max": 32768, "kernel.keys.maxkeys": 200, "kernel.keys.maxbytes": 20000,
    "net.ipv4.neigh.default.gc_thresh2": 512, "net.ipv4.neigh.default.gc_thresh3": 1024,
    "net.ipv6.neigh.default.gc_thresh2": 512, "net.ipv6.neigh.default.gc_thresh3": 1024,
}
FOR_1000 = {  # at least these for 1000 booted containers
    "fs.inotify.max_user_instances": 1048576, "fs.inotify.max_user_watches": 1048576, "fs.inotify.max_queued_events": 1048576,
    "fs.aio-max-nr": 524288, "vm.max_map_count": 262144, "net.core.bpf_jit_limit": 1000000000, "kernel.pty.max": 7024,
    "kernel.pid_max": 4194304, "kernel.keys.maxkeys": 25000, "kernel.keys.maxbytes": 12500000,
    "net.ipv4.neigh.default.gc_thresh2": 2000, "net.ipv4.neigh.default.gc_thresh3": 4000,
    "net.ipv6.neigh.default.gc_thresh2": 2000, "net.ipv6.neigh.default.gc_thresh3": 4000,
}


def scratch(tmp_path, values: dict[str, int]) -> tuple[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    root = tmp_path / "proc-sys"
    for key, value in values.items():
        path = root.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return str(root), dict(os.environ, PYCOR_PROC_SYS=str(root), PYCOR_SYSCTL_D=str(tmp_path / "sysctl.d"))


def sysctl_up(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", SYSCTL_UP, *args], env=env, capture_output=True, text=True, check=check)


def value(proc: str, key: str) -> int:
    with open(os.path.join(proc, *key.split("."))) as f:
        return int(f.read())


def conf(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return (tmp_path / "sysctl.d" / "60-pycor-containers.conf").read_text()


@pytest.mark.parametrize("key", sorted(FOR_1000))
def test_sysctl_up_raises_each_fleet_limit_now_and_for_the_next_boot(tmp_path, key):
    proc, env = scratch(tmp_path, DEBIAN_DEFAULTS)
    sysctl_up(env, "1000")
    assert value(proc, key) >= FOR_1000[key] > DEBIAN_DEFAULTS[key]
    assert f"{key} = {value(proc, key)}\n" in conf(tmp_path)


def test_sysctl_up_by_default_plans_for_2000_containers(tmp_path):
    proc, env = scratch(tmp_path, DEBIAN_DEFAULTS)
    sysctl_up(env)
    assert value(proc, "kernel.keys.maxkeys") == 50000 and value(proc, "net.ipv4.neigh.default.gc_thresh3") == 8192
    assert value(proc, "kernel.pty.max") == 65536


def test_sysctl_up_never_lowers_a_limit_and_changes_nothing_the_second_time(tmp_path):
    high = {k: v * 100 for k, v in FOR_1000.items()}
    proc, env = scratch(tmp_path, high)
    sysctl_up(env, "1000")
    first = conf(tmp_path)
    assert all(value(proc, k) == v for k, v in high.items())
    assert all(f"{k} = {v}\n" in first for k, v in high.items())  # the next boot keeps the higher value too
    sysctl_up(env, "1000")
    assert conf(tmp_path) == first


def test_sysctl_up_leaves_out_keys_this_kernel_lacks(tmp_path):
    _, env = scratch(tmp_path, {"kernel.pid_max": 32768})
    sysctl_up(env, "1000")
    assert "kernel.pid_max = 4194304" in conf(tmp_path) and "net.ipv6" not in conf(tmp_path)


def test_sysctl_up_refuses_a_count_that_is_not_a_number(tmp_path):
    proc, env = scratch(tmp_path, DEBIAN_DEFAULTS)
    proc_out = sysctl_up(env, "1000; reboot", check=False)
    assert proc_out.returncode == 2 and "N" in proc_out.stderr
    assert value(proc, "kernel.pid_max") == 32768 and not (tmp_path / "sysctl.d").exists()


# -- pycor doctor --fleet N: which limit stops N, and its fix -------------------------------------------------


def host(sysctl: dict[str, int] | None = None) -> doctor.FleetHost:
    """This kind of machine (24 GiB, Debian's limits, LXD's inotify values) with the sysctls given."""
    base = {"kernel.pid_max": 32768, "kernel.threads-max": 192735, "kernel.pty.max": 4096, "kernel.pty.reserve": 1024,
            "kernel.keys.maxkeys": 2000, "kernel.keys.maxbytes": 2000000, "kernel.keys.root_maxkeys": 1000000,
            "fs.inotify.max_user_instances": 1048576, "fs.inotify.max_user_watches": 1048576,
            "net.ipv4.neigh.default.gc_thresh3": 1024}
    return doctor.FleetHost(sysctl={**base, **(sysctl or {})}, mem_total=24 * GiB, mem_available=23 * GiB, disk_free=80 * GiB, tasks=300,
                            bridges={"fleetbr0": 1021})


SET_UP = {"kernel.pty.max": 65536, "kernel.pid_max": 4194304, "kernel.keys.maxkeys": 50000, "kernel.keys.maxbytes": 25000000,
          "net.ipv4.neigh.default.gc_thresh3": 8192}


def verdict(h: doctor.FleetHost, n: int, runtime: str = "lxc", privileged: bool = True,
            needs: doctor.FleetNeeds | None = None) -> tuple[doctor.FleetLimit | None, list[str]]:
    first, short = doctor.fleet_verdict(n, doctor.fleet_capacities(h, needs or doctor.fleet_needs(runtime), n, privileged))
    return first, [r.name for r in short]


def capacity(h: doctor.FleetHost, name: str, runtime: str = "lxc", privileged: bool = True) -> int:
    return next(r.capacity for r in doctor.fleet_capacities(h, doctor.fleet_needs(runtime), 1, privileged) if r.name == name)


def test_ptys_stop_lxc_containers_near_600_on_debians_limits():
    _, short = verdict(host(), 1000)
    assert short[0] == "kernel.pty.max" and capacity(host(), "kernel.pty.max") == 614
    assert capacity(host(), "kernel.pty.max", "lxd", False) == 3072  # one pty each under LXD


def test_keys_stop_unprivileged_containers_sharing_an_idmap_near_120():
    _, short = verdict(host(), 500, "lxd", privileged=False)
    assert short[0] == "kernel.keys.maxkeys" and capacity(host(), "kernel.keys.maxkeys", "lxd", False) == 117


def test_a_miss_names_the_value_that_lets_n_run():
    rows = doctor.fleet_capacities(host(), doctor.fleet_needs("lxc"), 1000, True)
    pty = next(r for r in rows if r.name == "kernel.pty.max")
    assert "sysctl -w kernel.pty.max=6025" in pty.fix and "sysctl-up.sh 1000" in pty.fix


def test_neighbour_table_and_pid_max_stop_a_fleet_when_they_are_lowest():
    assert "net.ipv4.neigh.default.gc_thresh3" in verdict(host({"kernel.pty.max": 65536}), 1000)[1]
    assert "kernel.pid_max" in verdict(host({"kernel.pty.max": 65536, "net.ipv4.neigh.default.gc_thresh3": 8192}), 2700)[1]


def test_one_bridge_holds_1023_containers_and_a_second_one_more():
    h = host(SET_UP)
    h.bridges = {"fleetbr0": None}
    assert "bridge ports on fleetbr0" not in verdict(h, 1023)[1]
    assert "bridge ports on fleetbr0" in verdict(h, 1024)[1]
    h.bridges = {"fleetbr0": None, "fleetbr1": None}
    assert not [s for s in verdict(h, 1024)[1] if s.startswith("bridge ports")]


def test_dhcp_addresses_of_lxcbr0_stop_a_fleet_at_253():
    h = host(SET_UP)
    h.bridges = {"lxcbr0": 253}
    first, short = verdict(h, 300)
    assert first is not None and first.name == "DHCP addresses on lxcbr0" and first.capacity == 253 and short == [first.name]


def test_with_the_limits_setup_sets_memory_comes_first():
    h = host(SET_UP)
    h.bridges = {"fleetbr0": 1021, "fleetbr1": 1021}
    for runtime, privileged in (("lxc", True), ("lxd", False)):
        first, short = verdict(h, 700, runtime, privileged)
        assert not short and first is not None and first.kind == "memory", (runtime, short)


def test_disk_stops_full_copies_of_the_base():
    first, short = verdict(host(SET_UP), 1000, needs=doctor.FleetNeeds(disk=255 * MiB))
    assert first is not None and first.name == "disk" and first.capacity == 317  # (80 GiB - 1 GiB) / 255 MiB


LXC_NET = ["dnsmasq", "--conf-file=/dev/null", "-u", "dnsmasq", "--strict-order", "--bind-interfaces",
           "--pid-file=/run/lxc/dnsmasq.pid", "--listen-address", "10.0.3.1", "--dhcp-range", "10.0.3.2,10.0.3.254",
           "--dhcp-lease-max=253", "--dhcp-no-override", "--except-interface=lo", "--interface=lxcbr0"]
LXD_NET = ["dnsmasq", "--keep-in-foreground", "--no-ping", "--interface=lxdbr0", "--listen-address=10.0.100.1",
           "--dhcp-range", "10.0.100.2,10.0.100.254,1h", "-s", "lxd", "--conf-file=/var/lib/lxd/networks/lxdbr0/dnsmasq.raw"]


def test_dhcp_addresses_are_read_from_dnsmasqs_range_and_lease_cap():
    assert doctor.dnsmasq_addresses(LXC_NET) == 253
    assert doctor.dnsmasq_addresses(LXD_NET) == 253
    wide = [a.replace("10.0.100.254", "10.0.103.254") for a in LXD_NET]
    assert doctor.dnsmasq_addresses(wide) == 1000  # dnsmasq's default --dhcp-lease-max
    assert doctor.dnsmasq_addresses(wide, "dhcp-lease-max=1021\n") == 1021  # LXD's raw.dnsmasq
    assert doctor.dnsmasq_addresses(["dnsmasq", "--dhcp-range=10.23.0.2,10.23.3.254,1h", "--dhcp-lease-max=1021"]) == 1021
    assert doctor.dnsmasq_addresses(["dnsmasq", "--interface=br0"]) is None  # no DHCP there


# -- benchmarks/fleet.py: its own logic ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    spec = importlib.util.spec_from_file_location("fleet_benchmark", os.path.join(REPO, "benchmarks", "fleet.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fleet_steps_end_at_max_n(fleet):
    assert fleet.default_steps(2000)[:6] == [25, 50, 100, 150, 200, 300] and fleet.default_steps(2000)[-1] == 2000
    assert fleet.default_steps(60) == [25, 50, 60]


def test_fleet_gives_each_container_its_own_mac_and_a_bridge_per_1000(fleet):
    macs = {fleet.mac(s, i) for s in range(6) for i in range(3000)}
    assert len(macs) == 18000 and all(int(m.split(":")[0], 16) & 2 for m in macs)  # locally administered

    class Net(fleet.Fleet):
        def make_network(self, name: str) -> None:
            made.append(name)

    made: list[str] = []
    system = type("S", (), {"name": "pycor-lxc"})()
    net = Net(system, 0, None, "ab12")
    assert net.network(0) == net.network(999) == "flab120n0" and net.network(1000) == "flab120n1" and len(made) == 2
    assert all(len(n) <= 15 for n in made)  # a Linux interface name


def test_fleet_criterion_names_the_first_condition_a_step_fails(fleet):
    crit = fleet.Criterion(fleet.argparse.Namespace(time_base=120, time_per_container=2, psi_max=10, memavail_min=5, guard=3,
                                                   idle=60, disk_reserve=15))
    ok = {"n": 100, "guard": False, "oom_kills": 0, "late": [], "bad": [], "addresses": 100, "http_ok": 100,
          "psi_some_avg10_max": 2.0, "memavailable_min_bytes": 4 * GiB, "memtotal_bytes": 24 * GiB}
    assert crit.judge(ok) is None
    assert crit.judge({**ok, "psi_some_avg10_max": 10.0}) == "psi"
    assert crit.judge({**ok, "memavailable_min_bytes": GiB}) == "memavailable"
    assert crit.judge({**ok, "http_ok": 99, "psi_some_avg10_max": 50}) == "http"  # the containers first, then memory
    assert crit.judge({**ok, "late": ["f1"], "addresses": 0}) == "time"
    assert crit.time_limit(100) == 320


def test_fleet_reads_dnsmasq_leases_by_container_name(fleet, tmp_path):
    leases = tmp_path / "leases"
    leases.write_text("1796623963 02:fc:00:00:00:07 10.23.0.9 fpycorlxc7 01:02:fc:00:00:00:07\n"
                      "1796623963 02:fc:00:00:00:08 10.23.0.10 * *\nbroken\n")
    assert fleet.read_leases(str(leases)) == {"fpycorlxc7": "10.23.0.9"}
    assert fleet.read_leases(str(tmp_path / "none")) == {}


IP_LINK_VETHS = """\
5104: vethc51a335b@veth13116854: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN
5105: veth13116854@vethc51a335b: <NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN> mtu 1500 qdisc noqueue state LOWERLAYERDOWN
5108: physnkhZLZ@veth629f1265: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN
5109: veth629f1265@physnkhZLZ: <NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN> mtu 1500 qdisc noqueue state LOWERLAYERDOWN
5110: veth9a0b1c2d@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master fl1de11n0 state UP link-netnsid 3
5111: veth00000001@veth00000002: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master lxcbr0 state UP
5112: mine0@mine1: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN
"""


def test_fleet_teardown_takes_only_runtime_veth_pairs_left_whole_on_the_host_since_the_run_began(fleet) -> None:  # type: ignore[no-untyped-def]
    """A pair whose end is in a container (@ifN), on a bridge, named by someone else, or older than the run stays."""
    assert fleet.host_veths(IP_LINK_VETHS, 0) == ["vethc51a335b", "veth13116854", "physnkhZLZ", "veth629f1265"]
    assert fleet.host_veths(IP_LINK_VETHS, 5105) == ["physnkhZLZ", "veth629f1265"]
    assert fleet.host_veths(IP_LINK_VETHS, 6000) == []


def test_fleet_tears_down_only_ledgers_a_root_run_wrote(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/var/tmp is anyone's: a planted ledger naming '/' as its folder must not make root's next run remove it."""
    def ledger(name: str, work: str | None = None, dir_mode: int = 0o755, mode: int = 0o644, uid: int = 0) -> str:
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "ledger.json"
        path.write_text(json.dumps({"tool": "pycor-fleet", "work": work or str(folder), "pid": 1}))
        os.chmod(path, mode)
        os.chmod(folder, dir_mode)
        os.chown(path, uid, 0)
        return str(path)

    assert fleet.trusted_ledger(ledger("good")) is not None
    assert fleet.trusted_ledger(ledger("elsewhere", work="/")) is None
    assert fleet.trusted_ledger(ledger("anyones-folder", dir_mode=0o1777)) is None
    assert fleet.trusted_ledger(ledger("anyones-file", mode=0o666)) is None
    assert fleet.trusted_ledger(ledger("a-users", uid=1000)) is None
    (tmp_path / "link").mkdir()
    os.symlink(ledger("target"), tmp_path / "link" / "ledger.json")
    assert fleet.trusted_ledger(str(tmp_path / "link" / "ledger.json")) is None
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ledger.json").write_text("[1, 2]")
    assert fleet.trusted_ledger(str(tmp_path / "junk" / "ledger.json")) is None


def test_a_boot_check_whose_exec_hangs_asks_systemd_when_its_boot_finished(fleet) -> None:  # type: ignore[no-untyped-def]
    """LXD's exec sometimes never returns while the container runs: the boot still counts if it finished in time."""
    import subprocess
    import time

    class Hangs:
        def __init__(self, finished_after: float | None) -> None:
            self.calls, self.finished_after = 0, finished_after

        def sh(self, c: str, script: str, timeout: float = 900) -> str:
            self.calls += 1
            if self.calls == 1:
                raise subprocess.TimeoutExpired(["lxc", "exec", c], timeout)
            if self.finished_after is None:
                return "starting\n0\n"
            return f"running\n{int((time.monotonic() + self.finished_after) * 1e6)}\n"

    assert fleet.boot_state(Hangs(5), "c1", 60) == "running"
    assert fleet.boot_state(Hangs(120), "c1", 60).startswith("late: running")
    assert fleet.boot_state(Hangs(None), "c1", 60) == "starting"
