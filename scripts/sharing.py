"""Print what containers on one pycor base share: disk and page cache.

Used by demo.sh. Each container reads every file under /usr, one after the
other, from a cold cache; the host's page cache grows by the base's /usr once
(the first reader) and hardly at all for the others, because all of them read
the same lower inodes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from pycor_hooks.fsutil import human_size


def cached_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached line in /proc/meminfo")


def pycor_json(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "pycor_hooks.cli", *args, "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("containers", nargs="+")
    args = p.parse_args()

    base = next(b for b in pycor_json("base", "ls") if b["name"] == args.base)
    containers = {c["name"]: c for c in pycor_json("ls")}
    print()
    print(f"Disk: base {args.base} is stored once: {human_size(base['size'])}")
    for name in args.containers:
        print(f"      {name}: its own changes take {human_size(containers[name]['changes'])}")
    print(f"      {len(args.containers)} full copies would take {human_size(base['size'] * len(args.containers))}")

    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    print("\nPage cache: each container reads every file under /usr, one after the other, from a cold cache")
    total = 0
    for name in args.containers:
        before = cached_bytes()
        subprocess.run(["lxc-attach", "-n", name, "--clear-env", "--", "/bin/sh", "-c",
                        "find /usr -xdev -type f -exec cat {} + > /dev/null"], check=True)
        grew = cached_bytes() - before
        total += grew
        print(f"      {name}: page cache grew by {human_size(grew)}")
    print(f"      all {len(args.containers)}: {human_size(total)}, the base's /usr held once")


if __name__ == "__main__":
    main()
