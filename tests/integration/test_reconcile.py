"""Base updates that reach containers with their own changes: reconciliation on real Debian containers."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from helpers import PYCOR, layer_of, run

pytestmark = pytest.mark.slow

APT = "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {} >/dev/null"


@pytest.fixture(scope="module")
def rbase(debian_base: str, env: dict[str, str], store: str) -> str:
    """A Debian base of this module's own (its versions move), imported from the session's Debian layer."""
    name = f"recon{uuid.uuid4().hex[:4]}"
    run(PYCOR + ["base", "import", name, "--from-dir", layer_of(store, debian_base, "1")], env=env, timeout=600)
    return name


def update(env: dict[str, str], base: str, script: str) -> None:
    run(PYCOR + ["base", "update", base, "--", "/bin/sh", "-c", script], env=env, timeout=900)


def local_deb(c, name: str) -> None:  # type: ignore[no-untyped-def]
    """Build and dpkg -i a tiny package inside the container (no network needed)."""
    c.sh(f"mkdir -p /tmp/{name}/DEBIAN /tmp/{name}/usr/share/{name} && echo data > /tmp/{name}/usr/share/{name}/data && "
         f"printf 'Package: {name}\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nDescription: local\\n' "
         f"> /tmp/{name}/DEBIAN/control && dpkg-deb --build /tmp/{name} /tmp/{name}.deb >/dev/null && dpkg -i /tmp/{name}.deb >/dev/null")


def conflicts(env: dict[str, str], c) -> dict:  # type: ignore[no-untyped-def]
    out = run(PYCOR + ["conflicts", c.name, "-P", c.lxcpath, "--format", "json"], env=env).stdout
    return json.loads(out)[0]


def test_local_user_and_package_survive_a_base_update_that_adds_a_system_user_and_a_package(make_container, rbase, env):
    c = make_container(base=rbase)
    c.start()
    c.sh("useradd -m alice && userdel games")
    local_deb(c, "localpkg")
    c.stop()
    update(env, rbase, APT.format("uuid-runtime hello"))
    c.start()
    # the base's new system user exists, and runs a program; the container's own user is kept, its removal too
    assert c.sh("getent passwd uuidd").returncode == 0
    assert c.sh("su -s /bin/sh uuidd -c id").stdout.startswith("uid=")
    assert c.sh("getent group uuidd").returncode == 0
    assert c.sh("id alice").returncode == 0
    assert c.sh("getent passwd games", check=False).returncode != 0
    assert c.sh("getent shadow uuidd && getent shadow alice").returncode == 0
    # dpkg knows both the base's new packages and the container's own; apt agrees
    status = c.sh("dpkg-query -W -f='${Package} ${Status}\\n' hello uuid-runtime localpkg").stdout
    assert status.count("install ok installed") == 3, status
    assert c.sh("apt-get check").returncode == 0
    assert c.sh("hello").stdout.strip() == "Hello, world!"
    found = conflicts(env, c)
    merged = {f["path"] for f in found["findings"] if f["kind"] == "merged"}
    assert {"/etc/passwd", "/etc/group", "/var/lib/dpkg/status"} <= merged
    assert not [f for f in found["findings"] if f["kind"] in ("conflict", "collision")], found


def test_conffile_both_changed_is_kept_reported_and_resolved_with_the_base(make_container, rbase, env):
    c = make_container(base=rbase)
    c.start()
    c.sh("echo 'mine' >> /etc/debian_version.local; echo 'container line' >> /etc/issue")
    c.stop()
    update(env, rbase, "echo 'base line' >> /etc/issue")
    c.start()
    assert "container line" in c.sh("cat /etc/issue").stdout  # kept, as dpkg keeps an admin's conffile
    assert "base line" not in c.sh("cat /etc/issue").stdout
    found = conflicts(env, c)
    assert [f["path"] for f in found["findings"] if f["kind"] == "conflict"] == ["/etc/issue"]
    listed = json.loads(run(PYCOR + ["ls", "-P", c.lxcpath, "--format", "json"], env=env).stdout)
    assert [r["conflicts"] for r in listed if r["name"] == c.name] == [1]  # pycor ls shows it
    diff = run(PYCOR + ["conflicts", c.name, "-P", c.lxcpath, "--diff", "/etc/issue"], env=env).stdout
    assert "-base line" in diff and "+container line" in diff
    proc = run(PYCOR + ["resolve", c.name, "/etc/issue", "--base", "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "stop it first" in proc.stderr  # running: refused, nothing changed
    c.stop()
    run(PYCOR + ["resolve", c.name, "/etc/issue", "--base", "-P", c.lxcpath], env=env)
    c.start()
    assert "base line" in c.sh("cat /etc/issue").stdout
    assert not [f for f in conflicts(env, c)["findings"] if f["kind"] == "conflict"]
    proc = run(PYCOR + ["resolve", c.name, "/etc/hostname", "--keep", "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "no conflict at /etc/hostname" in proc.stderr


def test_pinned_container_is_untouched_until_it_moves(make_container, rbase, env, store):
    current = run(PYCOR + ["base", "versions", rbase, "--format", "json"], env=env).stdout
    version = [v for v in json.loads(current) if v["current"]][0]["version"]
    c = make_container(base=rbase, extra=("--pin", str(version)))
    c.start()
    c.sh("useradd bob")
    c.stop()
    before = open(os.path.join(c.upper, "etc/passwd")).read()
    update(env, rbase, "useradd -r pinsys")
    c.start()
    c.stop()
    assert open(os.path.join(c.upper, "etc/passwd")).read() == before
    run(PYCOR + ["unpin", c.name, "-P", c.lxcpath], env=env)
    c.start()
    assert c.sh("getent passwd pinsys && getent passwd bob").returncode == 0


def test_ids_of_base_and_container_never_meet_and_a_forced_collision_is_held_back(make_container, rbase, env):
    c = make_container(base=rbase)
    c.start()
    c.stop()
    update(env, rbase, "true >/etc/pycor-ranges-test")  # a version whose layer sets the containers' ranges
    c.start()
    c.sh("useradd -r csys && useradd cuser")
    ids = c.sh("id -u csys; id -u cuser").stdout.split()
    c.stop()
    update(env, rbase, "useradd -r bsys && useradd buser")
    c.start()
    base_ids = c.sh("id -u bsys; id -u buser").stdout.split()
    assert not set(ids) & set(base_ids), (ids, base_ids)  # disjoint ranges: prevented
    # forced into existence: the container and the base each give uid 4242 to a name of their own
    c.sh("useradd -u 4242 squatter")
    c.stop()
    update(env, rbase, "useradd -r -u 4242 bsys2")
    c.start()
    assert c.sh("getent passwd bsys2", check=False).returncode != 0  # held back on its old version
    listed = json.loads(run(PYCOR + ["ls", "-P", c.lxcpath, "--format", "json"], env=env).stdout)
    assert [bool(r["held"]) for r in listed if r["name"] == c.name] == [True]
    found = conflicts(env, c)
    assert any(f["kind"] == "collision" for f in found["findings"]), found
    c.stop()
    proc = run(PYCOR + ["rebase", c.name, "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "one id" in proc.stderr
    run(PYCOR + ["rebase", c.name, "-P", c.lxcpath, "--force"], env=env)
    c.start()
    assert c.sh("getent passwd bsys2").returncode == 0


@pytest.mark.parametrize("step", ["reconcile-staged", "reconcile-committed", "reconcile-replaced"])
def test_rebase_killed_half_way_and_run_again_ends_as_one_run(make_container, rbase, env, step):
    def current() -> str:
        return [v for v in json.loads(run(PYCOR + ["base", "versions", rbase, "--format", "json"], env=env).stdout) if v["current"]][0]["version"]

    old = current()
    a, b = make_container(base=rbase, extra=("--pin", old)), make_container(base=rbase, extra=("--pin", old))
    for c in (a, b):
        c.start()
        c.sh("useradd carol && echo x > /etc/issue")
        local_deb(c, "localpkg")
        c.stop()
    update(env, rbase, f"useradd -r kill{step.split('-')[1]} && echo base >> /etc/issue && " + APT.format("hello"))
    new = current()
    run(PYCOR + ["rebase", a.name, "-P", a.lxcpath, "--to", new], env=env)
    proc = run(PYCOR + ["rebase", b.name, "-P", b.lxcpath, "--to", new], env=dict(env, PYCOR_FAULT=step), check=False)
    assert proc.returncode != 0
    run(PYCOR + ["rebase", b.name, "-P", b.lxcpath, "--to", new], env=env)
    for rel in ("etc/passwd", "etc/group", "etc/shadow", "var/lib/dpkg/status", "etc/issue"):
        pa, pb = os.path.join(a.upper, rel), os.path.join(b.upper, rel)
        assert os.path.exists(pa) == os.path.exists(pb), rel
        if os.path.exists(pa):
            assert open(pa, "rb").read() == open(pb, "rb").read(), rel
    assert not os.path.exists(os.path.join(b.rootfs, ".pycor", "reconcile"))
    again = run(PYCOR + ["rebase", b.name, "-P", b.lxcpath, "--to", new], env=env).stdout
    assert "nothing to reconcile" in again


def test_symlink_planted_at_a_database_path_is_not_followed(make_container, rbase, env, session_dir):
    c = make_container(base=rbase)
    c.start()
    c.stop()
    secret = os.path.join(session_dir, "host-secret")
    with open(secret, "w") as f:
        f.write("root:x:0:0::/root:/bin/sh\n")
    os.makedirs(os.path.join(c.upper, "etc"), exist_ok=True)
    os.symlink(secret, os.path.join(c.upper, "etc/passwd"))
    update(env, rbase, "useradd -r linktest")
    run(PYCOR + ["rebase", c.name, "-P", c.lxcpath], env=env)
    assert open(secret).read() == "root:x:0:0::/root:/bin/sh\n"
    assert os.path.islink(os.path.join(c.upper, "etc/passwd"))
    found = conflicts(env, c)
    assert any(f["path"] == "/etc/passwd" and f["kind"] == "conflict" for f in found["findings"])
    os.unlink(os.path.join(c.upper, "etc/passwd"))


def test_rebase_bad_input_is_one_clear_error_and_changes_nothing(make_container, rbase, env):
    c = make_container(base=rbase)
    c.start()
    proc = run(PYCOR + ["rebase", c.name, "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "stop it first" in proc.stderr
    c.stop()
    proc = run(PYCOR + ["rebase", "no-such-container", "-P", c.lxcpath], env=env, check=False)
    assert proc.returncode == 1 and "no pycor container named 'no-such-container'" in proc.stderr
    meta = open(os.path.join(c.rootfs, ".pycor", "layer.json")).read()
    proc = run(PYCOR + ["rebase", c.name, "-P", c.lxcpath, "--to", "99"], env=env, check=False)
    assert proc.returncode == 1 and "has no version 99" in proc.stderr
    assert open(os.path.join(c.rootfs, ".pycor", "layer.json")).read() == meta


def test_rebase_dry_run_shows_what_would_merge_and_changes_nothing(make_container, rbase, env):
    c = make_container(base=rbase)
    c.start()
    c.sh("useradd dora")
    c.stop()
    update(env, rbase, "useradd -r drysys")
    before = open(os.path.join(c.upper, "etc/passwd")).read()
    out = run(PYCOR + ["rebase", c.name, "-P", c.lxcpath, "--dry-run"], env=env).stdout
    assert "would move" in out and "M /etc/passwd" in out
    out = run(PYCOR + ["rollout", rbase, "-P", c.lxcpath, "--dry-run"], env=env).stdout
    assert f"{c.name} (stopped): would move" in out and "M /etc/passwd" in out
    assert open(os.path.join(c.upper, "etc/passwd")).read() == before


def test_a_version_carries_no_build_caches(rbase, env, store):
    update(env, rbase, APT.format("sl"))  # a package no other test installs
    versions = json.loads(run(PYCOR + ["base", "versions", rbase, "--format", "json"], env=env).stdout)
    top = layer_of(store, rbase, str(versions[-1]["version"]))
    assert os.path.exists(os.path.join(top, "usr/games/sl"))
    for rel in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/lib/dpkg/status-old",
                "var/log/dpkg.log", "var/log/apt/history.log"):  # caches, backups, and the builder's own logs
        assert not os.path.lexists(os.path.join(top, rel)), rel
    lists = os.path.join(top, "var/lib/apt/lists")
    assert not [n for n in (os.listdir(lists) if os.path.isdir(lists) else []) if n not in ("lock", "partial", "auxfiles")]
    debs = os.path.join(top, "var/cache/apt/archives")
    assert not [n for n in (os.listdir(debs) if os.path.isdir(debs) else []) if n.endswith(".deb")]


def test_base_shell_publishes_on_exit_0_and_discards_otherwise(rbase, env, store):
    def versions() -> int:
        return len(json.loads(run(PYCOR + ["base", "versions", rbase, "--format", "json"], env=env).stdout))

    n = versions()
    proc = run(PYCOR + ["base", "shell", rbase], env=env, check=False, stdin_text="echo nope > /etc/shell-discarded; exit 3\n")
    assert proc.returncode == 1 and "status 3" in proc.stderr and versions() == n
    run(PYCOR + ["base", "shell", rbase], env=env, stdin_text="echo yes > /etc/shell-published; exit 0\n")
    assert versions() == n + 1


def test_base_edit_keeps_a_builder_for_lxc_tools_then_publish_or_discard(rbase, env, store):
    out = run(PYCOR + ["base", "edit", rbase], env=env).stdout
    lxcpath = out.split("-P ")[1].split()[0]
    try:
        proc = run(PYCOR + ["base", "update", rbase, "--", "true"], env=env, check=False)
        assert proc.returncode == 1 and "being edited" in proc.stderr
        run(["lxc-attach", "-n", "builder", "-P", lxcpath, "--", "/bin/sh", "-c", "echo edited > /etc/edited-by-tools"])
        out = run(PYCOR + ["base", "publish", rbase], env=env).stdout
    except BaseException:
        run(PYCOR + ["base", "discard", rbase], env=env, check=False)
        raise
    version = out.split("version ")[1].split()[0]
    assert open(os.path.join(layer_of(store, rbase, version), "etc/edited-by-tools")).read() == "edited\n"
    run(PYCOR + ["base", "edit", rbase], env=env)
    run(PYCOR + ["base", "discard", rbase], env=env)
    assert json.loads(run(PYCOR + ["base", "versions", rbase, "--format", "json"], env=env).stdout)[-1]["version"] == version
    assert not os.listdir(os.path.join(store, "staging")) or all(not n.startswith(rbase) for n in os.listdir(os.path.join(store, "staging")))


def test_lxd_container_gets_the_bases_new_user_and_keeps_its_own(request, launch, rbase, env):
    denv = request.getfixturevalue(f"{request.node.callspec.params['launch']}_env")  # LXD's or Incus's project
    c = launch(base=rbase)
    c.sh("useradd -m erin")
    c.lxc("stop", c.name)
    user = f"sys{c.cli[:3]}"  # one per daemon: both runs update this module's base
    update(env, rbase, f"useradd -r {user}")
    c.lxc("start", c.name)
    assert c.sh(f"getent passwd {user} && id erin").returncode == 0
    out = run(PYCOR + ["conflicts", c.name, "--format", "json"], env=denv).stdout
    assert "/etc/passwd" in {f["path"] for f in json.loads(out)[0]["findings"] if f["kind"] == "merged"}
