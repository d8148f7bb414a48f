"""Incus beside LXD: the hooks' runtime recognition and the one REST client (pure, against a fake socket),
then unprivileged Incus containers on one root-owned base, and Incus's own operations on them (real daemon)."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest

from helpers import PYCOR, run

# -- runtime recognition (pure) --------------------------------------------------------

LXD_CONF = """lxc.log.file = {log}
lxc.hook.version = 1
lxc.hook.pre-start = /proc/1/exe callhook {dir} "{project}" "{name}" start
lxc.hook.stop = {exe} callhook {dir} "{project}" "{name}" stopns
lxc.hook.post-stop = {exe} callhook {dir} "{project}" "{name}" stop
lxc.idmap = u 0 1000000 1000000000
lxc.hook.pre-start = /usr/share/lxc/hooks/pycor-pre-start
"""


def write_conf(folder: str, text: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "lxc.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


# -- the one client, two dialects, against a fake socket (pure) ---------------------------

class FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, routes: dict) -> None:
        self.routes = routes  # (METHOD, path) -> (status, metadata)
        self.seen: list[tuple[str, str, dict, bytes]] = []
        super().__init__(path, FakeHandler)


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeDaemon

    def handle_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path)
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        status, metadata = self.server.routes.get((self.command, path.path), (404, None))
        if status >= 400:
            payload = {"type": "error", "error": "not found" if status == 404 else "failed", "error_code": status}
        else:
            payload = {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

    def log_message(self, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@contextmanager
def fake_daemon(routes: dict) -> Iterator[tuple[str, FakeDaemon]]:
    with tempfile.TemporaryDirectory() as daemon_dir:
        server = FakeDaemon(os.path.join(daemon_dir, "unix.socket"), routes)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield daemon_dir, server
        finally:
            server.shutdown()
            server.server_close()


# -- a real Incus daemon -------------------------------------------------------------------

def aliases(project: str) -> dict[str, str]:
    images = json.loads(run(["incus", "image", "list", "--project", project, "--format", "json"]).stdout)
    return {a["name"]: i["fingerprint"] for i in images for a in i["aliases"]}


def test_incus_init_is_safe_to_repeat_and_makes_profile_and_image(incus_env, incus_project, busybox_base, hooks_dir):
    run(PYCOR + ["incus", "init"], env=incus_env)  # bases imported since the session's init (other tests') get their image
    again = run(PYCOR + ["incus", "init"], env=incus_env).stdout
    assert "already set up" in again
    raw = run(["incus", "profile", "get", "overlay", "raw.lxc", "--project", incus_project]).stdout
    assert f"lxc.hook.pre-mount = {hooks_dir}/pycor-pre-mount" in raw
    store = run(["incus", "profile", "get", "overlay", "user.pycor.store", "--project", incus_project]).stdout.strip()
    assert store == incus_env["PYCOR_STORE"]
    images = json.loads(run(["incus", "image", "list", "--project", incus_project, "--format", "json"]).stdout)
    assert f"pycor/{busybox_base}" in {a["name"] for i in images for a in i["aliases"]}
    assert all(i["size"] < 4096 and i["properties"]["pycor.store"] == store for i in images)


def test_a_base_imported_later_gets_its_image_in_every_daemon_set_up(lxd_env, incus_env, lxd_project, incus_project):
    both = dict(incus_env, PYCOR_LXD_PROJECT=lxd_project)
    out = run(PYCOR + ["base", "import", "late2", "--busybox"], env=both).stdout
    try:
        assert "LXD project" in out and "Incus project" in out
        assert "pycor/late2" in aliases(incus_project)
        lxd_images = json.loads(run(["lxc", "image", "list", "--project", lxd_project, "--format", "json"]).stdout)
        assert "pycor/late2" in {a["name"] for i in lxd_images for a in i["aliases"]}
    finally:
        run(PYCOR + ["base", "rm", "late2"], env=both)
    assert "pycor/late2" not in aliases(incus_project)


def test_another_store_never_touches_this_stores_incus_images_and_profile(incus_env, incus_project, busybox_base, session_dir):
    other = dict(incus_env, PYCOR_STORE=os.path.join(session_dir, "other-incus-store"))
    shared = f"i{os.getpid()}"  # a base name both stores have, that no container uses
    run(PYCOR + ["base", "import", shared, "--busybox"], env=incus_env)
    try:
        before = aliases(incus_project)
        assert f"pycor/{shared}" in before
        run(PYCOR + ["base", "import", shared, "--busybox"], env=other)
        run(PYCOR + ["base", "import", "otherbase2", "--busybox"], env=other)
        run(PYCOR + ["base", "rm", shared], env=other)
        assert aliases(incus_project) == before
        proc = run(PYCOR + ["incus", "init"], env=other, check=False)
        assert proc.returncode == 1 and "belongs to pycor store" in proc.stderr
    finally:
        run(PYCOR + ["base", "rm", shared], env=incus_env)


def test_pycor_create_ls_rm_and_base_rm_cover_incus(incus_env, incus_project, busybox_base):
    name = f"pi{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["create", name, "--base", busybox_base, "--runtime", "incus"], env=incus_env)
    try:
        rows = {r["name"]: r for r in json.loads(run(PYCOR + ["ls", "--format", "json"], env=incus_env).stdout)}
        assert rows[name]["runtime"] == "incus" and rows[name]["base"] == busybox_base and rows[name]["state"] == "STOPPED"
        proc = run(PYCOR + ["base", "rm", busybox_base], env=incus_env, check=False)
        assert proc.returncode == 1 and name in proc.stderr
        run(["incus", "start", name, "--project", incus_project])
        proc = run(PYCOR + ["rm", name], env=incus_env, check=False)
        assert proc.returncode == 1 and "running" in proc.stderr and "incus stop" in proc.stderr
        run(PYCOR + ["rm", name, "--force"], env=incus_env)
        assert subprocess.run(["incus", "info", name, "--project", incus_project], capture_output=True).returncode != 0
    finally:
        subprocess.run(["incus", "delete", "-f", name, "--project", incus_project], capture_output=True)


@pytest.fixture
def incus_default_project(incus_env: dict[str, str], busybox_base: str) -> Iterator[dict[str, str]]:
    """pycor set up in Incus's default project for this test only: its profile and image are removed after."""
    if run(["incus", "profile", "show", "overlay"], check=False).returncode == 0:
        raise AssertionError("Incus's default project already has an 'overlay' profile: this test would change it")
    denv = dict(incus_env, PYCOR_INCUS_PROJECT="default")
    made: list[str] = []
    try:
        before = set(aliases("default"))
        run(PYCOR + ["incus", "init"], env=denv)
        made = [a for a in aliases("default") if a not in before]
        yield denv
    finally:
        fingerprints = aliases("default")
        for alias in made:
            subprocess.run(["incus", "image", "delete", fingerprints[alias]], capture_output=True)
        subprocess.run(["incus", "profile", "delete", "overlay"], capture_output=True)


