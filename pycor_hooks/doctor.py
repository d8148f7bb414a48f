"""`pycor doctor`: check what pycor relies on, and name a fix for each miss.

Overlay features are probed for real, with small test mounts on the
store's own filesystem, since what matters is what this kernel does with
this filesystem. Not a hot path.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace

from . import overlay
from .driver import Driver
from .errors import PycorError
from .install import HOOKS
from .store import Store, hooks_dir


class Check:
    __slots__ = ("name", "ok", "required", "detail", "fix")

    def __init__(self, name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> None:
        self.name, self.ok, self.detail, self.fix, self.required = name, ok, detail, fix, required

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "required": self.required, "detail": self.detail, "fix": self.fix}


def _fs_of(path: str) -> tuple[str, str, str]:
    """(mount point, filesystem type, source) of the mount holding path."""
    from .quota import mount_of

    return mount_of(path)[:3]


def _try_overlay(work: str, extra: str = "") -> str | None:
    """Mount a small overlay with extra options, as pycor mounts every overlay; None if it worked, else the error."""
    dirs = [os.path.join(work, d) for d in ("l", "u", "w")]
    fds = []
    try:
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            fds.append(os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        mnt = overlay.mount_overlay(fds[:1], fds[1], fds[2], options=(extra,) if extra else (),
                                    scratch=os.path.join(work, "m"))
    except OSError as e:
        return e.strerror
    finally:
        for fd in fds:
            os.close(fd)
    if mnt is not None:
        os.close(mnt)  # detached: closing its last fd unmounts it
    return None


def overlay_checks(probe_dir: str) -> list[Check]:
    with open("/proc/filesystems", encoding="utf-8") as f:
        has_overlay = any(line.split()[-1] == "overlay" for line in f if line.strip())
    checks = [Check("overlay filesystem", has_overlay, "in /proc/filesystems" if has_overlay else "not in /proc/filesystems",
                    "load it: modprobe overlay (CONFIG_OVERLAY_FS)")]
    if not has_overlay:
        return checks
    features = [
        ("overlay mount on the store's filesystem", "", True, "the store needs a filesystem overlayfs accepts as upper (ext4, xfs with ftype=1, btrfs)"),
        ("overlay userxattr (unprivileged containers)", "userxattr", True, "Linux 5.11 or newer"),
        ("overlay redirect_dir", "redirect_dir=on", False, "optional; pycor does not need it"),
        ("overlay metacopy", "metacopy=on", False, "optional; pycor does not need it"),
        ("overlay index", "index=on", False, "optional; pycor does not need it"),
        ("overlay volatile", "volatile", False, "optional; pycor does not need it"),
    ]
    for i, (name, option, required, fix) in enumerate(features):
        err = _try_overlay(os.path.join(probe_dir, f"o{i}"), option)
        checks.append(Check(name, err is None, "works" if err is None else f"refused: {err}", fix, required))
    return checks


def idmap_check(probe_dir: str) -> Check:
    from . import idmap

    src, dst = os.path.join(probe_dir, "src"), os.path.join(probe_dir, "view")
    os.makedirs(src, exist_ok=True)
    fix = "Linux 5.12 or newer and a store on ext4, xfs, btrfs or tmpfs; without it only privileged containers run"
    try:
        m = idmap.IdMap.parse_lxc_config("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n")
        fd = idmap.userns_fd(m)
        try:
            idmap.make_view(src, dst, fd)
        finally:
            os.close(fd)
        uid = os.stat(dst).st_uid
        idmap.remove_view(dst)
        return Check("idmapped layers (unprivileged containers)", uid == 100000, f"a view of the store shows root as {uid}", fix)
    except Exception as e:  # any failure here is the answer, not a crash
        return Check("idmapped layers (unprivileged containers)", False, f"refused: {e}", fix)


def store_checks(store: Store, probe_dir: str) -> list[Check]:
    point, fstype, source = _fs_of(store.root)
    checks = [Check("store filesystem", fstype in ("ext4", "xfs", "btrfs", "tmpfs", "f2fs"),
                    f"{store.root} is on {fstype} ({source} at {point})", "put the store on ext4, xfs or btrfs ('store =' in /etc/pycor/pycor.conf)")]
    probe = os.path.join(probe_dir, "xattr")
    open(probe, "w").close()
    for ns in ("trusted", "user"):
        try:
            os.setxattr(probe, f"{ns}.pycor", b"1")
            checks.append(Check(f"{ns}.* xattrs on the store", True, "settable"))
        except OSError as e:
            checks.append(Check(f"{ns}.* xattrs on the store", False, e.strerror or str(e), "mount the store's filesystem with xattr support"))
    checks.append(device_check(store.root))
    return checks


def device_check(path: str) -> Check:
    """The block device under a path, through pyudev (sysfs works without a udev daemon)."""
    try:
        import pyudev

        dev = pyudev.Devices.from_device_number(pyudev.Context(), "block", os.stat(path).st_dev)
        detail = f"{dev.device_node} ({dev.get('ID_FS_TYPE') or 'type unknown to udev'})"
        return Check("block device under the store", True, detail, required=False)
    except ImportError:
        return Check("block device under the store", False, "pyudev is missing", "pip install pyudev", required=False)
    except Exception as e:  # a virtual filesystem has no block device
        return Check("block device under the store", False, f"none found ({e})", "only informational", required=False)


def capability_checks() -> list[Check]:
    try:
        import prctl

        admin = bool(prctl.cap_effective.sys_admin)
        return [Check("CAP_SYS_ADMIN", admin, "held" if admin else "missing", "run pycor as root")]
    except ImportError:
        return [Check("CAP_SYS_ADMIN", os.geteuid() == 0, "python-prctl is missing; judged by uid", "pip install python-prctl")]


def tool_checks() -> list[Check]:
    checks = []
    for tool, args, fix, required in (("lxc-start", ["--version"], "apt-get install lxc", True),
                                      ("lxd", ["--version"], "apt-get install lxd (only for LXD containers)", False),
                                      ("incus", ["--version"], "install incus-base from backports (only for Incus containers)", False)):
        path = shutil.which(tool)
        version = subprocess.run([tool, *args], capture_output=True, text=True).stdout.strip() if path else ""
        checks.append(Check(tool.split("-")[0].upper(), bool(path), f"{tool} {version}" if path else "not installed", fix, required))
    from .daemon import DIALECTS, Daemon

    for dialect in DIALECTS.values():
        client = Daemon(dialect)
        running = client.available()
        checks.append(Check(f"{dialect.title} daemon", running, "answers on its socket" if running else "not running",
                            dialect.start_hint, required=False))
        if running:
            checks.append(Check(f"{dialect.title} profile overlay", client.has_profile(),
                                "present" if client.has_profile() else "missing", f"pycor {dialect.kind} init", required=False))
    checks.append(hooks_check(hooks_dir()))
    return checks


def hooks_check(where: str) -> Check:
    """The installed hooks, checked as 'pycor install' checks them before writing them."""
    from .install import hook_problems

    missing = [h for h in HOOKS if not os.access(os.path.join(where, h), os.X_OK)]
    if missing:
        return Check("pycor hooks installed", False, f"missing in {where}: {', '.join(missing)}", "pycor install")
    problems = [p for h in HOOKS for p in hook_problems(os.path.join(where, h))]
    return Check("pycor hooks installed", not problems,
                 f"in {where}, runnable by an unprivileged container's root" if not problems else "; ".join(dict.fromkeys(problems)),
                 "pycor install (from a Python every user can reach), or the Debian package")


def stale_record_check(driver: Driver) -> Check:
    """Run records of containers that no longer run: they keep versions and idmapped views in use."""
    stale = driver.stale_states()
    detail = "none" if not stale else "; ".join(f"{s.name} ({s.rootfs}, base {s.base} version {s.version})" for s in stale)
    return Check("stale run records", not stale, detail,
                 "pycor doctor --fix removes them (and the idmapped views only they used)", required=False)


def interrupted_check(driver: Driver) -> Check:
    """Registered layers a killed command left half-way: a reset (upper or work set aside) or a move (a
    reconciliation plan staged or committed), each with the command that finishes it."""
    from . import layer
    from .reconcile import RECONCILE_DIR

    found = []
    for reg in driver.registrations():
        pycor = os.path.join(reg.rootfs, layer.PYCOR_DIR)
        aside = [d for d in ("upper", "work") if os.path.lexists(os.path.join(pycor, d + layer.RESET_ASIDE))]
        if aside:
            found.append(f"{reg.name}: a reset was interrupted ({pycor}/{aside[0]}{layer.RESET_ASIDE}): 'pycor reset {reg.name}' "
                         "finishes it")
        elif os.path.lexists(layer.upgrade_scratch(reg.rootfs)):
            found.append(f"{reg.name}: an upgrade of its packages is in progress, or one was interrupted "
                         f"({layer.upgrade_scratch(reg.rootfs)}): once the container is stopped, its next start or "
                         f"'pycor rebase {reg.name}' ends it")
        elif os.path.lexists(os.path.join(pycor, RECONCILE_DIR)):
            found.append(f"{reg.name}: a move to another base version was interrupted ({pycor}/{RECONCILE_DIR}): "
                         f"'pycor rebase {reg.name}' or its next start finishes it, 'pycor reset {reg.name}' discards it")
    return Check("interrupted layer operations", not found, "; ".join(found) or "none",
                 "run the command named for each container", required=False)


def rejected_push_check(driver: Driver) -> Check:
    """Files pushed into stopped containers that their next start could not put in place (kept aside, see inbox.py)."""
    from .inbox import INBOX, REJECTED, rejected
    from .layer import open_rootfs

    found = []
    for reg in driver.registrations():
        try:
            fd = open_rootfs(reg.rootfs)
        except PycorError:  # a layer that went meanwhile
            continue
        try:
            paths = rejected(fd)
        finally:
            os.close(fd)
        if paths:
            found.append(f"{reg.name}: {len(paths)} (first {paths[0]}) in {reg.rootfs}/{INBOX}/{REJECTED}")
    return Check("files pushed while stopped, kept aside", not found, "; ".join(found) or "none",
                 "put each where it belongs in the running container (lxc file push, or inside it), then remove it "
                 f"from {INBOX}/{REJECTED}", required=False)


def room_check(driver: Driver) -> Check:
    """Containers that cannot start for lack of room: at their disk limit (their volumes or their changes fill it),
    or on a full filesystem. Every start creates files in the layer; quota.room_error gives each one's fixes."""
    from . import quota
    from .errors import PycorError
    from .units import human_size

    full = []
    for reg in driver.registrations():
        try:
            meta = driver.volume_meta(reg.rootfs)
            if meta.ephemeral or quota.settled_room(reg.rootfs):
                continue
        except (PycorError, OSError):
            continue  # damaged layers: 'pycor ls' names them
        got = quota.usage(reg.rootfs)
        used = f"uses {human_size(got[0])} of its limit {human_size(got[1])}" if got and got[1] else "its filesystem is full"
        vols = quota.volume_usage(reg.rootfs, meta)
        full.append(f"{reg.name} ({used}" + (f", {human_size(sum(n for _, n in vols))} in its volumes" if vols else "") + ")")
    return Check("room to start", not full, "; ".join(full) or "every container has room for the files a start creates",
                 "free space in its volumes (ROOTFS/.pycor/volumes/N on the host), 'pycor reset NAME', or raise its "
                 "limit: 'pycor set NAME size=...' (its start says which)", required=False)


