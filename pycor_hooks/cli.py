"""The pycor command: what LXC and LXD cannot do themselves."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, layer, lxc
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


def lxd_client():  # type: ignore[no-untyped-def]
    """LXD's API if LXD runs here, else None."""
    from .lxd import Lxd

    client = Lxd()
    return client if client.available() else None


class Listed:
    """One pycor container of either runtime, as the CLI shows it."""

    def __init__(self, name: str, runtime: str, rootfs: str, state: str, lxcpath: str | None = None) -> None:
        self.name, self.runtime, self.rootfs, self.state, self.lxcpath = name, runtime, rootfs, state, lxcpath

    def registration(self):  # type: ignore[no-untyped-def]
        from .driver import Registration

        return Registration(self.name, self.rootfs, self.runtime, self.lxcpath)


def all_containers(driver: Driver, args: argparse.Namespace, with_state: bool = True) -> list[Listed]:
    """LXC containers in the lxcpath or registered elsewhere, and LXD instances on pycor images."""
    found: dict[str, Listed] = {}
    lxc_found = {c.rootfs: c for c in lxc.containers(lxcpath_of(args))}
    for reg in driver.registrations():
        if reg.runtime == "lxc" and reg.lxcpath and reg.rootfs not in lxc_found:
            lxc_found[reg.rootfs] = lxc.LxcContainer(reg.name, reg.lxcpath, reg.rootfs)
    for c in lxc_found.values():
        found[c.rootfs] = Listed(c.name, "lxc", c.rootfs, lxc.state(c.name, c.lxcpath) if with_state else "?", c.lxcpath)
    client = lxd_client()
    if client is not None:
        from .layer import is_layer
        from .lxd import instance_rootfs

        for inst in client.instances():
            rootfs = instance_rootfs(inst)
            if rootfs and is_layer(rootfs):
                found[rootfs] = Listed(inst["name"], "lxd", rootfs, str(inst.get("status", "?")).upper())
    return sorted(found.values(), key=lambda c: (c.name, c.runtime))


def find_container(driver: Driver, args: argparse.Namespace, name: str) -> Listed:
    check_name(name, "container name")
    matches = [c for c in all_containers(driver, args) if c.name == name]
    if not matches:
        raise PycorError(f"no pycor container named {name!r}", "'pycor ls' lists them")
    if len(matches) > 1:
        raise PycorError(f"both LXC and LXD have a container named {name!r}", "use -P to pick the LXC one, or rename one")
    return matches[0]


def container_idmap(c: Listed) -> str | None:
    """The container's lxc.idmap lines (from its LXC config, or from LXD's record of its map)."""
    if c.runtime == "lxc":
        with open(os.path.join(c.lxcpath or "", c.name, "config"), encoding="utf-8") as f:
            return f.read()
    client = lxd_client()
    inst = client.instance(c.name) if client else None
    raw = (inst or {}).get("config", {}).get("volatile.idmap.current") or (inst or {}).get("config", {}).get("volatile.last_state.idmap")
    if not raw:
        return None
    lines = []
    for e in json.loads(raw):
        for kind, flag in (("u", "Isuid"), ("g", "Isgid")):
            if e.get(flag):
                lines.append(f"lxc.idmap = {kind} {e['Nsid']} {e['Hostid']} {e['Maprange']}")
    return "\n".join(lines)


def require_stopped(c: Listed, what: str) -> None:
    if c.state != "STOPPED":
        raise PycorError(f"container {c.name} is {c.state.lower()}: pycor {what} needs it stopped",
                         f"stop it first ({'lxc-stop -n ' + c.name if c.runtime == 'lxc' else 'lxc stop ' + c.name})")


