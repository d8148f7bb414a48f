"""Name rules for bases, versions and containers, and text made safe to show (pure logic, hot path)."""

from __future__ import annotations

from .errors import PycorError

# Safe as a single path component, an LXC container name and an overlayfs
# option value: no '/', ',', ':', '=', whitespace, and never '.' or '..'.
# (Plain string checks: 're' costs a hook 3 ms to import.)
NAME_MAX = 64
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def is_valid_name(name: str) -> bool:
    return 0 < len(name) <= NAME_MAX and name[0] in _ALNUM and all(c in _NAME_CHARS for c in name)


def check_name(name: str, what: str = "name") -> str:
    if not is_valid_name(name):
        raise PycorError(
            f"invalid {what} {name!r}",
            f"use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_version(version: str) -> str:
    if not (0 < len(version) <= 9 and version.isascii() and version.isdigit() and version[0] != "0"):
        raise PycorError(f"invalid version {version!r}", "versions are positive whole numbers, as 'pycor base versions' lists them")
    return version


TEXT_MAX = 1024
PATH_SHOWN = 8192  # a container path as pycor shows it (printable()): a tenant names its own files


def printable(text: object, limit: int = TEXT_MAX) -> str:
    """text as it may be shown on a terminal or stored for showing: at most `limit` characters, and every
    character a terminal could act on (control characters and escapes, Unicode line separators and format
    characters such as bidirectional overrides) written out as a Python string literal writes it ('\\x1b').

    For what records hold and nobody vouches for: a version's source, a name read back from disk."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
