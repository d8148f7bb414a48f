"""The LXC template: `lxc-create -t pycor -n NAME -- --base BASE`.

lxc-create makes the container directory, writes LXC's default config
(network included) and the rootfs path, then runs us with --path, --name,
--rootfs (and --mapped-uid/--mapped-gid when run unprivileged). We add the
pycor hooks and LXC's common includes to the config and create the layer
(or, with --adopt, take over the layer already there).

If we fail, lxc-create removes the container directory and a `-B dir --dir`
rootfs (LXC 5.0.2), whatever they held before it ran. So a template that
finds data there from before (a container whose config was lost, a non-empty
--dir) never fails with it in place: without --adopt, or if adopting fails,
it first renames that data to a hidden sibling (.NAME.pycor-kept-TIME) and
says where it is.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from .driver import Driver
from .errors import Conflict, PycorError
from .layer import open_rootfs, read_meta, rootfs_dir
from .lxcconfig import quote, read_keys
from .spec import idmap_lines, lxc_lines, mapped_root, spec
from .store import Store

TYPE_CHECKING = False  # argparse and typing cost a create 10 ms; type checkers read this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any

# The template's options, one table for both parsers below: (flags, kind, help); kind is
# "value", "int", "flag" or "append"; help None: not shown. Required: --path, --name, --base.
OPTIONS: tuple[tuple[tuple[str, ...], str, str | None], ...] = (
    (("--path",), "value", "container directory (from lxc-create)"),
    (("--name",), "value", "container name (from lxc-create)"),
    (("--rootfs",), "value", "rootfs directory (from lxc-create)"),
    (("--mapped-uid",), "int", None),
    (("--mapped-gid",), "int", None),
    (("--base", "-b"), "value", "the pycor base to run on"),
    (("--pin",), "value", "stay on this version of the base instead of following 'current'"),
    (("--unprivileged",), "flag", "map container root to root's subordinate ids (/etc/subuid, else 100000:65536)"),
    (("--store",), "value", "pycor store (default: $PYCOR_STORE, /etc/pycor/pycor.conf, /var/lib/pycor)"),
    (("--adopt",), "flag", "re-create the container around the pycor layer already in its rootfs, keeping its changes"),
    (("--size",), "int", "bytes: a quota on the layer (btrfs subvolume or project quota); "
                         "with --ephemeral the size of its in-memory layer"),
    (("--volume",), "append", "a container path that bypasses the overlay (repeatable)"),
    (("--ephemeral",), "flag", "changes in memory; destroyed at stop (lxc.ephemeral = 1)"),
)
REQUIRED = ("--path", "--name", "--base")


def parser() -> argparse.ArgumentParser:
    """The argparse parser of OPTIONS: help, and every error message."""
    import argparse

    p = argparse.ArgumentParser(prog="lxc-pycor", description="LXC template: a container on a shared pycor base")
    actions: dict[str, dict[str, Any]] = {"value": {}, "int": {"type": int}, "flag": {"action": "store_true"}, "append": {"action": "append", "default": []}}
    for flags, kind, text in OPTIONS:
        p.add_argument(*flags, required=flags[0] in REQUIRED, help=argparse.SUPPRESS if text is None else text, **actions[kind])
    return p


def parse_args(argv: list[str]) -> Any:
    """OPTIONS from argv, as argparse reads them, without loading argparse (8 ms of a 35 ms create).

    Reads the plain forms lxc-create and pycor create pass (--opt VALUE,
    --opt=VALUE, flags); anything else (help, an abbreviation, a bad value,
    a missing option) goes to parser(), which answers as argparse does.
    """
    from types import SimpleNamespace

    kinds = {flag: (flags[0], kind) for flags, kind, _ in OPTIONS for flag in flags}
    values: dict[str, Any] = {flags[0]: [] if kind == "append" else False if kind == "flag" else None
                                 for flags, kind, _ in OPTIONS}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in kinds or (eq and value == "--"):  # argparse 3.11 drops a '--' value: leave it that oddity
            return parser().parse_args(argv)
        main, kind = kinds[flag]
        if kind == "flag":
            if eq:
                return parser().parse_args(argv)
            values[main] = True
            continue
        if not eq:
            if not rest or rest[0].startswith("-"):
                return parser().parse_args(argv)
            value = rest.pop(0)
        if kind == "int":
            try:
                values[main] = int(value)  # what argparse's type=int does
            except ValueError:
                return parser().parse_args(argv)
        elif kind == "append":
            values[main].append(value)
        else:
            values[main] = value
    if any(values[flag] is None for flag in REQUIRED):
        return parser().parse_args(argv)
    return SimpleNamespace(**{flag[2:].replace("-", "_"): v for flag, v in values.items()})


def missing_links(keys: dict[str, list[str]]) -> list[str]:
    """Network links named in the config that do not exist on this host now."""
    links = [v for k, vs in keys.items() if k.startswith("lxc.net.") and k.endswith(".link") for v in vs]
    return [link for link in links if not os.path.exists(f"/sys/class/net/{link}")]


# What lxc-create itself put in the container directory before it ran us.
LXC_CREATE_FILES = ("config", "partial")


def lxc_create_paths(argv: list[str]) -> tuple[str | None, str | None]:
    """--path and --rootfs as lxc-create passes them, read before any other parsing can fail."""
    found: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for opt in ("--path", "--rootfs"):
            if arg.startswith(opt + "="):
                found[opt] = arg[len(opt) + 1:]
            elif arg == opt and i + 1 < len(argv):
                found[opt] = argv[i + 1]
    path = found.get("--path")
    rootfs = found.get("--rootfs") or (os.path.join(path, "rootfs") if path else None)
    if rootfs and rootfs.split(":", 1)[0] in ("dir", "btrfs"):
        rootfs = rootfs.split(":", 1)[1]
    return path, rootfs


def _holds_data(path: str) -> bool:
    """A real directory (no symlink followed) with anything in it."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and bool(os.listdir(path))
    except FileNotFoundError:
        return False


