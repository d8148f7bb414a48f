"""Deep stacks: a base of 400 layers starts, squashes and commits (overlayfs takes up to 500).

Every overlay pycor mounts goes through overlay.mount_overlay, which hands the
kernel one fd per layer; a mount(2) option string, limited to a page, broke at
about 90 layers.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid

import pytest
from test_versions import container_view

from helpers import PYCOR, run
from pycor_hooks import linux, overlay
from pycor_hooks.store import Store

DEPTH = 400


def pycor(env, *args, check=True, extra_env=None):
    return run(PYCOR + list(args), env=dict(env, **(extra_env or {})), check=check)


def add_layer(store: Store, base: str, i: int) -> None:
    """Version i of base: one tiny change, published through the store's own API."""
    current = store.current(base)
    staging = store.new_staging(f"{base}.test")
    rootfs = os.path.join(staging, "rootfs")
    os.makedirs(os.path.join(rootfs, "etc", "layers"))
    os.chmod(staging, 0o755)
    with open(os.path.join(rootfs, "etc", "depth"), "w") as f:
        f.write(f"{i}\n")
    open(os.path.join(rootfs, "etc", "layers", f"l{i}"), "w").close()
    if i == 100:  # a whiteout hides the busybox base's /etc/group
        os.mknod(os.path.join(rootfs, "etc", "group"), stat.S_IFCHR | 0o644, os.makedev(0, 0))
    if i == 120:
        os.makedirs(os.path.join(rootfs, "srv", "old"))
    if i == 150:  # an opaque directory hides /srv/old below it
        os.makedirs(os.path.join(rootfs, "srv", "new"))
        for attr in overlay.OPAQUE_XATTRS:
            os.setxattr(os.path.join(rootfs, "srv"), attr, b"y")
    if i == 300:
        with open(os.path.join(rootfs, "etc", "group"), "w") as f:
            f.write("root:x:0:\nback:x:300:\n")
    store.publish_version(base, staging, current, f"test layer {i}", 0, expected_current=current)


@pytest.fixture
def deep_base(installed, env, store):
    """A busybox base of DEPTH layers, built in-process in a few seconds; removed afterwards."""
    name = f"deep{uuid.uuid4().hex[:6]}"
    pycor(env, "base", "import", name, "--busybox")
    try:
        st = Store(store)
        for i in range(2, DEPTH + 1):
            add_layer(st, name, i)
        assert st.depth(name, st.current(name)) == DEPTH
        yield name
    finally:
        subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)
        shutil.rmtree(os.path.join(store, "bases", name), ignore_errors=True)  # never left for later tests' gc


def store_mounts(store: str) -> list[str]:
    """Mount points at or below the store in the host's mount table (a merged view left behind)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(store)]


def view(c) -> list[str]:
    """container_view without directory sizes: a merged directory shows its top layer's size, a squashed one its own."""
    lines = []
    for line in container_view(c):
        parts = line.split(" ")
        if len(parts) > 5 and parts[1] == "directory":
            parts[5] = "-"
        lines.append(" ".join(parts))
    return lines


def check_deep_view(c) -> None:
    assert c.sh("cat /etc/depth").stdout == f"{DEPTH}\n"
    assert c.sh("ls /etc/layers | wc -l").stdout.strip() == str(DEPTH - 1)
    assert c.sh("cat /etc/group").stdout == "root:x:0:\nback:x:300:\n"
    assert c.sh("ls /srv").stdout.split() == ["new"]


@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_container_starts_on_a_400_layer_base(make_container, deep_base, unprivileged):
    c = make_container(base=deep_base, extra=("--unprivileged",) if unprivileged else ())
    c.start()
    check_deep_view(c)
    c.sh("echo mine > /etc/depth")
    assert c.sh("cat /etc/depth").stdout == "mine\n"


def test_squash_of_400_layers_keeps_the_view_and_leaves_no_mount(make_container, env, store, deep_base):
    c = make_container(base=deep_base)
    c.start()
    before = view(c)
    c.stop()
    # killed while it copies from its merged view: nothing stays mounted on the host
    proc = pycor(env, "base", "squash", deep_base, check=False, extra_env={"PYCOR_FAULT": "merged-view"})
    assert proc.returncode == -9, proc.stderr
    assert store_mounts(store) == []
    pycor(env, "base", "squash", deep_base)
    assert store_mounts(store) == []
    assert Store(store).depth(deep_base, Store(store).current(deep_base)) == 1
    c.start()
    assert view(c) == before
    check_deep_view(c)


@pytest.fixture
def app_base(env, deep_base):
    """The name a test commits to; that base is removed after the test's containers (set up first, torn down last)."""
    name = f"{deep_base}-app"
    yield name
    subprocess.run(PYCOR + ["base", "rm", name], env=env, capture_output=True)


@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_commit_of_a_container_on_400_layers_reproduces_its_view(app_base, make_container, env, store, deep_base, unprivileged):
    extra = ("--unprivileged",) if unprivileged else ()
    c = make_container(base=deep_base, extra=extra)
    c.start()
    c.sh("echo app > /srv/new/app; rm /etc/layers/l7; echo mine > /etc/depth")
    seen = view(c)
    c.stop()
    pycor(env, "commit", c.name, "--as", app_base, "-P", c.lxcpath)
    assert store_mounts(store) == []
    clone = make_container(base=app_base, extra=extra)
    clone.start()
    assert view(clone) == seen


# -- pure: no mount, no container -------------------------------------------------------


def test_legacy_fallback_mounts_attached_and_detached(tmp_path, monkeypatch):
    """The mount(2) path kernels before 6.8 take, forced here: same result, and no mount left behind."""
    monkeypatch.setattr(overlay, "_api", "legacy")
    paths = {d: tmp_path / d for d in ("top", "bottom", "upper", "work", "target")}
    for p in paths.values():
        p.mkdir()
    (paths["top"] / "a").write_text("top")
    (paths["bottom"] / "a").write_text("bottom")
    (paths["bottom"] / "b").write_text("bottom")
    fds = {d: os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d, p in paths.items()}
    try:
        with overlay.merged_view([fds["top"], str(paths["bottom"])], str(tmp_path / "scratch")) as root:
            assert sorted(os.listdir(root)) == ["a", "b"] and open(os.path.join(root, "a")).read() == "top"
            assert not os.path.exists(tmp_path / "scratch")  # attached only for the moment open_tree took
        overlay.mount_overlay([fds["top"], fds["bottom"]], fds["upper"], fds["work"], fds["target"])
        try:
            (paths["target"] / "c").write_text("new")
            assert sorted(os.listdir(paths["target"])) == ["a", "b", "c"]
        finally:
            linux.umount2(str(paths["target"]), linux.MNT_DETACH)
        assert (paths["upper"] / "c").read_text() == "new"
    finally:
        for fd in fds.values():
            os.close(fd)
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()
