"""What reconciliation costs, and how lean a version is.

On a debootstrap Debian base (or one given with --from-dir), N containers
each make a few hundred changes of their own (a local user, a local
package, files under /etc and /usr/local). Then, in one run:

- start after a stop, the version unchanged (no reconciliation: the cost
  of a start that did not move);
- a base update installs a package that adds a system user (uuid-runtime)
  and its libraries; each container's first start after it moves it
  and reconciles its accounts and dpkg databases: the start time, and the
  reconciliation alone (pycor rebase --dry-run, timed);
- the size of the version that installs `hello` alone, against what the
  package installs (dpkg's Installed-Size), package databases included.

    sudo .venv/bin/python benchmarks/reconcile.py [--n 5] [--from-dir ROOTFS]

Writes benchmarks/results/reconcile.json and .md; removes what it made.
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
sys.path.insert(0, os.path.dirname(HERE))
from systems import PYCOR, du, sh  # noqa: E402

CHANGES = ("useradd -m local1 && useradd local2 && mkdir -p /usr/local/share/bench && "
           "for i in $(seq 1 300); do echo $i > /usr/local/share/bench/f$i; done && "
           "for f in /etc/issue /etc/motd /etc/hostname; do echo x >> $f; done && "
           "mkdir -p /tmp/lp/DEBIAN && printf 'Package: localpkg\\nVersion: 1\\nArchitecture: all\\nMaintainer: b <b@example.org>\\n"
           "Description: x\\n' > /tmp/lp/DEBIAN/control && dpkg-deb --build /tmp/lp /tmp/lp.deb >/dev/null && dpkg -i /tmp/lp.deb >/dev/null")
APT = "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}"


def lxc(tool: str, name: str, lxcpath: str, *args: str) -> str:
    return sh([tool, "-n", name, "-P", lxcpath, *args])


def timed_start(name: str, lxcpath: str) -> float:
    t0 = time.perf_counter()
    lxc("lxc-start", name, lxcpath)
    lxc("lxc-wait", name, lxcpath, "-s", "RUNNING", "-t", "60")
    return time.perf_counter() - t0


def stats(xs: list[float]) -> dict:
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--from-dir", help="a Debian root filesystem to import instead of running debootstrap")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pycor-bench-rec-", dir="/var/tmp")
    os.chmod(work, 0o755)
    env = dict(os.environ, PYCOR_STORE=os.path.join(work, "store"), PYCOR_HOOKS_DIR=os.path.join(work, "hooks"),
               PYCOR_TEMPLATES_DIR=os.path.join(work, "templates"))
    lxcpath = os.path.join(work, "lxc")
    os.makedirs(lxcpath)
    names = [f"r{i}-{uuid.uuid4().hex[:4]}" for i in range(args.n)]
    log = lambda m: print(f"[reconcile] {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        sh(PYCOR + ["install"], env=env)
        suite = sh(["sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME"]).strip()
        source = ["--from-dir", args.from_dir] if args.from_dir else ["--debootstrap", suite]
        log("importing the base")
        sh(PYCOR + ["base", "import", "deb", *source], env=env, timeout=1800)
        for c in names:
            sh(PYCOR + ["create", c, "--base", "deb", "-P", lxcpath, "--network", "none"], env=env)
            lxc("lxc-start", c, lxcpath)
            lxc("lxc-wait", c, lxcpath, "-s", "RUNNING", "-t", "60")
            lxc("lxc-attach", c, lxcpath, "--clear-env", "--", "/bin/sh", "-c", CHANGES)
            lxc("lxc-stop", c, lxcpath, "-k")
        changed = int(sh(["sh", "-c", f"find {lxcpath}/{names[0]}/rootfs/.pycor/upper | wc -l"]).strip())
        log("starts that do not move")
        still = []
        for c in names:
            still.append(timed_start(c, lxcpath))
            lxc("lxc-stop", c, lxcpath, "-k")
        log("base update: uuid-runtime (a system user and a service)")
        sh(PYCOR + ["base", "update", "deb", "--", "/bin/sh", "-c", APT.format("uuid-runtime")], env=env, timeout=1800)
        plan = []
        for c in names:
            t0 = time.perf_counter()
            sh(PYCOR + ["rebase", c, "-P", lxcpath, "--dry-run"], env=env)
            plan.append(time.perf_counter() - t0)
        log("starts that move")
        moved = []
        for c in names:
            moved.append(timed_start(c, lxcpath))
            lxc("lxc-stop", c, lxcpath, "-k")
        log("a version that installs hello alone")
        sh(PYCOR + ["base", "update", "deb", "--", "/bin/sh", "-c", APT.format("hello")], env=env, timeout=1800)
        versions = json.loads(sh(PYCOR + ["base", "versions", "deb", "--format", "json"], env=env))
        top = os.path.join(env["PYCOR_STORE"], "bases", "deb", "versions", str(versions[-1]["version"]), "rootfs")
        layer_bytes = du(top)
        # what the files hold (dpkg's Installed-Size counts files), apart from the copied-up directories
        # every new file needs in an overlay layer (one block each on disk)
        file_bytes = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(top) for f in fs)
        dirs = sum(len(ds) for _, ds, _ in os.walk(top))
        first = names[0]
        lxc("lxc-start", first, lxcpath)
        lxc("lxc-wait", first, lxcpath, "-s", "RUNNING", "-t", "60")
        installed_kib = int(lxc("lxc-attach", first, lxcpath, "--", "dpkg-query", "-W", "-f=${Installed-Size}", "hello").strip())
        lxc("lxc-stop", first, lxcpath, "-k")
        result = {
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
            "containers": args.n, "paths_changed_per_container": changed,
            "start_not_moved_s": stats(still), "start_moved_s": stats(moved), "reconcile_plan_s": stats(plan),
            "version_bytes": layer_bytes, "version_file_bytes": file_bytes, "version_dirs": dirs,
            "package_installed_bytes": installed_kib * 1024,
            "version_over_package": file_bytes / (installed_kib * 1024),
        }
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "reconcile.json"), "w") as f:
            json.dump(result, f, indent=1)
        md = [
            f"# Reconciliation ({result['machine']['date']}, Linux {result['machine']['kernel']}, {args.n} containers, "
            f"{changed} paths changed each)", "",
            "| | median | min | max |", "| --- | --- | --- | --- |",
            *(f"| {label} | {result[k]['median']:.3f} s | {result[k]['min']:.3f} s | {result[k]['max']:.3f} s |"
              for label, k in (("start, version unchanged", "start_not_moved_s"), ("start that moves and reconciles", "start_moved_s"),
                               ("`pycor rebase --dry-run` (plan alone, CLI included)", "reconcile_plan_s"))),
            "", f"A version installing `hello`: its files hold {file_bytes / 1024:.0f} KiB for a package of {installed_kib} KiB "
            f"installed ({result['version_over_package']:.2f} times, dpkg and apt databases included); on disk it takes "
            f"{layer_bytes / 1024:.0f} KiB, most of the rest the {dirs} directories overlayfs copies up above new files.", "",
        ]
        with open(os.path.join(args.out, "reconcile.md"), "w") as f:
            f.write("\n".join(md))
        print("\n".join(md))
    finally:
        for c in names:
            subprocess.run(["lxc-stop", "-n", c, "-P", lxcpath, "-k"], capture_output=True)
            subprocess.run(["lxc-destroy", "-n", c, "-P", lxcpath], capture_output=True)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
