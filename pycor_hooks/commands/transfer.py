"""pycor base export and base verify: bases that move between hosts (import: `base import --from-export`)."""

from __future__ import annotations

import argparse
import os
import sys

from ..driver import Driver
from ..errors import Damaged, PycorError
from ..names import check_name, check_version


def base_export(args: argparse.Namespace, driver: Driver) -> None:
    from .. import export

    name = check_name(args.name, "base name")
    version = check_version(args.version) if args.version else None
    since = check_version(args.since) if args.since else None
    if args.output == "-":
        if sys.stdout.isatty():
            raise PycorError("refusing to write an export to a terminal", "use -o FILE, or pipe it: -o - | ssh HOST pycor base import ...")
        header = export.export_base(driver.store, name, sys.stdout.buffer, version, since)
    else:
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


def base_verify(args: argparse.Namespace, driver: Driver) -> None:
    from ..digest import verify

    name = check_name(args.name, "base name")
    found = verify(driver.store, name, check_version(args.version) if args.version else None)
    out = sys.stderr if found.findings else sys.stdout
    for f in found.findings:
        print(f"base {name} version {f.version}: {f.problem}")
    if not found.findings:
        print(f"base {name} version {found.version}: intact, digest {found.digest}")
    lines = f"the base's {len(found.lxc)} LXC config line(s) (base.json)"
    print(f"  checked: {found.layers} layer(s), each path's type, mode, owner, xattrs, link target, device numbers and "
          "content, against the manifests the version digests chain" + (f"; {lines}" if found.lxc and found.lxc_covered else ""),
          file=out)
    if not found.lxc_covered:
        print(f"  not covered: {lines}: this base's first version was given its digest before digests covered them",
              file=out)
    print("  not covered: the dates, sizes and sources version.json records", file=out)
    if found.findings:
        raise Damaged(f"base {name} version {found.version} does not match its recorded digest",
                      f"import it again from a good copy ('pycor base import {name} --from-export FILE' into a new store "
                      "or base name), or publish a new version over it")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "base export":
        p.add_argument("name")
        p.add_argument("--version", metavar="V", help="default: the current version")
        p.add_argument("--since", metavar="V0", help="only what a host that has version V0 lacks")
        p.add_argument("-o", "--output", required=True, metavar="FILE", help="'-': standard output")
        p.set_defaults(func=base_export)
    elif command == "base verify":
        p.add_argument("name")
        p.add_argument("version", nargs="?", help="default: the current version")
        p.set_defaults(func=base_verify)
