"""pycor create, ls, rm, set: containers on pycor bases, under LXC, LXD or Incus."""

from __future__ import annotations

import argparse
import os
import sys

from .. import layer, runtime
from ..driver import Driver
from ..errors import Conflict, NotFound, PycorError
from ..fsutil import disk_usage
from ..names import PATH_SHOWN, check_name, printable
from ..units import human_size
from ._common import add_format, add_lxcpath, all_containers, emit, find_container, lxcpath_of


def create(args: argparse.Namespace, driver: Driver) -> None:
    from ..spec import spec

    want = spec(args.name, args.base, pin=args.pin, unprivileged=args.unprivileged, network=args.network,
                runtime=args.runtime, adopt=args.adopt, rootfs=args.dir, size=args.size, volumes=args.volume,
                ephemeral=args.ephemeral)
    if want.runtime != "lxc":
        rt = runtime.daemon_runtime(want.runtime)
        rt.create(want, driver)
        print(f"container {want.name} created on base {want.base} ({rt.client.dialect.cli} start {want.name})")
        return
    lxcpath = lxcpath_of(args)
    runtime.LxcRuntime(lxcpath).create(want, driver, args.template)
    print(f"container {want.name} {'re-created around its layer' if want.adopt else 'created'} on base {want.base} "
          f"(lxc-start -n {want.name}{'' if not args.lxcpath else ' -P ' + lxcpath})")


def quota_cell(rootfs: str, meta: layer.LayerMeta, table: bool) -> object:
    """What `pycor ls` shows as a container's use against its limit."""
    from .. import quota

    if meta.ephemeral:
        if not table:
            return {"memory": True, "limit": meta.size}
        return "memory" + (f"/{human_size(meta.size)}" if meta.size else "")
    got = quota.usage(rootfs)
    if got is None:
        return "-" if table else None
    used, limit = got
    full = bool(limit) and not quota.has_room(rootfs)  # at its limit: it cannot start (pycor doctor says why)
    if not table:
        return {"used": used, "limit": limit, "full": full}
    return f"{human_size(used)}/{human_size(limit) if limit else 'none'}" + (" full" if full else "")


def rejected_pushes(rootfs: str) -> list[str]:
    from ..inbox import rejected

    try:
        fd = layer.open_rootfs(rootfs)
    except PycorError:
        return []
    try:
        return rejected(fd)
    finally:
        os.close(fd)


def ls(args: argparse.Namespace, driver: Driver) -> None:
    rows: list[dict] = []
    notes: list[str] = []
    for c in all_containers(driver, args):
        row = {"name": c.name, "runtime": c.runtime, "base": "?", "version": "-", "pinned": False, "state": c.state,
               "changes": disk_usage(os.path.join(c.rootfs, layer.UPPER)), "lxcpath": c.lxcpath, "damaged": False,
               "detail": "", "quota": "", "conflicts": 0, "held": None, "rejected_pushes": 0}
        try:
            meta = driver.volume_meta(c.rootfs)
        except PycorError as e:  # listed, not lost: its changes are still there
            row.update(damaged=True, detail=str(e))
            rows.append(row)
            continue
        known = driver.store.exists(meta.base)
        state = driver.run_state(c.lxc_name, c.rootfs) if c.state == "RUNNING" else None
        row.update(base=meta.base, pinned=meta.pin is not None, quota=quota_cell(c.rootfs, meta, args.format != "json"),
                   version=driver.volume_version(meta, state) if known else "-",
                   conflicts=driver.unresolved_conflicts(c.rootfs))
        # on an older version than it follows: why (a stopped one: where its last start was held back)
        row["held"] = state.held if state is not None else (driver.held_back(c.rootfs) if c.state == "STOPPED" else None)
        if row["held"] and state is None:
            row["version"] = meta.based_on or row["version"]  # where its next start stays
        kept = rejected_pushes(c.rootfs)
        row["rejected_pushes"] = len(kept)
        if kept:
            notes.append(f"{c.name}: {len(kept)} file(s) pushed while it was stopped could not be put in place "
                         f"(first: {printable(kept[0], PATH_SHOWN)}); kept in {c.rootfs}/.pycor/inbox/rejected (see 'pycor doctor')")
        rows.append(row)
    if args.format != "json":
        for r in rows:
            r["changes"] = human_size(r["changes"])
            if r["damaged"]:
                r["state"] = f"{r['state']} (DAMAGED)"
            if r["held"]:
                r["version"] = f"{r['version']} (held)"
            r["conflicts"] = r["conflicts"] or ""
    emit(args, rows, [("name", "NAME"), ("runtime", "RUNTIME"), ("base", "BASE"), ("version", "VERSION"),
                      ("state", "STATE"), ("changes", "CHANGES"), ("quota", "USED/LIMIT"), ("conflicts", "CONFLICTS")])
    for r in rows:
        if r["damaged"] and args.format != "json":
            print(f"{r['name']}: {printable(r['detail'], PATH_SHOWN)}", file=sys.stderr)
    if args.format != "json":
        for note in notes:
            print(note, file=sys.stderr)


def rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    rt = runtime.runtime_with(name, lxcpath_of(args), args.runtime)
    if not rt.has(name):
        where = rt.client.where() if isinstance(rt, runtime.DaemonRuntime) else lxcpath_of(args)
        raise NotFound(f"no container {name!r} in {where}", "'pycor ls' lists them")
    rt.destroy(name, args.force)
    print(f"container {name} removed")


def set_(args: argparse.Namespace, driver: Driver) -> None:
    from .. import quota
    from ..units import parse_size

    c = find_container(driver, args)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key != "size":
            raise PycorError(f"unknown setting {item!r}", "pycor set NAME size=10GiB (or size= to remove the limit)")
        with driver.open_layer(c.lxc_name, c.rootfs, c.name, changing=("size",)) as lay:  # one pycor did not write: refused
            meta = lay.meta
        size = parse_size(value) if value else None
        if meta.ephemeral:
            layer.write_meta(c.rootfs, meta.but(size=size))
            driver.record_choices(c.registration(), meta.but(size=size))  # its next start checks layer.json against it
            print(f"container {c.name}: in-memory layer {'limited to ' + human_size(size) if size else 'unlimited'} "
                  "from its next start")
            continue
        used, old = (quota.usage(c.rootfs) or (0, None)) if c.runtime == "lxc" else (0, None)  # LXD checks its own
        if size and used > size:  # a layer over its limit cannot even mount its overlay (workdir writes)
            raise Conflict(f"container {c.name} already uses {human_size(used)}, more than {human_size(size)}",
                           "give a larger size, or free space in it first (a copy's size counts what it shares with its original)")
        if isinstance(c.rt, runtime.DaemonRuntime):
            c.rt.set_size(c.name, size)
        else:
            quota.set_limit(c.rootfs, size)
            if size and not quota.settled_room(c.rootfs):  # every start creates files in the layer: keep the old limit
                quota.set_limit(c.rootfs, old)
                vols = quota.volume_usage(c.rootfs, meta)
                raise Conflict(f"a limit of {human_size(size)} leaves container {c.name} no room to start: it uses "
                               f"{quota.usage_phrase(used, None, vols)}; its limit stays "
                               f"{human_size(old) if old else 'none'}",
                               f"give a larger size: pycor set {c.name} size={quota.suggest_size(used)}")
        print(f"container {c.name}: {'limited to ' + human_size(size) if size else 'no size limit'}")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "create":
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("--base", "-b", required=True)
        p.add_argument("--pin", metavar="VERSION", help="stay on this base version")
        p.add_argument("--network", choices=("default", "none"), default="default",
                       help="default: LXC's default config; none: lxc.net.0.type = empty")
        p.add_argument("--unprivileged", action="store_true", help="map container root to an unprivileged host id")
        p.add_argument("--runtime", choices=("lxc", "lxd", "incus"), default="lxc",
                       help="LXC (default), LXD or Incus (always unprivileged)")
        p.add_argument("--adopt", action="store_true",
                       help="re-create a container whose LXC config was lost around the layer in its rootfs, keeping its changes")
        p.add_argument("--dir", metavar="DIR",
                       help="rootfs directory elsewhere than LXCPATH/NAME/rootfs (new or empty, or a layer with --adopt)")
        p.add_argument("--template", help=argparse.SUPPRESS)
        p.add_argument("--size", metavar="SIZE", help="limit the container's writes (10GiB, 512MiB): a btrfs qgroup or "
                       "project quota; with --ephemeral, the size of its in-memory layer")
        p.add_argument("--volume", action="append", default=[], metavar="PATH",
                       help="a directory at PATH that bypasses the overlay (repeatable), kept in the container's directory")
        p.add_argument("--ephemeral", action="store_true",
                       help="changes live in memory; the container is destroyed when it stops (lxc.ephemeral = 1)")
        p.set_defaults(func=create)
    elif command == "ls":
        add_format(p)
        add_lxcpath(p)
        p.set_defaults(func=ls)
    elif command == "rm":
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
        p.add_argument("--runtime", choices=("lxc", "lxd", "incus"), help="which runtime's container (default: the one that has it)")
        p.set_defaults(func=rm)
    elif command == "set":
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
        p.set_defaults(func=set_)