def layer_mount_check(driver: Driver) -> Check:
    """Idmapped mounts of layers (daemons' idmapped rootfs) no running container uses: a stale record's, or a
    killed pre-start's. They hold the container's storage busy."""
    left = driver.stale_layer_mounts()
    return Check("leftover layer mounts", not left, "none" if not left else ", ".join(left),
                 "pycor doctor --fix detaches them (or 'pycor base gc')", required=False)


# LXD's and Incus's production-setup values; below MIN, a few dozen booted system containers exhaust them
CONTAINER_LIMITS = {"fs.inotify.max_user_instances": (1048576, 1024), "fs.inotify.max_user_watches": (1048576, 65536)}


def limits_check(proc_sys: str = "/proc/sys") -> Check:
    """Kernel limits that many system containers share: every privileged container's systemd and its
    services take inotify instances from host root's one budget (Debian's default 128 boots about 17)."""
    low = []
    for key, (want, least) in CONTAINER_LIMITS.items():
        try:
            with open(os.path.join(proc_sys, *key.split(".")), encoding="ascii") as f:
                have = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if have < least:
            low.append((key, have, want))
    detail = ", ".join(f"{k} = {have}" for k, have, _ in low) or "inotify limits fit many containers"
    fix = "; ".join(f"sysctl -w {k}={want}" for k, _, want in low)
    return Check("limits for many containers", not low, detail,
                 f"{fix} (and the same in /etc/sysctl.d/, as scripts/sysctl-up.sh does)" if low else "", required=False)


