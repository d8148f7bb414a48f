"""What moving to another host costs: a pycor container against a full one, and a base's export.

Two LXD daemons on this machine: the host's own (a private project) and a
second one with its own LXD_DIR and pycor store (tests/second_lxd.py),
reached as remote h2 over 127.0.0.1. On one base (debootstrap by default):

- `lxc copy --mode relay` of a stopped container to h2, N times: a pycor
  container (its volume is its diff: .pycor/upper) against a full container
  of the same root filesystem on LXD's dir pool; bytes moved (the copy's
  rootfs on the target, which rsync carries whole) and time;
- `pycor base export` of the base, and `--since` one update (a small base
  update), size and time, and the import of each on the other store.

    sudo .venv/bin/python benchmarks/hosts.py [--n 3] [--busybox | --from-dir ROOTFS]

Writes benchmarks/results/hosts.json and .md; removes what it made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
from second_lxd import REMOTE, SecondLxd  # noqa: E402
from systems import PYCOR, du, make_project, sh  # noqa: E402


def host_suite() -> str:
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return "bookworm"


def timed(argv: list[str], env: dict[str, str], **kw) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, **kw)
    return time.perf_counter() - t0


def full_image(layer: str, work: str, name: str) -> str:
    """A unified LXD image (metadata.yaml + rootfs/) of a base layer, for the full-container side."""
    meta = os.path.join(work, "metadata.yaml")
    with open(meta, "w") as f:
        f.write(f"architecture: x86_64\ncreation_date: {int(time.time())}\nproperties:\n  description: {name} full\n")
    tarball = os.path.join(work, f"{name}-full.tar")
    sh(["tar", "-C", work, "-cf", tarball, "metadata.yaml"])
    sh(["tar", "-C", os.path.dirname(layer), "--xattrs", "--xattrs-include=*", "--numeric-owner", "-rf", tarball, "rootfs"])
    return tarball


def stats(xs: list[float]) -> dict:
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3, help="copies of each kind (default 3)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--busybox", action="store_true", help="a 2 MB busybox base (quick)")
    src.add_argument("--from-dir", metavar="ROOTFS", help="a root filesystem directory")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    work = tempfile.mkdtemp(prefix="pycor-bench-hosts-", dir="/var/tmp")
    os.chmod(work, 0o755)
    store1, store2 = os.path.join(work, "store1"), os.path.join(work, "store2")
    project = f"pycor-bench-{uuid.uuid4().hex[:6]}"
    env1 = dict(os.environ, PYCOR_STORE=store1, PYCOR_HOOKS_DIR=os.path.join(work, "hooks"),
                PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"), PYCOR_LXD_PROJECT=project, PYTHONPATH=REPO)
    daemon = SecondLxd()
    env2 = daemon.pycor_env(env1, store2)
    base = "bench"
    data: dict = {"host": platform.node(), "kernel": platform.release(), "n": args.n}
    try:
        sh(PYCOR + ["install"], env=env1)
        how = ["--busybox"] if args.busybox else ["--from-dir", args.from_dir] if args.from_dir else ["--debootstrap", host_suite()]
        log(f"importing base {base} ({' '.join(how)})")
        sh(PYCOR + ["base", "import", base, *how], env=env1)
        layer = os.path.join(store1, "bases", base, "versions", "1", "rootfs")
        data["base"] = {"source": " ".join(how), "bytes": du(layer)}

        # export and import of the whole base
        exp = os.path.join(work, "full.export")
        data["export_full"] = {"seconds": timed(PYCOR + ["base", "export", base, "-o", exp], env1)}
        data["export_full"]["bytes"] = os.path.getsize(exp)
        data["export_full"]["import_seconds"] = timed(PYCOR + ["base", "import", base, "--from-export", exp], env2)

        # one small update, exported --since 1
        sh(PYCOR + ["base", "update", base, "--", "/bin/sh", "-c", "mkdir -p /opt/bench && echo v2 > /opt/bench/v && "
                    "dd if=/dev/urandom of=/opt/bench/blob bs=1M count=1 2>/dev/null"], env=env1)
        upd = os.path.join(work, "since.export")
        data["export_since"] = {"seconds": timed(PYCOR + ["base", "export", base, "--since", "1", "-o", upd], env1)}
        data["export_since"]["bytes"] = os.path.getsize(upd)
        data["export_since"]["import_seconds"] = timed(PYCOR + ["base", "import", base, "--from-export", upd], env2)

        # the two daemons, each with the overlay profile and an image per base
        make_project(project)
        sh(PYCOR + ["lxd", "init"], env=env1)
        daemon.start()
        sh(PYCOR + ["lxd", "init"], env=env2)
        tarball = full_image(layer, work, base)
        sh(["lxc", "image", "import", tarball, "--alias", "full", "--project", project])

        rows = []
        for kind, image, profiles in (("pycor", f"pycor/{base}", ["--profile", "default", "--profile", "overlay"]),
                                      ("full (dir pool)", "full", ["--profile", "default"])):
            seconds, moved = [], []
            for i in range(args.n):
                name = f"{kind.split()[0]}{i}"
                sh(["lxc", "init", image, name, "--project", project, *profiles])
                if kind == "pycor":  # a first start records its base version; then the container is a diff
                    sh(["lxc", "start", name, "--project", project])
                    sh(["lxc", "stop", name, "--project", project])
                t0 = time.perf_counter()
                daemon.lxc("copy", f"local:{name}", f"{REMOTE}:{name}", "--project", project, "--target-project", "default",
                           "--mode", "relay")
                seconds.append(time.perf_counter() - t0)
                moved.append(du(os.path.dirname(daemon.rootfs(name))))
                daemon.lxc("delete", f"{REMOTE}:{name}")
                sh(["lxc", "delete", name, "--project", project])
                log(f"{kind}: copy {i + 1}/{args.n}: {seconds[-1]:.2f} s, {moved[-1]} bytes")
            rows.append({"kind": kind, "seconds": stats(seconds), "bytes": statistics.median(moved)})
        data["copy"] = rows
    finally:
        daemon.stop()
        for name in subprocess.run(["lxc", "list", "--project", project, "-c", "n", "--format", "csv"],
                                   capture_output=True, text=True).stdout.split():
            subprocess.run(["lxc", "delete", "-f", name, "--project", project], capture_output=True)
        for fp in subprocess.run(["lxc", "image", "list", "--project", project, "-c", "f", "--format", "csv"],
                                 capture_output=True, text=True).stdout.split():
            subprocess.run(["lxc", "image", "delete", fp, "--project", project], capture_output=True)
        subprocess.run(["lxc", "profile", "delete", "overlay", "--project", project], capture_output=True)
        subprocess.run(["lxc", "project", "delete", project], capture_output=True)
        subprocess.run(["rm", "-rf", work])

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hosts.json"), "w") as f:
        json.dump(data, f, indent=1)
    mib = lambda b: f"{b / 1048576:.2f} MiB"  # noqa: E731
    lines = [f"# Moving to another host ({data['base']['source']}, base {mib(data['base']['bytes'])}, n={args.n})", "",
             "| what | bytes moved | time (median, min-max) |", "| --- | --- | --- |"]
    for r in data.get("copy", []):
        s = r["seconds"]
        lines.append(f"| `lxc copy` of a {r['kind']} container | {mib(r['bytes'])} | {s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f}) |")
    for key, what in (("export_full", "`pycor base export` (whole base)"), ("export_since", "`pycor base export --since 1` (one update)")):
        e = data[key]
        lines.append(f"| {what} | {mib(e['bytes'])} | {e['seconds']:.2f} s; import {e['import_seconds']:.2f} s |")
    with open(os.path.join(args.out, "hosts.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
