"""What the pycor hooks add to an LXD container's start.

Two unprivileged LXD containers on the same busybox root filesystem, in one
run: 'plain' from a regular LXD image of that rootfs (no pycor), 'overlay'
from the pycor image with the overlay profile. Each is started and stopped
N times; the figure is the median `lxc start` wall time of each, and the
difference. Also: the three hooks timed alone (python start-up included).

    sudo .venv/bin/python benchmarks/hook_overhead.py [--runs 9]

Writes benchmarks/results/hook_overhead.json and .md. Everything it creates
(an LXD project, images, containers, a store) is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from systems import PYCOR, make_project, sh  # noqa: E402


def plain_image(layer: str, path: str) -> None:
    """A regular unified LXD image of the base's root filesystem."""
    meta = f"architecture: x86_64\ncreation_date: {int(time.time())}\nproperties:\n  description: plain busybox\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        tar.add(layer, arcname="rootfs")


def time_starts(name: str, project: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sh(["lxc", "--project", project, "start", name])
        times.append(time.perf_counter() - t0)
        sh(["lxc", "--project", project, "stop", "--force", name])
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pycor-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    env = dict(os.environ, PYCOR_STORE=os.path.join(work, "store"), PYCOR_LXD_PROJECT=f"pycor-bench-{uuid.uuid4().hex[:6]}")
    project = env["PYCOR_LXD_PROJECT"]
    try:
        make_project(project)
        sh(PYCOR + ["base", "import", "bench", "--busybox"], env)
        sh(PYCOR + ["lxd", "init"], env)
        layer = os.path.join(env["PYCOR_STORE"], "bases", "bench", "versions", "1", "rootfs")
        plain_image(layer, os.path.join(work, "plain.tar.gz"))
        sh(["lxc", "--project", project, "image", "import", os.path.join(work, "plain.tar.gz"), "--alias", "plain"])
        sh(["lxc", "--project", project, "init", "plain", "plain"])
        sh(["lxc", "--project", project, "init", "pycor/bench", "overlay", "--profile", "default", "--profile", "overlay"])
        # first starts remap the rootfs; leave them out
        for name in ("plain", "overlay"):
            time_starts(name, project, 1)
        plain, over = [], []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            plain += time_starts("plain", project, 1)
            over += time_starts("overlay", project, 1)
        result = {
            "machine": platform.node(), "kernel": platform.release(), "date": time.strftime("%Y-%m-%d"),
            "runs": args.runs,
            "plain_start_median_s": statistics.median(plain), "overlay_start_median_s": statistics.median(over),
            "plain_start_all_s": plain, "overlay_start_all_s": over,
        }
        result["hooks_add_ms"] = (result["overlay_start_median_s"] - result["plain_start_median_s"]) * 1000
    finally:
        for name in ("plain", "overlay"):
            subprocess.run(["lxc", "--project", project, "delete", "-f", name], capture_output=True)
        for fp in sh(["lxc", "--project", project, "image", "list", "-c", "f", "--format", "csv"]).split():
            subprocess.run(["lxc", "--project", project, "image", "delete", fp], capture_output=True)
        subprocess.run(["lxc", "--project", project, "profile", "delete", "overlay"], capture_output=True)
        subprocess.run(["lxc", "project", "delete", project], capture_output=True)
        subprocess.run(PYCOR + ["base", "rm", "bench"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", work])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hook_overhead.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = (
        f"| LXD start (median of {args.runs}) | seconds |\n| --- | --- |\n"
        f"| plain image, no pycor | {result['plain_start_median_s']:.3f} |\n"
        f"| pycor image + overlay profile | {result['overlay_start_median_s']:.3f} |\n"
        f"| pycor hooks add | {result['hooks_add_ms']:.0f} ms |\n"
    )
    with open(os.path.join(args.out, "hook_overhead.md"), "w") as f:
        f.write(f"Machine {result['machine']}, kernel {result['kernel']}, {result['date']}\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
