"""The pycor command: what LXC, LXD and Incus cannot do themselves. Parse, call the driver, print.

Commands live in commands/ (one module per group of commands, listed with
their summaries in commands/__init__.py). A run imports only the module of
the command it runs; help at the top level lists the summaries without
importing any; anything the quick look at argv cannot place (an abbreviated
option, a man page, bash completion) gets the parser with every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .commands import GROUPS, commands_dict, top_level
from .driver import Driver
from .errors import PycorError
from .store import Store

_HELP: tuple[list[str], ...] = (["-h"], ["--help"], [])


def command_of(argv: list[str]) -> str | None:
    """The command argv runs ('create', 'base import'); '' when only top-level help or usage is asked for;
    None when argv must be parsed with every command built."""
    i = 0
    while i < len(argv) and (argv[i] == "--store" or argv[i].startswith("--store=")):
        i += 2 if argv[i] == "--store" else 1
    rest = argv[i:]
    if rest in _HELP:
        return ""
    word = rest[0] if rest and not rest[0].startswith("-") else None
    if word in GROUPS:
        if rest[1:] in _HELP:
            return ""
        word = f"{word} {rest[1]}" if not rest[1].startswith("-") else None
    return word if word in commands_dict else None


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: given argv, only its command's arguments are built (see command_of); else all of them."""
    wanted = command_of(argv) if argv is not None else None
    p = argparse.ArgumentParser(prog="pycor", description="LXC, LXD and Incus containers on one shared, read-only base")
    p.add_argument("--version", action="version", version=f"pycor {__version__}")
    p.add_argument("--store", help="store path (default: $PYCOR_STORE, 'store =' in /etc/pycor/pycor.conf, /var/lib/pycor)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {}
    for word in top_level():
        if word in GROUPS:
            groups[word] = sub.add_parser(word, help=GROUPS[word]).add_subparsers(
                dest=f"{word}_command", required=True, metavar="COMMAND")
        for name, info in commands_dict.items():
            head, _, tail = name.partition(" ")
            if head != word:
                continue
            cp = (groups[head] if tail else sub).add_parser(tail or head, help=info.summary)
            if wanted is None or wanted == name:
                importlib.import_module(f"{__package__}.commands.{info.module}").arguments(name, cp)
    return p


def _shown(text: str) -> str:
    """An error's text for the terminal: its own line ends kept, anything else a terminal acts on written out
    (a message may quote a name or a path from an export stream)."""
    from .names import printable

    return "\n".join(printable(line, 1 << 16) for line in text.split("\n"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    try:
        args.func(args, Driver(Store(args.store)))
        return 0
    except PycorError as e:
        print(f"pycor: error: {_shown(e.message)}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {_shown(e.hint)}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"pycor: error: {_shown(str(e.strerror or e))}:{_shown(where)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pycor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
