"""pycor publish, file pull, file push: a stopped container as an image, and files in and out of it."""

from __future__ import annotations

import argparse
import os
import stat
import sys

from .. import layer, runtime
from ..driver import Driver
from ..errors import InUse, PycorError, Unsupported
from ..idmap import IdMap
from ..units import human_size
from ._common import add_lxcpath, find_container, note_pending, note_volumes, stopped


def publish(args: argparse.Namespace, driver: Driver) -> None:
    from ..publish import publish_flat, publish_layer

    c = find_container(driver, args)
    if not isinstance(c.rt, runtime.DaemonRuntime):
        raise Unsupported(f"container {c.name} runs under LXC: pycor publish makes LXD and Incus images",
                          f"make it a base instead ('pycor commit {c.name} --as NEWBASE'), or copy it ('lxc-copy -n {c.name} -N NEW')")
    client = c.rt.client
    idmap_text = c.rt.idmap(c.name)  # before the lock: the daemon may wait on a start that waits on it
    if args.flat:
        note_volumes(driver, c.rootfs, "publish")
    with stopped(driver, c, "publish") as held:
        lay = held.layer
        if args.flat:
            note_pending(c, "publish --flat")
            parsed = IdMap.parse_lxc_config(idmap_text or "")
            image, version = publish_flat(client, driver.store, c.name, lay, None if parsed.is_empty else parsed,
                                          args.alias)
            what = f"its whole system (base {lay.meta.base} version {version} and its changes)"
            how = f"{client.dialect.cli} launch {args.alias or image['fingerprint'][:12]} NAME  (no pycor needed)"
        else:
            layer.meta_owner_fixed(lay)  # a layer an older pycor wrote: its layer.json must be in the image
            meta = lay.meta
            image = publish_layer(client, c.name, meta, args.alias)
            what = f"its changes on base {meta.base} version {meta.based_on or '?'}"
            how = (f"{client.dialect.cli} launch {args.alias or image['fingerprint'][:12]} NAME  (where pycor has "
                   f"{meta.base} version {meta.based_on or '?'}; the image brings the profiles default and overlay)")
    print(f"container {c.name} published as image {args.alias or image['fingerprint'][:12]} "
          f"({human_size(int(image.get('size') or 0))}): {what}\n  {how}")


def _running_hint(c: runtime.Container, verb: str, path: str, other: str) -> str:
    if isinstance(c.rt, runtime.DaemonRuntime):
        cli = c.rt.client.dialect.cli
        return (f"{cli} file {verb} {c.name}{path} {other}" if verb == "pull"
                else f"{cli} file push {other} {c.name}{path}")
    return (f"lxc-attach -n {c.name} -- cat {path} > {other}" if verb == "pull"
            else f"lxc-attach -n {c.name} -- sh -c 'cat > {path}' < {other}")


def file_pull(args: argparse.Namespace, driver: Driver) -> None:
    from ..publish import container_path, copy_fd, pull

    c = find_container(driver, args)
    path = container_path(args.path)
    dest = args.dest or os.path.basename(path)
    if dest != "-" and os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(path))
    state = c.rt.state(c.name)
    if state != "STOPPED":
        raise InUse(f"container {c.name} is {state.lower()}: pycor file pull reads stopped containers",
                    f"ask its runtime: {_running_hint(c, 'pull', path, dest)}")
    tmp = f"{dest}.part{os.getpid()}"

    def sink(fd: int) -> None:
        if dest == "-":
            sys.stdout.flush()
            copy_fd(fd, sys.stdout.fileno())
            return
        with open(tmp, "wb") as f:
            copy_fd(fd, f.fileno())

    try:
        with stopped(driver, c, "file pull") as held:
            origin = pull(driver.store, c.name, held.layer, path, sink)
        if dest != "-":
            os.rename(tmp, dest)  # a file that exists is a whole one
    except BaseException:
        if dest != "-" and os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    if origin == "pushed":
        print(f"pycor file pull: {path} was pushed while {c.name} was stopped; it is in place from its next start",
              file=sys.stderr)


def file_push(args: argparse.Namespace, driver: Driver) -> None:
    from ..publish import container_path, push, shifted

    c = find_container(driver, args)
    path = container_path(args.path)
    state = c.rt.state(c.name)
    if state != "STOPPED":
        raise InUse(f"container {c.name} is {state.lower()}: pycor file push writes into stopped containers",
                    f"ask its runtime: {_running_hint(c, 'push', path, args.source)}")
    try:
        src = sys.stdin.fileno() if args.source == "-" else os.open(args.source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise PycorError(f"cannot read {args.source}: {e.strerror}", "give a file to push, or - for standard input") from None
    try:
        st = os.fstat(src)
        if args.source != "-" and not stat.S_ISREG(st.st_mode):
            raise PycorError(f"{args.source} is not a regular file", "push files one at a time")
        mode = int(args.mode, 8) if args.mode else (stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o644)
        idmap_text = c.rt.idmap(c.name)
        parsed = IdMap.parse_lxc_config(idmap_text or "")
        with stopped(driver, c, "file push") as held:
            lay = held.layer
            push(lay, src, path, args.uid, args.gid, mode, shifted(None if parsed.is_empty else parsed, lay.upper_fd))
    finally:
        if args.source != "-":
            os.close(src)
    print(f"pushed {args.source} to {path} of stopped container {c.name}: in place from its next start")


def _id(text: str) -> int:
    if text.isdigit() and int(text) < 1 << 32:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a uid or gid (a number from 0)")


def _mode(text: str) -> str:
    try:
        if 0 <= int(text, 8) <= 0o7777:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode (0644)")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    add_lxcpath(p)
    if command == "publish":
        p.description = ("Publish a stopped LXD or Incus container as an image. By default the image holds only the "
                         "container's changes and runs on pycor, where its base version is (launch it without "
                         "--profile: it brings default and overlay); with --flat it holds the whole merged system "
                         "and runs anywhere, without pycor. 'lxc publish' / 'incus publish' make the first kind too, "
                         "without the properties and profiles.")
        p.add_argument("name")
        p.add_argument("--alias", help="the image's alias")
        p.add_argument("--flat", action="store_true", help="the whole merged system, an ordinary image (no pycor needed)")
        p.set_defaults(func=publish)
    elif command == "file pull":
        p.description = ("Read a file of a stopped container as it will see it at its next start: what was pushed "
                         "into it since it stopped, else its base version merged with its changes.")
        p.add_argument("name")
        p.add_argument("path", help="the file's path in the container")
        p.add_argument("dest", nargs="?", help="where to write it (a file or a directory; - for standard output); "
                       "default: its name, here")
        p.set_defaults(func=file_pull)
    elif command == "file push":
        p.description = ("Put a file into a stopped container: it is in place from its next start (as a file "
                         "'lxc file push' puts into a stopped LXD or Incus container).")
        p.add_argument("source", help="the file to push (- for standard input)")
        p.add_argument("name")
        p.add_argument("path", help="its path in the container")
        p.add_argument("--uid", type=_id, default=0, help="its owner inside the container (default 0)")
        p.add_argument("--gid", type=_id, default=0, help="its group inside the container (default 0)")
        p.add_argument("--mode", type=_mode, help="octal (default: the source's)")
        p.set_defaults(func=file_push)
