"""Incus beside LXD: the hooks' runtime recognition and the one REST client (pure, against a fake socket),
then unprivileged Incus containers on one root-owned base, and Incus's own operations on them (real daemon)."""


from __future__ import annotations

import json
import os
import socketserver
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest

from pycor_hooks import daemon as lxd
from pycor_hooks import hooks
from pycor_hooks.errors import Conflict, NotFound

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


@pytest.mark.parametrize("exe,daemon_dir,project,kind", [
    ("/usr/bin/lxd", "/var/lib/lxd", "default", "lxd"),  # Debian package
    ("/snap/lxd/29351/bin/lxd", "/var/snap/lxd/common/lxd", "default", "lxd"),  # the snap
    ("/usr/bin/lxd", "/tmp/lxd-test-dir", "web", "lxd"),  # any LXD_DIR, a named project
    ("/usr/libexec/incus/incusd", "/var/lib/incus", "default", "incus"),
    ("/usr/libexec/incus/incusd", "/srv/incus two", "tenant-a", "incus"),  # any INCUS_DIR, even with a space
])
def test_hooks_recognise_the_daemon_dir_project_and_instance_from_its_callhook_lines(exe, daemon_dir, project, kind):
    with tempfile.TemporaryDirectory() as tmp:
        conf = write_conf(os.path.join(tmp, "web1"), LXD_CONF.format(log="x", dir=daemon_dir, project=project, name="web1", exe=exe))
        assert hooks.runtime_info(conf) == (kind, daemon_dir, project, "web1")
        assert hooks.runtime_info(conf)[:2] == (kind, daemon_dir)


def test_the_start_hook_alone_is_enough_and_a_raw_lxc_config_is_lxc():
    with tempfile.TemporaryDirectory() as tmp:
        text = 'lxc.hook.pre-start = /proc/self/exe callhook /var/lib/incus "default" "c1" start\n'
        conf = write_conf(os.path.join(tmp, "c1"), text)
        # /proc/self/exe is this python: the daemon dir names the kind
        assert hooks.runtime_info(conf) == ("incus", "/var/lib/incus", "default", "c1")
        lxc_conf = os.path.join(tmp, "lxcpath", "c2", "config")
        os.makedirs(os.path.dirname(lxc_conf))
        with open(lxc_conf, "w") as f:
            f.write("lxc.rootfs.path = dir:/x\nlxc.hook.pre-start = /usr/share/lxc/hooks/pycor-pre-start\n")
        assert hooks.runtime_info(lxc_conf)[:2] == ("lxc", os.path.join(tmp, "lxcpath"))
        assert hooks.runtime_info(None)[:2] == ("lxc", None)
        assert hooks.daemon_log(lxc_conf) is None


def test_hook_failures_go_to_the_right_lxc_log_of_each_daemon():
    with tempfile.TemporaryDirectory() as tmp:
        lxd_conf = write_conf(os.path.join(tmp, "lxd", "logs", "p_c1"), LXD_CONF.format(
            log="", dir=os.path.join(tmp, "lxd"), project="p", name="c1", exe="/usr/bin/lxd"))
        assert hooks.daemon_log(lxd_conf) == os.path.join(tmp, "lxd", "logs", "p_c1", "lxc.log")
        # Incus: lxc.conf under the run dir, the log under logs/ (or /var/log/incus for the default dir)
        incus_conf = write_conf(os.path.join(tmp, "incus", "run", "p_c1"), LXD_CONF.format(
            log="", dir=os.path.join(tmp, "incus"), project="p", name="c1", exe="/usr/libexec/incus/incusd"))
        assert hooks.daemon_log(incus_conf) == os.path.join(tmp, "incus", "logs", "p_c1", "lxc.log")
        default_conf = write_conf(os.path.join(tmp, "run-incus", "c1"), LXD_CONF.format(
            log="", dir="/var/lib/incus", project="default", name="c1", exe="/usr/libexec/incus/incusd"))
        assert hooks.daemon_log(default_conf) == "/var/log/incus/c1/lxc.log"


