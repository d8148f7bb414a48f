"""Fleet: how many booted system containers one host holds, per system, N raised in steps until it does not.

    sudo .venv/bin/python benchmarks/fleet.py --max-n 2000                  # every system, to its limit
    sudo .venv/bin/python benchmarks/fleet.py --systems pycor-lxc,lxd-btrfs --max-n 60
    sudo .venv/bin/python benchmarks/fleet.py --resume --max-n 2000         # after a killed run: the systems it had not done
    sudo .venv/bin/python benchmarks/fleet.py --cleanup                     # only tear down what a killed run left

Systems (systems.py): pycor-lxc, pycor-lxd, lxc-overlay (LXC's overlay clones), lxc-copy (full copies),
lxd-dir, lxd-btrfs, all on the default bootable base (pycor base import NAME --debootstrap SUITE
--bootable: systemd, DHCP on eth0, nginx; the anchors run a copy of its merged view). LXC containers
join bridges of the run's own (scripts/fleet-net.sh: a /22 and a dnsmasq sized for 1000 each, a bridge
per 1000 containers), LXD ones managed networks of the run's own, sized the same.

The criterion of "the host holds N", the same for every system: the containers added in a step all reach
systemd 'running' within the step's time limit (--time-base + --time-per-container for each new one, at
most --batch booting at once); every one of the N still runs, has a DHCP address and answers HTTP; then,
over --idle seconds of idle, memory pressure stays low (/proc/pressure/memory 'some avg10' under
--psi-max %, sampled every 5 s) and MemAvailable stays above --memavail-min % of MemTotal. The first step
that fails ends the system's run, for a reason the results name: time, state (not 'running', or stopped),
address, http, psi, memavailable; or, checked before a step is made: disk (the step would leave less
than --disk-reserve GiB free), limit:NAME (a kernel limit, as 'pycor doctor --fleet' reads it, is lower
than the step needs); or guard (MemAvailable fell under --guard % while booting: the run stops starting
containers at once to protect the host), oom (the kernel killed a process), error; max-n if it never failed.

Per step, against the moment before the first container: time until the step's containers run, page
cache (Cached - Shmem), Shmem, MemAvailable (and its minimum over the idle), Slab, PageTables; memory
PSI; what the containers' memory cgroups are charged (anon, page cache, shmem, kernel), their tasks, the
monitors' anonymous memory, DHCP leases, neighbour entries, ptys, keys, disk used. Output in --out:
fleet.json (rewritten after every step: a killed run keeps what it measured), fleet.md, fleet.png.

Teardown: what the run makes is written to a ledger (/var/tmp/pycor-fleet-*/ledger.json) before it is
made. The run tears it all down at its end, on failure and on SIGTERM, SIGINT or SIGHUP; a run killed
with SIGKILL (or a host crash) is torn down by the next run, or by --cleanup: containers and their DHCP
leases, LXD instances, images, profiles, project, networks and storage pools, the bridges with their
dnsmasq and veths, pycor's run records and idmapped views, the base the run built, mounts under its folder.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from density import boot_state, charges, link_to_bridge, prepare  # noqa: E402
from run import drop_caches, meminfo, mib  # noqa: E402
from systems import PYCOR, LxcCopy, LxcOverlay, LxdBtrfs, LxdDir, LxdSystem, PycorLxc, PycorLxd, System, sh  # noqa: E402

from pycor_hooks.doctor import fleet_capacities, fleet_needs, read_fleet_host, read_sysctls  # noqa: E402

FLEET_NET = os.path.join(REPO, "scripts", "fleet-net.sh")
LEDGERS = "/var/tmp/pycor-fleet-*/ledger.json"
PER_BRIDGE = 1000  # a Linux bridge takes 1023 ports: 1000 containers a bridge (and a /22, 1021 addresses), then the next
SYSTEMS: dict[str, type[System]] = {cls.name: cls for cls in (PycorLxc, PycorLxd, LxcOverlay, LxcCopy, LxdDir, LxdBtrfs)}
LXD_LOGS = "/var/log/lxd"


def log(msg: str) -> None:
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


# -- the ledger: what the run makes, written down before it is made ----------------------------------------


def process_start(pid: int) -> int | None:
    """The start time of process pid (clock ticks since boot), or None if it is gone: tells a pid reused apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class Ledger:
    """A JSON file naming everything the run made, so that this run or any later one can tear it down."""

    LISTS = ("bridges", "lxd_networks", "lxd_pools")

    def __init__(self, path: str, data: dict) -> None:
        self.path, self.data, self.lock = path, data, threading.Lock()

    @classmethod
    def create(cls, work: str, **fields: str | int | None) -> Ledger:
        data = {"tool": "pycor-fleet", "pid": os.getpid(), "pid_start": process_start(os.getpid()), "work": work,
                **fields, **{k: [] for k in cls.LISTS}}
        ledger = cls(os.path.join(work, "ledger.json"), data)
        ledger.save()
        return ledger

    def add(self, key: str, value: str) -> None:
        with self.lock:
            if value not in self.data[key]:
                self.data[key].append(value)
                self.save()

    def save(self) -> None:
        with open(self.path + ".new", "w") as f:
            json.dump(self.data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.path + ".new", self.path)

    def alive(self) -> bool:
        """The run that wrote it still runs."""
        pid = self.data.get("pid")
        return bool(pid) and process_start(pid) == self.data.get("pid_start")


def mac(system_index: int, i: int) -> str:
    """A fixed locally administered MAC per container: LXD's and LXC's random 24-bit suffixes collide
    once in about 30 runs of 1000 containers, and two containers with one MAC on a bridge lose their network."""
    return f"02:fc:{system_index:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def read_leases(path: str) -> dict[str, str]:
    """hostname -> address, from a dnsmasq lease file (EXPIRY MAC IP HOSTNAME CLIENT-ID)."""
    out = {}
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[3] != "*":
                out[fields[3]] = fields[2]
    return out


