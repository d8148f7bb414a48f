"""Density of booted systemd containers: pycor against the anchors, on the bootable base.

    sudo .venv/bin/python benchmarks/density.py                 # N = 1, 10, 25, 50 (builds the base)
    sudo .venv/bin/python benchmarks/density.py --n 2 --store S --base B --out DIR   # the smoke run

Systems: see systems.py (pycor-lxc, pycor-lxd, lxc-overlay, lxc-copy, lxd-dir,
lxd-btrfs), every one on the same root filesystem: the bootable base (systemd,
DHCP on eth0, nginx). Containers are linked to their runtime's bridge (lxcbr0,
lxdbr0), so each boots with its network and its service.

For each system and each N, from scratch: create N containers, drop the
caches, start all N, and wait until every one reports 'running' (or
'degraded') from 'systemctl is-system-running --wait'. Then, against the moment
before the starts: page cache (Cached minus Shmem), Shmem (the containers' own
tmpfs: /run, /dev/shm, journals) and the drop in MemAvailable. Per-container
memory is the slope of a least-squares line against N. N grows until memory
runs short (MemAvailable under 15 % of MemTotal).

Output in --out: density.json, density.md, density.png. Everything the run
made is removed at the end, also on failure; a base given with --base is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from run import drop_caches, meminfo, mib  # noqa: E402
from systems import ALL, PYCOR, Context, LxcSystem, System, make_project, sh  # noqa: E402

from pycor_hooks.debian import wait_for_boot_script  # noqa: E402
from pycor_hooks.proc import Progress  # noqa: E402
from pycor_hooks.tario import copy_tree  # noqa: E402
from pycor_hooks.versions import merged_view  # noqa: E402

BOOT_TIMEOUT = 300
SLOPES = ("page_cache_bytes", "shmem_bytes", "memavailable_drop_bytes", "cgroup_cache_bytes", "cgroup_anon_bytes")
MEMORY_FLOOR = 0.15  # of MemTotal: stop growing N below it


def link_to_bridge(system: System, c: str, bridge: str = "lxcbr0", hwaddr: str | None = None) -> None:
    """Give an LXC container a veth on bridge (LXC's default network: lxcbr0): the systems make them without one."""
    if not isinstance(system, LxcSystem):
        return  # LXD instances get eth0 from the project's profile
    config = os.path.join(system.ctx.lxcpath, c, "config")
    with open(config) as f:
        lines = [line for line in f.read().splitlines() if not re.match(r"\s*lxc\.net\.", line)]
    lines += ["lxc.net.0.type = veth", f"lxc.net.0.link = {bridge}", "lxc.net.0.flags = up"]
    lines += [f"lxc.net.0.hwaddr = {hwaddr}"] if hwaddr else []
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")


def init_pid(system: System, c: str) -> int:
    if isinstance(system, LxcSystem):
        return int(sh(["lxc-info", "-n", c, "-P", system.ctx.lxcpath, "-p", "-H"]).strip())
    state = json.loads(sh(["lxc", "query", f"/1.0/instances/{c}/state?project={system.ctx.project}"]))
    return int(state["pid"])


def charged(pid: int) -> dict[str, int]:
    """Memory the kernel charges to the container's cgroup (lxc.payload.*, children included).

    Unlike /proc/meminfo, other work on the machine does not move it. A page of
    the page cache is charged once, to the cgroup that read it first: shared
    base pages show up in one container, a full copy's pages in every one."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    v1 = [path for _, ctrls, path in lines if "memory" in ctrls.split(",")]
    mount, path = ("/sys/fs/cgroup/memory", v1[0]) if v1 else ("/sys/fs/cgroup", next(p for h, _, p in lines if h == "0"))
    parts = path.strip("/").split("/")
    top = next((i for i, part in enumerate(parts) if part.startswith("lxc.payload")), len(parts) - 1)
    return charges(os.path.join(mount, *parts[:top + 1]), bool(v1))


def charges(cgroup: str, v1: bool) -> dict[str, int]:
    """What the memory cgroup at folder cgroup (its children included) is charged: page cache (cache),
    processes (anon), tmpfs (shmem), the page cache its processes map (mapped_file: what reclaim cannot
    take without the container faulting it straight back) and kernel objects (kernel)."""
    with open(os.path.join(cgroup, "memory.stat")) as f:
        stat = {k: int(v) for k, v in (line.split() for line in f if len(line.split()) == 2)}
    if v1:
        with open(os.path.join(cgroup, "memory.kmem.usage_in_bytes")) as f:
            kernel = int(f.read())
        return {"cache": stat["total_cache"] - stat["total_shmem"], "anon": stat["total_rss"], "shmem": stat["total_shmem"],
                "mapped_file": stat["total_mapped_file"], "kernel": kernel}
    return {"cache": stat["file"] - stat["shmem"], "anon": stat["anon"], "shmem": stat["shmem"],
            "mapped_file": stat["file_mapped"], "kernel": stat.get("kernel", stat["slab"] + stat["kernel_stack"] + stat["pagetables"])}


def boot_state(system: System, c: str, timeout: int = BOOT_TIMEOUT) -> str:
    """What systemd in c says once it finished booting ('running', 'degraded'...), waiting up to timeout s.
    An exec that does not return (LXD's, about one in a few hundred under load, while the container runs and a
    new exec answers at once) is cut timeout + 30 s after it began, and c is asked again once, briefly: systemd's
    state and when its boot finished (CLOCK_MONOTONIC, the host's: containers have no time namespace), so a boot
    that finished within timeout counts as one, and a later one is 'late'."""
    began = time.monotonic()
    try:
        return system.sh(c, wait_for_boot_script(timeout) + "; true", timeout=timeout + 30).strip() or "no answer"
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        first = f"unreachable: {str(e)[-200:]}"
    try:
        out = system.sh(c, "systemctl is-system-running; systemctl show -P FinishTimestampMonotonic; true", timeout=30).split()
    except (RuntimeError, subprocess.TimeoutExpired):
        return first
    if len(out) != 2 or not out[1].isdigit():
        return first
    state, finished = out[0], int(out[1]) / 1e6
    if finished and finished - began > timeout:
        return f"late: {state} {finished - began:.0f} s after the start"
    return state  # 'starting' while it has not finished


def measure_point(system: System, n: int, log) -> dict:  # type: ignore[no-untyped-def]
    """Boot n fresh containers of one system; memory and time until all run. Removes them."""
    prefix = "y" + system.name.replace("-", "")[:6]
    made: list[str] = []
    try:
        for i in range(n):
            c = f"{prefix}{i}"
            system.create(c)
            made.append(c)
            link_to_bridge(system, c)
        drop_caches()
        time.sleep(1)
        before = meminfo()
        t0 = time.perf_counter()
        for c in made:
            system.start(c)
        states = {c: boot_state(system, c) for c in made}
        boot_s = time.perf_counter() - t0
        time.sleep(3)  # let the last units settle before reading memory
        after = meminfo()
        not_up = {c: s for c, s in states.items() if s not in ("running", "degraded")}
        if not_up:
            raise RuntimeError(f"{system.name}: containers did not boot: {not_up}")
        degraded = sorted(c for c, s in states.items() if s == "degraded")
        charges = [charged(init_pid(system, c)) for c in made]
        result = {
            "n": n, "all_running_s": boot_s, "degraded": degraded,
            "page_cache_bytes": (after["Cached"] - after["Shmem"]) - (before["Cached"] - before["Shmem"]),
            "shmem_bytes": after["Shmem"] - before["Shmem"],
            "memavailable_drop_bytes": before["MemAvailable"] - after["MemAvailable"],
            "memavailable_left_bytes": after["MemAvailable"],
            "cgroup_cache_bytes": sum(ch["cache"] for ch in charges),
            "cgroup_anon_bytes": sum(ch["anon"] for ch in charges),
            "cgroup_shmem_bytes": sum(ch["shmem"] for ch in charges),
        }
        log(f"{system.name} N={n}: all running in {boot_s:.1f} s, page cache {mib(result['page_cache_bytes'])} MiB, "
            f"Shmem {mib(result['shmem_bytes'])} MiB, MemAvailable drop {mib(result['memavailable_drop_bytes'])} MiB; "
            f"charged to the containers: cache {mib(result['cgroup_cache_bytes'])} MiB, anon {mib(result['cgroup_anon_bytes'])} MiB")
        return result
    finally:
        for c in made:
            system.destroy(c)


def slope(points: list[dict], key: str) -> float | None:
    """Least-squares slope of key against N: bytes per container."""
    if len(points) < 2:
        return None
    xs, ys = [p["n"] for p in points], [p[key] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def measure_system(system: System, ns: list[int], log) -> dict:  # type: ignore[no-untyped-def]
    points = []
    for n in ns:
        point = measure_point(system, n, log)
        points.append(point)
        if point["memavailable_left_bytes"] < meminfo()["MemTotal"] * MEMORY_FLOOR:
            log(f"{system.name}: stopped at N={n}: memory short")
            break
    per_n = [{"n": 0, **{k: 0 for k in SLOPES}}] + points
    return {"system": system.name, "points": points, "per_container_bytes": {k: slope(per_n, k) for k in SLOPES}}


def prepare(work: str, env: dict[str, str], project: str, base: str | None, log,  # type: ignore[no-untyped-def]
            nic: str | None = "lxdbr0", fleet_n: int | None = None, own_base: str = "density") -> Context:
    """The host set up (kernel limits for fleet_n containers, lxc-net when nic is LXD's default bridge, LXD),
    the run's LXD project (eth0 on nic, if given), the base (built as own_base if not given), and a copy of
    its merged view for the systems that need their own."""
    scripts = os.path.join(os.path.dirname(HERE), "scripts")
    sh(["bash", os.path.join(scripts, "sysctl-up.sh"), *([str(fleet_n)] if fleet_n else [])])  # Debian's inotify limits boot ~17
    if nic:
        sh(["bash", os.path.join(scripts, "lxc-net-up.sh")])
    sh(["bash", os.path.join(scripts, "lxd-up.sh")], timeout=300)
    make_project(project, nic=nic)
    if base is None:
        base = own_base
        suite = sh(["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"]).strip() or "bookworm"
        log(f"building the bootable base: debootstrap {suite}")
        t0 = time.perf_counter()
        sh(PYCOR + ["base", "import", base, "--debootstrap", suite, "--bootable"], env=env)
        log(f"base built in {time.perf_counter() - t0:.0f} s")
    from pycor_hooks.store import Store

    store = Store(env["PYCOR_STORE"])
    src = os.path.join(work, "rootfs")
    os.mkdir(src)
    stack = store.lower_stack(base, store.current(base))
    quiet = Progress(open(os.devnull, "w"))
    if len(stack) == 1:  # one layer is its own merged view
        copy_tree(stack[0], src, quiet)
    else:
        with merged_view(stack, os.path.join(work, "merged")) as merged:
            copy_tree(merged, src, quiet)
    return Context(work, env, base, src, project)


def cleanup(project: str, env: dict[str, str], systems: list[System], work: str, own_base: bool) -> None:
    for name in sh(["lxc", "--project", project, "list", "-c", "n", "--format", "csv"], check=False).split():
        sh(["lxc", "--project", project, "delete", "--force", name], check=False)
    for fp in sh(["lxc", "--project", project, "image", "list", "-c", "f", "--format", "csv"], check=False).split():
        sh(["lxc", "--project", project, "image", "delete", fp], check=False)
    for system in systems:
        try:
            system.teardown()
        except Exception as e:  # keep cleaning
            print(f"cleanup: {system.name}: {e}", file=sys.stderr)
    lxcpath = os.path.join(work, "lxc")
    if os.path.isdir(lxcpath):
        for name in os.listdir(lxcpath):
            sh(["lxc-stop", "-k", "-n", name, "-P", lxcpath], check=False)
            sh(["lxc-destroy", "-n", name, "-P", lxcpath], check=False)
    sh(["lxc", "--project", project, "profile", "delete", "overlay"], check=False)
    sh(["lxc", "project", "delete", project], check=False)
    if own_base:
        sh(PYCOR + ["base", "rm", "density", "-P", lxcpath], env=env, check=False)
    shutil.rmtree(work, ignore_errors=True)


def write_outputs(out_dir: str, data: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "density.json"), "w") as f:
        json.dump(data, f, indent=1)
    m = data["machine"]
    lines = ["# Density of booted systemd containers\n",
             f"Machine {m['node']} ({m['cpus']} CPUs, {mib(m['memory_bytes'])} MiB), kernel {m['kernel']}, {data['date']}; "
             f"base: {data['base']} (systemd, DHCP on eth0, nginx). Each N from scratch, caches dropped before the starts.\n",
             "Machine-wide (/proc/meminfo: other work on the machine moves these) and charged to the containers' "
             "memory cgroups (a cached page counts once, for the container that read it first).\n",
             "| system | N | all running s | page cache MiB | Shmem MiB | MemAvailable drop MiB | cgroups: cache MiB | "
             "cgroups: anon MiB | degraded |",
             "| --- " * 9 + "|"]
    for r in data["systems"]:
        for p in r["points"]:
            lines.append(f"| {r['system']} | {p['n']} | {p['all_running_s']:.1f} | {mib(p['page_cache_bytes'])} | "
                         f"{mib(p['shmem_bytes'])} | {mib(p['memavailable_drop_bytes'])} | {mib(p['cgroup_cache_bytes'])} | "
                         f"{mib(p['cgroup_anon_bytes'])} | {len(p['degraded'])} |")
    lines += ["", "Per container (least-squares slope against N, through N = 0):", "",
              "| system | page cache MiB | Shmem MiB | MemAvailable drop MiB | cgroups: cache MiB | cgroups: anon MiB |",
              "| --- " * 6 + "|"]
    fmt = lambda v: "-" if v is None else mib(v)  # noqa: E731
    for r in data["systems"]:
        s = r["per_container_bytes"]
        lines.append("| " + " | ".join([r["system"], *(fmt(s[k]) for k in SLOPES)]) + " |")
    with open(os.path.join(out_dir, "density.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(out_dir, data)


def plot(out_dir: str, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all_running_s", "time until all N run (s)", 1), ("page_cache_bytes", "page cache, Cached - Shmem (MiB)", 2**20),
              ("shmem_bytes", "Shmem (MiB)", 2**20), ("memavailable_drop_bytes", "MemAvailable drop (MiB)", 2**20),
              ("cgroup_cache_bytes", "page cache charged to the containers (MiB)", 2**20),
              ("cgroup_anon_bytes", "process memory charged to the containers (MiB)", 2**20)]
    fig, axes = plt.subplots(3, 2, figsize=(11, 12))
    for ax, (key, label, unit) in zip(axes.flat, panels):
        for r in data["systems"]:
            xs = [p["n"] for p in r["points"]]
            ax.plot(xs, [p[key] / unit for p in r["points"]], marker="o", label=r["system"])
        ax.set_xlabel("booted containers N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"Booted systemd containers on {data['base']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "density.png"), dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="1,10,25,50", help="numbers of containers, comma-separated (default 1,10,25,50)")
    ap.add_argument("--systems", default=",".join(s.name for s in ALL))
    ap.add_argument("--store", help="use this store's --base instead of building a bootable base")
    ap.add_argument("--base", help="a bootable base in --store (pycor base import NAME --debootstrap SUITE --bootable)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if bool(args.store) != bool(args.base):
        ap.error("--store and --base go together")
    ns = sorted({int(n) for n in args.n.split(",")})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: clean up all the same (finally below)
    log = lambda msg: print(f"[density] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    work = tempfile.mkdtemp(prefix="pycor-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    project = f"pycor-bench-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, PYCOR_STORE=args.store or os.path.join(work, "store"), PYCOR_LXD_PROJECT=project,
               PYCOR_HOOKS_DIR=os.path.join(work, "hooks"), PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
    sh(PYCOR + ["install"], env=env)  # this checkout's hooks, in the run's own folder
    wanted = args.systems.split(",")
    systems: list[System] = []
    try:
        ctx = prepare(work, env, project, args.base, log)
        systems = [cls(ctx) for cls in ALL if cls.name in wanted]
        results = []
        for system in systems:
            system.setup()
            results.append(measure_system(system, ns, log))
        mem = meminfo()
        data = {"date": time.strftime("%Y-%m-%d %H:%M"), "base": ctx.base, "ns": ns,
                "machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                            "memory_bytes": mem["MemTotal"]},
                "systems": results}
        write_outputs(args.out, data)
        log(f"results in {args.out}")
        return 0
    finally:
        cleanup(project, env, systems, work, own_base=args.base is None)


if __name__ == "__main__":
    sys.exit(main())
