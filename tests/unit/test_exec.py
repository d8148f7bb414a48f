"""Runtime.exec, the one way pycor runs a command in a container (an upgrade's boot check and apt, a
rollout's --check): bounded whatever the container does. Pure logic: the 'container' is this host."""

from __future__ import annotations

import io
import os
import signal
import threading

import pytest

from pycor_hooks import builder
from pycor_hooks.runtime import Runtime


class Guest(Runtime):
    """A runtime whose 'container' is this host; stopping it kills what the script left in the background."""

    def __init__(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        self.pidfile, self.stopped = str(tmp_path / "bg.pid"), 0

    def exec_argv(self, name: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        return argv, None

    def stop(self, name: str, force: bool = False) -> None:  # the container's end: its processes go
        self.stopped += 1
        with open(self.pidfile) as f:
            os.kill(int(f.read()), signal.SIGKILL)

    def state(self, name: str) -> str:
        return "STOPPED"


def sh(guest: Guest, script: str, seconds: float = 60) -> builder.Ran:
    return guest.exec("c", ["/bin/sh", "-c", script], seconds)


def test_what_a_container_prints_is_kept_bounded_and_shown_without_control_characters(tmp_path):
    ran = sh(Guest(tmp_path), "head -c 50000000 /dev/zero | tr '\\0' x; printf '\\033]0;owned\\007end\\n'")
    assert ran.rc == 0 and len(ran.tail) <= builder.EXEC_TAIL and ran.tail.endswith("?]0;owned?end")
    assert sh(Guest(tmp_path), "echo no >&2; exit 3") == (3, "no", [], False)


def test_a_pipe_the_container_keeps_open_ends_with_the_container(tmp_path, monkeypatch):
    guest = Guest(tmp_path)
    monkeypatch.setattr(builder, "PIPE_GRACE", 0.5)
    signal.alarm(30)
    try:
        ran = sh(guest, f"sleep 300 & echo $! > {guest.pidfile}; echo booted")  # its background process holds the pipe
    finally:
        signal.alarm(0)
    assert (ran.rc, ran.tail, guest.stopped, ran.hung) == (0, "booted", 1, True)


def test_a_command_that_does_not_end_in_time_is_killed(tmp_path, monkeypatch):
    guest = Guest(tmp_path)
    monkeypatch.setattr(builder, "PIPE_GRACE", 0.5)
    ran = sh(guest, f"sleep 300 & echo $! > {guest.pidfile}; wait", seconds=0.5)
    assert (ran.rc, guest.stopped) == (None, 1)


def test_an_upgrade_whose_container_keeps_its_output_open_fails_clearly(tmp_path, monkeypatch):
    from pycor_hooks import upgrade
    from pycor_hooks.errors import PycorError

    guest = Guest(tmp_path)
    monkeypatch.setattr(builder, "PIPE_GRACE", 0.5)
    with pytest.raises(PycorError, match="kept the upgrade's output open") as e:
        upgrade._exec(guest, "c", f"sleep 300 & echo $! > {guest.pidfile}; exit 0", 60, relay=False)  # type: ignore[arg-type]
    assert "was stopped and nothing was changed" in str(e.value) and guest.stopped == 1


def test_a_stop_that_fails_still_ends_the_exec_and_its_reader(tmp_path, monkeypatch):
    class Stuck(Guest):
        def stop(self, name: str, force: bool = False) -> None:
            super().stop(name, force)
            raise OSError("lxc-stop failed")

    guest = Stuck(tmp_path)
    monkeypatch.setattr(builder, "PIPE_GRACE", 0.5)
    with pytest.raises(OSError, match="lxc-stop failed"):
        sh(guest, f"sleep 300 & echo $! > {guest.pidfile}; echo booted")
    assert not [t for t in threading.enumerate() if t.name.endswith("(read)")]


def test_relayed_output_stops_being_shown_past_its_cap_and_is_drained(capsys, monkeypatch):
    monkeypatch.setattr(builder, "MAX_RELAYED", 1000)
    data = b"".join(b"line %d\n" % i for i in range(100000))
    stream = io.BytesIO(data + b"E: Failed to fetch http://x/y  404\n")
    builder.relay_stderr(stream)
    err = capsys.readouterr().err
    assert len(err) < 1200 and err.endswith("(more than 0 MiB of output: the rest is not shown)\n")
    assert stream.read() == b""


# -- the commands a message tells a user to run --------------------------------------------------------------

def test_hints_name_the_lxcpath_project_and_daemon_the_container_lives_in(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """'lxc stop web1' stops another container (or none) when web1 lives in another project, lxcpath or daemon."""
    from pycor_hooks import lxc
    from pycor_hooks.daemon import INCUS, LXD, Daemon
    from pycor_hooks.runtime import DaemonRuntime, LxcRuntime

    monkeypatch.setattr(lxc, "default_lxcpath", lambda: "/var/lib/lxc")
    assert LxcRuntime("/var/lib/lxc").hint("stop", "web1") == "lxc-stop -n web1"
    assert LxcRuntime("/srv/my lxc").hint("start", "web1") == "lxc-start -n web1 -P '/srv/my lxc'"
    assert DaemonRuntime(Daemon(LXD, "/var/lib/lxd")).hint("stop", "web1") == "lxc stop web1"
    assert DaemonRuntime(Daemon(LXD, "/var/lib/lxd", project="fleet")).hint("start", "web1") == \
        "lxc start web1 --project fleet"
    assert DaemonRuntime(Daemon(INCUS, "/srv/incus", project="t")).hint("stop", "web1") == \
        "INCUS_DIR=/srv/incus incus stop web1 --project t"
    assert DaemonRuntime(Daemon(LXD, "/srv/my lxd")).hint("stop", "web1") == "LXD_DIR='/srv/my lxd' lxc stop web1"
    assert DaemonRuntime(Daemon(LXD, "/var/snap/lxd/common/lxd")).hint("stop", "web1") == "lxc stop web1"  # the snap's

    def no_lxc_config() -> str:
        raise OSError("lxc-config: not found")

    monkeypatch.setattr(lxc, "default_lxcpath", no_lxc_config)  # a hint inside another error's message never raises
    assert LxcRuntime("/var/lib/lxc").hint("stop", "web1") == "lxc-stop -n web1 -P /var/lib/lxc"
