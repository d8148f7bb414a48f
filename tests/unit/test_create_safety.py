"""Creating a container never deletes what existed before it ran (issue 8, items 1 and 2).

lxc-create removes the container directory, and a `-B dir --dir` rootfs, when
its template fails (verified on LXC 5.0.2). So pycor checks before it calls
lxc-create, adopts an existing layer only when asked (--adopt), and its
template moves pre-existing data aside before it ever fails.
"""


from __future__ import annotations

import os

from pycor_hooks import template as template_mod


def _mkdir(path):  # type: ignore[no-untyped-def]
    path.mkdir()
    (path / "f").write_text("x")
    return path


def test_fresh_container_directory_holds_no_data_to_keep(tmp_path):
    path = tmp_path / "c1"
    (path / "rootfs").mkdir(parents=True)
    (path / "config").write_text("lxc.rootfs.path = dir:x\n")
    (path / "partial").write_text("")
    assert template_mod.data_to_keep(str(path), str(path / "rootfs")) == []


def test_lost_layer_and_other_files_are_data_to_keep(tmp_path):
    path = tmp_path / "c1"
    (path / "rootfs" / ".pycor").mkdir(parents=True)
    (path / "fstab").write_text("")
    (path / "config").write_text("")
    assert template_mod.data_to_keep(str(path), str(path / "rootfs")) == [str(path)]


def test_non_empty_outside_rootfs_is_data_to_keep(tmp_path):
    path, rootfs = tmp_path / "c1", tmp_path / "elsewhere"
    (path / "rootfs").mkdir(parents=True)  # lxc-create makes it even with --dir
    (path / "config").write_text("")
    rootfs.mkdir()
    assert template_mod.data_to_keep(str(path), str(rootfs)) == []
    (rootfs / "f").write_text("x")
    assert template_mod.data_to_keep(str(path), str(rootfs)) == [str(rootfs)]


def test_kept_aside_name_is_a_hidden_sibling_never_reused(tmp_path):
    first = template_mod.keep_aside(str(_mkdir(tmp_path / "a")))
    second = template_mod.keep_aside(str(_mkdir(tmp_path / "a")))
    assert os.path.dirname(first) == os.path.dirname(second) == str(tmp_path)
    assert os.path.basename(first).startswith(".a.pycor-kept-") and first != second
    assert not os.path.exists(tmp_path / "a")
