"""pycor base import, ls, versions, squash, gc, hold, unhold, rm: the bases in the store."""

from __future__ import annotations

import argparse
import sys
import time

from ..driver import Driver
from ..errors import PycorError
from ..names import check_name, check_version
from ..units import human_size
from ._common import add_format, add_images, add_lxcpath, all_containers, emit, used_versions


def base_import(args: argparse.Namespace, driver: Driver) -> None:
    from .. import importing
    from ..proc import Progress

    store = driver.store
    progress = Progress()
    if args.bootable and not args.debootstrap:
        raise PycorError("--bootable needs --debootstrap SUITE", f"pycor base import {args.name} --debootstrap bookworm --bootable")
    if args.from_dir:
        v = importing.import_from_dir(store, args.name, args.from_dir, progress)
    elif args.from_tar:
        v = importing.import_from_tar(store, args.name, args.from_tar, progress)
    elif args.busybox:
        v = importing.import_busybox(store, args.name, progress)
    elif args.from_export:
        from ..export import import_from_file

        v = import_from_file(store, args.name, args.from_export)
    else:
        include = [p for item in args.include for p in item.split(",") if p]
        v = importing.import_debootstrap(store, args.name, args.debootstrap, args.variant, include, progress,
                                         bootable=args.bootable)
    print(f"base {args.name}: version {v.version}, {human_size(v.size)} in {store.root}")
    add_images(driver, args.name)


def base_ls(args: argparse.Namespace, driver: Driver) -> None:
    store = driver.store
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
    rows: list[dict] = []
    for name in store.base_names():
        try:
            created = store.base(name).created
            current = store.current(name)
        except (OSError, ValueError, PycorError):
            created, current = 0.0, "damaged"
        versions, damaged = store.scan_versions(name)
        users = driver.base_users(name, extra)
        rows.append({
            "name": name,
            "current": current if not damaged else f"{current} (damaged: {len(damaged)} version(s))",
            "versions": len(versions),
            "size": sum(v.size for v in versions),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(created)),
            "containers": [u.name for u in users],
        })
    if args.format != "json":
        for r in rows:
            r["size"] = human_size(r["size"])
            r["containers"] = len(r["containers"])
    emit(args, rows, [("name", "NAME"), ("current", "CURRENT"), ("versions", "VERSIONS"), ("size", "SIZE"),
                      ("created", "CREATED"), ("containers", "CONTAINERS")])


def base_versions(args: argparse.Namespace, driver: Driver) -> None:
    """Every version that reads, plus one line per damaged one (marked, never a failure of the listing)."""
    from ..versions import SQUASH_ADVISED_DEPTH

    store = driver.store
    name = check_name(args.name, "base name")
    store.require(name)
    try:
        current: str | None = store.current(name)
    except (OSError, PycorError):
        current = None
    used = used_versions(driver, args).get(name, set())
    held = store.holds(name)
    found, damaged = store.scan_versions(name)
    by_number = {v.version: v for v in found}

    def depth(version: str) -> int:
        n, v = 0, by_number.get(version)
        while v is not None:
            n, v = n + 1, by_number.get(v.parent) if v.parent else None
        return n

    rows: list[dict] = [{
        "version": v.version, "current": v.version == current, "parent": v.parent, "depth": depth(v.version),
        "size": v.size, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created)),
        "in_use": v.version in used or v.version == current, "held": v.version in held, "damaged": None,
        "source": v.source, "digest": store.recorded_digest(name, v.version) or "",
    } for v in found]
    rows += [{"version": number, "current": number == current, "parent": None, "depth": 0, "size": 0, "created": "-",
              "in_use": number in used or number == current, "held": number in held, "damaged": why,
              "source": f"DAMAGED: {why}", "digest": ""} for number, why in damaged.items()]
    rows.sort(key=lambda r: int(r["version"]) if str(r["version"]).isdigit() else 0)
    if args.format != "json":
        for r in rows:
            r["size"] = human_size(r["size"])
            r["version"] = f"{r['version']}{' *' if r['current'] else ''}"
            r["held"] = "held" if r["held"] else ""
            r["digest"] = r["digest"][:12] or "-"
    emit(args, rows, [("version", "VERSION"), ("parent", "PARENT"), ("depth", "LAYERS"), ("size", "SIZE"),
                      ("created", "CREATED"), ("held", "HELD"), ("digest", "DIGEST"), ("source", "SOURCE")])
    if args.format != "json":
        if current is None or current not in by_number:
            print(f"base {name}: its current version is missing or damaged; 'pycor base gc' reports what is wrong", file=sys.stderr)
        elif depth(current) >= SQUASH_ADVISED_DEPTH:
            print(f"version {current} stacks {depth(current)} layers: 'pycor base squash {name}' folds them into one", file=sys.stderr)


