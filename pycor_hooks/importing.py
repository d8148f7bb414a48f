"""Importing a base: build a root filesystem in the store's staging area, then publish it.

This is the logic behind ``pycor base import NAME``. It runs from the CLI, never
from a hook, so it may use standard tools (GNU tar, debootstrap) as helpers.

Every import follows the same path: validate the name and the source before any
long work, build ``staging/rootfs``, check that the result is a root filesystem,
and publish it as version 1 in one rename. On any failure, Ctrl-C included, the
helpers are stopped and the staging directory is removed: nothing is left in
the store and the source is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from . import debian, faults
from .debian import write_file
from .errors import PycorError
from .fsutil import disk_usage, lexists_inside, resolve_inside
from .names import check_name
from .proc import Progress
from .store import Store, Version
from .tario import copy_tree, detect_compression, extract_tarball

BUSYBOX = "/bin/busybox"


def import_from_dir(store: Store, name: str, src: str, progress: Progress | None = None) -> Version:
    """Copy a root filesystem directory into a new base, keeping every attribute."""
    _check_new_base(store, name)
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        problem = "is not a directory" if os.path.lexists(src) else "does not exist"
        raise PycorError(f"source directory {src} {problem}", "give the path of a root filesystem directory (one with etc/ and bin/sh)")
    _refuse_store_inside(store, src)
    _check_rootfs(src, f"directory {src}")
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        os.mkdir(rootfs, 0o755)
        copy_tree(src, rootfs, progress)
        return []

    return _import(store, name, f"dir:{src}", build, f"directory {src}", progress)


def import_from_tar(store: Store, name: str, tarball: str, progress: Progress | None = None) -> Version:
    """Extract a root filesystem tarball (plain, gzip, xz, zstd or bzip2) into a new base."""
    _check_new_base(store, name)
    tarball = os.path.abspath(tarball)
    if not os.path.isfile(tarball):
        problem = "is not a file" if os.path.lexists(tarball) else "does not exist"
        raise PycorError(f"tarball {tarball} {problem}", "give the path of a .tar, .tar.gz, .tar.xz or .tar.zst file of a root filesystem")
    compression = detect_compression(tarball)
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        os.mkdir(rootfs, 0o755)
        extract_tarball(tarball, compression, rootfs, progress)
        return []

    return _import(store, name, f"tar:{tarball}", build, f"tarball {tarball}", progress,
                   hint="the archive must hold the root filesystem at its top (./etc, ./bin/sh), not inside a folder")


def import_busybox(store: Store, name: str, progress: Progress | None = None) -> Version:
    """A minimal base from the host's static busybox: one binary, its applets, busybox init."""
    _check_new_base(store, name)
    _check_static_busybox(BUSYBOX)
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        progress.start(f"busybox base from {BUSYBOX}")
        count = _build_busybox_rootfs(rootfs, BUSYBOX)
        progress.finish(f"busybox base: {count} applets linked")
        # busybox init halts on SIGUSR1 and reboots on SIGTERM, not LXC's defaults.
        return ["lxc.signal.halt = SIGUSR1", "lxc.signal.reboot = SIGTERM"]

    return _import(store, name, "busybox", build, "the busybox base", progress)


def import_debootstrap(
    store: Store,
    name: str,
    suite: str,
    variant: str = "minbase",
    include: list[str] | None = None,
    progress: Progress | None = None,
    bootable: bool = False,
) -> Version:
    """A Debian base made by debootstrap from the mirror apt on this machine uses.

    bootable: a system container's base: systemd as init, DHCP on eth0
    (systemd-networkd, names through systemd-resolved) and a web server
    (nginx-light), so every container boots to 'running' with an address.
    """
    _check_new_base(store, name)
    include = list(include or [])
    debian.check_debootstrap_args(suite, variant, include)
    if bootable:
        include += [p for p in debian.BOOTABLE_PACKAGES if p not in include]
    mirror = debian.apt_mirror()
    progress = progress or Progress()

    def build(rootfs: str) -> list[str]:
        debian.run_debootstrap(rootfs, suite, variant, include, mirror, progress)
        debian.finish_debian_rootfs(rootfs, keep_hostname=not bootable)
        if bootable:
            debian.make_bootable(rootfs, progress)
        # Our init (if we had to add one) exits on SIGPWR, LXC's default halt signal.
        # systemd halts on SIGRTMIN+3, which LXC sends when the init is systemd.
        return []

    source = f"debootstrap:{suite}/{variant}" + ("+bootable" if bootable else "")
    return _import(store, name, source, build, f"debootstrap {suite}", progress)



# -- the common path -----------------------------------------------------------


def _check_new_base(store: Store, name: str) -> None:
    check_name(name, "base name")
    if store.exists(name):
        raise PycorError(f"base {name!r} already exists in store {store.root}", f"remove it first with 'pycor base rm {name}', or pick another name")