# -- the systems as fleets: a network sized for them, readiness, bulk teardown ---------------------------------


class Fleet:
    """A system of systems.py run as a fleet: container i is named PREFIX<i> and joins network i // 1000."""

    privileged = True
    runtime = "lxc"
    lease_file = "/var/lib/misc/dnsmasq.{net}.leases"

    def __init__(self, system: System, index: int, ledger: Ledger, tag: str) -> None:
        self.system, self.index, self.ledger = system, index, ledger
        self.name = system.name
        self.prefix = "f" + re.sub(r"[^a-z0-9]", "", system.name)[:8]
        self.net_prefix = f"fl{tag}{index}n"  # network k of this system: fl<tag><index>n<k>, at most 15 characters
        self.networks: list[str] = []
        self.net_lock = threading.Lock()  # containers are made 4 at a time
        self.disk_per_container = 0  # bytes a new container takes on the host's disk (from the first one made)
        self.lock = threading.Lock()
        self.start_logs: dict[str, list[str]] = {}  # the first failed starts: what the runtime logged (ERROR lines)

    def cname(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def index_of(self, c: str) -> int:
        return int(c[len(self.prefix):])

    def network(self, i: int) -> str:
        """The network container i joins, made when the first container needs it."""
        k = i // PER_BRIDGE
        with self.net_lock:
            while len(self.networks) <= k:
                name = f"{self.net_prefix}{len(self.networks)}"
                self.make_network(name)
                self.networks.append(name)
            return self.networks[k]

    def make_network(self, name: str) -> None: raise NotImplementedError
    def create(self, i: int) -> str: raise NotImplementedError
    def running(self) -> set[str]: raise NotImplementedError

    def instance(self, c: str) -> str:
        """What LXC calls container c (LXD prefixes its project)."""
        return c

    def containers_dir(self) -> str:
        return "/var/lib/lxd/containers"

    def leases(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for net in self.networks:
            out.update(read_leases(self.lease_file.format(net=net)))
        return out

    def cgroup(self, c: str) -> str:
        return f"lxc.payload.{self.instance(c)}"

    def monitor_cmdline(self) -> str:
        """How the command line of each container's monitor begins (the containers' folder, then the name)."""
        return f"[lxc monitor] {self.containers_dir()} {self.instance(self.prefix)}"

    def boot(self, c: str, timeout: float) -> str:
        """Start c, then wait (up to timeout s) for systemd to finish booting: its state."""
        try:
            self.system.start(c)
        except Exception as e:  # noqa: BLE001 - any failure is the container's state
            try:
                errors = [line.strip() for line in self.system.start_log(c).splitlines() if " ERROR " in line]
            except Exception as log_error:  # noqa: BLE001 - the log is a help; the state is what counts
                errors = [f"no log: {log_error}"[:200]]
            with self.lock:
                if len(self.start_logs) < 5:  # the first few: they say why; the rest repeat it
                    self.start_logs[c] = errors[-6:]
            return f"start failed: {str(e)[-200:]}"
        return boot_state(self.system, c, max(1, int(timeout)))

    def destroy(self, names: list[str]) -> None:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(self.system.destroy, names))

    def teardown(self) -> None:
        self.system.teardown()


class LxcFleet(Fleet):
    def containers_dir(self) -> str:
        return self.system.ctx.lxcpath

    def make_network(self, name: str) -> None:
        self.ledger.add("bridges", name)
        sh(["bash", FLEET_NET, "up", name], env=dict(os.environ, FLEET_NAT="0"))

    def create(self, i: int) -> str:
        c = self.cname(i)
        bridge = self.network(i)
        self.system.create(c)
        link_to_bridge(self.system, c, bridge, mac(self.index, i))
        return c

    def running(self) -> set[str]:
        return set(sh(["lxc-ls", "--running", "-1", "-P", self.system.ctx.lxcpath], check=False).split())

    def destroy(self, names: list[str]) -> None:
        super().destroy(names)
        for br in self.networks:  # dnsmasq keeps a lease an hour after its container is gone
            sh(["bash", FLEET_NET, "release", br, *names], check=False)

    def teardown(self) -> None:
        for br in self.networks:
            sh(["bash", FLEET_NET, "down", br], check=False)
        super().teardown()


class LxdFleet(Fleet):
    privileged = False
    runtime = "lxd"
    lease_file = "/var/lib/lxd/networks/{net}/dnsmasq.leases"
    system: LxdSystem

    def __init__(self, system: System, index: int, ledger: Ledger, tag: str) -> None:
        super().__init__(system, index, ledger, tag)
        self.project = self.system.ctx.project
        self.system.init_options = self.init_options  # type: ignore[method-assign]

    def make_network(self, name: str) -> None:
        cidr = sh(["bash", FLEET_NET, "cidr"]).strip()
        self.ledger.add("lxd_networks", name)
        # a /22 (1021 addresses) and its dnsmasq told so; LXD hands a deleted instance's lease back itself
        sh(["lxc", "network", "create", name, f"ipv4.address={cidr}", "ipv4.nat=false", "ipv6.address=none",
            f"raw.dnsmasq=dhcp-lease-max={PER_BRIDGE + 21}"])
        self.system.lxc("profile", "create", name)
        self.system.lxc("profile", "device", "add", name, "eth0", "nic", "name=eth0", f"network={name}")

    def init_options(self, c: str) -> list[str]:
        i = self.index_of(c)
        return ["--profile", self.network(i), "-c", f"volatile.eth0.hwaddr={mac(self.index, i)}"]

    def create(self, i: int) -> str:
        c = self.cname(i)
        self.network(i)
        self.system.create(c)
        return c

    def running(self) -> set[str]:
        rows = (line.split(",") for line in self.system.lxc("list", "--format", "csv", "-c", "ns", check=False).splitlines())
        return {r[0] for r in rows if len(r) >= 2 and r[1] == "RUNNING"}

    def instance(self, c: str) -> str:
        return f"{self.project}_{c}"

    def teardown(self) -> None:
        for net in self.networks:
            self.system.lxc("profile", "delete", net, check=False)
            sh(["lxc", "network", "delete", net], check=False)
        super().teardown()


# -- what the host and the containers use -----------------------------------------------------------------


def psi_memory() -> dict[str, dict[str, float]]:
    out = {}
    with open("/proc/pressure/memory") as f:
        for line in f:
            kind, *kv = line.split()
            out[kind] = {k: float(v) for k, v in (x.split("=") for x in kv)}
    return out


def vmstat(key: str) -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k == key:
                return int(v)
    return 0


def disk_free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def snapshot(path: str) -> dict:
    m = meminfo()
    return {"t": time.time(), "psi": psi_memory(), "oom_kill": vmstat("oom_kill"), "disk_free": disk_free(path),
            **{k: m[k] for k in ("MemTotal", "MemAvailable", "Cached", "Shmem", "Slab", "PageTables")}}


def cgroup_charges(name: str) -> dict[str, int] | None:
    """density.charges() of the container's memory cgroup by its name: cgroup v1's memory controller, else v2."""
    for folder, v1 in ((f"/sys/fs/cgroup/memory/{name}", True), (f"/sys/fs/cgroup/{name}", False)):
        if os.path.exists(os.path.join(folder, "memory.stat")):
            with contextlib.suppress(OSError, KeyError, ValueError):
                return charges(folder, v1)
    return None


def cgroup_tasks(name: str) -> int:
    for path in (f"/sys/fs/cgroup/pids/{name}/pids.current", f"/sys/fs/cgroup/{name}/pids.current"):
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            return int(f.read())
    return 0


def monitors(cmdline: str) -> dict[str, int]:
    """The containers' host-side monitors (under LXD a forked daemon): how many, their anonymous memory."""
    n = anon = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read(512).decode(errors="replace").startswith(cmdline):
                    continue
            with open(f"/proc/{pid}/smaps_rollup") as f:
                anon += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss_Anon:"))
            n += 1
        except OSError:
            continue
    return {"n": n, "anon_bytes": anon}


def key_users() -> dict[str, dict[str, int]]:
    """/proc/key-users: keys and their bytes per host uid (the quota kernel.keys.maxkeys/maxbytes bound)."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/key-users") as f:
        for line in f:
            m = re.match(r"\s*(\d+):\s+\d+\s+\d+/\d+\s+(\d+)/\d+\s+(\d+)/\d+", line)
            if m:
                out[m.group(1)] = {"keys": int(m.group(2)), "bytes": int(m.group(3))}
    return out


def lxd_ksm() -> bool:
    """Whether the LXD daemon runs under samepage merging (PYCOR_KSM=1 scripts/lxd-up.sh): its monitors then share pages."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[:2] == [b"lxd", b"--group"]:
                with open(f"/proc/{pid}/ksm_stat") as k:
                    return "ksm_merge_any: yes" in k.read()
    return False


def ksmd_settings() -> dict[str, str]:
    """How fast ksmd scans (/sys/kernel/mm/ksm): what merging could save by the time a step is measured."""
    out = {}
    for key in ("run", "pages_to_scan", "sleep_millisecs", "advisor_mode", "advisor_max_cpu", "advisor_target_scan_time"):
        with contextlib.suppress(OSError), open(f"/sys/kernel/mm/ksm/{key}") as f:
            out[key] = f.read().strip()
    return out


def http_ok(ip: str | None, timeout: float = 10) -> bool:
    if not ip:
        return False
    try:
        with urllib.request.urlopen(f"http://{ip}/", timeout=timeout) as r:
            return bool(r.status == 200)
    except Exception:  # noqa: BLE001 - any failure is a miss
        return False


# -- the criterion -----------------------------------------------------------------------------------------


class Criterion:
    def __init__(self, args: argparse.Namespace) -> None:
        self.time_base, self.time_per = args.time_base, args.time_per_container
        self.psi_max, self.memavail_min, self.guard = args.psi_max, args.memavail_min / 100, args.guard / 100
        self.idle, self.disk_reserve = args.idle, int(args.disk_reserve * 2**30)

    def time_limit(self, added: int) -> float:
        return self.time_base + self.time_per * added

    def to_json(self) -> dict:
        return {"time_base_s": self.time_base, "time_per_container_s": self.time_per, "psi_max_pct": self.psi_max,
                "memavail_min_pct": self.memavail_min * 100, "guard_pct": self.guard * 100, "idle_s": self.idle,
                "disk_reserve_gib": self.disk_reserve / 2**30}

    def judge(self, p: dict) -> str | None:
        """Why this step fails the criterion (the first reason), or None."""
        checks = [("guard", p["guard"]), ("oom", p["oom_kills"] > 0), ("time", p["late"]), ("state", p["bad"]),
                  ("address", p["addresses"] < p["n"]), ("http", p["http_ok"] < p["n"]),
                  ("psi", p["psi_some_avg10_max"] >= self.psi_max),
                  ("memavailable", p["memavailable_min_bytes"] < self.memavail_min * p["memtotal_bytes"])]
        return next((why for why, failed in checks if failed), None)


CRITERION_KEYS = {"time_base": "time_base_s", "time_per_container": "time_per_container_s", "psi_max": "psi_max_pct",
                  "memavail_min": "memavail_min_pct", "guard": "guard_pct", "idle": "idle_s", "disk_reserve": "disk_reserve_gib"}


def judge(data: dict, crit: Criterion) -> None:
    for r in data["systems"]:
        for p in r["points"]:
            p["fails"] = crit.judge(p)


def detail_of(why: str, p: dict) -> str:
    return {"time": f"{len(p['late'])} of the step's {p['added']} not 'running' after {p['time_limit_s']:.1f} s: {p['late'][:5]}",
            "state": f"{p['bad'][:5]}", "address": f"{p['addresses']} of {p['n']} have an address",
            "http": f"{p['http_ok']} of {p['n']} answer HTTP",
            "psi": f"memory PSI some avg10 reached {p['psi_some_avg10_max']:.1f} %",
            "memavailable": f"MemAvailable fell to {mib(p['memavailable_min_bytes'])} MiB",
            "guard": "MemAvailable under the guard while booting", "oom": f"{p['oom_kills']} OOM kills"}.get(why, "")


# -- one system: N raised in steps -----------------------------------------------------------------------------


def kernel_limit(fleet: Fleet, n: int, args: argparse.Namespace) -> str | None:
    """The kernel limit (as 'pycor doctor --fleet' reads it) that stops n containers of this fleet, if any."""
    host = read_fleet_host(args.work, [])
    short = [r for r in fleet_capacities(host, fleet_needs(fleet.runtime), n, fleet.privileged, booting=args.batch)
             if r.kind == "kernel" and r.capacity < n]
    return f"{short[0].name} = {short[0].value} holds {short[0].capacity}; fix: {short[0].fix}" if short else None


def step(fleet: Fleet, made: list[str], target: int, crit: Criterion, base: dict, args: argparse.Namespace) -> dict:
    """Add containers up to target, boot them, check all of them, then idle: the step's measurements."""
    added = target - len(made)
    t0 = time.perf_counter()
    new: list[str] = []
    with ThreadPoolExecutor(4) as ex:
        for c in ex.map(fleet.create, range(len(made), target)):
            made.append(c)
            new.append(c)
    create_s = time.perf_counter() - t0
    if not fleet.disk_per_container:
        fleet.disk_per_container = max(fleet.system.disk(new[0]), 1 << 20)
    limit = crit.time_limit(added)
    deadline = time.monotonic() + limit
    oom0 = vmstat("oom_kill")
    states: dict[str, str] = {}
    guard = threading.Event()

    def boot(c: str) -> None:
        if guard.is_set() or meminfo()["MemAvailable"] < crit.guard * base["MemTotal"]:
            guard.set()
            states[c] = "not started (guard)"
            return
        states[c] = fleet.boot(c, deadline - time.monotonic())

    log(f"{fleet.name} N={target}: {added} made in {create_s:.0f} s, booting")
    t1 = time.perf_counter()
    with ThreadPoolExecutor(args.batch) as ex:
        list(ex.map(boot, new))
    boot_s = time.perf_counter() - t1
    ok = ("running",) + (("degraded",) if args.allow_degraded else ())
    settled = ("running", "degraded", "maintenance", "stopping")
    late = [c for c in new if states[c] not in settled and not states[c].startswith(("start failed", "not started"))]
    up = fleet.running()
    bad = [f"{c}: {states.get(c, 'stopped')}" for c in made
           if c not in late and (c not in up or (c in states and states[c] not in ok))]
    leases = fleet.leases()
    with ThreadPoolExecutor(16) as ex:
        http = sum(ex.map(lambda c: http_ok(leases.get(c)), made))
    # idle: memory pressure and MemAvailable sampled every 5 s
    samples = []
    t_idle = time.monotonic()
    while time.monotonic() - t_idle < crit.idle:
        time.sleep(min(5.0, crit.idle))
        s = snapshot(args.work)
        samples.append({"t": round(time.monotonic() - t_idle, 1), "psi_some_avg10": s["psi"]["some"]["avg10"],
                        "memavailable": s["MemAvailable"]})
    after = snapshot(args.work)
    charged = [ch for ch in (cgroup_charges(fleet.cgroup(c)) for c in made) if ch]
    return {
        "n": target, "added": added, "create_s": create_s, "boot_s": boot_s, "time_limit_s": limit,
        "states": {v: sum(1 for x in states.values() if x == v) for v in set(states.values())},
        "late": late[:20], "bad": bad[:20], "start_logs": dict(fleet.start_logs),
        "running": len(up & set(made)), "addresses": sum(1 for c in made if c in leases),
        "http_ok": http, "guard": guard.is_set(), "oom_kills": vmstat("oom_kill") - oom0,
        "memtotal_bytes": after["MemTotal"], "memavailable_bytes": after["MemAvailable"],
        "memavailable_min_bytes": min([after["MemAvailable"]] + [x["memavailable"] for x in samples]),
        "memavailable_drop_bytes": base["MemAvailable"] - after["MemAvailable"],
        "page_cache_bytes": (after["Cached"] - after["Shmem"]) - (base["Cached"] - base["Shmem"]),
        "shmem_bytes": after["Shmem"] - base["Shmem"], "slab_bytes": after["Slab"] - base["Slab"],
        "pagetables_bytes": after["PageTables"] - base["PageTables"],
        "psi_some_avg10_max": max([after["psi"]["some"]["avg10"]] + [x["psi_some_avg10"] for x in samples]),
        "psi_some_avg60": after["psi"]["some"]["avg60"], "psi_full_avg10": after["psi"]["full"]["avg10"], "idle_samples": samples,
        "cgroup_bytes": {k: sum(ch[k] for ch in charged) for k in ("anon", "cache", "shmem", "kernel", "mapped_file")},
        "cgroups_read": len(charged), "tasks": sum(cgroup_tasks(fleet.cgroup(c)) for c in made),
        "monitors": monitors(fleet.monitor_cmdline()), "leases": len(leases),
        "neigh_entries": len(sh(["ip", "-4", "neigh", "show"], check=False).splitlines()),
        "ptys": read_sysctls(("kernel.pty.nr",))["kernel.pty.nr"], "keys": key_users(),
        "disk_used_bytes": base["disk_free"] - after["disk_free"], "disk_free_bytes": after["disk_free"],
    }


def run_system(fleet: Fleet, steps: list[int], crit: Criterion, args: argparse.Namespace, save) -> dict:  # type: ignore[no-untyped-def]
    made: list[str] = []
    result = {"system": fleet.name, "points": [], "held": 0, "end_reason": "max-n", "end_detail": "", "disk_per_container_bytes": 0}
    drop_caches()
    time.sleep(2)
    base = snapshot(args.work)
    try:
        for target in steps:
            added = target - len(made)
            if added <= 0:
                continue
            need = fleet.disk_per_container * added
            if base["disk_free"] and disk_free(args.work) - need < crit.disk_reserve:
                result.update(end_reason="disk", end_detail=f"{mib(disk_free(args.work))} MiB free, the step to {target} "
                              f"needs ~{mib(need)} MiB and the run keeps {mib(crit.disk_reserve)} MiB")
                break
            why_limit = kernel_limit(fleet, target, args)
            if why_limit:
                result.update(end_reason="limit:" + why_limit.split(" =")[0], end_detail=why_limit)
                break
            p = step(fleet, made, target, crit, base, args)
            result["points"].append(p)
            result["disk_per_container_bytes"] = fleet.disk_per_container
            why = crit.judge(p)
            log(f"{fleet.name} N={target}: +{p['added']} running in {p['boot_s']:.0f} s (limit {p['time_limit_s']:.0f}), "
                f"addresses {p['addresses']}, http {p['http_ok']}, MemAvailable {mib(p['memavailable_bytes'])} MiB "
                f"(min {mib(p['memavailable_min_bytes'])}), PSI some avg10 max {p['psi_some_avg10_max']:.1f} %, "
                f"page cache {mib(p['page_cache_bytes'])} MiB, anon {mib(p['cgroup_bytes']['anon'])} MiB, tasks {p['tasks']}"
                + (f" -> fails: {why}" if why else ""))
            if why:
                result.update(end_reason=why, end_detail=detail_of(why, p))
                break
            result["held"] = target
            save(result)
    except Exception as e:  # noqa: BLE001 - the run records why it ended and goes on with the next system
        result.update(end_reason="error", end_detail=f"{type(e).__name__}: {str(e)[-400:]}")
        log(f"{fleet.name}: error: {result['end_detail']}")
    finally:
        t = time.perf_counter()
        fleet.destroy(made)
        log(f"{fleet.name}: {len(made)} containers removed in {time.perf_counter() - t:.0f} s; "
            f"holds {result['held']}, ended by {result['end_reason']}")
    return result


# -- set-up and tear-down ----------------------------------------------------------------------------------------


def mounts_under(path: str) -> list[str]:
    top = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    return sorted((p for p in points if p == top or p.startswith(top + "/")), key=len, reverse=True)


def remove_cgroups(names: Callable[[str], bool]) -> None:
    """Remove the empty cgroups LXC left for containers whose name passes names: those of a monitor killed
    (LXD died under the fleet's memory) stay, 15 a booted container, each holding kernel memory."""
    from pycor_hooks.linux import container_cgroups, remove_cgroup_if_empty

    for top in container_cgroups(names):
        remove_cgroup_if_empty(top)


def max_ifindex() -> int:
    """The highest interface index on the host now: a link made later has a higher one (indexes only grow)."""
    top = 0
    for name in os.listdir("/sys/class/net"):
        with contextlib.suppress(OSError, ValueError), open(f"/sys/class/net/{name}/ifindex") as f:
            top = max(top, int(f.read()))
    return top


_VETH = re.compile(r"(\d+): ([^@:\s]+)@([^:\s]+):")
_RUNTIME_VETH = re.compile(r"veth[0-9a-f]{8}|phys[0-9A-Za-z]{6}")  # LXD's (LXC makes its peer in the container)


def host_veths(ip_link: str, after: int) -> list[str]:
    """From 'ip -o link show type veth': the veths made after interface index after, named as LXD names them,
    whose peer is on the host too (not '@ifN', in a container) and that sit on no bridge: pairs a runtime
    made for a container that never took its end. LXD leaves a few when hundreds of containers stop at once,
    and a fleet run stops thousands."""
    found = []
    for line in ip_link.splitlines():
        m = _VETH.match(line.strip())
        if m and int(m[1]) > after and _RUNTIME_VETH.fullmatch(m[2]) and _RUNTIME_VETH.fullmatch(m[3]) \
                and " master " not in line:
            found.append(m[2])
    return found


def remove_host_veths(after: int) -> None:
    """Delete the veth pairs host_veths finds, those found twice 5 s apart (a container that starts holds both
    ends on the host for a moment, before it takes its own)."""
    def find() -> set[str]:
        return set(host_veths(sh(["ip", "-o", "link", "show", "type", "veth"], check=False), after))

    first = find()
    if first:
        time.sleep(5)
        left = first & find()
        for name in sorted(left):
            sh(["ip", "link", "delete", name], check=False)  # its peer goes with it
        if left:
            log(f"cleanup: removed {len(left)} veths the runtime left on the host")


def cleanup(ledger: Ledger) -> None:
    """Tear down everything a ledger names, whatever state it is in; each part goes on after another failed."""
    d = ledger.data
    project, lxcpath = d.get("project"), d.get("lxcpath")
    if project:
        lxd = ["lxc", "--project", project]
        names = sh([*lxd, "list", "-c", "n", "--format", "csv"], check=False).split()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda c: sh([*lxd, "delete", "--force", c], check=False, timeout=300), names))
        for fp in sh([*lxd, "image", "list", "-c", "f", "--format", "csv"], check=False).split():
            sh([*lxd, "image", "delete", fp], check=False)
        for line in sh([*lxd, "profile", "list", "--format", "csv"], check=False).splitlines():
            if line.split(",")[0] not in ("", "default"):
                sh([*lxd, "profile", "delete", line.split(",")[0]], check=False)
        sh(["lxc", "project", "delete", project], check=False)
        for folder in glob.glob(f"{LXD_LOGS}/{project}_*"):  # LXD 5.0 keeps each deleted instance's log folder
            shutil.rmtree(folder, ignore_errors=True)
        remove_cgroups(lambda name: name.startswith(f"{project}_"))
    for net in d["lxd_networks"]:
        sh(["lxc", "network", "delete", net], check=False)
    for pool in d["lxd_pools"]:
        sh(["lxc", "storage", "delete", pool], check=False)
    if lxcpath and os.path.isdir(lxcpath):
        names = [n for n in os.listdir(lxcpath) if os.path.isfile(os.path.join(lxcpath, n, "config"))]

        def gone(c: str) -> None:
            sh(["lxc-stop", "-k", "-n", c, "-P", lxcpath], check=False, timeout=120)
            sh(["lxc-destroy", "-n", c, "-P", lxcpath], check=False, timeout=300)

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(gone, names))
        remove_cgroups(set(names).__contains__)
    for br in d["bridges"]:  # its dnsmasq and its leases go with it, and the veths left on it
        sh(["bash", FLEET_NET, "down", br], check=False)
    if isinstance(d.get("ifindex"), int):
        try:
            remove_host_veths(d["ifindex"])
        except (OSError, subprocess.SubprocessError) as e:
            log(f"cleanup: the veths left on the host stay: {e}")
    env = dict(os.environ, PYCOR_STORE=d["store"])
    if os.path.isdir(d["store"]):
        sh(PYCOR + ["doctor", "--fix"], env=env, check=False)  # run records of killed containers, their idmapped views
        if d.get("own_base"):
            sh(PYCOR + ["base", "rm", d["own_base"], *(["-P", lxcpath] if lxcpath else [])], env=env, check=False)
    from pycor_hooks.linux import MNT_DETACH, umount2

    for point in mounts_under(d["work"]):
        with contextlib.suppress(OSError):
            umount2(point, MNT_DETACH)
    left = mounts_under(d["work"])
    if left:
        log(f"cleanup: mounts left under {d['work']}: {left}")
    elif project and project in (sh(["lxc", "project", "list", "--format", "csv"], check=False) or project):
        # the daemon did not answer (it died under the fleet's memory pressure): the ledger stays for --cleanup
        log(f"cleanup: LXD project {project} is still there; start LXD again (scripts/lxd-up.sh), then run --cleanup")
    else:
        shutil.rmtree(d["work"], ignore_errors=True)


