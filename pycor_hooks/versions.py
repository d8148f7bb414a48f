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
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator

from . import builder
from . import layer as layers
from . import linux, overlay
from .errors import PycorError
from .fsutil import disk_usage, remove_tree, walk
from .idmap import IdMap
from .imports import Progress, copy_tree, discard_staging
from .layer import LayerMeta
from .overlay import merged_view
from .store import Store, Version

OPAQUE = b"y"
SQUASH_ADVISED_DEPTH = 32  # benchmarks/stack_depth.py: cold lookups 1.8x one layer at 32, 2.6x at 64


# -- turning an upper directory into a lower layer -----------------------------------


def _shift_caps(raw: bytes, idmap: IdMap) -> bytes:
    """A v3 file capability names the namespace root's host uid; move it like the owners."""
    if len(raw) == 24 and struct.unpack_from("<I", raw)[0] >> 24 == 3:
        rootid = struct.unpack_from("<I", raw, 20)[0]
        return raw[:20] + struct.pack("<I", idmap.host_to_ns("u", rootid))
    return raw


def normalize_layer(root: str | int, idmap: IdMap | None = None) -> None:
    """Make an upper directory fit to be a lower layer for every kind of overlay mount.

    - an opaque directory carries both trusted.overlay.opaque (read by
      privileged mounts) and user.overlay.opaque (read by userxattr mounts
      inside user namespaces);
    - other overlay xattrs (origin, impure, redirect...) are dropped: they
      describe the old upper, not this layer;
    - with the idmap of an unprivileged container, host ids become what the
      container saw, through every range of its map, keeping setuid bits and
      file capabilities that chown would clear.
    Works through directory fds; never follows a symlink.
    """
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(root, str) else os.dup(root)
    try:
        _normalize_entry(top, ".", os.fstat(top), idmap)
        for _, st, parent, name in walk(top):
            _normalize_entry(parent, name, st, idmap)
    finally:
        os.close(top)


def _normalize_entry(parent: int, name: str, st: os.stat_result, idmap: IdMap | None) -> None:
    is_dir, is_reg = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
    caps = None
    if is_dir or is_reg:  # overlay xattrs live on directories and files; whiteouts and links carry none
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else 0)
        fd = os.open(name, flags, dir_fd=parent)
        try:
            opaque = is_dir and overlay.is_opaque(fd)
            for attr in os.listxattr(fd):
                if attr.startswith(("trusted.overlay.", "user.overlay.")):
                    os.removexattr(fd, attr)
            if opaque:
                for attr in overlay.OPAQUE_XATTRS:
                    os.setxattr(fd, attr, OPAQUE)
            if idmap is not None and is_reg:
                with contextlib.suppress(OSError):
                    caps = os.getxattr(fd, "security.capability")
        finally:
            os.close(fd)
    if idmap is None:
        return
    uid, gid = idmap.host_to_ns("u", st.st_uid), idmap.host_to_ns("g", st.st_gid)
    if (uid, gid) == (st.st_uid, st.st_gid):
        return
    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent)  # chown cleared setuid and setgid
    if caps is not None:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.setxattr(fd, "security.capability", _shift_caps(caps, idmap))
        finally:
            os.close(fd)


# -- update -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _staging(store: Store, label: str) -> Iterator[str]:
    """A staging directory, removed on the way out unless it was published (renamed into the store)."""
    path = store.new_staging(label)
    try:
        yield path
    finally:
        discard_staging(path)  # unmounts anything left below it first


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


