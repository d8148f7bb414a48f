"""The JSON pycor writes for itself, read and written without the json module.

The start path reads a layer's metadata, each version's record and the run
state, and writes the run state: small, flat JSON objects whose values are
strings, numbers, booleans, null or lists of those. Importing json (through
re and enum) costs a hook more than everything else it imports, so these
objects go through this module; anything outside that shape (nested
objects, a file another tool rewrote oddly) raises ValueError, and the
callers then fall back to the json module. Files stay ordinary JSON.

read_json() and write_json() read and write such a file (atomically, never
through a symlink); Record is the plain value object most of them map to.

Hot path: imports nothing but errors.
"""

from __future__ import annotations

import os

from .errors import PycorError

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\n\r"
_NUMBER = frozenset("0123456789+-.eE")

Value = "str | int | float | bool | None | list"


def _string(text: str, i: int) -> tuple[str, int]:
    """The string starting after the opening quote at text[i - 1]; returns (value, index after the closing quote)."""
    out: list[str] = []
    start = i
    while True:
        j = text.find('"', i)
        k = text.find("\\", i, j if j >= 0 else len(text))
        if j < 0:
            raise ValueError("unterminated string")
        if k < 0:
            out.append(text[i:j])
            value = "".join(out)
            if any(ord(c) < 0x20 for c in value):
                raise ValueError("control character in a string")
            return value, j + 1
        out.append(text[i:k])
        c = text[k + 1:k + 2]
        if c == "u":
            code = int(text[k + 2:k + 6], 16)
            if 0xD800 <= code < 0xE000:
                raise ValueError("surrogate escape")  # rare: the json module takes it
            out.append(chr(code))
            i = k + 6
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
            i = k + 2
        else:
            raise ValueError(f"bad escape at {k - start}")


def _value(text: str, i: int, in_list: bool = False) -> tuple[object, int]:
    c = text[i]
    if c == '"':
        return _string(text, i + 1)
    for word, value in (("null", None), ("true", True), ("false", False)):
        if text.startswith(word, i):
            return value, i + len(word)
    if c == "[" and not in_list:
        items: list[object] = []
        i = _skip(text, i + 1)
        if text[i] == "]":
            return items, i + 1
        while True:
            item, i = _value(text, _skip(text, i), in_list=True)
            items.append(item)
            i = _skip(text, i)
            if text[i] == "]":
                return items, i + 1
            if text[i] != ",":
                raise ValueError("expected , or ] in a list")
            i += 1
    j = i
    while j < len(text) and text[j] in _NUMBER:
        j += 1
    if j == i:
        raise ValueError(f"unexpected {c!r}")
    number = text[i:j]
    return (float(number) if any(ch in number for ch in ".eE") else int(number)), j


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    if i >= len(text):
        raise ValueError("unexpected end")
    return i


def loads(text: str) -> dict:
    """A flat JSON object; ValueError (or IndexError) for anything else."""
    i = _skip(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    obj: dict = {}
    i = _skip(text, i + 1)
    if text[i] == "}":
        return obj if not text[i + 1:].strip(_WS) else _trailing()
    while True:
        if text[i] != '"':
            raise ValueError("expected a key")
        key, i = _string(text, i + 1)
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError("expected :")
        obj[key], i = _value(text, _skip(text, i + 1))
        i = _skip(text, i)
        if text[i] == "}":
            return obj if not text[i + 1:].strip(_WS) else _trailing()
        if text[i] != ",":
            raise ValueError("expected , or }")
        i = _skip(text, i + 1)


def _trailing() -> dict:
    raise ValueError("text after the object")


def load(data: bytes) -> dict:
    """Parse data as a flat object, falling back to the json module for any other JSON."""
    try:
        return loads(data.decode("utf-8"))
    except (ValueError, IndexError):
        import json

        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object") from None
        return value


def _dump_value(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        if any(ord(c) < 0x20 for c in out):
            out = "".join(c if ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in out)
        return f'"{out}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_dump_value(v) for v in value) + "]"
    raise TypeError(f"flatjson cannot write {type(value).__name__}")


def dumps(obj: dict) -> str:
    """A flat object as JSON the json module reads back the same (keys sorted, one line)."""
    return "{" + ", ".join(f"{_dump_value(str(k))}: {_dump_value(v)}" for k, v in sorted(obj.items())) + "}\n"


class Record:
    """A plain value object (dataclasses would cost every hook 7 ms of imports)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *args: object) -> None:
        for slot, value in zip(self.__slots__, args, strict=True):
            setattr(self, slot, value)

    def to_json(self) -> dict:
        return {slot: getattr(self, slot) for slot in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and type(other) is type(self) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_json().items())})"


def read_json(path: str, limit: int = 1 << 20) -> dict:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PycorError(f"{path} is larger than {limit} bytes", "it was not written by pycor")
    try:
        return load(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the json module goes
        raise PycorError(f"{path} does not hold a JSON object", "it was not written by pycor") from None


def write_json(path: str, value: dict, mode: int = 0o644) -> None:
    """Write atomically: a temporary file beside it, then rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        try:
            f.write(dumps(value))
        except TypeError:  # nested: not on the start path
            import json

            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
    os.rename(tmp, path)
