"""Boot containers on one pycor base and show what they share: disk, page cache, memory.

Used by demo.sh. The containers (LXC, default lxcpath, on a bootable base)
are stopped, the caches dropped, then booted one after the other; each is
timed from lxc-start until systemd reports 'running'. Memory is read from
/proc/meminfo after the first container and after all of them, against the
moment before the first start: the page cache without tmpfs (Cached minus
Shmem), Shmem (the containers' own /run, /dev/shm, journals) and the drop in
MemAvailable. Then each container's address, and whether its web server
answers from the host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

from pycor_hooks.debian import wait_for_boot_script
from pycor_hooks.units import human_size

SETTLE_S = 3  # let the last units finish before reading memory


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def pycor_json(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "pycor_hooks.cli", *args, "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


LXCPATH: list[str] = []  # ["-P", path] when not LXC's default


def attach(name: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["lxc-attach", "-n", name, *LXCPATH, "--clear-env", "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True)


def boot(name: str) -> tuple[float, str]:
    """Start a container; seconds until systemd finished booting, and its state."""
    t0 = time.perf_counter()
    subprocess.run(["lxc-start", "-n", name, *LXCPATH], check=True)
    state = attach(name, wait_for_boot_script()).stdout.strip()
    return time.perf_counter() - t0, state


def ipv4(name: str) -> str | None:
    for _ in range(100):
        words = attach(name, "ip -4 -o addr show dev eth0").stdout.split()
        if "inet" in words:
            return words[words.index("inet") + 1].split("/")[0]
        time.sleep(0.2)
    return None


def web_answer(address: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
            page = r.read().decode("utf-8", "replace")
            title = page.split("<title>", 1)[1].split("</title>", 1)[0] if "<title>" in page else ""
            return f"HTTP {r.status} {title}".strip()
    except OSError as e:
        return f"no answer ({e})"


def signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + human_size(abs(n))


def memory_line(label: str, before: dict[str, int], now: dict[str, int]) -> str:
    cache = (now["Cached"] - now["Shmem"]) - (before["Cached"] - before["Shmem"])
    return (f"      {label}: page cache {signed(cache)}, Shmem {signed(now['Shmem'] - before['Shmem'])}, "
            f"MemAvailable {signed(now['MemAvailable'] - before['MemAvailable'])}")


def charged(name: str) -> dict[str, int] | None:
    """What the kernel charges to the container's memory cgroup: a page of the
    page cache is charged once, to the container that read it first."""
    out = subprocess.run(["lxc-cgroup", "-n", name, *LXCPATH, "memory.stat"], capture_output=True, text=True).stdout
    stat = dict((k, int(v)) for k, v in (line.split() for line in out.splitlines() if len(line.split()) == 2))
    if "file" in stat:  # cgroup v2
        return {"cache": stat["file"] - stat.get("shmem", 0), "anon": stat.get("anon", 0), "shmem": stat.get("shmem", 0)}
    if "total_cache" in stat:  # cgroup v1
        return {"cache": stat["total_cache"] - stat.get("total_shmem", 0), "anon": stat.get("total_rss", 0),
                "shmem": stat.get("total_shmem", 0)}
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("-P", "--lxcpath", help="LXC container path (default: LXC's)")
    p.add_argument("containers", nargs="+")
    args = p.parse_args()
    names = args.containers
    if args.lxcpath:
        LXCPATH.extend(["-P", args.lxcpath])

    for name in names:
        subprocess.run(["lxc-stop", "-n", name, *LXCPATH, "-t", "30"], capture_output=True)  # boot them from cold
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    time.sleep(1)
    before = meminfo()
    print(f"\nBoot: caches dropped, then {len(names)} containers started one after the other")
    after: list[dict[str, int]] = []
    for name in names:
        seconds, state = boot(name)
        print(f"      {name}: systemd says {state!r} after {seconds:.1f} s")
        if state != "running":
            failed = attach(name, "systemctl --failed --no-legend --plain").stdout.strip()
            print(f"        failed units: {failed or 'none'}")
        time.sleep(SETTLE_S)
        after.append(meminfo())

    print("\nMemory, against before the first start (/proc/meminfo):")
    print(memory_line("1 container ", before, after[0]))
    print(memory_line(f"{len(names)} containers", before, after[-1]))
    print("      (the whole machine: other work on it moves these figures too)")
    print("    charged to each container's memory cgroup (the first reader of a cached page pays for it):")
    for name in names:
        c = charged(name)
        if c:
            print(f"      {name}: page cache {human_size(c['cache'])}, processes {human_size(c['anon'])}, "
                  f"tmpfs {human_size(c['shmem'])}")
    print("      The base's files are cached once, for all of them: the others add their own processes and tmpfs, "
          "not another copy of the system.")

    base = next(b for b in pycor_json("base", "ls") if b["name"] == args.base)
    containers = {c["name"]: c for c in pycor_json("ls", *LXCPATH)}
    print(f"\nDisk: base {args.base} is stored once: {human_size(base['size'])}")
    for name in names:
        print(f"      {name}: its own changes take {human_size(containers[name]['changes'])}")
    print(f"      {len(names)} full copies would take {human_size(base['size'] * len(names))}")

    print("\nNetwork: each container's address on lxcbr0, and its web server asked from the host:")
    for name in names:
        address = ipv4(name)
        answer = web_answer(address) if address else "no address"
        print(f"      {name}: {address or '-'}  {answer}")


if __name__ == "__main__":
    main()
