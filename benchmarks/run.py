"""pycor against the anchors, in one run, on one base: speed, disk, memory.

    sudo bash benchmarks/run.sh              # the full run (debootstrap Debian minbase, N = 20)
    sudo .venv/bin/python benchmarks/run.py --quick --base-source busybox   # the smoke run

Systems: see systems.py. Per system, N containers:
1. create time (median, p10 to p90);
2. start time (first start, and a start after a stop), and the share the pycor
   hooks take of it (pycor's start against its anchor's: pycor-lxc against
   lxc-copy, pycor-lxd against lxd-dir, all on the same root filesystem);
3. disk used per container after creation, and after a typical change;
4. page cache: from cold caches the containers, one after the other, read the
   same base files and run the same binaries; the host page cache after 1, 5,
   10, 20 of them;
5. copy-up: the first one-byte write into a large base file against later
   ones, and writing a large new file (the write-heavy path).
Then: density (containers with a small resident process, started until the
cap or memory runs short; memory per container), and rollout (moving N
running containers to a new base version: pycor rollout, against applying
the same change inside each full copy).

Figures go to benchmarks/results/: results.json, results.md, page_cache.png,
create_time.png. Everything the run made is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from systems import ALL, PYCOR, Context, System, make_project, sh  # noqa: E402

from pycor_hooks.overlay import merged_view  # noqa: E402
from pycor_hooks.proc import Progress  # noqa: E402
from pycor_hooks.tario import copy_tree  # noqa: E402

READ_WORKLOAD = ("find /usr/bin /usr/lib /usr/sbin /bin /lib -xdev -type f -exec cat {} + > /dev/null 2>&1; "
                 "for b in sh ls cat find sort; do command -v $b >/dev/null && $b --help >/dev/null 2>&1; done; true")
CHANGE = "mkdir -p /opt/bench && dd if=/dev/urandom of=/opt/bench/data bs=1M count=4 2>/dev/null && echo 2 > /etc/bench-version"
PAGE_CACHE_POINTS = (1, 5, 10, 20)


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"median": statistics.median(values), "p10": pick(0.1), "p90": pick(0.9), "n": len(values)}


def has_dpkg(system: System, c: str) -> bool:
    return system.sh(c, "command -v dpkg >/dev/null && echo yes || echo no").strip() == "yes"


# -- phases ---------------------------------------------------------------------------


def measure_system(system: System, n: int, big_mb: int, deb: str | None, log) -> dict:  # type: ignore[no-untyped-def]
    prefix = system.name.replace("-", "")[:6]
    names = [f"{prefix}{i}" for i in range(n)]
    result: dict = {"system": system.name}
    made: list[str] = []
    try:
        create = []
        for c in names:
            create.append(timed(system.create, c))
            made.append(c)
        result["create_s"] = spread(create)
        result["disk_after_create_bytes"] = statistics.median(system.disk(c) for c in names)
        result["start_first_s"] = spread([timed(system.start, c) for c in names])
        log(f"{system.name}: {n} created (median {result['create_s']['median']:.3f} s) and started")
        # page cache: cold, then one container after the other
        drop_caches()
        base_cached = meminfo()["Cached"]
        series = {}
        for i, c in enumerate(names, 1):
            system.sh(c, READ_WORKLOAD)
            if i in PAGE_CACHE_POINTS or i == n:
                series[str(i)] = meminfo()["Cached"] - base_cached
        result["page_cache_bytes"] = series
        log(f"{system.name}: page cache after {n}: {series[str(n)] / 2**20:.0f} MiB")
        # a start after a stop
        again = []
        for c in names[: min(n, 5)]:
            system.stop(c)
            again.append(timed(system.start, c))
        result["start_again_s"] = spread(again)
        # a typical change: a package (or, without dpkg, files) installed
        c0 = names[0]
        if deb and has_dpkg(system, c0):
            system.push(c0, deb, "/tmp/change.deb")
            system.sh(c0, "dpkg -i /tmp/change.deb >/dev/null && rm /tmp/change.deb")
            result["change"] = f"dpkg -i {os.path.basename(deb)}"
        else:
            system.sh(c0, CHANGE)
            result["change"] = CHANGE
        result["disk_after_change_bytes"] = system.disk(c0)
        # copy-up: the first small write into a large base file, then later ones
        write1 = "dd if=/dev/zero of=/var/lib/bench-big bs=1 count=1 seek=4096 conv=notrunc 2>/dev/null"
        first = timed(system.sh, c0, write1)
        later = [timed(system.sh, c0, write1) for _ in range(5)]
        heavy = timed(system.sh, c0, f"dd if=/dev/zero of=/root/heavy bs=1M count={big_mb} conv=fsync 2>/dev/null; rm /root/heavy")
        result["copy_up"] = {"big_file_mb": big_mb, "first_write_s": first, "later_write_s": statistics.median(later),
                             "write_new_file_s": heavy}
    finally:
        for c in made:
            system.destroy(c)
    return result


def measure_density(system: System, cap: int, log) -> dict:  # type: ignore[no-untyped-def]
    made: list[str] = []
    prefix = "d" + system.name.replace("-", "")[:5]
    try:
        time.sleep(1)
        before = meminfo()
        floor = before["MemTotal"] * 0.15
        for i in range(cap):
            c = f"{prefix}{i}"
            system.create(c)
            made.append(c)
            system.start(c)
            if meminfo()["MemAvailable"] < floor:
                log(f"{system.name}: density stopped at {len(made)}: memory short")
                break
        time.sleep(2)
        after = meminfo()
        used = (before["MemAvailable"] - after["MemAvailable"])
        return {"system": system.name, "containers": len(made), "memory_per_container_bytes": used / max(1, len(made)),
                "cached_growth_bytes": after["Cached"] - before["Cached"]}
    finally:
        for c in made:
            system.destroy(c)


def measure_rollout(ctx: Context, pycor_lxc: System, copies: System, n: int, log) -> dict:  # type: ignore[no-untyped-def]
    """Moving n running containers to a changed base: pycor update + rollout, against the change run in each copy."""
    result = {}
    names = [f"roll{i}" for i in range(n)]
    made: list[str] = []
    try:
        for c in names:
            pycor_lxc.create(c)
            made.append(c)
            pycor_lxc.start(c)
        t0 = time.perf_counter()
        sh(PYCOR + ["base", "update", ctx.base, "--", "/bin/sh", "-c", "echo rolled > /etc/bench-rollout"], env=ctx.env)
        t1 = time.perf_counter()
        sh(PYCOR + ["rollout", ctx.base, "--batch", "5", "-P", ctx.lxcpath], env=ctx.env)
        t2 = time.perf_counter()
        assert all(pycor_lxc.sh(c, "cat /etc/bench-rollout").strip() == "rolled" for c in names)
        result["pycor"] = {"containers": n, "update_s": t1 - t0, "rollout_s": t2 - t1, "total_s": t2 - t0}
    finally:
        for c in made:
            pycor_lxc.destroy(c)
    made = []
    try:
        for c in names:
            copies.create(c)
            made.append(c)
            copies.start(c)
        t0 = time.perf_counter()
        for c in names:
            copies.sh(c, "echo rolled > /etc/bench-rollout")
        result["full-copies"] = {"containers": n, "total_s": time.perf_counter() - t0,
                                 "note": "the change applied inside every copy; no restart needed, but N times the work"}
    finally:
        for c in made:
            copies.destroy(c)
    log(f"rollout of {n}: pycor {result['pycor']['total_s']:.1f} s, full copies {result['full-copies']['total_s']:.1f} s")
    return result


# -- set-up and tear-down ---------------------------------------------------------------


def prepare(work: str, env: dict[str, str], project: str, base_source: str, big_mb: int, log) -> tuple[Context, str | None]:  # type: ignore[no-untyped-def]
    make_project(project)
    base = "bench"
    if base_source == "busybox":
        sh(PYCOR + ["base", "import", base, "--busybox"], env=env)
    else:
        suite = sh(["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"]).strip() or "bookworm"
        log(f"building the base: debootstrap --variant=minbase {suite}")
        sh(PYCOR + ["base", "import", base, "--debootstrap", suite], env=env)
    # a large file in the base for the copy-up measurement: a second version, as an update makes it
    make_big = f"mkdir -p /var/lib && dd if=/dev/urandom of=/var/lib/bench-big bs=1M count={big_mb} 2>/dev/null"
    sh(PYCOR + ["base", "update", base, "--", "/bin/sh", "-c", make_big],
       env=env)
    store = env["PYCOR_STORE"]
    from pycor_hooks.store import Store

    stack = Store(store).lower_stack(base, Store(store).current(base))
    src = os.path.join(work, "rootfs")
    os.mkdir(src)
    with merged_view(stack, os.path.join(work, "merged")) as merged:
        copy_tree(merged, src, Progress(open(os.devnull, "w")))
    deb = None
    if base_source != "busybox":
        try:
            sh(["sh", "-c", f"cd {work} && apt-get download hello"])
            deb = next(os.path.join(work, f) for f in os.listdir(work) if f.endswith(".deb"))
        except (RuntimeError, StopIteration):
            log("apt-get download hello failed: the typical change writes files instead")
    return Context(work, env, base, src, project), deb


def cleanup(ctx_project: str, env: dict[str, str], systems: list[System], work: str) -> None:
    listing = sh(["lxc", "--project", ctx_project, "list", "-c", "n", "--format", "csv"], check=False).split()
    for name in listing:
        sh(["lxc", "--project", ctx_project, "delete", "--force", name], check=False)
    for fp in sh(["lxc", "--project", ctx_project, "image", "list", "-c", "f", "--format", "csv"], check=False).split():
        sh(["lxc", "--project", ctx_project, "image", "delete", fp], check=False)
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
    sh(["lxc", "--project", ctx_project, "profile", "delete", "overlay"], check=False)
    sh(["lxc", "project", "delete", ctx_project], check=False)
    sh(PYCOR + ["base", "rm", "bench", "-P", lxcpath], env=env, check=False)
    shutil.rmtree(work, ignore_errors=True)


# -- output ---------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def write_outputs(out_dir: str, data: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    rows = data["systems"]
    points = [p for p in PAGE_CACHE_POINTS if all(str(p) in r["page_cache_bytes"] for r in rows)] or [data["n"]]
    lines = ["# pycor benchmarks\n", f"Machine {data['machine']['node']} ({data['machine']['cpus']} CPUs, "
             f"{mib(data['machine']['memory_bytes']) } MiB), kernel {data['machine']['kernel']}, {data['date']}; "
             f"base: {data['base_source']}, N = {data['n']}.\n",
             "| system | create s (p10-p90) | first start s | start again s | disk/container MiB | after change MiB | "
             + " | ".join(f"page cache N={p} MiB" for p in points) + " | copy-up first / later write s | write new file s |",
             "| --- " * (8 + len(points)) + "|"]
    for r in rows:
        cu = r["copy_up"]
        lines.append(
            f"| {r['system']} | {r['create_s']['median']:.3f} ({r['create_s']['p10']:.3f}-{r['create_s']['p90']:.3f}) | "
            f"{r['start_first_s']['median']:.3f} | {r['start_again_s']['median']:.3f} | {mib(r['disk_after_create_bytes'])} | "
            f"{mib(r['disk_after_change_bytes'])} | " + " | ".join(mib(r["page_cache_bytes"][str(p)]) for p in points)
            + f" | {cu['first_write_s']:.3f} / {cu['later_write_s']:.3f} | {cu['write_new_file_s']:.3f} |")
    if data.get("hooks_share"):
        lines.append("")
        for k, v in data["hooks_share"].items():
            lines.append(f"- pycor hooks in a start after a stop, {k}: {v['pycor_s']:.3f} s against {v['anchor_s']:.3f} s "
                         f"for {v['anchor']}: {v['share'] * 100:.0f}% of pycor's start")
    if data.get("density"):
        lines += ["", "| density | containers started | memory per container MiB |", "| --- | --- | --- |"]
        for d in data["density"]:
            lines.append(f"| {d['system']} | {d['containers']} | {mib(d['memory_per_container_bytes'])} |")
    if data.get("rollout"):
        ro = data["rollout"]
        lines += ["", f"Rollout of {ro['pycor']['containers']} running containers to a new base version: pycor update "
                  f"{ro['pycor']['update_s']:.1f} s + rollout {ro['pycor']['rollout_s']:.1f} s; the same change applied inside "
                  f"each of {ro['full-copies']['containers']} full copies: {ro['full-copies']['total_s']:.1f} s."]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(out_dir, data)


def plot(out_dir: str, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in data["systems"]:
        xs = sorted(int(k) for k in r["page_cache_bytes"])
        ax.plot(xs, [r["page_cache_bytes"][str(x)] / 2**20 for x in xs], marker="o", label=r["system"])
    ax.set_xlabel("containers that read the base's binaries and libraries")
    ax.set_ylabel("host page cache filled (MiB)")
    ax.set_title(f"Page cache against N ({data['base_source']} base)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "page_cache.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = data["systems"]
    med = [r["create_s"]["median"] for r in rows]
    lo = [r["create_s"]["median"] - r["create_s"]["p10"] for r in rows]
    hi = [r["create_s"]["p90"] - r["create_s"]["median"] for r in rows]
    ax.bar([r["system"] for r in rows], med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_ylabel("create time per container (s, log scale; p10-p90 bars)")
    ax.set_title("Create time per system")
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "create_time.png"), dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="containers per system (default 20)")
    ap.add_argument("--density", type=int, default=200, help="density cap per system (default 200)")
    ap.add_argument("--density-systems", default="pycor-lxc,pycor-lxd,lxc-overlay,lxd-btrfs",
                    help="systems measured for density (full copies of 200 containers would need 40 GB)")
    ap.add_argument("--rollout", type=int, default=10, help="containers moved in the rollout measurement")
    ap.add_argument("--systems", default=",".join(s.name for s in ALL))
    ap.add_argument("--base-source", choices=("debootstrap", "busybox"), default="debootstrap")
    ap.add_argument("--big-mb", type=int, default=128, help="size of the large base file for copy-up")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.density, args.rollout, args.big_mb = 2, 2, 2, 4
    log = lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    work = tempfile.mkdtemp(prefix="pycor-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    project = f"pycor-bench-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, PYCOR_STORE=os.path.join(work, "store"), PYCOR_LXD_PROJECT=project,
               PYCOR_HOOKS_DIR=os.path.join(work, "hooks"), PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
    sh(PYCOR + ["install"], env=env)  # this checkout's hooks, in the run's own folder
    wanted = args.systems.split(",")
    systems: list[System] = []
    try:
        ctx, deb = prepare(work, env, project, args.base_source, args.big_mb, log)
        systems = [cls(ctx) for cls in ALL if cls.name in wanted]
        results = []
        for system in systems:
            system.setup()
            results.append(measure_system(system, args.n, args.big_mb, deb, log))
        by_name = {r["system"]: r for r in results}
        share = {}
        for pycor_name, anchor in (("pycor-lxc", "lxc-copy"), ("pycor-lxd", "lxd-dir")):
            if pycor_name in by_name and anchor in by_name:
                p, a = by_name[pycor_name]["start_again_s"]["median"], by_name[anchor]["start_again_s"]["median"]
                share[pycor_name] = {"pycor_s": p, "anchor": anchor, "anchor_s": a, "share": max(0.0, (p - a) / p)}
        density = [measure_density(s, args.density, log) for s in systems if s.name in args.density_systems.split(",")]
        by_system = {s.name: s for s in systems}
        rollout = None
        if "pycor-lxc" in by_system and "lxc-copy" in by_system and args.rollout > 0:
            rollout = measure_rollout(ctx, by_system["pycor-lxc"], by_system["lxc-copy"], args.rollout, log)
        mem = meminfo()
        data = {"date": time.strftime("%Y-%m-%d %H:%M"), "base_source": args.base_source, "n": args.n,
                "machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                            "memory_bytes": mem["MemTotal"]},
                "systems": results, "hooks_share": share, "density": density, "rollout": rollout}
        write_outputs(args.out, data)
        log(f"results in {args.out}")
        return 0
    finally:
        cleanup(project, env, systems, work)


if __name__ == "__main__":
    sys.exit(main())
