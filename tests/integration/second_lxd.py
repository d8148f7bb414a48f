"""A second LXD daemon on this machine, as a second host: for tests/test_hosts.py and benchmarks/hosts.py.

Its own LXD_DIR (/var/lib/pycor-test-lxd2-XXXXXX), a dir pool, listening on
127.0.0.1:<free port>, added as remote 'h2' with a trust token to a private
client config (LXD_CONF), so root's own `lxc` remotes are never touched. This
is how LXD's own test suite spawns extra daemons (test/includes/lxd.sh,
spawn_lxd). stop() shuts it down and removes its directory, whatever
happened. LxdCluster: two such daemons joined as one LXD cluster, each
member on its own loopback port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid

REMOTE = "h2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p == path or p.startswith(path + "/")), key=len, reverse=True)


def _run(argv: list[str], env: dict[str, str], stdin_text: str | None = None, timeout: float = 150) -> str:
    proc = subprocess.run(argv, env=env, input=stdin_text, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class SecondLxd:
    def __init__(self) -> None:
        self.lxd_dir = f"/var/lib/pycor-test-lxd2-{uuid.uuid4().hex[:6]}"
        self.client_conf = os.path.join(self.lxd_dir, "client")
        self.proc: subprocess.Popen | None = None
        self.daemon_env = {k: v for k, v in os.environ.items() if k not in ("LXD_SOCKET", "LXD_CONF")}
        self.daemon_env["LXD_DIR"] = self.lxd_dir
        self.client_env = {k: v for k, v in os.environ.items() if k not in ("LXD_DIR", "LXD_SOCKET")}
        self.client_env["LXD_CONF"] = self.client_conf

    @property
    def socket(self) -> str:
        return os.path.join(self.lxd_dir, "unix.socket")

    def pycor_env(self, env: dict[str, str], store: str) -> dict[str, str]:
        """pycor aimed at this daemon and store: LXD_SOCKET for today's client, LXD_DIR for the LXD+Incus one."""
        out = dict(env, PYCOR_STORE=store, LXD_DIR=self.lxd_dir, LXD_SOCKET=self.socket)
        out.pop("PYCOR_LXD_PROJECT", None)
        return out

    def rootfs(self, name: str) -> str:
        return os.path.join(self.lxd_dir, "storage-pools", "default", "containers", name, "rootfs")

    def start(self) -> None:
        os.mkdir(self.lxd_dir, 0o755)
        port = free_port()
        self.proc = subprocess.Popen(["lxd", "--group", "root", "--logfile", os.path.join(self.lxd_dir, "lxd.log")],
                                     cwd="/", env=self.daemon_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _run(["lxd", "waitready", "--timeout", "120"], self.daemon_env)
        preseed = (f"config:\n  core.https_address: 127.0.0.1:{port}\nstorage_pools:\n- name: default\n  driver: dir\n"
                   "profiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n")
        _run(["lxd", "init", "--preseed"], self.daemon_env, preseed)
        token = _run(["lxc", "config", "trust", "add", "--name", "pycor-test", "-q"], self.daemon_env).strip().splitlines()[-1]
        os.mkdir(self.client_conf, 0o700)
        # LXD 5.0 takes the token where newer clients take --token (it carries the address)
        _run(["lxc", "remote", "add", REMOTE, token, "--accept-certificate"], self.client_env)

    def stop(self) -> None:
        if self.proc is not None:
            subprocess.run(["lxd", "shutdown", "--timeout", "60"], env=self.daemon_env, capture_output=True, timeout=120)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        for point in mounts_under(self.lxd_dir):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.lxd_dir, ignore_errors=True)

    def lxc(self, *args: str, timeout: float = 300) -> str:
        """The lxc client with remote h2 (and 'local:' the host's own daemon)."""
        return _run(["lxc", *args], self.client_env, timeout=timeout)


class LxdCluster:
    """A two-member LXD cluster on this machine: m1 and m2, each its own LXD_DIR and 127.0.0.1 port."""

    def __init__(self) -> None:
        self.members = [SecondLxd(), SecondLxd()]

    @property
    def env(self) -> dict[str, str]:
        """lxc and pycor talking to the cluster through m1 (either member would do)."""
        return dict(self.members[0].daemon_env, LXD_SOCKET=self.members[0].socket)

    def start(self) -> None:
        for m in self.members:
            os.mkdir(m.lxd_dir, 0o755)
            m.proc = subprocess.Popen(["lxd", "--group", "root", "--logfile", os.path.join(m.lxd_dir, "lxd.log")],
                                      cwd="/", env=m.daemon_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        for m in self.members:
            _run(["lxd", "waitready", "--timeout", "120"], m.daemon_env)
        first, second = self.members
        p1, p2 = free_port(), free_port()
        _run(["lxd", "init", "--preseed"], first.daemon_env,
             f"config:\n  core.https_address: 127.0.0.1:{p1}\n  cluster.https_address: 127.0.0.1:{p1}\n"
             "cluster:\n  server_name: m1\n  enabled: true\nstorage_pools:\n- name: default\n  driver: dir\n"
             "profiles:\n- name: default\n  devices:\n    root: {path: /, pool: default, type: disk}\n")
        token = _run(["lxc", "cluster", "add", "m2", "-q"], first.daemon_env).strip().splitlines()[-1]
        _run(["lxd", "init", "--preseed"], second.daemon_env,
             f"cluster:\n  enabled: true\n  server_name: m2\n  server_address: 127.0.0.1:{p2}\n  cluster_token: {token}\n"
             "  member_config:\n  - entity: storage-pool\n    name: default\n    key: source\n    value: \"\"\n", timeout=300)

    def stop(self) -> None:
        for m in reversed(self.members):
            m.stop()
