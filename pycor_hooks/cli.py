"""The pycor command: what LXC and LXD cannot do themselves."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

from . import __version__, faults, layer, locks, lxc, runtime
from .driver import Driver
from .errors import NotFound, PycorError
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


def daemon_clients():  # type: ignore[no-untyped-def]
    """Every LXD and Incus daemon that runs here (each in its pycor project)."""
    from .lxd import daemons

    return daemons()


# The inventory lives in runtime.py (one interface over LXC, LXD and Incus); these take the CLI's arguments.
def all_containers(driver: Driver, args: argparse.Namespace, with_state: bool = True) -> list[runtime.Container]:
    return runtime.all_containers(driver, lxcpath_of(args), with_state)


def find_container(driver: Driver, args: argparse.Namespace, name: str) -> runtime.Container:
    return runtime.find_container(driver, lxcpath_of(args), name)


def container_idmap(c: runtime.Container) -> str | None:
    """The container's lxc.idmap lines (from its LXC config, or from the daemon's record of its map)."""
    return c.rt.idmap(c.name)


def require_stopped(c: runtime.Container, what: str) -> None:
    if c.state != "STOPPED":
        raise PycorError(f"container {c.name} is {c.state.lower()}: pycor {what} needs it stopped",
                         f"stop it first ({c.rt.stop_hint(c.name)})")


@contextlib.contextmanager
def stopped(driver: Driver, c: runtime.Container, what: str) -> Iterator[None]:
    """Hold the container's layer lock across 'is it stopped' and the action: a start waits in pre-start.

    The runtime is asked first, outside the lock: a start waiting for the
    lock in pre-start holds up its monitor, which answers lxc-info and LXD.
    A start that got past pre-start before the lock left a live run state.
    """
    runtime_state = c.rt.state(c.name)
    with locks.layer_lock(c.rootfs):
        driver.require_stopped(c.lxc_name, c.rootfs, runtime_state, what, c.rt.stop_hint(c.name))
        yield


def used_versions(driver: Driver, args: argparse.Namespace, problems: list[str] | None = None) -> dict[str, set[str]]:
    """base -> versions some layer pycor can find references (running, pinned, in snapshots and copies)."""
    from .layers_seen import referenced_versions

    lxcpaths = [lxcpath_of(args)] + ([lxc.default_lxcpath()] if args.lxcpath else [])
    used, unreadable = referenced_versions(driver, lxcpaths)
    if problems is not None:
        problems.extend(unreadable)
    return used


# -- base ----------------------------------------------------------------------
def cmd_base_import(args: argparse.Namespace, driver: Driver) -> None:
    from . import imports

    store = driver.store
    progress = imports.Progress()
    if args.bootable and not args.debootstrap:
        raise PycorError("--bootable needs --debootstrap SUITE", f"pycor base import {args.name} --debootstrap bookworm --bootable")
    if args.from_dir:
        v = imports.import_from_dir(store, args.name, args.from_dir, progress)
    elif args.from_tar:
        v = imports.import_from_tar(store, args.name, args.from_tar, progress)
    elif args.busybox:
        v = imports.import_busybox(store, args.name, progress)
    elif args.from_export:
        from .cli_hosts import import_from_export

        v = import_from_export(store, args.name, args.from_export)
    else:
        include = [p for item in args.include for p in item.split(",") if p]
        v = imports.import_debootstrap(store, args.name, args.debootstrap, args.variant, include, progress,
                                       bootable=args.bootable)
    print(f"base {args.name}: version {v.version}, {human_size(v.size)} in {store.root}")
    add_images(driver, args.name)


def add_images(driver: Driver, base: str) -> None:
    """Give a new base its image in every daemon 'pycor lxd init' / 'pycor incus init' set up for this store."""
    for client in daemon_clients():
        if not client.is_set_up_for(driver.store.root):
            continue
        if client.ensure_image(base, driver.store.root) == "other":
            print(f"{client.where()}: image pycor/{base} belongs to another pycor store: left alone", file=sys.stderr)
        else:
            print(f"{client.where()}: image pycor/{base} added")


def cmd_base_ls(args: argparse.Namespace, driver: Driver) -> None:
    store = driver.store
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
    rows = []
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


def cmd_base_versions(args: argparse.Namespace, driver: Driver) -> None:
    """Every version that reads, plus one line per damaged one (marked, never a failure of the listing)."""
    from .versions import SQUASH_ADVISED_DEPTH

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

    rows = [{
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


def cmd_base_hold(args: argparse.Namespace, driver: Driver) -> None:
    from .names import check_version

    name, version = check_name(args.name, "base name"), check_version(args.version)
    driver.store.hold(name, version)
    print(f"base {name}: version {version} is held; gc keeps it (and the versions below it) until 'pycor base unhold {name} {version}'")


def cmd_base_unhold(args: argparse.Namespace, driver: Driver) -> None:
    from .names import check_version

    name, version = check_name(args.name, "base name"), check_version(args.version)
    driver.store.unhold(name, version)
    print(f"base {name}: version {version} is no longer held")


def cmd_base_update(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import update_base

    name = check_name(args.name, "base name")
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    v = update_base(driver.store, name, argv, keep_apt_lists=args.keep_apt_lists)
    if v is None:
        print(f"base {name}: the command changed nothing; current stays at version {driver.store.current(name)}")
    else:
        print(f"base {name}: version {v.version} is current ({human_size(v.size)} of changes over version {v.parent})")


def cmd_base_squash(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import squash_base

    v = squash_base(driver.store, check_name(args.name, "base name"))
    print(f"base {args.name}: version {v.version} is current, one layer of {human_size(v.size)}")


def cmd_base_gc(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import gc

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


def cmd_base_rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "base name")
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
    driver.delete_base(name, extra)
    for client in daemon_clients():
        client.remove_image(name, driver.store.root)  # only this store's image
    print(f"base {args.name} removed")


# -- containers ------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    driver.store.require(check_name(args.base, "base name"))
    if args.runtime != "lxc" and (args.adopt or args.dir):
        raise PycorError("--adopt and --dir are for LXC containers", "drop them, or use --runtime lxc")
    if args.adopt and args.pin:
        raise PycorError("--adopt keeps the layer's own pin: --pin does not go with it", "change the pin afterwards with 'pycor pin'")
    from .cli_hosting import create_args

    backing, extra = create_args(args, lxcpath_of(args))  # --size, --volume, --ephemeral: all checked before anything is made
    if args.runtime != "lxc":
        rt = runtime.daemon_runtime(args.runtime)
        if rt.has(name):
            raise PycorError(f"{rt.title} instance {name!r} already exists", "pick another name, or 'pycor rm' it first")
        daemon_init(rt.client, driver)
        from .cli_hosting import lxd_create

        lxd_create(rt.client, name, args.base, args)  # --size: the root device's size; --ephemeral
        print(f"container {name} created on base {args.base} ({rt.client.dialect.cli} start {name})")
        return
    lxcpath = lxcpath_of(args)
    from .install import LXC_TEMPLATES_DIR, TEMPLATE
    from .store import templates_dir

    template = args.template or ("pycor" if templates_dir() == LXC_TEMPLATES_DIR else os.path.join(templates_dir(), TEMPLATE))

    def check_layer(rootfs: str) -> None:
        if args.adopt:  # all of it, before lxc-create runs
            from .template import idmap_lines, mapped_root

            uid, gid = mapped_root({}, idmap_lines({}, args.unprivileged))
            driver.adopt_volume(name, rootfs, args.base, uid, gid, register=False)

    lxc.create(name, args.base, lxcpath, template, args.pin, args.network,
               store=driver.store.root if args.store or os.environ.get("PYCOR_STORE") else None,
               unprivileged=args.unprivileged, adopt=args.adopt, rootfs=args.dir, check=check_layer,
               backing=backing, template_args=extra)
    print(f"container {name} {'re-created around its layer' if args.adopt else 'created'} on base {args.base} "
          f"(lxc-start -n {name}{'' if not args.lxcpath else ' -P ' + lxcpath})")


def cmd_ls(args: argparse.Namespace, driver: Driver) -> None:
    from .cli_hosting import quota_cell

    rows = []
    for c in all_containers(driver, args):
        row = {"name": c.name, "runtime": c.runtime, "base": "?", "version": "-", "pinned": False, "state": c.state,
               "changes": disk_usage(os.path.join(c.rootfs, UPPER)), "lxcpath": c.lxcpath, "damaged": False, "detail": "",
               "quota": "", "conflicts": 0, "held": None}
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
        row["held"] = state.held if state is not None else None  # on an older version than it follows: why
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
            print(f"{r['name']}: {r['detail']}", file=sys.stderr)


def cmd_pin(args: argparse.Namespace, driver: Driver) -> None:
    from .layer import write_meta
    from .names import check_version

    c = find_container(driver, args, args.name)
    wanted = None if args.version is None else check_version(args.version)  # "" is a mistake, not "now"
    # gc removes versions under the store's exclusive lock: checking the version and writing the
    # pin under the shared one, gc either sees the pin or removed the version before the check
    with locks.layer_lock(c.rootfs), driver.store.lock(exclusive=False):
        meta = driver.volume_meta(c.rootfs)
        if wanted is not None:
            version = wanted
            driver.store.version(meta.base, version)
        else:  # where it runs now, else where it would start
            version = driver.volume_version(meta, driver.run_state(c.lxc_name, c.rootfs))  # a live one says it runs
        write_meta(c.rootfs, meta.but(pin=version))
    print(f"container {c.name} pinned to {meta.base} version {version}")


def cmd_unpin(args: argparse.Namespace, driver: Driver) -> None:
    from .layer import write_meta

    c = find_container(driver, args, args.name)
    with locks.layer_lock(c.rootfs):
        meta = driver.volume_meta(c.rootfs)
        write_meta(c.rootfs, meta.but(pin=None))
    print(f"container {c.name} follows {meta.base} (version {driver.store.current(meta.base)} at its next start)")


def cmd_rollout(args: argparse.Namespace, driver: Driver) -> None:
    from .rollout import rollout

    base = check_name(args.base, "base name")
    driver.store.require(base)
    if args.dry_run:
        from .cli_moves import rollout_dry_run

        rollout_dry_run(args, driver, base, all_containers(driver, args))
        return
    outcomes = rollout(driver, base, all_containers(driver, args), args.batch, args.check,
                       report=(lambda line: print(line, file=sys.stderr)))
    emit(args, [o.to_json() for o in outcomes], [("name", "NAME"), ("runtime", "RUNTIME"), ("status", "STATUS"),
                                                 ("version", "VERSION"), ("detail", "DETAIL")])
    if any(o.status == "failed" for o in outcomes):
        raise PycorError("the rollout stopped at a failure; containers not reached stay on their old version",
                         "fix the failing container, then run 'pycor rollout' again")


def cmd_diff(args: argparse.Namespace, driver: Driver) -> None:
    from .diff import diff_layer
    from .idmap import IdMap

    c = find_container(driver, args, args.name)
    idmap = IdMap.parse_lxc_config(container_idmap(c) or "")
    # under the layer lock, a reset or a start cannot swap upper or the version between the check and the walk
    with locks.layer_lock(c.rootfs), layer.OpenLayer(c.rootfs) as lay:
        version = driver.volume_version(lay.meta, driver.run_state(c.lxc_name, c.rootfs))  # a live one says it runs
        with driver.store.lock(exclusive=False):  # gc cannot remove the version while it is read
            changes = diff_layer(lay.upper_fd, driver.store.lower_stack(lay.meta.base, version),
                                 None if idmap.is_empty else idmap.check())
    from .cli_hosting import note_volumes

    note_volumes(c.rootfs, "diff")
    if args.format == "json":
        emit(args, [ch.to_json() for ch in changes], [])
        return
    marks = {"added": "A", "changed": "C", "deleted": "D", "replaced": "R"}
    for ch in changes:
        print(f"{marks[ch.kind]} {ch.path}{'/' if ch.type == 'dir' else ''}")


def cmd_commit(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import commit

    if bool(args.as_base) == bool(args.to_base):
        raise PycorError("say where to commit to: --as NEWBASE or --to BASE", "one of the two")
    target = check_name(args.as_base or args.to_base, "base name")
    c = find_container(driver, args, args.name)
    idmap_text = container_idmap(c)  # before the lock: LXD may wait on a start that waits on it
    from .cli_hosting import note_volumes

    note_volumes(c.rootfs, "commit")
    with stopped(driver, c, "commit"):
        v = commit(driver.store, c.rootfs, idmap_text, args.as_base and target, args.to_base and target)
    print(f"container {c.name} committed as base {target} version {v.version} ({human_size(v.size)})")
    if args.as_base:
        add_images(driver, target)


def cmd_reset(args: argparse.Namespace, driver: Driver) -> None:
    from .cli_hosting import reset  # versions.reset, emptying the layer first when even a rename hits the quota

    c = find_container(driver, args, args.name)
    with stopped(driver, c, "reset"):
        reset(c.rootfs)
    print(f"container {c.name}: changes discarded; it runs on its base as new")


def cmd_doctor(args: argparse.Namespace, driver: Driver) -> None:
    from .doctor import run_checks

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


def cmd_rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    rt = runtime.runtime_with(name, lxcpath_of(args), args.runtime)
    if not rt.has(name):
        where = rt.client.where() if isinstance(rt, runtime.DaemonRuntime) else lxcpath_of(args)
        raise NotFound(f"no container {name!r} in {where}", "'pycor ls' lists them")
    rt.destroy(name, args.force)
    print(f"container {name} removed")


def daemon_init(client, driver: Driver) -> list[str]:  # type: ignore[no-untyped-def]
    """The overlay profile and one image per base, all of this store; safe to repeat."""
    from .store import hooks_dir
    from .template import hook_lines

    done = []
    if client.ensure_profile("\n".join(hook_lines(hooks_dir(), driver.store)), driver.store.root):
        done.append("profile overlay written")
    for base in driver.store.base_names():
        outcome = client.ensure_image(base, driver.store.root)
        if outcome == "added":
            done.append(f"image pycor/{base} added")
        elif outcome == "other":
            done.append(f"image pycor/{base} belongs to another pycor store: left alone")
    return done


def cmd_daemon_init(args: argparse.Namespace, driver: Driver) -> None:
    client = runtime.daemon_runtime(args.daemon).client
    for line in daemon_init(client, driver) or [f"{client.title} already set up: profile overlay and an image per base"]:
        print(line)


def cmd_install(args: argparse.Namespace, driver: Driver) -> None:
    from .install import install

    for path in install(args.hooks_dir, args.templates_dir):
        print(f"installed {path}")


# -- parser -----------------------------------------------------------------------
class _Unbuilt:
    """The parser of a command this run does not need: takes every call and builds nothing."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: self


