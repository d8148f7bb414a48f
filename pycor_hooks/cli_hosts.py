"""The pycor commands that move bases between hosts: base export, base verify, base import --from-export.

Thin front ends over digest.py and export.py: parse, call, print.
"""

from __future__ import annotations

import argparse
import sys

from .driver import Driver
from .errors import Damaged, PycorError
from .names import check_name, check_version
from .store import Store, Version


def import_from_export(store: Store, name: str, source: str) -> Version:
    """Import an export file ('-': stdin); returns the export's top version as now stored here."""
    from . import export

    if source == "-":
        done = export.import_export(store, name, sys.stdin.buffer)
    else:
        try:
            f = open(source, "rb")
        except OSError as e:
            raise PycorError(f"cannot read export {source}: {e.strerror}", "make one with 'pycor base export NAME -o FILE'") from None
        with f:
            done = export.import_export(store, name, f)
    if not done:
        raise Damaged(f"the export {source} holds no version", "export a version with 'pycor base export NAME'")
    imported = [n for n, how in done if how == "imported"]
    print(f"base {name}: imported version(s) {', '.join(imported) or 'none'}; "
          f"already here: {', '.join(n for n, how in done if how == 'present') or 'none'}", file=sys.stderr)
    return store.version(name, done[-1][0])


def cmd_base_export(args: argparse.Namespace, driver: Driver) -> None:
    from . import export

    name = check_name(args.name, "base name")
    version = check_version(args.version) if args.version else None
    since = check_version(args.since) if args.since else None
    if args.output == "-":
        if sys.stdout.isatty():
            raise PycorError("refusing to write an export to a terminal", "use -o FILE, or pipe it: -o - | ssh HOST pycor base import ...")
        header = export.export_base(driver.store, name, sys.stdout.buffer, version, since)
    else:
        import os

        tmp = f"{args.output}.part{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                header = export.export_base(driver.store, name, f, version, since)
            os.rename(tmp, args.output)  # a file that exists is a whole export
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    numbers = [v["version"] for v in header["versions"]]
    top = header["versions"][-1] if header["versions"] else None
    print(f"base {name}: exported version(s) {', '.join(numbers) or 'none'}"
          + (f" (over version {since})" if since else "")
          + (f"; version {top['version']} digest {top['digest']}" if top else ""), file=sys.stderr)


def cmd_base_verify(args: argparse.Namespace, driver: Driver) -> None:
    from .digest import verify

    name = check_name(args.name, "base name")
    version, digest, findings = verify(driver.store, name, check_version(args.version) if args.version else None)
    if findings:
        for f in findings:
            print(f"base {name} version {f.version}: {f.problem}")
        raise Damaged(f"base {name} version {version} does not match its recorded digest",
                      f"import it again from a good copy ('pycor base import {name} --from-export FILE' into a new store "
                      "or base name), or publish a new version over it")
    print(f"base {name} version {version}: intact, digest {digest}")


def add_commands(sub, base, fmt: argparse.ArgumentParser, where: argparse.ArgumentParser) -> None:  # type: ignore[no-untyped-def]
    ex = base.add_parser("export", help="write a base version and the layers below it to a file or stream, for another host")
    ex.add_argument("name")
    ex.add_argument("--version", metavar="V", help="default: the current version")
    ex.add_argument("--since", metavar="V0", help="only what a host that has version V0 lacks")
    ex.add_argument("-o", "--output", required=True, metavar="FILE", help="'-': standard output")
    ex.set_defaults(func=cmd_base_export)
    ve = base.add_parser("verify", help="recompute a version's content digest and name the first difference")
    ve.add_argument("name")
    ve.add_argument("version", nargs="?", help="default: the current version")
    ve.set_defaults(func=cmd_base_verify)
