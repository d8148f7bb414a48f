"""pycor rollout, rebase, conflicts, resolve: moving containers' changes between base versions."""

from __future__ import annotations

import argparse
import difflib
import sys

from .. import layer
from ..driver import Driver
from ..errors import PycorError
from ..names import PATH_SHOWN, check_name, check_version, printable
from ..reconcile import HOLDING, holding_message
from ..runtime import Container
from ._common import add_format, add_lxcpath, all_containers, emit, find_container, stopped


def rollout(args: argparse.Namespace, driver: Driver) -> None:
    from ..rollout import rollout as roll

    base = check_name(args.base, "base name")
    driver.store.require(base)
    if args.dry_run:
        rollout_dry_run(args, driver, base, all_containers(driver, args))
        return
    outcomes = roll(driver, base, all_containers(driver, args), args.batch, args.check,
                    report=(lambda line: print(line, file=sys.stderr)), upgrade=args.upgrade)
    emit(args, [o.to_json() for o in outcomes], [("name", "NAME"), ("runtime", "RUNTIME"), ("status", "STATUS"),
                                                 ("version", "VERSION"), ("detail", "DETAIL")])
    if any(o.status == "failed" for o in outcomes):
        raise PycorError("the rollout stopped at a failure; containers not reached stay on their old version",
                         "fix the failing container, then run 'pycor rollout' again")
    held = [o.name for o in outcomes if o.status == "held"]
    if held:
        raise PycorError(f"{len(held)} container(s) held back on their old version: {', '.join(held)}",
                         "'pycor conflicts NAME' says why; 'pycor rollout --upgrade' brings containers' own packages along")


def rollout_dry_run(args: argparse.Namespace, driver: Driver, base: str, containers: list[Container]) -> None:
    """What a rollout (and the next start of a stopped follower) would merge and leave in conflict, per container."""
    from ..rollout import followers

    target = driver.store.current(base)
    out: list[dict] = []
    for c, meta in followers(driver, base, containers):
        _, plan = driver.rebase_plan(c.rootfs, target)
        out.append({"container": c.name, "state": c.state, "from": meta.based_on, "to": target,
                    "findings": [f.to_json() for f in plan.findings] if plan else []})
    if args.format == "json":
        emit(args, out, [])
        return
    for row in out:
        if row["from"] == target:
            print(f"{row['container']}: on version {target} already")
            continue
        held = [f for f in row["findings"] if f["kind"] in HOLDING]
        verb = f"would be held back on version {row['from']}" if held else f"would move from version {row['from']} to {target}"
        print(f"{row['container']} ({row['state'].lower()}): {verb}")
        print_findings(row["findings"])
        if held:
            print(f"  moving it {holding_message(held)}: {upgrade_hint(held, 'rollout --upgrade')}")


def upgrade_hint(holding: list[dict], command: str) -> str:
    if any(f["kind"] == "breaks" for f in holding):
        return f"'pycor {command}' moves it and brings its own packages along (apt-get full-upgrade, as in place)"
    return "fix the container's user, or move anyway with 'pycor rebase NAME --force'"


