"""Name rules for bases, versions and containers (pure logic, hot path)."""

from __future__ import annotations

import re

from .errors import PycorError

# Safe as a single path component, an LXC container name and an overlayfs
# option value: no '/', ',', ':', '=', whitespace, and never '.' or '..'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_MAX = 64
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def is_valid_name(name: str) -> bool:
    return 0 < len(name) <= NAME_MAX and _NAME.fullmatch(name) is not None


def check_name(name: str, what: str = "name") -> str:
    if not is_valid_name(name):
        raise PycorError(
            f"invalid {what} {name!r}",
            f"use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_version(version: str) -> str:
    if _VERSION.fullmatch(version) is None:
        raise PycorError(f"invalid version {version!r}", "versions are positive whole numbers, as 'pycor base versions' lists them")
    return version
