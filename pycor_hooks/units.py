"""Sizes as people write and read them: one parser, one formatter, for every command."""

from __future__ import annotations

from .errors import PycorError

# K, M, G, T alone are binary, as LXD reads them; KB, MB... decimal.
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
         "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}
_DIGITS = frozenset("0123456789.")


def parse_size(text: str) -> int:
    """'10GiB', '500M', '1g', '1048576' -> bytes; a PycorError naming the text otherwise."""
    raw = text.strip()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    unit = raw[len(raw.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")):].lower()
    ok = bool(number) and set(number) <= _DIGITS and number.count(".") <= 1 and number[0] != "." and number[-1] != "."
    if not ok or unit not in UNITS or float(number) <= 0 or float(number) * UNITS[unit] >= 1 << 63:
        raise PycorError(f"size {text!r} is not a size", "write it as a number and a unit: 512MiB, 10GiB, 1G")
    return int(float(number) * UNITS[unit])


def human_size(n: float) -> str:
    """'512 B', '1.5 KiB' ... '2.0 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
