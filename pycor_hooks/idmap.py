"""Idmapped views of root-owned base layers, for unprivileged containers.

An unprivileged container's root is some host uid (say 100000). Its overlay
needs the base's files to look like root:root from inside, yet the base on
disk stays owned by host root and is never copied or chowned. An *idmapped
view* does that: a read-only clone of the base layer's mount with the
container's idmap attached (``open_tree`` + ``mount_setattr(MOUNT_ATTR_IDMAP)``
+ ``move_mount``). Seen from the host, a file owned by 0 on disk shows as
100000 through the view; seen from the container's user namespace, as 0.

Views are shared: every container with the same idmap uses the same view of
a layer, kept at ``/run/pycor/views/<idmap key>/<layer id>/``.

Hot path: the pre-start hook imports this at every container start (host
namespaces, real root). Please don't import any extra modules here: only os,
ctypes, struct, re, stat, errno and fcntl; python-prctl is imported lazily, once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import PycorError
from .linux import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    CLONE_NEWUSER,
    MNT_DETACH,
    MOUNT_ATTR_IDMAP,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MOVE_MOUNT_F_EMPTY_PATH,
    MS_PRIVATE,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    SIGKILL,
    STATX_ATTR_MOUNT_ROOT,
    UMOUNT_NOFOLLOW,
    mount_setattr,
    move_mount,
    open_tree,
    set_pdeathsig,
    statx_attributes,
    umount2,
    unshare,
)

TYPE_CHECKING = False  # typing costs a start 2 ms, collections 1 ms; type checkers read this as True
if TYPE_CHECKING:
    from collections.abc import Callable

# The builtin module's sha256 skips loading OpenSSL through hashlib (about 3 ms at every start).
try:
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]  # Python <= 3.11; 3.12 renamed it _sha2
except ImportError:  # pragma: no cover
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]  # the name in Python >= 3.12
    except ImportError:
        from hashlib import sha256 as _sha256

ID_MAX = 1 << 32  # ids are u32; (u32)-1 is never a valid id
UID_MAP_EXTENTS_MAX = 340  # kernel limit on lines in uid_map / gid_map

RUN_VIEWS = "/run/pycor/views"
VIEWS_MODE = 0o711  # root; anyone may pass through, nobody may list the idmap keys
KEY_DIR_MODE = 0o710  # root:MAPPED_GID: only the map's own root passes through to its views


# --- the idmap: pure logic ------------------------------------------------------

_IDMAP_KEYS = ("lxc.idmap", "lxc.id_map")  # lxc.id_map is LXC 2's name for the same key


def _parse_idmap_value(value: str) -> tuple[str, int, int, int] | None:
    """'u 0 100000 65536' -> ('u', 0, 100000, 65536), or None (plain string checks: 're' costs a start 3 ms)."""
    fields = value.split()
    if len(fields) != 4 or fields[0] not in ("u", "g") or not all(f.isascii() and f.isdigit() for f in fields[1:]):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


class IdMapEntry(tuple[str, int, int, int]):
    """One lxc.idmap line: kind 'u' or 'g', the first id inside the container's
    user namespace, the host id it maps to, how many consecutive ids.
    (A plain tuple: dataclasses would cost every start 6 ms of imports, collections 1 ms.)"""

    __slots__ = ()

    def __new__(cls, kind: str, nsid: int, hostid: int, range: int) -> "IdMapEntry":  # noqa: A002
        return tuple.__new__(cls, (kind, nsid, hostid, range))

    kind = property(lambda self: self[0])
    nsid = property(lambda self: self[1])
    hostid = property(lambda self: self[2])
    range = property(lambda self: self[3])

    def __repr__(self) -> str:
        return f"IdMapEntry(kind={self.kind!r}, nsid={self.nsid}, hostid={self.hostid}, range={self.range})"

    def line(self) -> str:
        return f"{self.nsid} {self.hostid} {self.range}\n"


class IdMap:
    """A container's lxc.idmap: uid and gid ranges from its namespace to the host. Immutable."""

    __slots__ = ("entries",)
    entries: tuple[IdMapEntry, ...]

    def __init__(self, entries: tuple[IdMapEntry, ...] = ()) -> None:
        object.__setattr__(self, "entries", tuple(entries))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("IdMap is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"IdMap({self.entries!r})"

    @classmethod
    def parse_lxc_config(cls, text: str) -> IdMap:
        """The lxc.idmap lines of an LXC config (or LXD's generated lxc.conf).

        Other keys and comments are ignored. As in LXC, an empty
        ``lxc.idmap =`` clears the lines before it.
        """
        entries: list[IdMapEntry] = []
        for number, raw in enumerate(text.split("\n"), 1):  # LXC's line ends only
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or key.strip() not in _IDMAP_KEYS:
                continue
            value = value.strip()
            if not value:
                entries.clear()
                continue
            m = _parse_idmap_value(value)
            if m is None:
                raise PycorError(
                    f"unreadable idmap line {number}: {raw.strip()!r}",
                    "expected 'lxc.idmap = u|g NSID HOSTID RANGE', e.g. 'lxc.idmap = u 0 100000 65536'",
                )
            entries.append(IdMapEntry(*m))
        return cls(tuple(entries))

    @property
    def is_empty(self) -> bool:
        """No idmap: a privileged container, which needs no idmapped view."""
        return not self.entries

    def _sorted(self, kind: str) -> list[IdMapEntry]:
        return sorted((e for e in self.entries if e.kind == kind), key=lambda e: (e.nsid, e.hostid, e.range))

    def canonical(self) -> str:
        """One line per entry, uids then gids, each sorted: line order in the config does not matter."""
        return "".join(f"{e.kind} {e.line()}" for kind in "ug" for e in self._sorted(kind))

    @property
    def key(self) -> str:
        """16 hex digits naming this map, stable across runs; usable as a directory name."""
        digest: str = _sha256(self.canonical().encode()).hexdigest()
        return digest[:16]

    def root(self) -> tuple[int, int]:
        """Host uid and gid of container root (call check() first)."""
        uid = next(e.hostid for e in self.entries if e.kind == "u" and e.nsid == 0)
        gid = next(e.hostid for e in self.entries if e.kind == "g" and e.nsid == 0)
        return uid, gid

    def host_to_ns(self, kind: str, hostid: int) -> int:
        """The id a host id has inside the container, through every range of the map; unmapped ids stay as they are."""
        for e in self.entries:
            if e.kind == kind and e.hostid <= hostid < e.hostid + e.range:
                return hostid - e.hostid + e.nsid
        return hostid

    def uid_map_text(self) -> str:
        """What goes into /proc/PID/uid_map (written in one write)."""
        return "".join(e.line() for e in self._sorted("u"))

    def gid_map_text(self) -> str:
        return "".join(e.line() for e in self._sorted("g"))

    def check(self) -> IdMap:
        """Raise PycorError unless the map can carry an unprivileged container over a root-owned base."""
        for kind, ids in (("u", "uid"), ("g", "gid")):
            entries = self._sorted(kind)
            if not entries:
                raise PycorError(
                    f"the idmap has no {ids} entries",
                    f"an unprivileged container needs both, e.g. 'lxc.idmap = {kind} 0 100000 65536'",
                )
            if len(entries) > UID_MAP_EXTENTS_MAX:
                raise PycorError(f"the idmap has {len(entries)} {ids} entries", f"the kernel takes at most {UID_MAP_EXTENTS_MAX}")
            for e in entries:
                if e.range <= 0 or e.nsid + e.range > ID_MAX - 1 or e.hostid + e.range > ID_MAX - 1:
                    raise PycorError(
                        f"the idmap entry '{kind} {e.line().strip()}' is out of bounds",
                        "ranges must be at least 1 and stay below 4294967295",
                    )
                if e.hostid == 0:
                    # Covers container root -> host root, and any container id that would be host root.
                    who = "container root" if e.nsid == 0 else f"container {ids} {e.nsid}"
                    raise PycorError(
                        f"an idmap that gives {who} host {ids} 0 is refused ('{kind} {e.line().strip()}')",
                        "privileged containers have no lxc.idmap at all; unprivileged ones map to unused host ids like 100000",
                    )
            for field in ("nsid", "hostid"):
                ordered = sorted(entries, key=lambda e: getattr(e, field))
                for a, b in zip(ordered, ordered[1:]):
                    if getattr(a, field) + a.range > getattr(b, field):
                        side = "container" if field == "nsid" else "host"
                        raise PycorError(
                            f"the idmap entries '{kind} {a.line().strip()}' and '{kind} {b.line().strip()}' overlap on the {side} side",
                            "each id may be mapped only once",
                        )
            if not any(e.nsid == 0 for e in entries):
                raise PycorError(
                    f"the idmap does not map container root ({ids} 0)",
                    "the base is owned by root and must appear as root inside the container",
                )
        return self


# --- a user namespace carrying a map ---------------------------------------------

_set_pdeathsig: Callable[[int], None] | None = None


def _pdeathsig_setter() -> Callable[[int], None]:
    """python-prctl's set_pdeathsig if installed (imported once, in the parent), else ctypes prctl."""
    global _set_pdeathsig
    if _set_pdeathsig is None:
        try:
            import prctl

            _set_pdeathsig = prctl.set_pdeathsig
        except ImportError:

            _set_pdeathsig = set_pdeathsig
    return _set_pdeathsig


def _write_proc_file(path: str, text: str) -> None:
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # The kernel takes a map in exactly one write.
        if os.write(fd, data) != len(data):
            raise OSError(errno.EIO, "short write", path)
    finally:
        os.close(fd)


def write_id_maps(pid: int, idmap: IdMap) -> None:
    """Write uid_map and gid_map of a process that just unshared CLONE_NEWUSER.

    setgroups is left at "allow": the kernel demands "deny" only when the
    writer lacks CAP_SETGID over the parent namespace, and we are real root.
    Keeping "allow" also matches the namespace LXC builds for the container,
    whose root must be able to call setgroups(). (The view's namespace runs
    nothing at all, so for it the choice is moot.)
    """
    _write_proc_file(f"/proc/{pid}/uid_map", idmap.uid_map_text())
    _write_proc_file(f"/proc/{pid}/gid_map", idmap.gid_map_text())


def _userns_child(parent: int, set_pdeathsig: Callable[[int], None], ready_w: int, go_r: int) -> int:
    set_pdeathsig(SIGKILL)
    if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG took hold
        return 1
    err = 0
    try:
        unshare(CLONE_NEWUSER)
    except OSError as e:
        err = e.errno or errno.EINVAL
    os.write(ready_w, err.to_bytes(4, "little"))
    if err:
        return 1
    os.read(go_r, 1)  # EOF when the parent is done with us
    return 0


def userns_fd(idmap: IdMap) -> int:
    """An fd (O_CLOEXEC) for a new user namespace carrying idmap; the caller closes it.

    A helper child unshares CLONE_NEWUSER and waits; we write its maps, open
    /proc/CHILD/ns/user, then let it exit and reap it. The namespace lives on
    as long as the fd (or a mount idmapped with it).
    """
    idmap.check()
    set_pdeathsig = _pdeathsig_setter()
    parent = os.getpid()
    ready_r, ready_w = os.pipe()  # child -> parent: 4 bytes, 0 or unshare's errno
    go_r, go_w = os.pipe()  # parent -> child: closed when the child may exit
    try:
        pid = os.fork()
    except OSError:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        raise
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            code = _userns_child(parent, set_pdeathsig, ready_w, go_r)
        finally:
            os._exit(code)  # never run the parent's Python cleanup (atexit, finally blocks, buffers)
    os.close(ready_w)
    os.close(go_r)
    ok = False
    try:
        msg = os.read(ready_r, 4)
        if len(msg) != 4:
            raise OSError(errno.ECHILD, "the user-namespace helper died before unsharing", f"/proc/{pid}")
        err = int.from_bytes(msg, "little")
        if err:
            raise OSError(err, os.strerror(err), "unshare(CLONE_NEWUSER)")
        write_id_maps(pid, idmap)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        ok = True
    finally:
        if not ok:
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
    return fd


# --- one view ----------------------------------------------------------------------


def is_mounted(path: str, dirfd: int = AT_FDCWD) -> bool:
    """Whether path is the root of a mount (a symlink at path is not followed).

    Uses statx's STATX_ATTR_MOUNT_ROOT (Linux 5.8; idmapped mounts need 5.12
    anyway): unlike comparing st_dev with the parent's, it sees a bind mount
    of a directory of the same filesystem, and unlike /proc/self/mountinfo
    it needs no parsing, no path canonicalisation and costs one syscall.
    """
    try:
        attributes, mask = statx_attributes(dirfd, path)
    except FileNotFoundError:
        return False
    if not mask & STATX_ATTR_MOUNT_ROOT:
        raise OSError(errno.ENOTSUP, "statx does not report STATX_ATTR_MOUNT_ROOT (Linux >= 5.8 needed)", path)
    return bool(attributes & STATX_ATTR_MOUNT_ROOT)


def _attach_view(src: str, to_dfd: int, to_path: str, userns: int) -> None:
    # Not AT_RECURSIVE: a base layer is one directory tree with no submounts,
    # and a submount that appears there by accident must not leak into
    # containers (nor would MOUNT_ATTR_IDMAP apply to it unless recursive too).
    tree = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    try:
        # Read-only: the view is a lower layer and is never written. Private:
        # it neither receives nor sends mount events from the base's mount.
        # nosuid, nodev: run through the view's path on the host, the base's
        # setuid binaries and device nodes give nothing. Inside the container
        # they still work: exec and open go through the overlay's mount, whose
        # flags are the ones checked (tests/test_guard.py runs a setuid binary).
        mount_setattr(tree, "", AT_EMPTY_PATH, MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                      0, userns, MS_PRIVATE)
        # No MOVE_MOUNT_T_SYMLINKS: a symlink at the target is not followed.
        move_mount(tree, "", to_dfd, to_path, MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)  # closing a tree that was never attached unmounts it


def make_view(src: str, dst: str, userns_fd: int) -> None:
    """Mount a read-only view of directory src at dst, idmapped through userns_fd.

    dst is created (mode 0755) if missing. Raises OSError; EINVAL from
    mount_setattr usually means src's filesystem cannot be idmapped.
    """
    try:
        os.mkdir(dst, 0o755)
        os.chmod(dst, 0o755, follow_symlinks=False)  # whatever the umask
    except FileExistsError:
        pass
    _attach_view(src, AT_FDCWD, dst, userns_fd)


def remove_view(dst: str) -> None:
    """Unmount dst (lazily: containers keep their own references) and remove the directory.

    Idempotent: a dst that is not mounted, or missing, is fine.
    """
    for _ in range(16):  # bounded: a stack of mounts at dst is taken off one by one
        if not is_mounted(dst):
            break
        umount2(dst, MNT_DETACH | UMOUNT_NOFOLLOW)
    try:
        os.rmdir(dst)
    except FileNotFoundError:
        pass


# --- the registry of shared views ----------------------------------------------------

_LAYER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HEX = frozenset("0123456789abcdef")


def _is_layer_id(s: str) -> bool:
    return bool(s) and all(c in _LAYER_ID_CHARS for c in s)


def _is_key(s: str) -> bool:
    return len(s) == 16 and all(c in _HEX for c in s)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_layer_id(layer_id: str) -> str:
    if len(layer_id) > 200 or not _is_layer_id(layer_id) or ".." in layer_id or layer_id == ".":
        raise PycorError(
            f"invalid layer id {layer_id!r} for an idmapped view",
            "use letters, digits, '.', '_' or '-' (no '..'), at most 200 characters",
        )
    return layer_id


def view_path(key: str, layer_id: str, root: str = RUN_VIEWS) -> str:
    """Where the view of layer_id for the idmap with this key lives (pre-mount reads it from here)."""
    return os.path.join(root, key, check_layer_id(layer_id))


def _check_private_dir(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise PycorError(
            f"{path} must be owned by root and writable only by root (owner {st.st_uid}, mode {st.st_mode & 0o7777:o})",
            "remove it; pycor recreates it",
        )


def _open_dir(parent_fd: int, name: str, path: str, create: bool) -> tuple[int, bool]:
    """Open (and maybe create, 0755) directory name below parent_fd, never following a symlink."""
    created = False
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PycorError(f"{path} is not a directory (a symlink?)", "views live in real directories only root can write") from e
        raise
    if created:
        os.fchmod(fd, 0o755)
    return fd, created


def _open_root(root: str, create: bool) -> int | None:
    """Walk root from / one component at a time without following symlinks; None if missing and not create."""
    path = os.path.abspath(root)
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for name in path.split("/")[1:]:
            if not name:
                continue
            walked += "/" + name
            try:
                child, _ = _open_dir(fd, name, walked, create)
            except FileNotFoundError:
                return None
            os.close(fd)
            fd = child
        _check_private_dir(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(root_fd: int) -> int:
    fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=root_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _restrict(fd: int, mode: int, gid: int = 0) -> None:
    """Give a root-owned directory this mode and group (fixing what an older pycor made 0755)."""
    st = os.fstat(fd)
    if st.st_gid != gid:
        os.fchown(fd, 0, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def ensure_views(idmap: IdMap, layers: dict[str, str], root: str = RUN_VIEWS,
                 remake_if: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Make sure a view of each layer exists for idmap; return layer id -> view path.

    layers maps a caller-chosen layer id to the layer's directory. Views that
    are already mounted are reused (after checking they show the same
    directory); missing ones are made. A view that shows another directory
    is remade if remake_if(layer id) says nobody uses it, else refused.
    Holds an flock on root/lock. On a failure halfway, whatever this call
    mounted or created is removed again.

    The views' base layers hold setuid-root binaries that, through the view,
    belong to the map's root: root/KEY is root:MAPPED_GID 0710, so no other
    host user reaches them.
    """
    idmap.check()
    for layer_id in layers:
        check_layer_id(layer_id)
    root = os.path.abspath(root)
    key = idmap.key
    root_fd = _open_root(root, create=True)
    assert root_fd is not None
    lock_fd = key_fd = -1
    userns = -1
    key_created = False
    made: list[str] = []  # layer ids mounted by this call
    dirs_made: list[str] = []  # layer dirs created by this call
    ok = False
    try:
        lock_fd = _lock(root_fd)
        _restrict(root_fd, VIEWS_MODE)
        key_fd, key_created = _open_dir(root_fd, key, f"{root}/{key}", create=True)
        _check_private_dir(key_fd, f"{root}/{key}")
        _restrict(key_fd, KEY_DIR_MODE, idmap.root()[1])
        result: dict[str, str] = {}
        for layer_id, src in layers.items():
            dst = f"{root}/{key}/{layer_id}"
            try:
                src_st = os.stat(src)
            except OSError as e:
                raise PycorError(f"cannot make an idmapped view of {src}: {e.strerror}", "is the base intact?") from e
            if is_mounted(layer_id, key_fd):
                if _same_inode(os.stat(layer_id, dir_fd=key_fd, follow_symlinks=False), src_st):
                    result[layer_id] = dst
                    continue
                if remake_if is None or not remake_if(layer_id):
                    raise PycorError(
                        f"the idmapped view {dst} shows another directory than {src}",
                        "layer ids must name one layer for good; stop the containers using it, or run 'pycor doctor'",
                    )
                remove_view(dst)  # left by a container that died without its post-stop
            try:
                os.mkdir(layer_id, 0o755, dir_fd=key_fd)
                dirs_made.append(layer_id)
                os.chmod(layer_id, 0o755, dir_fd=key_fd, follow_symlinks=False)
            except FileExistsError:
                pass  # an empty directory left by a crash: mount on it
            if userns < 0:
                try:
                    userns = userns_fd(idmap)
                except OSError as e:
                    raise PycorError(
                        f"cannot create a user namespace for the idmap: {e.strerror}",
                        "is /proc/sys/user/max_user_namespaces above 0?",
                    ) from e
            try:
                _attach_view(src, key_fd, layer_id, userns)
            except OSError as e:
                hint = "the base's filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs)"
                raise PycorError(f"cannot make an idmapped view of {src} at {dst}: {e.strerror}", hint) from e
            made.append(layer_id)
            result[layer_id] = dst
        ok = True
        return result
    finally:
        if userns >= 0:
            os.close(userns)
        if not ok and key_fd >= 0:
            for layer_id in made:
                try:
                    umount2(f"{root}/{key}/{layer_id}", MNT_DETACH | UMOUNT_NOFOLLOW)
                except OSError:
                    pass
            for layer_id in dirs_made:
                try:
                    os.rmdir(layer_id, dir_fd=key_fd)
                except OSError:
                    pass
            if key_created:
                try:
                    os.rmdir(key, dir_fd=root_fd)
                except OSError:
                    pass
        if key_fd >= 0:
            os.close(key_fd)
        if lock_fd >= 0:
            os.close(lock_fd)  # releases the flock
        os.close(root_fd)


def list_views(root: str = RUN_VIEWS) -> set[tuple[str, str]]:
    """(idmap key, layer id) of every view mounted under root."""
    root_fd = _open_root(root, create=False)
    if root_fd is None:
        return set()
    found: set[tuple[str, str]] = set()
    try:
        for key in os.listdir(root_fd):
            if not _is_key(key):
                continue
            key_fd, _ = _open_dir(root_fd, key, f"{root}/{key}", create=False)
            try:
                found.update((key, layer_id) for layer_id in os.listdir(key_fd) if is_mounted(layer_id, key_fd))
            finally:
                os.close(key_fd)
    finally:
        os.close(root_fd)
    return found


def release_unused(in_use: set[tuple[str, str]], root: str = RUN_VIEWS) -> list[str]:
    """Remove every view under root whose (idmap key, layer id) is not in in_use, and emptied directories.

    Running containers are not disturbed: their overlay holds its own
    reference to a lower layer, and the lazy unmount only takes the view off
    this mount table. Returns the paths removed.
    """
    root = os.path.abspath(root)
    root_fd = _open_root(root, create=False)
    if root_fd is None:
        return []
    removed: list[str] = []
    lock_fd = -1
    try:
        lock_fd = _lock(root_fd)
        for key in sorted(os.listdir(root_fd)):
            if not _is_key(key):
                continue  # the lock, or nothing of ours
            key_fd, _ = _open_dir(root_fd, key, f"{root}/{key}", create=False)
            try:
                for layer_id in sorted(os.listdir(key_fd)):
                    if (key, layer_id) in in_use or not _is_layer_id(layer_id):
                        continue
                    if not stat.S_ISDIR(os.stat(layer_id, dir_fd=key_fd, follow_symlinks=False).st_mode):
                        continue  # not ours: views are directories
                    path = f"{root}/{key}/{layer_id}"
                    remove_view(path)
                    removed.append(path)
                empty = not os.listdir(key_fd)
            finally:
                os.close(key_fd)
            if empty:
                os.rmdir(key, dir_fd=root_fd)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(root_fd)
    return removed


# --- the idmapped mount of a container's own layer -------------------------------------------
#
# A daemon that mounts its containers' rootfs idmapped (Incus by default: lxc.rootfs.options =
# idmap=container) leaves their files unshifted on disk: container root's files belong to host
# root there. pycor's overlay, mounted in the container's user namespace, could then neither write
# upper nor work. So each such start gets one idmapped mount of its whole rootfs directory (upper
# and work must be on one mount for overlayfs), carrying the container's map, under
# /run/pycor/layers/NAME: through it, host root's files are the mapped root's. NAME is the start's
# own (its record key, monitor pid and start time), so a stale start's mount is never a new one's.

RUN_LAYERS = "/run/pycor/layers"


def layer_mount_path(key: str, monitor: tuple[int, int], root: str = RUN_LAYERS) -> str:
    """Where the layer mount of one start lives: ROOT/KEY.MONITOR.STARTTIME."""
    return os.path.join(root, check_layer_id(f"{key}.{monitor[0]}.{monitor[1]}"))


def mount_layer(idmap: IdMap, rootfs_fd: int, rootfs: str, path: str) -> str:
    """Mount the rootfs directory (rootfs_fd) idmapped with idmap at path (layer_mount_path), read-write,
    nosuid, nodev; returns path. A mount already there (the same start's pre-start run again) is replaced.
    On a failure nothing is left mounted."""
    idmap.check()
    root, name = os.path.split(path)
    check_layer_id(name)
    root_fd = _open_root(root, create=True)
    assert root_fd is not None
    userns = -1
    made = False
    try:
        _restrict(root_fd, VIEWS_MODE)  # the mapped root passes through to its own mount; nobody lists them
        if is_mounted(name, root_fd):
            remove_view(path)
        try:
            os.mkdir(name, 0o700, dir_fd=root_fd)
            made = True
        except FileExistsError:
            pass
        try:
            userns = userns_fd(idmap)
            tree = open_tree(rootfs_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)
            try:
                # Not AT_RECURSIVE, as for views. nosuid, nodev: through this path on the host, upper's
                # setuid binaries and device nodes give nothing; inside, the overlay's own flags count.
                mount_setattr(tree, "", AT_EMPTY_PATH, MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                              0, userns, MS_PRIVATE)
                move_mount(tree, "", root_fd, name, MOVE_MOUNT_F_EMPTY_PATH)
            finally:
                os.close(tree)  # closing a tree that was never attached unmounts it
        except OSError as e:
            if made:
                os.rmdir(name, dir_fd=root_fd)
            raise PycorError(f"cannot mount the layer in {rootfs} idmapped at {path}: {e.strerror}",
                             "the container's storage must support idmapped mounts (ext4, xfs, btrfs on Linux 5.19+); "
                             "'pycor doctor' checks them") from e
    finally:
        if userns >= 0:
            os.close(userns)
        os.close(root_fd)
    return path


def remove_layer_mount(path: str, root: str = RUN_LAYERS) -> None:
    """Detach a layer mount and remove its directory (idempotent); a path that is not one is left alone."""
    parent, name = os.path.split(path)
    if parent != root or not _is_layer_id(name) or ".." in name:
        return  # not written by mount_layer: never unmount what a record names elsewhere
    remove_view(path)


def layer_mount_monitor(path: str) -> tuple[int, int] | None:
    """The monitor (pid, start time) a layer mount's name records, or None if it is not such a name."""
    _, _, rest = os.path.basename(path).rpartition("-")
    fields = rest.split(".")
    if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
        return None
    return int(fields[1]), int(fields[2])


def list_layer_mounts(root: str = RUN_LAYERS) -> list[str]:
    """Every layer mount under root (and directory left where one was)."""
    root_fd = _open_root(root, create=False)
    if root_fd is None:
        return []
    try:
        return sorted(f"{root}/{name}" for name in os.listdir(root_fd) if _is_layer_id(name) and ".." not in name
                      and stat.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode))
    finally:
        os.close(root_fd)


def release_layer_mounts(monitor_runs: Callable[[tuple[int, int]], bool], root: str = RUN_LAYERS) -> list[str]:
    """Detach every layer mount under root whose start's monitor no longer runs; returns them.

    Told by the monitor its name records, not by the run records: a start
    between making its mount and recording it keeps it, whatever store it
    runs on, and so does a running container whose record something cleared.
    """
    removed = []
    for path in list_layer_mounts(root):
        monitor = layer_mount_monitor(path)
        if monitor is None or not monitor_runs(monitor):
            try:
                remove_view(path)
            except OSError:
                continue  # 'pycor doctor' lists what is left; the next release tries again
            removed.append(path)
    return removed
