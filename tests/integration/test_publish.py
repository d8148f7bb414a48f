"""LXD's and Incus's operations on *stopped* pycor containers: publish, a switch of security.privileged, file
transfer. Each test takes the launch fixture, so it runs on LXD, then on Incus (issue 21)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import LxdContainer, daemon_project, delete_instances

from helpers import PYCOR, run


@pytest.fixture
def denv(request: pytest.FixtureRequest, launch) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of pycor commands aimed at the daemon and project this run of the test launches in."""
    return request.getfixturevalue(f"{request.node.callspec.params['launch']}_env")


def images(c: LxdContainer) -> dict[str, dict]:
    """alias -> image, in the container's project."""
    found = json.loads(c.lxc("image", "list", "--format", "json").stdout)
    return {a["name"]: i for i in found for a in i["aliases"]}


def make_changes(c: LxdContainer) -> None:
    """A file added, a base file deleted (whiteout), a base directory replaced (opaque), one renamed."""
    c.sh("echo mine > /root/mine && rm /etc/group"
         " && rm -rf /usr/bin && mkdir /usr/bin && echo only > /usr/bin/only"
         " && mv /usr/sbin /usr/sbin.old")


VIEW = "ls -a /root /usr/bin /usr/sbin.old | sort; test -e /etc/group && echo group; test -e /usr/sbin && echo sbin; cat /usr/bin/only"


def assert_changes_seen(c: LxdContainer, before: str | None = None) -> str:
    seen = c.sh(VIEW, check=False).stdout
    assert "mine" in seen and "only" in seen and "group" not in seen.split() and "sbin" not in seen.split(), seen
    assert "busybox" not in c.sh("ls /usr/bin").stdout  # the replaced directory shows none of the base's applets
    if before is not None:
        assert seen == before
    return seen


# -- 1. publish -----------------------------------------------------------------------------------


def test_daemon_publish_of_a_stopped_container_launches_with_the_overlay_profile(launch):
    c = launch()
    make_changes(c)
    c.lxc("stop", "--force", c.name)
    alias = f"pub-{uuid.uuid4().hex[:6]}"
    c.lxc("publish", c.name, "--alias", alias)
    image = images(c)[alias]
    assert image["size"] < 256 * 1024  # only the container's changes
    copy = c.other(c.name + "p")
    c.lxc("launch", alias, copy.name, "--profile", "default", "--profile", "overlay")
    assert_changes_seen(copy)


def test_pycor_publish_sets_properties_and_profiles_so_a_plain_launch_runs(launch, denv, busybox_base, store):
    c = launch()
    make_changes(c)
    proc = run(PYCOR + ["publish", c.name, "--alias", "x"], env=denv, check=False)
    assert proc.returncode == 1 and "running" in proc.stderr and "stop" in proc.stderr
    c.lxc("stop", "--force", c.name)
    alias = f"pub-{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["publish", c.name, "--alias", alias], env=denv)
    image = images(c)[alias]
    props = image["properties"]
    meta = json.load(open(os.path.join(c.rootfs, ".pycor", "layer.json")))
    assert props["pycor.base"] == busybox_base and props["pycor.based_on"] == meta["based_on"]
    assert props["pycor.digest"] == meta["digest"] and props["pycor.layer"] == "true"
    assert image["profiles"] == ["default", "overlay"]
    copy = c.other(c.name + "q")
    c.lxc("launch", alias, copy.name)  # no --profile: the image's own
    assert_changes_seen(copy)
    # the base images carry the same profiles: a plain 'lxc launch pycor/BASE' runs on pycor too
    assert images(c)[f"pycor/{busybox_base}"]["profiles"] == ["default", "overlay"]
    plain = c.other(c.name + "r")
    c.lxc("launch", f"pycor/{busybox_base}", plain.name)
    assert plain.sh("cat /etc/hostname").returncode == 0 and os.listdir(plain.rootfs) == [".pycor"]


