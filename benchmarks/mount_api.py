"""Time one container-style overlay mount (lowers + upper + work, attached to a directory)
through the new mount API (fsopen, fsconfig lowerdir+ per layer fd, fsmount, move_mount)
and through the mount(2) option string, at several depths. Run as root:

    .venv/bin/python benchmarks/mount_api.py [DIR]

Prints the median of 50 mounts per depth and method (the unmount is not timed). The option string cannot go past about 200 layers (one page).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycor_hooks import linux, overlay  # noqa: E402
from pycor_hooks.errors import Unsupported  # noqa: E402

DEPTHS = (1, 32, 128, 400)
ROUNDS = 50


def one_mount(lower_fds: list[int], upper: int, work: int, target: int, target_path: str) -> float:
    start = time.perf_counter()
    overlay.mount_overlay(lower_fds, upper, work, target)
    took = time.perf_counter() - start
    linux.umount2(target_path, linux.MNT_DETACH)
    return took


def main() -> None:
    work_dir = tempfile.mkdtemp(prefix="pycor-mount-api.", dir=sys.argv[1] if len(sys.argv) > 1 else "/var/tmp")
    fds: list[int] = []
    try:
        layers = []
        for i in range(max(DEPTHS)):
            path = os.path.join(work_dir, f"l{i}")
            os.makedirs(os.path.join(path, "etc"))
            with open(os.path.join(path, "etc", f"f{i}"), "w") as f:
                f.write(str(i))
            layers.append(path)
        for d in ("upper", "work", "merged"):
            os.mkdir(os.path.join(work_dir, d))
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p in reversed(layers)]
        upper, work, target = (os.open(os.path.join(work_dir, d), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                               for d in ("upper", "work", "merged"))
        fds += [upper, work, target]
        merged = os.path.join(work_dir, "merged")
        print(f"{'depth':>6} {'new API (fd per layer)':>24} {'mount(2) option string':>24}")
        for depth in DEPTHS:
            lowers = fds[:depth]
            row = []
            for api in (None, "legacy"):
                overlay._api = api  # None: probe, then the new API; "legacy": force mount(2)
                try:
                    times = [one_mount(lowers, upper, work, target, merged) for _ in range(ROUNDS)]
                except Unsupported:
                    row.append("refused (> one page)")
                    continue
                row.append(f"{statistics.median(times) * 1e6:8.0f} us")
            print(f"{depth:>6} {row[0]:>24} {row[1]:>24}")
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
