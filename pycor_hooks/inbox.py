"""Files put into a *stopped* container's rootfs directory, put in place in its view at its next start.

LXD and Incus serve `lxc file push` (and pylxd's files.put) into a stopped
instance by writing into its rootfs directory, which for a pycor container
holds only .pycor/ and lies beneath the overlay: the container would never
see what was pushed. So at each start:

  collect()   host root, layer lock held (pre-start, or pre-mount --prepare):
              whatever sits beside .pycor/ is moved, by rename, into a new
              batch .pycor/inbox/BATCH/ (one listdir when there is none);
  replay()    pre-mount, after the overlay and the volumes are mounted, as the
              container's root (in its user namespace when unprivileged, so
              owners are what was pushed): every batch, oldest first, is put in
              place in the container's view, paths resolved as the container
              resolves them (/lib -> usr/lib is followed, inside its root).

A file replaces what is at its path (a temporary name, then a rename), with
the owner, mode and mtime it was pushed with; a directory the container has
keeps its own owner and mode, a missing one is made as pushed. An entry
leaves the batch only once it is in place, so a start that dies half-way
finishes the rest at the next one. What cannot go where it was pushed (a file
where the container has a directory, or a directory where it has a file, or
a node other than a file, directory or symlink) is never dropped: it is moved
to .pycor/inbox/rejected/BATCH/PATH, counted by `pycor ls`, and named in the
start's log. `pycor file push` into a stopped container adds a batch too.

Storage; on the start path: collect() costs one listdir of the rootfs
directory, replay() one failed open of .pycor/inbox; the rest runs only when
something was pushed.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from . import faults, linux
from .errors import PycorError
from .layer import PYCOR_DIR, beside, give_to_owner, owner_at
from .names import PATH_SHOWN, printable

INBOX = f"{PYCOR_DIR}/inbox"
REJECTED = "rejected"
TMP = ".pycor-push.tmp"  # one name per directory: a replay that died half-way leaves at most this, removed when retried
MAX_DEPTH = 256
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def batch_name() -> str:
    """A new batch's name: sorts after every earlier one."""
    return f"{time.time_ns():020d}.{os.getpid()}"


