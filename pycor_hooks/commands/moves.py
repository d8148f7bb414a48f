"""pycor rollout, rebase, conflicts, resolve: moving containers' changes between base versions."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from .. import layer, linux
from ..driver import Driver
from ..errors import PycorError
from ..names import check_name, check_version
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
                    report=(lambda line: print(line, file=sys.stderr)))
    emit(args, [o.to_json() for o in outcomes], [("name", "NAME"), ("runtime", "RUNTIME"), ("status", "STATUS"),
                                                 ("version", "VERSION"), ("detail", "DETAIL")])
    if any(o.status == "failed" for o in outcomes):
        raise PycorError("the rollout stopped at a failure; containers not reached stay on their old version",
                         "fix the failing container, then run 'pycor rollout' again")


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
        print(f"{row['container']} ({row['state'].lower()}): would move from version {row['from']} to {target}")
        print_findings(row["findings"])


def rebase(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    to = check_version(args.to) if args.to is not None else None
    meta = driver.volume_meta(c.rootfs)
    if args.dry_run:
        target, plan = driver.rebase_plan(c.rootfs, to)
    else:
        with stopped(driver, c, "rebase") as held:
            target, plan = driver.rebase_volume(held, to, args.force)
            if to is not None and to != driver.store.current(meta.base) and meta.pin != to:
                layer.write_meta(c.rootfs, held.layer.meta.but(pin=to))  # a move off current stays there: pin it
                print(f"container {c.name} pinned to {meta.base} version {to} ('pycor unpin {c.name}' to follow current again)")
    rows = [f.to_json() for f in plan.findings] if plan else []
    if args.format == "json":
        emit(args, [{"container": c.name, "from": meta.based_on, "to": target, "dry_run": args.dry_run, "findings": rows}], [])
        return
    verb = "would move" if args.dry_run else "moved"
    if plan is None:
        print(f"container {c.name}: on {meta.base} version {target}; nothing to reconcile")
        return
    print(f"container {c.name}: {verb} from {meta.base} version {meta.based_on} to {target}")
    print_findings(rows)


def print_findings(rows: list[dict]) -> None:
    marks = {"merged": "M", "dropped": "D", "conflict": "C", "collision": "!", "held": "H"}
    for r in rows:
        print(f"  {marks.get(r['kind'], '?')} {r['path']}: {r['detail']}")
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
    open_ = [r for r in rows if r.get("kind") in ("conflict", "collision")]
    if record.get("held_back"):
        print(f"container {c.name}: held back on version {record.get('from')}, not moved to {record.get('to')}:")
    elif record.get("to"):
        print(f"container {c.name}: last moved from version {record.get('from')} to {record.get('to')}")
    print_findings(rows)
    if open_:
        print(f"{len(open_)} unresolved: 'pycor conflicts {c.name} --diff PATH' shows the base's version against the container's; "
              f"'pycor resolve {c.name} PATH --base|--keep' settles one")


def print_base_diff(driver: Driver, c: Container, path: str) -> None:
    """A unified diff of the base's file (at the container's version) against the container's copy."""
    from ..diff import LowerStack

    rel = path.strip("/")
    meta = driver.volume_meta(c.rootfs)
    version = driver.volume_version(meta, driver.run_state(c.lxc_name, c.rootfs) if c.state == "RUNNING" else None)

    def read(dirfd: int) -> list[str]:
        fd = linux.open_beneath(dirfd, rel, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return f.read(8 << 20).decode("utf-8", "replace").splitlines(keepends=True)

    stack = LowerStack(driver.store.lower_stack(meta.base, version))
    try:
        found = stack.find(rel)
        theirs = read(found[0]) if found else []
    except OSError as e:
        raise PycorError(f"cannot read the base's /{rel}: {e.strerror}", "is it a regular file?") from None
    finally:
        stack.close()
    with layer.OpenLayer(c.rootfs) as lay:
        try:
            ours = read(lay.upper_fd)
        except FileNotFoundError:
            ours = []
        except OSError as e:
            raise PycorError(f"cannot read the container's /{rel}: {e.strerror}", "is it a regular file?") from None
    sys.stdout.writelines(difflib.unified_diff(theirs, ours, f"base {meta.base} version {version}: /{rel}", f"container {c.name}: /{rel}"))


def resolve(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    if args.base:
        with stopped(driver, c, "resolve --base") as held:
            driver.resolve_conflict(held, args.path)
    else:
        driver.keep_conflict(c.rootfs, args.path)
    print(f"container {c.name}: {args.path} " + ("now shows the base's version" if args.base else "keeps the container's version"))


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "rollout":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("base")
        p.add_argument("--batch", type=int, default=1, help="containers restarted at once (default 1)")
        p.add_argument("--check", metavar="CMD", help="a shell command that must succeed inside each moved container")
        p.add_argument("--dry-run", action="store_true",
                       help="for every container that follows BASE, what moving it would merge and what conflicts; change nothing")
        p.set_defaults(func=rollout)
    elif command == "rebase":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("--to", metavar="VERSION", help="default: its pin, else the base's current version")
        p.add_argument("--dry-run", action="store_true", help="say what would be merged and what conflicts; change nothing")
        p.add_argument("--force", action="store_true", help="move even when a uid or gid would be shared by two names")
        p.set_defaults(func=rebase)
    elif command == "conflicts":
        add_format(p)
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("--diff", metavar="PATH", help="show the base's version of PATH against the container's")
        p.set_defaults(func=conflicts)
    elif command == "resolve":
        add_lxcpath(p)
        p.add_argument("name")
        p.add_argument("path")
        side = p.add_mutually_exclusive_group(required=True)
        side.add_argument("--base", action="store_true", help="drop the container's copy; the base's version shows")
        side.add_argument("--keep", action="store_true", help="keep the container's version")
        p.set_defaults(func=resolve)
