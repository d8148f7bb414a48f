"""Overlayfs vocabulary: the one overlay mount, merged views, whiteouts and opaque dirs.

Every overlay pycor mounts goes through mount_overlay(): a container's root
in the pre-mount hook (the update builder's too, through the same hook),
the read-only merged views squash and commit copy from, doctor's probes.

Layers are handed over as open directory fds, never as paths: the kernel
takes exactly the directories we opened (no path can be swapped or planted
in between), and depth is limited only by overlayfs (500 lower layers),
not by the one page a mount(2) option string may fill.

Hot path: the pre-mount hook imports this. Please don't import any extra modules here.
"""

from __future__ import annotations

import errno
import os
import stat

from . import faults, linux
from .errors import Unsupported

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# A privileged mount of a container's layer: no redirects, no metadata-only copies, whatever the module's
# defaults, since an unprivileged (userxattr) mount can read neither and the container may switch (ovlxattr.py).
# Redirects already in a layer are still followed.
PRIVILEGED_OPTIONS = ("redirect_dir=follow", "metacopy=off")
# What makes an upper directory more than a plain new one: a renamed lower directory, a copy-up's origin.
NOT_PLAIN_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect", "trusted.overlay.origin", "user.overlay.origin")
OVL_MAX_STACK = 500  # fs/overlayfs/params.h: the most lower layers one overlay takes

# How this kernel takes layers, found at the first mount and kept for the process:
# "fd" (fsconfig FSCONFIG_SET_FD "lowerdir+", Linux 6.13+), "path" ("lowerdir+"
# with /proc/self/fd paths, 6.8+), or "legacy" (one mount(2) option string).
_api: str | None = None