def run_checks(store: Store, driver: Driver | None = None, lxcpath: str | None = None) -> list[Check]:
    checks = [Check("kernel", True, platform.release(), required=False)]
    checks += capability_checks()
    store.make_root()
    probe_dir = tempfile.mkdtemp(prefix=".doctor.", dir=store.root)
    try:
        checks += overlay_checks(probe_dir)
        checks.append(idmap_check(probe_dir))
        checks += store_checks(store, probe_dir)
    finally:
        from .fsutil import remove_tree

        remove_tree(probe_dir)
    checks.append(consistency_check(store))
    checks += tool_checks()
    checks.append(quota_check(lxcpath))
    checks.append(limits_check())
    if driver is not None:
        checks.append(stale_record_check(driver))
        checks.append(interrupted_check(driver))
        checks.append(rejected_push_check(driver))
        checks.append(room_check(driver))
        checks.append(layer_mount_check(driver))
    return checks


def consistency_check(store: Store) -> Check:
    """Store.check(): damage (unreadable records, dangling links) and what killed commands left."""
    problems = store.check()
    detail = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
    return Check("store consistency", not problems, detail or "no damage, nothing left by killed commands",
                 "leftovers go at the next command that changes the store (e.g. 'pycor base gc'); "
                 "a damaged base: re-import it, or remove it with 'pycor base rm'", required=False)


