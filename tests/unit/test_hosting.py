"""Hosting: disk quotas, volumes, ephemeral containers, proven on real containers.

Quotas run on a loop btrfs each test makes (qgroups work on this kernel), and
on a loop ext4 with project quotas where the kernel has them.
"""


from __future__ import annotations

import pytest

from pycor_hooks import volumes
from pycor_hooks.errors import PycorError
from pycor_hooks.units import parse_size

MiB = 1 << 20


# -- pure ------------------------------------------------------------------------------
def test_parse_size_reads_binary_and_decimal_units():
    assert parse_size("10GiB") == 10 << 30
    assert parse_size("512M") == 512 * MiB
    assert parse_size("1GB") == 10**9
    assert parse_size("4096") == 4096
    for bad in ("", "ten", "-1G", "5 parsecs", "0"):
        with pytest.raises(PycorError):
            parse_size(bad)


@pytest.mark.parametrize("bad,word", [
    ("var/lib/db", "relative"), ("/proc/db", "/proc"), ("/sys", "/proc"), ("/dev/shm", "/proc"),
    ("/", "whole root"), ("/var/../etc", "'..'"),
])
def test_volume_paths_refuse_bad_input(bad, word):
    with pytest.raises(PycorError) as e:
        volumes.check_paths([bad])
    assert word in e.value.message


def test_volume_paths_refuse_overlap_and_normalise():
    assert volumes.check_paths(["/var/lib//db/", "/srv/logs"]) == ["/var/lib/db", "/srv/logs"]
    with pytest.raises(PycorError, match="overlaps"):
        volumes.check_paths(["/var/lib", "/var/lib/db"])


def test_volume_is_refused_for_lxd_with_what_applies():
    from pycor_hooks.spec import spec

    with pytest.raises(PycorError) as e:
        spec("c", "b", runtime="lxd", volumes=["/srv"])
    assert "custom volume" in e.value.message and "config device add" in str(e.value.hint)


def test_adopt_refuses_hosting_options():
    from pycor_hooks.spec import spec

    with pytest.raises(PycorError, match="--adopt keeps the layer"):
        spec("c", "b", adopt=True, volumes=["/srv"])