def escape(path: str) -> str:
    """Escape a layer path for an overlay option string (',' ':' and '\\' are special)."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def overlay_options(lowerdirs: list[str], upperdir: str | None = None, workdir: str | None = None,
                    userxattr: bool = False, options: tuple[str, ...] = ()) -> str:
    """A mount(2) option string; lowerdir is top first, as overlayfs stacks it."""
    if not lowerdirs:
        raise ValueError("an overlay needs at least one lowerdir")
    opts = ["lowerdir=" + ":".join(escape(p) for p in lowerdirs)]
    if upperdir is not None and workdir is not None:
        opts += ["upperdir=" + escape(upperdir), "workdir=" + escape(workdir)]
    if userxattr:
        opts.append("userxattr")  # no trusted.* xattrs inside a user namespace
    return ",".join(opts + list(options))


def legacy_options(lower_fds: list[int], upper_fd: int | None = None, work_fd: int | None = None,
                   userxattr: bool = False, options: tuple[str, ...] = ()) -> str:
    """The option string of the mount(2) fallback, refused clearly when the kernel would cut it.

    mount(2) copies one page of options: past it, the last layer's path is
    truncated and the kernel reports a missing directory or a symlink loop.
    """
    opts = overlay_options([linux.fd_path(fd) for fd in lower_fds],
                           linux.fd_path(upper_fd) if upper_fd is not None else None,
                           linux.fd_path(work_fd) if work_fd is not None else None, userxattr, options)
    page = os.sysconf("SC_PAGESIZE")
    if len(opts.encode()) >= page:
        raise Unsupported(
            f"an overlay of {len(lower_fds)} lower layers needs a {len(opts)}-byte mount option string, "
            f"and this kernel's mount(2) takes at most {page - 1} bytes",
            "Linux 6.8 or newer mounts any depth (fsconfig lowerdir+); on this kernel squash the base "
            "('pycor base squash BASE')",
        )
    return opts


def mount_overlay(lower_fds: list[int], upper_fd: int | None = None, work_fd: int | None = None,
                  target_fd: int | None = None, *, userxattr: bool = False, read_only: bool = False,
                  options: tuple[str, ...] = (), scratch: str | None = None) -> int | None:
    """Mount an overlay of open directories (O_PATH fds will do). The one way pycor mounts overlays.

    lower_fds: lower layers, top first (at least two without an upper).
    upper_fd, work_fd: upperdir and workdir, both or neither.
    target_fd: attach the overlay there and return None; without it, return
    the fd of a detached mount, attached to no path: read it through
    linux.shared_fd_path(fd); closing the fd (or the process dying)
    unmounts it, so a killed command leaves no mount behind.
    options: more overlay options, "name" or "name=value" (doctor's probes).
    scratch: a directory path to create and mount on for a moment, used only
    on kernels without the new mount API when no target_fd is given.
    Errors are OSError naming the syscall and the layer's path, or
    Unsupported when this kernel cannot take that many layers.
    """
    if not lower_fds:
        raise ValueError("an overlay needs at least one lowerdir")
    if (upper_fd is None) != (work_fd is None):
        raise ValueError("upperdir and workdir go together")
    if len(lower_fds) > OVL_MAX_STACK:
        raise Unsupported(f"an overlay of {len(lower_fds)} lower layers is more than the {OVL_MAX_STACK} overlayfs takes",
                          "squash the base ('pycor base squash BASE') to fold its layers into one")
    api = _layer_api()
    if api == "legacy":
        return _legacy_mount(lower_fds, upper_fd, work_fd, target_fd, userxattr, read_only, options, scratch)
    mnt = _fs_mount(api, lower_fds, upper_fd, work_fd, userxattr, read_only, options)
    if target_fd is None:
        return mnt
    try:
        linux.move_mount(mnt, "", target_fd, "", linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH)
    except OSError as e:
        raise linux.oserror("move_mount", _real_path(target_fd), e.errno) from None
    finally:
        os.close(mnt)
    return None


def _layer_api() -> str:
    """How this kernel takes layers, tried once per process on a throwaway context with "/" as a layer.

    Probing apart from the real layers keeps a real layer's error (not a
    directory, too deep a stack) from passing for a missing feature.
    """
    global _api
    if _api is not None:
        return _api
    try:
        ctx = linux.fsopen("overlay")
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        _api = "legacy"  # no new mount API (before 5.2)
        return _api
    found = "legacy"
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for api in ("fd", "path"):
            try:
                _set_layer(ctx, api, "lowerdir+", root)
            except OSError:
                continue  # EINVAL: no such key, or no fds for it (before 6.13); EBADF: no O_PATH fds (before 6.15)
            found = api
            break
    finally:
        os.close(root)
        os.close(ctx)
    _api = found
    return _api


def _fs_mount(api: str, lower_fds: list[int], upper_fd: int | None, work_fd: int | None,
              userxattr: bool, read_only: bool, options: tuple[str, ...]) -> int:
    """fsopen, one fsconfig per layer and option, create, fsmount: the detached mount's fd."""
    ctx = linux.fsopen("overlay")
    try:
        # options first: userxattr says which xattrs mark whiteouts and opaque dirs in the layers
        flags = (["userxattr"] if userxattr else []) + (["ro"] if read_only else []) + list(options)
        for opt in flags:
            key, eq, value = opt.partition("=")
            try:
                if eq:
                    linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, key, value)
                else:
                    linux.fsconfig(ctx, linux.FSCONFIG_SET_FLAG, key)
            except OSError as e:
                raise _context_error(f"fsconfig({opt})", None, e, ctx) from None
        for fd in lower_fds:
            try:
                _set_layer(ctx, api, "lowerdir+", fd)
            except OSError as e:
                raise _context_error("fsconfig(lowerdir+)", _real_path(fd), e, ctx) from None
        if upper_fd is not None and work_fd is not None:
            for key, fd in (("upperdir", upper_fd), ("workdir", work_fd)):
                try:
                    _set_layer(ctx, api, key, fd)
                except OSError as e:
                    raise _context_error(f"fsconfig({key})", _real_path(fd), e, ctx) from None
        where = _real_path(upper_fd if upper_fd is not None else lower_fds[0])
        try:
            linux.fsconfig(ctx, linux.FSCONFIG_CMD_CREATE)
        except OSError as e:
            raise _context_error("fsconfig(create)", where, e, ctx) from None
        try:
            return linux.fsmount(ctx, linux.FSMOUNT_CLOEXEC, linux.MOUNT_ATTR_RDONLY if read_only else 0)
        except OSError as e:
            raise _context_error("fsmount", where, e, ctx) from None
    finally:
        os.close(ctx)


def _set_layer(ctx: int, api: str, key: str, fd: int) -> None:
    if api == "fd":
        linux.fsconfig(ctx, linux.FSCONFIG_SET_FD, key, None, fd)
    else:
        linux.fsconfig(ctx, linux.FSCONFIG_SET_STRING, key, linux.fd_path(fd))


def _context_error(syscall: str, path: str | None, e: OSError, ctx: int) -> OSError:
    """The error of a step on a filesystem context, with what the kernel logged on it."""
    return linux.oserror(syscall, path, e.errno, _context_log(ctx))


def _real_path(fd: int) -> str:
    """The path an open directory was opened at, to name it in an error."""
    try:
        return os.readlink(linux.fd_path(fd))
    except OSError:
        return linux.fd_path(fd)


