"""The pycor command: what LXC and LXD cannot do themselves."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, lxc
from .driver import Driver
from .errors import PycorError
from .fsutil import disk_usage, human_size
from .layer import UPPER
from .names import check_name
from .store import Store


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    table = [[title for _, title in columns]] + [[str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def emit(args: argparse.Namespace, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print_table(rows, columns)


def lxcpath_of(args: argparse.Namespace) -> str:
    return os.path.abspath(args.lxcpath) if args.lxcpath else lxc.default_lxcpath()


def all_containers(driver: Driver, args: argparse.Namespace) -> list[lxc.LxcContainer]:
    """LXC containers in the lxcpath, plus any registered elsewhere."""
    found = {c.rootfs: c for c in lxc.containers(lxcpath_of(args))}
    for reg in driver.registrations():
        if reg.runtime == "lxc" and reg.lxcpath and reg.rootfs not in found:
            found[reg.rootfs] = lxc.LxcContainer(reg.name, reg.lxcpath, reg.rootfs)
    return sorted(found.values(), key=lambda c: (c.name, c.lxcpath))


# -- base ----------------------------------------------------------------------
def cmd_base_import(args: argparse.Namespace, driver: Driver) -> None:
    from . import imports

    store = driver.store
    progress = imports.Progress()
    if args.from_dir:
        v = imports.import_from_dir(store, args.name, args.from_dir, progress)
    elif args.from_tar:
        v = imports.import_from_tar(store, args.name, args.from_tar, progress)
    elif args.busybox:
        v = imports.import_busybox(store, args.name, progress)
    else:
        include = [p for item in args.include for p in item.split(",") if p]
        v = imports.import_debootstrap(store, args.name, args.debootstrap, args.variant, include, progress)
    print(f"base {args.name}: version {v.version}, {human_size(v.size)} in {store.root}")


def cmd_base_ls(args: argparse.Namespace, driver: Driver) -> None:
    store = driver.store
    extra = [lxc_registration(c) for c in lxc.containers(lxcpath_of(args))]
    rows = []
    for name in store.base_names():
        base = store.base(name)
        versions = store.versions(name)
        users = driver.base_users(name, extra)
        rows.append({
            "name": name,
            "current": store.current(name),
            "versions": len(versions),
            "size": sum(v.size for v in versions),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(base.created)),
            "containers": [u.name for u in users],
        })
    if args.format != "json":
        for r in rows:
            r["size"] = human_size(r["size"])
            r["containers"] = len(r["containers"])
    emit(args, rows, [("name", "NAME"), ("current", "CURRENT"), ("versions", "VERSIONS"), ("size", "SIZE"),
                      ("created", "CREATED"), ("containers", "CONTAINERS")])


def lxc_registration(c: lxc.LxcContainer):  # type: ignore[no-untyped-def]
    from .driver import Registration

    return Registration(c.name, c.rootfs, "lxc", c.lxcpath)


def cmd_base_rm(args: argparse.Namespace, driver: Driver) -> None:
    extra = [lxc_registration(c) for c in lxc.containers(lxcpath_of(args))]
    driver.delete_base(check_name(args.name, "base name"), extra)
    print(f"base {args.name} removed")


# -- containers ------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    driver.store.require(check_name(args.base, "base name"))
    lxcpath = lxcpath_of(args)
    template = args.template or "pycor"
    lxc.create(name, args.base, lxcpath, template, args.pin, args.network,
               store=driver.store.root if args.store or os.environ.get("PYCOR_STORE") else None,
               unprivileged=args.unprivileged)
    print(f"container {name} created on base {args.base} (lxc-start -n {name}{'' if not args.lxcpath else ' -P ' + lxcpath})")


def cmd_ls(args: argparse.Namespace, driver: Driver) -> None:
    rows = []
    for c in all_containers(driver, args):
        try:
            meta = driver.volume_meta(c.rootfs)
        except PycorError:
            continue
        state = driver_state = lxc.state(c.name, c.lxcpath)
        run = driver.run_state(c.name, c.rootfs) if driver_state == "RUNNING" else None
        rows.append({
            "name": c.name,
            "runtime": "lxc",
            "base": meta.base,
            "version": run.version if run else (meta.pin or driver.store.current(meta.base) if driver.store.exists(meta.base) else "-"),
            "pinned": meta.pin is not None,
            "state": state,
            "changes": disk_usage(os.path.join(c.rootfs, UPPER)),
            "lxcpath": c.lxcpath,
        })
    if args.format != "json":
        for r in rows:
            r["changes"] = human_size(r["changes"])
    emit(args, rows, [("name", "NAME"), ("runtime", "RUNTIME"), ("base", "BASE"), ("version", "VERSION"),
                      ("state", "STATE"), ("changes", "CHANGES")])


def cmd_rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    lxc.destroy(name, lxcpath_of(args), args.force)
    print(f"container {name} removed")


def cmd_install(args: argparse.Namespace, driver: Driver) -> None:
    from .install import install

    for path in install(args.hooks_dir, args.templates_dir):
        print(f"installed {path}")


# -- parser -----------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    from .install import LXC_HOOKS_DIR, LXC_TEMPLATES_DIR

    p = argparse.ArgumentParser(prog="pycor", description="LXC and LXD containers on one shared, read-only base")
    p.add_argument("--version", action="version", version=f"pycor {__version__}")
    p.add_argument("--store", help="store path (default: $PYCOR_STORE, 'store =' in /etc/pycor/pycor.conf, /var/lib/pycor)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("table", "json"), default="table")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("-P", "--lxcpath", help="LXC container path (default: lxc-config lxc.lxcpath)")

    base = sub.add_parser("base", help="bases and their versions").add_subparsers(dest="base_command", required=True, metavar="COMMAND")
    imp = base.add_parser("import", help="import a root filesystem as a new base")
    imp.add_argument("name")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-dir", metavar="DIR", help="copy a root filesystem directory")
    src.add_argument("--from-tar", metavar="FILE", help="a .tar, .tar.gz, .tar.xz or .tar.zst of a root filesystem")
    src.add_argument("--busybox", action="store_true", help="a minimal base from busybox-static")
    src.add_argument("--debootstrap", metavar="SUITE", help="a Debian suite, from the mirror apt uses here")
    imp.add_argument("--variant", default="minbase", help="debootstrap --variant (default: minbase)")
    imp.add_argument("--include", action="append", default=[], metavar="PKGS", help="debootstrap --include (comma-separated)")
    imp.set_defaults(func=cmd_base_import)
    bls = base.add_parser("ls", help="list bases", parents=[fmt, where])
    bls.set_defaults(func=cmd_base_ls)
    brm = base.add_parser("rm", help="remove a base no container uses", parents=[where])
    brm.add_argument("name")
    brm.set_defaults(func=cmd_base_rm)

    cr = sub.add_parser("create", help="create an LXC container on a base (lxc-create -t pycor)", parents=[where])
    cr.add_argument("name")
    cr.add_argument("--base", "-b", required=True)
    cr.add_argument("--pin", metavar="VERSION", help="stay on this base version")
    cr.add_argument("--network", choices=("default", "none"), default="default",
                    help="default: LXC's default config; none: lxc.net.0.type = empty")
    cr.add_argument("--unprivileged", action="store_true", help="map container root to an unprivileged host id")
    cr.add_argument("--template", help=argparse.SUPPRESS)
    cr.set_defaults(func=cmd_create)
    ls = sub.add_parser("ls", help="list pycor containers", parents=[fmt, where])
    ls.set_defaults(func=cmd_ls)
    rm = sub.add_parser("rm", help="remove a container and its changes", parents=[where])
    rm.add_argument("name")
    rm.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
    rm.set_defaults(func=cmd_rm)

    ins = sub.add_parser("install", help="install the LXC hooks and template")
    ins.add_argument("--hooks-dir", default=LXC_HOOKS_DIR)
    ins.add_argument("--templates-dir", default=LXC_TEMPLATES_DIR)
    ins.set_defaults(func=cmd_install)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args, Driver(Store(args.store)))
        return 0
    except PycorError as e:
        print(f"pycor: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pycor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