def test_pycor_publish_flat_is_an_ordinary_image_that_runs_without_pycor(launch, denv, session_dir):
    c = launch()
    make_changes(c)
    c.sh("chown 1000:1000 /root/mine && chmod 640 /root/mine")
    c.lxc("stop", "--force", c.name)
    alias = f"flat-{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["publish", c.name, "--flat", "--alias", alias], env=denv)
    assert images(c)[alias]["profiles"] == ["default"]
    # into a project where pycor was never set up (no overlay profile, no pycor image), as to another host
    exported = os.path.join(session_dir, alias)
    c.lxc("image", "export", alias, exported)
    with fresh_project(c.cli) as other:
        plain = LxdContainer(f"f{uuid.uuid4().hex[:6]}", other, c.cli)
        made = [os.path.join(session_dir, f) for f in os.listdir(session_dir) if f.startswith(alias)]  # NAME.tar...
        plain.lxc("image", "import", *made, "--alias", alias)
        try:
            plain.lxc("launch", alias, plain.name)
            assert_changes_seen(plain)
            assert plain.sh("stat -c %u:%g:%a /root/mine").stdout.strip() == "1000:1000:640"
            assert plain.sh("stat -c %u:%g /etc/passwd /bin/busybox").stdout.split() == ["0:0", "0:0"]
            assert "overlay" not in plain.lxc("config", "show", plain.name, "--expanded").stdout
            assert ".pycor" not in os.listdir(plain.rootfs) and "etc" in os.listdir(plain.rootfs)
        finally:
            delete_instances(c.cli, other, frozenset({plain.name}))


@contextlib.contextmanager
def fresh_project(cli: str) -> Iterator[str]:
    """A project of the same daemon where pycor was never set up (no overlay profile), removed with all it holds."""
    yield from daemon_project(cli, "lxd-up.sh" if cli == "lxc" else "incus-up.sh")


# -- 2. security.privileged switched, both ways ----------------------------------------------------


def test_switching_privileged_both_ways_shows_the_container_what_it_saw(launch, denv):
    c = launch()
    make_changes(c)
    before = assert_changes_seen(c)
    diff_before = run(PYCOR + ["diff", c.name], env=denv).stdout
    assert "R /usr/bin/" in diff_before.splitlines() and "D /usr/sbin/" in diff_before.splitlines()
    c.lxc("stop", "--force", c.name)
    c.lxc("config", "set", c.name, "security.privileged", "true")
    c.lxc("start", c.name)
    assert c.sh("cat /proc/self/uid_map").stdout.split()[:2] == ["0", "0"]
    assert_changes_seen(c, before)
    assert run(PYCOR + ["diff", c.name], env=denv).stdout == diff_before
    # changes made while privileged, seen again unprivileged
    c.sh("rm -rf /home && mkdir /home && echo priv > /home/p && mv /mnt /mnt.old")
    c.lxc("stop", "--force", c.name)
    c.lxc("config", "unset", c.name, "security.privileged")
    c.lxc("start", c.name)
    assert c.sh("cat /proc/self/uid_map").stdout.split()[1] != "0"
    assert_changes_seen(c, before)
    assert c.sh("ls -a /home; test -e /mnt && echo mnt; ls -d /mnt.old").stdout.split() == [".", "..", "p", "/mnt.old"]
    diff_after = run(PYCOR + ["diff", c.name], env=denv).stdout.splitlines()
    assert "R /home/" in diff_after and "D /mnt/" in diff_after and "R /usr/bin/" in diff_after


# -- 3. file transfer on a stopped container -----------------------------------------------------


def test_push_into_a_stopped_container_is_in_place_at_its_next_start(launch, denv, session_dir):
    c = launch()
    c.sh("rm -rf /etc/init.d && echo kept > /etc/kept && mkdir /etc/adir")
    c.lxc("stop", "--force", c.name)
    src = os.path.join(session_dir, f"push-{c.name}")
    with open(src, "w") as f:
        f.write("pushed\n")
    # a new file, a file over a base file, a file in a directory the base has, one in a directory the container deleted
    c.lxc("file", "push", "-p", "--uid", "1000", "--gid", "1001", "--mode", "0640", src, f"{c.name}/root/new")
    c.lxc("file", "push", "-p", src, f"{c.name}/etc/hostname")
    c.lxc("file", "push", "-p", src, f"{c.name}/etc/newconf")
    c.lxc("file", "push", "-p", src, f"{c.name}/etc/init.d/again")
    c.lxc("file", "push", "-p", src, f"{c.name}/etc/adir")  # a file where the container has a directory: kept aside
    c.lxc("start", c.name)
    assert c.sh("cat /root/new /etc/hostname /etc/newconf /etc/init.d/again").stdout == "pushed\n" * 4
    assert c.sh("stat -c %u:%g:%a /root/new").stdout.strip() == "1000:1001:640"
    assert c.sh("ls /etc/init.d").stdout.split() == ["again"]  # the base's rcS stays deleted
    assert c.sh("cat /etc/kept /etc/passwd").returncode == 0  # what /etc held is all there
    assert c.sh("test -d /etc/adir").returncode == 0
    assert sorted(os.listdir(c.rootfs)) == [".pycor"]  # nothing left beneath the overlay
    rows = {r["name"]: r for r in json.loads(run(PYCOR + ["ls", "--format", "json"], env=denv).stdout)}
    assert rows[c.name]["rejected_pushes"] == 1
    listing = run(PYCOR + ["ls"], env=denv)
    assert "/etc/adir" in listing.stderr and "inbox" in listing.stderr
    checks = json.loads(run(PYCOR + ["doctor", "--format", "json"], env=denv, check=False).stdout)
    kept = next(ch for ch in checks if ch["name"] == "files pushed while stopped, kept aside")
    assert not kept["ok"] and c.name in kept["detail"] and "/etc/adir" in kept["detail"]
    c.lxc("restart", "--force", c.name)
    assert c.sh("cat /root/new").stdout == "pushed\n"  # replayed once: a restart changes nothing


