"""Records: the small 'key=value' files the start path reads and writes.

The hooks run at every container start, where json (through re and enum)
costs more than the rest of the hook's imports together. A record is one
field a line, 'key=value'; a key may repeat (a list, in order). Values are
kept on one line by escaping backslash and newline. Parsing is str.split.

Hot path: imports nothing.
"""

from __future__ import annotations


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append("\n" if value[i + 1] == "n" else value[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def dump(fields: list[tuple[str, str | None]]) -> str:
    """One 'key=value' line a field, in order; None values are left out."""
    lines = []
    for key, value in fields:
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"invalid record key {key!r}")
        if value is not None:
            lines.append(f"{key}={_escape(value)}\n")
    return "".join(lines)


def parse(text: str, where: str = "record") -> dict[str, list[str]]:
    """key -> its values in order. Raises ValueError on a line without '='."""
    fields: dict[str, list[str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line[0] == "#":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: line {number} is not 'key=value'")
        fields.setdefault(key, []).append(_unescape(value))
    return fields


def one(fields: dict[str, list[str]], key: str, default: str | None = None) -> str | None:
    """The single value of key (the last one if it repeats), or default."""
    values = fields.get(key)
    return values[-1] if values else default
