"""LXC configuration: the one writer of config lines, and the one reader of a config's keys.

Every value pycor puts into an LXC config (a container's, a builder's, the
raw.lxc of LXD's and Incus's `overlay` profile) goes through line(). LXC
reads a config one '\\n'-ended line at a time as `KEY = VALUE`, trims the
value, and runs `lxc.hook.*` values through /bin/sh as host root: a value
holding a line end would be a second key, a hook among them. line() refuses
control characters (line ends included), Unicode line separators, leading
or trailing blanks, and keys outside LXC's spelling, so what is written is
exactly one key with exactly the value given.

LXC config lines a base carries (base.json, an export stream's header) come
from whoever made the base, possibly another host: base_line() admits only
BASE_KEYS, keys that act inside the container (its init, its signals, its
environment) and can neither run nor mount anything on the host.

Primitive: imports nothing of pycor but errors.
"""

from __future__ import annotations

import os

from .errors import PycorError

TYPE_CHECKING = False  # typing and collections cost the template 1 ms; type checkers read this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

LXC_CONFIG_DIR = "/usr/share/lxc/config"
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_SEPARATORS = frozenset("\x85\u2028\u2029")  # what str.splitlines() also breaks on
# What a POSIX shell needs no quoting for (shlex.quote's set, ASCII): shlex loads re, 12 ms of a create.
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


# The seccomp policy of a container with volumes, beside the hooks: LXC's common one and btrfs's subvolume and
# snapshot creation (BTRFS_IOC_SNAP_CREATE, SUBVOL_CREATE and their _V2) refused: a volume lies on the layer's own
# filesystem, and a subvolume made in it would escape the layer's qgroup limit
SECCOMP = "pycor.seccomp"

def check_value(value: str, what: str = "value") -> str:
    """value, if it can be one LXC config value (or one template argument LXC copies into a comment line)."""
    if not isinstance(value, str):
        raise PycorError(f"{what} {value!r} is not text", "give it as a string")
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0 or c in _SEPARATORS), None)
    if bad is not None:
        raise PycorError(f"{what} {value!r} holds the control character {bad!r}",
                         "LXC would read what follows a line end as another config key: give it without control characters")
    if any(0xD800 <= ord(c) < 0xE000 for c in value):
        raise PycorError(f"{what} {value!r} is not valid UTF-8 text", "a config file holds UTF-8: give it as text")
    if value != value.strip(" \t"):
        raise PycorError(f"{what} {value!r} starts or ends with a blank", "LXC trims config values: give it without them")
    return value


def check_key(key: str) -> str:
    if not (key.startswith("lxc.") and len(key) <= 128 and set(key) <= _KEY_CHARS and ".." not in key and key[-1] != "."):
        raise PycorError(f"{key!r} is not an LXC config key", "LXC keys look like lxc.rootfs.path")
    return key


def line(key: str, value: str | int) -> str:
    """The config line `KEY = VALUE`, refusing anything LXC would read as more than that one key.

    An empty value (`KEY =`) clears what earlier lines of a list key set, as LXC reads it.
    """
    text = check_value(str(value), key)
    return f"{check_key(key)} = {text}" if text else f"{check_key(key)} ="


def comment(text: str) -> str:
    return "# " + check_value(text, "comment")


def quote(text: str) -> str:
    """shlex.quote(text), loading shlex only for a text that needs quoting (hook lines run through /bin/sh)."""
    if text and all(c in _SHELL_SAFE for c in text):
        return text
    import shlex

    return shlex.quote(text)


def hook_lines(hooks_dir: str, store_arg: str | None, privileged: bool = False) -> list[str]:
    """A pycor container's hook lines; store_arg: the store to name on them (None: the default store).

    A privileged container needs nothing done in the host's namespaces that
    its pre-mount hook (real root, before the rootfs is mounted) cannot do:
    it gets pre-mount --prepare, one Python process per start instead of two.
    An unprivileged one needs pre-start, as host root, for its idmapped views.
    """
    extra = f" --store {quote(store_arg)}" if store_arg else ""
    hooks = ("pre-mount", "post-stop") if privileged else ("pre-start", "pre-mount", "post-stop")
    return [line(f"lxc.hook.{hook}", quote(os.path.join(hooks_dir, f"pycor-{hook}"))
                 + (" --prepare" if privileged and hook == "pre-mount" else "") + extra)
            for hook in hooks]


