"""Issue 21, the pure parts: overlay xattr names between namespaces, the inbox's replay on plain directories,
container paths and ids for file transfer (any user, no container)."""

from __future__ import annotations

import os

import pytest

from pycor_hooks import inbox, ovlxattr
from pycor_hooks.errors import PycorError
from pycor_hooks.idmap import IdMap
from pycor_hooks.layer import parse_meta
from pycor_hooks.publish import container_path, ns_to_host


def moved(names: dict[str, bytes], source: str, target: str) -> dict[str, bytes]:
    """What convert() does to one entry's xattrs, phase by phase."""
    one: dict[str, bytes] = {}
    for name, value in names.items():
        new = ovlxattr.to_neutral(source, name)
        if new is None:
            one[name] = value
        elif new:
            one[new] = value
    two: dict[str, bytes] = {}
    for name, value in one.items():
        new = ovlxattr.from_neutral(target, name)
        two[new if new is not None else name] = value
    return two


PRIVILEGED = {
    "trusted.overlay.opaque": b"y", "trusted.overlay.origin": b"\0fh", "trusted.overlay.impure": b"y",
    "trusted.overlay.overlay.mine": b"t",  # the container's own trusted.overlay.mine, escaped by overlayfs
    "user.overlay.other": b"u",  # the container's own user.overlay.other: stored as set in trusted mode
    "user.overlay.overlay.x": b"w",  # the container's own user.overlay.overlay.x
    "user.plain": b"p", "security.capability": b"c",
}


def test_privileged_layer_converts_to_user_mode_and_back_unchanged():
    unprivileged = moved(PRIVILEGED, "trusted", "user")
    assert unprivileged == {
        "user.overlay.opaque": b"y", "user.overlay.origin": b"\0fh", "user.overlay.impure": b"y",
        "trusted.overlay.overlay.mine": b"t",  # no user-mode form: kept, unread by an unprivileged mount
        "user.overlay.overlay.other": b"u", "user.overlay.overlay.overlay.x": b"w",  # escaped as userxattr escapes them
        "user.plain": b"p", "security.capability": b"c",
    }
    assert moved(unprivileged, "user", "trusted") == PRIVILEGED


def test_a_stale_privileged_mark_on_an_unprivileged_layer_is_dropped_not_revived():
    layer = {"user.overlay.opaque": b"y", "trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/x"}
    assert moved({"trusted.overlay.redirect": b"/x"}, "user", "trusted") == {}
    assert moved(layer, "user", "trusted") == {"trusted.overlay.opaque": b"y"}


def test_the_neutral_form_is_never_taken_for_a_mark_of_either_namespace():
    for name in ("trusted.overlay.pycor.p.opaque", "trusted.overlay.pycor.e.x"):
        assert ovlxattr.ovl_name("trusted", name) is None
        assert ovlxattr.to_neutral("trusted", name) is None and ovlxattr.to_neutral("user", name) is None
    assert ovlxattr.namespaces(["user.overlay.opaque", "trusted.overlay.overlay.x"]) == {"user"}
    assert ovlxattr.namespaces(["user.overlay.overlay.x", "security.selinux"]) == set()
    assert ovlxattr.resume_target("user>trusted:2") == ("user", "trusted") and ovlxattr.resume_target("user") is None


def test_layer_metadata_records_the_namespace_and_refuses_anything_else():
    assert parse_meta(b'{"base": "b", "xattrs": "user>trusted:1"}', "x").xattrs == "user>trusted:1"
    assert parse_meta(b'{"base": "b"}', "x").xattrs is None
    with pytest.raises(PycorError):
        parse_meta(b'{"base": "b", "xattrs": "../etc"}', "x")


# -- the inbox, on plain directories ----------------------------------------------------------


def tree(root: str, files: dict[str, str | None]) -> None:
    """Make files (content) and directories (None) under root."""
    for rel, content in files.items():
        path = os.path.join(root, rel)
        if content is None:
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)


def replay(tmp_path) -> tuple[inbox.Replay, str, str]:  # type: ignore[no-untyped-def]
    under, root = str(tmp_path / "under"), str(tmp_path / "root")
    ufd, rfd = os.open(under, os.O_PATH), os.open(root, os.O_PATH)
    try:
        work = inbox.replay(ufd, rfd)
    finally:
        os.close(ufd)
        os.close(rfd)
    assert work is not None
    return work, under, root


