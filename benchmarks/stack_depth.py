"""How lookups in a container slow down as a base's version stack deepens.

Each 'pycor base update' adds one layer below the container's upper. This
measures, for stacks of 1 to 64 layers over the same files, on a read-only
overlay like a container's lower view:
- walk: a full `os.walk` of the tree (readdir merges every layer that has the dir),
- hits: stat of every file (found in the bottom layer, so each lookup passes every layer above),
- misses: stat of as many absent names (every layer is asked),
cold (page and dentry caches dropped) and warm. The depth at which cold
lookups cost twice what one layer costs is where 'pycor base versions'
advises 'pycor base squash' (pycor_hooks/versions.py, SQUASH_ADVISED_DEPTH).

    sudo .venv/bin/python benchmarks/stack_depth.py

Writes benchmarks/results/stack_depth.json and .md; removes what it made.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pycor_hooks.overlay import merged_view  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DIRS, FILES = 60, 80  # 4800 files in the bottom layer


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def build(work: str, depth: int) -> list[str]:
    layers = []
    for i in range(depth):
        top = os.path.join(work, f"layer{i}")
        os.makedirs(top)
        if i == 0:
            for d in range(DIRS):
                os.makedirs(os.path.join(top, f"d{d}"))
                for f in range(FILES):
                    with open(os.path.join(top, f"d{d}", f"f{f}"), "w") as fh:
                        fh.write("x")
        else:  # an update: a few changed files spread over many directories
            for d in range(i % 7, DIRS, 7):
                os.makedirs(os.path.join(top, f"d{d}"))
                with open(os.path.join(top, f"d{d}", f"f{i % FILES}"), "w") as fh:
                    fh.write(f"v{i}")
        layers.append(top)
    empty = os.path.join(work, "container")  # stands for the container's (empty) upper: always an overlay
    os.makedirs(empty)
    return [empty] + list(reversed(layers))  # top first


def measure(root: str) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in os.walk(root):
        pass
    t1 = time.perf_counter()
    for d in range(DIRS):
        for f in range(FILES):
            os.stat(os.path.join(root, f"d{d}", f"f{f}"))
    t2 = time.perf_counter()
    for d in range(DIRS):
        for f in range(FILES):
            try:
                os.stat(os.path.join(root, f"d{d}", f"absent{f}"))
            except FileNotFoundError:
                pass
    t3 = time.perf_counter()
    return {"walk": t1 - t0, "hits": t2 - t1, "misses": t3 - t2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="1,2,4,8,16,32,64")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    results = []
    for depth in (int(d) for d in args.depths.split(",")):
        work = tempfile.mkdtemp(prefix="pycor-depth-", dir="/var/tmp")
        try:
            stack = build(work, depth)
            with merged_view(stack, os.path.join(work, "merged")) as root:
                cold, warm = [], []
                for _ in range(args.runs):
                    drop_caches()
                    cold.append(measure(root))
                    warm.append(measure(root))
            row = {"depth": depth}
            for kind, runs in (("cold", cold), ("warm", warm)):
                for key in ("walk", "hits", "misses"):
                    row[f"{kind}_{key}_ms"] = statistics.median(r[key] for r in runs) * 1000
            results.append(row)
            print(f"depth {depth:3}: cold walk {row['cold_walk_ms']:7.1f} ms, hits {row['cold_hits_ms']:7.1f} ms, "
                  f"misses {row['cold_misses_ms']:7.1f} ms; warm hits {row['warm_hits_ms']:6.1f} ms", flush=True)
        finally:
            shutil.rmtree(work)
    one = results[0]
    cost = {r["depth"]: (r["cold_walk_ms"] + r["cold_hits_ms"] + r["cold_misses_ms"]) /
            (one["cold_walk_ms"] + one["cold_hits_ms"] + one["cold_misses_ms"]) for r in results}
    advised = next((d for d, c in sorted(cost.items()) if c >= 2.0), None)
    out = {"machine": platform.node(), "kernel": platform.release(), "date": time.strftime("%Y-%m-%d"),
           "files": DIRS * FILES, "runs": args.runs, "results": results,
           "cold_cost_vs_one_layer": cost, "first_depth_at_twice_the_cost": advised}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stack_depth.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = [f"Machine {out['machine']}, kernel {out['kernel']}, {out['date']}; {DIRS * FILES} files, median of {args.runs}",
             "", "| layers | cold walk ms | cold hits ms | cold misses ms | warm hits ms | cold cost vs 1 layer |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['depth']} | {r['cold_walk_ms']:.1f} | {r['cold_hits_ms']:.1f} | {r['cold_misses_ms']:.1f} | "
                     f"{r['warm_hits_ms']:.1f} | {cost[r['depth']]:.2f}x |")
    lines.append("")
    lines.append(f"First depth at twice the cost of one layer: {advised}")
    with open(os.path.join(args.out, "stack_depth.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