def update_base(store: Store, base: str, argv: list[str], progress: Progress | None = None,
                keep_apt_lists: bool = False) -> Version | None:
    """Run argv as root in a throwaway builder container on the current version; publish what it changed.

    Returns the new version, or None when the command changed nothing. A
    failing command publishes nothing and leaves 'current' as it was.
    """
    if not argv:
        raise PycorError("no command to run", f"e.g. pycor base update {base} -- apt-get -y upgrade")
    store.require(base)
    with _base_update_lock(store, base):
        builder.require_no_edit(store, base)
        current = store.current(base)
        stack = store.lower_stack(base, current)
        with _staging(store, f"{base}.update") as staging:
            lxcpath = builder.prepare(store, base, staging, current, stack)
            rc = builder.execute(lxcpath, argv)
            if rc != 0:
                raise PycorError(
                    f"the update command exited with status {rc}: no new version, base {base} stays at version {current}",
                    "fix the command and run 'pycor base update' again",
                )
            return _publish_builder(store, base, staging, lxcpath, current, stack, f"update: {shlex.join(argv)}", keep_apt_lists)


def _publish_builder(store: Store, base: str, staging: str, lxcpath: str, version: str, stack: list[str],
                     source: str, keep_apt_lists: bool) -> Version | None:
    """The builder's upper, made lean and normalised, published as the next version (None if nothing changed)."""
    upper = os.path.join(lxcpath, builder.BUILDER, "rootfs", layers.UPPER)
    if not builder.finish_layer(upper, stack, keep_apt_lists):
        return None
    normalize_layer(upper)
    os.rename(upper, os.path.join(staging, "rootfs"))
    remove_tree(lxcpath)
    return store.publish_version(base, staging, version, source, disk_usage(os.path.join(staging, "rootfs")),
                                 expected_current=version)


SHELL = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"]


def shell_base(store: Store, base: str, discard: bool = False, keep_apt_lists: bool = False) -> Version | None:
    """An interactive shell in a builder on the current version: publish on exit status 0, discard otherwise."""
    store.require(base)
    with _base_update_lock(store, base):
        builder.require_no_edit(store, base)
        current = store.current(base)
        stack = store.lower_stack(base, current)
        with _staging(store, f"{base}.shell") as staging:
            lxcpath = builder.prepare(store, base, staging, current, stack)
            rc = builder.execute(lxcpath, SHELL, interactive=True)
            if rc != 0 or discard:
                why = "asked to discard" if discard else f"the shell exited with status {rc}"
                raise PycorError(f"{why}: nothing published, base {base} stays at version {current}",
                                 "exit the shell with status 0 to publish what you changed")
            return _publish_builder(store, base, staging, lxcpath, current, stack, "shell", keep_apt_lists)


def edit_base(store: Store, base: str) -> str:
    """Start a builder on the current version that stays running until publish_edit or discard_edit; returns its lxcpath."""
    store.require(base)
    with _base_update_lock(store, base):
        builder.require_no_edit(store, base)
        current = store.current(base)
        stack = store.lower_stack(base, current)
        staging = store.new_staging(f"{base}.edit")
        try:
            lxcpath = builder.prepare(store, base, staging, current, stack)
            builder.start_detached(lxcpath)
            builder.save_edit(store, base, staging, current)
        except BaseException:
            builder.stop(os.path.join(staging, "lxc"))
            discard_staging(staging)
            raise
        return lxcpath


def publish_edit(store: Store, base: str, keep_apt_lists: bool = False) -> Version | None:
    """Stop the edit session's builder and publish what it changed; the session ends either way but a failure to publish."""
    store.require(base)
    with _base_update_lock(store, base):
        staging, version = builder.edit_staging(store, base)
        lxcpath = os.path.join(staging, "lxc")
        builder.stop(lxcpath)
        stack = store.lower_stack(base, version)
        published = _publish_builder(store, base, staging, lxcpath, version, stack, "edit", keep_apt_lists)
        builder.end_edit(store, base)
        if published is None:
            discard_staging(staging)
        return published


def discard_edit(store: Store, base: str) -> None:
    store.require(base)
    with _base_update_lock(store, base):
        staging, _ = builder.edit_staging(store, base)
        builder.stop(os.path.join(staging, "lxc"))
        discard_staging(staging)
        builder.end_edit(store, base)