def open_inbox(rootfs_fd: int, create: bool) -> int | None:
    """An O_RDONLY fd of .pycor/inbox (made, owned by the layer's owner, when create), or None when missing."""
    try:
        return linux.open_beneath(rootfs_fd, INBOX, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if not create:
            return None
    pfd = linux.open_beneath(rootfs_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            os.mkdir("inbox", 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        fd = os.open("inbox", _DIR, dir_fd=pfd)
        give_to_owner(fd, owner_at(pfd))
        return fd
    finally:
        os.close(pfd)


def make_dir(parent: int, name: str, owner_of: int) -> int:
    """mkdir name in parent (0700, given the owner of owner_of's layer), opened; an existing one is opened."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    fd = os.open(name, _DIR, dir_fd=parent)
    st = os.fstat(owner_of)
    if (st.st_uid, st.st_gid) != (0, 0):
        os.fchown(fd, st.st_uid, st.st_gid)
    return fd


def collect(rootfs_fd: int, names: list[str]) -> None:
    """Move names, which lie beside .pycor (layer.beside), into a new batch of the inbox (host root, layer lock held)."""
    inbox = open_inbox(rootfs_fd, create=True)
    assert inbox is not None
    try:
        batch = make_dir(inbox, batch_name(), inbox)
        try:
            for name in names:  # a rename moves the entry itself: nothing in it is followed
                os.rename(name, name, src_dir_fd=rootfs_fd, dst_dir_fd=batch)
                faults.point("inbox.collecting")
        finally:
            os.close(batch)
    finally:
        os.close(inbox)


def batches(inbox: int) -> list[str]:
    """Pending batches, oldest first (a name starting with '.' is a push still being written)."""
    return sorted(n for n in os.listdir(inbox) if n != REJECTED and not n.startswith("."))


class Replay:
    """Put every pending batch in place in a container's view (see the module's docstring)."""

    def __init__(self, inbox: int, root: int) -> None:
        self.inbox, self.root = inbox, root  # .pycor/inbox (O_RDONLY), the container's root (the overlay's)
        self.done: list[str] = []
        self.rejected: list[tuple[str, str]] = []  # (container path, why)
        self.batch = ""

    def run(self) -> None:
        for batch in batches(self.inbox):
            self.batch = batch
            bfd = os.open(batch, _DIR, dir_fd=self.inbox)
            try:
                self.entries(bfd, "", self.root, 0)
            finally:
                os.close(bfd)
            try:
                os.rmdir(batch, dir_fd=self.inbox)
            except OSError:
                pass  # something in it could neither go in place nor aside: the next start tries again

    def entries(self, src: int, path: str, dst: int, depth: int) -> None:
        """Every entry of directory src (container path `path`) into directory dst of the container's view."""
        for name in sorted(os.listdir(src)):
            where = f"{path}/{name}"
            try:
                self.entry(src, name, where, dst, depth)
            except OSError as e:  # a full disk, a quota, a read-only file: kept aside, the start goes on
                self.reject(src, name, where, e.strerror or str(e))

    def entry(self, src: int, name: str, where: str, dst: int, depth: int) -> None:
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                return self.reject(src, name, where, f"it is more than {MAX_DEPTH} directories deep")
            sub = self.directory(dst, name, where, st)
            if sub is None:
                return self.reject(src, name, where, "the container has something other than a directory there")
            try:
                sfd = os.open(name, _DIR, dir_fd=src)
                try:
                    self.entries(sfd, where, sub, depth + 1)
                finally:
                    os.close(sfd)
            finally:
                os.close(sub)
            try:
                os.rmdir(name, dir_fd=src)
            except OSError:
                pass  # something in it was kept aside in place (it could not be moved): tried again next time
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return self.reject(src, name, where, "only files, directories and symlinks are put in place")
        try:
            old = os.stat(name, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            return self.reject(src, name, where, "the container has a directory there")
        try:
            self.place(src, name, st, dst)
        except BaseException:
            try:
                os.unlink(TMP, dir_fd=dst)
            except OSError:
                pass
            raise
        faults.point("inbox.placed")
        os.unlink(name, dir_fd=src)  # only now: a crash before this puts it in place again
        self.done.append(where)
        return None

    def directory(self, dst: int, name: str, where: str, st: os.stat_result) -> int | None:
        """An fd of the container's directory at where (made as pushed if missing), or None if something else is there."""
        try:
            return linux.open_in_root(self.root, where, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            if e.errno != errno.ENOENT:
                return None  # ENOTDIR, ELOOP: a file, or a symlink that leads to no directory
        try:
            os.mkdir(name, 0o700, dir_fd=dst)
        except FileExistsError:
            return None  # a dangling symlink
        fd = os.open(name, _DIR, dir_fd=dst)
        _own(fd, st)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        return fd

    def place(self, src: int, name: str, st: os.stat_result, dst: int) -> None:
        """Write the entry under a temporary name in dst, then rename it over name."""
        try:
            os.unlink(TMP, dir_fd=dst)  # left by a replay that died here
        except FileNotFoundError:
            pass
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), TMP, dir_fd=dst)
            try:
                os.chown(TMP, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            except OSError:
                pass  # an owner the container's map lacks: its root's
        else:
            sfd = open_regular(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src))
            if sfd is None:
                raise OSError(errno.EINVAL, "not a regular file any more")
            try:
                wfd = os.open(TMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
                try:
                    while os.sendfile(wfd, sfd, None, 1 << 24):
                        pass
                    _own(wfd, st)
                    os.fchmod(wfd, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
                    os.utime(wfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
            finally:
                os.close(sfd)
        os.rename(TMP, name, src_dir_fd=dst, dst_dir_fd=dst)

    def reject(self, src: int, name: str, where: str, why: str) -> None:
        """Move an entry that cannot go in place to rejected/BATCH/PATH: kept, never dropped."""
        parts = where.strip("/").split("/")[:-1]
        fd = make_dir(self.inbox, REJECTED, self.inbox)
        try:
            for part in [self.batch, *parts]:
                nxt = make_dir(fd, part, self.inbox)
                os.close(fd)
                fd = nxt
            try:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=fd)
            except OSError as e:
                raise PycorError(f"cannot put {where} (pushed while the container was stopped) in place ({why}), "
                                 f"nor keep it aside in {INBOX}/{REJECTED}: {e.strerror}",
                                 f"move it out of the container's {INBOX}/{self.batch} by hand") from None
        finally:
            os.close(fd)
        self.rejected.append((where, why))


def open_regular(path_fd: int) -> int | None:
    """An O_RDONLY fd of what an O_PATH fd names if it is a regular file, else None; closes path_fd.

    Nothing else is ever opened for reading (a device node a container made opens the host's device).
    """
    try:
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            return None
        return os.open(linux.fd_path(path_fd), os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def _own(fd: int, st: os.stat_result) -> None:
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass  # an owner outside the container's map (a file host root put there): the container root's


def replay(under_fd: int, root_fd: int) -> Replay | None:
    """pre-mount: put the pending batches in place; None when there are none (one failed open)."""
    inbox = open_inbox(under_fd, create=False)
    if inbox is None:
        return None
    try:
        work = Replay(inbox, root_fd)
        work.run()
        left = os.listdir(inbox)
    finally:
        os.close(inbox)
    if not left:  # the next starts pay one failed open again
        try:
            pfd = linux.open_beneath(under_fd, PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.rmdir("inbox", dir_fd=pfd)
            finally:
                os.close(pfd)
        except OSError:
            pass  # .pycor is host root's (an unprivileged LXC container): an empty inbox stays
    return work


def summary(work: Replay) -> str:
    """The one line a start logs about what it put in place."""
    line = f"put {len(work.done)} path(s) pushed while it was stopped in place"
    if work.rejected:
        where, why = work.rejected[0]
        line += (f"; {len(work.rejected)} could not go in place ({printable(where, PATH_SHOWN)}: {why}) and are kept in "
                 f"{INBOX}/{REJECTED} ('pycor ls' counts them)")
    return line


def rejected(rootfs_fd: int) -> list[str]:
    """Container paths of what was pushed while stopped and kept aside, sorted (files and empty directories)."""
    try:
        top = linux.open_beneath(rootfs_fd, f"{INBOX}/{REJECTED}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    from .fsutil import walk

    found: list[str] = []
    try:
        for rel, st, parent, name in walk(top, strict=False):
            if "/" not in rel:
                continue  # a batch
            if stat.S_ISDIR(st.st_mode):
                try:
                    fd = os.open(name, _DIR, dir_fd=parent)
                except OSError:
                    continue
                try:
                    if os.listdir(fd):
                        continue
                finally:
                    os.close(fd)
            found.append("/" + rel.split("/", 1)[1])
    finally:
        os.close(top)
    return sorted(found)


def pending(rootfs_fd: int) -> bool:
    """Whether anything pushed while stopped waits for the next start."""
    if beside(rootfs_fd):
        return True
    inbox = open_inbox(rootfs_fd, create=False)
    if inbox is None:
        return False
    try:
        return bool(batches(inbox))
    finally:
        os.close(inbox)


def find_pending(rootfs_fd: int, path: str) -> int | None:
    """An O_RDONLY fd of the newest pending file pushed at exactly path, or None.

    Not yet collected (beside .pycor) is newest, then batches newest first.
    Opened beneath, never following a symlink.
    """
    rel = "/".join(p for p in path.split("/") if p not in ("", "."))
    if not rel or rel.split("/")[0] == PYCOR_DIR or ".." in rel.split("/"):
        return None
    places = [(rootfs_fd, rel)]
    inbox = open_inbox(rootfs_fd, create=False)
    try:
        if inbox is not None:
            places += [(inbox, f"{b}/{rel}") for b in reversed(batches(inbox))]
        for dirfd, where in places:
            try:
                fd = open_regular(linux.open_beneath(dirfd, where, os.O_PATH))
            except OSError:
                continue
            if fd is not None:
                return fd
        return None
    finally:
        if inbox is not None:
            os.close(inbox)
