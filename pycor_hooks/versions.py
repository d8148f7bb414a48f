"""Base versions: update through a builder container, squash, gc, commit, reset, verify.

A new version is one layer stacked above its parent (lowerdir order), so the
files it does not change keep their inodes and stay shared in the page cache
by containers on either version. Publishing switches 'current' with one
atomic rename; containers follow it at their next start unless pinned.

Not a hot path: the CLI uses this, never a hook.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from . import builder, digest, faults, linux, overlay
from . import layer as layers
from .errors import Damaged, PycorError
from .flatjson import read_json
from .fsutil import disk_usage, remove_tree, walk
from .idmap import IdMap
from .lxcconfig import base_lines
from .overlay import merged_view
from .proc import Progress
from .staging import stop_builders
from .store import Store, Version
from .tario import copy_tree

if TYPE_CHECKING:
    from .driver import StoppedLayer

OPAQUE = b"y"
SQUASH_ADVISED_DEPTH = 32  # benchmarks/stack_depth.py: cold lookups 1.8x one layer at 32, 2.6x at 64


# -- turning an upper directory into a lower layer -----------------------------------


def _shift_caps(raw: bytes, idmap: IdMap) -> bytes:
    """A v3 file capability names the namespace root's host uid; move it like the owners."""
    if len(raw) == 24 and struct.unpack_from("<I", raw)[0] >> 24 == 3:
        rootid = struct.unpack_from("<I", raw, 20)[0]
        return raw[:20] + struct.pack("<I", idmap.host_to_ns("u", rootid))
    return raw


def normalize_layer(root: str | int, idmap: IdMap | None = None, *, userxattr: bool) -> None:
    """Make an upper directory fit to be a lower layer for every kind of overlay mount.

    - a directory the overlay that wrote root marked opaque (in the namespace
      userxattr names: see overlay.is_opaque) carries both trusted.overlay.opaque
      (read by privileged mounts) and user.overlay.opaque (read by userxattr
      mounts inside user namespaces); a mark of the other namespace, copied up
      from a base layer as a plain xattr, goes with the rest;
    - other overlay xattrs (origin, impure, redirect...) are dropped: they
      describe the old upper, not this layer;
    - with the idmap of an unprivileged container, host ids become what the
      container saw, through every range of its map, keeping setuid bits and
      file capabilities that chown would clear.
    Works through directory fds; never follows a symlink.
    """
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(root, str) else os.dup(root)
    try:
        _normalize_entry(top, ".", os.fstat(top), idmap, userxattr)
        for _, st, parent, name in walk(top):
            _normalize_entry(parent, name, st, idmap, userxattr)
    finally:
        os.close(top)


