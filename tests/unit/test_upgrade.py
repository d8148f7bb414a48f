"""An upgrade's record and its undoing, on plain directories (no container, any user): see upgrade.py.

What decides is host root's alone: the scratch beside the rootfs directory (its owner.json, and whether the
copy it names is still in it). Everything in the container's layer is the tenant's to write."""

from __future__ import annotations

import io
import os
import signal
import subprocess

import pytest

from pycor_hooks import flatjson, layer, reconcile, upgrade
from pycor_hooks.builder import relay_stderr, shown
from pycor_hooks.errors import InUse, PycorError
from pycor_hooks.layer import LayerMeta, create_layer
from pycor_hooks.runstate import proc_start_time


def new_layer(tmp_path) -> str:  # type: ignore[no-untyped-def]
    rootfs = str(tmp_path / "c" / "rootfs")
    os.makedirs(rootfs)
    create_layer(rootfs, LayerMeta("base", None, "1"), os.getuid(), os.getgid())
    open(os.path.join(rootfs, layer.UPPER, "old"), "w").close()
    return rootfs


def staged(rootfs: str) -> str:
    """The copy (upper/new) made and recorded, not yet swapped in."""
    with layer.OpenLayer(rootfs) as lay:
        copy = upgrade.stage(lay)
    os.rename(os.path.join(copy, layer.UPPER, "old"), os.path.join(copy, layer.UPPER, "new"))
    upgrade.record(copy, "1", "2")
    return copy