def squash_base(store: Store, base: str, progress: Progress | None = None) -> Version:
    """Fold the current version's stack into one layer, published as a new version without parent."""
    store.require(base)
    with _base_update_lock(store, base):
        builder.require_no_edit(store, base)
        current = store.current(base)
        stack = store.lower_stack(base, current)
        if len(stack) == 1:
            raise PycorError(f"base {base} version {current} is already one layer", "nothing to squash")
        with _staging(store, f"{base}.squash") as staging:
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs)
            with merged_view(stack, os.path.join(staging, "merged")) as merged:
                copy_tree(merged, rootfs, progress or Progress())
            return store.publish_version(base, staging, None, f"squash of version {current} ({len(stack)} layers)",
                                         disk_usage(rootfs), expected_current=current)


def commit(store: Store, rootfs: str, idmap_text: str | None, as_base: str | None, to_base: str | None,
           progress: Progress | None = None) -> Version:
    """Publish a stopped container's view (its base version plus its layer) as a base or a base version.

    With --to the container's own base at its current version, the container's
    layer becomes one more layer on top (cheap, shares every base inode);
    otherwise the merged view is copied into one layer. The layer is read
    through the fds checked when it was opened, never by path.
    """
    target = as_base or to_base
    assert target is not None
    idmap = IdMap.parse_lxc_config(idmap_text or "")
    idmap = None if idmap.is_empty else idmap.check()
    with layers.OpenLayer(rootfs) as lay:
        meta = lay.meta
        store.require(meta.base)
        if as_base and store.exists(as_base):
            raise PycorError(f"base {as_base!r} already exists", f"use --to {as_base} to add a version to it, or pick a new name")
        if to_base:
            store.require(to_base)
        with _base_update_lock(store, to_base) if to_base else contextlib.nullcontext():
            if to_base:
                builder.require_no_edit(store, to_base)
            version = meta.pin or store.current(meta.base)
            stack = store.lower_stack(meta.base, version)
            on_top = to_base == meta.base and version == store.current(to_base)
            with _staging(store, f"{target}.commit") as staging:
                new = os.path.join(staging, "rootfs")
                os.mkdir(new)
                if on_top:
                    copy_tree(lay.upper, new, progress or Progress())
                else:
                    with merged_view([lay.upper, *stack], os.path.join(staging, "merged"), userxattr=idmap is not None) as merged:
                        copy_tree(merged, new, progress or Progress())
                normalize_layer(new, idmap)
                source = f"commit of {rootfs}"
                if as_base:
                    return store.publish_base(as_base, staging, source, disk_usage(new), store.base(meta.base).lxc)
                return store.publish_version(target, staging, version if on_top else None, source, disk_usage(new),
                                             expected_current=store.current(target))


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


def gc(store: Store, used: Callable[[], dict[str, set[str]]]) -> list[tuple[str, str]]:
    """Remove versions neither current nor used; returns what went.

    used() lists, per base, the versions containers use (running, pinned).
    It is called under the store's exclusive lock, so no container can start
    on a version between the count and the removal.
    """
    removed = []
    with store.lock():
        in_use = used()
        for base in store.base_names():
            keep = versions_in_use(store, base, in_use.get(base, set()))
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
            discard_staging(os.path.join(store.staging_dir, entry))


def reset(rootfs: str) -> None:
    """Discard a stopped container's changes: fresh upper and work, same owners and modes.

    Everything happens relative to the checked .pycor directory's fd.
    """
    with layers.OpenLayer(rootfs) as lay:
        dfd = linux.open_beneath(lay.rootfs_fd, layers.PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, fd in (("upper", lay.upper_fd), ("work", lay.work_fd)):
                st = os.fstat(fd)
                fresh, old = f"{name}.reset{os.getpid()}", f"{name}.old{os.getpid()}"
                os.mkdir(fresh, 0o700, dir_fd=dfd)
                os.chown(fresh, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                os.chmod(fresh, stat.S_IMODE(st.st_mode), dir_fd=dfd)
                os.rename(name, old, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.rename(fresh, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                shutil.rmtree(old, dir_fd=dfd)
        finally:
            os.close(dfd)