def used_versions(driver: Driver, args: argparse.Namespace) -> dict[str, set[str]]:
    """base -> versions some container uses: running ones, pinned ones (stopped ones follow current)."""
    used: dict[str, set[str]] = {}
    for state in driver.running_states():
        used.setdefault(state.base, set()).add(state.version)
    for c in all_containers(driver, args, with_state=False):
        try:
            meta = driver.volume_meta(c.rootfs)
        except PycorError:
            continue
        if meta.pin:
            used.setdefault(meta.base, set()).add(meta.pin)
    return used


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
    elif args.from_export:
        from .cli_hosts import import_from_export

        v = import_from_export(store, args.name, args.from_export)
    else:
        include = [p for item in args.include for p in item.split(",") if p]
        v = imports.import_debootstrap(store, args.name, args.debootstrap, args.variant, include, progress)
    print(f"base {args.name}: version {v.version}, {human_size(v.size)} in {store.root}")
    client = lxd_client()
    if client is not None and client.has_profile():  # 'pycor lxd init' was run: keep LXD's images in step
        client.ensure_image(args.name)
        print(f"LXD image pycor/{args.name} added")


def cmd_base_ls(args: argparse.Namespace, driver: Driver) -> None:
    store = driver.store
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
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


def cmd_base_versions(args: argparse.Namespace, driver: Driver) -> None:
    from .digest import recorded
    from .versions import SQUASH_ADVISED_DEPTH

    store = driver.store
    name = check_name(args.name, "base name")
    current = store.current(name)
    used = used_versions(driver, args).get(name, set())
    rows = [{
        "version": v.version, "current": v.version == current, "parent": v.parent, "depth": store.depth(name, v.version),
        "size": v.size, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created)),
        "in_use": v.version in used or v.version == current, "source": v.source,
        "digest": recorded(store, name, v.version) or "",  # empty: published before digests ('pycor base verify' records it)
    } for v in store.versions(name)]
    if args.format != "json":
        for r in rows:
            r["size"] = human_size(r["size"])
            r["version"] = f"{r['version']}{' *' if r['current'] else ''}"
            r["digest"] = r["digest"][:12] or "-"
    emit(args, rows, [("version", "VERSION"), ("parent", "PARENT"), ("depth", "LAYERS"), ("size", "SIZE"),
                      ("created", "CREATED"), ("digest", "DIGEST"), ("source", "SOURCE")])
    depth = store.depth(name, current)
    if args.format != "json" and depth >= SQUASH_ADVISED_DEPTH:
        print(f"version {current} stacks {depth} layers: 'pycor base squash {name}' folds them into one", file=sys.stderr)


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

    removed = gc(driver.store, lambda: used_versions(driver, args))
    for base, version in removed:
        print(f"removed {base} version {version}")
    if not removed:
        print("nothing to remove: every version is current or in use")
    with driver.store.lock():
        driver.release_views()


def cmd_base_rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "base name")
    extra = [c.registration() for c in all_containers(driver, args, with_state=False)]
    driver.delete_base(name, extra)
    client = lxd_client()
    if client is not None:
        client.remove_image(name)
    print(f"base {args.name} removed")


# -- containers ------------------------------------------------------------------
def cmd_create(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    driver.store.require(check_name(args.base, "base name"))
    if args.runtime == "lxd" and (args.adopt or args.dir):
        raise PycorError("--adopt and --dir are for LXC containers", "drop them, or use --runtime lxc")
    if args.adopt and args.pin:
        raise PycorError("--adopt keeps the layer's own pin: --pin does not go with it", "change the pin afterwards with 'pycor pin'")
    if args.runtime == "lxd":
        client = lxd_client()
        if client is None:
            raise PycorError("LXD is not running here", "start LXD, or create an LXC container (--runtime lxc)")
        if client.instance(name) is not None:
            raise PycorError(f"LXD instance {name!r} already exists", "pick another name, or 'pycor rm' it first")
        lxd_init(client, driver)
        client.create(name, args.base)
        print(f"container {name} created on base {args.base} (lxc start {name})")
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
               unprivileged=args.unprivileged, adopt=args.adopt, rootfs=args.dir, check=check_layer)
    print(f"container {name} {'re-created around its layer' if args.adopt else 'created'} on base {args.base} "
          f"(lxc-start -n {name}{'' if not args.lxcpath else ' -P ' + lxcpath})")


