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


def base_layers(tmp_path) -> list[str]:
    """Two layers, top first: the lower has /var/run -> ../run, a file /etc/hostname and a file /opt;
    the top one replaces /opt with a directory."""
    top, low = tmp_path / "2", tmp_path / "1"
    for d in (low / "var", low / "etc", low / "run", top / "opt"):
        d.mkdir(parents=True)
    (low / "var/run").symlink_to("../run")
    (low / "etc/hostname").write_text("h\n")
    (low / "opt").write_text("a file below the top layer's directory\n")
    return [str(top), str(low)]


@pytest.mark.parametrize("path,refused,hint", [
    ("/var/run/x", "/var/run is a symlink in base b version 2 (to ../run)", "--volume /run/x"),
    ("/var/run", "/var/run is a symlink", "--volume /run"),
    ("/etc/hostname/d", "/etc/hostname is a file in base b version 2", "a directory in the base"),
    ("/etc/hostname", "/etc/hostname is a file", "a directory in the base"),
])
def test_volume_through_a_symlink_or_file_of_the_merged_base_is_refused(tmp_path, path, refused, hint):
    with pytest.raises(PycorError) as e:
        volumes.check_in_base([path], base_layers(tmp_path), "base b version 2")
    assert e.value.message.startswith(f"volume {path}: {refused}")
    assert hint in str(e.value.hint)


def test_volume_on_a_directory_of_the_merged_base_or_missing_from_it_is_accepted(tmp_path):
    # /opt is a file in the lower layer, but the top layer's directory is what the container sees
    volumes.check_in_base(["/opt/x", "/var/log/app", "/etc", "/srv/new/deep"], base_layers(tmp_path), "base b version 2")


def test_a_suggested_limit_leaves_room_and_parses_back():
    from pycor_hooks.quota import suggest_size

    for used in (0, 20 * MiB, 10 << 30):
        size = parse_size(suggest_size(used))
        assert size >= used + 64 * MiB and size >= used * 5 // 4 and size % MiB == 0
