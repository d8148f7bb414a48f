"""The one error type meant for a person: a sentence and a hint.

Only the front ends (CLI, hooks, template) turn it into an exit code.
"""

from __future__ import annotations


class PycorError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
