"""Nothing exposed, nothing stuck, no unclear failure (issue 8 items 4, 6, 7, 12), on real containers."""


from __future__ import annotations


def test_an_old_record_of_a_container_that_no_longer_exists_is_stale(tmp_path):
    from pycor_hooks.runstate import RunState, is_live

    gone = RunState("old", str(tmp_path / "gone" / "rootfs"), "b", "1", [], 0.0, None, [], 0, 0, None)
    assert not is_live(gone)  # pycor 0.1 wrote no monitor: its container's layer is what tells
    here = tmp_path / "here" / "rootfs"
    (here / ".pycor").mkdir(parents=True)
    (here / ".pycor" / "layer.json").write_text('{"base": "b"}')
    assert is_live(RunState("old", str(here), "b", "1", [], 0.0, None, [], 0, 0, None))