def _normalize_entry(parent: int, name: str, st: os.stat_result, idmap: IdMap | None, userxattr: bool) -> None:
    is_dir, is_reg = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
    caps = None
    if is_dir or is_reg:  # overlay xattrs live on directories and files; whiteouts and links carry none
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else 0)
        fd = os.open(name, flags, dir_fd=parent)
        try:
            opaque = is_dir and overlay.is_opaque(fd, userxattr)
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
def _builder_on_current(store: Store, base: str, label: str) -> Iterator[tuple[str, list[str], str, str]]:
    """(current version, its lower stack, staging, builder lxcpath): a throwaway builder on the
    current version, under the base's update lock, with no edit session open; removed on the way out."""
    store.require(base)
    with _base_update_lock(store, base):
        builder.require_no_edit(store, base)
        current = store.current(base)
        stack = store.lower_stack(base, current)
        with store.staging(f"{base}.{label}") as staging:
            yield current, stack, staging, builder.prepare(store, base, staging, current, stack)


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
        raise PycorError("no command to run", f"e.g. pycor base update {base} -- sh -c 'apt-get update && apt-get -y upgrade'")
    with _builder_on_current(store, base, "update") as (current, stack, staging, lxcpath):
        proc = subprocess.Popen(["lxc-execute", "-n", builder.BUILDER, "-P", lxcpath, "--", *argv], stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            faults.point("update.builder")  # killed here, the builder goes on running the command
            assert proc.stderr is not None
            unreached = builder.relay_stderr(proc.stderr)
            proc.wait()
        finally:
            if proc.poll() is None:
                stop_builders(staging)
                proc.wait()
        faults.point("update.built")
        rc = proc.returncode
        if rc != 0 or unreached:
            why = (f"the update command exited with status {rc}{'; apt could not fetch ' if unreached else ''}" if rc != 0 else
                   "apt in the builder could not fetch ")
            raise PycorError(
                f"{why}{', '.join(unreached)}: no new version, base {base} stays at version {current}",
                "fix the command and run 'pycor base update' again" if not unreached else
                "the builder uses the host's network and name servers (/etc/resolv.conf): make every source in the base's "
                "/etc/apt reachable from the host, or remove the one it cannot reach in the command; then run 'pycor base update' again",
            )
        return _publish_builder(store, base, staging, lxcpath, current, stack, f"update: {shlex.join(argv)}", keep_apt_lists)


def _publish_builder(store: Store, base: str, staging: str, lxcpath: str, version: str, stack: list[str],
                     source: str, keep_apt_lists: bool) -> Version | None:
    """The builder's upper, made lean and normalised, published as the next version (None if nothing changed)."""
    upper = os.path.join(lxcpath, builder.BUILDER, "rootfs", layers.UPPER)
    if not builder.finish_layer(upper, stack, keep_apt_lists, staging):
        return None
    normalize_layer(upper, userxattr=False)  # a builder is a privileged container
    os.rename(upper, os.path.join(staging, "rootfs"))
    remove_tree(lxcpath)
    faults.point("update.staged")
    return store.publish_version(base, staging, version, source, disk_usage(os.path.join(staging, "rootfs")),
                                 expected_current=version)


SHELL = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"]


def shell_base(store: Store, base: str, discard: bool = False, keep_apt_lists: bool = False) -> Version | None:
    """An interactive shell in a builder on the current version: publish on exit status 0, discard otherwise."""
    with _builder_on_current(store, base, "shell") as (current, stack, staging, lxcpath):
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
            store.end_staging(staging)
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
        store.end_staging(staging)  # removes what is left if nothing was published
        return published


def discard_edit(store: Store, base: str) -> None:
    store.require(base)
    with _base_update_lock(store, base):
        staging, _ = builder.edit_staging(store, base)
        builder.stop(os.path.join(staging, "lxc"))
        store.end_staging(staging)
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
        with store.staging(f"{base}.squash") as staging:
            rootfs = os.path.join(staging, "rootfs")
            os.mkdir(rootfs)
            with merged_view(stack, os.path.join(staging, "merged")) as merged:
                faults.point("squash.mounted")
                copy_tree(merged, rootfs, progress or Progress())
            faults.point("squash.staged")
            return store.publish_version(base, staging, None, f"squash of version {current} ({len(stack)} layers)",
                                         disk_usage(rootfs), expected_current=current)


def commit(store: Store, held: StoppedLayer, idmap_text: str | None, as_base: str | None, to_base: str | None,
           progress: Progress | None = None, shifted: bool = True) -> Version:
    """Publish a stopped container's view (its base version plus its layer) as a base or a base version.

    With --to the container's own base at its current version, the container's
    layer becomes one more layer on top (cheap, shares every base inode);
    otherwise the merged view is copied into one layer. The layer is read
    through the fds checked when it was opened, never by path. Changes made
    on another version than the one they would be published over are
    refused: the shared databases of the versions in between would be lost
    (they move through reconciliation only: 'pycor rebase').
    shifted False: an unprivileged container's layer holds its ids unshifted (a daemon's idmapped rootfs),
    written with userxattr all the same.
    """
    target = as_base or to_base
    assert target is not None
    parsed = IdMap.parse_lxc_config(idmap_text or "")
    idmap = None if parsed.is_empty else parsed.check()
    lay, rootfs = held.layer, held.rootfs
    from .ovlxattr import settle

    namespace = settle(lay, None, f"container layer {rootfs}")  # the one its own mount reads
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
        if meta.based_on and meta.based_on != version:
            raise PycorError(
                f"container {held.shown}: its changes were made on base {meta.base} version {meta.based_on}, not on "
                f"version {version} they would be committed over: what versions after {meta.based_on} added to its "
                "shared databases (/etc/passwd, dpkg's status...) would be lost",
                f"move its changes first: 'pycor rebase {held.shown}' (or start it once), then commit",
            )
        stack = store.lower_stack(meta.base, version)
        on_top = to_base == meta.base and version == store.current(to_base)
        with store.staging(f"{target}.commit") as staging:
            new = os.path.join(staging, "rootfs")
            os.mkdir(new)
            # the namespace the container's own mount reads (layer.json records it), else its mode's
            userxattr = namespace == "user" if namespace else idmap is not None
            if on_top:
                copy_tree(lay.upper, new, progress or Progress())
            else:
                with merged_view([lay.upper, *stack], os.path.join(staging, "merged"), userxattr=userxattr) as merged:
                    faults.point("commit.mounted")
                    copy_tree(merged, new, progress or Progress())
            # the overlay xattrs that count: those of the container's upper (on top), or none through
            # the merged view (it hides its own namespace's; the other's are base layers' plain copies)
            normalize_layer(new, idmap if shifted else None, userxattr=userxattr)
            faults.point("commit.staged")
            source = f"commit of {rootfs}"
            if as_base:
                return store.publish_base(as_base, staging, source, disk_usage(new), store.base(meta.base).lxc)
            return store.publish_version(target, staging, version if on_top else None, source, disk_usage(new),
                                         expected_current=store.current(target))


# -- verify: a version against its recorded manifests and digest chain ------------------------------------


class Finding:
    def __init__(self, version: str, problem: str) -> None:
        self.version, self.problem = version, problem


class Verified:
    """What verify() found, and what it covered: the layers of the stack, and the base's LXC lines when the
    digest covers them (lxc_covered False: a first version recorded before digests covered them)."""

    def __init__(self, version: str, digest: str, findings: list[Finding], layers: int, lxc: list[str],
                 lxc_covered: bool) -> None:
        self.version, self.digest, self.findings = version, digest, findings
        self.layers, self.lxc, self.lxc_covered = layers, lxc, lxc_covered


def verify(store: Store, name: str, version: str | None = None) -> Verified:
    """Recompute every layer of a version's stack against its recorded manifest and the digest chain, and the
    base's LXC lines (base.json) against what its first version's digest covers.

    A layer with no recorded manifest (published before digests) gets one now.
    """
    store.require(name)
    top = version or store.current(name)
    stack: list[Version] = []
    current: str | None = top
    while current is not None:
        if len(stack) > 1000 or any(v.version == current for v in stack):
            raise Damaged(f"base {name!r}: the parents of version {top} loop", "the store is damaged; import the base again")
        v = store.version(name, current)
        stack.append(v)
        current = v.parent
    raw = read_json(os.path.join(store.base_dir(name), "base.json")).get("lxc")
    lxc, refused = base_lines(raw if isinstance(raw, list) else [])
    findings: list[Finding] = []
    if refused or (raw is not None and not isinstance(raw, list)):
        findings.append(Finding(stack[-1].version, f"base.json holds LXC config a base may not carry, left out of every "
                                                   f"container's config: {refused[0] if refused else raw!r}"[:600]))
    lxc_covered = True
    parent_digest: str | None = None
    for v in reversed(stack):  # lowest first: the chain needs parents' digests
        vdir = os.path.dirname(v.rootfs)
        if not os.path.isdir(v.rootfs):
            raise Damaged(f"base {name!r}: layer {v.rootfs} is missing", "the store is damaged; import the base again")
        try:
            with open(os.path.join(vdir, digest.MANIFEST), "rb") as f:
                kept = f.read()
        except FileNotFoundError:
            store.version_digest(name, v.version)  # published before digests: recorded now
            with open(os.path.join(vdir, digest.MANIFEST), "rb") as f:
                kept = f.read()
        diff = digest.first_difference(kept, digest.layer_manifest(v.rootfs, recorded=kept))
        if diff:
            findings.append(Finding(v.version, diff))
        expect = digest.chain(digest.layer_digest(kept), parent_digest, lxc if parent_digest is None else ())
        rec = store.recorded_digest(name, v.version)
        if rec and rec != expect:
            if parent_digest is None and rec == digest.chain(digest.layer_digest(kept), None):
                lxc_covered = not lxc  # recorded before digests covered LXC lines
            elif parent_digest is None and not diff:
                findings.append(Finding(v.version, f"base.json's LXC lines ({len(lxc)}) are not the ones its digest "
                                                   f"{rec[:16]} covers"))
            else:
                findings.append(Finding(v.version, f"recorded digest {rec[:16]} does not match its manifest's {expect[:16]}"))
        parent_digest = rec or expect
    return Verified(top, parent_digest or "", findings, len(stack), lxc, lxc_covered)


# -- garbage collection and reset ----------------------------------------------------------------


class GcResult:
    """What gc removed; problems: what it could not do (a base skipped, a removal failed); warnings: what it noticed."""

    def __init__(self) -> None:
        self.removed: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.warnings: list[str] = []


def needed_versions(store: Store, base: str, wanted: set[str]) -> tuple[set[str], list[str], list[str]]:
    """current, the wanted versions and every version below them: (keep, problems, warnings).

    A wanted version that does not exist (a dangling pin) is reported; a
    stack that cannot be followed (a parent missing or unreadable, current
    dangling) is a problem: removing anything from this base is unsafe.
    """
    keep: set[str] = set()
    problems: list[str] = []
    warnings: list[str] = []
    try:
        starts = [(store.current(base), "current")]
    except (OSError, PycorError) as e:
        problems.append(f"base {base}: its current link is damaged ({e})")
        starts = []
    starts += [(v, "used") for v in sorted(wanted, key=int)]
    for version, why in starts:
        if why == "used" and not os.path.isdir(os.path.join(store.base_dir(base), "versions", version)):
            warnings.append(f"base {base}: version {version} is referenced (pinned or held) but does not exist")
            continue
        current: str | None = version
        while current is not None and current not in keep:
            try:
                parent = store.version(base, current).parent
            except (OSError, ValueError, TypeError, PycorError) as e:
                problems.append(f"base {base}: version {current}, needed by version {version}, cannot be read ({e})")
                break
            keep.add(current)
            current = parent
    return keep, problems, warnings


def gc(store: Store, used: Callable[[], dict[str, set[str]]]) -> GcResult:
    """Remove versions neither current, held, nor referenced by a layer; returns what went and what was wrong.

    used() lists, per base, the versions layers reference (running, pinned,
    snapshots...). It is called under the store's exclusive lock, so no
    container can start on a version between the count and the removal;
    taking that lock also clears what an earlier, killed gc left (.N.rm).
    A damaged base is reported and skipped; the others are still collected.
    """
    result = GcResult()
    doomed: list[str] = []
    with store.lock():
        in_use = used()
        for base in store.base_names():
            try:
                keep, problems, warnings = needed_versions(store, base, in_use.get(base, set()) | store.holds(base))
                found, damaged = store.scan_versions(base)
            except (OSError, PycorError) as e:
                result.problems.append(f"base {base}: {e}")
                continue
            result.warnings += warnings
            result.warnings += [f"base {base}: version {v} is damaged and left in place: {why}"
                                for v, why in sorted(damaged.items()) if v not in keep]
            if problems:
                result.problems += problems + [f"base {base}: nothing removed from it, its stacks cannot be followed"]
                continue
            for v in reversed(found):  # children first (a parent is always older): a kill never orphans a version
                if v.version in keep:
                    continue
                path = os.path.join(store.base_dir(base), "versions", f".{v.version}.rm{os.getpid()}")
                try:
                    os.rename(os.path.dirname(v.rootfs), path)
                except OSError as e:
                    result.problems.append(f"base {base}: cannot remove version {v.version}: {e.strerror}")
                    continue
                doomed.append(path)
                result.removed.append((base, v.version))
                faults.point("gc.renamed")
    for path in doomed:  # outside the lock: starts need not wait for the deletion
        try:
            remove_tree(path)
        except PycorError as e:
            result.problems.append(str(e))
    return result


RESET_ASIDE = layers.RESET_ASIDE


def reset(held: StoppedLayer) -> None:
    """Discard a stopped container's changes, also at its quota: see _reset, and _empty_layer when even
    that hits the limit."""
    rootfs = held.rootfs
    try:
        _reset(rootfs)
    except OSError as e:
        if e.errno not in (errno.EDQUOT, errno.ENOSPC):
            raise
        _empty_layer(rootfs)
        try:
            _reset(rootfs)
        except OSError as again:
            if again.errno not in (errno.EDQUOT, errno.ENOSPC):
                raise
            if _set_aside(rootfs):
                raise PycorError(f"cannot finish discarding the changes in {rootfs}: its quota is full even for a rename "
                                 f"({again.strerror})", "raise its limit ('pycor set NAME size=...'), then reset again") from None
            # what fills the quota is not the changes (its volumes): even a rename needs room, but upper and
            # work were emptied where they are, which is all a reset does


def _set_aside(rootfs: str) -> bool:
    """Whether a reset left upper or work renamed aside (the container does not start then)."""
    return any(os.path.lexists(os.path.join(rootfs, layers.PYCOR_DIR, name + RESET_ASIDE)) for name in ("upper", "work"))


def _empty_layer(rootfs: str) -> None:
    """At the limit even a reset's fresh directories fail (EDQUOT): remove the old upper's and work's contents
    first (by fd, never following a symlink). A crash in between leaves some changes discarded, and running
    reset again finishes."""
    with layers.OpenLayer(rootfs) as lay:
        for fd in (lay.upper_fd, lay.work_fd):
            dfd = os.open(linux.fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for entry in os.listdir(dfd):
                    if stat.S_ISDIR(os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mode):
                        shutil.rmtree(entry, dir_fd=dfd)
                    else:
                        os.unlink(entry, dir_fd=dfd)
            finally:
                os.close(dfd)


def _reset(rootfs: str) -> None:
    """Discard a stopped container's changes, without needing a byte of free space.

    upper and work are renamed aside (a start meanwhile fails rather than
    seeing half-deleted changes), emptied, and renamed back: the same
    directories, owners and modes, and nothing created before the old
    changes are gone. A reset killed at any step resumes when run again.
    Everything happens relative to the checked .pycor directory's fd.
    """
    fd = layers.open_rootfs(rootfs)
    try:
        layers.read_meta(fd, rootfs)  # a pycor layer, or a clear error
        try:
            dfd = linux.open_beneath(fd, layers.PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise PycorError(f"cannot open {rootfs}/{layers.PYCOR_DIR}: {e.strerror}", "the container's layer is damaged") from None
    finally:
        os.close(fd)
    try:
        for name in ("upper", "work"):
            aside = name + RESET_ASIDE
            if not _lexists_at(dfd, aside):
                os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=dfd)
                faults.point(f"reset.{name}-aside")
            if name == "upper":
                _discard_moves(dfd)  # with upper aside no start runs: a plan left by a killed move must not refill it
            _empty_dir_at(dfd, aside)
            faults.point(f"reset.{name}-emptied")
            os.rename(aside, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def _discard_moves(pycor_dfd: int) -> None:
    """Drop what reconciliations left in .pycor: a staged or committed plan, and the conflicts of changes now gone."""
    from .reconcile import CONFLICTS, RECONCILE_DIR

    if _lexists_at(pycor_dfd, RECONCILE_DIR):
        _empty_dir_at(pycor_dfd, RECONCILE_DIR)
        os.rmdir(RECONCILE_DIR, dir_fd=pycor_dfd)
    for name in (CONFLICTS, CONFLICTS + ".new"):
        try:
            os.unlink(name, dir_fd=pycor_dfd)
        except FileNotFoundError:
            pass


def _lexists_at(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _empty_dir_at(dfd: int, name: str) -> None:
    """Delete everything inside dfd/name (never following a symlink), keep the directory, drop its overlay xattrs."""
    fd = linux.open_beneath(dfd, name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise PycorError(f"{name} in the container's layer is not a directory", "the layer is damaged")
        for entry in os.listdir(fd):
            if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                shutil.rmtree(entry, dir_fd=fd)
            else:
                os.unlink(entry, dir_fd=fd)
        for attr in os.listxattr(fd):
            if attr.startswith(("trusted.overlay.", "user.overlay.")):
                os.removexattr(fd, attr)
    finally:
        os.close(fd)