def quota_check(lxcpath: str | None) -> Check:
    """Whether 'pycor create --size' can limit containers where they live."""
    from . import lxc, quota

    path = lxcpath or lxc.default_lxcpath()
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    kind, why = quota.backend(probe)
    return Check("disk quotas", kind is not None, f"containers in {path}: {why}",
                 "put the LXC path on btrfs, or on ext4 ('-O quota,project') / XFS mounted with prjquota", required=False)


# -- pycor doctor --fleet N: the limit that stops N booted containers on this host ----------------------------

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class FleetNeeds:
    """What one booted container of the default base takes from the host's shared budgets (Linux 6.18,
    Debian 12, measured by benchmarks/fleet.py; another base or workload takes more)."""

    memory: int = 15 * MiB  # MemAvailable it takes (14.2 from N=300 to 1000): processes 9.3, kernel ~3.5, page cache ~1, monitor 0.4
    disk: int = 10 * MiB  # its own layer once its journal is full (8 MiB cap); a full copy takes the base's size
    tasks: int = 12  # systemd, journald, networkd, resolved, logind, dbus, nginx and a worker, getty; its monitor
    tasks_booting: int = 40  # generators and short-lived units while it boots
    ptys: int = 5  # LXC: its console and lxc.tty.max = 4 (LXC's common.conf); LXD and Incus: 1
    inotify_instances: int = 9
    inotify_watches: int = 31
    keys: int = 17  # an unprivileged container's, on the one host uid every container with its idmap shares
    key_bytes: int = 330


LXD_MONITOR = 11 * MiB  # LXD's and Incus's per-container monitor is a forked daemon: ~11 (Incus ~13) MiB anonymous


def fleet_needs(runtime: str) -> FleetNeeds:
    if runtime == "lxc":
        return FleetNeeds()
    return replace(FleetNeeds(), memory=FleetNeeds().memory + LXD_MONITOR, ptys=1)


FLEET_SYSCTLS = ("kernel.pid_max", "kernel.threads-max", "kernel.pty.max", "kernel.pty.reserve", "kernel.keys.maxkeys",
                 "kernel.keys.maxbytes", "kernel.keys.root_maxkeys", "fs.inotify.max_user_instances",
                 "fs.inotify.max_user_watches", "net.ipv4.neigh.default.gc_thresh3")
BRIDGE_PORTS = 1023  # a Linux bridge's ports (BR_MAX_PORTS 1024, port 0 reserved): the 1024th veth gets EXFULL