def test_pull_from_a_stopped_container_returns_what_it_would_see(launch, denv, session_dir):
    c = launch()
    c.sh("echo changed > /etc/hostname && rm /etc/group")
    c.lxc("stop", "--force", c.name)
    assert c.lxc("file", "pull", f"{c.name}/etc/hostname", "-", check=False).returncode != 0  # the daemon cannot
    out = os.path.join(session_dir, f"pull-{c.name}")
    run(PYCOR + ["file", "pull", c.name, "/etc/hostname", out], env=denv)
    assert open(out).read() == "changed\n"
    assert run(PYCOR + ["file", "pull", c.name, "/etc/passwd", "-"], env=denv).stdout.startswith("root:")
    proc = run(PYCOR + ["file", "pull", c.name, "/etc/group", out], env=denv, check=False)
    assert proc.returncode == 1 and "no /etc/group" in proc.stderr
    # pycor's own push into the stopped container: pulled back at once, in place at the next start
    src = os.path.join(session_dir, f"ppush-{c.name}")
    with open(src, "w") as f:
        f.write("via pycor\n")
    run(PYCOR + ["file", "push", src, c.name, "/etc/motd", "--uid", "5", "--mode", "0600"], env=denv)
    assert run(PYCOR + ["file", "pull", c.name, "/etc/motd", "-"], env=denv).stdout == "via pycor\n"
    c.lxc("start", c.name)
    assert c.sh("cat /etc/motd; stat -c %u:%a /etc/motd").stdout.split() == ["via", "pycor", "5:600"]
    proc = run(PYCOR + ["file", "pull", c.name, "/etc/motd", "-"], env=denv, check=False)
    assert proc.returncode == 1 and f"{c.cli} file pull" in proc.stderr  # running: the daemon's own command


