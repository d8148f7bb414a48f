"""Helper processes and progress output for long commands (imports, exports, copies).

A helper (tar, debootstrap) runs in its own process group, so Ctrl-C reaches
only pycor, which then stops the whole group before its staging goes away.
Progress goes to stderr: one line updated in place on a terminal, a line
every few seconds or every 10 % otherwise.

Primitive: not on a hook's path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from .units import human_size

log = logging.getLogger("pycor")
CHUNK = 1 << 20


class Progress:
    """Reports the progress of one step on stderr.

    On a terminal one line is updated in place with '\\r'; otherwise a line is
    printed at most every INTERVAL seconds or every 10 %, so logs stay short.
    """

    INTERVAL = 5.0
    TTY_INTERVAL = 0.1

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.label = ""
        self.total = 0
        self._last_time = 0.0
        self._last_fraction = 0.0
        self._in_place = False  # a '\r' line is on screen without its newline

    def start(self, label: str, total: int = 0) -> None:
        self.label = label
        self.total = total
        self._last_time = time.monotonic()
        self._last_fraction = 0.0
        self._show(label, force=True)

    def update(self, done: int) -> None:
        """Done so far, in the unit of total (bytes here)."""
        text = f"{self.label}: {human_size(done)}"
        fraction = 0.0
        if self.total > 0:
            fraction = min(done / self.total, 1.0)
            text += f" of about {human_size(self.total)} ({fraction:.0%})"
        force = not self.tty and fraction - self._last_fraction >= 0.1
        if self._show(text, force=force):
            self._last_fraction = fraction

    def note(self, text: str, important: bool = False) -> None:
        """A status line from a helper (debootstrap's output); important ones always show."""
        self._show(f"{self.label}: {text}" if self.label else text, force=important)

    def finish(self, text: str) -> None:
        self._show(text, force=True)
        self.close()

    def close(self) -> None:
        """End a line left open in place, so what follows (an error) starts on its own line."""
        if self._in_place:
            self.stream.write("\n")
            self.stream.flush()
            self._in_place = False

    def _show(self, text: str, force: bool = False) -> bool:
        now = time.monotonic()
        interval = self.TTY_INTERVAL if self.tty else self.INTERVAL
        if not force and now - self._last_time < interval:
            return False
        self._last_time = now
        if self.tty:
            # A line longer than the terminal would wrap and '\r' could not rewrite it.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self._in_place = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        return True



@contextlib.contextmanager
def running(cmd: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start a helper in its own process group; on an early exit stop the whole group.

    Its own group means Ctrl-C reaches only us, and we stop the helper (and the
    children debootstrap or tar started) before the staging directory goes.
    """
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        stop_group(proc)




def stop_group(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc.returncode is not None:
        return  # reaped by the caller: it finished on its own
    # Until we reap the leader its pid, which is the group id, cannot be
    # reused, so signalling the group cannot hit a stranger.
    killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not has_exited(proc.pid):
        time.sleep(0.05)
    # Children of the leader (dpkg under debootstrap, tar's compressor) may outlive it.
    killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def has_exited(pid: int) -> bool:
    """True once pid has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None




def tail(f: IO[bytes], lines: int = 10) -> str:
    f.seek(0)
    text = f.read().decode("utf-8", "replace").strip().splitlines()
    return "\n".join(text[-lines:])



def pump(src: IO[bytes], dst: IO[bytes], progress: Progress) -> None:
    """Copy src to dst counting bytes; stop quietly when dst's reader has gone."""
    done = 0
    while chunk := src.read(CHUNK):
        try:
            dst.write(chunk)
        except BrokenPipeError:
            break
        done += len(chunk)
        progress.update(done)
    with contextlib.suppress(BrokenPipeError):
        dst.close()



def file_tail(path: str, lines: int = 10) -> str:
    try:
        with open(path, "rb") as f:
            return tail(f, lines)
    except OSError:
        return ""

