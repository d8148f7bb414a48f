"""Bringing a container's own packages along when it moves to another base version (`pycor rebase NAME --upgrade`).

A move merges dpkg's database, but the packages a container installed itself
keep their versions over the new base's: after a release upgrade of the base
perl needs the old perl-base, the old locales break the new libc6, and the
container's programs die. Upgrading in place (apt full-upgrade) would have
brought them along; this does the same, in the container itself, all or
nothing (Driver.upgrade_volume runs the steps):

1. stage: a copy of the container's layer (its .pycor: upper, layer.json,
   conflicts.json, pushed files, a fresh workdir) in the scratch,
   ROOTFS-PARENT/.pycor-upgrade.ROOTFS-NAME/.pycor: beside the container's
   rootfs directory, never in it (a daemon's file API writes every name in a
   stopped container's rootfs directory, as root; none outside it), root's
   alone, on the same filesystem; the base is never copied;
2. move the copy to the target version (reconciliation, which would break the
   packages: that is what comes next) and pin it there;
3. record: owner.json in the scratch, written whole: the pycor process doing
   it (pid, start time, boot), the versions, and the inode of the copy's .pycor;
4. swap: the copy becomes the container's .pycor (one renameat2(RENAME_EXCHANGE)),
   its old layer kept in the scratch;
5. run: the container starts through its own runtime (LXC, LXD, Incus), confined
   exactly as it always runs (its network, namespaces, cgroup, AppArmor profile,
   idmap); once systemd says it has booted and its network is up, apt-get
   update, -f install, full-upgrade and clean run in it (runtime exec), with
   no question asked (the options on apt's command line; nothing is mounted
   into the container), its output shown without control characters, within
   APT_SECONDS; then it stops;
6. check: apt-get check on the result (depcheck) says nothing the base alone
   does not;
7. commit: owner.json goes (the commit point); then the old layer.

Any failure before 7 (no init that brings up the network, a fetch, a
maintainer script, a result that still breaks) swaps the old layer back:
the container is exactly as it was. A killed pycor leaves owner.json, whose
process is gone: the container's next start (its pre-start, or pre-mount
--prepare), `pycor rebase`, `reset` or `doctor` swaps the old layer back and
says so; the upgrade's own start (its process alive) goes on.

What happened is told by root's files alone: the swap happened when the
scratch's .pycor is no longer the copy owner.json names (a directory's inode:
nobody links it elsewhere). Nothing in the container's layer, which the
tenant writes, decides it. The scratch is removed owner.json first: a removal
that stops half-way leaves a scratch that is no upgrade's, never an old layer
taken for a copy.

Not a hot path: the CLI uses this, and a hook only when a scratch is there.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess

from . import faults, layer, linux
from .errors import InUse, PycorError, Unsupported
from .names import check_version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .builder import Ran

    class Runtime(Protocol):
        """What an upgrade needs of the container's runtime (runtime.Runtime has it; driver sits below runtime)."""

        def state(self, name: str) -> str: ...
        def start(self, name: str) -> None: ...
        def stop(self, name: str, force: bool = False) -> None: ...
        def exec(self, name: str, argv: list[str], seconds: float = ..., relay: bool = ...) -> Ran: ...
        def hint(self, verb: str, name: str) -> str: ...

