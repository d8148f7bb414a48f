"""pycor doctor, lxd init, incus init, install: what pycor needs on this host, and setting it up."""

from __future__ import annotations

import argparse

from .. import runtime
from ..driver import Driver
from ..errors import PycorError
from ._common import add_format, emit, lxcpath_of


def doctor(args: argparse.Namespace, driver: Driver) -> None:
    from ..doctor import run_checks

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
            print(f"{'ok ' if r.ok else 'MISS'} {r.name}: {r.detail}" + ("" if r.ok or not r.fix else f"\n     fix: {r.fix}"))
    if any(not r.ok and r.required for r in results):
        raise PycorError("pycor cannot work here until the misses marked required are fixed")


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