def test_replay_puts_pushed_files_where_the_container_would_find_them(tmp_path):
    root = str(tmp_path / "root")
    tree(root, {"etc/passwd": "root\n", "etc/keep": "mine\n", "usr/lib/x": "old\n", "etc/adir": None})
    os.symlink("usr/lib", os.path.join(root, "lib"))
    os.chmod(os.path.join(root, "etc"), 0o750)
    batch = str(tmp_path / "under" / ".pycor" / "inbox" / "00000000000000000001.1")
    tree(batch, {"etc/passwd": "pushed\n", "lib/x": "new\n", "etc/new/deep": "d\n", "etc/adir": "a file\n"})
    os.chmod(os.path.join(batch, "etc"), 0o755)
    os.chmod(os.path.join(batch, "etc", "new"), 0o711)
    os.symlink("/etc/passwd", os.path.join(batch, "link"))
    work, under, _ = replay(tmp_path)
    assert sorted(work.done) == ["/etc/new/deep", "/etc/passwd", "/lib/x", "/link"]
    assert open(os.path.join(root, "etc/passwd")).read() == "pushed\n"
    assert open(os.path.join(root, "usr/lib/x")).read() == "new\n"  # /lib -> usr/lib, as the container resolves it
    assert open(os.path.join(root, "etc/keep")).read() == "mine\n"  # a push into /etc keeps what /etc held
    assert os.stat(os.path.join(root, "etc")).st_mode & 0o777 == 0o750  # an existing directory keeps its mode
    assert os.stat(os.path.join(root, "etc/new")).st_mode & 0o777 == 0o711  # a new one is made as pushed
    assert os.readlink(os.path.join(root, "link")) == "/etc/passwd"
    assert os.path.isdir(os.path.join(root, "etc/adir"))  # a file over a directory: kept aside, never dropped
    assert work.rejected == [("/etc/adir", "the container has a directory there")]
    assert inbox.rejected(os.open(under, os.O_PATH)) == ["/etc/adir"]
    kept = os.path.join(under, ".pycor", "inbox", "rejected", "00000000000000000001.1", "etc", "adir")
    assert open(kept).read() == "a file\n"
    assert os.listdir(os.path.join(under, ".pycor", "inbox")) == ["rejected"]  # the batch is done
    assert not [n for _, _, names in os.walk(root) for n in names if n == inbox.TMP]
    assert "1 could not go in place (/etc/adir" in inbox.summary(work)


def test_replay_resumes_where_a_crash_left_it_and_batches_go_oldest_first(tmp_path):
    root = str(tmp_path / "root")
    tree(root, {"etc/f": "container\n"})
    box = tmp_path / "under" / ".pycor" / "inbox"
    tree(str(box / "00000000000000000002.1"), {"etc/f": "second\n"})
    tree(str(box / "00000000000000000001.1"), {"etc/f": "first\n", "etc/g": "g\n"})
    tree(str(box / ".new-00000000000000000003.1"), {"etc/f": "a push still being written\n"})
    open(os.path.join(root, "etc", inbox.TMP), "w").close()  # a replay that died between writing and renaming
    work, _, _ = replay(tmp_path)
    assert open(os.path.join(root, "etc/f")).read() == "second\n"
    assert open(os.path.join(root, "etc/g")).read() == "g\n"
    assert not os.path.exists(os.path.join(root, "etc", inbox.TMP))
    assert sorted(os.listdir(box)) == [".new-00000000000000000003.1"]
    assert work.done == ["/etc/f", "/etc/g", "/etc/f"]


def test_a_pushed_directory_over_a_container_file_is_kept_aside(tmp_path):
    root = str(tmp_path / "root")
    tree(root, {"opt": "a file\n"})
    os.symlink("nowhere", os.path.join(root, "dangling"))
    tree(str(tmp_path / "under" / ".pycor" / "inbox" / "1"), {"opt/x": "x\n", "dangling/y": "y\n"})
    work, under, _ = replay(tmp_path)
    assert work.done == [] and {w for w, _ in work.rejected} == {"/opt", "/dangling"}
    assert open(os.path.join(root, "opt")).read() == "a file\n"
    assert inbox.rejected(os.open(under, os.O_PATH)) == ["/dangling/y", "/opt/x"]


def test_nothing_pushed_costs_one_failed_open(tmp_path):
    os.makedirs(tmp_path / "under" / ".pycor")
    os.makedirs(tmp_path / "root")
    ufd = os.open(tmp_path / "under", os.O_PATH)
    try:
        assert inbox.replay(ufd, ufd) is None
        assert not inbox.pending(ufd)
    finally:
        os.close(ufd)


# -- file transfer --------------------------------------------------------------------------------


def test_container_paths_and_ids_are_checked():
    assert container_path("/etc//ssh/./x") == "/etc/ssh/x"
    for bad in ("etc/x", "/etc/../x", "/", "/a\0b"):
        with pytest.raises(PycorError):
            container_path(bad)
    idmap = IdMap.parse_lxc_config("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n")
    assert ns_to_host(idmap, "u", 1000) == 101000 and ns_to_host(idmap, "g", 0) == 100000
    with pytest.raises(PycorError):
        ns_to_host(idmap, "u", 70000)
