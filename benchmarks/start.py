"""The start path against its anchors, in one run (issue: the start path at the physical limit).

On one busybox root filesystem:

- privileged LXC: a pycor container's start (`lxc-start`, daemonized, to
  RUNNING) against an LXC overlay clone's (`lxc-copy -s -B overlay` of a
  directory container), interleaved, median of --runs; the ratio;
- per hook: interpreter start-up (`python3 -IBS -c pass`), imports (the
  hook's modules), and its whole run as LXC's trace log times it;
- create: `lxc-create -t pycor` against `lxc-copy -s -B overlay`;
- 50 at once: all of --parallel containers started together, pycor against
  overlay clones (the store lock must not serialise starts);
- LXD and Incus (those that run here): an unprivileged start from a plain
  image of the same root filesystem against the pycor image and profile.

    sudo .venv/bin/python benchmarks/start.py [--runs 15] [--parallel 50]

Writes benchmarks/results/start.json and start.md; removes what it made.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from hook_overhead import plain_image  # noqa: E402
from systems import PYCOR, make_project, sh  # noqa: E402

HOOK_IMPORTS = {"pre-start": "pycor_hooks.hooks, pycor_hooks.driver, pycor_hooks.idmap",
                "pre-mount": "pycor_hooks.hooks, pycor_hooks.driver"}


def lxc(tool: str, name: str, lxcpath: str, *args: str, check: bool = True) -> str:
    return sh([tool, "-n", name, "-P", lxcpath, *args], check=check)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def python_ms(code: str, runs: int = 20) -> float:
    repo = os.path.dirname(HERE)
    # ended as the hooks end (hooks.hook_exit): os._exit, no teardown of the loaded modules
    argv = ["/usr/bin/python3", "-IBS", "-c", f"import os, sys; sys.path.insert(0, {repo!r}); {code}; os._exit(0)"]
    subprocess.run(argv, check=True)  # compiled once, outside the timing
    return median_ms([timed(lambda: subprocess.run(argv, check=True)) for _ in range(runs)])


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def hook_times(log: str) -> dict[str, list[float]]:
    """How long each pycor hook ran, from an LXC DEBUG log: its 'Executing script' line to the next line."""
    stamps: list[tuple[float, str]] = []
    with open(log, errors="replace") as f:
        for line in f:
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[2][:8].isdigit():
                when = datetime.datetime.strptime(parts[2][:18], "%Y%m%d%H%M%S.%f").timestamp()
                stamps.append((when, line))
    out: dict[str, list[float]] = {}
    for (when, line), (after, _) in zip(stamps, stamps[1:]):
        for hook in ("pre-start", "pre-mount"):
            if 'Executing script "' in line and f"pycor-{hook}" in line:
                out.setdefault(hook, []).append(after - when)
    return out


def lxc_part(work: str, env: dict[str, str], runs: int, parallel: int, log) -> dict:  # type: ignore[no-untyped-def]
    lxcpath = os.path.join(work, "lxc")
    os.makedirs(lxcpath)
    layer = os.path.join(env["PYCOR_STORE"], "bases", "bench", "versions", "1", "rootfs")
    # the anchor: a directory container of the same rootfs, and overlay clones of it
    os.makedirs(os.path.join(lxcpath, "src"))
    sh(["cp", "-a", layer, os.path.join(lxcpath, "src", "rootfs")])
    with open(os.path.join(lxcpath, "src", "config"), "w") as f:
        f.write(f"lxc.include = /usr/share/lxc/config/common.conf\nlxc.rootfs.path = dir:{lxcpath}/src/rootfs\n"
                "lxc.uts.name = src\nlxc.net.0.type = empty\nlxc.signal.halt = SIGUSR1\nlxc.signal.reboot = SIGTERM\n")
    create_overlay = [timed(lambda i=i: lxc("lxc-copy", "src", lxcpath, "-N", f"o{i}", "-s", "-B", "overlay"))
                      for i in range(parallel)]
    create_pycor = [timed(lambda i=i: sh(PYCOR + ["create", f"p{i}", "--base", "bench", "-P", lxcpath, "--network", "none"], env=env))
                    for i in range(parallel)]
    create_template = [timed(lambda i=i: sh(["lxc-create", "-n", f"t{i}", "-P", lxcpath, "-t", os.path.join(env["PYCOR_TEMPLATES_DIR"], "lxc-pycor"),
                                             "--", "--base", "bench"], env=env)) for i in range(min(parallel, runs))]
    log("privileged starts, interleaved")
    starts: dict[str, list[float]] = {"pycor": [], "overlay": []}
    logs = os.path.join(work, "p0.log")
    for r in range(runs + 1):
        for kind, name in (("pycor", "p0"), ("overlay", "o0")):
            t = timed(lambda: lxc("lxc-start", name, lxcpath))
            lxc("lxc-stop", name, lxcpath, "-k")
            if r:  # the first start of each warms caches
                starts[kind].append(t)
    log("hooks, from LXC's trace log (starts not timed: DEBUG logging slows them)")
    for _ in range(runs):
        lxc("lxc-start", "p0", lxcpath, "-l", "DEBUG", "-o", logs)
        lxc("lxc-stop", "p0", lxcpath, "-k")
    hooks = hook_times(logs)
    log(f"{parallel} at once")
    together = {}
    for kind, prefix in (("pycor", "p"), ("overlay", "o")):
        names = [f"{prefix}{i}" for i in range(parallel)]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            cpu = busy_cpu_s()
            together[kind] = timed(lambda: list(pool.map(lambda n: lxc("lxc-start", n, lxcpath), names)))
            together[f"{kind}_cpu"] = busy_cpu_s() - cpu
        running = sum(lxc("lxc-info", n, lxcpath, "-s", "-H").strip() == "RUNNING" for n in names)
        together[f"{kind}_running"] = running
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(lambda n: lxc("lxc-stop", n, lxcpath, "-k", check=False), names))
    return {
        "privileged_start_ms": {k: median_ms(v) for k, v in starts.items()},
        "privileged_ratio": statistics.median(starts["pycor"]) / statistics.median(starts["overlay"]),
        "hook_run_ms": {k: median_ms(v) for k, v in hooks.items()},
        "create_ms": {"pycor create": median_ms(create_pycor), "lxc-create -t pycor": median_ms(create_template),
                      "lxc-copy -s -B overlay": median_ms(create_overlay)},
        "parallel": {"n": parallel, "pycor_s": together["pycor"], "overlay_s": together["overlay"],
                     "ratio": together["pycor"] / together["overlay"],
                     "pycor_running": together["pycor_running"], "overlay_running": together["overlay_running"],
                     "pycor_cpu_s": together["pycor_cpu"], "overlay_cpu_s": together["overlay_cpu"]},
    }


def daemon_part(cli: str, work: str, env: dict[str, str], runs: int, log) -> dict | None:  # type: ignore[no-untyped-def]
    if subprocess.run([cli, "info"], capture_output=True).returncode != 0:
        return None
    project = f"pycor-bench-{uuid.uuid4().hex[:6]}"
    denv = dict(env, PYCOR_LXD_PROJECT=project, PYCOR_INCUS_PROJECT=project)
    p = [cli, "--project", project]
    try:
        make_project(project, cli)
        sh(PYCOR + [{"lxc": "lxd", "incus": "incus"}[cli], "init"], env=denv)
        tarball = os.path.join(work, f"plain-{cli}.tar.gz")
        plain_image(os.path.join(env["PYCOR_STORE"], "bases", "bench", "versions", "1", "rootfs"), tarball)
        sh(p + ["image", "import", tarball, "--alias", "plain"])
        sh(p + ["init", "plain", "plain"])
        sh(p + ["init", "pycor/bench", "overlay", "--profile", "default", "--profile", "overlay"])
        log(f"{cli}: starts, interleaved")
        times: dict[str, list[float]] = {"plain": [], "overlay": []}
        for r in range(runs + 1):
            for name in ("plain", "overlay"):
                t = timed(lambda: sh(p + ["start", name]))
                sh(p + ["stop", "--force", name])
                if r:  # the first start shifts the rootfs
                    times[name].append(t)
        return {"start_ms": {k: median_ms(v) for k, v in times.items()},
                "ratio": statistics.median(times["overlay"]) / statistics.median(times["plain"])}
    finally:
        for name in ("plain", "overlay"):
            subprocess.run(p + ["delete", "-f", name], capture_output=True)
        for fp in subprocess.run(p + ["image", "list", "-c", "f", "--format", "csv"], capture_output=True, text=True).stdout.split():
            subprocess.run(p + ["image", "delete", fp], capture_output=True)
        subprocess.run(p + ["profile", "delete", "overlay"], capture_output=True)
        subprocess.run([cli, "project", "delete", project], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--parallel", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    log = lambda m: print(f"[start] {m}", file=sys.stderr, flush=True)  # noqa: E731
    work = tempfile.mkdtemp(prefix="pycor-bench-start-", dir="/var/tmp")
    os.chmod(work, 0o755)
    env = dict(os.environ, PYCOR_STORE=os.path.join(work, "store"), PYCOR_HOOKS_DIR=os.path.join(work, "hooks"),
               PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
    lxcpath = os.path.join(work, "lxc")
    try:
        sh(PYCOR + ["install"], env=env)
        sh(PYCOR + ["base", "import", "bench", "--busybox"], env=env)
        result = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
                  "python_ms": {"bare interpreter": python_ms("pass")}}
        for hook, modules in HOOK_IMPORTS.items():
            result["python_ms"][f"{hook} imports (interpreter included)"] = python_ms(f"import {modules}")
        result["lxc"] = lxc_part(work, env, args.runs, args.parallel, log)
        for cli, title in (("lxc", "LXD"), ("incus", "Incus")):
            part = daemon_part(cli, work, env, max(5, args.runs // 2), log)
            if part:
                result[title] = part
    finally:
        if os.path.isdir(lxcpath):
            for name in os.listdir(lxcpath):
                subprocess.run(["lxc-stop", "-n", name, "-P", lxcpath, "-k"], capture_output=True)
            for name in sorted(os.listdir(lxcpath), key=lambda n: n == "src"):  # clones before their source
                subprocess.run(["lxc-destroy", "-n", name, "-P", lxcpath], capture_output=True)
        subprocess.run(["rm", "-rf", work])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "start.json"), "w") as f:
        json.dump(result, f, indent=1)
    x = result["lxc"]
    md = [f"# The start path ({result['machine']['date']}, Linux {result['machine']['kernel']}, "
          f"{result['machine']['cpus']} CPUs, busybox rootfs)", "",
          "| | pycor | anchor | ratio | goal |", "| --- | --- | --- | --- | --- |",
          f"| privileged LXC start (median of {args.runs}), against an LXC overlay clone | {x['privileged_start_ms']['pycor']:.1f} ms | "
          f"{x['privileged_start_ms']['overlay']:.1f} ms | {x['privileged_ratio']:.2f} | at most 1.6 |"]
    for title in ("LXD", "Incus"):
        if title in result:
            d = result[title]
            md.append(f"| unprivileged {title} start, against a plain image | {d['start_ms']['overlay']:.1f} ms | "
                      f"{d['start_ms']['plain']:.1f} ms | {d['ratio']:.2f} | at most 1.2 |")
    c = x["create_ms"]
    md.append(f"| create: `lxc-create -t pycor` / `pycor create`, against `lxc-copy -s -B overlay` | "
              f"{c['lxc-create -t pycor']:.1f} / {c['pycor create']:.1f} ms | {c['lxc-copy -s -B overlay']:.1f} ms | "
              f"{c['lxc-create -t pycor'] / c['lxc-copy -s -B overlay']:.2f} | at most 1 |")
    par = x["parallel"]
    md.append(f"| {par['n']} privileged starts at once (all running: {par['pycor_running']}, {par['overlay_running']}) | "
              f"{par['pycor_s']:.2f} s | {par['overlay_s']:.2f} s | {par['ratio']:.2f} | at most 1.3 |")
    md.append(f"| the same, CPU time the machine spent busy (all {result['machine']['cpus']} CPUs) | {par['pycor_cpu_s']:.2f} s | "
              f"{par['overlay_cpu_s']:.2f} s | {par['pycor_cpu_s'] / par['overlay_cpu_s'] if par['overlay_cpu_s'] else float('nan'):.2f} | |")
    md += ["", "| per hook | ms |", "| --- | --- |"]
    md += [f"| {k} | {v:.1f} |" for k, v in result["python_ms"].items()]
    md += [f"| {k} whole run, from LXC's trace log | {v:.1f} |" for k, v in x["hook_run_ms"].items()]
    md += [f"| {k} work (whole run less interpreter and imports) | {v - result['python_ms'][f'{k} imports (interpreter included)']:.1f} |"
           for k, v in x["hook_run_ms"].items()]
    with open(os.path.join(args.out, "start.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
