"""Idmapped views of a root-owned base: parsing, the user-namespace helper, the
views themselves on the real kernel, an overlay mounted as container root on
such a view, and the registry that shares views between containers.

Runs as root. Every mount made here is undone in fixture teardown, even when
a test fails, and the session checks that none is left in /proc/self/mountinfo.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pycor_hooks import idmap, linux
from pycor_hooks.errors import PycorError
from pycor_hooks.idmap import IdMap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs real root")

MAP_100K = "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"
MAP_200K = "lxc.idmap = u 0 200000 65536\nlxc.idmap = g 0 200000 65536\n"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
MS_BIND = 0x1000


def parse(text: str) -> IdMap:
    return IdMap.parse_lxc_config(text)


# --- mount bookkeeping --------------------------------------------------------------


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below prefix in our mount namespace, deepest first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040-style octal escapes
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(prefix: str) -> list[str]:
    left = mounts_under(prefix)
    for _ in range(8):
        points = mounts_under(prefix)
        if not points:
            break
        for point in points:
            try:
                linux.umount2(point, linux.MNT_DETACH)
            except OSError:
                pass
    return left


@pytest.fixture(scope="session")
def session_dir() -> Iterator[str]:
    """A 0755 root-owned scratch dir (pytest's tmp_path is 0700: container root could not walk it)."""
    path = tempfile.mkdtemp(prefix="pycor-idmap-test-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        left = unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"mounts left behind by the tests: {left}"


@pytest.fixture
def work(session_dir: str) -> Iterator[str]:
    path = tempfile.mkdtemp(dir=session_dir)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        left = unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"mounts left behind by the test: {left}"


def make_base(path: str) -> str:
    """A small base layer: root-owned files, plus one owned by 1000:1000."""
    os.makedirs(f"{path}/etc", 0o755)
    os.makedirs(f"{path}/usr/bin", 0o755)
    os.makedirs(f"{path}/home/user", 0o755)
    with open(f"{path}/etc/hostname", "w") as f:
        f.write("base\n")
    with open(f"{path}/etc/passwd", "w") as f:
        f.write("root:x:0:0::/root:/bin/sh\n")
    with open(f"{path}/usr/bin/tool", "w") as f:
        f.write("#!/bin/sh\necho tool\n")
    os.chmod(f"{path}/usr/bin/tool", 0o755)
    with open(f"{path}/home/user/notes", "w") as f:
        f.write("mine\n")
    os.chown(f"{path}/home/user", 1000, 1000)
    os.chown(f"{path}/home/user/notes", 1000, 1000)
    for p in (path, f"{path}/etc", f"{path}/usr", f"{path}/usr/bin", f"{path}/home"):
        os.chmod(p, 0o755)
    return path


def snapshot(path: str) -> dict[str, tuple[int, int, int, bytes]]:
    """Owner, mode and content of everything under path, symlinks not followed."""
    result = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            data = b""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            result[os.path.relpath(p, path)] = (st.st_uid, st.st_gid, st.st_mode, data)
    return result


@pytest.fixture
def base(work: str) -> str:
    return make_base(f"{work}/base")


@pytest.fixture
def view(work: str, base: str) -> Iterator[str]:
    """The base seen through an idmapped view with the 100000 map."""
    dst = f"{work}/view"
    fd = idmap.userns_fd(parse(MAP_100K))
    try:
        idmap.make_view(base, dst, fd)
    finally:
        os.close(fd)
    try:
        yield dst
    finally:
        idmap.remove_view(dst)


# --- running code as container root ---------------------------------------------------


def as_container_root(im: IdMap, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run fn in a child that unshared a user and a mount namespace carrying im, as its root.

    The parent writes the maps, as LXC does. fn's result comes back as JSON;
    its mounts vanish with the child's mount namespace.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(out_r)
            try:
                if _libc.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare")
                os.write(ready_w, b"1")
                os.read(go_r, 1)
                os.setresgid(0, 0, 0)
                os.setgroups([])
                os.setresuid(0, 0, 0)
                result: dict[str, Any] = {"ok": fn()}
            except BaseException:
                result = {"error": traceback.format_exc()}
            data = json.dumps(result).encode()
            while data:
                data = data[os.write(out_w, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    os.close(out_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the child could not unshare"
        idmap.write_id_maps(pid, im)
        os.close(go_w)
        go_w = -1
        chunks = []
        while chunk := os.read(out_r, 65536):
            chunks.append(chunk)
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(ready_r)
        os.close(out_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    reply = json.loads(b"".join(chunks))
    if "error" in reply:
        pytest.fail("in the container's namespaces:\n" + reply["error"])
    seen: dict[str, Any] = reply["ok"]
    return seen


def mount_overlay(lowerdir: str, upperdir: str, workdir: str, target: str) -> None:
    options = f"lowerdir={lowerdir},upperdir={upperdir},workdir={workdir},userxattr"
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


# --- parsing and checking (pure logic) ----------------------------------------------------


# --- the user-namespace helper --------------------------------------------------------------


def test_userns_fd_is_a_user_namespace_carrying_the_map() -> None:
    im = parse("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 200000 1000\n")
    fd = idmap.userns_fd(im)
    try:
        st, own = os.fstat(fd), os.stat("/proc/self/ns/user")
        assert st.st_dev == own.st_dev, "not an nsfs inode"
        assert st.st_ino != own.st_ino, "our own namespace, not a new one"
        # Enter it in a child and read the maps as seen from inside.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                if _libc.setns(fd, linux.CLONE_NEWUSER) == 0:
                    with open("/proc/self/uid_map") as u, open("/proc/self/gid_map") as g:
                        os.write(w, json.dumps([u.read().split(), g.read().split()]).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        data = os.read(r, 4096)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(data) == [["0", "100000", "65536"], ["0", "200000", "1000"]]
    finally:
        os.close(fd)


def test_userns_fd_reaps_its_helper_and_refuses_bad_maps() -> None:
    os.close(idmap.userns_fd(parse(MAP_100K)))
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left, not even a zombie
    with pytest.raises(PycorError, match="host uid 0"):
        idmap.userns_fd(parse("lxc.idmap = u 0 0 1\nlxc.idmap = g 0 100000 1\n"))


def test_userns_fd_is_fast() -> None:
    im = parse(MAP_100K)
    os.close(idmap.userns_fd(im))  # warm: python-prctl imported once
    start = time.perf_counter()
    for _ in range(20):
        os.close(idmap.userns_fd(im))
    per_call = (time.perf_counter() - start) / 20
    print(f"userns_fd: {per_call * 1000:.2f} ms per call")
    assert per_call < 0.05


# --- mount detection ---------------------------------------------------------------------------


def test_is_mounted_sees_a_same_filesystem_bind(work: str) -> None:
    src, dst = f"{work}/src", f"{work}/dst"
    os.mkdir(src)
    os.mkdir(dst)
    assert not idmap.is_mounted(dst)
    assert not idmap.is_mounted(f"{work}/missing")
    assert _libc.mount(src.encode(), dst.encode(), None, MS_BIND, None) == 0
    try:
        assert os.stat(dst).st_dev == os.stat(work).st_dev  # why st_dev cannot tell
        assert idmap.is_mounted(dst)
        assert not idmap.is_mounted(src)
    finally:
        linux.umount2(dst, linux.MNT_DETACH)
    assert not idmap.is_mounted(dst)


# --- one view on the real kernel -----------------------------------------------------------------


def test_view_shows_base_owners_shifted_and_leaves_base_untouched(work: str, base: str) -> None:
    before = snapshot(base)
    dst = f"{work}/view"
    fd = idmap.userns_fd(parse(MAP_100K))
    try:
        idmap.make_view(base, dst, fd)
    finally:
        os.close(fd)
    try:
        assert idmap.is_mounted(dst)
        assert stat.S_IMODE(os.stat(f"{work}/view").st_mode) == 0o755
        st = os.stat(f"{dst}/etc/hostname")
        assert (st.st_uid, st.st_gid) == (100000, 100000)
        st = os.stat(f"{dst}/home/user/notes")
        assert (st.st_uid, st.st_gid) == (101000, 101000)
        with open(f"{dst}/etc/hostname") as f:
            assert f.read() == "base\n"
        # Same inodes as the base: no copy.
        assert os.stat(f"{dst}/etc/hostname").st_ino == os.stat(f"{base}/etc/hostname").st_ino
        for write in (
            lambda: open(f"{dst}/new", "w"),
            lambda: open(f"{dst}/etc/hostname", "a"),
            lambda: os.chown(f"{dst}/etc/hostname", 0, 0),
            lambda: os.unlink(f"{dst}/etc/passwd"),
        ):
            with pytest.raises(OSError) as e:
                write()
            assert e.value.errno == errno.EROFS
    finally:
        idmap.remove_view(dst)
    assert not idmap.is_mounted(dst)
    assert not os.path.exists(dst)
    assert snapshot(base) == before


def test_view_is_not_recursive(work: str, base: str) -> None:
    """A mount inside the base does not show through the view."""
    extra = f"{work}/extra"
    os.mkdir(extra)
    open(f"{extra}/leak", "w").close()
    assert _libc.mount(extra.encode(), f"{base}/usr".encode(), None, MS_BIND, None) == 0
    dst = f"{work}/view"
    try:
        fd = idmap.userns_fd(parse(MAP_100K))
        try:
            idmap.make_view(base, dst, fd)
        finally:
            os.close(fd)
        assert os.listdir(f"{dst}/usr") == ["bin"]
    finally:
        idmap.remove_view(dst)
        linux.umount2(f"{base}/usr", linux.MNT_DETACH)


def test_remove_view_is_idempotent(work: str, view: str) -> None:
    idmap.remove_view(view)
    idmap.remove_view(view)
    idmap.remove_view(f"{work}/never-existed")
    assert not os.path.exists(view)


def test_make_view_does_not_follow_a_symlink_at_dst(work: str, base: str) -> None:
    os.mkdir(f"{work}/target")
    os.symlink(f"{work}/target", f"{work}/link")
    fd = idmap.userns_fd(parse(MAP_100K))
    try:
        with pytest.raises(OSError):
            idmap.make_view(base, f"{work}/link", fd)
    finally:
        os.close(fd)
    assert not idmap.is_mounted(f"{work}/target")
    assert not idmap.is_mounted(f"{work}/link")


def test_make_view_of_missing_source_fails_cleanly(work: str) -> None:
    fd = idmap.userns_fd(parse(MAP_100K))
    try:
        with pytest.raises(FileNotFoundError):
            idmap.make_view(f"{work}/nope", f"{work}/view", fd)
    finally:
        os.close(fd)
    assert not idmap.is_mounted(f"{work}/view")


# --- the real use: an overlay mounted as container root on the view --------------------------------


def test_overlay_in_container_userns_sees_base_as_root_and_writes_to_upper(work: str, base: str, view: str) -> None:
    before = snapshot(base)
    upper, wdir, merged = f"{work}/upper", f"{work}/work", f"{work}/merged"
    for d in (upper, wdir):
        os.mkdir(d, 0o755)
        os.chown(d, 100000, 100000)  # container root's host ids, as a container layer is
    os.mkdir(merged, 0o755)

    def inside() -> dict[str, Any]:
        mount_overlay(view, upper, wdir, merged)
        seen: dict[str, Any] = {}
        for p in ("", "etc/hostname", "usr/bin/tool", "home/user/notes"):
            st = os.stat(f"{merged}/{p}")
            seen[p] = [st.st_uid, st.st_gid]
        with open(f"{merged}/etc/hostname") as f:
            seen["content"] = f.read()
        with open(f"{merged}/etc/new.conf", "w") as f:
            f.write("container\n")
        os.unlink(f"{merged}/etc/passwd")
        with open(f"{merged}/etc/hostname", "w") as f:  # copy-up
            f.write("web1\n")
        seen["ids"] = [os.getuid(), os.getgid()]
        return seen

    seen = as_container_root(parse(MAP_100K), inside)
    assert seen["ids"] == [0, 0]
    assert seen[""] == [0, 0]
    assert seen["etc/hostname"] == [0, 0]
    assert seen["usr/bin/tool"] == [0, 0]
    assert seen["home/user/notes"] == [1000, 1000]
    assert seen["content"] == "base\n"

    # The overlay vanished with the child's mount namespace.
    assert not idmap.is_mounted(merged)
    # New file and copy-up land in upper, owned by container root's host ids.
    st = os.lstat(f"{upper}/etc/new.conf")
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    st = os.lstat(f"{upper}/etc/hostname")
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    with open(f"{upper}/etc/hostname") as f:
        assert f.read() == "web1\n"
    # Deleting a base file left a whiteout: a 0/0 character device.
    st = os.lstat(f"{upper}/etc/passwd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (st.st_uid, st.st_gid) == (100000, 100000)
    # The base is untouched and still root-owned.
    assert snapshot(base) == before
    assert os.stat(f"{base}/etc/hostname").st_uid == 0


# --- the registry of shared views -----------------------------------------------------------------


@pytest.fixture
def views_root(work: str) -> Iterator[str]:
    root = f"{work}/run/views"
    try:
        yield root
    finally:
        idmap.release_unused(set(), root)


def test_ensure_views_shares_one_view_per_map_and_layer(work: str, base: str, views_root: str) -> None:
    other = make_base(f"{work}/base2")
    layers = {"debian12.1": base, "debian12.2": other}
    a = idmap.ensure_views(parse(MAP_100K), layers, root=views_root)
    key = parse(MAP_100K).key
    assert a == {"debian12.1": f"{views_root}/{key}/debian12.1", "debian12.2": f"{views_root}/{key}/debian12.2"}
    assert a["debian12.1"] == idmap.view_path(key, "debian12.1", views_root)
    assert os.stat(f"{a['debian12.1']}/etc/hostname").st_uid == 100000
    assert len(mounts_under(views_root)) == 2

    # A second container with the same map reuses both views.
    assert idmap.ensure_views(parse(MAP_100K), layers, root=views_root) == a
    assert len(mounts_under(views_root)) == 2

    # A different map gets its own view.
    b = idmap.ensure_views(parse(MAP_200K), {"debian12.1": base}, root=views_root)
    assert b["debian12.1"] != a["debian12.1"]
    assert os.stat(f"{b['debian12.1']}/etc/hostname").st_uid == 200000
    assert len(mounts_under(views_root)) == 3
    key2 = parse(MAP_200K).key
    assert idmap.list_views(views_root) == {(key, "debian12.1"), (key, "debian12.2"), (key2, "debian12.1")}

    # Root-owned; the views' folder 0711; each map's folder 0710 to its mapped root's gid only
    # (the base's setuid binaries are reachable through a view by that map's root, by no other host user).
    for p, mode, gid in ((f"{work}/run", 0o755, 0), (views_root, 0o711, 0),
                         (f"{views_root}/{key}", 0o710, 100000), (f"{views_root}/{key2}", 0o710, 200000)):
        st = os.lstat(p)
        assert stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) == (0, gid) and stat.S_IMODE(st.st_mode) == mode, p

    # Release what nobody uses; keep what is in use.
    removed = idmap.release_unused({(key, "debian12.1")}, root=views_root)
    assert sorted(removed) == sorted([a["debian12.2"], b["debian12.1"]])
    assert mounts_under(views_root) == [a["debian12.1"]]
    assert not os.path.exists(f"{views_root}/{key2}")
    assert idmap.release_unused({(key, "debian12.1")}, root=views_root) == []

    idmap.release_unused(set(), root=views_root)
    assert mounts_under(views_root) == []
    assert sorted(os.listdir(views_root)) == ["lock"]


def test_ensure_views_failing_halfway_leaves_nothing(work: str, base: str, views_root: str) -> None:
    im = parse(MAP_100K)
    with pytest.raises(PycorError, match="cannot make an idmapped view of .*missing"):
        idmap.ensure_views(im, {"a": base, "b": f"{work}/missing"}, root=views_root)
    assert mounts_under(views_root) == []
    assert not os.path.exists(f"{views_root}/{im.key}")

    # Views that existed before the failing call survive it.
    idmap.ensure_views(im, {"a": base}, root=views_root)
    with pytest.raises(PycorError):
        idmap.ensure_views(im, {"a": base, "b": f"{work}/missing"}, root=views_root)
    assert mounts_under(views_root) == [f"{views_root}/{im.key}/a"]


def test_ensure_views_refuses_bad_input_before_touching_anything(base: str, views_root: str) -> None:
    with pytest.raises(PycorError, match="invalid layer id"):
        idmap.ensure_views(parse(MAP_100K), {"../escape": base}, root=views_root)
    with pytest.raises(PycorError, match="host uid 0"):
        idmap.ensure_views(parse("lxc.idmap = u 0 0 1\nlxc.idmap = g 0 1 1\n"), {"a": base}, root=views_root)
    assert not os.path.exists(views_root)


def test_ensure_views_refuses_a_view_of_another_directory(work: str, base: str, views_root: str) -> None:
    other = make_base(f"{work}/other")
    idmap.ensure_views(parse(MAP_100K), {"a": base}, root=views_root)
    with pytest.raises(PycorError, match="shows another directory"):
        idmap.ensure_views(parse(MAP_100K), {"a": other}, root=views_root)


def test_ensure_views_does_not_follow_symlinks(work: str, base: str) -> None:
    target = f"{work}/elsewhere"
    os.mkdir(target)
    os.symlink(target, f"{work}/linked")
    with pytest.raises(PycorError, match="not a directory"):
        idmap.ensure_views(parse(MAP_100K), {"a": base}, root=f"{work}/linked/views")
    assert os.listdir(target) == []


def test_ensure_views_refuses_a_root_others_can_write(work: str, base: str) -> None:
    root = f"{work}/open"
    os.mkdir(root)
    os.chmod(root, 0o777)
    with pytest.raises(PycorError, match="owned by root and writable only by root"):
        idmap.ensure_views(parse(MAP_100K), {"a": base}, root=root)
    assert os.listdir(root) == []


def test_release_unused_on_missing_root_is_fine(work: str) -> None:
    assert idmap.release_unused(set(), root=f"{work}/none") == []
    assert not os.path.exists(f"{work}/none")


def test_a_view_showing_another_directory_is_remade_only_when_nobody_uses_it(work: str, base: str, views_root: str) -> None:
    """A container killed without its post-stop leaves its view; the layer id may later name another directory."""
    other = make_base(f"{work}/base2")
    with open(f"{other}/etc/marker", "w") as f:
        f.write("other\n")
    first = idmap.ensure_views(parse(MAP_100K), {"b.1": base}, root=views_root)
    for remake_if in (None, lambda layer_id: False):  # in use (or nobody says otherwise): refused, view kept
        with pytest.raises(PycorError, match="shows another directory"):
            idmap.ensure_views(parse(MAP_100K), {"b.1": other}, root=views_root, remake_if=remake_if)
        assert not os.path.exists(f"{first['b.1']}/etc/marker")
    again = idmap.ensure_views(parse(MAP_100K), {"b.1": other}, root=views_root, remake_if=lambda layer_id: True)
    assert again == first and open(f"{again['b.1']}/etc/marker").read() == "other\n"
    assert len(mounts_under(views_root)) == 1
