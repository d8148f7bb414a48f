"""Staging: where every change to the store is built before it appears with one rename.

A staging directory lives under STORE/staging, on the store's filesystem, and
is held by a flock on its lock file (Store.new_staging); while building, it
may hold a builder container (a 'base update') and mounts (a merged view).
Removing one, whether its command finished, failed or was killed, goes
through discard(): stop its builders, detach its mounts, delete the tree.

Storage: not on a hook's path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time

from .fsutil import remove_tree
from .linux import MNT_DETACH, mounts_under, umount2

log = logging.getLogger("pycor")


def discard(path: str) -> None:
    """Remove a leftover tree: stop a builder container still running in it, detach its mounts, delete."""
    if not os.path.lexists(path):
        return
    stop_builders(path)
    # Never walk into a mount (a helper's /proc or /sys bind): detach them first.
    if not detach_mounts_under(path):
        log.error("left %s in place: something is still mounted under it", path)
        return
    try:
        remove_tree(path)
    except OSError:
        time.sleep(0.5)  # a helper killed a moment ago may still be closing files
        remove_tree(path)


def detach_mounts_under(path: str) -> bool:
    """Lazily unmount every mount at or below path, deepest first; True if none is left."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        try:
            umount2(point, MNT_DETACH)
        except OSError as e:
            log.warning("cannot unmount %s: %s", point, e.strerror)
    return not mounts_under(path)


def stop_builders(path: str) -> None:
    """Kill the builder containers of a staging directory (a killed 'base update' leaves its builder running).

    Killing its init ends every process of the builder and with them the
    overlay mounted in its mount namespace; its monitor then runs post-stop.
    """
    from . import runstate

    lxcpath = os.path.join(path, "lxc")
    if not os.path.isdir(lxcpath):
        return
    for name in os.listdir(lxcpath):
        if not os.path.isfile(os.path.join(lxcpath, name, "config")):
            continue
        proc = subprocess.run(["lxc-info", "-n", name, "-P", lxcpath, "-p", "-H"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        pid = proc.stdout.strip()
        if not pid.isdigit():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
        for _ in range(200):  # an init killed with SIGKILL is gone in milliseconds
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
        # its post-stop may never run (its config goes with the staging): forget the start here
        with contextlib.suppress(FileNotFoundError):
            os.unlink(runstate.record_path(name, os.path.join(lxcpath, name, "rootfs")))
