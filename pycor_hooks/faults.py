"""Fault injection for crash-safety tests: PYCOR_FAULT=STEP makes pycor die (SIGKILL) at that step.

Tests set it to prove that a command killed at any named step leaves the
store consistent and can be run again. Unset (always, outside tests), a
step costs one dictionary lookup.
"""

from __future__ import annotations

import os


def point(step: str) -> None:
    """A named step of a long command: die here, as kill -9 would, if PYCOR_FAULT names it."""
    if os.environ.get("PYCOR_FAULT") == step:
        os.kill(os.getpid(), 9)