def _import(store: Store, name: str, source: str, build: Callable[[str], list[str]], what: str,
            progress: Progress, hint: str | None = None) -> Version:
    """Build staging/rootfs with build (which returns the base's LXC lines), check it, publish it."""
    try:
        with store.staging(name) as work:
            rootfs = os.path.join(work, "rootfs")
            faults.point("import.staging")
            lxc = build(rootfs)
            _check_rootfs(rootfs, what, hint)
            from .builder import set_container_ranges

            set_container_ranges(rootfs)
            faults.point("import.built")
            return store.publish_base(name, work, source=source, size=disk_usage(rootfs), lxc=lxc)
    finally:
        progress.close()




def _refuse_store_inside(store: Store, src: str) -> None:
    """Copying a tree that holds the store would copy the copy, forever."""
    real_src, real_store = os.path.realpath(src), os.path.realpath(store.root)
    if os.path.commonpath([real_src, real_store]) == real_src:
        raise PycorError(f"the store {store.root} is inside the source {src}", "import from a directory that does not contain the store")





def missing_rootfs_parts(root: str) -> list[str]:
    """What keeps root from being a root filesystem; empty if it is one."""
    missing = []
    if not os.path.isdir(resolve_inside(root, "etc", follow_last=True)):
        missing.append("etc directory")
    if not (lexists_inside(root, "bin/sh") or lexists_inside(root, "usr/bin/sh")):
        missing.append("shell at bin/sh or usr/bin/sh")
    return missing


def _check_rootfs(root: str, what: str, hint: str | None = None) -> None:
    missing = missing_rootfs_parts(root)
    if missing:
        raise PycorError(f"{what} is not a root filesystem: it has no {' and no '.join(missing)}",
                         hint or "give a tree with etc/ and bin/sh at its top")




# -- busybox -------------------------------------------------------------------


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    import struct

    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f.read(48 if is64 else 36)  # the rest of the ELF header
        # Offsets of e_phoff and e_phentsize/e_phnum within that rest.
        phoff_fmt, phoff_at, counts_at = ("Q", 16, 38) if is64 else ("I", 12, 26)
        (phoff,) = struct.unpack_from(order + phoff_fmt, header, phoff_at)
        phentsize, phnum = struct.unpack_from(order + "HH", header, counts_at)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(order + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader
                return False
    return True


def _check_static_busybox(path: str) -> None:
    if not os.path.isfile(path):
        raise PycorError(f"{path} is missing", "apt-get install busybox-static")
    if not is_static_elf(path):
        raise PycorError(f"{path} is not statically linked: it would not run without the host's libraries", "apt-get install busybox-static")


INITTAB = """\
# pycor busybox base: busybox init under lxc-start.
# lxc-stop sends SIGUSR1 (halt); a reboot request sends SIGTERM.
::sysinit:/etc/init.d/rcS
console::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
"""

RCS = """\
#!/bin/sh
# LXC has already set up /dev, /proc and /sys; mount only what is missing and private.
[ -e /proc/self ] || mount -t proc proc /proc
mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
exit 0
"""

BUSYBOX_FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644),
    # Locked root: shells come from lxc-attach and the console, never a password.
    "etc/shadow": ("root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n", 0o600),
    "etc/group": ("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
    "etc/hostname": ("localhost\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
    "etc/fstab": ("", 0o644),
}

BUSYBOX_DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc/init.d": 0o755,
    "root": 0o700, "tmp": 0o1777, "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755,
    "var/log": 0o755, "home": 0o755, "mnt": 0o755,
}


def busybox_applets(busybox: str) -> list[str]:
    """Applet paths relative to / ('bin/ls', 'sbin/init'), from busybox --list-full."""
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout
    applets = []
    for line in out.split():
        rel = os.path.normpath(line).lstrip("/")
        # Only paths inside the usual bin directories: no 'linuxrc' at the top, nothing odd.
        if "/" in rel and ".." not in rel.split("/") and rel != "bin/busybox":
            applets.append(rel)
    return applets


def _build_busybox_rootfs(rootfs: str, busybox: str) -> int:
    os.mkdir(rootfs, 0o755)
    for rel, mode in BUSYBOX_DIRS.items():
        path = os.path.join(rootfs, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)  # makedirs' mode is filtered by the umask
    shutil.copyfile(busybox, os.path.join(rootfs, "bin/busybox"))
    os.chmod(os.path.join(rootfs, "bin/busybox"), 0o755)
    os.symlink("/run", os.path.join(rootfs, "var/run"))
    applets = busybox_applets(busybox)
    for rel in applets:
        link = os.path.join(rootfs, rel)
        os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    if not os.path.lexists(os.path.join(rootfs, "sbin/init")):
        os.symlink("/bin/busybox", os.path.join(rootfs, "sbin/init"))
    for rel, (text, mode) in BUSYBOX_FILES.items():
        write_file(os.path.join(rootfs, rel), text, mode)
    return len(applets)