def cmd_ls(args: argparse.Namespace, driver: Driver) -> None:
    rows = []
    for c in all_containers(driver, args):
        try:
            meta = driver.volume_meta(c.rootfs)
        except PycorError:
            continue
        known = driver.store.exists(meta.base)
        rows.append({
            "name": c.name,
            "runtime": c.runtime,
            "base": meta.base,
            "version": driver.volume_version(c.name, c.rootfs, meta, c.state == "RUNNING") if known else "-",
            "pinned": meta.pin is not None,
            "state": c.state,
            "changes": disk_usage(os.path.join(c.rootfs, UPPER)),
            "lxcpath": c.lxcpath,
        })
    if args.format != "json":
        for r in rows:
            r["changes"] = human_size(r["changes"])
    emit(args, rows, [("name", "NAME"), ("runtime", "RUNTIME"), ("base", "BASE"), ("version", "VERSION"),
                      ("state", "STATE"), ("changes", "CHANGES")])


def cmd_pin(args: argparse.Namespace, driver: Driver) -> None:
    from .layer import LayerMeta, write_meta
    from .names import check_version

    c = find_container(driver, args, args.name)
    meta = driver.volume_meta(c.rootfs)
    if args.version:
        version = check_version(args.version)
        driver.store.version(meta.base, version)
    else:  # where it runs now, else where it would start
        version = driver.volume_version(c.name, c.rootfs, meta, c.state == "RUNNING")
    write_meta(c.rootfs, LayerMeta(meta.base, version, meta.based_on, meta.digest))
    print(f"container {c.name} pinned to {meta.base} version {version}")


def cmd_unpin(args: argparse.Namespace, driver: Driver) -> None:
    from .layer import LayerMeta, write_meta

    c = find_container(driver, args, args.name)
    meta = driver.volume_meta(c.rootfs)
    write_meta(c.rootfs, LayerMeta(meta.base, None, meta.based_on, meta.digest))
    print(f"container {c.name} follows {meta.base} (version {driver.store.current(meta.base)} at its next start)")