def data_to_keep(path: str, rootfs: str) -> list[str]:
    """What lxc-create's failure cleanup would delete that existed before it ran.

    The container directory if it holds anything but lxc-create's own config
    and partial files and an empty rootfs; a rootfs outside it if not empty.
    """
    path, rootfs = os.path.abspath(path), os.path.abspath(rootfs)
    inside = os.path.commonpath([path, rootfs]) == path
    keep = []
    try:
        entries = os.listdir(path) if stat.S_ISDIR(os.lstat(path).st_mode) else []
    except FileNotFoundError:
        entries = []
    for entry in entries:
        # lxc-create makes an empty 'rootfs' here even when --dir puts the rootfs elsewhere
        if entry in LXC_CREATE_FILES or (entry == "rootfs" and os.path.isdir(os.path.join(path, entry))
                                         and not _holds_data(os.path.join(path, entry))):
            continue
        keep.append(path)
        break
    if not inside and _holds_data(rootfs):
        keep.append(rootfs)
    return keep


def keep_aside(path: str, drop: tuple[str, ...] = ()) -> str:
    """Rename path to a new hidden sibling (same filesystem, one rename) and return it.

    drop names files lxc-create made inside it in this run; they are removed
    so that moving the kept directory back restores exactly what was there.
    """
    parent, leaf = os.path.split(os.path.abspath(path))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        kept = os.path.join(parent, f".{leaf}.pycor-kept-{stamp}" + (f"-{n}" if n else ""))
        try:
            os.mkdir(kept, 0o700)  # claims the name; rename then replaces this empty directory
        except FileExistsError:
            continue
        os.rename(path, kept)
        for name in drop:
            try:
                os.unlink(os.path.join(kept, name))
            except FileNotFoundError:
                pass
        return kept
    raise PycorError(f"cannot find a free name to keep {path} aside in {parent}")


def put_back(moves: list[tuple[str, str]]) -> str:
    return " && ".join(f"mv {quote(kept)} {quote(orig)}" for orig, kept in moves)