def swapped_in(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A container's rootfs as an upgrade leaves it after the swap: the copy (upper/new) as .pycor, the old layer
    (upper/old) in the scratch, owner.json naming this process."""
    rootfs = new_layer(tmp_path)
    staged(rootfs)
    upgrade.swap(rootfs)
    return rootfs


def upper_names(rootfs: str) -> list[str]:
    return sorted(os.listdir(os.path.join(rootfs, layer.UPPER)))


def owner_of(rootfs: str, **fields: object) -> None:
    path = os.path.join(upgrade.scratch_path(rootfs), upgrade.OWNER)
    with open(path) as f:
        raw = flatjson.loads(f.read())
    with open(path, "w") as f:
        f.write(flatjson.dumps({**raw, **fields}))


def test_the_scratch_lies_beside_the_rootfs_directory_never_in_it(tmp_path):
    rootfs = swapped_in(tmp_path)
    assert upgrade.scratch_path(rootfs) == str(tmp_path / "c" / ".pycor-upgrade.rootfs")
    assert sorted(os.listdir(rootfs)) == [layer.PYCOR_DIR] and upper_names(rootfs) == ["new"]
    owner = upgrade.read_owner(rootfs)
    assert owner is not None and owner.mine() and owner.alive() and (owner.old, owner.target) == ("1", "2")
    assert upgrade.recover("c", rootfs, starting=False) is None  # its own: nothing to do
    upgrade.commit(rootfs)
    assert upper_names(rootfs) == ["new"] and not os.path.lexists(upgrade.scratch_path(rootfs))
    st = os.stat(os.path.join(rootfs, layer.WORK))
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, os.getuid())


def test_an_upgrade_whose_process_is_gone_is_undone(tmp_path):
    rootfs = swapped_in(tmp_path)
    owner_of(rootfs, pid=4194305)  # above any pid_max: no such process
    said = upgrade.recover("c", rootfs, starting=True)
    assert said is not None and "was interrupted: its old layer (version 1) is back" in said
    assert upper_names(rootfs) == ["old"] and not os.path.lexists(upgrade.scratch_path(rootfs))


def test_an_upgrade_in_progress_lets_its_own_start_through_and_refuses_other_commands(tmp_path):
    rootfs = swapped_in(tmp_path)
    other = subprocess.Popen(["sleep", "30"])
    try:
        owner_of(rootfs, pid=other.pid, start=proc_start_time(other.pid))
        assert upgrade.recover("c", rootfs, starting=True) is None
        with pytest.raises(InUse, match="is in progress"):
            upgrade.recover("c", rootfs, starting=False)
        assert upper_names(rootfs) == ["new"]
    finally:
        other.kill()
        other.wait()
    assert upgrade.recover("c", rootfs, starting=False) is not None and upper_names(rootfs) == ["old"]


@pytest.mark.parametrize("planted", ["upgrade.json", "fifo", "hard link", "owner.json"])
def test_nothing_the_tenant_writes_in_its_layer_decides(tmp_path, planted):
    """The tenant writes its layer (a file push into the stopped container), also while it is swapped out: an
    interrupted upgrade is undone whatever it made there, and nothing there makes pycor hang or crash."""
    rootfs = swapped_in(tmp_path)
    owner_of(rootfs, pid=4194305)
    owner = upgrade.read_owner(rootfs)
    assert owner is not None
    path = os.path.join(rootfs, layer.PYCOR_DIR, planted)
    if planted == "fifo":
        os.mkfifo(os.path.join(rootfs, layer.PYCOR_DIR, "owner.json"))
    elif planted == "hard link":  # a name of the old layer's, reachable from the live one
        os.link(os.path.join(upgrade.scratch_path(rootfs), layer.PYCOR_DIR, "layer.json"), os.path.join(rootfs, "n"))
        with open(os.path.join(rootfs, "n"), "a") as f:
            f.write(f'{{"copy": {owner.copy}}}')
    else:
        with open(path, "w") as f:
            f.write(flatjson.dumps({"pid": os.getpid(), "start": proc_start_time(os.getpid()), "copy": owner.copy}))
    signal.alarm(10)
    try:
        assert "was interrupted" in (upgrade.recover("c", rootfs, starting=False) or "")
    finally:
        signal.alarm(0)
    assert upper_names(rootfs) == ["old"] and not os.path.lexists(upgrade.scratch_path(rootfs))


def test_a_removal_of_the_scratch_that_stopped_half_way_never_takes_the_old_layer(tmp_path):
    rootfs = new_layer(tmp_path)
    copy = staged(rootfs)
    os.unlink(os.path.join(copy, upgrade.OWNER))  # discard's first step, then killed
    os.unlink(os.path.join(copy, layer.PYCOR_DIR, "layer.json"))
    assert upgrade.recover("c", rootfs, starting=True) is None
    assert upper_names(rootfs) == ["old"] and not os.path.lexists(copy)


def test_a_scratch_too_deep_for_rmtree_goes(tmp_path):
    rootfs = swapped_in(tmp_path)
    deep = os.path.join(upgrade.scratch_path(rootfs), layer.UPPER)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(1500):  # the tenant's, made in its container before the upgrade
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    upgrade.commit(rootfs)
    assert not os.path.lexists(upgrade.scratch_path(rootfs)) and upper_names(rootfs) == ["new"]


def test_a_directory_at_the_scratchs_name_that_pycor_did_not_make_is_left_alone(tmp_path):
    rootfs = new_layer(tmp_path)
    other = upgrade.scratch_path(rootfs)
    os.makedirs(os.path.join(other, "etc"))
    assert upgrade.recover("c", rootfs, starting=False) is not None and os.path.isdir(os.path.join(other, "etc"))
    with pytest.raises(PycorError, match="is not an upgrade's scratch"):
        upgrade.discard(rootfs)
    assert os.path.isdir(os.path.join(other, "etc"))


def test_a_copy_that_never_became_the_containers_goes(tmp_path):
    rootfs = new_layer(tmp_path)
    with layer.OpenLayer(rootfs) as lay:
        upgrade.stage(lay)  # killed before its record was made
    assert upgrade.recover("c", rootfs, starting=False) is None and not os.path.lexists(upgrade.scratch_path(rootfs))
    staged(rootfs)  # recorded, killed before the swap
    owner_of(rootfs, pid=4194305)
    assert upgrade.recover("c", rootfs, starting=True) is None and not os.path.lexists(upgrade.scratch_path(rootfs))
    assert upper_names(rootfs) == ["old"]


def test_a_fifo_planted_where_pycor_writes_the_conflicts_record_is_replaced_not_opened(tmp_path):
    rootfs = new_layer(tmp_path)
    os.mkfifo(os.path.join(rootfs, layer.PYCOR_DIR, "conflicts.json.new"))
    fd = layer.open_rootfs(rootfs)
    signal.alarm(10)
    try:
        reconcile.write_findings(fd, {"conflicts": []})
    finally:
        signal.alarm(0)
        os.close(fd)
    with open(os.path.join(rootfs, layer.PYCOR_DIR, "conflicts.json")) as f:
        assert "conflicts" in f.read()


def test_what_the_container_prints_reaches_the_admin_without_control_characters(capsys):
    relay_stderr(io.BytesIO("Get:1 ok\n\x1b]0;owned\x07\x1b[2J\rdone \u009b2J \u202eevil\n".encode()))
    assert capsys.readouterr().err == "Get:1 ok\n?]0;owned??[2J?done ?2J ?evil\n"
    assert shown(b"\xff\tx\n") == "\ufffd\tx\n"


def test_the_boot_script_is_valid_shell():
    assert subprocess.run(["sh", "-n", "-c", upgrade.boot_script()]).returncode == 0
    assert subprocess.run(["sh", "-n", "-c", upgrade.SCRIPT]).returncode == 0