@dataclass
class FleetHost:
    """What this host offers a fleet (read_fleet_host reads it)."""

    sysctl: dict[str, int | None] = field(default_factory=dict)
    mem_total: int = 0
    mem_available: int = 0
    disk_free: int = 0
    tasks: int = 0  # tasks running now
    bridges: dict[str, int | None] = field(default_factory=dict)  # bridge: DHCP addresses its dnsmasq hands out (None: unknown)


@dataclass(frozen=True)
class FleetLimit:
    name: str
    kind: str  # memory, disk, kernel, network
    value: int | None
    capacity: int  # booted containers it lets this host run
    fix: str

    def to_json(self) -> dict:
        return {"limit": self.name, "kind": self.kind, "value": self.value, "capacity": self.capacity, "fix": self.fix}


def fleet_capacities(host: FleetHost, needs: FleetNeeds, n: int, privileged: bool, booting: int = 20,
                     memory_floor: float = 0.05) -> list[FleetLimit]:
    """Every limit as the number of booted containers it lets this host run, with the fix that lets n run.
    Pure: host holds what was read."""
    rows: list[FleetLimit] = []
    s = host.sysctl

    def add(name: str, kind: str, value: int | None, each: float, fixed: float, fix: str) -> None:
        if value is not None and each > 0:
            rows.append(FleetLimit(name, kind, value, max(0, int((value - fixed) // each)), fix))

    def sysctl(key: str, each: float, fixed: float = 0) -> None:
        need = int(fixed + each * n) + 1
        add(key, "kernel", s.get(key), each, fixed,
            f"sysctl -w {key}={need}, and the same in /etc/sysctl.d/ (pycor's scripts/sysctl-up.sh {n} does both)")

    floor = int(memory_floor * host.mem_total)
    add("memory", "memory", host.mem_available, needs.memory, floor,
        f"about {needs.memory // MiB} MiB each, keeping {round(memory_floor * 100)} % of the memory free: more memory, "
        "or fewer services in the base")
    add("disk", "disk", host.disk_free, needs.disk, GiB, "more disk where the containers live")
    busy = host.tasks + booting * needs.tasks_booting
    sysctl("kernel.pid_max", needs.tasks, busy)
    add("kernel.threads-max", "kernel", s.get("kernel.threads-max"), needs.tasks, busy, "more memory (the kernel sizes it from RAM)")
    # every devpts but the host's own takes from kernel.pty.max less kernel.pty.reserve; past it a container
    # cannot get its console or ttys and does not start (lxc.tty.max = 0 in its config: 1 pty each, not 5)
    sysctl("kernel.pty.max", needs.ptys, s.get("kernel.pty.reserve") or 1024)
    sysctl("fs.inotify.max_user_instances", needs.inotify_instances, 128)
    sysctl("fs.inotify.max_user_watches", needs.inotify_watches, 8192)
    sysctl("net.ipv4.neigh.default.gc_thresh3", 1, 64)
    if privileged:  # its service users (systemd-network, ...) are host uids: one key each per container
        sysctl("kernel.keys.maxkeys", 1)
        sysctl("kernel.keys.root_maxkeys", needs.keys)
    else:
        sysctl("kernel.keys.maxkeys", needs.keys)
        sysctl("kernel.keys.maxbytes", needs.key_bytes)
    if host.bridges:
        add(f"bridge ports on {', '.join(host.bridges)}", "network", BRIDGE_PORTS * len(host.bridges),
            1, 0, "one more bridge per 1000 containers (pycor's scripts/fleet-net.sh up fleetbr1 10.23.4.1/22)")
        leases = [v for v in host.bridges.values() if v is not None]
        if len(leases) == len(host.bridges):
            add(f"DHCP addresses on {', '.join(host.bridges)}", "network", sum(leases), 1, 0,
                "a bridge whose subnet and dnsmasq --dhcp-lease-max hold the fleet (pycor's scripts/fleet-net.sh; "
                "LXD: lxc network set NET ipv4.address=10.23.8.1/22 raw.dnsmasq=dhcp-lease-max=1021)")
    return rows


def fleet_verdict(n: int, rows: list[FleetLimit]) -> tuple[FleetLimit | None, list[FleetLimit]]:
    """(the limit that stops a fleet soonest, the limits n passes, lowest first)."""
    first = min(rows, key=lambda r: r.capacity) if rows else None
    return first, sorted((r for r in rows if r.capacity < n), key=lambda r: r.capacity)


def dnsmasq_addresses(argv: list[str], conf: str = "") -> int | None:
    """How many DHCP leases a dnsmasq hands out: its ranges' sizes, capped by --dhcp-lease-max (default 1000).
    argv: its command line; conf: the text of its --conf-file (LXD's raw.dnsmasq lands there)."""
    opts = [line.strip() for line in conf.splitlines()]
    for i, a in enumerate(argv):  # --key=value, or --key value (lxc-net writes --dhcp-range A,B)
        if a.startswith("--"):
            with_value = "=" in a or i + 1 == len(argv) or argv[i + 1].startswith("-")
            opts.append(a[2:] if with_value else f"{a[2:]}={argv[i + 1]}")
    size, lease_max = 0, 1000
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "dhcp-range":
            ips = [f for f in value.split(",") if f.count(".") == 3 and all(p.isdigit() for p in f.split("."))]
            if len(ips) >= 2 and not ips[1].startswith("255."):
                first, last = (int.from_bytes(bytes(int(p) for p in ip.split(".")), "big") for ip in ips[:2])
                size += max(0, last - first + 1)
        elif key == "dhcp-lease-max" and value.isdigit():
            lease_max = int(value)
    return min(size, lease_max) if size else None


def bridge_addresses(bridge: str) -> int | None:
    """DHCP addresses the dnsmasq serving bridge hands out (lxc-net's, LXD's, Incus's or pycor's), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                if f.read().strip() != "dnsmasq":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                argv = fb.read(1 << 16).decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if f"--interface={bridge}" not in argv:
            continue
        conf = ""
        for a in argv:
            if a.startswith("--conf-file=") and a != "--conf-file=/dev/null":
                try:
                    with open(a.split("=", 1)[1], encoding="utf-8", errors="replace") as f:
                        conf += f.read(1 << 16)
                except OSError:
                    pass
        return dnsmasq_addresses(argv, conf)
    return None


def read_sysctls(keys: tuple[str, ...] = FLEET_SYSCTLS, proc_sys: str = "/proc/sys") -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for key in keys:
        try:
            with open(os.path.join(proc_sys, *key.split(".")), encoding="ascii") as f:
                out[key] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            out[key] = None
    return out


def host_tasks() -> int:
    """Tasks (threads) running on the host now."""
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                total += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return total


def read_fleet_host(path: str, bridges: list[str]) -> FleetHost:
    """The host's budgets: sysctls, memory, disk free under path, tasks, and each bridge's DHCP addresses."""
    mem = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            mem[key] = int(value.split()[0]) * 1024
    st = os.statvfs(path)
    return FleetHost(sysctl=read_sysctls(), mem_total=mem["MemTotal"], mem_available=mem["MemAvailable"],
                     disk_free=st.f_bavail * st.f_frsize, tasks=host_tasks(), bridges={b: bridge_addresses(b) for b in bridges})


def default_bridge(runtime: str, lxc_default_conf: str = "/etc/lxc/default.conf") -> str:
    """The bridge new containers of a runtime join: LXC's default config's lxc.net.0.link, lxdbr0, incusbr0."""
    if runtime == "lxc":
        from .lxcconfig import read_keys

        links = read_keys(lxc_default_conf).get("lxc.net.0.link") if os.path.exists(lxc_default_conf) else None
        return links[-1] if links else "lxcbr0"
    return {"lxd": "lxdbr0", "incus": "incusbr0"}[runtime]


def fleet_check(n: int, runtime: str, privileged: bool, bridges: list[str], path: str) -> tuple[list[FleetLimit], FleetLimit | None]:
    """This host's limits for n booted containers of the default base, lowest capacity first, and the
    one that stops n (None: n fits)."""
    rows = fleet_capacities(read_fleet_host(path, bridges), fleet_needs(runtime), n, privileged)
    first, short = fleet_verdict(n, rows)
    return sorted(rows, key=lambda r: r.capacity), (short[0] if short else None)
