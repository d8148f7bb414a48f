"""Every pycor command: its name, the module that implements it, and a one-line summary.

The CLI imports only the module of the command it runs (as pip's command
registry does): help lists the summaries from here without importing any
command. A command module owns its command's options (arguments(name,
parser)) and what it does (the function it sets as the parser's `func`);
modules share helpers through _common.py, which never imports a command.
"""

from __future__ import annotations


class CommandInfo:
    __slots__ = ("module", "summary")

    def __init__(self, module: str, summary: str) -> None:
        self.module, self.summary = module, summary


# Commands that only group others: `pycor base import ...`.
GROUPS: dict[str, str] = {
    "base": "bases and their versions",
    "lxd": "LXD setup",
    "incus": "Incus setup",
    "file": "files in and out of a stopped container",
}

# In the order `pycor -h` lists them; a group's commands are "GROUP NAME".
commands_dict: dict[str, CommandInfo] = {
    "base import": CommandInfo("bases", "import a root filesystem as a new base"),
    "base ls": CommandInfo("bases", "list bases"),
    "base versions": CommandInfo("bases", "list a base's versions"),
    "base update": CommandInfo("builds", "run a command in a builder container and publish a new version"),
    "base shell": CommandInfo("builds", "a shell in a builder on the current version: exit 0 publishes, anything else discards"),
    "base edit": CommandInfo("builds", "keep a builder running on the current version until publish or discard"),
    "base publish": CommandInfo("builds", "publish what an edit session changed as the next version"),
    "base discard": CommandInfo("builds", "end an edit session without publishing"),
    "base squash": CommandInfo("bases", "fold the current version's layers into one"),
    "base gc": CommandInfo("bases", "remove versions neither current nor used by a container"),
    "base hold": CommandInfo("bases", "keep a base version through gc (for copies gc cannot see)"),
    "base unhold": CommandInfo("bases", "let gc remove a held version again"),
    "base rm": CommandInfo("bases", "remove a base no container uses"),
    "base export": CommandInfo("transfer", "write a base version and the layers below it to a file or stream, for another host"),
    "base verify": CommandInfo("transfer", "recompute a version's content digest and name the first difference"),
    "create": CommandInfo("containers", "create a container on a base (lxc-create -t pycor, or LXD's or Incus's init)"),
    "ls": CommandInfo("containers", "list pycor containers"),
    "rm": CommandInfo("containers", "remove a container and its changes"),
    "set": CommandInfo("containers", "change a container's settings: size=10GiB (disk quota), size= (no limit)"),
    "pin": CommandInfo("changes", "keep a container on one base version"),
    "unpin": CommandInfo("changes", "let a container follow its base's current version"),
    "diff": CommandInfo("changes", "what a container changed against its base"),
    "commit": CommandInfo("changes", "publish a stopped container's view as a base or a base version"),
    "reset": CommandInfo("changes", "discard a stopped container's changes"),
    "publish": CommandInfo("images", "publish a stopped LXD or Incus container as an image: its changes, or with --flat its whole system"),
    "file pull": CommandInfo("images", "read a file of a stopped container as it will see it at its next start"),
    "file push": CommandInfo("images", "put a file into a stopped container, in place from its next start"),
    "rollout": CommandInfo("moves", "restart the running containers that follow a base onto its current version"),
    "rebase": CommandInfo("moves", "move a stopped container's changes to another base version, merging shared databases"),
    "conflicts": CommandInfo("moves", "what the last moves of a container merged, and what conflicts"),
    "resolve": CommandInfo("moves", "settle a conflict: take the base's version, or keep the container's"),
    "doctor": CommandInfo("setup", "check what pycor relies on, and name a fix for each miss"),
    "lxd init": CommandInfo("setup", "create the 'overlay' profile and an image pycor/BASE per base in LXD"),
    "incus init": CommandInfo("setup", "create the 'overlay' profile and an image pycor/BASE per base in Incus"),
    "install": CommandInfo("setup", "install the LXC hooks and template for this Python (pip or source installs)"),
}


def top_level() -> list[str]:
    """The words `pycor COMMAND` takes, in help order: groups where their first command comes."""
    seen: dict[str, None] = {}
    for name in commands_dict:
        seen[name.split(" ", 1)[0]] = None
    return list(seen)
