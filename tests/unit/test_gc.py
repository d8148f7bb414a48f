"""gc keeps what any layer pycor can find references, goes on past damage; recovery; reset on a full disk."""


from __future__ import annotations

import os

from pycor_hooks.store import Store


def test_layers_of_lxd_and_incus_instances_and_snapshots_are_found_in_their_pool_folders(tmp_path):
    from pycor_hooks.layer import LayerMeta
    from pycor_hooks.layers_seen import daemon_layers, layer_versions

    pools = tmp_path / "lxd" / "storage-pools"
    wanted = [pools / "default/containers/web/rootfs", pools / "fast/containers/p_db/rootfs",
              pools / "default/containers-snapshots/web/snap0/rootfs"]
    for path in wanted + [pools / "default/images/abc/rootfs", pools / "default/custom/vol"]:
        path.mkdir(parents=True)
    assert sorted(daemon_layers([str(tmp_path / "lxd"), str(tmp_path / "incus")])) == sorted(map(str, wanted))
    assert layer_versions(LayerMeta("b", "3")) == {"3"} and layer_versions(LayerMeta("b", None)) == set()


def test_taking_the_store_lock_clears_leftovers_but_never_a_live_commands_staging(tmp_path):
    from pycor_hooks import store as store_mod

    store = Store(str(tmp_path / "store"))
    first = store.new_staging("one")
    os.makedirs(os.path.join(first, "rootfs", "etc"))
    store.publish_base("b", first, "test", 1, [])
    store.end_staging(first)  # published: only its lock file was left to go
    live = store.new_staging("live")  # this process holds its flock, as a running command does
    dead = store.new_staging("dead")
    os.close(store_mod._staging_locks.pop(dead))  # as if its owner was killed
    bdir = os.path.join(store.bases_dir, "b")
    leftovers = [os.path.join(store.bases_dir, ".x.new123"), os.path.join(store.bases_dir, ".x.rm999999999"),
                 os.path.join(bdir, "versions", ".3.rm"), os.path.join(bdir, "versions", ".4.rm999999999")]
    for path in leftovers:
        os.makedirs(os.path.join(path, "etc"))
    os.symlink("versions/1", os.path.join(bdir, "current.new77"))
    running_removal = os.path.join(store.bases_dir, f".y.rm{os.getpid()}")  # being removed by a live command
    os.makedirs(running_removal)
    assert len(store.leftovers()) == 10
    with store.lock():
        pass
    assert os.path.isdir(live) and os.path.isdir(running_removal)
    assert sorted(store.leftovers()) == sorted([live, live + ".lock", running_removal])
    store.end_staging(live)
    os.rmdir(running_removal)
    assert store.check() == []


def test_pruning_a_removed_containers_record_that_another_command_pruned_first_goes_on(tmp_path, monkeypatch):
    # seen in CI: containers created in parallel each prune the same stale records; the slower one's unlink
    # found the file gone and its `create` failed with "No such file or directory: .../volumes/NAME.json"
    from pycor_hooks import driver as driver_mod
    from pycor_hooks.driver import Driver, Registration

    drv = Driver(Store(str(tmp_path / "store")))
    for name in ("gone1", "gone2"):
        (tmp_path / name).mkdir()
        drv.register(Registration(name, str(tmp_path / name), "lxc", None))
    paths = sorted(os.path.join(drv.registry_dir, e) for e in os.listdir(drv.registry_dir))
    assert len(paths) == 2

    def another_pruner_was_first(rootfs: str) -> bool:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        return False

    monkeypatch.setattr(driver_mod.layer, "is_layer", another_pruner_was_first)
    assert drv.registrations() == [] and os.listdir(drv.registry_dir) == []
