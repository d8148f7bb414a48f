"""The pycor commands that move a container's changes between base versions, and edit a base.

rebase, conflicts, resolve; base shell, edit, publish, discard. Thin front
ends over the driver (reconciliation) and versions (builders): parse, call,
print.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from .driver import Driver
from .errors import PycorError
from .names import check_name, check_version


def _container(driver: Driver, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .cli import find_container

    return find_container(driver, args, args.name)


def cmd_rebase(args: argparse.Namespace, driver: Driver) -> None:
    from .cli import emit, stopped

    c = _container(driver, args)
    to = check_version(args.to) if args.to is not None else None
    meta = driver.volume_meta(c.rootfs)
    if args.dry_run:
        target, plan = driver.rebase_volume(c.rootfs, to, args.force, dry_run=True)
    else:
        with stopped(driver, c, "rebase"):
            target, plan = driver.rebase_volume(c.rootfs, to, args.force, locked=True)
    if not args.dry_run and to is not None and to != driver.store.current(meta.base) and meta.pin != to:
        from .layer import write_meta

        write_meta(c.rootfs, driver.volume_meta(c.rootfs).but(pin=to))  # a move off current stays there: pin it
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
    _print_findings(rows)


def rollout_dry_run(args: argparse.Namespace, driver: Driver, base: str, containers: list) -> None:  # type: ignore[type-arg]
    """What a rollout (and the next start of a stopped follower) would merge and leave in conflict, per container."""
    from .cli import emit
    from .rollout import followers

    target = driver.store.current(base)
    out = []
    for c, meta in followers(driver, base, containers):
        _, plan = driver.rebase_volume(c.rootfs, target, dry_run=True)
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
        _print_findings(row["findings"])


def _print_findings(rows: list[dict]) -> None:
    marks = {"merged": "M", "dropped": "D", "conflict": "C", "collision": "!"}
    for r in rows:
        print(f"  {marks.get(r['kind'], '?')} {r['path']}: {r['detail']}")
    if not rows:
        print("  no path changed on both sides")


def cmd_conflicts(args: argparse.Namespace, driver: Driver) -> None:
    from .cli import emit

    c = _container(driver, args)
    record = driver.volume_conflicts(c.rootfs)
    if args.diff:
        print_base_diff(driver, c, args.diff)
        return
    rows = record.get("findings", [])
    if args.format == "json":
        emit(args, [{"container": c.name, "from": record.get("from"), "to": record.get("to"), "findings": rows}], [])
        return
    open_ = [r for r in rows if r.get("kind") in ("conflict", "collision")]
    if record.get("held_back"):
        print(f"container {c.name}: held back on version {record.get('from')}: moving to {record.get('to')} would give two names one id")
    elif record.get("to"):
        print(f"container {c.name}: last moved from version {record.get('from')} to {record.get('to')}")
    _print_findings(rows)
    if open_:
        print(f"{len(open_)} unresolved: 'pycor conflicts {c.name} --diff PATH' shows the base's version against the container's; "
              f"'pycor resolve {c.name} PATH --base|--keep' settles one")


def print_base_diff(driver: Driver, c, path: str) -> None:  # type: ignore[no-untyped-def]
    """A unified diff of the base's file (at the container's version) against the container's copy."""
    from . import layer, linux
    from .diff import LowerStack

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


def cmd_resolve(args: argparse.Namespace, driver: Driver) -> None:
    from .cli import stopped

    c = _container(driver, args)
    if args.base:
        with stopped(driver, c, "resolve --base"):
            driver.resolve_conflict(c.rootfs, args.path, take_base=True, locked=True)
    else:
        driver.resolve_conflict(c.rootfs, args.path, take_base=False)
    print(f"container {c.name}: {args.path} " + ("now shows the base's version" if args.base else "keeps the container's version"))


def cmd_base_shell(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import shell_base

    name = check_name(args.name, "base name")
    v = shell_base(driver.store, name, args.discard, args.keep_apt_lists)
    _published(driver, name, v)


def _published(driver: Driver, name: str, v) -> None:  # type: ignore[no-untyped-def]
    from .fsutil import human_size

    if v is None:
        print(f"base {name}: nothing changed; current stays at version {driver.store.current(name)}")
    else:
        print(f"base {name}: version {v.version} is current ({human_size(v.size)} of changes over version {v.parent})")


def cmd_base_edit(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import edit_base

    name = check_name(args.name, "base name")
    lxcpath = edit_base(driver.store, name)
    print(f"base {name}: a builder runs on version {driver.store.current(name)}; provision it with LXC's tools, e.g.\n"
          f"  lxc-attach -n builder -P {lxcpath} -- apt-get -y install PACKAGE\n"
          f"then 'pycor base publish {name}' (or 'pycor base discard {name}')")


def cmd_base_publish(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import publish_edit

    name = check_name(args.name, "base name")
    _published(driver, name, publish_edit(driver.store, name, args.keep_apt_lists))


def cmd_base_discard(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import discard_edit

    name = check_name(args.name, "base name")
    discard_edit(driver.store, name)
    print(f"base {name}: edit discarded; current stays at version {driver.store.current(name)}")


def add_commands(sub, base, fmt: argparse.ArgumentParser, where: argparse.ArgumentParser) -> None:  # type: ignore[no-untyped-def]
    rb = sub.add_parser("rebase", help="move a stopped container's changes to another base version, merging shared databases",
                        parents=[fmt, where])
    rb.add_argument("name")
    rb.add_argument("--to", metavar="VERSION", help="default: its pin, else the base's current version")
    rb.add_argument("--dry-run", action="store_true", help="say what would be merged and what conflicts; change nothing")
    rb.add_argument("--force", action="store_true", help="move even when a uid or gid would be shared by two names")
    rb.set_defaults(func=cmd_rebase)
    co = sub.add_parser("conflicts", help="what the last moves of a container merged, and what conflicts", parents=[fmt, where])
    co.add_argument("name")
    co.add_argument("--diff", metavar="PATH", help="show the base's version of PATH against the container's")
    co.set_defaults(func=cmd_conflicts)
    rs = sub.add_parser("resolve", help="settle a conflict: take the base's version, or keep the container's", parents=[where])
    rs.add_argument("name")
    rs.add_argument("path")
    side = rs.add_mutually_exclusive_group(required=True)
    side.add_argument("--base", action="store_true", help="drop the container's copy; the base's version shows")
    side.add_argument("--keep", action="store_true", help="keep the container's version")
    rs.set_defaults(func=cmd_resolve)

    lean = argparse.ArgumentParser(add_help=False)
    lean.add_argument("--keep-apt-lists", action="store_true", help="publish apt's package lists too (left out by default)")
    sh = base.add_parser("shell", help="a shell in a builder on the current version: exit 0 publishes, anything else discards",
                         parents=[lean])
    sh.add_argument("name")
    sh.add_argument("--discard", action="store_true", help="publish nothing, whatever the exit status")
    sh.set_defaults(func=cmd_base_shell)
    ed = base.add_parser("edit", help="keep a builder running on the current version until publish or discard")
    ed.add_argument("name")
    ed.set_defaults(func=cmd_base_edit)
    pu = base.add_parser("publish", help="publish what an edit session changed as the next version", parents=[lean])
    pu.add_argument("name")
    pu.set_defaults(func=cmd_base_publish)
    di = base.add_parser("discard", help="end an edit session without publishing")
    di.add_argument("name")
    di.set_defaults(func=cmd_base_discard)
