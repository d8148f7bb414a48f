"""pycor base update, shell, edit, publish, discard: new versions made in a builder container."""

from __future__ import annotations

import argparse

from ..driver import Driver
from ..errors import PycorError
from ..names import check_name
from ._common import published


def base_update(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import update_base

    name = check_name(args.name, "base name")
    argv, keep_apt_lists = command_after_options(args.cmd, args.keep_apt_lists)
    v = update_base(driver.store, name, argv, keep_apt_lists=keep_apt_lists)
    if v is None:
        print(f"base {name}: the command changed nothing; current stays at version {driver.store.current(name)}")
    else:
        published(driver, name, v)


def command_after_options(rest: list[str], keep_apt_lists: bool) -> tuple[list[str], bool]:
    """The command after `--`, and the options given between NAME and `--` (argparse hands them over with the
    command: `pycor base update NAME --keep-apt-lists -- CMD`)."""
    if "--" not in rest:
        return rest, keep_apt_lists
    cut = rest.index("--")
    for option in rest[:cut]:
        if option != "--keep-apt-lists":
            raise PycorError(f"unknown option {option!r} before '--'", "pycor base update NAME [--keep-apt-lists] -- CMD [ARGS...]")
        keep_apt_lists = True
    return rest[cut + 1:], keep_apt_lists


def base_shell(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import shell_base

    name = check_name(args.name, "base name")
    published(driver, name, shell_base(driver.store, name, args.discard, args.keep_apt_lists))


def base_edit(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import edit_base

    name = check_name(args.name, "base name")
    lxcpath = edit_base(driver.store, name)
    print(f"base {name}: a builder runs on version {driver.store.current(name)}; provision it with LXC's tools, e.g.\n"
          f"  lxc-attach -n builder -P {lxcpath} -- sh -c 'apt-get update && apt-get -y install PACKAGE'\n"
          f"then 'pycor base publish {name}' (or 'pycor base discard {name}')")


def base_publish(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import publish_edit

    name = check_name(args.name, "base name")
    published(driver, name, publish_edit(driver.store, name, args.keep_apt_lists))


def base_discard(args: argparse.Namespace, driver: Driver) -> None:
    from ..versions import discard_edit

    name = check_name(args.name, "base name")
    discard_edit(driver.store, name)
    print(f"base {name}: edit discarded; current stays at version {driver.store.current(name)}")


def _keep_apt_lists(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-apt-lists", action="store_true", help="publish apt's package lists too (left out by default)")


def arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "base update":
        p.usage = "pycor base update NAME -- CMD [ARGS...]"
        p.add_argument("name")
        _keep_apt_lists(p)
        p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
        p.set_defaults(func=base_update)
    elif command == "base shell":
        _keep_apt_lists(p)
        p.add_argument("name")
        p.add_argument("--discard", action="store_true", help="publish nothing, whatever the exit status")
        p.set_defaults(func=base_shell)
    elif command == "base edit":
        p.add_argument("name")
        p.set_defaults(func=base_edit)
    elif command == "base publish":
        _keep_apt_lists(p)
        p.add_argument("name")
        p.set_defaults(func=base_publish)
    elif command == "base discard":
        p.add_argument("name")
        p.set_defaults(func=base_discard)
