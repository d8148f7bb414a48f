"""pycor pin, unpin, diff, commit, reset: a container's changes and the version they run on."""

from __future__ import annotations

import argparse

from .. import layer, locks
from ..driver import Driver
from ..errors import PycorError
from ..names import PATH_SHOWN, check_name, check_version, printable
from ..units import human_size
from ._common import add_format, add_images, add_lxcpath, emit, find_container, note_pending, note_volumes, stopped


def pin(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
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
        layer.write_meta(c.rootfs, meta.but(pin=version))
    print(f"container {c.name} pinned to {meta.base} version {version}")


def unpin(args: argparse.Namespace, driver: Driver) -> None:
    c = find_container(driver, args)
    with locks.layer_lock(c.rootfs):
        meta = driver.volume_meta(c.rootfs)
        layer.write_meta(c.rootfs, meta.but(pin=None))
    print(f"container {c.name} follows {meta.base} (version {driver.store.current(meta.base)} at its next start)")


def diff(args: argparse.Namespace, driver: Driver) -> None:
    from ..diff import diff_layer
    from ..idmap import IdMap

    c = find_container(driver, args)
    # ids as the container saw them: an unshifted layer (a daemon's idmapped rootfs) already holds them
    idmap = IdMap.parse_lxc_config((c.rt.idmap(c.name) if c.rt.shifted(c.name) else None) or "")
    # under the layer lock, a reset or a start cannot swap upper or the version between the check and the walk
    with locks.layer_lock(c.rootfs), driver.open_layer(c.lxc_name, c.rootfs, c.name) as lay:
        version = driver.volume_version(lay.meta, driver.run_state(c.lxc_name, c.rootfs))  # a live one says it runs
        namespace = driver.settle_xattrs(lay, None, f"container {c.name}")  # opaque as its own mount reads it
        with driver.store.lock(exclusive=False):  # gc cannot remove the version while it is read
            changes = diff_layer(lay.upper_fd, driver.store.lower_stack(lay.meta.base, version),
                                 None if idmap.is_empty else idmap.check(), namespace)
    note_volumes(driver, c.rootfs, "diff")
    note_pending(c, "diff")
    if args.format == "json":
        emit(args, [ch.to_json() for ch in changes], [])
        return
    marks = {"added": "A", "changed": "C", "deleted": "D", "replaced": "R"}
    for ch in changes:
        print(f"{marks[ch.kind]} {printable(ch.path, PATH_SHOWN)}{'/' if ch.type == 'dir' else ''}")  # names are the tenant's


def commit(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import commit as commit_layer

    if bool(args.as_base) == bool(args.to_base):
        raise PycorError("say where to commit to: --as NEWBASE or --to BASE", "one of the two")
    target = check_name(args.as_base or args.to_base, "base name")
    c = find_container(driver, args)
    idmap_text = c.rt.idmap(c.name)  # before the lock: LXD may wait on a start that waits on it
    shifted = c.rt.shifted(c.name)
    note_volumes(driver, c.rootfs, "commit")
    note_pending(c, "commit")
    with stopped(driver, c, "commit") as held:
        v = commit_layer(driver.store, held, idmap_text, args.as_base and target, args.to_base and target,
                         shifted=shifted)
    print(f"container {c.name} committed as base {target} version {v.version} ({human_size(v.size)})")
    if args.as_base:
        add_images(driver, target)


def reset(args: argparse.Namespace, driver: Driver) -> None:
    from ..quota import room_error
    from ..versions import reset as reset_layer

    c = find_container(driver, args)
    with stopped(driver, c, "reset", open_layer=False) as held:  # an interrupted reset cannot be opened: this finishes it
        reset_layer(held)
        meta = driver.volume_meta(c.rootfs)
    full = room_error(c.name, c.rootfs, meta, after="changes discarded")  # its volumes may still fill its limit
    if full is not None:
        raise full
    print(f"container {c.name}: changes discarded; it runs on its base as new")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    add_lxcpath(p)
    if command == "pin":
        p.add_argument("name")
        p.add_argument("version", nargs="?", help="default: the version it runs on now")
        p.set_defaults(func=pin)
    elif command == "unpin":
        p.add_argument("name")
        p.set_defaults(func=unpin)
    elif command == "diff":
        add_format(p)
        p.add_argument("name")
        p.set_defaults(func=diff)
    elif command == "commit":
        p.add_argument("name")
        p.add_argument("--as", dest="as_base", metavar="NEWBASE", help="as a new base")
        p.add_argument("--to", dest="to_base", metavar="BASE", help="as a new version of an existing base")
        p.set_defaults(func=commit)
    elif command == "reset":
        p.add_argument("name")
        p.set_defaults(func=reset)