def trusted_ledger(path: str) -> Ledger | None:
    """The ledger at path if a fleet run as root wrote it: /var/tmp is anyone's, and a ledger names what root
    then tears down (its 'work' folder is removed). Its folder and file are root's, writable by no one else, not
    symlinks, and its 'work' is its own folder."""
    folder = os.path.dirname(path)
    try:
        st_dir, fd = os.lstat(folder), os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not (stat.S_ISDIR(st_dir.st_mode) and stat.S_ISREG(st.st_mode)) \
                or any(x.st_uid != 0 or x.st_mode & 0o022 for x in (st_dir, st)):
            return None
        try:
            ledger = Ledger(path, json.load(f))
        except ValueError:
            return None
    ok = isinstance(ledger.data, dict) and ledger.data.get("tool") == "pycor-fleet" and ledger.data.get("work") == folder
    return ledger if ok else None


def cleanup_stale() -> None:
    """Ledgers of runs that are gone (killed with SIGKILL, a host crash): tear down what they made."""
    for path in glob.glob(LEDGERS):
        ledger = trusted_ledger(path)
        if ledger is None:
            log(f"cleanup: {path} is not a ledger a fleet run as root wrote: left alone")
            continue
        if not ledger.alive():
            log(f"tearing down what a killed run left: {os.path.dirname(path)}")
            cleanup(ledger)


