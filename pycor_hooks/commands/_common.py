"""What pycor's commands share: their common options, the container they name, tables and JSON out.

Never imports a command module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import lxc, runtime
from ..driver import Driver, StoppedLayer
from ..errors import PycorError
from ..names import printable
from ..store import Version


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table")


def add_lxcpath(p: argparse.ArgumentParser) -> None:
    p.add_argument("-P", "--lxcpath", help="LXC container path (default: lxc-config lxc.lxcpath)")


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Rows as aligned columns; every cell through printable(): records may hold text from another host."""
    table = [[title for _, title in columns]] + [[printable(row[key], 4096) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def emit(args: argparse.Namespace, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A table, or JSON (whose strings json.dump writes as ASCII, control characters as \\u escapes)."""
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print_table(rows, columns)


def lxcpath_of(args: argparse.Namespace) -> str:
    return os.path.abspath(args.lxcpath) if getattr(args, "lxcpath", None) else lxc.default_lxcpath()


def all_containers(driver: Driver, args: argparse.Namespace, with_state: bool = True) -> list[runtime.Container]:
    return runtime.all_containers(driver, lxcpath_of(args), with_state)


def find_container(driver: Driver, args: argparse.Namespace, name: str | None = None) -> runtime.Container:
    return runtime.find_container(driver, lxcpath_of(args), name if name is not None else args.name)


def stopped(driver: Driver, c: runtime.Container, what: str, open_layer: bool = True) -> StoppedLayer:
    """The container's layer, locked and checked stopped (Driver.stopped_layer), for a command that writes it."""
    return driver.stopped_layer(c.lxc_name, c.rootfs, lambda: c.rt.state(c.name), what, c.rt.hint("stop", c.name),
                                shown=c.name, open_layer=open_layer, report=say)


def say(line: str) -> None:
    """A note for the person on stderr (what a command did on the way: an interrupted upgrade undone)."""
    print(f"pycor: {line}", file=sys.stderr)


def used_versions(driver: Driver, args: argparse.Namespace, problems: list[str] | None = None) -> dict[str, set[str]]:
    """base -> versions some layer pycor can find references (running, pinned, in snapshots and copies)."""
    from ..layers_seen import referenced_versions

    lxcpaths = [lxcpath_of(args)] + ([lxc.default_lxcpath()] if getattr(args, "lxcpath", None) else [])
    used, unreadable = referenced_versions(driver, lxcpaths)
    if problems is not None:
        problems.extend(unreadable)
    return used


def add_images(driver: Driver, base: str) -> None:
    """Give a new base its image in every daemon 'pycor lxd init' / 'pycor incus init' set up for this store."""
    from ..daemon import daemons

    for client in daemons():
        if not client.is_set_up_for(driver.store.root):
            continue
        if client.ensure_image(base, driver.store.root) == "other":
            print(f"{client.where()}: image pycor/{base} belongs to another pycor store: left alone", file=sys.stderr)
        else:
            print(f"{client.where()}: image pycor/{base} added")


def note_volumes(driver: Driver, rootfs: str, what: str) -> None:
    """diff and commit see only upper: say which volumes they leave out."""
    try:
        paths = driver.volume_meta(rootfs).volumes
    except PycorError:
        return
    if paths:
        print(f"pycor {what}: volumes left out (they bypass the overlay): {', '.join(paths)}", file=sys.stderr)


def note_pending(c: runtime.Container, what: str) -> None:
    """diff, commit, publish --flat read the merged view: say so when files pushed into the stopped container
    wait for its next start (they are not in it)."""
    from ..inbox import pending
    from ..layer import open_rootfs

    try:
        fd = open_rootfs(c.rootfs)
    except PycorError:
        return
    try:
        if pending(fd):
            print(f"pycor {what}: container {c.name} has files pushed while it was stopped, which enter its view at "
                  f"its next start: they are not in this {what.split()[0]} (start it once to include them)", file=sys.stderr)
    finally:
        os.close(fd)


def published(driver: Driver, name: str, v: Version | None) -> None:
    """What a base update, shell, edit or commit published."""
    from ..units import human_size

    if v is None:
        print(f"base {name}: nothing changed; current stays at version {driver.store.current(name)}")
    else:
        print(f"base {name}: version {v.version} is current ({human_size(v.size)} of changes over version {v.parent})")
