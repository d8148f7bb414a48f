"""Red team (issue 19), pure logic: records a tenant can write (through a daemon's file push into a stopped
container) are read in one shape, or refused having done nothing."""

from __future__ import annotations

import os

import pytest

from pycor_hooks.errors import Damaged
from pycor_hooks.reconcile import PLAN, read_plan


def plan_dir(tmp_path, records: list[list[str]]) -> int:  # type: ignore[no-untyped-def]
    (tmp_path / PLAN).write_bytes(b"".join(b"\0".join(os.fsencode(f) for f in r) + b"\n" for r in records))
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


def test_a_plan_pycor_writes_reads_back(tmp_path):
    records = [["target", "3"], ["replace", "0", "etc/passwd"], ["drop", "etc/old"], ["unopaque", "usr/share"],
               ["mkdir", "srv/a b", "1517", "100000", "100000"], ["whiteout", "etc/gone", "0", "0"]]
    fd = plan_dir(tmp_path, records)
    try:
        assert read_plan(fd) == records
    finally:
        os.close(fd)


@pytest.mark.parametrize("record", [
    ["replace", "/etc/shadow", "stolen"], ["replace", "../../../../etc/shadow", "stolen"], ["replace", "0", "../x"],
    ["replace", "0", "/etc/x"], ["drop", "a/../../x"], ["drop", "."], ["drop", ""], ["mkdir", "d", "-1", "0", "0"],
    ["mkdir", "d", "99999", "0", "0"], ["whiteout", "w", "4294967295", "0"], ["target", "../1"], ["exec", "sh"],
    ["drop", "a", "b"], ["replace", "٣", "x"],
])
def test_a_plan_with_anything_pycor_would_not_write_is_refused(tmp_path, record):
    fd = plan_dir(tmp_path, [["target", "2"], record])
    try:
        with pytest.raises(Damaged, match="was not written by pycor"):
            read_plan(fd)
    finally:
        os.close(fd)


def test_a_plan_that_is_not_a_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / PLAN)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(Damaged, match="not a regular file"):
            read_plan(fd)
    finally:
        os.close(fd)