class _Choices(dict):
    def __missing__(self, name: str) -> _Unbuilt:
        return _Unbuilt()


class _OneCommand:
    """The COMMAND sub-parsers, building only the one named: argparse takes about 0.4 ms (gettext
    lookups) per parser, a fifth of a short command's run. wanted None: build them all."""

    def __init__(self, sub, wanted: str | None) -> None:  # type: ignore[no-untyped-def]
        self.sub, self.wanted, self.names = sub, wanted, []  # type: ignore[var-annotated]

    def add_parser(self, name: str, **kwargs):  # type: ignore[no-untyped-def]
        self.names.append(name)
        return self.sub.add_parser(name, **kwargs) if self.wanted in (None, name) else _Unbuilt()

    @property
    def choices(self) -> _Choices:
        return _Choices(self.sub.choices)


def _command_of(argv: list[str]) -> str | None:
    """The command argv names, if it comes first or after --store only; else None."""
    i = 0
    while i < len(argv) and (argv[i] == "--store" or argv[i].startswith("--store=")):
        i += 2 if argv[i] == "--store" else 1
    return argv[i] if i < len(argv) and not argv[i].startswith("-") else None


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; given argv, only its command's sub-parser is built (help and errors unchanged)."""
    wanted = _command_of(argv) if argv is not None else None
    p, commands = _parser(wanted)
    if wanted is not None and wanted not in commands:  # an option's value, or no such command: build them all
        p, _ = _parser(None)
    return p


