"""Debian root filesystems: debootstrap from the mirror apt uses here, and the bootable default base.

`pycor base import NAME --debootstrap SUITE [--bootable]` builds its tree
here; importing.py checks and publishes it like any other import.

Domain: not on a hook's path.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

from .errors import PycorError
from .fsutil import lexists_inside, resolve_inside
from .proc import Progress, file_tail, running

DEBOOTSTRAP_SCRIPTS = "/usr/share/debootstrap/scripts"
APT_DIR = "/etc/apt"
VARIANTS = ("minbase", "buildd", "default")  # "default": debootstrap without --variant


def apt_mirror(apt_dir: str | None = None) -> str:
    """The Debian mirror URL apt on this machine is configured with.

    Reads apt_dir/sources.list and apt_dir/sources.list.d/ (*.list one-line
    entries, *.sources deb822 entries) in apt's order. An entry for a plain
    release (bookworm, stable) wins over one for -updates or -backports;
    security archives never qualify. apt_dir defaults to /etc/apt.
    """
    apt_dir = apt_dir or APT_DIR
    entries = list(_apt_entries(apt_dir))
    for wanted_rank in (0, 1):
        for uri, suite in entries:
            if _suite_rank(suite) == wanted_rank:
                return uri
    raise PycorError(
        f"no Debian mirror found in {apt_dir}/sources.list or {apt_dir}/sources.list.d/",
        "add a 'deb' entry for a Debian release (e.g. bookworm) to apt's sources",
    )



# -- debootstrap ---------------------------------------------------------------

_SUITE = re.compile(r"[a-z][a-z0-9.-]*")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def check_debootstrap_args(suite: str, variant: str, include: list[str]) -> None:
    if shutil.which("debootstrap") is None:
        raise PycorError("debootstrap is not installed", "apt-get install debootstrap")
    if not _SUITE.fullmatch(suite) or not os.path.exists(os.path.join(DEBOOTSTRAP_SCRIPTS, suite)):
        raise PycorError(f"debootstrap does not know the suite {suite!r}", f"pick one of the names in {DEBOOTSTRAP_SCRIPTS}, e.g. bookworm")
    if variant not in VARIANTS:
        raise PycorError(f"unknown debootstrap variant {variant!r}", f"use one of: {', '.join(VARIANTS)}")
    bad = [p for p in include if not _PACKAGE.fullmatch(p)]
    if bad:
        raise PycorError(f"invalid package name(s) to include: {', '.join(map(repr, bad))}", "give Debian package names such as 'iproute2'")


def run_debootstrap(rootfs: str, suite: str, variant: str, include: list[str], mirror: str, progress: Progress) -> None:
    cmd = ["debootstrap"]
    if variant != "default":
        cmd.append(f"--variant={variant}")
    if include:
        cmd.append("--include=" + ",".join(include))
    # A private mount namespace: whatever debootstrap mounts in the target
    # (proc, sys) vanishes with it, even if it is killed halfway.
    cmd = ["unshare", "--mount", "--propagation", "private", "--", *cmd, suite, rootfs, mirror]
    last: collections.deque[str] = collections.deque(maxlen=15)
    progress.start(f"debootstrap {suite}")
    with running(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                last.append(line)
                progress.note(line, important=line.startswith(("E:", "W:")))
        rc = proc.wait()
    if rc != 0:
        log_tail = file_tail(os.path.join(rootfs, "debootstrap", "debootstrap.log"))
        details = "\n".join(last) + (f"\n--- debootstrap.log ---\n{log_tail}" if log_tail else "")
        raise PycorError(f"debootstrap {suite} from {mirror} failed (exit status {rc}):\n{details}",
                         "check the suite name, the network and the mirror in apt's sources")
    progress.finish(f"debootstrap {suite}: done")




INIT_SCRIPT = """\
#!/bin/sh
# pycor: a minimal init for a base that has none (a debootstrap minbase).
# It only idles. lxc-stop sends SIGPWR, LXC's default halt signal; TERM and
# INT stop it too. As PID 1 a signal without a handler is ignored, hence the trap.
trap 'exit 0' TERM INT PWR
while :; do sleep 3600 & wait $!; done
"""


def finish_debian_rootfs(rootfs: str, keep_hostname: bool = True) -> None:
    """Add an init if the tree has none; drop the host's hostname debootstrap copied in.

    Without keep_hostname /etc/hostname goes entirely: systemd then keeps the
    name LXC gave the container instead of naming every one 'localhost'.
    """
    if not (lexists_inside(rootfs, "sbin/init") or lexists_inside(rootfs, "usr/sbin/init")):
        # sbin is usually a symlink to usr/sbin: resolve it inside the tree, never on the host.
        path = resolve_inside(rootfs, "sbin/init")
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        write_file(path, INIT_SCRIPT, 0o755)
    hostname = resolve_inside(rootfs, "etc/hostname")
    if os.path.isfile(hostname) and not os.path.islink(hostname):
        os.unlink(hostname)  # the base is shared: LXC gives each container its own name
        if keep_hostname:
            write_file(hostname, "localhost\n", 0o644)
    drop_apt_caches(rootfs)


# What debootstrap leaves of apt's work: the .deb files it installed (42 MiB for the bootable
# base), the package lists of the import day, binary caches. A base carries none of them: lists
# would go stale under every container, which runs apt-get update for its own (and builders for
# theirs). apt's folders, its lock files and partial/ stay.
APT_CACHES = (
    ("var/cache/apt/archives", lambda name: name.endswith(".deb")),
    ("var/lib/apt/lists", lambda name: name not in ("lock", "partial", "auxfiles")),
    ("var/cache/apt", lambda name: name in ("pkgcache.bin", "srcpkgcache.bin")),
)


def drop_apt_caches(rootfs: str) -> int:
    """Remove apt's downloads, lists and binary caches from a fresh tree (regular files only)."""
    removed = 0
    for rel, doomed in APT_CACHES:
        folder = resolve_inside(rootfs, rel, follow_last=True)
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if doomed(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed




# -- a bootable Debian -----------------------------------------------------------

# systemd as PID 1; networkd for DHCP and resolved for names (no extra DHCP
# client or ifupdown); nginx-light as the service (no per-container host keys,
# unlike an SSH server); iproute2 to look at addresses; dbus for hostnamectl & co.
BOOTABLE_PACKAGES = ("systemd-sysv", "systemd-resolved", "dbus", "iproute2", "nginx-light")

ETH0_NETWORK = """\
# pycor bootable base: DHCP on the container's first interface (LXC and LXD name it eth0).
[Match]
Name=eth0

[Network]
DHCP=yes
"""

# networkd waits for udev to announce a link whenever /sys is writable, and
# LXC's userns.conf mounts /sys read-write in unprivileged containers, where
# no udev runs: eth0 would stay 'pending' and get no address. A read-only /sys
# for networkd alone tells it there is no udev to wait for.
NETWORKD_DROPIN = """\
# pycor bootable base: no udev in a container; see pycor_hooks/debian.py
[Service]
ReadOnlyPaths=/sys
"""

# Units that cannot work in any container: they fail the same in a plain LXC
# container of this tree, so masking them lets 'systemctl is-system-running'
# say 'running' and keeps real failures visible.
CONTAINER_MASKED_UNITS = ("sys-kernel-debug.mount",)


# What a container of the default base costs, chosen for hosts that run many of them (a booted container
# took 22.6 MiB with Debian's defaults, about 13 with these; README, "Try it", says how to undo each, in one
# container or in the whole base).
#
# The journal: capped at 8 MiB in 1 MiB files, kept on the container's own layer. Debian's default (up to
# 10 % of the filesystem in files of up to 128 MiB) makes journald start an 8 MiB file in every container,
# 7.9 of the 8.9 MiB of page cache each one holds by itself. Trade: a container keeps about a week of a quiet
# system's log, not months. Volatile storage would be cheaper on disk but sits in /run's tmpfs, which a host
# without swap can never reclaim; on disk it is page cache the kernel can drop.
JOURNALD_DROPIN = """\
# pycor bootable base: a small journal in each container (a host may run a thousand of them).
# More: a later drop-in of your own here, e.g. 60-local.conf with SystemMaxUse=64M.
[Journal]
Storage=persistent
SystemMaxUse=8M
SystemMaxFileSize=1M
"""
JOURNALD_DROPIN_PATH = "etc/systemd/journald.conf.d/50-pycor.conf"

# apt's daily timers: every container would wake twice a day to refresh package lists the base does not
# carry (a base is updated once, with 'pycor base update', and its containers follow). Trade: a container
# that installs unattended-upgrades enables them itself.
FLEET_DISABLED_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")

# Memory cgroups: one for the whole container, none per service. Every memory cgroup holds the kernel's
# per-cgroup state of every filesystem's cache shrinker on the host (1 KiB per 64 mounted filesystems), and
# every container mounts about 25: with systemd's default of one memory cgroup per unit (15 in a booted
# container) that memory grows with the square of the fleet, 5 GiB at a thousand containers. The container
# is still limited and accounted as one; a unit that sets MemoryMax= or MemoryAccounting=yes still gets its
# own. Trade: systemd-cgtop shows no memory per service.
SYSTEM_DROPIN = """\
# pycor bootable base: one memory cgroup for the container, not one per unit (see pycor_hooks/debian.py).
# Back to systemd's default: remove this file, or a later drop-in of your own with DefaultMemoryAccounting=yes.
[Manager]
DefaultMemoryAccounting=no
"""
SYSTEM_DROPIN_PATH = "etc/systemd/system.conf.d/50-pycor.conf"

# logind: not at every boot, but when something asks for it over D-Bus (loginctl, machinectl, a login where
# libpam-systemd is installed: debootstrap leaves it out, so the base's logins make no sessions, as before).
# Most of a fleet's containers never ask, and logind holds about 1 MiB in each. A /dev/null link in /etc masks
# the vendor's multi-user.target.wants link of the same name (systemd 238 and later). logind also starts a
# lingering user's services (loginctl enable-linger) when it starts: LINGER_PATH starts it at boot when a user
# lingers (a path unit: an inotify watch in PID 1, no process).
LOGIND = "systemd-logind.service"
LINGER_PATH = """\
# pycor bootable base: logind on demand, and at boot when a user lingers (see pycor_hooks/debian.py).
[Unit]
Description=Start logind for lingering users

[Path]
DirectoryNotEmpty=/var/lib/systemd/linger
Unit=systemd-logind.service

[Install]
WantedBy=paths.target
"""
LINGER_PATH_UNIT = "pycor-linger.path"

_NGINX_WORKERS = re.compile(r"(?m)^(\s*worker_processes\s+)auto\s*;[^\n]*$")


def one_nginx_worker(conf: str) -> str:
    """nginx.conf with one worker process instead of 'auto' (one per host CPU, in every container: 64 on a
    64-CPU host). Trade: the container's nginx uses one CPU. The file is a conffile that pycor then
    changed: base updates keep it (dpkg's --force-confold) and leave a new release's as nginx.conf.dpkg-dist."""
    return _NGINX_WORKERS.sub(r"\g<1>1;  # pycor bootable base: one worker in each container", conf, count=1)


def wait_for_boot_script(timeout: int = 180) -> str:
    """A shell script that, run in a container of a bootable base, waits until
    systemd has finished booting and prints its state ('running', 'degraded').
    Right after a start systemctl finds no socket yet: wait for it first."""
    return (f"i=0; while [ ! -S /run/systemd/private ] && [ $i -lt {timeout * 10} ]; do sleep 0.1; i=$((i+1)); done; "
            f"timeout {timeout} systemctl is-system-running --wait")


def make_bootable(rootfs: str, progress: Progress) -> None:
    """Finish a debootstrap tree with systemd-sysv into a base every container boots from."""
    progress.start("making the base bootable")
    network = resolve_inside(rootfs, "etc/systemd/network/80-pycor-eth0.network")
    os.makedirs(os.path.dirname(network), 0o755, exist_ok=True)
    write_file(network, ETH0_NETWORK, 0o644)
    dropin = resolve_inside(rootfs, "etc/systemd/system/systemd-networkd.service.d/pycor-container.conf")
    os.makedirs(os.path.dirname(dropin), 0o755, exist_ok=True)
    write_file(dropin, NETWORKD_DROPIN, 0o644)
    # The tree's own systemctl, offline in a chroot: it creates the links (Also= units included).
    subprocess.run(["chroot", rootfs, "systemctl", "enable", "--quiet", "systemd-networkd.service",
                    "systemd-resolved.service", "nginx.service"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    subprocess.run(["chroot", rootfs, "systemctl", "mask", "--quiet", *CONTAINER_MASKED_UNITS],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    _fleet_defaults(rootfs)
    # One machine-id shared by every container would give them one DHCP client
    # id (networkd's DUID derives from it), so one address. Empty: systemd makes
    # a fresh one at each container's first boot and commits it to its layer.
    machine_id = resolve_inside(rootfs, "etc/machine-id")
    if os.path.lexists(machine_id):
        os.unlink(machine_id)
    write_file(machine_id, "", 0o444)
    dbus_id = resolve_inside(rootfs, "var/lib/dbus/machine-id")
    if os.path.isfile(dbus_id) and not os.path.islink(dbus_id):
        os.unlink(dbus_id)
    # Names through resolved's stub, whatever debootstrap copied from the host.
    resolv = resolve_inside(rootfs, "etc/resolv.conf")
    if os.path.lexists(resolv):
        os.unlink(resolv)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", resolv)
    progress.finish("bootable: systemd, DHCP on eth0, nginx")


def _fleet_defaults(rootfs: str) -> None:
    """The journal capped, one memory cgroup, one nginx worker, logind on demand, apt's timers off (see
    JOURNALD_DROPIN and the others)."""
    for path, text in ((JOURNALD_DROPIN_PATH, JOURNALD_DROPIN), (SYSTEM_DROPIN_PATH, SYSTEM_DROPIN)):
        dropin = resolve_inside(rootfs, path)
        os.makedirs(os.path.dirname(dropin), 0o755, exist_ok=True)
        write_file(dropin, text, 0o644)
    conf = resolve_inside(rootfs, "etc/nginx/nginx.conf")
    if os.path.isfile(conf) and not os.path.islink(conf):
        with open(conf, encoding="utf-8") as f:
            text = f.read()
        changed = one_nginx_worker(text)
        if changed != text:
            os.unlink(conf)
            write_file(conf, changed, 0o644)
    if any(lexists_inside(rootfs, f"{lib}/systemd/system/multi-user.target.wants/{LOGIND}") for lib in ("lib", "usr/lib")):
        link = resolve_inside(rootfs, f"etc/systemd/system/multi-user.target.wants/{LOGIND}")
        os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink("/dev/null", link)
        write_file(resolve_inside(rootfs, f"etc/systemd/system/{LINGER_PATH_UNIT}"), LINGER_PATH, 0o644)
        subprocess.run(["chroot", rootfs, "systemctl", "enable", "--quiet", LINGER_PATH_UNIT],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
    timers = [t for t in FLEET_DISABLED_TIMERS
              if any(lexists_inside(rootfs, f"{lib}/systemd/system/{t}") for lib in ("lib", "usr/lib"))]
    if timers:
        subprocess.run(["chroot", rootfs, "systemctl", "disable", "--quiet", *timers],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)




# -- apt sources ---------------------------------------------------------------

DEBIAN_CODENAMES = frozenset(
    "buzz rex bo hamm slink potato woody sarge etch lenny squeeze wheezy jessie stretch buster "
    "bullseye bookworm trixie forky duke sid oldoldstable oldstable stable testing unstable experimental".split()
)
URI_SCHEMES = ("http://", "https://", "ftp://", "file:")


def _suite_rank(suite: str) -> int | None:
    """0 for a plain Debian release, 1 for one of its -updates/-backports, None otherwise."""
    if suite in DEBIAN_CODENAMES:
        return 0
    release, _, pocket = suite.partition("-")
    if release in DEBIAN_CODENAMES and pocket and pocket != "security" and "/" not in suite:
        return 1
    return None


def _apt_entries(apt_dir: str) -> Iterator[tuple[str, str]]:
    """(uri, suite) of every enabled 'deb' entry, in the order apt reads them."""
    yield from _one_line_entries(os.path.join(apt_dir, "sources.list"))
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*"))):
        if path.endswith(".list"):
            yield from _one_line_entries(path)
        elif path.endswith(".sources"):
            yield from _deb822_entries(path)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""


_ONE_LINE = re.compile(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def _one_line_entries(path: str) -> Iterator[tuple[str, str]]:
    """'deb [opts] URI SUITE COMPONENTS...' lines; deb-src and comments skipped."""
    for line in _read_text(path).splitlines():
        m = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if m and m.group(1).startswith(URI_SCHEMES):
            yield m.group(1), m.group(2)


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _deb822_entries(path: str) -> Iterator[tuple[str, str]]:
    for p in _deb822_paragraphs(_read_text(path)):
        if p.get("enabled", "yes").lower() == "no" or "deb" not in p.get("types", "").split():
            continue
        for uri in p.get("uris", "").split():
            if uri.startswith(URI_SCHEMES):
                for suite in p.get("suites", "").split():
                    yield uri, suite


def write_file(path: str, text: str, mode: int) -> None:
    """A new file (never through a symlink) with text and exactly mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
