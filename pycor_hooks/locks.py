"""The one lock helper: flock on a file, as a context manager.

Locks pycor takes, outermost first (always in this order, so none deadlock):

- a container name in an lxcpath (create, adopt): ``/run/pycor/locks/name-<hash>``
- a container layer, by its rootfs directory (start, reset, commit, diff,
  rebase, pin): ``/run/pycor/locks/layer-<hash>``
- the store lock, ``STORE/lock``: shared to resolve a start, exclusive to
  remove or switch versions (see Store.lock)

Hot path: pre-start takes the layer lock. Imports stay minimal.
"""

from __future__ import annotations

import fcntl
import os
import zlib

from .errors import Busy

LOCK_DIR = "/run/pycor/locks"


class Flock:
    """flock(2) on path (created 0600, never through a symlink); released on exit or when the process dies.

    transient (exclusive locks only): the file is there only while the lock is
    held, so a lock per container leaves nothing behind in /run once it is
    gone. The holder removes it as it lets go; a locker that then gets the
    removed file's lock sees that the path no longer names it and starts over.
    """

    def __init__(self, path: str, exclusive: bool = True, wait: bool = True, what: str = "", transient: bool = False) -> None:
        self.path, self.exclusive, self.wait, self.what = path, exclusive, wait, what
        self.transient = transient and exclusive  # a shared holder cannot know it is the last
        self.fd = -1

    def __enter__(self) -> "Flock":
        op = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | (0 if self.wait else fcntl.LOCK_NB)
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self.fd, op)
                if self._names_ours():
                    return self
            except BlockingIOError:
                self._close()
                raise Busy(f"{self.what or self.path} is busy: another pycor command holds it",
                           "wait for it to finish, then run this again") from None
            except BaseException:
                self._close()
                raise
            self._close()  # its holder removed it as it let go: lock the file the path names now

    def _close(self) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)

    def _names_ours(self) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)

    def __exit__(self, exc_type: object = None, *exc: object) -> None:
        if self.fd < 0:
            return
        try:
            # while still held (see the class docstring); not after a failure, where a child the fd was
            # passed to (lxc-create under the name lock) may still hold it: sweep() removes it later
            if self.transient and exc_type is None and self._names_ours():
                os.unlink(self.path)
        except FileNotFoundError:
            pass  # removed by hand meanwhile
        finally:
            self._close()


class Held:
    """Stands for a lock the caller already holds (contextlib.nullcontext without importing contextlib)."""

    def __enter__(self) -> "Held":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _lock_dir() -> str:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    return LOCK_DIR


def _key(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}{zlib.adler32(text.encode()):08x}"


def layer_lock(rootfs: str, exclusive: bool = True, wait: bool = True) -> Flock:
    """One container layer: a start, reset, commit, diff or rebase holds it across its check and its action."""
    return Flock(os.path.join(_lock_dir(), "layer-" + _key(os.path.abspath(rootfs))), exclusive, wait, f"container layer {rootfs}",
                 transient=True)


def name_lock(lxcpath: str, name: str, wait: bool = True) -> Flock:
    """One container name in one lxcpath: creates of the same name exclude each other."""
    return Flock(os.path.join(_lock_dir(), "name-" + _key(os.path.abspath(lxcpath) + "\0" + name)), True, wait,
                 f"container name {name} in {lxcpath}", transient=True)


def sweep() -> int:
    """Remove the files of transient locks that nobody holds: left by commands killed while holding
    them or that let go after a failure (see Flock.__exit__), or by pycor before its locks were
    transient. The number removed."""
    try:
        entries = os.listdir(LOCK_DIR)
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        if entry.startswith(("layer-", "name-")):  # the transient ones; rollout locks stay
            try:
                with Flock(os.path.join(LOCK_DIR, entry), wait=False, transient=True):
                    removed += 1
            except (Busy, OSError):  # held; or not a lock file (a symlink, a directory): left alone
                pass
    return removed

