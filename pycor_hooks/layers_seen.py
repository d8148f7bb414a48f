"""Every container layer pycor can find on this host, and the base versions they reference (for gc).

A layer travels with its container's rootfs directory, so copies of it turn
up wherever LXC and LXD put rootfs copies:

- containers in every lxcpath pycor has seen (each container registered
  at create or start records its lxcpath in STORE/lxcpaths/, kept after the
  container goes), the default one and the one given with -P;
- their LXC snapshots (``LXCPATH/NAME/snaps/snapN/rootfs``: lxc-snapshot of a
  dir container copies the rootfs, ``.pycor`` included);
- LXD and Incus instances and their snapshots, read from the daemons'
  storage-pool folders, so this works while a daemon is down.

What it cannot see (an export tarball, a copy in an lxcpath never seen,
another host, a storage pool that is not mounted) must be held by hand:
``pycor base hold BASE VERSION``.

Not a hot path: the CLI uses this, never a hook.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator

from . import lxc
from .driver import Driver
from .errors import PycorError
from .layer import DAEMON_DIRS, LayerMeta, is_layer


def layer_versions(meta: LayerMeta) -> set[str]:
    """The base versions one layer references, so gc keeps them (and the versions below them):
    its pin, and the version its changes were made against (a move merges against it)."""
    return {v for v in (meta.pin, meta.based_on) if v}


def _config_rootfs(config: str) -> str | None:
    try:
        return lxc.config_rootfs(config)
    except (OSError, PycorError):
        return None


def lxcpath_layers(lxcpath: str) -> Iterator[str]:
    """Rootfs directories of the containers in an lxcpath and of their snapshots (pycor layers or not)."""
    try:
        names = sorted(os.listdir(lxcpath))
    except OSError:
        return
    for name in names:
        cdir = os.path.join(lxcpath, name)
        for d in [cdir] + sorted(glob.glob(os.path.join(glob.escape(cdir), "snaps", "*"))):
            yield os.path.join(d, "rootfs")
            rootfs = _config_rootfs(os.path.join(d, "config"))
            if rootfs:
                yield rootfs


def daemon_layers(daemon_dirs: Iterable[str] = DAEMON_DIRS) -> Iterator[str]:
    """Rootfs directories of LXD and Incus instances and snapshots, from their storage-pool folders."""
    for top in daemon_dirs:
        pools = glob.escape(os.path.join(top, "storage-pools"))
        yield from sorted(glob.glob(os.path.join(pools, "*", "containers", "*", "rootfs")))
        yield from sorted(glob.glob(os.path.join(pools, "*", "containers-snapshots", "*", "*", "rootfs")))


def all_layers(driver: Driver, lxcpaths: Iterable[str]) -> list[str]:
    """Every pycor layer pycor can find, each once."""
    regs = driver.registrations()
    for path in [*lxcpaths, *(r.lxcpath for r in regs if r.runtime == "lxc")]:
        if path:
            driver.store.remember_lxcpath(path)
    paths = driver.store.lxcpaths()
    found: dict[str, str] = {}
    candidates = [r.rootfs for r in regs] + [s.rootfs for s in driver.running_states()]
    for lxcpath in paths:
        candidates += lxcpath_layers(lxcpath)
    candidates += daemon_layers()
    for rootfs in candidates:
        if is_layer(rootfs):
            found.setdefault(os.path.realpath(rootfs), rootfs)
    return list(found.values())


def referenced_versions(driver: Driver, lxcpaths: Iterable[str]) -> tuple[dict[str, set[str]], list[str]]:
    """base -> versions some layer references (running on, pinned to, moving between), and the layers that could not
    be read. Called under the store's exclusive lock (gc): no start resolves a version or begins a move meanwhile."""
    used: dict[str, set[str]] = driver.moves_in_flight()  # a start merges without the store lock: both its versions stay
    problems: list[str] = []
    for state in driver.running_states():
        used.setdefault(state.base, set()).add(state.version)
    for rootfs in all_layers(driver, lxcpaths):
        try:
            meta = driver.volume_meta(rootfs)
        except PycorError as e:
            problems.append(f"layer in {rootfs} cannot be read, the versions it needs are unknown: {e.message}")
            continue
        used.setdefault(meta.base, set()).update(layer_versions(meta))
    return used, problems