def test_the_default_project_works_as_a_named_one(incus_default_project, busybox_base):
    from conftest import DAEMON_DIRS, LxdContainer

    with launched_once(LxdContainer(f"d{uuid.uuid4().hex[:8]}", "default", "incus"), busybox_base) as c:
        assert c.sh("cat /proc/self/uid_map").stdout.split()[1] != "0"
        c.sh("echo default-project > /root/d")
        assert open(os.path.join(c.upper, "root/d")).read() == "default-project\n"
        assert c.rootfs == f"{DAEMON_DIRS['incus']}/storage-pools/default/containers/{c.name}/rootfs"
        rows = {r["name"]: r for r in json.loads(run(PYCOR + ["ls", "--format", "json"], env=incus_default_project).stdout)}
        assert rows[c.name]["runtime"] == "incus" and rows[c.name]["state"] == "RUNNING"


@contextmanager
def launched_once(c, base: str):  # type: ignore[no-untyped-def]
    try:
        run(["incus", "launch", f"pycor/{base}", c.name, "--profile", "default", "--profile", "overlay",
             "--project", c.project], timeout=180)
        yield c
    finally:
        subprocess.run(["incus", "delete", "-f", c.name, "--project", c.project], capture_output=True)


def test_rollout_and_gc_see_incus_containers_as_lxd_ones(incus_env, incus_project):
    from conftest import LxdContainer

    base = f"r{uuid.uuid4().hex[:6]}"
    run(PYCOR + ["base", "import", base, "--busybox"], env=incus_env)  # its image comes to Incus at import
    c = LxdContainer(f"r{uuid.uuid4().hex[:8]}", incus_project, "incus")
    pinned = LxdContainer(c.name + "p", incus_project, "incus")
    try:
        for x in (c, pinned):
            run(["incus", "launch", f"pycor/{base}", x.name, "--profile", "default", "--profile", "overlay",
                 "--project", incus_project], timeout=180)
        run(PYCOR + ["pin", pinned.name, "1"], env=incus_env)
        run(PYCOR + ["base", "update", base, "--", "/bin/sh", "-c", "echo v2 > /etc/version"], env=incus_env, timeout=300)
        rows = {r["name"]: r for r in json.loads(run(PYCOR + ["rollout", base, "--check", "grep -q v2 /etc/version",
                                                             "--format", "json"], env=incus_env).stdout)}
        assert rows[c.name]["status"] == "moved" and rows[c.name]["runtime"] == "incus" and pinned.name not in rows
        assert c.sh("cat /etc/version").stdout == "v2\n"
        run(PYCOR + ["base", "gc"], env=incus_env)  # the pinned Incus container keeps version 1
        versions = json.loads(run(PYCOR + ["base", "versions", base, "--format", "json"], env=incus_env).stdout)
        assert {v["version"] for v in versions} == {"1", "2"}
        pinned.lxc("restart", pinned.name)
        assert pinned.sh("test -e /etc/version", check=False).returncode != 0
    finally:
        for x in (c, pinned):
            subprocess.run(["incus", "delete", "-f", x.name, "--project", incus_project], capture_output=True)
        subprocess.run(PYCOR + ["base", "rm", base], env=incus_env, capture_output=True)
