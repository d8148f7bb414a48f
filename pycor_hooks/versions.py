"""Base versions: update through a builder container, squash, gc, commit, reset.

A new version is one layer stacked above its parent (lowerdir order), so the
files it does not change keep their inodes and stay shared in the page cache
by containers on either version. Publishing switches 'current' with one
atomic rename; containers follow it at their next start unless pinned.

Not a hot path: the CLI uses this, never a hook.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import stat
import struct
import subprocess
from collections.abc import Iterator

from . import layer as layers
from . import linux, overlay
from .errors import PycorError
from .fsutil import disk_usage, remove_tree
from .imports import Progress, copy_tree
from .install import LXC_HOOKS_DIR
from .layer import LayerMeta
from .store import Store, Version

OPAQUE = b"y"
SQUASH_ADVISED_DEPTH = 32  # benchmarks/stack_depth.py: cold lookups 1.8x one layer at 32, 2.6x at 64


# -- turning an upper directory into a lower layer -----------------------------------


def _shift(value: int, base: int, count: int) -> int:
    return value - base if base <= value < base + count else value


def _shift_caps(raw: bytes, uid_base: int, uid_count: int) -> bytes:
    """A v3 file capability names the namespace root's host uid; move it like the owners."""
    if len(raw) == 24 and struct.unpack_from("<I", raw)[0] >> 24 == 3:
        rootid = struct.unpack_from("<I", raw, 20)[0]
        return raw[:20] + struct.pack("<I", _shift(rootid, uid_base, uid_count))
    return raw


def normalize_layer(root: str, uid_shift: tuple[int, int] | None = None, gid_shift: tuple[int, int] | None = None) -> None:
    """Make an upper directory fit to be a lower layer for every kind of overlay mount.

    - an opaque directory carries both trusted.overlay.opaque (read by
      privileged mounts) and user.overlay.opaque (read by userxattr mounts
      inside user namespaces);
    - other overlay xattrs (origin, impure, redirect...) are dropped: they
      describe the old upper, not this layer;
    - with a shift, ids of an unprivileged container's layer (host id
      BASE+n) become what the container saw (n), keeping setuid bits and
      file capabilities that chown would clear.
    Never follows a symlink.
    """
    _normalize_entry(root, uid_shift, gid_shift)
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk never descends into a symlink
        for name in dirnames + filenames:
            _normalize_entry(os.path.join(dirpath, name), uid_shift, gid_shift)


