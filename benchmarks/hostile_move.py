"""One tenant's hostile databases against everyone else (issue 19.3): measured, not asserted.

Container A holds a huge /etc/passwd and /etc/group of valid records (60 MB and 30 MB by default); a
base update adds a system user, so A's next start moves it and reconciles both files. While A
starts, an unrelated running container B is stopped and `pycor base hold` runs: their times, next
to the same two with nothing else going on, show whether A's merge delays them.

    sudo .venv/bin/python benchmarks/hostile_move.py [--passwd-mb 60] [--group-mb 30]

Run it from a checkout: the pycor it measures is the one `python -m pycor_hooks.cli` imports from the
current directory. Prints one JSON object; removes everything it made.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

PYCOR = [sys.executable, "-m", "pycor_hooks.cli"]


def run(argv: list[str], env: dict[str, str], check: bool = True) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if check and proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}: {proc.stderr}")
    return time.perf_counter() - t0


def fill(path: str, mb: int, line: str) -> None:
    """mb megabytes of distinct, valid records (line formatted with i)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n" if "passwd" in path else "root:x:0:\n")
        i = 0
        while f.tell() < mb << 20:
            f.write("".join(line.format(i=i + k, n=100000 + i + k) for k in range(1000)))
            i += 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passwd-mb", type=int, default=60)
    ap.add_argument("--group-mb", type=int, default=30)
    args = ap.parse_args()
    top = tempfile.mkdtemp(prefix="pycor-hostile-", dir="/var/tmp")
    os.chmod(top, 0o755)
    env = dict(os.environ, PYCOR_STORE=f"{top}/store", PYCOR_HOOKS_DIR=f"{top}/hooks", PYCOR_TEMPLATES_DIR=f"{top}/templates")
    lxcpath = f"{top}/lxc"
    os.makedirs(lxcpath)
    names = ("hostile", "bystander")
    try:
        run(PYCOR + ["install"], env)
        run(PYCOR + ["base", "import", "bb", "--busybox"], env)
        for n in names:
            run(PYCOR + ["create", n, "--base", "bb", "-P", lxcpath, "--network", "none"], env)
        upper = f"{lxcpath}/hostile/rootfs/.pycor/upper"
        fill(f"{upper}/etc/passwd", args.passwd_mb, "u{i}:x:{n}:{n}::/home/u{i}:/bin/sh\n")
        fill(f"{upper}/etc/group", args.group_mb, "g{i}:x:{n}:u{i}\n")
        lxc = ["-P", lxcpath]
        # what B's stop and a hold cost with nothing else going on
        run(["lxc-start", "-n", "bystander", *lxc], env)
        run(["lxc-wait", "-n", "bystander", *lxc, "-s", "RUNNING", "-t", "30"], env)
        time.sleep(1)
        idle_stop = run(["lxc-stop", "-n", "bystander", *lxc, "-t", "20"], env)
        idle_hold = run(PYCOR + ["base", "hold", "bb", "1"], env)
        run(PYCOR + ["base", "unhold", "bb", "1"], env, check=False)
        run(["lxc-start", "-n", "bystander", *lxc], env)
        run(["lxc-wait", "-n", "bystander", *lxc, "-s", "RUNNING", "-t", "30"], env)
        run(PYCOR + ["base", "update", "bb", "--", "/bin/sh", "-c",
                     "echo 'sys2:x:102:102::/:/bin/false' >> /etc/passwd && echo 'sys2:x:102:' >> /etc/group"], env)
        time.sleep(1)
        out: dict[str, float] = {}

        def start_hostile() -> None:
            t0 = time.perf_counter()
            subprocess.run(["lxc-start", "-n", "hostile", *lxc], capture_output=True, env=env, timeout=600)
            subprocess.run(["lxc-wait", "-n", "hostile", *lxc, "-s", "RUNNING", "-t", "600"], capture_output=True, env=env)
            out["hostile_start_s"] = time.perf_counter() - t0

        mover = threading.Thread(target=start_hostile)
        mover.start()
        time.sleep(1.0)  # well into A's start (its merge, if it merges)
        out["bystander_stop_s"] = run(["lxc-stop", "-n", "bystander", *lxc, "-t", "20"], env)
        out["hold_s"] = run(PYCOR + ["base", "hold", "bb", "1"], env)
        mover.join()
        state = subprocess.run(["lxc-info", "-n", "hostile", *lxc, "-s", "-H"], capture_output=True, text=True).stdout.strip()
        conflicts = subprocess.run(PYCOR + ["conflicts", "hostile", *lxc, "--format", "json"], capture_output=True, text=True,
                                   env=env).stdout
        print(json.dumps({"passwd_mb": args.passwd_mb, "group_mb": args.group_mb, "idle_stop_s": round(idle_stop, 2),
                          "idle_hold_s": round(idle_hold, 2), **{k: round(v, 2) for k, v in out.items()},
                          "hostile_state": state, "hostile_findings": (json.loads(conflicts)[0]["findings"] if conflicts else None)},
                         indent=1))
    finally:
        for n in names:
            subprocess.run(["lxc-stop", "-n", n, "-P", lxcpath, "-k"], capture_output=True)
            subprocess.run(["lxc-destroy", "-n", n, "-P", lxcpath], capture_output=True)
        subprocess.run(PYCOR + ["base", "rm", "bb"], env=env, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