def profile_lines(hooks_dir: str, store_arg: str | None) -> list[str]:
    """raw.lxc of LXD's and Incus's `overlay` profile: a line clearing lxc.rootfs.options, then the hook lines.

    A daemon that mounts a container's rootfs idmapped (Incus by default) writes
    `lxc.rootfs.options = idmap=container` before raw.lxc. LXC then idmaps a clone of the rootfs
    directory taken before pre-mount and attaches that, hiding the overlay pre-mount puts on the
    directory (and an overlay cannot itself be idmapped). The empty value clears the option, so
    LXC attaches the overlay; pycor's pre-start mounts the layer idmapped itself (idmap.mount_layer).
    A daemon that shifts its storage on disk (LXD 5.0) writes no such option: the line changes nothing.
    """
    return [line("lxc.rootfs.options", ""), *hook_lines(hooks_dir, store_arg)]


# -- what a base may carry ------------------------------------------------------------------


def _signal(value: str) -> bool:
    if not value.isascii():
        return False
    name = value[3:] if value.startswith("SIG") else value
    if name.isdigit():
        return 0 < int(name) < 65
    base, plus, offset = name.partition("+")
    return (base.isalnum() and base.isupper() and 2 <= len(base) <= 8) and (not plus or offset.isdigit())


def _container_path(value: str) -> bool:
    return value.startswith("/") and len(value) <= 4096


def _small_int(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 10


def _environment(value: str) -> bool:
    """NAME=VALUE only: a bare NAME makes LXC copy that variable from whoever runs lxc-start on the host."""
    name, eq, _ = value.partition("=")
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isascii() and (c.isalnum() or c == "_") for c in name) \
        and eq == "="


def _tty_count(value: str) -> bool:
    """A few ttys: LXC sets each one up at every start."""
    return value.isascii() and value.isdigit() and int(value) <= 64


def _command(value: str) -> bool:
    return 0 < len(value) <= 4096


# Keys that act inside the container only. A base's hooks, mounts, devices, capabilities, cgroup,
# apparmor, seccomp, idmap, rootfs and network keys are host matters: never taken from a base.
BASE_KEYS: dict[str, Callable[[str], bool]] = {
    "lxc.signal.halt": _signal, "lxc.signal.reboot": _signal, "lxc.signal.stop": _signal,
    "lxc.init.cmd": _command, "lxc.execute.cmd": _command, "lxc.init.cwd": _container_path,
    "lxc.init.uid": _small_int, "lxc.init.gid": _small_int, "lxc.environment": _environment,
    "lxc.tty.max": _tty_count, "lxc.pty.max": _small_int,
}


def split(text: str) -> tuple[str, str] | None:
    """(key, value) of one config line as LXC reads it; None for a blank line or a comment."""
    stripped = text.strip(" \t")
    if not stripped or stripped.startswith("#"):
        return None
    key, sep, value = stripped.partition("=")
    return (key.strip(" \t"), value.strip(" \t")) if sep else (stripped, "")


def base_line(text: str) -> str:
    """One config line a base carries, rewritten by line(); PycorError if its key is not in BASE_KEYS."""
    kv = split(check_value(text.strip(" \t"), "base LXC line"))
    if kv is None or kv[0] not in BASE_KEYS or not BASE_KEYS[kv[0]](kv[1]):
        raise PycorError(f"LXC line {text!r} is not one a base may carry",
                         f"a base may set only what acts inside its containers: {', '.join(sorted(BASE_KEYS))}")
    return line(*kv)


def base_lines(lines: Iterable[object]) -> tuple[list[str], list[str]]:
    """(admitted, refused) of a base's LXC lines, each admitted one rewritten by line()."""
    admitted, refused = [], []
    for raw in lines:
        try:
            admitted.append(base_line(raw if isinstance(raw, str) else repr(raw)))
        except PycorError:
            refused.append(raw if isinstance(raw, str) else repr(raw))
    return admitted, refused


def keys(text: str) -> dict[str, list[str]]:
    """Every key of a config's text with its values, in order (lines split on '\\n' only, as LXC does)."""
    found: dict[str, list[str]] = {}
    for raw in text.split("\n"):
        kv = split(raw)
        if kv is not None:
            found.setdefault(kv[0], []).append(kv[1])
    return found


def read_keys(path: str) -> dict[str, list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return keys(f.read())