def rebase(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    to = check_version(args.to) if args.to is not None else None
    meta = driver.volume_meta(c.rootfs)
    changes: list[str] | None = None
    if args.dry_run:
        target, plan = driver.rebase_plan(c.rootfs, to)
    elif args.upgrade:
        with stopped(driver, c, "rebase --upgrade") as held:
            target, plan, changes = driver.upgrade_volume(held, c.rt, c.name, to, args.force)
    else:
        with stopped(driver, c, "rebase") as held:
            target, plan = driver.rebase_volume(held, to, args.force)
            if to is not None and to != driver.store.current(meta.base) and meta.pin != to:
                layer.write_meta(c.rootfs, held.layer.meta.but(pin=to))  # a move off current stays there: pin it
                print(f"container {c.name} pinned to {meta.base} version {to} ('pycor unpin {c.name}' to follow current again)")
    rows = [f.to_json() for f in plan.findings] if plan else []
    if changes is not None:
        rows = [r for r in rows if r["kind"] != "breaks"]  # mended by the upgrade
    if args.format == "json":
        emit(args, [{"container": c.name, "from": meta.based_on, "to": target, "dry_run": args.dry_run, "findings": rows,
                     "upgraded": changes}], [])
        return
    holding = [r for r in rows if r["kind"] in HOLDING]
    verb = "would move" if args.dry_run else "moved"
    if plan is None:
        print(f"container {c.name}: on {meta.base} version {target}; nothing to reconcile")
    else:
        if args.dry_run and holding and not args.force:
            verb = "would be held back: moving"
        print(f"container {c.name}: {verb} from {meta.base} version {meta.based_on} to {target}")
        print_findings(rows)
        if args.dry_run and holding and not args.force:
            print(f"  moving it {holding_message(holding)}: {upgrade_hint(holding, f'rebase {c.name} --upgrade')}")
    if changes is not None:
        print(f"  its own packages brought along ({len(changes)} changed):" if changes else "  its own packages: none needed a change")
        for line in changes:
            print(f"    {line}")


def print_findings(rows: list[dict]) -> None:
    marks = {"merged": "M", "dropped": "D", "conflict": "C", "collision": "!", "breaks": "B", "unopaque": "O",
             "whiteout": "W", "upgraded": "U", "held": "H"}
    for r in rows:
        print(f"  {marks.get(r['kind'], '?')} {printable(r['path'], PATH_SHOWN)}: {printable(r['detail'], PATH_SHOWN)}")
    if not rows:
        print("  no path changed on both sides")


def conflicts(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    record = driver.volume_conflicts(c.rootfs)
    if args.diff:
        print_base_diff(driver, c, args.diff)
        return
    rows = record.get("findings", [])
    if args.format == "json":
        emit(args, [{"container": c.name, "from": record.get("from"), "to": record.get("to"),
                     "held_back": bool(record.get("held_back")), "findings": rows}], [])
        return
    open_ = [r for r in rows if r.get("kind") in ("conflict", "collision")]  # breaks: settled by --upgrade
    holding = [r for r in rows if r.get("kind") in HOLDING]
    if record.get("held_back"):
        print(f"container {c.name}: held back on version {record.get('from')}: moving to {record.get('to')} "
              f"{holding_message(holding)}")
    elif record.get("to"):
        print(f"container {c.name}: last moved from version {record.get('from')} to {record.get('to')}")
    print_findings(rows)
    if record.get("held_back") and holding:
        print(upgrade_hint(holding, f"rebase {c.name} --upgrade"))
    if open_:
        print(f"{len(open_)} unresolved: 'pycor conflicts {c.name} --diff PATH' shows the base's version against the container's; "
              f"'pycor resolve {c.name} PATH --base|--keep' settles one")


def print_base_diff(driver: Driver, c: Container, path: str) -> None:
    """The base's version of path (at the container's version) against the container's: a unified diff of a
    file; for a directory, every entry only one side has and a diff of each file that differs."""
    rel = path.strip("/")
    if not rel:
        raise PycorError("--diff needs a path below /", "name a file or a directory, e.g. --diff /etc/nginx")
    meta = driver.volume_meta(c.rootfs)
    version = driver.volume_version(meta, driver.run_state(c.lxc_name, c.rootfs) if c.state == "RUNNING" else None)
    base_name, ours_name = f"base {meta.base} version {version}", f"container {c.name}"
    for d in driver.compare_with_base(c.lxc_name, c.rootfs, rel, version, c.name):
        shown = printable("/" + d.path, PATH_SHOWN)
        if d.kind == "only in a":
            print(f"only in the {base_name}: {shown}")
        elif d.kind == "only in b":
            print(f"only in the {ours_name}: {shown}")
        elif d.kind == "differs in size":
            print(f"differs in size (not read: the comparison's read budget ran out): {shown}")
        elif d.a is None or d.b is None:
            print(f"differs in type: {shown}")
        elif b"\0" in d.a or b"\0" in d.b:
            print(f"binary files differ: {shown}")
        else:
            theirs, ours = (x.decode("utf-8", "replace").splitlines(keepends=True) for x in (d.a, d.b))
            sys.stdout.writelines(difflib.unified_diff(theirs, ours, f"{base_name}: {shown}", f"{ours_name}: {shown}"))


def resolve(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    if args.base:
        with stopped(driver, c, "resolve --base") as held:
            replaced, kept, deleted = driver.resolve_conflict(held, args.path)
    else:
        driver.keep_conflict(c.rootfs, args.path)
        replaced, kept, deleted = [], [], []
    print(f"container {c.name}: {printable(args.path, PATH_SHOWN)} " + ("now shows the base's version" if args.base else "keeps the container's version"))
    for title, paths in (("the container's copy removed, the base's shows", replaced),
                         ("the container's own, kept (the base has none)", kept),
                         ("the container's own, removed (the base has no directory there)", deleted)):
        if paths:
            print(f"  {title}: {len(paths)}")
            for p in paths:
                print(f"    {printable(p, PATH_SHOWN)}")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "rollout":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("base")
        p.add_argument("--batch", type=int, default=1, help="containers restarted at once (default 1)")
        p.add_argument("--check", metavar="CMD", help="a shell command that must succeed inside each moved container")
        p.add_argument("--dry-run", action="store_true",
                       help="for every container that follows BASE, what moving it would merge and what conflicts; change nothing")
        p.add_argument("--upgrade", action="store_true",
                       help="stop each container with packages of its own, move it with them brought along (as apt-get "
                            "full-upgrade in place would), start it again")
        p.set_defaults(func=rollout)
    elif command == "rebase":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("--to", metavar="VERSION", help="default: its pin, else the base's current version")
        p.add_argument("--dry-run", action="store_true", help="say what would be merged and what conflicts; change nothing")
        p.add_argument("--force", action="store_true",
                       help="move even when a uid or gid would be shared by two names, or its own packages would break")
        p.add_argument("--upgrade", action="store_true",
                       help="also bring the packages it installed itself along, as apt-get full-upgrade in place would "
                            "(network; all or nothing)")
        p.set_defaults(func=rebase)
    elif command == "conflicts":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("--diff", metavar="PATH",
                       help="show the base's version of PATH against the container's (a directory: entry by entry)")
        p.set_defaults(func=conflicts)
    elif command == "resolve":
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("path")
        side = p.add_mutually_exclusive_group(required=True)
        side.add_argument("--base", action="store_true",
                          help="drop the container's copy; the base's version shows (a directory: what the base has, "
                               "each named; the container's own entries stay)")
        side.add_argument("--keep", action="store_true", help="keep the container's version")
        p.set_defaults(func=resolve)
