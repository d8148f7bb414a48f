"""Bringing a container's own packages along when it moves to another base version (`pycor rebase NAME --upgrade`).

A move merges dpkg's database, but the packages a container installed itself
keep their versions over the new base's: after a release upgrade of the base
perl needs the old perl-base, the old locales break the new libc6, and the
container's programs die. Upgrading in place (apt full-upgrade) would have
brought them along; this does the same on the container's layer, all or
nothing, before the container runs on the new version:

1. stage: a copy of the container's layer (its .pycor: upper, layer.json,
   conflicts.json, a fresh workdir) in ROOTFS/.pycor-upgrade/rootfs/.pycor,
   on the container's own filesystem; the base is never copied;
2. move the copy to the target version (reconciliation, which would break
   the packages: that is what comes next);
3. upgrade its own packages on the target version, in a throwaway LXC
   container whose rootfs is the copy (pycor's own hooks mount it over the
   target version, with the container's idmap), on the host's network with
   the builder's runtime (a tmpfs /run, the host's name servers, apt's lists
   and downloads outside the layer, no question on a changed conffile, no
   service started): apt-get update, -f install, full-upgrade, clean;
4. check: apt-get check on the result (depcheck) says nothing the base alone
   does not;
5. commit: the container's .pycor and the copy's swap places with one
   renameat2(RENAME_EXCHANGE); the old layer goes.

Any failure before 5 (a fetch, a maintainer script, a result that still
breaks, a kill) leaves the container exactly as it was; what a killed run
leaves in ROOTFS/.pycor-upgrade is removed by the next one (and is never
seen by the container: the overlay is mounted over ROOTFS). The throwaway
container's config lives in a staging directory of the store, whose
recovery stops it if the command was killed; its lxcpath is host root's,
under /run/pycor/upgrades: nothing host root reads as config is ever in the
container's rootfs directory, which a daemon's file API writes while the
container is stopped. Its lxcpath is never recorded as one pycor has seen.

Not a hot path: the CLI uses this, never a hook.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

from . import builder, layer, linux
from .errors import PycorError, Unsupported
from .idmap import IdMap
from .lxcconfig import LXC_CONFIG_DIR, hook_lines, line
from .staging import RUN_UPGRADES
from .store import Store, hooks_dir

SCRATCH = layer.UPGRADE_DIR  # beside .pycor in the container's rootfs directory
NAME = "upgrade"  # the throwaway container's name, in its own lxcpath
STATUS = "var/lib/dpkg/status"
# What an in-place `apt full-upgrade` does, without questions. -f install first: a container whose
# packages the move left broken needs apt to fix them before it will upgrade anything.
SCRIPT = ("set -e; export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "
          "apt-get -q -o Dpkg::Use-Pty=0 update; apt-get -q -y -o Dpkg::Use-Pty=0 -f install; "
          "apt-get -q -y -o Dpkg::Use-Pty=0 full-upgrade; apt-get -q clean")


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


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def discard(rootfs: str) -> None:
    """Remove what an earlier upgrade left in ROOTFS/.pycor-upgrade (never following a symlink)."""
    fd = _open_dir(rootfs)
    try:
        try:
            os.stat(SCRATCH, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        shutil.rmtree(SCRATCH, dir_fd=fd)
    finally:
        os.close(fd)


def _make_like(parent: int, name: str, like: os.stat_result) -> None:  # a directory with like's owner and mode
    os.mkdir(name, 0o700, dir_fd=parent)
    os.chown(name, like.st_uid, like.st_gid, dir_fd=parent, follow_symlinks=False)
    os.chmod(name, stat.S_IMODE(like.st_mode), dir_fd=parent, follow_symlinks=False)


def stage(lay: layer.OpenLayer, mapped_root: tuple[int, int] | None) -> str:
    """A copy of the container's layer, for the throwaway container: returns the rootfs directory holding it.

    The whole .pycor is copied (GNU tar through tario: owners, xattrs, whiteouts kept): upper, layer.json,
    the conflicts record, files pushed while it was stopped (its inbox), anything later pycor keeps there;
    the workdir's contents are not (overlayfs's scratch space). ROOTFS/.pycor-upgrade is root's (0700), or
    its group is the container's mapped root (0710), so an unprivileged container's root reaches the copy
    as it reaches its own layer.
    """
    from . import tario
    from .proc import Progress

    if lay.meta.volumes:
        raise Unsupported(f"{lay.rootfs} has volumes, which an upgrade of the container's packages cannot stage",
                          "move it without --upgrade ('pycor rebase NAME --force') and run apt-get full-upgrade inside")
    rootfs_fd = _open_dir(lay.rootfs)
    try:
        os.mkdir(SCRATCH, 0o700, dir_fd=rootfs_fd)
        if mapped_root is not None:
            os.chown(SCRATCH, 0, mapped_root[1], dir_fd=rootfs_fd, follow_symlinks=False)
            os.chmod(SCRATCH, 0o710, dir_fd=rootfs_fd, follow_symlinks=False)
        scratch = _open_dir(os.path.join(lay.rootfs, SCRATCH))
        try:
            _make_like(scratch, "rootfs", os.fstat(rootfs_fd))
            inner = linux.open_beneath(scratch, "rootfs", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.mkdir(layer.PYCOR_DIR, 0o700, dir_fd=inner)  # tar gives it the original's owner and mode
            finally:
                os.close(inner)
        finally:
            os.close(scratch)
        pycor = linux.open_beneath(rootfs_fd, layer.PYCOR_DIR, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(rootfs_fd)
    target = os.path.join(lay.rootfs, SCRATCH, "rootfs")
    try:
        tario.copy_tree(linux.shared_fd_path(pycor), os.path.join(target, layer.PYCOR_DIR), Progress())
    finally:
        os.close(pycor)
    work = _open_dir(os.path.join(target, layer.WORK))
    try:
        for entry in os.listdir(work):
            if stat.S_ISDIR(os.stat(entry, dir_fd=work, follow_symlinks=False).st_mode):
                shutil.rmtree(entry, dir_fd=work)
            else:
                os.unlink(entry, dir_fd=work)
    finally:
        os.close(work)
    return target


def config(store: Store, base: str, rootfs: str, support: str, view: list[str], idmap: IdMap | None) -> str:
    """The throwaway container's LXC config: the copy over the target version, the container's idmap,
    the host's network, the builder's runtime (support: where its files are, view: upper over the
    target version's layers, for where /etc/resolv.conf leads)."""
    lines = [
        line("lxc.rootfs.path", f"dir:{rootfs}"),
        line("lxc.include", os.path.join(LXC_CONFIG_DIR, "common.conf")),
    ]
    if idmap is not None:
        lines.append(line("lxc.include", os.path.join(LXC_CONFIG_DIR, "userns.conf")))
        lines += [line("lxc.idmap", f"{e.kind} {e.nsid} {e.hostid} {e.range}") for e in idmap.entries]
        # an unprivileged container cannot mount a sysfs in the host's network namespace; apt needs none
        lines += ["lxc.mount.auto =", line("lxc.mount.auto", "proc:mixed cgroup:mixed")]
    lines += [
        line("lxc.net.0.type", "none"),  # the host's network, as a builder's
        line("lxc.uts.name", "pycor-upgrade"),
        line("lxc.apparmor.profile", "unconfined"),
        line("lxc.environment", "DEBIAN_FRONTEND=noninteractive"),
        line("lxc.environment", "APT_LISTCHANGES_FRONTEND=none"),
        *hook_lines(hooks_dir(), store.hook_arg, privileged=idmap is None),
        *store.base(base).lxc,
        *builder.runtime_mounts(view, support),
        # what apt and maintainer scripts leave in /tmp is no part of the container
        line("lxc.mount.entry", "tmpfs tmp tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0"),
    ]
    return "\n".join(lines) + "\n"


def prepare(store: Store, base: str, staging: str, rootfs: str, b_layers: list[str], idmap: IdMap | None) -> str:
    """The throwaway container for the copy at rootfs; returns its lxcpath.

    Its lxcpath and config are host root's, in RUN_UPGRADES (an unprivileged container's root must
    traverse its container directory; the store is root's alone), never in ROOTFS: a daemon's file
    API writes into a stopped container's rootfs directory, so a config there could gain a hook
    line between this write and LXC's read, and a link there could lead the store's recovery to
    another lxcpath. staging/lxc links there, so the store's recovery stops the container if this
    command is killed. The builder's files (bind mount sources) are staged with it, unless the
    container is unprivileged: its root must reach and write them, so they live beside the copy in
    ROOTFS/.pycor-upgrade (LXC resolves those sources as that root).
    """
    support = os.path.dirname(rootfs) if idmap is not None else staging
    builder.write_builder_files(support)
    os.makedirs(RUN_UPGRADES, 0o711, exist_ok=True)
    os.chmod(RUN_UPGRADES, 0o711)
    lxcpath = os.path.join(RUN_UPGRADES, os.path.basename(staging))
    os.mkdir(lxcpath, 0o711)
    os.symlink(lxcpath, os.path.join(staging, "lxc"))
    os.mkdir(os.path.join(lxcpath, NAME), 0o711)
    if idmap is not None:
        uid, gid = idmap.root()
        for folder, _, files in os.walk(os.path.join(support, builder.APT_DIR)):
            for path in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(path, uid, gid, follow_symlinks=False)  # apt writes its lists and downloads there
    view = [os.path.join(rootfs, layer.UPPER), *b_layers]
    fd = os.open(os.path.join(lxcpath, NAME, "config"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(config(store, base, rootfs, support, view, idmap))
    return lxcpath


def forget(lxcpath: str) -> None:
    """Remove the throwaway container's lxcpath (its container has stopped)."""
    shutil.rmtree(lxcpath, ignore_errors=True)


def sweep() -> None:
    """Remove the lxcpaths killed upgrades left in RUN_UPGRADES (named after their staging: LABEL.PID.RANDOM).

    Run after the store's sweep_staging, which stops their containers."""
    try:
        entries = os.listdir(RUN_UPGRADES)
    except FileNotFoundError:
        return
    for entry in entries:
        parts = entry.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            forget(os.path.join(RUN_UPGRADES, entry))


def run(lxcpath: str) -> tuple[int, list[str]]:
    """apt-get update, -f install, full-upgrade and clean in the throwaway container, its output on our stderr;
    returns its exit status and what apt said it could not fetch (builder.relay_stderr)."""
    sys.stderr.flush()
    proc = subprocess.Popen(["lxc-execute", "-n", NAME, "-P", lxcpath, "--", "/bin/sh", "-c", SCRIPT],
                            stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        unreached = builder.relay_stderr(proc.stderr)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, unreached


def tidy(rootfs: str, b_layers: list[str], had_policy: bool) -> None:
    """What LXC made in the copy's upper only to mount on (the policy-rc.d binding) is no change of the container's."""
    if had_policy:
        return  # the container's own policy-rc.d: left as it is
    upper = _open_dir(os.path.join(rootfs, layer.UPPER))
    try:
        builder._drop_mount_points(upper, b_layers)
    finally:
        os.close(upper)


def has_policy(upper_fd: int) -> bool:
    return _lstat_beneath(upper_fd, builder.POLICY_RC_D) is not None


def failed(rc: int, unreached: list[str]) -> PycorError:
    """The one error of an upgrade that did not finish: nothing changed in the container."""
    if unreached:
        return PycorError(f"apt could not fetch {', '.join(unreached)} in the container's upgrade (exit {rc}): "
                          "nothing was upgraded and the container is unchanged",
                          "the upgrade uses the host's network and name servers: make the container's apt sources "
                          "reachable from the host, then run the same command again")
    return PycorError(f"the upgrade of the container's own packages failed (exit {rc}); the container is unchanged",
                      "the output above says why; fix it and run the same command again")


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
    """The copy's record: the move's breaks are gone (the upgrade mended them), and what the upgrade did."""
    from . import reconcile

    record = reconcile.read_findings(rootfs_fd)
    findings = [f for f in record.get("findings", []) if f.get("kind") != "breaks"]
    shown = ", ".join(changes[:20]) + (f" and {len(changes) - 20} more" if len(changes) > 20 else "")
    findings.append({"path": "/" + STATUS, "kind": "upgraded",
                     "detail": f"its own packages brought to version {target}: " + (shown or "none needed a change")})
    record["findings"] = findings
    reconcile.write_findings(rootfs_fd, record)


def commit(rootfs: str) -> None:
    """The commit point: the container's .pycor and the upgraded copy's swap places in one rename; the old one goes."""
    fd = _open_dir(rootfs)
    try:
        inner = linux.open_beneath(fd, f"{SCRATCH}/rootfs", os.O_RDONLY | os.O_DIRECTORY)
        try:
            from . import faults

            faults.point("upgrade-staged")
            linux.renameat2(inner, layer.PYCOR_DIR, fd, layer.PYCOR_DIR, linux.RENAME_EXCHANGE)
            os.fsync(fd)
        finally:
            os.close(inner)
        faults.point("upgrade-committed")
        shutil.rmtree(SCRATCH, dir_fd=fd)
    finally:
        os.close(fd)