log = logging.getLogger("pycor")
scratch_path = layer.upgrade_scratch  # UPGRADE_DIR.ROOTFS-NAME beside the container's rootfs directory
OWNER = "owner.json"  # in the scratch: the upgrade's pycor process and its copy (Owner)
OWNER_LIMIT = 4096
STATUS = "var/lib/dpkg/status"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What an in-place `apt full-upgrade` does, without questions: every setting on apt's command line (they
# win over the container's apt.conf.d), nothing mounted into the container.
# - a fetch that fails (a name not resolved, a mirror unreachable) fails apt-get update (exit 100)
#   instead of a warning over old lists (apt >= 2.1.16: bookworm's 2.6, trixie's 3.0);
# - no question on a changed conffile: the default answer, else the installed file (the new one as .dpkg-dist).
APT = ("apt-get -q -o Dpkg::Use-Pty=0 -o APT::Update::Error-Mode=any "
       "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
# -f install first: a container whose packages the move left broken needs apt to fix them before it upgrades anything.
SCRIPT = (f"set -e; export PATH={PATH} DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none; "
          f"{APT} update; {APT} -y -f install; {APT} -y full-upgrade; {APT} clean")
BOOT_SECONDS = 300  # systemd's boot, then the network
APT_SECONDS = 3 * 3600  # update, -f install, full-upgrade and clean of a whole release
NETWORK_SECONDS = 90
INIT_SECONDS = 10  # for the container's first process to become its init


def boot_script() -> str:
    """Wait until the container's systemd has booted and its network is up; exit 3 when its init is not
    systemd, 4 when the boot did not finish well, 5 when the network did not come up. Prints what it saw."""
    from .debian import wait_for_boot_script

    tab = "\t"
    return (
        f"export PATH={PATH}; i=0; "
        f"while [ \"$(cat /proc/1/comm)\" != systemd ] && [ $i -lt {INIT_SECONDS * 10} ]; do sleep 0.1; i=$((i+1)); done; "
        "init=$(cat /proc/1/comm); echo \"init: $init\"; [ \"$init\" = systemd ] || exit 3; "
        f"state=$({wait_for_boot_script(BOOT_SECONDS)}); echo \"boot: $state\"; "
        "case \"$state\" in running|degraded) ;; *) exit 4;; esac; "
        # its network: a default route, once it has an interface other than lo (none: nothing to bring up)
        "i=0; while :; do "
        "links=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | grep -vx lo || true); "
        "[ -z \"$links\" ] && { echo 'network: none but lo'; exit 0; }; "
        f"if grep -q '^[^{tab}]*{tab}00000000{tab}' /proc/net/route || "
        "grep '^00000000000000000000000000000000 00 ' /proc/net/ipv6_route | grep -qv ' lo$'; then "
        "echo \"network: up ($(echo $links))\"; exit 0; fi; "
        f"[ $i -ge {NETWORK_SECONDS * 10} ] && {{ echo \"network: no default route on $(echo $links)\"; exit 5; }}; "
        "sleep 0.1; i=$((i+1)); done"
    )


# -- what the container has ------------------------------------------------------------------


def _lstat_beneath(upper_fd: int, rel: str) -> os.stat_result | None:
    try:
        fd = linux.open_beneath(upper_fd, rel, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def has_own_packages(upper_fd: int) -> bool:
    """Whether the container has a dpkg database of its own (it installed, removed or upgraded a package)."""
    st = _lstat_beneath(upper_fd, STATUS)
    return st is not None and stat.S_ISREG(st.st_mode)


def require_init(name: str, view: list[str]) -> None:
    """Refuse (nothing changed yet) a container whose /sbin/init, in its view on the target version
    (upper first), is not systemd: the upgrade runs in the container as it runs, and only systemd says
    when it has booted and brought up its network."""
    from .builder import resolve_lower

    found = resolve_lower(view, "sbin/init")
    if found is not None and found[1] is not None and stat.S_ISREG(found[1].st_mode) and \
            os.path.basename(found[0]) == "systemd":
        return
    shown = "missing" if found is None or found[1] is None else f"/{found[0]}"
    raise no_init(name, f"its /sbin/init is {shown}")


def no_init(name: str, why: str) -> PycorError:
    return PycorError(f"container {name} has no init that brings up its network ({why}): --upgrade runs apt in the "
                      "container as it runs, and waits for systemd to finish booting it; nothing was changed",
                      "a base with systemd as init ('pycor base import NAME --debootstrap SUITE --bootable'), or "
                      f"move it without --upgrade ('pycor rebase {name} --force') and run apt-get full-upgrade inside")


# -- staging and swapping ----------------------------------------------------------------------


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_scratch_parent(rootfs: str) -> tuple[int, str]:
    path = scratch_path(rootfs)
    return _open_dir(os.path.dirname(path)), os.path.basename(path)


def has_scratch(rootfs: str) -> bool:
    return os.path.lexists(scratch_path(rootfs))


def discard(rootfs: str) -> None:
    """Remove the scratch (a copy that never became the container's, or an old layer after the commit):
    owner.json first (durably: a removal that stops half-way leaves a scratch that is no upgrade's), then the
    rest with rm (no depth limit, never a symlink followed, never another filesystem). Only a directory as
    pycor makes it is removed."""
    path = scratch_path(rootfs)
    parent, name = _open_scratch_parent(rootfs)
    try:
        try:
            fd = linux.open_beneath(parent, name, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        except OSError as e:
            raise PycorError(f"{path} is not an upgrade's scratch ({e.strerror}): pycor leaves it alone",
                             "remove it if nothing needs it, or give the container another rootfs directory") from None
        try:
            strange = sorted(set(os.listdir(fd)) - {layer.PYCOR_DIR, OWNER, f"{OWNER}.new"})
            if strange or (os.getuid() == 0 and os.fstat(fd).st_uid != 0):
                why = f"it holds {', '.join(strange)}" if strange else "it is not root's"
                raise PycorError(f"{path} is not an upgrade's scratch ({why}): pycor leaves it alone",
                                 "remove it if nothing needs it, or give the container another rootfs directory")
            for entry in (OWNER, f"{OWNER}.new"):
                try:
                    os.unlink(entry, dir_fd=fd)
                except FileNotFoundError:
                    pass
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(parent)
    proc = subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PycorError(f"cannot remove {path}: {proc.stderr.strip()[-300:]}",
                         "see what keeps it (chattr -i, a mount below it) and remove it: the container does not need it")


def stage(lay: layer.OpenLayer) -> str:
    """A copy of the container's layer: returns the scratch directory holding it in .pycor (root's alone).

    The whole .pycor is copied (GNU tar through tario: owners, xattrs, whiteouts kept): upper, layer.json,
    the conflicts record, files pushed while it was stopped (its inbox), anything later pycor keeps there;
    the workdir's contents are not (overlayfs's scratch space). A layer under a project quota (--size on
    ext4 or XFS) has its copy in the same project.
    """
    from . import tario
    from .proc import Progress

    if lay.meta.volumes:
        raise Unsupported(f"{lay.rootfs} has volumes, which an upgrade of the container's packages cannot stage",
                          "move it without --upgrade ('pycor rebase NAME --force') and run apt-get full-upgrade inside")
    target = scratch_path(lay.rootfs)
    parent, name = _open_scratch_parent(lay.rootfs)
    try:
        if os.fstat(parent).st_dev != os.fstat(lay.rootfs_fd).st_dev:
            raise Unsupported(f"{lay.rootfs} is a filesystem of its own (a mount point or a btrfs subvolume), so an "
                              f"upgrade cannot stage its copy beside it ({target}) and swap it in",
                              "move it without --upgrade ('pycor rebase NAME --force') and run apt-get full-upgrade inside")
        os.mkdir(name, 0o700, dir_fd=parent)
        scratch = linux.open_beneath(parent, name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chmod(scratch, 0o700)  # whatever the umask: the container's old layer will lie here
            os.mkdir(layer.PYCOR_DIR, 0o700, dir_fd=scratch)  # tar gives it the original's owner and mode
        finally:
            os.close(scratch)
    finally:
        os.close(parent)
    pycor = linux.open_beneath(lay.rootfs_fd, layer.PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tario.copy_tree(linux.shared_fd_path(pycor), os.path.join(target, layer.PYCOR_DIR), Progress())
        project = _project(pycor)
    finally:
        os.close(pycor)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", os.path.join(target, layer.WORK)], check=True)
    os.mkdir(os.path.join(target, layer.WORK), 0o700)
    st = os.stat(os.path.join(target, layer.UPPER))
    os.chown(os.path.join(target, layer.WORK), st.st_uid, st.st_gid)  # as create_layer makes it
    os.chmod(os.path.join(target, layer.WORK), 0o700)
    if project:
        from . import quota

        quota.tag_layer(target, project)
    return target


def _project(fd: int) -> int:
    """The project id of an open directory (0: none, or a filesystem without project ids)."""
    try:
        from . import quota

        return quota.get_project(fd)[1]
    except OSError:
        return 0


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read(64).strip()


class Owner:
    """An upgrade under way, in the scratch's owner.json (host root's, where no tenant reaches): the pycor process
    doing it (pid, start time, boot), the versions (from, to), and the inode of its copy's .pycor (a directory:
    nobody links it elsewhere, and it keeps its number wherever it is renamed)."""

    __slots__ = ("pid", "start", "boot", "copy", "old", "target")

    def __init__(self, pid: int, start: int, boot: str, copy: int, old: str | None, target: str | None) -> None:
        self.pid, self.start, self.boot, self.copy, self.old, self.target = pid, start, boot, copy, old, target

    def to_json(self) -> str:
        from .flatjson import dumps

        return dumps({"pid": self.pid, "start": self.start, "boot": self.boot, "copy": self.copy,
                      "from": self.old, "to": self.target})

    def alive(self) -> bool:
        """Whether the process that wrote it still runs (the same process: pid, start time and boot)."""
        from .runstate import proc_start_time

        return self.pid > 0 and self.boot == _boot_id() and proc_start_time(self.pid) == self.start

    def mine(self) -> bool:
        from .runstate import proc_start_time

        return (self.pid, self.start, self.boot) == (os.getpid(), proc_start_time(os.getpid()) or 0, _boot_id())

    def shown(self) -> str:
        return f"the upgrade to version {self.target or '?'} by pycor process {self.pid}"


def read_owner(rootfs: str) -> Owner | None:
    """The upgrade under way, None when there is none: no scratch, or no owner.json in it (being staged, or
    committed). owner.json is root's, written whole (rename): anything else in it is refused."""
    from .flatjson import load

    path = os.path.join(scratch_path(rootfs), OWNER)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PycorError(f"{path}: {e.strerror}", "only host root writes there: see what did; remove the directory "
                         "if the container's layer is as it should be") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            raw = load(f.read(OWNER_LIMIT + 1))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        old, target = raw.get("from"), raw.get("to")
        return Owner(int(raw["pid"]), int(raw["start"]), str(raw["boot"]), int(raw["copy"]),
                     check_version(str(old)) if old else None, check_version(str(target)) if target else None)
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError, PycorError) as e:
        raise PycorError(f"{path} is not as pycor writes it ({e})", "only host root writes there: see what did; "
                         "remove the directory if the container's layer is as it should be") from None


def record(copy_rootfs: str, old: str | None, target: str) -> None:
    """Make the upgrade's record once its copy is ready, before the swap: owner.json in the scratch, written whole."""
    from .runstate import proc_start_time

    fd = _open_dir(copy_rootfs)  # the scratch
    try:
        copy = os.stat(layer.PYCOR_DIR, dir_fd=fd, follow_symlinks=False).st_ino
        pid = os.getpid()
        owner = Owner(pid, proc_start_time(pid) or 0, _boot_id(), copy, old, target)
        new = f"{OWNER}.new"
        wfd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        with os.fdopen(wfd, "w", encoding="utf-8") as f:
            f.write(owner.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(new, OWNER, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_in_scratch(rootfs: str, owner: Owner) -> bool:
    """Whether the scratch's .pycor is the upgrade's copy (not swapped in, or swapped back), not the old layer."""
    try:
        return os.lstat(os.path.join(scratch_path(rootfs), layer.PYCOR_DIR)).st_ino == owner.copy
    except FileNotFoundError:
        return False


def swap(rootfs: str) -> None:
    """The container's .pycor and the scratch's change places in one rename (both ways alike)."""
    fd = _open_dir(rootfs)
    try:
        parent, name = _open_scratch_parent(rootfs)
        try:
            aside = linux.open_beneath(parent, name, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(parent)
        try:
            other = linux.open_beneath(aside, layer.PYCOR_DIR, os.O_PATH | os.O_NOFOLLOW)
            try:
                if not stat.S_ISDIR(os.fstat(other).st_mode):
                    raise PycorError(f"{scratch_path(rootfs)}/{layer.PYCOR_DIR} is not a directory",
                                     "it was not left by pycor: remove it")
            finally:
                os.close(other)
            linux.renameat2(aside, layer.PYCOR_DIR, fd, layer.PYCOR_DIR, linux.RENAME_EXCHANGE)
            os.fsync(fd)
            os.fsync(aside)
        finally:
            os.close(aside)
    finally:
        os.close(fd)


def _tidy(rootfs: str) -> str | None:
    """discard, saying what was left instead of failing: the container no longer needs the scratch."""
    try:
        discard(rootfs)
        return None
    except PycorError as e:
        log.warning("%s (%s)", e.message, e.hint)
        return e.message


def commit(rootfs: str) -> None:
    """The commit point: owner.json goes (durably); then the old layer."""
    fd = _open_dir(scratch_path(rootfs))
    try:
        os.unlink(OWNER, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    faults.point("upgrade-committed")
    _tidy(rootfs)


def undo(rootfs: str) -> None:
    """Swap the old layer back (the container exactly as before) and remove the copy."""
    swap(rootfs)
    _tidy(rootfs)


def recover(name: str, rootfs: str, starting: bool) -> str | None:
    """What an upgrade of the container left calls for, its layer lock held and the container not running, told
    by host root's files alone (the scratch, beside the rootfs directory, out of the tenant's reach).

    No owner.json (no upgrade, one being staged or committed): the scratch goes. An upgrade whose copy is in
    the scratch never swapped it in (or swapped it back): the scratch goes, unless its process runs. One whose
    copy was swapped in: nothing (this process's), the upgrade's own start goes on (starting, its process alive),
    another command refuses (InUse), and one whose process is gone is undone. Returns what was done, to say."""
    owner = read_owner(rootfs)
    if owner is not None and owner.mine():
        return None
    if owner is None:
        return _tidy(rootfs) if has_scratch(rootfs) else None
    swapped = not _copy_in_scratch(rootfs, owner)
    if owner.alive():
        if starting and swapped:
            return None  # the upgrade's own start
        raise InUse(f"container {name}: {owner.shown()} is in progress",
                    "wait for it to finish (it stops the container again), then run this again")
    if not swapped:
        return _tidy(rootfs)  # killed before its copy became the container's layer, or after it was swapped back
    swap(rootfs)
    left = _tidy(rootfs)
    on = f" (version {owner.old})" if owner.old else ""
    return f"{owner.shown()} was interrupted: its old layer{on} is back, as before the upgrade" + (f"; {left}" if left else "")


# -- in the container ----------------------------------------------------------------------------


def _exec(rt: Runtime, name: str, script: str, seconds: float, relay: bool) -> tuple[int | None, str, list[str]]:
    """Run script in the running container (Runtime.exec: bounded whatever the container does). Returns (exit
    status, None: not done within seconds; the end of what it printed, one line; what apt could not fetch)."""
    ran = rt.exec(name, ["/bin/sh", "-c", script], seconds, relay)
    if ran.hung:
        raise PycorError(f"a process in container {name} kept the upgrade's output open after its command ended: the "
                         "container was stopped and nothing was changed", "start it and see what holds it, then run this again")
    return ran.rc, ran.tail.replace("\n", "; ")[-300:], ran.unreached


def wait_until_up(rt: Runtime, name: str) -> None:
    """Wait until the running container has booted and its network is up (boot_script); a clear error if not."""
    rc, said, _ = _exec(rt, name, boot_script(), BOOT_SECONDS + NETWORK_SECONDS + INIT_SECONDS + 30, relay=False)
    if rc == 0:
        return
    if rc is None:
        raise PycorError(f"container {name} did not answer while it booted for its upgrade; nothing was changed",
                         "start it and see why, then run this again")
    if rc == 3:
        raise no_init(name, f"its first process is {said.removeprefix('init: ') or '?'}, not systemd")
    if rc == 5:
        raise PycorError(f"container {name} started, but its network did not come up within {NETWORK_SECONDS} s ({said}); "
                         "nothing was changed", "start it and see why ('networkctl', 'journalctl -b'), then run this again")
    raise PycorError(f"container {name} did not finish booting for its upgrade (exit {rc}: {said}); nothing was changed",
                     "start it and see why ('systemctl --failed', 'journalctl -b'), then run this again")


def run_apt(rt: Runtime, name: str) -> tuple[int, list[str]]:
    """apt-get update, -f install, full-upgrade and clean in the running container, its output on our stderr;
    returns apt's exit status and what apt said it could not fetch (builder.relay_stderr)."""
    rc, _, unreached = _exec(rt, name, SCRIPT, APT_SECONDS, relay=True)
    if rc is None:
        raise PycorError(f"the upgrade's apt in container {name} did not end within {APT_SECONDS} s: it was killed, "
                         "and the container is unchanged", "see what it waited for (run apt-get full-upgrade in it by hand)")
    return rc, unreached


def run_in(rt: Runtime, name: str) -> None:
    """Start the container, wait until it is up, run apt in it, stop it (also when anything failed)."""
    try:
        rt.start(name)
        faults.point("upgrade-started")
        wait_until_up(rt, name)
        rc, unreached = run_apt(rt, name)
        if rc != 0 or unreached:
            raise failed(rc, unreached)
        faults.point("upgrade-ran")
    finally:
        stop(rt, name)


def stop(rt: Runtime, name: str) -> None:
    """Stop the container: cleanly, else by force."""
    try:
        rt.stop(name)
    except (PycorError, OSError, subprocess.SubprocessError):
        pass
    if rt.state(name) != "STOPPED":
        rt.stop(name, force=True)


def failed(rc: int, unreached: list[str]) -> PycorError:
    """The one error of an upgrade that did not finish: nothing changed in the container."""
    if unreached:
        return PycorError(f"apt could not fetch {', '.join(unreached)} in the container's upgrade (exit {rc}): "
                          "nothing was upgraded and the container is unchanged",
                          "the upgrade runs in the container, on its own network and name servers: make its apt "
                          "sources reachable from it, then run the same command again")
    return PycorError(f"the upgrade of the container's own packages failed (exit {rc}); the container is unchanged",
                      "the output above says why; fix it and run the same command again")


# -- what it did ------------------------------------------------------------------------------------


def package_versions(upper_fd: int) -> dict[str, str]:
    """name -> version of what the container's own dpkg status holds installed (bounded read)."""
    from . import depcheck
    from .reconcile import STATUS_LIMIT

    try:
        fd = linux.open_beneath(upper_fd, STATUS, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(STATUS_LIMIT)
    return {p.name: p.version for p in depcheck.installed(data)}


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What an upgrade did to the packages: "perl 5.36.0-7 -> 5.40.1-6", "postgresql-17 (new) -> 17.12", "x 1 -> (removed)"."""
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old != new:
            out.append(f"{name} {old or '(new)'} -> {new or '(removed)'}")
    return out


def note(rootfs_fd: int, changes: list[str], target: str) -> None:
    """The layer's record: the move's breaks are gone (the upgrade mended them), and what the upgrade did."""
    from . import reconcile

    record = reconcile.read_findings(rootfs_fd)
    findings = [f for f in record.get("findings", []) if f.get("kind") != "breaks"]
    shown = ", ".join(changes[:20]) + (f" and {len(changes) - 20} more" if len(changes) > 20 else "")
    findings.append({"path": "/" + STATUS, "kind": "upgraded",
                     "detail": f"its own packages brought to version {target}: " + (shown or "none needed a change")})
    record["findings"] = findings
    reconcile.write_findings(rootfs_fd, record)
