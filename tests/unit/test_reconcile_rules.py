"""Reconciliation's rules on layers made of plain directories (no mount, no container, any user).

A: the base version a container's changes were made on; B: a version stacked on it; upper: the
container's changes. Whiteouts are 0/0 character devices (any user may make one), opaque marks the
user.overlay.opaque xattr an unprivileged container's overlay writes.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from pycor_hooks import reconcile
from pycor_hooks.errors import Conflict
from pycor_hooks.layer import LayerMeta, create_layer

OPAQUE = "user.overlay.opaque"
ROOT = (0, 0)  # the layers' files carry the container's own ids, as a privileged container's do (whoever runs the test)
WHITEOUT = object()


def put(root: str, files: dict[str, object]) -> None:
    """rel -> bytes (a file), "dir", WHITEOUT, ("link", target), ("opaque",) (an opaque directory)."""
    for rel, what in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if what is WHITEOUT:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        elif what == "dir":
            os.makedirs(path, exist_ok=True)
        elif isinstance(what, tuple) and what[0] == "link":
            os.symlink(what[1], path)
        elif isinstance(what, tuple) and what[0] == "opaque":
            os.makedirs(path, exist_ok=True)
            os.setxattr(path, OPAQUE, b"y")
        else:
            assert isinstance(what, bytes)
            with open(path, "wb") as f:
                f.write(what)


class Move:
    """A container layer in tmp/rootfs/.pycor and two base versions, A (one layer) and B (A plus one)."""

    def __init__(self, tmp: str, a: dict[str, object], b_adds: dict[str, object], upper: dict[str, object]) -> None:
        self.a_layer, self.b_layer = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        os.makedirs(self.a_layer)
        os.makedirs(self.b_layer)
        put(self.a_layer, a)
        put(self.b_layer, b_adds)
        self.rootfs = os.path.join(tmp, "rootfs")
        os.makedirs(self.rootfs)
        create_layer(self.rootfs, LayerMeta("base", None, "1"), os.getuid(), os.getgid())
        self.upper = os.path.join(self.rootfs, ".pycor", "upper")
        put(self.upper, upper)

    @property
    def a(self) -> list[str]:
        return [self.a_layer]

    @property
    def b(self) -> list[str]:
        return [self.b_layer, self.a_layer]

    def plan(self) -> reconcile.Plan:
        fd = os.open(self.upper, os.O_PATH | os.O_DIRECTORY)
        try:
            return reconcile.plan(fd, self.a, self.b, ROOT)
        finally:
            os.close(fd)

    def move(self, old: str = "1", new: str = "2", **kw: bool) -> reconcile.Plan:
        rfd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY)
        ufd = os.open(self.upper, os.O_PATH | os.O_DIRECTORY)
        try:
            return reconcile.reconcile(rfd, ufd, old, new, self.a, self.b, root=ROOT, **kw)
        finally:
            os.close(ufd)
            os.close(rfd)

    def record(self) -> dict:
        with open(os.path.join(self.rootfs, ".pycor", "conflicts.json")) as f:
            return json.load(f)


def kinds(p: reconcile.Plan) -> list[tuple[str, str]]:
    return sorted((f.kind, f.path) for f in p.findings)


# -- opaque directories that hid nothing -------------------------------------------------------------------

def test_an_opaque_directory_that_hid_nothing_lets_what_the_base_adds_there_show(tmp_path):
    # dpkg made usr/share/man/ro as ro.dpkg-new and renamed it: overlayfs marked it opaque
    m = Move(str(tmp_path), {"usr/share/man/de/x.1": b"de"}, {"usr/share/man/ro/base.1": b"base's"},
             {"usr/share/man/ro": ("opaque",), "usr/share/man/ro/mine.1": b"mine"})
    p = m.move()
    assert p.unopaque == ["usr/share/man/ro"] and not p.conflicts
    assert OPAQUE not in os.listxattr(os.path.join(m.upper, "usr/share/man/ro"))
    assert open(os.path.join(m.upper, "usr/share/man/ro/mine.1"), "rb").read() == b"mine"


def test_an_opaque_directory_that_replaced_the_bases_stays_opaque_and_is_reported(tmp_path):
    m = Move(str(tmp_path), {"etc/app/a.conf": b"a"}, {"etc/app/b.conf": b"b"},
             {"etc/app": ("opaque",), "etc/app/mine.conf": b"mine"})
    p = m.move()
    assert p.unopaque == [] and kinds(p) == [("conflict", "/etc/app")]
    assert os.getxattr(os.path.join(m.upper, "etc/app"), OPAQUE) == b"y"


def test_a_new_opaque_directorys_entries_are_reconciled_once_it_is_clear(tmp_path):
    # the base's next version installs the same package: the same file is no conflict, another one is
    m = Move(str(tmp_path), {"usr/share/doc/x": b"x"}, {"usr/share/pkg/same": b"same", "usr/share/pkg/other": b"base"},
             {"usr/share/pkg": ("opaque",), "usr/share/pkg/same": b"same", "usr/share/pkg/other": b"mine"})
    p = m.plan()
    assert kinds(p) == [("conflict", "/usr/share/pkg/other"), ("dropped", "/usr/share/pkg/same"), ("unopaque", "/usr/share/pkg")]


# -- noise: what nobody has to decide is no conflict --------------------------------------------------------

def test_a_file_the_container_holds_as_the_base_now_has_it_follows_the_base(tmp_path):
    m = Move(str(tmp_path), {"etc/x": b"old"}, {"etc/x": b"new", "usr/bin/tool": b"tool", "usr/bin/other": b"base"},
             {"etc/x": b"new", "usr/bin/tool": b"tool", "usr/bin/other": b"mine"})
    p = m.move()
    assert kinds(p) == [("conflict", "/usr/bin/other"), ("dropped", "/etc/x"), ("dropped", "/usr/bin/tool")]
    assert sorted(os.listdir(os.path.join(m.upper, "usr/bin"))) == ["other"] and not os.path.exists(os.path.join(m.upper, "etc/x"))
    os.chmod(os.path.join(m.b_layer, "usr/bin/tool"), 0o755)


def test_the_same_content_with_another_mode_is_still_a_conflict(tmp_path):
    m = Move(str(tmp_path), {}, {"usr/bin/tool": b"tool"}, {"usr/bin/tool": b"tool"})
    os.chmod(os.path.join(m.b_layer, "usr/bin/tool"), 0o755)
    os.chmod(os.path.join(m.upper, "usr/bin/tool"), 0o644)
    assert kinds(m.plan()) == [("conflict", "/usr/bin/tool")]


def status(*packages: tuple[str, str, str]) -> bytes:
    """(name, version, state[, depends]) -> a dpkg status file."""
    out = []
    for name, version, state, *depends in packages:
        lines = [f"Package: {name}", f"Status: install ok {state}", "Architecture: amd64", f"Version: {version}"]
        lines += [f"Depends: {d}" for d in depends]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out).encode()


def test_a_package_the_container_purged_stays_purged_without_conflicts(tmp_path):
    a = {"lib": ("link", "usr/lib"), "usr/sbin/nginx": b"nginx 1", "usr/lib/systemd/system/nginx.service": b"unit 1",
         "etc/nginx/nginx.conf": b"conf 1", "usr/share/doc/nginx/copyright": b"c",
         "var/lib/dpkg/status": status(("base-files", "1", "installed"), ("nginx", "1", "installed")),
         "var/lib/dpkg/info/nginx.list": b"/.\n/usr\n/usr/sbin\n/usr/sbin/nginx\n/lib/systemd/system/nginx.service\n"
                                         b"/etc/nginx/nginx.conf\n/usr/share/doc/nginx\n/usr/share/doc/nginx/copyright\n",
         "var/lib/dpkg/info/nginx.md5sums": b"1"}
    b = {"usr/sbin/nginx": b"nginx 2", "usr/lib/systemd/system/nginx.service": b"unit 2", "etc/nginx/nginx.conf": b"conf 2",
         "usr/share/nginx/html/index.html": b"new in 2", "usr/share/doc/nginx/copyright": b"c2",
         "var/lib/dpkg/status": status(("base-files", "2", "installed"), ("nginx", "2", "installed")),
         "var/lib/dpkg/info/nginx.list": b"/usr/sbin/nginx\n/usr/lib/systemd/system/nginx.service\n/etc/nginx/nginx.conf\n"
                                         b"/usr/share/nginx\n/usr/share/nginx/html\n/usr/share/nginx/html/index.html\n"
                                         b"/usr/share/doc/nginx/copyright\n",
         "var/lib/dpkg/info/nginx.md5sums": b"2", "var/lib/dpkg/info/nginx.triggers": b"new"}
    upper = {"usr/sbin/nginx": WHITEOUT, "usr/lib/systemd/system/nginx.service": WHITEOUT, "etc/nginx": WHITEOUT,
             "usr/share/doc/nginx": WHITEOUT, "var/lib/dpkg/info/nginx.list": WHITEOUT, "var/lib/dpkg/info/nginx.md5sums": WHITEOUT,
             "var/lib/dpkg/status": status(("base-files", "1", "installed"))}
    m = Move(str(tmp_path), a, b, upper)
    p = m.move()
    assert not p.conflicts, p.findings
    # what nginx 2 adds stays hidden: nothing of a purged package comes back
    assert sorted(p.whiteout) == ["usr/share/nginx", "var/lib/dpkg/info/nginx.triggers"] or \
        sorted(p.whiteout) == ["usr/share/nginx/html/index.html", "var/lib/dpkg/info/nginx.triggers"]
    for rel in p.whiteout:
        assert stat.S_ISCHR(os.lstat(os.path.join(m.upper, rel)).st_mode)
    merged = open(os.path.join(m.upper, "var/lib/dpkg/status"), "rb").read()
    assert b"nginx" not in merged and b"Version: 2" in merged  # the base's base-files 2 merged in


# -- packages a move would break ---------------------------------------------------------------------------

def test_a_move_that_breaks_the_containers_own_packages_is_held_back(tmp_path):
    a = {"var/lib/dpkg/status": status(("libfoo", "1.0", "installed"))}
    b = {"var/lib/dpkg/status": status(("libfoo", "2.0", "installed"))}
    upper = {"var/lib/dpkg/status": status(("app", "1.0", "installed", "libfoo (<< 2)"), ("libfoo", "1.0", "installed"))}
    m = Move(str(tmp_path), a, b, upper)
    p = m.plan()
    assert [(f.kind, f.detail) for f in p.holding] == [("breaks", "app : Depends: libfoo (<< 2) but 2.0 is installed")]
    with pytest.raises(Conflict) as e:
        m.move()
    assert "break the container's own packages" in e.value.message and "--upgrade" in e.value.hint
    assert m.record()["held_back"] and [f["kind"] for f in m.record()["findings"]] == ["breaks"]
    assert b"libfoo\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0" in \
        open(os.path.join(m.upper, "var/lib/dpkg/status"), "rb").read()  # unchanged
    m.move(allow_breaks=True)  # what rebase --upgrade does before it upgrades the container's packages


def test_breakage_the_container_had_before_is_not_the_moves(tmp_path):
    a = {"var/lib/dpkg/status": status(("libfoo", "1.0", "installed"))}
    b = {"var/lib/dpkg/status": status(("libfoo", "1.1", "installed"))}
    upper = {"var/lib/dpkg/status": status(("app", "1.0", "installed", "libbar"), ("libfoo", "1.0", "installed"))}
    m = Move(str(tmp_path), a, b, upper)
    assert m.plan().holding == []


# -- conflicts stay until resolved or moot --------------------------------------------------------------------

def test_a_record_conflict_stays_across_moves_until_it_is_moot(tmp_path):
    layers = {}
    for name, passwd in (("a", b"root:x:0:0::/root:/bin/sh\nsvc:x:100:100::/:/bin/false\n"),
                         ("b", b"root:x:0:0::/root:/bin/sh\nsvc:x:100:100::/srv:/bin/false\n"),
                         ("c", b"root:x:0:0::/root:/bin/bash\nsvc:x:100:100::/srv:/bin/false\n"),
                         ("d", b"root:x:0:0::/root:/bin/zsh\nsvc:x:100:100::/srv:/bin/false\n")):
        layers[name] = str(tmp_path / name)
        put(layers[name], {"etc/passwd": passwd})
    rootfs = str(tmp_path / "rootfs")
    os.makedirs(rootfs)
    create_layer(rootfs, LayerMeta("base", None, "1"), os.getuid(), os.getgid())
    upper = os.path.join(rootfs, ".pycor", "upper")
    put(upper, {"etc/passwd": b"root:x:0:0::/root:/bin/sh\nsvc:x:100:100::/home/svc:/bin/false\n"})  # svc's home, both ways
    stack = {"1": ["a"], "2": ["b", "a"], "3": ["c", "b", "a"], "4": ["d", "c", "b", "a"]}

    def move(old: str, new: str) -> list[dict]:
        rfd, ufd = os.open(rootfs, os.O_PATH), os.open(upper, os.O_PATH)
        try:
            reconcile.reconcile(rfd, ufd, old, new, [layers[x] for x in stack[old]], [layers[x] for x in stack[new]])
        finally:
            os.close(rfd)
            os.close(ufd)
        with open(os.path.join(rootfs, ".pycor", "conflicts.json")) as f:
            return [(x["kind"], x.get("record")) for x in json.load(f)["findings"]]

    assert move("1", "2") == [("conflict", "svc")]
    # the next version changes root's shell: that record merges, svc's conflict stays (it vanished before)
    assert move("2", "3") == [("conflict", "svc"), ("merged", None)]
    # the container takes the base's home for svc: the conflict is moot at the next move
    with open(os.path.join(upper, "etc/passwd"), "wb") as f:
        f.write(b"root:x:0:0::/root:/bin/bash\nsvc:x:100:100::/srv:/bin/false\nalice:x:30000:30000::/home/alice:/bin/sh\n")
    assert move("3", "4") == [("merged", None)]


# -- comparing a directory with the base's (conflicts --diff) --------------------------------------------------

def test_a_directory_is_compared_entry_by_entry_within_a_read_budget(tmp_path):
    from pycor_hooks.diff import compare

    base, upper = str(tmp_path / "base"), str(tmp_path / "upper")
    put(base, {"etc/app/a": b"a", "etc/app/b": b"b", "etc/app/sub/c": b"c", "etc/app/same": b"s"})
    put(upper, {"etc/app": ("opaque",), "etc/app/a": b"mine", "etc/app/own": b"own", "etc/app/same": b"s",
                "etc/app/new/x": b"x"})
    found = [(d.path, d.kind, d.a, d.b) for d in compare([base], [upper, base], "etc/app")]
    assert found == [("etc/app/a", "differs", b"a", b"mine"), ("etc/app/b", "only in a", None, None),
                     ("etc/app/new", "only in b", None, None), ("etc/app/own", "only in b", None, None),
                     ("etc/app/sub", "only in a", None, None)]
    assert [(d.path, d.kind) for d in compare([base], [upper, base], "etc/app", budget=0)] == \
        [("etc/app/a", "differs in size"), ("etc/app/b", "only in a"), ("etc/app/new", "only in b"),
         ("etc/app/own", "only in b"), ("etc/app/sub", "only in a")]


def test_a_symlink_planted_in_a_parent_directory_of_the_upper_is_not_followed(tmp_path):
    """_check_ids asks whether the container has its own etc/passwd: a link at etc leads out of the layer."""
    outside = tmp_path / "host-etc"
    put(str(outside), {"passwd": b"root:x:0:0::/root:/bin/sh\n", "group": b"root:x:0:\n"})
    m = Move(str(tmp_path), {"etc/passwd": b"root:x:0:0::/root:/bin/sh\n"}, {}, {"etc": ("link", str(outside))})
    fd = os.open(m.upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not reconcile._exists(fd, "etc/passwd") and not reconcile._exists(fd, "etc/group")
        put(m.upper, {"var/lib/x": b"x"})
        assert reconcile._exists(fd, "var/lib/x") and not reconcile._exists(fd, "var/lib/y")
    finally:
        os.close(fd)
