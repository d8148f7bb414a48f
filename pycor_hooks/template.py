"""The LXC template: `lxc-create -t pycor -n NAME -- --base BASE`.

lxc-create makes the container directory, writes LXC's default config
(network included) and the rootfs path, then runs us with --path, --name,
--rootfs (and --mapped-uid/--mapped-gid when run unprivileged). We add the
pycor hooks and LXC's common includes to the config and create the layer.
If we fail, lxc-create removes the container: nothing is left half-made.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .driver import Driver
from .errors import PycorError
from .layer import rootfs_dir
from .names import check_name, check_version
from .store import DEFAULT_STORE, Store

LXC_CONFIG_DIR = "/usr/share/lxc/config"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lxc-pycor", description="LXC template: a container on a shared pycor base")
    p.add_argument("--path", required=True, help="container directory (from lxc-create)")
    p.add_argument("--name", required=True, help="container name (from lxc-create)")
    p.add_argument("--rootfs", help="rootfs directory (from lxc-create)")
    p.add_argument("--mapped-uid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mapped-gid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base", "-b", required=True, help="the pycor base to run on")
    p.add_argument("--pin", help="stay on this version of the base instead of following 'current'")
    p.add_argument("--unprivileged", action="store_true",
                   help="map container root to root's subordinate ids (/etc/subuid, else 100000:65536)")
    p.add_argument("--store", help="pycor store (default: $PYCOR_STORE, /etc/pycor/pycor.conf, /var/lib/pycor)")
    return p


def hook_lines(hooks_dir: str, store: Store) -> list[str]:
    extra = "" if store.root == DEFAULT_STORE else f" --store {shlex.quote(store.root)}"
    # LXC runs hook lines through /bin/sh: quote what could hold spaces.
    return [
        f"lxc.hook.{hook} = {shlex.quote(os.path.join(hooks_dir, 'pycor-' + hook))}{extra}"
        for hook in ("pre-start", "pre-mount", "post-stop")
    ]


def read_config_keys(path: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def missing_links(keys: dict[str, list[str]]) -> list[str]:
    """Network links named in the config that do not exist on this host now."""
    links = [v for k, vs in keys.items() if k.startswith("lxc.net.") and k.endswith(".link") for v in vs]
    return [link for link in links if not os.path.exists(f"/sys/class/net/{link}")]


def subordinate_range(path: str, user: str = "root") -> tuple[int, int]:
    """The first subordinate id range of user in /etc/subuid or /etc/subgid, else 100000:65536."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == user and fields[1].isdigit() and fields[2].isdigit():
                    return int(fields[1]), int(fields[2])
    except FileNotFoundError:
        pass
    return 100000, 65536


def idmap_lines(keys: dict[str, list[str]], unprivileged: bool) -> list[str]:
    """lxc.idmap lines to add: none if LXC's default config already maps ids, or if privileged."""
    if keys.get("lxc.idmap") or not unprivileged:
        return []
    uid, uids = subordinate_range("/etc/subuid")
    gid, gids = subordinate_range("/etc/subgid")
    return [f"lxc.idmap = u 0 {uid} {uids}", f"lxc.idmap = g 0 {gid} {gids}"]


def mapped_root(keys: dict[str, list[str]], extra: list[str]) -> tuple[int, int]:
    """Host uid and gid of container root under the config's idmap (0, 0 when privileged)."""
    from .idmap import IdMap

    text = "\n".join([f"lxc.idmap = {v}" for v in keys.get("lxc.idmap", [])] + extra)
    idmap = IdMap.parse_lxc_config(text)
    if idmap.is_empty:
        return 0, 0
    return idmap.check().root()


def config_lines(name: str, rootfs: str, base_lxc: list[str], hooks_dir: str, store: Store,
                 keys: dict[str, list[str]], idmap: list[str]) -> list[str]:
    lines = ["", f"# pycor: this container runs on a shared base; its own changes live in {rootfs}/.pycor"]
    if "lxc.rootfs.path" not in keys:
        lines.append(f"lxc.rootfs.path = dir:{rootfs}")
    for conf in ["common.conf"] + (["userns.conf"] if idmap or keys.get("lxc.idmap") else []):
        path = os.path.join(LXC_CONFIG_DIR, conf)
        if os.path.exists(path):
            lines.append(f"lxc.include = {path}")
    lines.extend(idmap)
    lines.append(f"lxc.uts.name = {name}")
    lines.extend(hook_lines(hooks_dir, store))
    lines.extend(base_lxc)
    return lines


def run(argv: list[str], hooks_dir: str) -> None:
    args = parser().parse_args(argv)
    name = check_name(args.name, "container name")
    base = check_name(args.base, "base name")
    pin = check_version(args.pin) if args.pin else None
    store = Store(args.store)
    store.require(base)
    if pin:
        store.version(base, pin)
    rootfs = rootfs_dir(args.rootfs or os.path.join(args.path, "rootfs"))
    os.makedirs(rootfs, mode=0o755, exist_ok=True)
    config = os.path.join(args.path, "config")
    keys = read_config_keys(config) if os.path.exists(config) else {}
    for link in missing_links(keys):
        print(
            f"lxc-pycor: warning: network link {link!r} from LXC's default config does not exist now; "
            "the container will not start until it does (start lxc-net, or create with lxc.net.0.type = empty)",
            file=sys.stderr,
        )
    base_lxc = store.base(base).lxc
    idmap = idmap_lines(keys, args.unprivileged)
    uid, gid = mapped_root(keys, idmap)
    if args.mapped_uid is not None:  # lxc-create run by an unprivileged user
        uid, gid = args.mapped_uid, args.mapped_gid if args.mapped_gid is not None else args.mapped_uid
    if uid:
        # Container root must reach its rootfs: LXC needs the same of the container directory.
        os.chown(args.path, uid, gid, follow_symlinks=False)
        os.chmod(args.path, 0o770)
    lxcpath = os.path.dirname(os.path.abspath(args.path))
    Driver(store).create_volume(name, rootfs, base, pin, uid, gid, runtime="lxc", lxcpath=lxcpath)
    with open(config, "a", encoding="utf-8") as f:
        f.write("\n".join(config_lines(name, rootfs, base_lxc, hooks_dir, store, keys, idmap)) + "\n")


def main(argv: list[str], hooks_dir: str) -> int:
    try:
        run(argv, hooks_dir)
        return 0
    except (PycorError, OSError) as e:
        print(f"lxc-pycor: error: {e}", file=sys.stderr)
        return 1
