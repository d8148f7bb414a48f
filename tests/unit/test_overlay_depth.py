"""Deep stacks: a base of 400 layers starts, squashes and commits (overlayfs takes up to 500).

Every overlay pycor mounts goes through overlay.mount_overlay, which hands the
kernel one fd per layer; a mount(2) option string, limited to a page, broke at
about 90 layers.
"""


from __future__ import annotations

import pytest

from pycor_hooks import overlay
from pycor_hooks.errors import Unsupported

DEPTH = 400


def test_option_string_fallback_refuses_more_than_a_page_clearly():
    fds = list(range(100, 100 + DEPTH))  # never opened: the check comes before any syscall
    with pytest.raises(Unsupported) as e:
        overlay.legacy_options(fds)
    assert f"{DEPTH} lower layers" in e.value.message and "mount(2) takes at most" in e.value.message
    assert "squash" in (e.value.hint or "") and "6.8" in (e.value.hint or "")
    assert overlay.legacy_options([3, 4]) == "lowerdir=/proc/self/fd/3:/proc/self/fd/4"


def test_more_lower_layers_than_overlayfs_takes_is_refused_clearly():
    with pytest.raises(Unsupported) as e:
        overlay.mount_overlay(list(range(100, 100 + overlay.OVL_MAX_STACK + 1)), read_only=True)
    assert "501 lower layers" in e.value.message and "squash" in (e.value.hint or "")
