"""The one error type meant for a person: a sentence and a hint.

Only the front ends (CLI, hooks, template) turn it into an exit code.
Subclasses say what kind of failure it is, so a caller tests the type,
never the text.
"""

from __future__ import annotations


class PycorError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotFound(PycorError):
    """A base, version, container or path that does not exist."""


class InUse(PycorError):
    """Refused because something still uses it (a running container, a base with users)."""


class Busy(PycorError):
    """Another pycor command holds the lock this one needs."""


class Conflict(PycorError):
    """Both sides changed the same thing, or a name or number is already taken."""


class Unsupported(PycorError):
    """The kernel, filesystem or runtime here lacks what this needs."""


class Damaged(PycorError):
    """A record or layer on disk is not as pycor wrote it."""