def _parser(wanted: str | None) -> tuple[argparse.ArgumentParser, list[str]]:
    from .store import hooks_dir, templates_dir

    p = argparse.ArgumentParser(prog="pycor", description="LXC, LXD and Incus containers on one shared, read-only base")
    p.add_argument("--version", action="version", version=f"pycor {__version__}")
    p.add_argument("--store", help="store path (default: $PYCOR_STORE, 'store =' in /etc/pycor/pycor.conf, /var/lib/pycor)")
    sub = _OneCommand(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), wanted)
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
    src.add_argument("--from-export", metavar="FILE", help="versions exported by 'pycor base export' on another host ('-': stdin)")
    src.add_argument("--debootstrap", metavar="SUITE", help="a Debian suite, from the mirror apt uses here")
    imp.add_argument("--variant", default="minbase", help="debootstrap --variant (default: minbase)")
    imp.add_argument("--include", action="append", default=[], metavar="PKGS", help="debootstrap --include (comma-separated)")
    imp.add_argument("--bootable", action="store_true",
                     help="with --debootstrap: systemd as init, DHCP on eth0 and nginx, for containers that boot")
    imp.set_defaults(func=cmd_base_import)
    bls = base.add_parser("ls", help="list bases", parents=[fmt, where])
    bls.set_defaults(func=cmd_base_ls)
    bv = base.add_parser("versions", help="list a base's versions", parents=[fmt, where])
    bv.add_argument("name")
    bv.set_defaults(func=cmd_base_versions)
    bu = base.add_parser("update", help="run a command in a builder container and publish a new version",
                         usage="pycor base update NAME -- CMD [ARGS...]")
    bu.add_argument("name")
    bu.add_argument("--keep-apt-lists", action="store_true", help="publish apt's package lists too (left out by default)")
    bu.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    bu.set_defaults(func=cmd_base_update)
    bsq = base.add_parser("squash", help="fold the current version's layers into one")
    bsq.add_argument("name")
    bsq.set_defaults(func=cmd_base_squash)
    bgc = base.add_parser("gc", help="remove versions neither current nor used by a container", parents=[where])
    bgc.set_defaults(func=cmd_base_gc)
    bh = base.add_parser("hold", help="keep a base version through gc (for copies gc cannot see)")
    bh.add_argument("name")
    bh.add_argument("version")
    bh.set_defaults(func=cmd_base_hold)
    buh = base.add_parser("unhold", help="let gc remove a held version again")
    buh.add_argument("name")
    buh.add_argument("version")
    buh.set_defaults(func=cmd_base_unhold)
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
    cr.add_argument("--runtime", choices=("lxc", "lxd", "incus"), default="lxc",
                    help="LXC (default), LXD or Incus (always unprivileged)")
    cr.add_argument("--adopt", action="store_true",
                    help="re-create a container whose LXC config was lost around the layer in its rootfs, keeping its changes")
    cr.add_argument("--dir", metavar="DIR", help="rootfs directory elsewhere than LXCPATH/NAME/rootfs (new or empty, or a layer with --adopt)")
    cr.add_argument("--template", help=argparse.SUPPRESS)
    cr.set_defaults(func=cmd_create)
    ls = sub.add_parser("ls", help="list pycor containers", parents=[fmt, where])
    ls.set_defaults(func=cmd_ls)
    rm = sub.add_parser("rm", help="remove a container and its changes", parents=[where])
    rm.add_argument("name")
    rm.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
    rm.add_argument("--runtime", choices=("lxc", "lxd", "incus"), help="which runtime's container (default: the one that has it)")
    rm.set_defaults(func=cmd_rm)

    pin = sub.add_parser("pin", help="keep a container on one base version", parents=[where])
    pin.add_argument("name")
    pin.add_argument("version", nargs="?", help="default: the version it runs on now")
    pin.set_defaults(func=cmd_pin)
    unpin = sub.add_parser("unpin", help="let a container follow its base's current version", parents=[where])
    unpin.add_argument("name")
    unpin.set_defaults(func=cmd_unpin)
    ro = sub.add_parser("rollout", help="restart the running containers that follow a base onto its current version",
                        parents=[fmt, where])
    ro.add_argument("base")
    ro.add_argument("--batch", type=int, default=1, help="containers restarted at once (default 1)")
    ro.add_argument("--check", metavar="CMD", help="a shell command that must succeed inside each moved container")
    ro.add_argument("--dry-run", action="store_true",
                    help="for every container that follows BASE, what moving it would merge and what conflicts; change nothing")
    ro.set_defaults(func=cmd_rollout)
    df = sub.add_parser("diff", help="what a container changed against its base", parents=[fmt, where])
    df.add_argument("name")
    df.set_defaults(func=cmd_diff)
    cm = sub.add_parser("commit", help="publish a stopped container's view as a base or a base version", parents=[where])
    cm.add_argument("name")
    cm.add_argument("--as", dest="as_base", metavar="NEWBASE", help="as a new base")
    cm.add_argument("--to", dest="to_base", metavar="BASE", help="as a new version of an existing base")
    cm.set_defaults(func=cmd_commit)
    rs = sub.add_parser("reset", help="discard a stopped container's changes", parents=[where])
    rs.add_argument("name")
    rs.set_defaults(func=cmd_reset)
    doc = sub.add_parser("doctor", help="check what pycor relies on, and name a fix for each miss", parents=[fmt])
    doc.add_argument("--fix", action="store_true", help="clear what pycor can clear by itself (records of containers that no longer run)")
    doc.set_defaults(func=cmd_doctor)

    for kind, title in (("lxd", "LXD"), ("incus", "Incus")):
        dsub = sub.add_parser(kind, help=f"{title} setup").add_subparsers(dest=f"{kind}_command", required=True, metavar="COMMAND")
        dsub.add_parser("init", help=f"create the 'overlay' profile and an image pycor/BASE per base in {title}").set_defaults(
            func=cmd_daemon_init, daemon=kind)

    from .cli_moves import add_commands

    add_commands(sub, base, fmt, where)
    from . import cli_hosting
    from . import cli_hosts

    cli_hosts.add_commands(sub, base, fmt, where)

    cli_hosting.add_commands(sub, fmt, where)  # create --size, --volume, --ephemeral; set; doctor -P

    ins = sub.add_parser("install", help="install the LXC hooks and template for this Python (pip or source installs)",
                         description="Write the LXC hooks and template for the Python running pycor, after checking that an "
                                     "unprivileged container's root can reach that Python and the pycor package, and compile "
                                     "the package's bytecode. Refused for files the Debian package pycor owns.")
    ins.add_argument("--hooks-dir", default=hooks_dir(), help="default: $PYCOR_HOOKS_DIR, 'hooks_dir =' in /etc/pycor/pycor.conf, /usr/share/lxc/hooks")
    ins.add_argument("--templates-dir", default=templates_dir(), help="default: $PYCOR_TEMPLATES_DIR, 'templates_dir =', /usr/share/lxc/templates")
    ins.set_defaults(func=cmd_install)
    return p, sub.names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    try:
        args.func(args, Driver(Store(args.store)))
        return 0
    except PycorError as e:
        print(f"pycor: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"pycor: error: {e.strerror or e}:{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pycor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
