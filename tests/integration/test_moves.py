"""Moves that end where an in-place upgrade would: real containers on the bootable base (issue 20).

Packages are made locally with dpkg-deb (no network): a base version that moves a library on under a
container's own package, a container's own flat apt repository to upgrade from, packages that make
directories dpkg renames into place (opaque in the layer), a package the container purges.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid

import pytest

from helpers import PYCOR, layer_of, run, tree_checksum
from pycor_hooks.layer import upgrade_scratch

pytestmark = pytest.mark.slow

# mkdeb NAME VERSION [CONTROL LINES] [FILE...]: $DEBS/NAME_VERSION_all.deb with /usr/bin/NAME (prints "NAME VERSION")
# and each FILE (an absolute path, holding "NAME VERSION"), and $POSTINST as its postinst if set; mkrepo: a flat apt repository of $DEBS at
# /srv/repo, the container's only apt source (apt-get update reads files: no network).
SHELL = r"""
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
: ${DEBS:=/srv/debs}  # not /tmp in a container: systemd empties it while the container boots
mkdeb() {
  n=$1 v=$2 c=${3:-}; if [ $# -ge 3 ]; then shift 3; else shift $#; fi
  t=$DEBS/src/$n-$v; rm -rf $t; mkdir -p $t/DEBIAN $t/usr/bin
  printf '#!/bin/sh\necho %s %s\n' "$n" "$v" > $t/usr/bin/$n; chmod 755 $t/usr/bin/$n
  for f in "$@"; do mkdir -p "$t$(dirname "$f")"; echo "$n $v" > "$t$f"; done
  printf "Package: $n\nVersion: $v\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n${c:+$c\n}" > $t/DEBIAN/control
  if [ -n "${POSTINST:-}" ]; then printf '#!/bin/sh\n%s\n' "$POSTINST" > $t/DEBIAN/postinst; chmod 755 $t/DEBIAN/postinst; fi
  dpkg-deb --root-owner-group --build $t $DEBS/${n}_${v}_all.deb >/dev/null
}
mkrepo() {
  mkdir -p /srv/repo && cp $DEBS/*.deb /srv/repo/ && cd /srv/repo && : > Packages
  for f in *.deb; do dpkg-deb -f $f >> Packages
    printf "Filename: ./$f\nSize: $(stat -c %s $f)\nSHA256: $(sha256sum $f | cut -d' ' -f1)\n\n" >> Packages; done
  printf "Origin: t\nLabel: t\nSuite: t\nCodename: t\nDate: $(date -Ru)\nSHA256:\n" > Release
  echo " $(sha256sum Packages | cut -d' ' -f1) $(stat -c %s Packages) Packages" >> Release
  echo "deb [trusted=yes] ${1:-file:/srv/repo} ./" > /etc/apt/sources.list; rm -f /etc/apt/sources.list.d/*; cd /
}
"""


@pytest.fixture(scope="module")
def mbase(bootable_base: str, env: dict[str, str], store: str) -> str:
    """A bootable base of this module's own (its versions move), from the session's bootable layer."""
    name = f"moves{uuid.uuid4().hex[:4]}"
    run(PYCOR + ["base", "import", name, "--from-dir", layer_of(store, bootable_base, "1")], env=env, timeout=600)
    return name


def pycor(env: dict[str, str], *args: str, check: bool = True, **kw: str):  # type: ignore[no-untyped-def]
    return run(PYCOR + list(args), env=dict(env, **kw), check=check, timeout=600)


def update(env: dict[str, str], base: str, script: str) -> str:
    """A base version made by script (with mkdeb); returns its number."""
    pycor(env, "base", "update", base, "--", "/bin/sh", "-ec", "DEBS=/tmp/debs\n" + SHELL + script)
    return current(env, base)


def current(env: dict[str, str], base: str) -> str:
    return [v for v in json.loads(pycor(env, "base", "versions", base, "--format", "json").stdout) if v["current"]][0]["version"]


def sh(c, script: str, check: bool = True):  # type: ignore[no-untyped-def]
    return c.sh(SHELL + script, check=check)


def record(env: dict[str, str], c) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(pycor(env, "conflicts", c.name, "-P", c.lxcpath, "--format", "json").stdout)[0]


def listed(env: dict[str, str], c) -> dict:  # type: ignore[no-untyped-def]
    return [r for r in json.loads(pycor(env, "ls", "-P", c.lxcpath, "--format", "json").stdout) if r["name"] == c.name][0]


def own_app(c, lib: str, app: str, source: str = "") -> None:  # type: ignore[no-untyped-def]
    """The container installs app 1.0 (needs lib 1.0 exactly) from its own repository, which also has app 2.0."""
    sh(c, f"mkdeb {app} 1.0 'Depends: {lib} (= 1.0)' && mkdeb {app} 2.0 'Depends: {lib} (>= 2.0)' && mkrepo {source} && "
          f"dpkg -i $DEBS/{app}_1.0_all.deb >/dev/null && useradd -m alice")


def layer_sum(c) -> str:  # type: ignore[no-untyped-def]
    return tree_checksum(os.path.join(c.rootfs, ".pycor"))


def with_own_app(make_container, mbase: str, env: dict[str, str], unprivileged: bool):  # type: ignore[no-untyped-def]
    """A stopped container with an app of its own that needs exactly version 1.0 of a base library; returns
    (container, library, app, the base version it was made on)."""
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    old = update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
    c = make_container(base=mbase, extra=("--unprivileged",) if unprivileged else ())
    c.start()
    own_app(c, lib, app)
    c.stop()
    return c, lib, app, old


@pytest.mark.parametrize("unprivileged", [False, True], ids=["privileged", "unprivileged"])
def test_a_move_that_breaks_the_containers_packages_is_held_and_rebase_upgrade_brings_them_along(
        make_container, mbase, env, unprivileged):
    c, lib, app, old = with_own_app(make_container, mbase, env, unprivileged)
    # the base moves the library on: the container's app needs exactly 1.0 (as perl needs its perl-base)
    new = update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
    dry = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--dry-run").stdout
    assert "would be held back" in dry and f"{app} : Depends: {lib} (= 1.0) but 2.0 is installed" in dry and "--upgrade" in dry
    c.start()  # held back: it runs on the version its packages work on
    assert sh(c, app).stdout.strip() == f"{app} 1.0"
    assert listed(env, c)["version"] == old and listed(env, c)["held"]
    out = pycor(env, "conflicts", c.name, "-P", c.lxcpath).stdout
    assert f"held back on version {old}" in out and "break the container's own packages" in out and "--upgrade" in out
    c.stop()
    assert "(held)" in pycor(env, "ls", "-P", c.lxcpath).stdout  # stopped, too
    run(PYCOR + ["file", "push", "-", c.name, "/root/pushed", "-P", c.lxcpath], env=env, stdin_text="pushed while stopped\n")
    out = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade").stdout
    assert f"{app} 1.0 -> 2.0" in out
    assert not os.path.lexists(upgrade_scratch(c.rootfs))
    c.start()
    assert sh(c, app).stdout.strip() == f"{app} 2.0"
    assert sh(c, "apt-get check >/dev/null && dpkg --audit && id alice").returncode == 0
    assert c.sh("cat /root/pushed").stdout == "pushed while stopped\n"  # what waited for its start came along
    assert listed(env, c)["version"] == new and not listed(env, c)["held"]
    assert not [f for f in record(env, c)["findings"] if f["kind"] in ("conflict", "collision", "breaks")]
    assert not os.path.exists(os.path.join(c.upper, "usr/sbin/policy-rc.d"))  # the upgrade's own mounts left nothing


def test_an_upgrade_that_cannot_fetch_leaves_the_container_as_it_was(make_container, mbase, env, store):
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
    c = make_container(base=mbase)
    c.start()
    own_app(c, lib, app, source="http://127.0.0.1:9")  # a mirror nobody answers on
    c.stop()
    update(env, mbase, f"mkdeb {lib} 2.0 && dpkg -i $DEBS/{lib}_2.0_all.deb")
    before = layer_sum(c)
    proc = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade", check=False)
    assert proc.returncode == 1 and "could not fetch" in proc.stderr and "unchanged" in proc.stderr
    assert layer_sum(c) == before
    assert not os.path.lexists(upgrade_scratch(c.rootfs))
    assert not os.listdir(os.path.join(store, "staging"))
    lxcpaths = [json.load(open(os.path.join(store, "lxcpaths", e)))["lxcpath"] for e in os.listdir(os.path.join(store, "lxcpaths"))]
    assert not [p for p in lxcpaths if p.startswith(os.path.join(store, "staging")) or ".pycor-upgrade" in p]


@pytest.mark.parametrize("step", ["upgrade-staged", "upgrade-swapped", "upgrade-committed"])
def test_an_upgrade_killed_half_way_and_run_again_ends_as_one_run(make_container, mbase, env, store, step):
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
    c = make_container(base=mbase)
    c.start()
    own_app(c, lib, app)
    c.stop()
    new = update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
    before = layer_sum(c)
    proc = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade", check=False, PYCOR_FAULT=step)
    assert proc.returncode != 0
    if step == "upgrade-staged":
        assert layer_sum(c) == before  # killed before the commit point: nothing changed
    again = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade")
    if step == "upgrade-swapped":  # the copy was the container's layer: the old one came back first
        assert "was interrupted: its old layer" in again.stderr
    assert not os.path.lexists(upgrade_scratch(c.rootfs))
    c.start()
    assert sh(c, app).stdout.strip() == f"{app} 2.0" and listed(env, c)["version"] == new
    c.stop()
    pycor(env, "base", "ls")  # takes the store's lock: recovery leaves no staging behind
    assert not os.listdir(os.path.join(store, "staging"))


def test_a_directory_dpkg_made_in_a_container_does_not_hide_what_later_versions_put_there(make_container, mbase, env):
    tag = uuid.uuid4().hex[:6]
    d = f"/usr/share/man/x{tag}/man1"  # dpkg makes x{tag} and man1 as NAME.dpkg-new and renames them
    c = make_container(base=mbase)
    c.start()
    sh(c, f"mkdeb own{tag} 1.0 '' {d}/own.1 && dpkg -i $DEBS/own{tag}_1.0_all.deb >/dev/null")
    c.stop()
    xattrs = os.listxattr(os.path.join(c.upper, d.strip("/").rsplit("/", 1)[0]))
    assert "trusted.overlay.opaque" in xattrs  # overlayfs marked the renamed directory opaque
    update(env, mbase, f"mkdeb base{tag} 1.0 '' {d}/base.1 && dpkg -i $DEBS/base{tag}_1.0_all.deb")
    c.start()
    assert sh(c, f"cat {d}/base.1 {d}/own.1").stdout.split("\n")[:2] == [f"base{tag} 1.0", f"own{tag} 1.0"]
    assert sh(c, f"dpkg --verify base{tag} own{tag}").stdout == ""
    assert not [f for f in record(env, c)["findings"] if f["kind"] == "conflict"]


def test_resolve_base_on_a_directory_names_what_it_replaces_and_keeps_the_containers_own(make_container, mbase, env):
    tag = uuid.uuid4().hex[:6]
    d = f"/etc/dir{tag}"
    update(env, mbase, f"mkdir {d} && echo a > {d}/a && echo b > {d}/b")
    c = make_container(base=mbase)
    c.start()
    c.sh(f"rm -rf {d} && mkdir {d} && echo mine > {d}/a && echo own > {d}/own")  # replaced: an opaque directory
    c.stop()
    update(env, mbase, f"echo b2 > {d}/b && echo c > {d}/c")
    c.start()
    c.stop()
    assert [f["path"] for f in record(env, c)["findings"] if f["kind"] == "conflict"] == [d]
    diff = pycor(env, "conflicts", c.name, "-P", c.lxcpath, "--diff", d).stdout
    assert f"only in the base {mbase}" in diff and f"{d}/b" in diff and f"{d}/c" in diff
    assert f"only in the container {c.name}: {d}/own" in diff and "-a\n+mine" in diff
    out = pycor(env, "resolve", c.name, d, "--base", "-P", c.lxcpath).stdout
    assert f"{d}/a" in out.split("kept")[0] and f"{d}/own" in out.split("kept")[1]  # what went, what stayed: named
    c.start()
    assert c.sh(f"cat {d}/a {d}/b {d}/c {d}/own").stdout.split() == ["a", "b2", "c", "own"]
    assert not [f for f in record(env, c)["findings"] if f["kind"] == "conflict"]


def test_conflicts_only_where_someone_must_decide_and_until_settled(make_container, mbase, env):
    tag = uuid.uuid4().hex[:6]
    svc, same, lib = f"svc{tag}", f"same{tag}", f"lib{tag}"
    # the base has a service package the container will purge, and a library the container will upgrade itself
    update(env, mbase, f"mkdeb {svc} 1.0 '' /etc/{svc}.conf /lib/systemd/system/{svc}.service && "
                       f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{svc}_1.0_all.deb $DEBS/{lib}_1.0_all.deb")
    c = make_container(base=mbase)
    c.start()
    sh(c, f"dpkg --purge {svc} >/dev/null && mkdeb {same} 1.0 '' /usr/share/{same}/a /usr/share/{same}/b && "
          f"dpkg -i $DEBS/{same}_1.0_all.deb >/dev/null && mkdeb {lib} 1.5 && dpkg -i $DEBS/{lib}_1.5_all.deb >/dev/null")
    c.stop()
    # the base upgrades the purged service (a new file too), installs the very package the container has,
    # and moves the library to another version than the container's
    update(env, mbase, f"mkdeb {svc} 2.0 '' /etc/{svc}.conf /lib/systemd/system/{svc}.service /usr/share/{svc}/new && "
                       f"mkdeb {same} 1.0 '' /usr/share/{same}/a /usr/share/{same}/b && mkdeb {lib} 2.0 && "
                       f"dpkg -i $DEBS/{svc}_2.0_all.deb $DEBS/{same}_1.0_all.deb $DEBS/{lib}_2.0_all.deb")
    c.start()
    found = record(env, c)["findings"]
    conflicts = sorted((f["path"], f.get("record")) for f in found if f["kind"] == "conflict")
    # decisions to make only where the library both changed: its record, its files; the purge stands,
    # the same files follow the base
    mine = [("/usr/bin/" + lib, None), ("/var/lib/dpkg/info/" + lib + ".md5sums", None), ("/var/lib/dpkg/status", f"{lib}:all")]
    assert conflicts == mine, found
    assert sh(c, f"test ! -e /usr/bin/{svc} && test ! -e /usr/share/{svc}/new && test ! -e /lib/systemd/system/{svc}.service "
                 f"&& {same} && dpkg --audit && dpkg --verify {same}").returncode == 0
    assert not os.path.exists(os.path.join(c.upper, f"usr/share/{same}/a"))  # dropped: the base's copy shows
    c.stop()
    # a later version changes something else in dpkg's database: the unresolved record conflict stays
    update(env, mbase, f"mkdeb other{tag} 1.0 && dpkg -i $DEBS/other{tag}_1.0_all.deb")
    c.start()
    c.stop()
    assert sorted((f["path"], f.get("record")) for f in record(env, c)["findings"] if f["kind"] == "conflict") == mine
    assert listed(env, c)["conflicts"] == 3
    pycor(env, "resolve", c.name, "/var/lib/dpkg/status", "--keep", "-P", c.lxcpath)
    assert listed(env, c)["conflicts"] == 2


def test_rollout_leaves_a_container_it_would_hold_back_running_and_rollout_upgrade_moves_it(make_container, mbase, env):
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
    plain, own = make_container(base=mbase), make_container(base=mbase)
    own.start()
    own_app(own, lib, app)
    plain.start()
    new = update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
    dry = pycor(env, "rollout", mbase, "-P", own.lxcpath, "--dry-run").stdout
    assert f"{own.name} (running): would be held back" in dry and "rollout --upgrade" in dry
    pid = own.lxc("lxc-info", "-p", "-H").stdout.strip()
    proc = pycor(env, "rollout", mbase, "-P", own.lxcpath, "--format", "json", check=False)
    assert proc.returncode == 1 and own.name in proc.stderr and "held back" in proc.stderr
    status = {o["name"]: o["status"] for o in json.loads(proc.stdout)}
    assert status[plain.name] == "moved" and status[own.name] == "held"
    assert own.lxc("lxc-info", "-p", "-H").stdout.strip() == pid  # not restarted
    out = pycor(env, "rollout", mbase, "-P", own.lxcpath, "--upgrade", "--format", "json").stdout
    assert {o["name"]: o["status"] for o in json.loads(out)}[own.name] == "moved"
    assert sh(own, app).stdout.strip() == f"{app} 2.0" and listed(env, own)["version"] == new


OWNER = "owner.json"  # in the upgrade's scratch, beside the rootfs directory


def test_an_upgrade_runs_in_the_containers_own_network_namespace_and_cgroup(make_container, mbase, env):
    """The tenant's code an upgrade runs (here its package's postinst) is confined as the container is: its own
    network namespace (a service on the host's loopback is out of reach) and its own cgroup."""
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    reached: list[str] = []
    done = threading.Event()

    def serve() -> None:  # bounded: it ends when the test ends
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            reached.append(conn.recv(64).decode(errors="replace"))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
        c = make_container(base=mbase)
        c.start()
        probe = (f"readlink /proc/self/ns/net /proc/1/ns/net > /var/lib/{app}.net; "
                 f"readlink /proc/self/ns/cgroup /proc/1/ns/cgroup > /var/lib/{app}.cgroupns; "
                 f"cat /proc/1/comm > /var/lib/{app}.init; grep ^0:: /proc/self/cgroup > /var/lib/{app}.cgroup; "
                 f"if timeout 5 bash -c \"echo {app} > /dev/tcp/127.0.0.1/{port}\" 2>/dev/null; then echo reached; "
                 f"else echo out of reach; fi > /var/lib/{app}.loopback; true")
        sh(c, f"mkdeb {app} 1.0 'Depends: {lib} (= 1.0)' && POSTINST='{probe}' && mkdeb {app} 2.0 'Depends: {lib} (>= 2.0)' "
              f"&& POSTINST= && mkrepo && dpkg -i $DEBS/{app}_1.0_all.deb >/dev/null")
        c.stop()
        update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
        pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade")
    finally:
        done.set()
        thread.join(5)
        server.close()
    seen = {kind: open(os.path.join(c.upper, f"var/lib/{app}.{kind}")).read().split()
            for kind in ("net", "cgroupns", "init", "cgroup", "loopback")}
    # the postinst ran beside the container's own init (its systemd), in its network and cgroup namespaces
    assert seen["init"] == ["systemd"], seen
    for kind in ("net", "cgroup"):
        mine, its_init = seen["net" if kind == "net" else "cgroupns"]
        assert mine == its_init != os.readlink(f"/proc/self/ns/{kind}"), seen  # the test's own: the host's
    # and in the container's cgroup: below its namespace's root (a process outside it would see /..)
    assert seen["cgroup"][0].startswith("0::/") and ".." not in seen["cgroup"][0], seen
    assert seen["loopback"] == ["out", "of", "reach"] and not reached, (seen, reached)
    assert c.state() == "STOPPED"  # stopped before, stopped after


def test_an_upgrade_refuses_a_container_without_an_init_that_brings_up_its_network(make_container, env):
    c = make_container()  # busybox: its init is busybox's, no systemd
    c.start()
    c.sh("mkdir -p /var/lib/dpkg && printf 'Package: own\\nStatus: install ok installed\\nVersion: 1\\n"
         "Architecture: all\\n\\n' > /var/lib/dpkg/status")  # a package of its own
    c.stop()
    before = layer_sum(c)
    proc = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade", check=False)
    assert proc.returncode == 1 and "has no init that brings up its network" in proc.stderr and "nothing was changed" in proc.stderr
    assert layer_sum(c) == before and not os.path.lexists(upgrade_scratch(c.rootfs))
    assert c.state() == "STOPPED"


@pytest.mark.parametrize(("step", "then", "unprivileged"), [("upgrade-ran", "start", False), ("upgrade-swapped", "start", True),
                                                            ("upgrade-swapped", "doctor", False)])
def test_an_upgrade_killed_after_the_swap_is_undone_by_the_next_start_or_doctor(make_container, mbase, env, step, then,
                                                                                unprivileged):
    c, lib, app, old = with_own_app(make_container, mbase, env, unprivileged)
    update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
    before = layer_sum(c)
    proc = pycor(env, "rebase", c.name, "-P", c.lxcpath, "--upgrade", check=False, PYCOR_FAULT=step)
    assert proc.returncode != 0 and os.path.exists(os.path.join(upgrade_scratch(c.rootfs), OWNER))
    if step == "upgrade-ran":  # killed while the container ran its upgrade: it runs on, on the upgraded copy
        assert c.state() == "RUNNING"
        busy = pycor(env, "rebase", c.name, "-P", c.lxcpath, check=False)
        assert busy.returncode == 1 and "running" in busy.stderr
        c.stop()
    if then == "doctor":
        out = pycor(env, "doctor", check=False).stdout
        assert f"fixed: container {c.name}: the upgrade to version" in out and "its old layer (version" in out, out
        assert layer_sum(c) == before  # exactly as before the upgrade
        c.start()
    else:
        c.start()  # its pre-mount --prepare (privileged) or pre-start (unprivileged) puts the old layer back
        assert "was interrupted: its old layer" in open(c.log).read()
    assert not os.path.lexists(upgrade_scratch(c.rootfs))
    assert sh(c, app).stdout.strip() == f"{app} 1.0"  # held back again: on the version its packages work on
    assert listed(env, c)["version"] == old
    c.stop()


def test_a_daemons_container_is_upgraded_through_its_daemon(launch, mbase, env):
    tag = uuid.uuid4().hex[:6]
    lib, app = f"lib{tag}", f"app{tag}"
    update(env, mbase, f"mkdeb {lib} 1.0 && dpkg -i $DEBS/{lib}_1.0_all.deb")
    c = launch(base=mbase)
    denv = dict(env, **{f"PYCOR_{'LXD' if c.cli == 'lxc' else 'INCUS'}_PROJECT": c.project})
    sh(c, f"mkdeb {app} 1.0 'Depends: {lib} (= 1.0)' && mkdeb {app} 2.0 'Depends: {lib} (>= 2.0)' && mkrepo && "
          f"dpkg -i $DEBS/{app}_1.0_all.deb >/dev/null")
    c.lxc("stop", c.name, timeout=120)
    new = update(env, mbase, f"mkdeb {lib} 2.0 'Breaks: {app} (<< 2.0)' && dpkg -i $DEBS/{lib}_2.0_all.deb")
    out = run(PYCOR + ["rebase", c.name, "--upgrade"], env=denv, timeout=600).stdout
    assert f"{app} 1.0 -> 2.0" in out
    assert c.status() == "STOPPED" and not os.path.lexists(upgrade_scratch(c.rootfs))
    c.lxc("start", c.name)
    assert sh(c, app).stdout.strip() == f"{app} 2.0"
    assert sh(c, "apt-get check >/dev/null && dpkg --audit").returncode == 0
    rows = json.loads(run(PYCOR + ["ls", "--format", "json"], env=denv).stdout)
    assert [r["version"] for r in rows if r["name"] == c.name] == [new]
