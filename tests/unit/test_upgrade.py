"""An upgrade's marker and its undoing, on plain directories (no container, any user): see upgrade.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from pycor_hooks import flatjson, layer, upgrade
from pycor_hooks.errors import InUse
from pycor_hooks.layer import LayerMeta, create_layer
from pycor_hooks.runstate import proc_start_time


def swapped_in(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A container's rootfs as an upgrade leaves it after the swap: the copy (upper/new) as .pycor with this
    process's marker, the old layer (upper/old) aside in .pycor-upgrade/.pycor."""
    rootfs = str(tmp_path / "rootfs")
    os.makedirs(rootfs)
    create_layer(rootfs, LayerMeta("base", None, "1"), os.getuid(), os.getgid())
    open(os.path.join(rootfs, layer.UPPER, "old"), "w").close()
    with layer.OpenLayer(rootfs) as lay:
        copy = upgrade.stage(lay)
    os.rename(os.path.join(copy, layer.UPPER, "old"), os.path.join(copy, layer.UPPER, "new"))
    upgrade.write_marker(copy, "1", "2")
    upgrade.swap(rootfs)
    return rootfs


def upper_names(rootfs: str) -> list[str]:
    return sorted(os.listdir(os.path.join(rootfs, layer.UPPER)))


def marker_of(rootfs: str, **fields: object) -> None:
    path = os.path.join(rootfs, layer.UPGRADE_MARKER)
    with open(path) as f:
        raw = flatjson.loads(f.read())
    with open(path, "w") as f:
        f.write(flatjson.dumps({**raw, **fields}))


def test_the_swap_makes_the_copy_the_containers_layer_with_a_marker_naming_this_process(tmp_path):
    rootfs = swapped_in(tmp_path)
    assert upper_names(rootfs) == ["new"]
    fd = layer.open_rootfs(rootfs)
    try:
        marker = upgrade.read_marker(fd)
    finally:
        os.close(fd)
    assert marker is not None and marker.mine() and marker.alive() and (marker.old, marker.target) == ("1", "2")
    st = os.stat(os.path.join(rootfs, layer.UPGRADE_MARKER))
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())  # owned like the layer
    assert upgrade.recover("c", rootfs, starting=False) is None  # its own: nothing to do
    fd = layer.open_rootfs(rootfs)
    try:
        assert layer.beside(fd) == []  # the old layer aside is never taken for a pushed file
    finally:
        os.close(fd)


def test_an_upgrade_whose_process_is_gone_is_undone(tmp_path):
    rootfs = swapped_in(tmp_path)
    marker_of(rootfs, pid=4194305)  # above any pid_max: no such process
    said = upgrade.recover("c", rootfs, starting=True)
    assert said is not None and "was interrupted: its old layer (version 1) is back" in said
    assert upper_names(rootfs) == ["old"]
    assert not os.path.exists(os.path.join(rootfs, layer.UPGRADE_MARKER))
    assert not os.path.exists(os.path.join(rootfs, layer.UPGRADE_DIR))


def test_an_upgrade_in_progress_lets_its_own_start_through_and_refuses_other_commands(tmp_path):
    rootfs = swapped_in(tmp_path)
    other = subprocess.Popen(["sleep", "30"])
    try:
        marker_of(rootfs, pid=other.pid, start=proc_start_time(other.pid))
        assert upgrade.recover("c", rootfs, starting=True) is None
        with pytest.raises(InUse, match="is in progress"):
            upgrade.recover("c", rootfs, starting=False)
        assert upper_names(rootfs) == ["new"]
    finally:
        other.kill()
        other.wait()
    assert upgrade.recover("c", rootfs, starting=False) is not None and upper_names(rootfs) == ["old"]


@pytest.mark.parametrize("planted", ["garbage", "huge", "symlink", "other boot"])
def test_a_marker_pycor_did_not_write_names_no_live_process(tmp_path, planted):
    rootfs = swapped_in(tmp_path)
    path = os.path.join(rootfs, layer.UPGRADE_MARKER)
    if planted == "other boot":
        marker_of(rootfs, boot="0" * 32)  # this pid and start time, but before a reboot
    else:
        os.unlink(path)
        if planted == "symlink":
            os.symlink("/proc/self/stat", path)
        else:
            with open(path, "w") as f:
                f.write("{" if planted == "garbage" else f'{{"pid": {os.getpid()}, "x": "{"y" * 5000}"}}')
    assert "was interrupted" in (upgrade.recover("c", rootfs, starting=False) or "")
    assert upper_names(rootfs) == ["old"] and not os.path.lexists(os.path.join(rootfs, layer.UPGRADE_DIR))


def test_a_copy_that_never_became_the_containers_goes_at_the_next_command_not_at_a_start(tmp_path):
    rootfs = str(tmp_path / "rootfs")
    os.makedirs(rootfs)
    create_layer(rootfs, LayerMeta("base", None, "1"), os.getuid(), os.getgid())
    with layer.OpenLayer(rootfs) as lay:
        upgrade.stage(lay)
    assert upgrade.recover("c", rootfs, starting=True) is None and os.path.isdir(os.path.join(rootfs, layer.UPGRADE_DIR))
    assert upgrade.recover("c", rootfs, starting=False) is None and not os.path.exists(os.path.join(rootfs, layer.UPGRADE_DIR))


def test_the_boot_script_is_valid_shell():
    assert subprocess.run(["sh", "-n", "-c", upgrade.boot_script()]).returncode == 0
    assert subprocess.run(["sh", "-n", "-c", upgrade.SCRIPT]).returncode == 0
