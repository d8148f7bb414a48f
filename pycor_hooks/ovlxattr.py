"""A layer's overlay xattrs, moved between namespaces when its container switches privileged and unprivileged.

overlayfs marks opaque directories, redirects, origins (and impure, uuid,
metacopy...) with trusted.overlay.* xattrs when real root mounts it, and with
user.overlay.* when it is mounted with userxattr in a user namespace. A layer
written in one mode reads wrong in the other: a directory the container
replaced while unprivileged shows the base's files again once it starts
privileged. Whiteouts (0/0 character devices) read the same in both.

Each mode also escapes the container's own xattrs that look like its own:
in trusted mode the container's trusted.overlay.X is stored as
trusted.overlay.overlay.X (and its user.overlay.X as is); in user mode its
user.overlay.X is stored as user.overlay.overlay.X (it cannot set trusted.*).

convert() moves a layer from one namespace to the other in two phases through
a neutral form only pycor writes (trusted.overlay.pycor.*: the container can
never store such a name, overlayfs escapes it), each move setting the new
name before removing the old, and the caller records each phase durably
(layer.json's `xattrs`): a crash at any point is finished by the next run, and
a run over a converted layer changes nothing.

  phase 1, from S      S.overlay.N                -> NEUTRAL p.N   (overlayfs' own)
                       the container's user.overlay.X, in S's form -> NEUTRAL e.X
                       to trusted only: a trusted.overlay.N left by an earlier
                       privileged time (unprivileged, it was never read) is removed
  phase 2, to T        NEUTRAL p.N -> T.overlay.N;  NEUTRAL e.X -> the container's user.overlay.X in T's form

A user-mode overlay neither follows redirects nor reads metacopy files
(userxattr forces redirect_dir=nofollow, metacopy=off): a layer holding them
cannot go to user mode, and convert() refuses before changing anything.
pycor's privileged mounts create neither (see overlay.PRIVILEGED_OPTIONS).

Storage; imported on a start only when the mode changed (or a layer's namespace is not recorded yet).
"""

from __future__ import annotations

import os
import stat

from . import faults, linux
from .errors import Unsupported
from .layer import write_meta

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .layer import OpenLayer

TRUSTED, USER = "trusted", "user"
NEUTRAL = "trusted.overlay.pycor."
PRIVATE, OWN = NEUTRAL + "p.", NEUTRAL + "e."
UNREADABLE_UNPRIVILEGED = ("redirect", "metacopy")


def other(ns: str) -> str:
    return USER if ns == TRUSTED else TRUSTED


def ovl_name(ns: str, name: str) -> str | None:
    """N when name is overlayfs' own private xattr ns.overlay.N (not an escaped one, not pycor's neutral form)."""
    prefix = f"{ns}.overlay."
    if not name.startswith(prefix) or name.startswith(prefix + "overlay.") or name.startswith(NEUTRAL):
        return None
    return name[len(prefix):]


def to_neutral(source: str, name: str) -> str | None:
    """Phase 1: the neutral form of xattr name of a layer in namespace source, '' to remove it, None to leave it."""
    n = ovl_name(source, name)
    if n is not None:
        return PRIVATE + n
    if source == USER:
        if name.startswith("user.overlay.overlay."):
            return OWN + name[len("user.overlay.overlay."):]
        if ovl_name(TRUSTED, name) is not None:
            return ""  # stale: an unprivileged mount never read it, a privileged one would
    elif name.startswith("user.overlay."):  # in trusted mode the container's own, stored as it set it
        return OWN + name[len("user.overlay."):]
    return None


def from_neutral(target: str, name: str) -> str | None:
    """Phase 2: the name in namespace target of a neutral xattr name, None for any other name."""
    if name.startswith(PRIVATE):
        return f"{target}.overlay.{name[len(PRIVATE):]}"
    if name.startswith(OWN):
        return ("user.overlay.overlay." if target == USER else "user.overlay.") + name[len(OWN):]
    return None


def namespaces(names: list[str]) -> set[str]:
    """The namespaces whose overlayfs xattrs appear among names."""
    return {ns for ns in (TRUSTED, USER) if any(ovl_name(ns, n) is not None for n in names)}


def _entries(upper_fd: int) -> Iterator[tuple[str, str]]:
    """(path, handle) of upper itself and of every directory and regular file below it, never following a link.

    The handle is /proc/self/fd/N of an O_PATH fd, valid until the next step:
    xattr calls on it reach the inode without opening it for I/O (a node
    swapped in meanwhile is never opened). Symlinks and device nodes are left
    alone: user.* xattrs cannot be set on them, and what overlayfs puts there
    (an origin) is harmless in either mode.
    """
    from .fsutil import walk

    def handle(parent: int, name: str) -> int | None:
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            return None
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            return fd
        os.close(fd)
        return None

    def entries() -> Iterator[tuple[str, int, str]]:  # lazily: walk's parent fd is valid only while it yields
        yield "", upper_fd, "."
        for rel, st, parent, name in walk(upper_fd):
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                yield rel, parent, name

    for rel, parent, name in entries():
        fd = handle(parent, name)
        if fd is None:
            continue
        try:
            yield "/" + rel, linux.fd_path(fd)
        finally:
            os.close(fd)


