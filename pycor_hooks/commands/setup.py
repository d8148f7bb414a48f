"""pycor doctor, lxd init, incus init, install: what pycor needs on this host, and setting it up."""

from __future__ import annotations

import argparse
import os

from .. import runtime
from ..driver import Driver
from ..errors import PycorError
from ..names import printable
from ._common import add_format, emit, lxcpath_of


def doctor(args: argparse.Namespace, driver: Driver) -> None:
    from ..doctor import run_checks

    if args.fleet is not None:
        return fleet(args)
    for done, line in driver.recover_upgrades():  # a killed upgrade: the container's old layer back
        print(f"{'fixed' if done else 'note'}: {line}")
    if args.fix:
        for state in driver.clear_stale():
            print(f"fixed: removed the stale run record of container {state.name} ({state.rootfs})")
    results = run_checks(driver.store, driver, lxcpath_of(args))
    if args.format == "json":
        emit(args, [r.to_json() for r in results], [])
    else:
        for r in results:
            print(f"{'ok ' if r.ok else 'MISS'} {r.name}: {printable(r.detail, 1 << 16)}"
                  + ("" if r.ok or not r.fix else f"\n     fix: {printable(r.fix, 1 << 16)}"))
    if any(not r.ok and r.required for r in results):
        raise PycorError("pycor cannot work here until the misses marked required are fixed")


def fleet(args: argparse.Namespace) -> None:
    """pycor doctor --fleet N: the limits of this host for N booted containers, the one that stops them first."""
    from ..daemon import DIALECTS
    from ..doctor import default_bridge, fleet_check
    from ..units import human_size

    n, rt = args.fleet, args.runtime
    if n < 1:
        raise PycorError(f"--fleet takes a number of containers, not {n}", "e.g. pycor doctor --fleet 1000")
    privileged = rt == "lxc" and not args.unprivileged
    bridges = args.bridge or [default_bridge(rt)]
    where = lxcpath_of(args) if rt == "lxc" else DIALECTS[rt].daemon_dirs()[0]
    while not os.path.exists(where):
        where = os.path.dirname(where)
    rows, stop = fleet_check(n, rt, privileged, bridges, where)
    what = f"{n} booted containers of the default base ({rt}, {'privileged' if privileged else 'unprivileged'})"
    if args.format == "json":
        emit(args, [{"n": n, "runtime": rt, "privileged": privileged, "fits": stop is None,
                     "stopped_by": stop.name if stop else None, "limits": [r.to_json() for r in rows]}], [])
    else:
        for r in rows:
            value = human_size(r.value) if r.kind in ("memory", "disk") and r.value is not None else r.value
            print(f"{'ok ' if r.capacity >= n else 'MISS'} {r.name} ({value}): {r.capacity} containers"
                  + ("" if r.capacity >= n else f"\n     fix: {r.fix}"))
    if stop is not None:
        raise PycorError(f"{what} do not fit this host: {stop.name} stops them at {stop.capacity}", stop.fix)
    if args.format != "json":
        print(f"{what} fit this host (first limit: {rows[0].name}, at {rows[0].capacity})" if rows else f"{what} fit this host")


def daemon_init(args: argparse.Namespace, driver: Driver) -> None:
    client = runtime.daemon_runtime(args.daemon).client
    for line in driver.daemon_init(client) or [f"{client.title} already set up: profile overlay and an image per base"]:
        print(line)


def install(args: argparse.Namespace, driver: Driver) -> None:
    from ..install import install as install_files

    for path in install_files(args.hooks_dir, args.templates_dir):
        print(f"installed {path}")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "doctor":
        add_format(p)
        p.add_argument("--fix", action="store_true",
                       help="clear what pycor can clear by itself (records of containers that no longer run)")
        p.add_argument("-P", "--lxcpath", help="where the LXC containers live (quota check); default: lxc.lxcpath")
        p.add_argument("--fleet", type=int, metavar="N",
                       help="only say whether this host holds N booted containers of the default base, and which limit stops them")
        p.add_argument("--runtime", choices=("lxc", "lxd", "incus"), default="lxc", help="with --fleet: whose containers (default lxc)")
        p.add_argument("--unprivileged", action="store_true", help="with --fleet and lxc: unprivileged containers")
        p.add_argument("--bridge", action="append", metavar="BRIDGE",
                       help="with --fleet: a bridge the fleet joins (repeatable; default: the runtime's own, e.g. lxcbr0)")
        p.set_defaults(func=doctor)
    elif command in ("lxd init", "incus init"):
        p.set_defaults(func=daemon_init, daemon=command.split()[0])
    elif command == "install":
        from ..store import hooks_dir, templates_dir

        p.description = ("Write the LXC hooks and template for the Python running pycor, after checking that an "
                         "unprivileged container's root can reach that Python and the pycor package, and compile "
                         "the package's bytecode. Refused for files the Debian package pycor owns.")
        p.add_argument("--hooks-dir", default=hooks_dir(),
                       help="default: $PYCOR_HOOKS_DIR, 'hooks_dir =' in /etc/pycor/pycor.conf, /usr/share/lxc/hooks")
        p.add_argument("--templates-dir", default=templates_dir(),
                       help="default: $PYCOR_TEMPLATES_DIR, 'templates_dir =', /usr/share/lxc/templates")
        p.set_defaults(func=install)
