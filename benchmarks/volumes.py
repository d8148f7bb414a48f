"""Writes in a volume against writes through the overlay, in one pycor LXC container.

A base carries one large file (--mib MiB). In a container created with
--volume /vol:
- first write: appending one byte to the base's large file through the
  overlay (copy-up copies the whole file first) against appending to the same
  file already in the volume;
- sustained write: dd of --mib MiB with fsync to the overlay and to the volume.
Each figure is the median of --runs, measured on the host around lxc-attach,
minus the median of an empty lxc-attach.

    sudo .venv/bin/python benchmarks/volumes.py [--mib 256] [--runs 5]

Writes benchmarks/results/volumes.json and .md (or --out DIR). Everything it
creates (a store, a base, a container, in a temporary directory) is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PYCOR = [sys.executable, "-m", "pycor_hooks.cli"]


def sh(argv: list[str], env: dict | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


def timed(argv: list[str], runs: int, setup: list[str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        if setup:
            sh(setup)
        t0 = time.perf_counter()
        sh(argv)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256, help="size of the large base file and of the sustained write")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pycor-bench-", dir="/var/tmp")
    os.chmod(tmp, 0o755)
    env = dict(os.environ, PYCOR_STORE=f"{tmp}/store", PYCOR_HOOKS_DIR=f"{tmp}/hooks", PYCOR_TEMPLATES_DIR=f"{tmp}/templates")
    lxcpath, name = f"{tmp}/lxc", f"bv{uuid.uuid4().hex[:6]}"
    try:
        sh(PYCOR + ["install"], env)
        sh(PYCOR + ["base", "import", "busybox", "--busybox"], env)
        rootfs = f"{tmp}/rootfs"
        shutil.copytree(f"{tmp}/store/bases/busybox/versions/1/rootfs", rootfs, symlinks=True)
        os.makedirs(f"{rootfs}/data")
        with open(f"{rootfs}/data/big", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        sh(PYCOR + ["base", "import", "big", "--from-dir", rootfs], env)
        shutil.rmtree(rootfs)
        os.makedirs(lxcpath)
        sh(PYCOR + ["create", name, "--base", "big", "-P", lxcpath, "--network", "none", "--volume", "/vol"], env)
        sh(["lxc-start", "-n", name, "-P", lxcpath])
        sh(["lxc-wait", "-n", name, "-P", lxcpath, "-s", "RUNNING", "-t", "20"])
        attach = ["lxc-attach", "-n", name, "-P", lxcpath, "--clear-env", "--", "/bin/sh", "-c"]
        upper_big = f"{lxcpath}/{name}/rootfs/.pycor/upper/data/big"
        vol_big = f"{lxcpath}/{name}/rootfs/.pycor/volumes/0/big"
        empty = statistics.median(timed(attach + ["true"], args.runs))
        # between runs the copy-up is undone: container stopped, the copy in upper removed, a fresh overlay at start
        first_overlay = []
        for _ in range(args.runs):
            if os.path.exists(upper_big):
                sh(["lxc-stop", "-n", name, "-P", lxcpath, "-k"])
                os.unlink(upper_big)
                sh(["lxc-start", "-n", name, "-P", lxcpath])
                sh(["lxc-wait", "-n", name, "-P", lxcpath, "-s", "RUNNING", "-t", "20"])
            first_overlay += timed(attach + ["echo x >> /data/big"], 1)
        shutil.copyfile(f"{tmp}/store/bases/big/versions/1/rootfs/data/big", vol_big)
        first_volume = timed(attach + ["echo x >> /vol/big"], args.runs)
        dd = f"dd if=/dev/zero of={{}} bs=1M count={args.mib} conv=fsync 2>/dev/null; rm {{}}"
        sustained_overlay = timed(attach + [dd.format("/root/sus", "/root/sus")], args.runs)
        sustained_volume = timed(attach + [dd.format("/vol/sus", "/vol/sus")], args.runs)
        fig = {k: max(statistics.median(v) - empty, 0.0) for k, v in {
            "first_write_overlay_s": first_overlay, "first_write_volume_s": first_volume,
            "sustained_write_overlay_s": sustained_overlay, "sustained_write_volume_s": sustained_volume}.items()}
        result = {"kernel": platform.release(), "mib": args.mib, "runs": args.runs, "empty_attach_s": empty, **fig,
                  "sustained_overlay_mib_s": args.mib / fig["sustained_write_overlay_s"] if fig["sustained_write_overlay_s"] else None,
                  "sustained_volume_mib_s": args.mib / fig["sustained_write_volume_s"] if fig["sustained_write_volume_s"] else None}
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "volumes.json"), "w") as f:
            json.dump(result, f, indent=1)
        md = [f"# Volumes against the overlay ({args.mib} MiB, median of {args.runs}, kernel {result['kernel']})", "",
              "| write | overlay (s) | volume (s) |", "| --- | --- | --- |",
              f"| first write to a {args.mib} MiB base file (copy-up) | {fig['first_write_overlay_s']:.3f} | {fig['first_write_volume_s']:.3f} |",
              f"| sustained write of {args.mib} MiB, fsync | {fig['sustained_write_overlay_s']:.3f} | {fig['sustained_write_volume_s']:.3f} |",
              "", "Command: `sudo .venv/bin/python benchmarks/volumes.py " + f"--mib {args.mib} --runs {args.runs}`"]
        with open(os.path.join(args.out, "volumes.md"), "w") as f:
            f.write("\n".join(md) + "\n")
        print("\n".join(md))
    finally:
        subprocess.run(["lxc-stop", "-n", name, "-P", lxcpath, "-k"], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", name, "-P", lxcpath], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