def test_publish_of_an_lxc_container_is_refused_with_what_to_do(make_container, env):
    c = make_container()
    proc = run(PYCOR + ["publish", c.name, "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "LXD and Incus images" in proc.stderr and "pycor commit" in proc.stderr


# -- crash safety: a start killed half-way, then started again ------------------------------------


def synthetic_layer(root: str) -> str:
    """A stopped privileged layer whose upper holds every kind of overlay xattr, and the container's own."""
    from pycor_hooks.layer import LayerMeta, create_layer

    rootfs = os.path.join(root, "rootfs")
    os.makedirs(rootfs)
    create_layer(rootfs, LayerMeta("b", based_on="1", xattrs="trusted"))
    upper = os.path.join(rootfs, ".pycor", "upper")
    for d in ("usr/bin", "etc/replaced", "home"):
        os.makedirs(os.path.join(upper, d))
    open(os.path.join(upper, "etc", "file"), "w").close()
    os.symlink("/etc/file", os.path.join(upper, "link"))
    marks = {"": {"trusted.overlay.uuid": b"u1", "trusted.overlay.impure": b"y"},
             "etc/replaced": {"trusted.overlay.opaque": b"y", "user.overlay.mine": b"own"},
             "usr/bin": {"trusted.overlay.opaque": b"y", "trusted.overlay.overlay.t": b"own-trusted"},
             "etc/file": {"trusted.overlay.origin": b"\0fh", "user.plain": b"p"}}
    for rel, attrs in marks.items():
        for name, value in attrs.items():
            os.setxattr(os.path.join(upper, rel), name, value)
    return rootfs


def xattrs_of(rootfs: str) -> dict[str, dict[str, bytes]]:
    upper = os.path.join(rootfs, ".pycor", "upper")
    found = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            names = os.listxattr(path, follow_symlinks=False)
            found[os.path.relpath(path, upper)] = {n: os.getxattr(path, n, follow_symlinks=False) for n in names}
    return found


def settle(rootfs: str, namespace: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from pycor_hooks.layer import OpenLayer; from pycor_hooks.ovlxattr import settle\n"
            "with OpenLayer(sys.argv[1]) as lay: settle(lay, sys.argv[2], 'layer')")
    env = dict(os.environ, PYCOR_FAULT=fault) if fault else None
    return subprocess.run([PYCOR[0], "-c", code, rootfs, namespace], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("fault", ["xattrs.phase1", "xattrs.phase1.moving", "xattrs.phase2", "xattrs.phase2.moving"])
def test_a_conversion_killed_at_any_step_ends_as_one_run_would(session_dir, fault):
    here = os.path.join(session_dir, f"xattrs-{uuid.uuid4().hex[:6]}")
    once, killed = synthetic_layer(os.path.join(here, "once")), synthetic_layer(os.path.join(here, "killed"))
    before = xattrs_of(once)
    assert settle(once, "user").returncode == 0
    assert settle(killed, "user", fault).returncode == -9
    assert settle(killed, "user").returncode == 0
    assert xattrs_of(killed) == xattrs_of(once)
    assert xattrs_of(once)["etc/replaced"] == {"user.overlay.opaque": b"y", "user.overlay.overlay.mine": b"own"}
    for rootfs in (once, killed):
        assert json.load(open(os.path.join(rootfs, ".pycor", "layer.json")))["xattrs"] == "user"
        assert settle(rootfs, "user").returncode == 0  # again: nothing changes
        assert settle(rootfs, "trusted", fault).returncode == -9
        assert settle(rootfs, "trusted").returncode == 0
        assert xattrs_of(rootfs) == before
    subprocess.run(["rm", "-rf", here])


def test_a_layer_an_unprivileged_overlay_cannot_read_is_refused_unchanged(session_dir):
    rootfs = synthetic_layer(os.path.join(session_dir, f"redirect-{uuid.uuid4().hex[:6]}"))
    os.setxattr(os.path.join(rootfs, ".pycor", "upper", "home"), "trusted.overlay.redirect", b"/mnt")
    before = xattrs_of(rootfs)
    proc = settle(rootfs, "user")
    assert proc.returncode == 1 and "renamed director" in proc.stderr and "pycor commit" in proc.stderr
    assert xattrs_of(rootfs) == before
    assert json.load(open(os.path.join(rootfs, ".pycor", "layer.json")))["xattrs"] == "trusted"


@pytest.mark.parametrize("fault", ["inbox.collecting", "inbox.placed"])
def test_a_start_killed_while_it_puts_pushed_files_in_place_finishes_at_the_next(make_container, env, fault):
    c = make_container()  # privileged LXC: the whole start runs in one hook (pre-mount --prepare)
    c.start()
    c.sh("echo container > /etc/a")
    c.stop()
    for rel, text in (("etc/a", "pushed a\n"), ("etc/b", "pushed b\n"), ("root/new/c", "pushed c\n")):
        os.makedirs(os.path.dirname(os.path.join(c.rootfs, rel)), exist_ok=True)
        with open(os.path.join(c.rootfs, rel), "w") as f:  # what a daemon does for a push into a stopped container
            f.write(text)
    proc = subprocess.run(["lxc-start", "-n", c.name, "-P", c.lxcpath, "-l", "DEBUG", "-o", c.log],
                          env=dict(env, PYCOR_FAULT=fault), capture_output=True, text=True)
    assert proc.returncode != 0 and c.state() == "STOPPED"
    assert "Script terminated by signal 9" in open(c.log).read()  # killed at the step, not failed for another reason
    c.start()
    assert c.sh("cat /etc/a /etc/b /root/new/c").stdout == "pushed a\npushed b\npushed c\n"
    assert c.sh(f"find / -xdev -name '{inbox_tmp()}'").stdout == ""
    assert sorted(os.listdir(c.rootfs)) == [".pycor"]
    assert not os.path.exists(os.path.join(c.rootfs, ".pycor", "inbox"))


def inbox_tmp() -> str:
    from pycor_hooks.inbox import TMP

    return TMP