def infer(upper_fd: int) -> str | None:
    """The namespace a layer's overlay xattrs are in, for a layer that does not record it (older pycor).

    The first entry whose overlayfs xattrs are all in one namespace decides
    (usually upper itself, which carries overlay.uuid): a walk that stops
    there. None: no such entry, so either namespace reads the layer alike.
    """
    for _, ref in _entries(upper_fd):
        found = namespaces(os.listxattr(ref))
        if len(found) == 1:
            return found.pop()
    return None


def check_readable_unprivileged(upper_fd: int, where: str) -> None:
    """Refuse a layer a user-mode overlay cannot read: renamed directories (redirects) and metadata-only copies."""
    hits: list[str] = []
    for path, ref in _entries(upper_fd):
        for n in os.listxattr(ref):
            ovl = ovl_name(TRUSTED, n) or (n[len(PRIVATE):] if n.startswith(PRIVATE) else None)
            if ovl in UNREADABLE_UNPRIVILEGED:
                hits.append(f"{path} ({ovl})")
    if hits:
        raise Unsupported(
            f"{where}: its layer holds {len(hits)} renamed director(ies) or metadata-only copies made by a privileged "
            f"overlay (first: {hits[0]}), which an unprivileged overlay cannot read",
            "start it privileged again, or publish what it shows as a base of its own ('pycor commit NAME --as NEWBASE') "
            "and create an unprivileged container on that",
        )


def _move_all(upper_fd: int, rename: Callable[[str], str | None], step: str) -> int:
    """Apply rename to every xattr name of every entry: set the new name, then remove the old. How many moved."""
    moved = 0
    for _, ref in _entries(upper_fd):
        for name in os.listxattr(ref):
            new = rename(name)
            if new is None:
                continue
            if new:
                os.setxattr(ref, new, os.getxattr(ref, name))  # a crash after this leaves both: the next run repeats it
            os.removexattr(ref, name)
            moved += 1
            if moved == 1:
                faults.point(step)
    return moved


def _sync(upper_fd: int) -> None:
    """Every xattr moved so far on disk before the next phase is recorded (syncfs wants a real fd, not O_PATH)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=upper_fd)
    try:
        linux.syncfs(fd)
    finally:
        os.close(fd)


def convert(upper_fd: int, source: str, target: str, state: str | None, record: Callable[[str], None],
            where: str = "layer") -> int:
    """Move upper's overlay xattrs from namespace source to target; returns how many xattrs moved.

    state: what the layer records (layer.json's xattrs); record(state) must
    write a new one durably. Resumes an interrupted conversion at its phase.
    """
    if source == target:
        raise ValueError("convert() needs two namespaces")
    one, two = f"{source}>{target}:1", f"{source}>{target}:2"
    moved = 0
    if state != two:
        if state != one:
            if target == USER:
                check_readable_unprivileged(upper_fd, where)
            record(one)
        faults.point("xattrs.phase1")
        moved += _move_all(upper_fd, lambda n: to_neutral(source, n), "xattrs.phase1.moving")
        _sync(upper_fd)
        record(two)
    faults.point("xattrs.phase2")
    moved += _move_all(upper_fd, lambda n: from_neutral(target, n), "xattrs.phase2.moving")
    _sync(upper_fd)
    record(target)
    return moved


def resume_target(state: str) -> tuple[str, str] | None:
    """(source, target) of an interrupted conversion's recorded state, else None."""
    if ">" not in state:
        return None
    source, _, rest = state.partition(">")
    return source, rest.split(":")[0]


def settle(lay: OpenLayer, namespace: str | None, where: str) -> str | None:
    """Bring a stopped layer's overlay xattrs into namespace ('trusted', 'user'); the namespace they are in then.

    namespace None (commands that read a layer): only finish a conversion a
    crash interrupted, and find the namespace of a layer that does not record
    it (None: either namespace reads it alike). The caller holds the layer
    lock. Refused (Unsupported, nothing changed) for a layer an unprivileged
    overlay cannot read.
    """
    def record(state: str) -> None:
        lay.meta = lay.meta.but(xattrs=state)
        write_meta(lay.rootfs, lay.meta, durable=True)

    state = lay.meta.xattrs
    moving = resume_target(state) if state else None
    if moving is not None:  # a crash interrupted a conversion: finish it first
        convert(lay.upper_fd, moving[0], moving[1], state, record, where)
        state = moving[1]
    if state is None:
        state = infer(lay.upper_fd)
        if namespace is None:
            return state
        if state is None or state == namespace:  # nothing to move: record it, once
            lay.meta = lay.meta.but(xattrs=namespace)
            write_meta(lay.rootfs, lay.meta)
            return namespace
    if namespace is not None and state != namespace:
        convert(lay.upper_fd, state, namespace, lay.meta.xattrs, record, where)
        return namespace
    return state