def run(argv: list[str], hooks_dir: str) -> None:
    args = parse_args(argv)
    want = spec(args.name, args.base, pin=args.pin, unprivileged=args.unprivileged, adopt=args.adopt,
                size=args.size, volumes=args.volume, ephemeral=args.ephemeral)
    store = Store(args.store)
    store.require(want.base)
    if want.pin:
        store.version(want.base, want.pin)
    rootfs = rootfs_dir(args.rootfs or os.path.join(args.path, "rootfs"))
    os.makedirs(rootfs, mode=0o755, exist_ok=True)
    config = os.path.join(args.path, "config")
    keys = read_keys(config) if os.path.exists(config) else {}
    for link in missing_links(keys):
        print(
            f"lxc-pycor: warning: network link {link!r} from LXC's default config does not exist now; "
            "the container will not start until it does (start lxc-net, or create with lxc.net.0.type = empty)",
            file=sys.stderr,
        )
    base_lxc = store.base(want.base).lxc
    idmap = idmap_lines(keys, want.unprivileged)
    uid, gid = mapped_root(keys, idmap)
    if args.mapped_uid is not None:  # lxc-create run by an unprivileged user
        uid, gid = args.mapped_uid, args.mapped_gid if args.mapped_gid is not None else args.mapped_uid
    lxcpath = os.path.dirname(os.path.abspath(args.path))
    driver = Driver(store)
    if want.adopt:  # checked in full before anything is changed
        driver.adopt_volume(want.name, rootfs, want.base, uid, gid, runtime="lxc", lxcpath=lxcpath)
    if uid:
        # Container root must reach its rootfs: LXC needs the same of the container directory.
        os.chown(args.path, uid, gid, follow_symlinks=False)
        os.chmod(args.path, 0o770)
    if not want.adopt:
        driver.create_volume(want, rootfs, uid, gid, lxcpath=lxcpath)
    lines = lxc_lines(want, rootfs, base_lxc, hooks_dir, store.hook_arg, keys, idmap)
    with open(config, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def report(e: BaseException) -> None:
    """One 'error:' line, and a 'hint:' line, that 'pycor create' reads back from lxc-create's output."""
    message, hint = (e.message, e.hint) if isinstance(e, PycorError) else (str(e), None)
    if isinstance(e, OSError):
        message = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
    print(f"lxc-pycor: error: {message}", file=sys.stderr)
    if hint:
        print(f"lxc-pycor: hint: {hint}", file=sys.stderr)


def main(argv: list[str], hooks_dir: str) -> int:
    path, rootfs = lxc_create_paths(argv)
    keep = data_to_keep(path, rootfs) if path and rootfs else []
    adopt = "--adopt" in argv
    try:
        if keep and not adopt:
            raise Conflict(f"{' and '.join(keep)} already held data when lxc-create ran")
        run(argv, hooks_dir)
        return 0
    except BaseException as e:  # argparse's exit and Ctrl-C too: lxc-create's cleanup follows any failure
        if keep and path and rootfs:
            report(keep_before_failing(e, keep, path, rootfs, adopt))
            return 1
        if isinstance(e, (PycorError, OSError)):
            report(e)
            return 1
        raise


def keep_before_failing(e: BaseException, keep: list[str], path: str, rootfs: str, adopt: bool) -> PycorError:
    """Move what existed before lxc-create out of its cleanup's way; the error to report."""
    cause = e.message if isinstance(e, PycorError) else str(e) if isinstance(e, OSError) else "the template did not finish"
    path, rootfs = os.path.abspath(path), os.path.abspath(rootfs)
    try:
        moves = [(p, keep_aside(p, LXC_CREATE_FILES if p == path else ())) for p in keep]
    except OSError as err:
        return PycorError(f"{cause}; and {keep[0]} could not be moved out of lxc-create's way ({err.strerror}): "
                          "lxc-create deletes it when a template fails", "copy it away before running lxc-create again")
    return PycorError(f"{cause}; lxc-create deletes what it finds there when a template fails, so pycor moved it to "
                      f"{' and '.join(kept for _, kept in moves)}",
                      kept_hint(e if adopt else None, path, rootfs, moves))


def kept_hint(error: BaseException | None, path: str, rootfs: str, moves: list[tuple[str, str]]) -> str:
    """How to put kept data back, and adopt the pycor layer in it if there is one."""
    kept_rootfs = next((kept + rootfs[len(orig):] for orig, kept in moves
                        if rootfs == orig or rootfs.startswith(orig + "/")), rootfs)
    try:
        fd = open_rootfs(kept_rootfs)
        try:
            base = read_meta(fd, kept_rootfs).base
        finally:
            os.close(fd)
    except PycorError:
        return f"it holds no valid pycor layer; put it back when this name is free: {put_back(moves)}"
    name = os.path.basename(path)
    first = f"{error.hint}; then " if isinstance(error, PycorError) and error.hint else ""
    return (f"{first}to re-create the container around its pycor layer, keeping its changes: {put_back(moves)} && "
            f"pycor create {name} --base {base} --adopt" + (f" --dir {quote(rootfs)}" if rootfs != os.path.join(path, "rootfs") else ""))