def _context_log(ctx: int) -> str:
    """What the kernel logged on a filesystem context ("e overlay: too many lower directories...")."""
    lines = []
    for _ in range(8):
        try:
            msg = os.read(ctx, 4096)
        except OSError:
            break  # ENODATA: nothing more
        line = msg.decode(errors="replace").strip()
        lines.append(line[2:] if line[1:2] == " " else line)  # drop the "e " severity prefix
    return "; ".join(line for line in lines if line)


def _legacy_mount(lower_fds: list[int], upper_fd: int | None, work_fd: int | None, target_fd: int | None,
                  userxattr: bool, read_only: bool, options: tuple[str, ...], scratch: str | None) -> int | None:
    """mount(2) with an option string, on kernels before 6.8; detached through open_tree (5.2+) when asked."""
    opts = legacy_options(lower_fds, upper_fd, work_fd, userxattr, options)
    flags = linux.MS_RDONLY if read_only else 0
    if target_fd is not None:
        try:
            linux.mount("overlay", linux.fd_path(target_fd), "overlay", flags, opts)
        except OSError as e:
            raise linux.oserror("mount", _real_path(target_fd), e.errno) from None
        return None
    if scratch is None:
        raise Unsupported("this kernel cannot make a detached overlay mount (no fsopen/lowerdir+)", "use Linux 6.8 or newer")
    os.mkdir(scratch, 0o700)
    try:
        linux.mount("overlay", scratch, "overlay", flags, opts)
        try:
            return linux.open_tree(linux.AT_FDCWD, scratch, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC)
        finally:
            linux.umount2(scratch, linux.MNT_DETACH)
    finally:
        os.rmdir(scratch)


class merged_view:  # noqa: N801 - used as a context manager, like a function
    """A read-only overlay of lowerdirs (top first, at least two), mounted detached.

        with merged_view(stack, os.path.join(staging, "merged")) as root:
            copy_tree(root, ...)

    root is /proc/PID/fd/N: it names the mount in this process and in the
    children it starts (tar), yet the mount is attached to no path, so a
    command killed while it copies leaves nothing mounted on the host.
    Layers are paths (store layers) or fds already open (a checked upper).
    scratch is used only on kernels without the new mount API.
    """

    def __init__(self, lowerdirs: list[str] | list[str | int], scratch: str, userxattr: bool = False) -> None:
        if len(lowerdirs) < 2:
            raise ValueError("overlayfs needs two lower layers when it has no upper")
        self.lowerdirs, self.scratch, self.userxattr = lowerdirs, scratch, userxattr
        self.fd = -1

    def __enter__(self) -> str:
        opened: list[int] = []
        try:
            fds = []
            for layer in self.lowerdirs:
                if isinstance(layer, int):
                    fds.append(layer)
                else:
                    opened.append(os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                    fds.append(opened[-1])
            fd = mount_overlay(fds, userxattr=self.userxattr, read_only=True, scratch=self.scratch)
            assert fd is not None
            self.fd = fd
        finally:
            for fd in opened:
                os.close(fd)
        faults.point("merged-view")
        return linux.shared_fd_path(self.fd)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # the last reference: the detached overlay goes with it


def stat_is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dir_fd: int, userxattr: bool | None = None) -> bool:
    """Whether a directory (an O_RDONLY fd) in a layer hides everything below it.

    userxattr: how the overlay that wrote the layer was mounted, so which xattr marks opacity:
    False (real root) reads trusted.overlay.opaque only, True (in a user namespace) user.overlay.opaque
    only: a privileged copy-up copies a base layer's user.overlay.opaque as a plain xattr, which marks
    nothing there. None (a base layer, which carries both) reads either.
    """
    names = OPAQUE_XATTRS if userxattr is None else (OPAQUE_XATTRS[1] if userxattr else OPAQUE_XATTRS[0],)
    for name in names:
        try:
            if os.getxattr(dir_fd, name) == b"y":
                return True
        except OSError:
            continue
    return False


def is_plain(dir_fd: int) -> bool:
    """Whether an upper directory (an O_RDONLY fd) was made new there: no redirect or origin mark."""
    try:
        names = os.listxattr(dir_fd)
    except OSError:
        return False
    return not any(n in NOT_PLAIN_XATTRS for n in names)


def clear_opaque(dir_fd: int) -> None:
    """Let the lower layers show below a directory again (idempotent)."""
    try:
        present = [n for n in os.listxattr(dir_fd) if n in OPAQUE_XATTRS]
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            return
        raise
    for name in present:
        try:
            os.removexattr(dir_fd, name)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