@pytest.mark.parametrize("dialect,header", [(lxd.LXD, "X-LXD-properties"), (lxd.INCUS, "X-Incus-properties")])
def test_client_finds_the_daemon_by_its_dir_and_speaks_its_dialect(dialect, header, monkeypatch):
    routes = {
        ("GET", "/1.0"): (200, {"api_version": "1.0"}),
        ("POST", "/1.0/images"): (200, {"metadata": {"fingerprint": "f1"}}),
        ("POST", "/1.0/images/aliases"): (200, {}),
        ("GET", "/1.0/images/f1"): (200, {"fingerprint": "f1", "properties": {"pycor.base": "deb"}, "public": False}),
        ("PUT", "/1.0/images/f1"): (200, {}),
    }
    with fake_daemon(routes) as (daemon_dir, server):
        monkeypatch.setenv(dialect.dir_env, daemon_dir)
        monkeypatch.setenv(dialect.project_env, "tenant")
        client = lxd.daemon(dialect.kind)
        assert client is not None and client.socket_path == os.path.join(daemon_dir, "unix.socket")
        assert client.kind == dialect.kind and client.project == "tenant"
        assert client.ensure_image("deb", "/srv/store") == "added"
        upload = next(s for s in server.seen if s[0] == "POST" and s[1].startswith("/1.0/images?"))
        assert "project=tenant" in upload[1]
        assert urllib.parse.parse_qs(upload[2][header]) == {"pycor.base": ["deb"], "pycor.store": ["/srv/store"]}
        other = "X-Incus-properties" if header == "X-LXD-properties" else "X-LXD-properties"
        assert other not in upload[2]
        with tarfile.open(fileobj=__import__("io").BytesIO(upload[3])) as tar:
            meta = tar.extractfile("metadata.yaml").read().decode()  # type: ignore[union-attr]
        assert 'pycor.store: "/srv/store"' in meta
        put = json.loads(next(s for s in server.seen if s[0] == "PUT" and s[1].startswith("/1.0/images/f1?"))[3])
        assert put == {"properties": {"pycor.base": "deb"}, "public": False, "profiles": ["default", "overlay"]}
        alias = json.loads(next(s for s in server.seen if s[1].startswith("/1.0/images/aliases?"))[3])
        assert alias == {"name": "pycor/deb", "target": "f1", "description": "pycor base deb"}
        assert client.instance_rootfs({"name": "c1", "project": "tenant", "expanded_devices": {"root": {"pool": "p"}}}) == \
            os.path.join(daemon_dir, "storage-pools", "p", "containers", "tenant_c1", "rootfs")


def test_not_found_is_a_type_and_another_stores_image_and_profile_are_left_alone():
    image = {"fingerprint": "f9", "properties": {"pycor.base": "deb", "pycor.store": "/srv/a"}}
    profile = {"name": "overlay", "config": {"raw.lxc": "lxc.hook.pre-start = /h/pycor-pre-start --store /srv/a"}}
    routes = {
        ("GET", "/1.0"): (200, {}),
        ("GET", "/1.0/images/aliases/pycor%2Fdeb"): (200, {"target": "f9"}),
        ("GET", "/1.0/images/f9"): (200, image),
        ("GET", "/1.0/profiles/overlay"): (200, profile),
    }
    with fake_daemon(routes) as (daemon_dir, server):
        client = lxd.Daemon(lxd.INCUS, daemon_dir)
        assert client.instance("nope") is None
        with pytest.raises(NotFound):
            client.request("GET", "/1.0/instances/nope")
        assert client.image("other") is None
        assert client.ensure_image("deb", "/srv/b") == "other"
        assert client.remove_image("deb", "/srv/b") is False
        assert not client.is_set_up_for("/srv/b") and client.is_set_up_for("/srv/a")  # older profiles: the hooks' --store
        with pytest.raises(Conflict) as e:
            client.ensure_profile("lxc.hook.pre-start = /h/pycor-pre-start --store /srv/b", "/srv/b")
        assert "belongs to pycor store /srv/a" in str(e.value) and "PYCOR_INCUS_PROJECT" in str(e.value)
        assert [s[0] for s in server.seen if s[0] != "GET"] == []  # nothing written
        assert lxd.image_store({"properties": {}}) == "/var/lib/pycor"