def _normalize_entry(path: str, uid_shift: tuple[int, int] | None, gid_shift: tuple[int, int] | None) -> None:
    st = os.lstat(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    is_link = stat.S_ISLNK(st.st_mode)
    if not is_link:
        names = os.listxattr(path, follow_symlinks=False)
        opaque = is_dir and overlay.is_opaque(path)
        for name in names:
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                os.removexattr(path, name, follow_symlinks=False)
        if opaque:
            for name in overlay.OPAQUE_XATTRS:
                os.setxattr(path, name, OPAQUE, follow_symlinks=False)
    if uid_shift or gid_shift:
        uid = _shift(st.st_uid, *uid_shift) if uid_shift else st.st_uid
        gid = _shift(st.st_gid, *gid_shift) if gid_shift else st.st_gid
        if (uid, gid) != (st.st_uid, st.st_gid):
            caps = None
            if stat.S_ISREG(st.st_mode):
                with contextlib.suppress(OSError):
                    caps = os.getxattr(path, "security.capability", follow_symlinks=False)
            os.chown(path, uid, gid, follow_symlinks=False)
            if not is_link:
                os.chmod(path, stat.S_IMODE(st.st_mode))  # chown cleared setuid and setgid
            if caps is not None:
                os.setxattr(path, "security.capability", _shift_caps(caps, *(uid_shift or (0, 0))), follow_symlinks=False)


# -- read-only merged views ---------------------------------------------------------------


@contextlib.contextmanager
def merged_view(lowerdirs: list[str], at: str, userxattr: bool = False) -> Iterator[str]:
    """Mount a read-only overlay of lowerdirs (top first) at a fresh directory; unmount on exit."""
    os.mkdir(at, 0o700)
    try:
        if len(lowerdirs) == 1:  # overlayfs wants two layers when it has no upper: a read-only bind is the same view
            linux.mount(lowerdirs[0], at, None, linux.MS_BIND)
            linux.mount("none", at, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
        else:
            opts = "lowerdir=" + ":".join(overlay.escape(p) for p in lowerdirs)
            linux.mount("overlay", at, "overlay", linux.MS_RDONLY, opts + (",userxattr" if userxattr else ""))
        try:
            yield at
        finally:
            linux.umount2(at, linux.MNT_DETACH)
    finally:
        os.rmdir(at)


# -- update -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _base_update_lock(store: Store, base: str) -> Iterator[None]:
    """One update, squash or commit of a base at a time (container starts are not blocked)."""
    fd = os.open(os.path.join(store.base_dir(base), "update.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PycorError(f"base {base!r} is being changed by another pycor command", "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _lower_has_file(stack: list[str], rel: str) -> bool:
    """Whether the topmost layer holding rel has a regular file there (no symlink followed)."""
    for top in stack:
        dirfd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = linux.open_beneath(dirfd, rel, os.O_PATH)
        except FileNotFoundError:
            continue
        except OSError:
            return False  # a symlink on the way: not a plain file
        finally:
            os.close(dirfd)
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    return False


def builder_config(store: Store, base: str, rootfs: str, stack: list[str]) -> str:
    from .template import LXC_CONFIG_DIR, hook_lines

    lines = [
        f"lxc.rootfs.path = dir:{rootfs}",
        f"lxc.include = {os.path.join(LXC_CONFIG_DIR, 'common.conf')}",
        "lxc.net.0.type = none",  # the host's network, for apt-get and the like
        "lxc.uts.name = pycor-builder",
        *hook_lines(LXC_HOOKS_DIR, store),
        *store.base(base).lxc,
    ]
    if _lower_has_file(stack, "etc/resolv.conf"):
        lines.append("lxc.mount.entry = /etc/resolv.conf etc/resolv.conf none bind,ro 0 0")
    return "\n".join(lines) + "\n"


def update_base(store: Store, base: str, argv: list[str], progress: Progress | None = None) -> Version | None:
    """Run argv as root in a throwaway builder container on the current version; publish what it changed.

    Returns the new version, or None when the command changed nothing. A
    failing command publishes nothing and leaves 'current' as it was.
    """
    if not argv:
        raise PycorError("no command to run", f"e.g. pycor base update {base} -- apt-get -y upgrade")
    store.require(base)
    with _base_update_lock(store, base):
        current = store.current(base)
        stack = store.lower_stack(base, current)
        staging = store.new_staging(f"{base}.update")
        try:
            lxcpath = os.path.join(staging, "lxc")
            rootfs = os.path.join(lxcpath, "builder", "rootfs")
            os.makedirs(rootfs, mode=0o755)
            os.chmod(staging, 0o755)
            layers.create_layer(rootfs, LayerMeta(base, current))
            with open(os.path.join(lxcpath, "builder", "config"), "w", encoding="utf-8") as f:
                f.write(builder_config(store, base, rootfs, stack))
            proc = subprocess.run(["lxc-execute", "-n", "builder", "-P", lxcpath, "--", *argv], stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise PycorError(
                    f"the update command exited with status {proc.returncode}: no new version, base {base} stays at version {current}",
                    "fix the command and run 'pycor base update' again",
                )
            upper = os.path.join(rootfs, layers.UPPER)
            if not os.listdir(upper):
                remove_tree(staging)
                return None
            normalize_layer(upper)
            os.rename(upper, os.path.join(staging, "rootfs"))
            remove_tree(lxcpath)
            return store.publish_version(base, staging, current, f"update: {shlex.join(argv)}", disk_usage(os.path.join(staging, "rootfs")))
        except BaseException:
            if os.path.lexists(staging):
                remove_tree(staging)
            raise


def squash_base(store: Store, base: str, progress: Progress | None = None) -> Version:
    """Fold the current version's stack into one layer, published as a new version without parent."""
    store.require(base)
    with _base_update_lock(store, base):
        current = store.current(base)
        stack = store.lower_stack(base, current)
        if len(stack) == 1:
            raise PycorError(f"base {base} version {current} is already one layer", "nothing to squash")
        staging = store.new_staging(f"{base}.squash")
        try:
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs)
            with merged_view(stack, os.path.join(staging, "merged")) as merged:
                copy_tree(merged, rootfs, progress or Progress())
            return store.publish_version(base, staging, None, f"squash of version {current} ({len(stack)} layers)", disk_usage(rootfs))
        except BaseException:
            if os.path.lexists(staging):
                remove_tree(staging)
            raise


def commit(store: Store, rootfs: str, idmap_text: str | None, as_base: str | None, to_base: str | None,
           progress: Progress | None = None) -> Version:
    """Publish a stopped container's view (its base version plus its layer) as a base or a base version.

    With --to the container's own base at its current version, the container's
    layer becomes one more layer on top (cheap, shares every base inode);
    otherwise the merged view is copied into one layer.
    """
    from .idmap import IdMap

    fd = layers.open_rootfs(rootfs)
    try:
        meta = layers.read_meta(fd, rootfs)
        for sub in layers.open_layer_dirs(fd, rootfs):
            os.close(sub)
    finally:
        os.close(fd)
    store.require(meta.base)
    version = meta.pin or store.current(meta.base)
    stack = store.lower_stack(meta.base, version)
    upper = os.path.join(rootfs, layers.UPPER)
    idmap = IdMap.parse_lxc_config(idmap_text or "")
    uid_shift = gid_shift = None
    if not idmap.is_empty:
        idmap.check()
        uid = next(e for e in idmap.entries if e.kind == "u" and e.nsid == 0)
        gid = next(e for e in idmap.entries if e.kind == "g" and e.nsid == 0)
        uid_shift, gid_shift = (uid.hostid, uid.range), (gid.hostid, gid.range)
    target = as_base or to_base
    assert target is not None
    if as_base and store.exists(as_base):
        raise PycorError(f"base {as_base!r} already exists", f"use --to {as_base} to add a version to it, or pick a new name")
    if to_base:
        store.require(to_base)
    staging = store.new_staging(f"{target}.commit")
    try:
        new = os.path.join(staging, "rootfs")
        os.mkdir(new)
        on_top = to_base == meta.base and version == store.current(to_base)
        if on_top:
            copy_tree(upper, new, progress or Progress())
        else:
            with merged_view([upper, *stack], os.path.join(staging, "merged"), userxattr=uid_shift is not None) as merged:
                copy_tree(merged, new, progress or Progress())
        normalize_layer(new, uid_shift, gid_shift)
        source = f"commit of {rootfs}"
        if as_base:
            return store.publish_base(as_base, staging, source, disk_usage(new), store.base(meta.base).lxc)
        return store.publish_version(to_base, staging, version if on_top else None, source, disk_usage(new))  # type: ignore[arg-type]
    except BaseException:
        if os.path.lexists(staging):
            remove_tree(staging)
        raise


# -- garbage collection and reset ----------------------------------------------------------------


def versions_in_use(store: Store, base: str, used: set[str]) -> set[str]:
    """current, the versions containers use, and every version below them in their stacks."""
    keep: set[str] = set()
    for version in {store.current(base)} | used:
        current: str | None = version
        while current is not None and current not in keep:
            keep.add(current)
            current = store.version(base, current).parent
    return keep


def gc(store: Store, used: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Remove versions neither current nor used (used: base -> versions containers use). Returns what went."""
    removed = []
    with store.lock():
        for base in store.base_names():
            keep = versions_in_use(store, base, used.get(base, set()))
            for v in store.versions(base):
                if v.version not in keep:
                    doomed = os.path.join(store.base_dir(base), "versions", f".{v.version}.rm")
                    os.rename(os.path.dirname(v.rootfs), doomed)
                    removed.append((base, v.version))
    for base, version in removed:
        remove_tree(os.path.join(store.base_dir(base), "versions", f".{version}.rm"))
    _remove_stale_staging(store)
    return removed


def _remove_stale_staging(store: Store) -> None:
    """Staging directories of pycor commands that are no longer running (label.PID.NS)."""
    try:
        entries = os.listdir(store.staging_dir)
    except FileNotFoundError:
        return
    for entry in entries:
        parts = entry.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            remove_tree(os.path.join(store.staging_dir, entry))


def reset(rootfs: str) -> None:
    """Discard a stopped container's changes: empty upper and work, same owners and modes."""
    fd = layers.open_rootfs(rootfs)
    try:
        layers.read_meta(fd, rootfs)
        for sub in layers.open_layer_dirs(fd, rootfs):
            os.close(sub)
    finally:
        os.close(fd)
    for rel in (layers.UPPER, layers.WORK):
        path = os.path.join(rootfs, rel)
        st = os.lstat(path)
        fresh = f"{path}.reset{os.getpid()}"
        os.mkdir(fresh, stat.S_IMODE(st.st_mode))
        os.chown(fresh, st.st_uid, st.st_gid, follow_symlinks=False)
        os.chmod(fresh, stat.S_IMODE(st.st_mode))
        old = f"{path}.old{os.getpid()}"
        os.rename(path, old)
        os.rename(fresh, path)
        remove_tree(old)
