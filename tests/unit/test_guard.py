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


def test_a_record_keeps_its_layer_mount_and_an_older_one_has_none(tmp_path):
    from pycor_hooks.flatjson import read_json, write_json
    from pycor_hooks.runstate import RunState, run_state_from_json

    state = RunState("c1", "/r", "b", "1", ["/v"], 1.5, "0123456789abcdef", ["l"], 7, 8, None, "/run/pycor/layers/c1-0.7.8")
    write_json(str(tmp_path / "r.json"), state.to_json())
    assert run_state_from_json(read_json(str(tmp_path / "r.json"))) == state
    older = {k: v for k, v in state.to_json().items() if k != "layer_mount"}
    assert run_state_from_json(older).layer_mount is None


def test_only_a_path_under_the_layer_mounts_root_is_ever_detached(tmp_path):
    """A record names its layer mount; anything else it might name (a damaged record) is left alone."""
    from pycor_hooks.idmap import RUN_LAYERS, layer_mount_path, remove_layer_mount

    elsewhere = tmp_path / "c1-0.7.8"
    elsewhere.mkdir()
    remove_layer_mount(str(elsewhere))
    remove_layer_mount(f"{RUN_LAYERS}/../views")
    assert elsewhere.is_dir()
    assert layer_mount_path("p_c1-1a2b3c4d", (7, 8)) == f"{RUN_LAYERS}/p_c1-1a2b3c4d.7.8"


def test_a_layer_mount_names_the_monitor_of_its_start_whatever_the_container_is_called():
    from pycor_hooks.idmap import layer_mount_monitor, layer_mount_path
    from pycor_hooks.runstate import volume_key

    for name in ("c1", "web.1-a", "proj_x-y.z", "a-b-c"):
        path = layer_mount_path(volume_key(name, f"/p/{name}/rootfs"), (4321, 98765))
        assert layer_mount_monitor(path) == (4321, 98765), path
    assert layer_mount_monitor("/run/pycor/layers/lock") is None
    assert layer_mount_monitor("/run/pycor/layers/c1-00000000.x.1") is None