def cmd_rollout(args: argparse.Namespace, driver: Driver) -> None:
    from .rollout import rollout

    base = check_name(args.base, "base name")
    driver.store.require(base)
    outcomes = rollout(driver, base, all_containers(driver, args), args.batch, args.check, lxd_client(),
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
    meta = driver.volume_meta(c.rootfs)
    version = driver.volume_version(c.name, c.rootfs, meta, c.state == "RUNNING")
    idmap = IdMap.parse_lxc_config(container_idmap(c) or "")
    with layer.OpenLayer(c.rootfs) as lay:
        changes = diff_layer(lay.upper_fd, driver.store.lower_stack(meta.base, version), None if idmap.is_empty else idmap.check())
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
    require_stopped(c, "commit")
    v = commit(driver.store, c.rootfs, container_idmap(c), args.as_base and target, args.to_base and target)
    print(f"container {c.name} committed as base {target} version {v.version} ({human_size(v.size)})")
    client = lxd_client()
    if args.as_base and client is not None and client.has_profile():
        client.ensure_image(target)


def cmd_reset(args: argparse.Namespace, driver: Driver) -> None:
    from .versions import reset

    c = find_container(driver, args, args.name)
    require_stopped(c, "reset")
    reset(c.rootfs)
    print(f"container {c.name}: changes discarded; it runs on its base as new")


def cmd_doctor(args: argparse.Namespace, driver: Driver) -> None:
    from .doctor import run_checks

    results = run_checks(driver.store)
    if args.format == "json":
        emit(args, [r.to_json() for r in results], [])
    else:
        for r in results:
            print(f"{'ok ' if r.ok else 'MISS'} {r.name}: {r.detail}" + ("" if r.ok or not r.fix else f"\n     fix: {r.fix}"))
    if any(not r.ok and r.required for r in results):
        raise PycorError("pycor cannot work here until the misses marked required are fixed")


def cmd_rm(args: argparse.Namespace, driver: Driver) -> None:
    name = check_name(args.name, "container name")
    lxcpath = lxcpath_of(args)
    client = lxd_client() if args.runtime != "lxc" else None
    if args.runtime == "lxd" or (not lxc.exists(name, lxcpath) and client is not None and client.instance(name) is not None):
        if client is None:
            raise PycorError("LXD is not running here", "start LXD first")
        inst = client.instance(name)
        if inst is None:
            raise PycorError(f"no LXD instance {name!r}", "'pycor ls' lists them")
        if str(inst.get("status")).lower() != "stopped":
            if not args.force:
                raise PycorError(f"container {name!r} is running", f"stop it first (lxc stop {name}) or use --force")
            client.set_state(name, "stop", force=True)
        client.delete(name)
    else:
        lxc.destroy(name, lxcpath, args.force)
    print(f"container {name} removed")


def lxd_init(client, driver: Driver) -> list[str]:  # type: ignore[no-untyped-def]
    """The overlay profile and one image per base; safe to repeat."""
    from .store import hooks_dir
    from .template import hook_lines

    done = []
    if client.ensure_profile("\n".join(hook_lines(hooks_dir(), driver.store))):
        done.append("profile overlay written")
    for base in driver.store.base_names():
        if client.ensure_image(base):
            done.append(f"image pycor/{base} added")
    return done


def cmd_lxd_init(args: argparse.Namespace, driver: Driver) -> None:
    client = lxd_client()
    if client is None:
        raise PycorError("LXD is not running here", "start it (lxd --group root &; lxd waitready; lxd init --auto) and run this again")
    for line in lxd_init(client, driver) or ["LXD already set up: profile overlay and an image per base"]:
        print(line)


def cmd_install(args: argparse.Namespace, driver: Driver) -> None:
    from .install import install

    for path in install(args.hooks_dir, args.templates_dir):
        print(f"installed {path}")


# -- parser -----------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    from .store import hooks_dir, templates_dir

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
    src.add_argument("--from-export", metavar="FILE", help="versions exported by 'pycor base export' on another host ('-': stdin)")
    src.add_argument("--debootstrap", metavar="SUITE", help="a Debian suite, from the mirror apt uses here")
    imp.add_argument("--variant", default="minbase", help="debootstrap --variant (default: minbase)")
    imp.add_argument("--include", action="append", default=[], metavar="PKGS", help="debootstrap --include (comma-separated)")
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
    cr.add_argument("--runtime", choices=("lxc", "lxd"), default="lxc", help="LXC (default) or LXD (always unprivileged)")
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
    rm.add_argument("--runtime", choices=("lxc", "lxd"), help="which runtime's container (default: the one that has it)")
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
    doc.set_defaults(func=cmd_doctor)

    lxd = sub.add_parser("lxd", help="LXD setup").add_subparsers(dest="lxd_command", required=True, metavar="COMMAND")
    lxd.add_parser("init", help="create the 'overlay' profile and an image pycor/BASE per base").set_defaults(func=cmd_lxd_init)

    from .cli_moves import add_commands

    add_commands(sub, base, fmt, where)
    from . import cli_hosts; cli_hosts.add_commands(sub, base, fmt, where)  # noqa: E702 (one line to merge)

    ins = sub.add_parser("install", help="install the LXC hooks and template")
    ins.add_argument("--hooks-dir", default=hooks_dir(), help="default: $PYCOR_HOOKS_DIR, 'hooks_dir =' in /etc/pycor/pycor.conf, /usr/share/lxc/hooks")
    ins.add_argument("--templates-dir", default=templates_dir(), help="default: $PYCOR_TEMPLATES_DIR, 'templates_dir =', /usr/share/lxc/templates")
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
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"pycor: error: {e.strerror or e}:{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pycor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