# -- output --------------------------------------------------------------------------------------------------


def write_outputs(out: str, data: dict, final: bool) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "fleet.json.new"), "w") as f:
        json.dump(data, f, indent=1)
    os.replace(os.path.join(out, "fleet.json.new"), os.path.join(out, "fleet.json"))
    if final:
        with open(os.path.join(out, "fleet.md"), "w") as f:
            f.write(markdown(data))
        plot(out, data)


def markdown(data: dict) -> str:
    m, c = data["machine"], data["criterion"]
    lines = ["# Fleet: booted system containers one host holds\n",
             f"Machine: {m['cpus']} CPUs, {mib(m['memory_bytes'])} MiB, {m['disk_free_gib']:.0f} GiB free disk, kernel "
             f"{m['kernel']}; {data['date']}; base {data['base']} (systemd, DHCP on eth0, nginx).\n",
             f"Criterion: a step's containers reach 'running' within {c['time_base_s']:.0f} s + {c['time_per_container_s']:g} s "
             f"each ({data['batch']} booting at once); all N still run, have an address and answer HTTP; then {c['idle_s']:.0f} s "
             f"of idle with memory PSI some avg10 under {c['psi_max_pct']:g} % and MemAvailable above {c['memavail_min_pct']:g} %. "
             "Steps each system ran, the last one the step that failed unless it reached --max-n (the date of its "
             "run: --resume keeps an earlier run's systems): "
             + "; ".join(f"{r['system']} {', '.join(str(p['n']) for p in r['points'])}" + (f" ({r['date']})" if r.get("date") else "")
                         for r in data["systems"])
             + ". LXD under samepage merging (PYCOR_KSM=1): "
             f"{'yes' if data.get('lxd_ksm') else 'no'}"
             + (f" (ksmd: {', '.join(f'{k} {v}' for k, v in data['ksmd'].items())})" if data.get("lxd_ksm") and data.get("ksmd") else "")
             + ".\n",
             "| system | holds N | ended by | detail | × against it: pycor LXC | pycor LXD |", "| --- " * 6 + "|"]
    held = {r["system"]: r["held"] for r in data["systems"]}
    ratio = lambda a, b: f"{held[a] / held[b]:.1f}" if a in held and held.get(b) else "-"  # noqa: E731
    for r in data["systems"]:
        lines.append(f"| {r['system']} | {r['held']} | {r['end_reason']} | {str(r['end_detail'])[:140]} | "
                     f"{ratio('pycor-lxc', r['system'])} | {ratio('pycor-lxd', r['system'])} |")
    lines += ["", "What one container costs at the largest N it held (cgroups: what its memory cgroup is charged; monitor: "
              "its host-side monitor's anonymous memory; MemAvailable: the host's drop over N). A page is charged to the cgroup "
              "that first touched it: a full copy's files were written by lxc-copy or LXD outside the container, so its own "
              "page cache shows in the host's figures (per step, below), not in its cgroup's:", "",
              "| system | N | processes MiB | page cache MiB | Shmem MiB | kernel MiB | monitor MiB | MemAvailable MiB | disk MiB |",
              "| --- " * 9 + "|"]
    for r in data["systems"]:
        held_points = [p for p in r["points"] if p["n"] == r["held"]]
        if held_points:
            p = held_points[0]
            each = {k: v / p["n"] for k, v in p["cgroup_bytes"].items()}
            lines.append(f"| {r['system']} | {p['n']} | {mib(each['anon'])} | {mib(each['cache'])} | {mib(each['shmem'])} | "
                         f"{mib(each['kernel'])} | {mib(p['monitors']['anon_bytes'] / p['n'])} | "
                         f"{mib(p['memavailable_drop_bytes'] / p['n'])} | {mib(r['disk_per_container_bytes'])} |")
    lines += ["", "Per step (against the moment before the first container; cgroups: what the containers' memory cgroups "
              "are charged; monitors: their host-side monitors' anonymous memory):", "",
              "| system | N | boot s (+new) | MemAvailable MiB (idle min) | page cache MiB | Shmem MiB | PSI some avg10 max % | "
              "cgroups anon / cache / kernel MiB | monitors MiB | tasks | leases | disk used MiB | fails |", "| --- " * 13 + "|"]
    for r in data["systems"]:
        for p in r["points"]:
            cg = p["cgroup_bytes"]
            lines.append(f"| {r['system']} | {p['n']} | {p['boot_s']:.0f} (+{p['added']}) | {mib(p['memavailable_bytes'])} "
                         f"({mib(p['memavailable_min_bytes'])}) | {mib(p['page_cache_bytes'])} | {mib(p['shmem_bytes'])} | "
                         f"{p['psi_some_avg10_max']:.1f} | {mib(cg['anon'])} / {mib(cg['cache'])} / {mib(cg['kernel'])} | "
                         f"{mib(p['monitors']['anon_bytes'])} | {p['tasks']} | {p['leases']} | {mib(p['disk_used_bytes'])} | "
                         f"{p.get('fails') or ''} |")
    return "\n".join(lines) + "\n"