def base_hold(args: argparse.Namespace, driver: Driver) -> None:
    name, version = check_name(args.name, "base name"), check_version(args.version)
    driver.store.hold(name, version)
    print(f"base {name}: version {version} is held; gc keeps it (and the versions below it) until 'pycor base unhold {name} {version}'")


def base_unhold(args: argparse.Namespace, driver: Driver) -> None:
    name, version = check_name(args.name, "base name"), check_version(args.version)
    driver.store.unhold(name, version)
    print(f"base {name}: version {version} is no longer held")


def base_squash(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import squash_base

    v = squash_base(driver.store, check_name(args.name, "base name"))
    print(f"base {args.name}: version {v.version} is current, one layer of {human_size(v.size)}")


def base_gc(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import gc

    driver.clear_stale()  # a start recorded by a container that died since uses no version
    unreadable: list[str] = []
    result = gc(driver.store, lambda: used_versions(driver, args, unreadable))
    for base, version in result.removed:
        print(f"removed {base} version {version}")
    if not result.removed:
        print("nothing to remove: every version is current, held or in use")
    with driver.store.lock():
        driver.release_views()
    for line in unreadable + result.warnings:
        print(f"pycor: warning: {line}", file=sys.stderr)
    for line in result.problems:
        print(f"pycor: error: {line}", file=sys.stderr)
    if result.problems:
        raise PycorError(f"gc collected the other bases, and left {len(result.problems)} problem(s) listed above",
                         "a damaged base keeps all its versions until it is fixed (re-import it, or 'pycor base rm' it)")


def base_rm(args: argparse.Namespace, driver: Driver) -> None:
    from ..daemon import daemons

    name = check_name(args.name, "base name")
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
    driver.delete_base(name, extra)
    for client in daemons():
        client.remove_image(name, driver.store.root)  # only this store's image
    print(f"base {args.name} removed")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "base import":
        p.add_argument("name")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--from-dir", metavar="DIR", help="copy a root filesystem directory")
        src.add_argument("--from-tar", metavar="FILE", help="a .tar, .tar.gz, .tar.xz or .tar.zst of a root filesystem")
        src.add_argument("--busybox", action="store_true", help="a minimal base from busybox-static")
        src.add_argument("--from-export", metavar="FILE", help="versions exported by 'pycor base export' on another host ('-': stdin)")
        src.add_argument("--debootstrap", metavar="SUITE", help="a Debian suite, from the mirror apt uses here")
        p.add_argument("--variant", default="minbase", help="debootstrap --variant (default: minbase)")
        p.add_argument("--include", action="append", default=[], metavar="PKGS", help="debootstrap --include (comma-separated)")
        p.add_argument("--bootable", action="store_true",
                       help="with --debootstrap: systemd as init, DHCP on eth0 and nginx, for containers that boot")
        p.set_defaults(func=base_import)
    elif command == "base ls":
        add_format(p)
        add_lxcpath(p)
        p.set_defaults(func=base_ls)
    elif command == "base versions":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("name")
        p.set_defaults(func=base_versions)
    elif command == "base squash":
        p.add_argument("name")
        p.set_defaults(func=base_squash)
    elif command == "base gc":
        add_lxcpath(p)
        p.set_defaults(func=base_gc)
    elif command in ("base hold", "base unhold"):
        p.add_argument("name")
        p.add_argument("version")
        p.set_defaults(func=base_hold if command == "base hold" else base_unhold)
    elif command == "base rm":
        add_lxcpath(p)
        p.add_argument("name")
        p.set_defaults(func=base_rm)
