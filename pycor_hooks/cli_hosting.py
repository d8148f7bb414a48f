"""What a hosting provider needs: disk quotas, volumes, ephemeral containers.

`pycor create ... --size 10GiB --volume /var/lib/postgresql --ephemeral`,
`pycor set NAME size=...`, the quota column of `pycor ls`, and the template's
side of the same options (lxc-create -t pycor -B btrfs -- --size ...).
Thin front ends over quota.py and volumes.py: parse, call, print.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from . import layer, quota, volumes
from .driver import Driver
from .errors import Conflict, PycorError, Unsupported


# -- pycor create: checked in full before lxc-create runs ------------------------------
def add_create_options(cr: argparse.ArgumentParser) -> None:
    cr.add_argument("--size", metavar="SIZE", help="limit the container's writes (10GiB, 512MiB): a btrfs qgroup or "
                    "project quota; with --ephemeral, the size of its in-memory layer")
    cr.add_argument("--volume", action="append", default=[], metavar="PATH",
                    help="a directory at PATH that bypasses the overlay (repeatable), kept in the container's directory")
    cr.add_argument("--ephemeral", action="store_true",
                    help="changes live in memory; the container is destroyed when it stops (lxc.ephemeral = 1)")


def create_args(args: argparse.Namespace, lxcpath: str) -> tuple[str | None, list[str]]:
    """(lxc-create backing store or None, template arguments) for --size, --volume, --ephemeral; refuses bad input first."""
    size = quota.parse_size(args.size) if args.size else None
    paths = volumes.check_paths(args.volume)
    refuse_with_adopt(args)
    if args.runtime != "lxc" and paths:
        raise PycorError("--volume is for LXC containers: under LXD a custom volume does the same",
                         "'lxc storage volume create default VOL' and 'lxc config device add NAME VOL disk "
                         "pool=default source=VOL path=/var/lib/postgresql' (see README)")
    backing = None
    if size and not args.ephemeral and args.runtime == "lxc":  # LXD: checked against its pool (lxd_create)
        os.makedirs(lxcpath, exist_ok=True)
        kind = quota.require(lxcpath)
        if kind == "btrfs":
            if args.dir:
                raise PycorError("--size with --dir: the rootfs must be a btrfs subvolume that lxc-create makes",
                                 "drop --dir (the rootfs then lives in LXCPATH/NAME) or drop --size")
            backing = "btrfs"
    targs = [f"--volume={p}" for p in paths]
    if size:
        targs.append(f"--size={size}")
    if args.ephemeral:
        targs.append("--ephemeral")
    return backing, targs


def refuse_with_adopt(args: argparse.Namespace) -> None:
    if getattr(args, "adopt", False) and (args.size or args.volume or args.ephemeral):
        raise PycorError("--adopt keeps the layer as it was: --size, --volume and --ephemeral do not go with it",
                         "adopt it first, then 'pycor set NAME size=...' for a limit")


# -- LXD: the daemon's own root disk size and ephemeral flag ------------------------------
def lxd_root_device(client, name: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """The root disk device an instance has (or, before it exists, the default profile's)."""
    if name is None:
        return dict(client.request("GET", "/1.0/profiles/default").get("devices", {}).get("root") or {})
    return dict((client.instance(name) or {}).get("expanded_devices", {}).get("root") or {})


def lxd_check_size(client, root: dict) -> None:  # type: ignore[no-untyped-def]
    """Refuse a size LXD's pool cannot enforce: a dir pool limits only with project quotas."""
    pool = root.get("pool")
    if not pool:
        raise PycorError("the LXD profile 'default' has no root disk device with a pool", "add one: lxc profile device add default root disk path=/ pool=POOL")
    info = client.request("GET", f"/1.0/storage-pools/{pool}")
    if info.get("driver") == "dir" and quota.backend(str(info.get("config", {}).get("source", "/")))[0] != "project":
        raise Unsupported(f"LXD pool {pool!r} is a dir pool without project quotas: LXD cannot enforce a size there",
                          "use a btrfs (or zfs, lvm) pool: 'lxc storage create POOL btrfs' and "
                          "'lxc profile device set default root pool=POOL' (or 'lxc launch ... -s POOL -d root,size=...')")


def lxd_create(client, name: str, base: str, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """LXD's instance on the pycor image, with --size as its root device's size and --ephemeral as its flag."""
    size = quota.parse_size(args.size) if args.size else None
    root = lxd_root_device(client)
    if size:
        lxd_check_size(client, root)
    client.create(name, base)
    if not (size or args.ephemeral):
        return
    patch: dict = {"ephemeral": bool(args.ephemeral)}
    if size:
        patch["devices"] = {"root": {**root, "size": str(size)}}
    try:
        client.request("PATCH", f"/1.0/instances/{name}", patch)
    except PycorError:
        client.delete(name)  # made by this command a moment ago: nothing half-made is left
        raise


def daemon_client(c):  # type: ignore[no-untyped-def]
    """The LXD (or Incus) API that runs container c: its runtime's client where the CLI has one, else LXD's."""
    client = getattr(getattr(c, "rt", None), "client", None)
    if client is None:
        from .cli import lxd_client

        client = lxd_client()
    if client is None:
        raise PycorError(f"the daemon of container {c.name} is not running", "start it first")
    return client


def lxd_set_size(client, name: str, size: int | None) -> None:  # type: ignore[no-untyped-def]
    root = {k: v for k, v in lxd_root_device(client, name).items() if k != "size"}
    if size:
        lxd_check_size(client, root)
        root["size"] = str(size)
    client.request("PATCH", f"/1.0/instances/{name}", {"devices": {"root": root}})


# -- the template's side ------------------------------------------------------------
def template_apply(args: argparse.Namespace, rootfs: str, uid: int, gid: int) -> list[str]:
    """After the layer is made: record volumes and ephemeral, make volume dirs, set the quota. Config lines to add.

    The template calls it only when --volume, --ephemeral or --size is given."""
    paths = volumes.check_paths(args.volume)
    refuse_with_adopt(args)
    fd = layer.open_rootfs(rootfs)
    try:
        meta = layer.read_meta(fd, rootfs)
    finally:
        os.close(fd)
    if paths:
        volumes.create_dirs(rootfs, len(paths), uid, gid)
    layer.write_meta(rootfs, meta.but(volumes=paths, ephemeral=args.ephemeral,
                                      size=args.size if args.ephemeral else None))
    if args.size and not args.ephemeral:
        quota.set_limit(rootfs, args.size)
    return ["lxc.ephemeral = 1"] if args.ephemeral else []


# -- pycor set ------------------------------------------------------------------------
def cmd_set(args: argparse.Namespace, driver: Driver) -> None:
    from .cli import find_container

    c = find_container(driver, args, args.name)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key != "size":
            raise PycorError(f"unknown setting {item!r}", "pycor set NAME size=10GiB (or size= to remove the limit)")
        meta = driver.volume_meta(c.rootfs)
        size = quota.parse_size(value) if value else None
        if meta.ephemeral:
            layer.write_meta(c.rootfs, meta.but(size=size))
            print(f"container {c.name}: in-memory layer {'limited to ' + quota.human(size) if size else 'unlimited'} "
                  "from its next start")
            continue
        used = (quota.usage(c.rootfs) or (0, None))[0] if c.runtime == "lxc" else 0  # LXD checks its own
        if size and used > size:  # a layer over its limit cannot even mount its overlay (workdir writes)
            raise Conflict(f"container {c.name} already uses {quota.human(used)}, more than {quota.human(size)}",
                           "give a larger size, or free space in it first (a copy's size counts what it shares with its original)")
        if c.runtime != "lxc":
            lxd_set_size(daemon_client(c), c.name, size)
        else:
            quota.set_limit(c.rootfs, size)
        print(f"container {c.name}: {'limited to ' + quota.human(size) if size else 'no size limit'}")


def quota_cell(rootfs: str, meta: layer.LayerMeta, table: bool) -> object:
    """What `pycor ls` shows as a container's use against its limit."""
    if meta.ephemeral:
        return "memory" + (f"/{quota.human(meta.size)}" if meta.size and table else "") if table else \
            {"memory": True, "limit": meta.size}
    got = quota.usage(rootfs)
    if got is None:
        return "-" if table else None
    used, limit = got
    if not table:
        return {"used": used, "limit": limit}
    return f"{quota.human(used)}/{quota.human(limit) if limit else 'none'}"


def note_volumes(rootfs: str, what: str) -> None:
    """diff and commit see only upper: say which volumes they leave out."""
    try:
        fd = layer.open_rootfs(rootfs)
        try:
            paths = layer.read_meta(fd, rootfs).volumes
        finally:
            os.close(fd)
    except PycorError:
        return
    if paths:
        print(f"pycor {what}: volumes left out (they bypass the overlay): {', '.join(paths)}", file=sys.stderr)


def reset(rootfs: str) -> None:
    """versions.reset, also for a layer at its quota.

    reset makes fresh upper and work before dropping the old ones (a crash
    leaves either the old layer or the new); at the limit that mkdir fails
    with EDQUOT. Then the old upper's contents are removed first (by fd,
    never following a symlink) and reset runs again: a crash in between
    leaves some changes discarded, and running reset again finishes.
    """
    import errno
    import shutil

    from . import linux
    from .versions import reset as reset_layer

    try:
        reset_layer(rootfs)
        return
    except OSError as e:
        if e.errno not in (errno.EDQUOT, errno.ENOSPC):
            raise
    with layer.OpenLayer(rootfs) as lay:
        for fd in (lay.upper_fd, lay.work_fd):
            dfd = os.open(linux.fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for entry in os.listdir(dfd):
                    if stat.S_ISDIR(os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mode):
                        shutil.rmtree(entry, dir_fd=dfd)
                    else:
                        os.unlink(entry, dir_fd=dfd)
            finally:
                os.close(dfd)


def add_commands(sub, fmt: argparse.ArgumentParser, where: argparse.ArgumentParser) -> None:  # type: ignore[no-untyped-def]
    add_create_options(sub.choices["create"])
    sub.choices["doctor"].add_argument("-P", "--lxcpath", help="where the LXC containers live (quota check); default: lxc.lxcpath")
    st = sub.add_parser("set", help="change a container's settings: size=10GiB (disk quota), size= (no limit)", parents=[where])
    st.add_argument("name")
    st.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    st.set_defaults(func=cmd_set)