def plot(out: str, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G = 2**30
    total = data["machine"]["memory_bytes"]
    panels = [(lambda p: p["memavailable_min_bytes"] / G, "MemAvailable, idle minimum (GiB)", data["criterion"]["memavail_min_pct"] / 100 * total / G),
              (lambda p: p["psi_some_avg10_max"], "memory PSI some avg10, idle maximum (%)", data["criterion"]["psi_max_pct"]),
              (lambda p: p["page_cache_bytes"] / G, "page cache, Cached - Shmem (GiB)", None),
              (lambda p: p["boot_s"], "time until the step's containers run (s)", None),
              (lambda p: (p["cgroup_bytes"]["anon"] + p["monitors"]["anon_bytes"]) / G, "processes: containers + monitors (GiB)", None),
              (lambda p: p["memavailable_drop_bytes"] / max(p["n"], 1) / 2**20, "MemAvailable drop per container (MiB)", None)]
    fig, axes = plt.subplots(3, 2, figsize=(11, 12))
    for ax, (value, label, line) in zip(axes.flat, panels):
        for r in data["systems"]:
            ax.plot([p["n"] for p in r["points"]], [value(p) for p in r["points"]], marker="o",
                    label=f"{r['system']}: {r['held']} ({r['end_reason']})")
        if line is not None:
            ax.axhline(line, color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("booted containers N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Booted system containers on one host ({data['machine']['cpus']} CPUs, {mib(total)} MiB)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fleet.png"), dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------


def default_steps(max_n: int) -> list[int]:
    """25, 50, 100, 150, 200, then every 100: the last steps of a system cost the most, and run to +100 of its limit."""
    return sorted({s for s in [25, 50, 100, 150, 200, *range(300, max_n + 1, 100)] if s < max_n} | {max_n})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated (default: all: {','.join(SYSTEMS)})")
    ap.add_argument("--max-n", type=int, default=2000, help="stop raising N here (default 2000)")
    ap.add_argument("--steps", help="N of each step, comma-separated (default 25, 50, 100, 150, 200, then +100 to --max-n)")
    ap.add_argument("--batch", type=int, default=20, help="containers booting at once (default 20)")
    ap.add_argument("--time-base", type=float, default=120, help="s a step may take besides --time-per-container (default 120)")
    ap.add_argument("--time-per-container", type=float, default=2.0, help="s per container the step adds (default 2)")
    ap.add_argument("--psi-max", type=float, default=10, help="memory PSI some avg10 %% the idle may reach (default 10)")
    ap.add_argument("--memavail-min", type=float, default=5, help="MemAvailable %% of MemTotal the idle keeps (default 5)")
    ap.add_argument("--guard", type=float, default=3, help="MemAvailable %% under which no more container starts (default 3)")
    ap.add_argument("--idle", type=float, default=60, help="s of idle after each step (default 60)")
    ap.add_argument("--disk-reserve", type=float, default=15, help="GiB of disk the run leaves free (default 15)")
    ap.add_argument("--allow-degraded", action="store_true", help="count systemd's 'degraded' as booted")
    ap.add_argument("--store", help="take --base from this store instead of building the default bootable base")
    ap.add_argument("--base")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--resume", action="store_true", help="keep the systems --out/fleet.json already finished; run the others")
    ap.add_argument("--cleanup", action="store_true", help="only tear down what killed runs left")
    ap.add_argument("--render", action="store_true", help="only write fleet.md and fleet.png again from --out/fleet.json")
    args = ap.parse_args()
    if args.render:
        with open(os.path.join(args.out, "fleet.json")) as f:
            data = json.load(f)
        crit = Criterion(argparse.Namespace(**{k: data["criterion"][v] for k, v in CRITERION_KEYS.items()}))
        judge(data, crit)
        write_outputs(args.out, data, final=True)
        return 0
    if os.geteuid() != 0:
        ap.error("run it as root: it starts containers and makes networks")
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("-900")  # at the limit the OOM killer should pick a container, not the run that tears them down (CAP_SYS_RESOURCE)
    cleanup_stale()
    if args.cleanup:
        return 0
    if bool(args.store) != bool(args.base):
        ap.error("--store and --base go together")
    wanted = args.systems.split(",")
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems: {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    steps = sorted({int(s) for s in args.steps.split(",") if 0 < int(s) <= args.max_n}) if args.steps else default_steps(args.max_n)
    done: list[dict] = []
    if args.resume:
        with contextlib.suppress(OSError, ValueError), open(os.path.join(args.out, "fleet.json")) as f:
            done = [r for r in json.load(f)["systems"] if r["system"] in wanted and r.get("finished")]
        log(f"resuming: {', '.join(r['system'] for r in done) or 'no system'} already done")
    work = tempfile.mkdtemp(prefix="pycor-fleet-", dir="/var/tmp")
    os.chmod(work, 0o755)
    args.work = work
    tag = uuid.uuid4().hex[:4]
    project = f"pycor-fleet-{tag}"
    env = dict(os.environ, PYCOR_STORE=args.store or os.path.join(work, "store"), PYCOR_LXD_PROJECT=project,
               PYCOR_HOOKS_DIR=os.path.join(work, "hooks"), PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
    ledger = Ledger.create(work, store=env["PYCOR_STORE"], own_base=None if args.base else "fleet", project=project, ifindex=max_ifindex(),
                           lxcpath=os.path.join(work, "lxc"))

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: the teardown

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    crit = Criterion(args)
    mem = meminfo()
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "base": args.base or "fleet", "steps": steps, "batch": args.batch,
            "machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(), "memory_bytes": mem["MemTotal"],
                        "disk_free_gib": disk_free(work) / 2**30},
            "criterion": crit.to_json(), "systems": list(done), "complete": False}

    def save(partial: dict) -> None:
        write_outputs(args.out, {**data, "systems": data["systems"] + [partial]}, final=False)

    try:
        sh(PYCOR + ["install"], env=env)  # this checkout's hooks, in the run's own folder
        ctx = prepare(work, env, project, args.base, log, nic=None, fleet_n=max(steps), own_base="fleet")
        data["limits"] = read_sysctls()
        data["lxd_ksm"] = lxd_ksm()
        data["ksmd"] = ksmd_settings()
        for index, name in enumerate(SYSTEMS):
            if name not in wanted or name in {r["system"] for r in done}:
                continue
            system = SYSTEMS[name](ctx)
            if isinstance(system, LxdBtrfs):  # its loop file, sparse, as large as the disk the run may fill
                ledger.add("lxd_pools", f"bench-btrfs-{project[-6:]}")
                system.pool_gib = max(24, int(disk_free(work) / 2**30 - args.disk_reserve))
            fleet = (LxdFleet if isinstance(system, LxdSystem) else LxcFleet)(system, index, ledger, tag)
            log(f"{name}: steps {steps}")
            try:
                system.setup()
                result = run_system(fleet, steps, crit, args, save)
            finally:
                fleet.teardown()
            result["finished"], result["date"] = True, time.strftime("%Y-%m-%d %H:%M")
            data["systems"].append(result)
            write_outputs(args.out, data, final=False)
        data["systems"].sort(key=lambda r: list(SYSTEMS).index(r["system"]))
        data["complete"] = True
        judge(data, crit)
        write_outputs(args.out, data, final=True)
        log(f"results in {args.out}")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the teardown short
        cleanup(ledger)


if __name__ == "__main__":
    sys.exit(main())