def test_a_daemon_that_does_not_run_is_not_listed(monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setenv("INCUS_DIR", tmp)
        assert lxd.Daemon(lxd.INCUS).available() is False
        assert all(d.dir != tmp for d in lxd.daemons(("incus",)))


def test_an_idmapped_rootfs_no_profile_clears_is_refused_with_the_fix_in_the_daemons_log(monkeypatch, capsys):
    """A profile written by an older pycor has no line clearing the daemon's idmap=container: LXC would
    idmap a clone of the bare rootfs directory and hide the overlay, so pre-start says to update it."""
    with tempfile.TemporaryDirectory() as tmp:
        daemon_dir = os.path.join(tmp, "incus")
        conf = write_conf(os.path.join(daemon_dir, "run", "p_c1"), LXD_CONF.format(
            log="", dir=daemon_dir, project="p", name="c1", exe="/usr/libexec/incus/incusd")
            + "lxc.rootfs.options = idmap=container\n")
        log = os.path.join(daemon_dir, "logs", "p_c1", "lxc.log")
        os.makedirs(os.path.dirname(log))
        open(log, "w").close()
        rootfs = os.path.join(daemon_dir, "rootfs")
        os.makedirs(rootfs)
        monkeypatch.setenv("LXC_NAME", "p_c1")
        monkeypatch.setenv("LXC_ROOTFS_PATH", rootfs)
        monkeypatch.setenv("LXC_CONFIG_FILE", conf)
        monkeypatch.setenv("LXC_HOOK_TYPE", "pre-start")
        assert hooks.main("pre-start", ["--store", os.path.join(tmp, "store")]) == 1
        assert "'pycor incus init'" in capsys.readouterr().err
        text = open(log).read()
        assert "pycor-pre-start: container p_c1: incus would mount this container's rootfs idmapped" in text
        assert os.listdir(rootfs) == []  # nothing made


@pytest.mark.parametrize("options,unshifted,idmapped", [
    ([], False, False),  # a daemon that shifts its storage on disk (LXD 5.0, incusd with INCUS_IDMAPPED_MOUNTS_DISABLE)
    (["idmap=container"], True, True),  # an idmapped rootfs, and a profile that does not clear it
    (["idmap=container", ""], True, False),  # the overlay profile's raw.lxc comes after the daemon's own line
    (["idmap=container", "", "idmap=container"], True, True),  # the last line decides, as for LXC
    (["ro"], False, False),
])
def test_the_start_hook_tells_an_unshifted_layer_and_a_rootfs_lxc_would_still_idmap(options, unshifted, idmapped):
    text = LXD_CONF.format(log="", dir="/var/lib/incus", project="p", name="c1", exe="/usr/libexec/incus/incusd") \
        + "".join(f"lxc.rootfs.options = {o}\n".replace(" \n", "\n") for o in options)
    hook, got_unshifted, got_idmapped = hooks.scan_config(text)
    assert hook is not None and hook[1:] == ("/var/lib/incus", "p", "c1")
    assert (got_unshifted, got_idmapped) == (unshifted, idmapped)


def test_the_overlay_profile_clears_the_rootfs_options_before_its_hooks():
    from pycor_hooks.lxcconfig import line, profile_lines

    lines = profile_lines("/usr/share/lxc/hooks", "/srv/s")
    assert lines[0] == "lxc.rootfs.options ="
    assert lines[1:] == [f"lxc.hook.{h} = /usr/share/lxc/hooks/pycor-{h} --store /srv/s" for h in ("pre-start", "pre-mount", "post-stop")]
    assert line("lxc.rootfs.options", "idmap=container") == "lxc.rootfs.options = idmap=container"
    raw = "\n".join(lines)
    assert lxd.hooks_store(raw) == "/srv/s"
    # what LXC reads once the daemon's own line came first: the rootfs is no longer idmapped
    assert hooks.scan_config("lxc.rootfs.options = idmap=container\n" + raw)[1:] == (True, False)


def test_the_store_a_container_runs_on_is_read_from_its_hook_lines():
    assert lxd.hooks_store("lxc.hook.pre-start = /h/pycor-pre-start --store /srv/s\nlxc.hook.post-stop = /x --store /no\n") == "/srv/s"
    assert lxd.hooks_store("lxc.hook.pre-start = '/h dir/pycor-pre-start' --store '/srv/a b'") == "/srv/a b"
    assert lxd.hooks_store("lxc.hook.pre-start = /usr/share/lxc/hooks/pycor-pre-start\n") == "/var/lib/pycor"
    assert lxd.hooks_store("") == "/var/lib/pycor"


def test_an_incusd_started_with_its_dir_set_keeps_instance_logs_under_it():
    """scripts/incus-up.sh once exported INCUS_DIR=/var/lib/incus: incusd then keeps run and logs dirs under it,
    and a hook's failure went to a log nobody reads (lxc info --show-log showed none)."""
    assert hooks.instance_log("incus", "/var/lib/incus", "/var/lib/incus/run/p_c1/lxc.conf") == "/var/lib/incus/logs/p_c1/lxc.log"
    assert hooks.instance_log("incus", "/var/lib/incus", "/run/incus/p_c1/lxc.conf") == "/var/log/incus/p_c1/lxc.log"
    assert hooks.instance_log("lxd", "/var/lib/lxd", "/var/log/lxd/c1/lxc.conf") == "/var/log/lxd/c1/lxc.log"
    assert hooks.instance_log("lxc", None, "/var/lib/lxc/c1/config") is None
