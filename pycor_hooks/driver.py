"""The pycor storage driver: one API over bases and container layers.

Shaped like LXD's storage driver interface. The front ends (hooks, LXC
template, CLI) call this; they do not reach around it to the filesystem.

Volumes are container layers (see layer.py), addressed by their rootfs
directory. Starting a volume is split in two, as LXC's hooks are:
prepare_start() runs on the host as real root (pre-start) and writes a run
state under /run/pycor naming the lower stack; mount_volume() runs in the
container's mount namespace (pre-mount) and mounts the overlay from it.

Hot path: hooks import this module; keep its imports cheap.
"""

from __future__ import annotations

import os
import time

from . import faults, layer, locks, overlay, runstate
from .errors import Conflict, Damaged, InUse, NotFound, PycorError
from .flatjson import Record, read_json, write_json
from .layer import LayerMeta
from .runstate import RunState, is_live
from .store import Store, setting

TYPE_CHECKING = False  # typing costs a start 2 ms; type checkers read this as True
if TYPE_CHECKING:
    from collections.abc import Callable

    from .daemon import Daemon
    from .diff import Difference
    from .idmap import IdMap
    from .reconcile import Plan
    from .spec import ContainerSpec
    from .upgrade import Runtime


class Registration(Record):
    """A container layer the store knows about (written at create and at each start), and what its creator chose.

    base, ephemeral, size and volumes are what pycor made the layer with (create, adopt, `pycor set`), or
    what its layer.json said at the first start this host saw (a copy or an image from elsewhere).
    layer.json belongs to the layer's owner, and a daemon's file API writes into a stopped container's
    rootfs directory: a layer.json that later says otherwise is refused (Driver.check_choices), so no push
    into .pycor moves a container onto another base or past its limits. identity: the rootfs directory
    itself (inode and birth time, neither of which a writer inside it can change): a container made anew
    at the same path is another one, whose record replaces this.
    """

    __slots__ = ("name", "rootfs", "runtime", "lxcpath", "identity", "base", "ephemeral", "size", "volumes")
    name: str
    rootfs: str
    runtime: str  # "lxc" or "lxd"
    lxcpath: str | None
    identity: str | None  # None: recorded by an older pycor, or not a record of a layer (a listing's entry)
    base: str | None
    ephemeral: bool
    size: int | None
    volumes: list[str]

    def __init__(self, name: str, rootfs: str, runtime: str, lxcpath: str | None, identity: str | None = None,
                 base: str | None = None, ephemeral: bool = False, size: int | None = None,
                 volumes: list[str] | None = None) -> None:
        super().__init__(name, rootfs, runtime, lxcpath, identity, base, ephemeral, size, list(volumes or []))

    def chosen(self, rootfs_fd: int, meta: LayerMeta) -> Registration:
        """This record with the identity of the open rootfs directory and the choices meta holds."""
        return Registration(self.name, self.rootfs, self.runtime, self.lxcpath, layer_identity(rootfs_fd), meta.base,
                            meta.ephemeral, meta.size, meta.volumes)

    def differences(self, meta: LayerMeta) -> list[str]:
        """'KEY: RECORDED, layer.json says NOW' for each choice meta does not keep."""
        return [f"{key}: {getattr(self, key)!r}, layer.json says {getattr(meta, key)!r}"
                for key in ("base", "ephemeral", "size", "volumes") if getattr(self, key) != getattr(meta, key)]


def registration_from_json(raw: dict) -> Registration:
    size = raw.get("size")
    return Registration(str(raw["name"]), str(raw["rootfs"]), str(raw["runtime"]), raw.get("lxcpath"),
                        str(raw["identity"]) if raw.get("identity") else None,
                        str(raw["base"]) if raw.get("base") else None, bool(raw.get("ephemeral", False)),
                        int(size) if size is not None else None, [str(v) for v in raw.get("volumes", [])])


def layer_identity(rootfs_fd: int) -> str:
    """The rootfs directory itself: its inode and birth time (a directory made anew at its path has others)."""
    from .linux import birth_time

    try:
        born = birth_time(rootfs_fd)
    except OSError:
        born = None
    return f"{os.fstat(rootfs_fd).st_ino}:{born if born is not None else ''}"


def parse_idmap(config_text: str | None) -> IdMap | None:
    """The idmap of a container config's text, or None for a privileged container (no lxc.idmap lines)."""
    if not config_text or ("lxc.idmap" not in config_text and "lxc.id_map" not in config_text):
        return None  # privileged: skip importing the idmap module
    from .idmap import IdMap

    idmap = IdMap.parse_lxc_config(config_text)
    return None if idmap.is_empty else idmap.check()


def check_layer_digest(store: Store, name: str, meta: LayerMeta) -> None:
    """Refuse to run a layer's changes on a version that is not the one they were made on (one read).

    A layer without a recorded digest (older pycor), or a version without one
    (published before digests), passes.
    """
    if not meta.digest or not meta.based_on:
        return
    fix = (f"import that version from the host the container came from: there, 'pycor base export {meta.base} "
           f"--version {meta.based_on} -o FILE', here 'pycor base import {meta.base} --from-export FILE'")
    try:
        ours = store.recorded_digest(meta.base, meta.based_on)
    except NotFound:
        numbers = [int(e) for e in os.listdir(os.path.join(store.base_dir(meta.base), "versions")) if e.isdigit()]
        if numbers and int(meta.based_on) < max(numbers):
            return  # removed here by gc: the move to a newer version goes on without a common ancestor
        raise NotFound(f"container {name}: its changes were made on base {meta.base} version {meta.based_on} "
                       f"(digest {meta.digest[:16]}), which this host does not have", fix) from None
    if ours and ours != meta.digest:
        raise PycorError(f"container {name}: its changes were made on base {meta.base} version {meta.based_on} "
                         f"with digest {meta.digest[:16]}, but that version here has digest {ours[:16]}: "
                         "another tree under the same number", fix)


def layer_id(base: str, layer_path: str) -> str:
    """A name for one base layer directory: BASE.VERSION.DEV.INODE.

    The inode makes it unique on this host: a base removed and imported
    again, or the same base name in another store, gets other views.
    """
    st = os.stat(layer_path, follow_symlinks=False)
    return f"{base}.{os.path.basename(os.path.dirname(layer_path))}.{st.st_dev:x}.{st.st_ino:x}"


def check_layer_owner(st: os.stat_result, idmap: IdMap, name: str, rootfs: str, unshifted: bool = False) -> None:
    """upper and work must belong to container root, or the overlay mounted in its namespace cannot write.

    unshifted: the daemon mounts the rootfs idmapped, so container root's files are host root's on disk.
    """
    root_uid, root_gid = (0, 0) if unshifted else idmap.root()
    if (st.st_uid, st.st_gid) != (root_uid, root_gid):
        if unshifted:
            raise PycorError(
                f"container {name}: {rootfs}/.pycor/upper and work belong to {st.st_uid}:{st.st_gid}, but the daemon "
                "mounts this container's rootfs idmapped, so its root's files are 0:0 on disk",
                "the layer was shifted by hand or by another daemon: shift it back to 0:0, or create the container again",
            )
        raise PycorError(
            f"container {name}: {rootfs}/.pycor/upper and work belong to {st.st_uid}:{st.st_gid}, "
            f"not to container root {root_uid}:{root_gid} of its idmap",
            "create the container unprivileged ('lxc-create -t pycor ... -- --unprivileged') or chown its layer to the mapped root",
        )


class Driver:
    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()

    @property
    def registry_dir(self) -> str:
        return os.path.join(self.store.root, "volumes")

    # -- volumes: create, inspect, delete ------------------------------------
    def create_volume(self, spec: ContainerSpec, rootfs: str, uid: int = 0, gid: int = 0,
                      lxcpath: str | None = None) -> None:
        """Make a new container's layer in its (empty) rootfs directory: upper, work, metadata, its volumes'
        directories and its quota; register it. uid, gid: the host ids of container root."""
        self.check_place(spec.name, rootfs, lxcpath, adopt=False)
        self.store.require(spec.base)
        if spec.pin:
            self.store.version(spec.base, spec.pin)
        on = spec.pin or self.store.current(spec.base)
        if spec.volumes:
            from . import volumes

            # where the spec meets the store: a volume path the base makes a symlink or a file could never be mounted
            volumes.check_in_base(spec.volumes, self.store.lower_stack(spec.base, on), f"base {spec.base} version {on}")
        meta = LayerMeta(spec.base, spec.pin, on, self.store.version_digest(spec.base, on), spec.volumes, spec.ephemeral,
                         spec.size if spec.ephemeral else None, xattrs="user" if uid else "trusted")
        layer.create_layer(rootfs, meta, uid, gid)
        faults.point("create.layer")
        if spec.volumes and not spec.ephemeral:  # an ephemeral container's volumes live in its in-memory layer
            volumes.create_dirs(rootfs, len(spec.volumes), uid, gid)
        if spec.size and not spec.ephemeral:
            from . import quota

            quota.set_limit(rootfs, spec.size)
        self.record_choices(Registration(spec.name, rootfs, spec.runtime, lxcpath), meta)

    def adopt_volume(self, name: str, rootfs: str, base: str, uid: int | None = 0, gid: int | None = 0,
                     runtime: str = "lxc", lxcpath: str | None = None, register: bool = True) -> LayerMeta:
        """Take over an existing layer whose container config was lost, changing nothing in it.

        Checked in full first: layer.json readable (no symlink followed),
        naming this base, which exists (and its pin, if pinned); upper and work
        owned by container root (uid, gid; None skips that check).
        """
        if not os.path.lexists(os.path.join(rootfs, layer.PYCOR_DIR)):
            raise NotFound(f"nothing to adopt: {rootfs} holds no pycor layer", "drop --adopt to create a new container")
        self.check_place(name, rootfs, lxcpath, adopt=True)
        with layer.OpenLayer(rootfs) as lay:
            meta = lay.meta
            owners = [os.fstat(fd) for fd in ((lay.work_fd, lay.upper_fd) if uid else (lay.work_fd,))]
            chosen = Registration(name, rootfs, runtime, lxcpath).chosen(lay.rootfs_fd, meta)
        if meta.base != base:
            raise Conflict(f"the layer in {rootfs} runs on base {meta.base!r}, not {base!r}",
                           f"adopt it with --base {meta.base}")
        self.store.require(base)
        if meta.pin:
            self.store.version(base, meta.pin)
        if uid is not None and any((st.st_uid, st.st_gid) != (uid, gid) for st in owners):
            raise Conflict(f"{rootfs}/{layer.UPPER} and work belong to {owners[0].st_uid}:{owners[0].st_gid}, "
                           f"not to container root {uid}:{gid}",
                           "adopt it as it was created: with --unprivileged if its ids are mapped, without if not")
        if register:  # the admin's word: the record of what the layer runs on is what it says now
            self.register(chosen, replace=True)
        return meta

    def check_place(self, name: str, rootfs: str, lxcpath: str | None, adopt: bool) -> None:
        """Refuse a rootfs (a panel's --dir or -P) in the store, in a daemon's storage, in or around another
        container's layer, or (adopt) another container's very layer while that container still exists: its
        changes are not this one's to read, and removing this container (lxc-destroy) would remove them."""
        real = os.path.realpath(rootfs)
        if os.path.basename(real).startswith(layer.UPGRADE_DIR + "."):
            raise Conflict(f"container {name}: its rootfs {rootfs} would be named as another container's upgrade "
                           "scratch (see 'pycor rebase --upgrade')", "give a directory of another name (--dir, -P)")

        def within(inner: str, outer: str) -> bool:
            return inner == outer or inner.startswith(outer.rstrip("/") + "/")

        for top, what in [(self.store.root, f"pycor's store {self.store.root}")] + [(d, f"{d}, the daemon's own storage")
                                                                                   for d in layer.DAEMON_DIRS]:
            if within(real, os.path.realpath(top)):
                raise Conflict(f"container {name}: its rootfs {rootfs} would be in {what}",
                               "give a directory of its own (--dir, -P) outside it")
        for reg in self.registrations():
            theirs = os.path.realpath(reg.rootfs)
            if real == theirs and not adopt:
                continue  # its own path: create's own checks refuse a name taken, or a layer left there (--adopt)
            if real == theirs:
                lost = reg.runtime == "lxc" and reg.lxcpath is not None and \
                    not os.path.exists(os.path.join(reg.lxcpath, reg.name, "config"))
                if (reg.name == name and reg.lxcpath == lxcpath) or lost:
                    continue  # its own layer, or that of a container whose config was lost: what --adopt is for
                raise Conflict(f"container {name}: the layer in {rootfs} is container {reg.name}'s, which still exists",
                               f"adopt a layer only when its container's config is lost; copy {reg.name} instead "
                               f"('lxc-copy -n {reg.name} -N {name}')")
            if within(real, theirs) or within(theirs, real):
                raise Conflict(f"container {name}: its rootfs {rootfs} would be in or around container {reg.name}'s "
                               f"layer ({reg.rootfs})", "give a directory of its own (--dir, -P) outside every container's")

    def volume_meta(self, rootfs: str) -> LayerMeta:
        fd = layer.open_rootfs(rootfs)
        try:
            return layer.read_meta(fd, rootfs)
        finally:
            os.close(fd)

    def volume_version(self, meta: LayerMeta, state: RunState | None) -> str:
        """The base version a container is on: the one its live run state (run_state) started it on, else its pin,
        else current."""
        return state.version if state and is_live(state) else (meta.pin or self.store.current(meta.base))

    def run_state(self, name: str, rootfs: str) -> RunState | None:
        """The record of the container's start, live or stale (see runstate.is_live), or None."""
        return runstate.read(name, rootfs)

    def running_states(self) -> list[RunState]:
        return runstate.running_states()

    def stale_states(self) -> list[RunState]:
        return runstate.stale_states()

    def require_stopped(self, name: str, rootfs: str, runtime_state: str, what: str, how: str) -> None:
        """Refuse unless the container is stopped (no live run state, its runtime says STOPPED) and no overlay
        clone of it runs on its layer. Holding locks.layer_lock(rootfs): StoppedLayer is the one caller."""
        state = runstate.read(name, rootfs)
        if (state is not None and is_live(state)) or runtime_state != "STOPPED":
            shown = "running" if runtime_state == "STOPPED" else runtime_state.lower()
            raise InUse(f"container {name} is {shown}: pycor {what} needs it stopped", f"stop it first ({how})")
        clones = self.layer_users(rootfs, name)
        if clones:
            raise InUse(f"container {name} is stopped, but {clones[0].name} runs on its layer (an LXC overlay clone of it): "
                        f"pycor {what} needs that stopped too", f"stop {clones[0].name} first (lxc-stop -n {clones[0].name})")

    def layer_users(self, rootfs: str, other_than: str) -> list[RunState]:
        """Live starts of other containers on this layer: LXC overlay clones, whose lowerdir it is."""
        real = os.path.realpath(rootfs)
        return [s for s in runstate.running_states()
                if s.name != other_than and os.path.realpath(s.rootfs) == real and is_live(s)]

    def open_layer(self, name: str, rootfs: str, shown: str | None = None, changing: tuple[str, ...] = ()) -> layer.OpenLayer:
        """layer.OpenLayer, whose failure names an interrupted reset and the command that finishes it, checked against
        what its creator chose (check_choices). name: as its run state and registration know it; shown: in messages;
        changing: choices the caller is about to record anew (`pycor set`: a run killed between its two writes is
        finished by running it again)."""
        try:
            lay = layer.OpenLayer(rootfs)
        except PycorError:
            name = shown or name
            aside = [d for d in (layer.UPPER, layer.WORK) if os.path.lexists(os.path.join(rootfs, d + layer.RESET_ASIDE))]
            if aside:
                owner = name
                if layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):  # a clone's start: the original's layer
                    owner = os.path.basename(os.path.dirname(rootfs))
                raise PycorError(f"container {owner}: a 'pycor reset' was interrupted ({rootfs}/{aside[0]}{layer.RESET_ASIDE} "
                                 "holds the changes it was discarding)", f"finish it: 'pycor reset {owner}'") from None
            raise
        try:
            self.check_choices(name, lay, shown or name, changing)
        except BaseException:
            lay.__exit__()
            raise
        return lay

    def _registration_path(self, name: str, rootfs: str) -> str:
        return os.path.join(self.registry_dir, runstate.volume_key(name, rootfs) + ".json")

    def _registration(self, name: str, rootfs: str) -> Registration | None:
        try:
            return registration_from_json(read_json(self._registration_path(name, rootfs)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, PycorError):
            return None  # damaged (the store is root's): the next start records it again

    def check_choices(self, name: str, lay: layer.OpenLayer, shown: str, changing: tuple[str, ...] = ()) -> None:
        """Refuse a layer.json that no longer says what the container was made with (base, ephemeral, size,
        volumes): it belongs to the layer's owner, and a daemon writes into a stopped container's rootfs directory
        (`lxc file push FILE NAME/.pycor/layer.json`), so pycor's record in the store (Registration) is the word."""
        reg = self._registration(name, lay.rootfs)
        if reg is None or reg.base is None or reg.identity != layer_identity(lay.rootfs_fd):
            return  # not seen here yet, or a new container at an old one's path: its first start records it
        changed = [d for d in reg.differences(lay.meta) if d.split(":")[0] not in changing]
        if changed:
            raise Damaged(f"container {shown}: {lay.rootfs}/{layer.META} no longer says what the container was made with "
                          f"({'; '.join(changed)}): something other than pycor wrote it, such as a file pushed into "
                          "its .pycor while it was stopped",
                          f"put back what pycor wrote ({', '.join(f'{k}: {getattr(reg, k)!r}' for k in ('base', 'ephemeral', 'size', 'volumes'))}); "
                          f"if this really is another container made by hand at the same path, remove {self._registration_path(name, lay.rootfs)}")

    def record_choices(self, reg: Registration, meta: LayerMeta) -> None:
        """Record what the admin chose for a layer (create, `pycor set`): its later layer.json must say the same."""
        fd = layer.open_rootfs(reg.rootfs)
        try:
            self.register(reg.chosen(fd, meta), replace=True)
        finally:
            os.close(fd)

    def stopped_layer(self, name: str, rootfs: str, runtime_state: Callable[[], str], what: str, how: str,
                      shown: str | None = None, open_layer: bool = True,
                      report: Callable[[str], None] | None = None) -> StoppedLayer:
        """The one way to a writer of a container's layer (rebase, resolve --base, reset, commit): see StoppedLayer.
        report: where to say what an interrupted upgrade of the container called for."""
        return StoppedLayer(self, name, rootfs, runtime_state, what, how, shown or name, open_layer, report)

    def register(self, reg: Registration, replace: bool = False) -> None:
        """Remember a layer (gc, doctor and ls find it) and, with its identity, what it was made with. A record of
        the same rootfs directory that already holds the choices is kept, unless replace (the admin's word)."""
        if (reg.lxcpath and reg.lxcpath.startswith(self.store.staging_dir + "/")):
            return  # a builder: never a layer or an lxcpath to remember
        os.makedirs(self.registry_dir, mode=0o700, exist_ok=True)
        path = self._registration_path(reg.name, reg.rootfs)
        if not replace:
            old = self._registration(reg.name, reg.rootfs) if os.path.exists(path) else None
            if old is not None and (reg.identity is None or (old.identity == reg.identity and old.base is not None)):
                return
        write_json(path, reg.to_json(), mode=0o600)
        if reg.lxcpath and reg.runtime == "lxc":
            self.store.remember_lxcpath(reg.lxcpath)  # gc looks for copies of layers there, even after this one goes

    def registrations(self) -> list[Registration]:
        """Registered layers that still exist; entries of removed containers are pruned."""
        found = []
        try:
            entries = sorted(os.listdir(self.registry_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.registry_dir, entry)
            try:
                reg = registration_from_json(read_json(path))
            except (OSError, ValueError, KeyError, TypeError, PycorError):
                continue
            if layer.is_layer(reg.rootfs):
                found.append(reg)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # commands run in parallel prune the same records
        return found

    # -- starting and stopping -----------------------------------------------
    def prepare_start(self, name: str, rootfs: str, runtime: str = "lxc", lxcpath: str | None = None,
                      config_text: str | None = None, unshifted: bool = False) -> RunState:
        """pre-start: resolve the base version and its lower stack, record the start.

        For an unprivileged container (lxc.idmap lines in its config, a file
        the container cannot write) the lower stack is made of idmapped views
        of the base layers, shared by every container with the same map.
        unshifted: its daemon mounts the rootfs idmapped and left the layer's
        ids unshifted on disk; the start then also gets a layer mount (mount_layer).
        """
        idmap = parse_idmap(config_text)
        unshifted = unshifted and idmap is not None  # privileged: nothing to map
        monitor = runstate.hook_monitor()
        # The layer lock is held from reading the layer to writing the run
        # state: a reset, commit or diff either finishes first or sees the start.
        with locks.layer_lock(rootfs), self._open_to_start(name, rootfs) as lay:
            try:
                return self._prepare_start(lay, name, runtime, lxcpath, idmap, monitor, unshifted)
            except BaseException:
                if unshifted:  # a start that fails after mounting its layer leaves no mount behind
                    self._unmount_layer(name, rootfs, monitor)
                raise

    def start_privileged(self, name: str, rootfs: str, lxcpath: str | None, config_text: str | None) -> None:
        """pre-mount --prepare: a privileged LXC container's whole start in one hook process.

        prepare_start's work and mount_volume's, on one open layer: a
        privileged start needs nothing done outside the container's mount
        namespace. config_text None: the config could not be read from here,
        as in a user namespace.
        """
        if config_text is None or parse_idmap(config_text) is not None or runstate.in_user_namespace():
            raise PycorError(
                f"container {name} is unprivileged, but its config runs pycor without a pre-start hook "
                "(pre-mount --prepare is for privileged containers)",
                "add lxc.hook.pre-start = .../pycor-pre-start and drop --prepare, or create it again with lxc-create -t pycor",
            )
        with locks.layer_lock(rootfs), self._open_to_start(name, rootfs) as lay:
            state = self._prepare_start(lay, name, "lxc", lxcpath, None, runstate.hook_monitor(in_pre_mount=True))
            self._mount(state, [os.dup(fd) for fd in (lay.rootfs_fd, lay.upper_fd, lay.work_fd)], lay.meta, userxattr=False)

    def _open_to_start(self, name: str, rootfs: str) -> layer.OpenLayer:
        """A start's open layer (its lock held), after what an interrupted upgrade of it calls for: one stat when none.

        An upgrade whose process is gone: the old layer is swapped back, and the start says so; the upgrade's own
        start (its process alive) goes on. An LXC overlay clone of a container being upgraded is refused: its
        origin's layer is its lowerdir.
        """
        lay = self.open_layer(name, rootfs)
        if not os.path.lexists(layer.upgrade_scratch(rootfs)):
            return lay
        lay.__exit__()
        if layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):
            raise InUse(f"container {name} is an overlay clone of the container in {rootfs}, which is being upgraded "
                        "or whose upgrade was interrupted", "start that container once (or 'pycor rebase' it), then this clone")
        said = self.recover_upgrade(name, rootfs, starting=True)
        if said:
            import sys

            line = f"pycor: container {name}: {said}"
            print(line, file=sys.stderr, flush=True)  # LXC files a hook's stdout in the container's log
            if not os.isatty(1) and os.path.sameopenfile(1, 2) is False:
                print(line, flush=True)
        return self.open_layer(name, rootfs)

    def recover_upgrade(self, name: str, rootfs: str, starting: bool = False) -> str | None:
        """What an upgrade of the container left calls for (upgrade.recover), the layer lock held and the container
        stopped; returns what was done, to say (None: nothing)."""
        from . import upgrade

        return upgrade.recover(name, rootfs, starting)

    def recover_upgrades(self) -> list[tuple[bool, str]]:
        """For doctor: every registered container whose upgrade was interrupted (its process gone) and that
        does not run gets its old layer back. (True, what was done), and (False, what is left): an upgrade in
        progress, one whose container still runs."""
        said: list[tuple[bool, str]] = []
        for reg in self.registrations():
            if not os.path.lexists(layer.upgrade_scratch(reg.rootfs)):
                continue
            try:
                with locks.layer_lock(reg.rootfs, wait=False):
                    state = runstate.read(reg.name, reg.rootfs)
                    if state is not None and is_live(state):
                        said.append((False, f"container {reg.name} runs on the copy an upgrade made of its layer: stop "
                                            f"it; its next start, or 'pycor rebase {reg.name}', ends the upgrade"))
                        continue
                    done = self.recover_upgrade(reg.name, reg.rootfs)
                    if done:
                        said.append((True, f"container {reg.name}: {done}"))
            except PycorError as e:  # in progress (InUse), or its layer busy (Busy)
                said.append((False, e.message))
            except OSError as e:
                said.append((False, f"container {reg.name}: its upgrade's scratch {layer.upgrade_scratch(reg.rootfs)}: {e}"))
        return said

    def _prepare_start(self, lay: layer.OpenLayer, name: str, runtime: str, lxcpath: str | None, idmap: IdMap | None,
                       monitor: tuple[int, int], unshifted: bool = False) -> RunState:
        rootfs = lay.rootfs
        # LXC's overlay clone (lxc-copy -e, -s -B overlay): lay is its origin's layer, a lowerdir here, never written
        clone = layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", ""))
        if not clone:
            layer.secure_pycor_dir(lay.rootfs_fd, rootfs, idmap.root() if idmap is not None and not unshifted else None)
        if idmap is not None:
            for fd in (lay.upper_fd, lay.work_fd):
                check_layer_owner(os.fstat(fd), idmap, name, rootfs, unshifted)
        if not layer.has_room(lay.rootfs_fd):
            # before LXC pins a privileged rootfs (a file it creates there) and overlayfs its workdir
            # (it falls back to read-only): a full layer gets pycor's message, with the fix
            from . import quota

            error = quota.room_error(name, rootfs, lay.meta)
            if error is not None:
                raise error
        if not clone:
            self._settle_layer(lay, name, "user" if idmap is not None else "trusted")
        move: _Move | None = None
        held = None
        with self.store.lock(exclusive=False):
            if clone:
                self._check_clone_origin(lay, name)
            else:
                self.recover_volume(lay)
            meta = lay.meta
            if not self.store.exists(meta.base):
                on = f" (its changes were made on version {meta.based_on})" if meta.based_on else ""
                raise PycorError(
                    f"container {name} runs on base {meta.base!r}, which is not in store {self.store.root}{on}",
                    f"import the base again ('pycor base import {meta.base} --from-export FILE' with an export from the host "
                    f"it came from); the container's changes in {rootfs}/{layer.UPPER} are intact",
                )
            check_layer_digest(self.store, name, meta)  # its changes must land on the tree they were made on
            version = self._clone_version(meta, name) if clone else (meta.pin or self.store.current(meta.base))
            if meta.based_on != version and not clone:
                clones = self.layer_users(rootfs, name) if meta.based_on else []
                if clones:  # its upper is their lowerdir: changing it under their overlays is undefined behaviour
                    held, version = self._hold_for_clones(lay, version, clones), str(meta.based_on)
                else:
                    move = _Move(self.store, meta.base, meta.based_on, version)  # gc keeps both until it is closed
            if move is None:
                state = self._record_start(lay, name, idmap, monitor, version, held, unshifted)
        if move is not None:
            try:
                try:  # the merge runs without the store lock: other containers start and stop meanwhile
                    self.move_volume(lay, version, move=move)
                except Conflict as e:
                    # the move would hand one id to two names: stay where the changes were made
                    held, version = e.message, str(meta.based_on)
                with self.store.lock(exclusive=False):
                    state = self._record_start(lay, name, idmap, monitor, version, held, unshifted)
            finally:
                move.close()
        self.register(Registration(name, rootfs, runtime, lxcpath).chosen(lay.rootfs_fd, lay.meta))
        return state

    def _record_start(self, lay: layer.OpenLayer, name: str, idmap: IdMap | None, monitor: tuple[int, int],
                      version: str, held: str | None, unshifted: bool = False) -> RunState:
        """The lower stack (the version must still exist), idmapped views, the run record; under the store's shared lock."""
        rootfs, meta = lay.rootfs, lay.meta
        lowers = self.store.lower_stack(meta.base, version)
        views: list[str] = []
        if idmap is not None:
            from . import idmap as idmap_mod

            if setting("idmapped_layers", "PYCOR_IDMAPPED_LAYERS", "auto") == "off":
                raise PycorError(
                    f"container {name} is unprivileged, and idmapped layers are turned off (idmapped_layers = off)",
                    "pycor never copies or chowns a base per idmap: turn them on (kernel 5.12+, store on ext4, xfs, "
                    "btrfs or tmpfs) or run the container privileged",
                )
            ids = [layer_id(meta.base, path) for path in lowers]
            key = idmap.key

            def unused(lid: str) -> bool:  # a view no running container uses may be remade
                return not any(st.idmap == key and lid in st.views for st in runstate.running_states() if is_live(st))

            made = idmap_mod.ensure_views(idmap, dict(zip(ids, lowers)), remake_if=unused)
            lowers, views = [made[i] for i in ids], ids
        state = RunState(name, rootfs, meta.base, version, lowers, time.time(),
                         idmap.key if idmap is not None else None, views, monitor[0], monitor[1], held,
                         self._mount_layer(lay, name, idmap, monitor) if unshifted and idmap is not None else None,
                         layer.choices(meta))
        os.makedirs(runstate.RUN_CONTAINERS, mode=0o755, exist_ok=True)
        own = runstate.record_path(name, rootfs)
        if any(s.idmap for s in runstate.sweep_stale_records(skip=own)):
            # its views are released under the exclusive lock: by the next stop (or gc, doctor --fix)
            os.close(os.open(runstate.VIEWS_STALE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        write_json(own, state.to_json())
        os.makedirs(runstate.RUN_MONITORS, mode=0o700, exist_ok=True)
        os.close(os.open(os.path.join(runstate.RUN_MONITORS, runstate.monitor_entry(state, own)),
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        return state

    def _settle_layer(self, lay: layer.OpenLayer, name: str, namespace: str) -> None:
        """pre-start's care of the layer itself, under its lock: layer.json owned like the layer, its overlay xattrs
        in the namespace this start mounts with, what was pushed into the stopped container moved to its inbox.

        A start that changes nothing pays one fstat and one listdir.
        """
        layer.meta_owner_fixed(lay)
        if layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):
            return  # LXC's clone of this container reads the layer, whose own container may run: left as it is
        if lay.meta.xattrs != namespace and not lay.meta.ephemeral:
            self.settle_xattrs(lay, namespace, f"container {name}")
        pushed = layer.beside(lay.rootfs_fd)
        if pushed:
            from . import inbox

            inbox.collect(lay.rootfs_fd, pushed)

    def settle_xattrs(self, lay: layer.OpenLayer, namespace: str | None, where: str) -> str | None:
        """Bring a stopped layer's overlay xattrs into namespace, crash-safe (see ovlxattr.settle)."""
        from . import ovlxattr

        return ovlxattr.settle(lay, namespace, where)

    def mount_volume(self, name: str, rootfs: str) -> None:
        """pre-mount: mount the overlay on rootfs in the current mount namespace, from the run state pre-start wrote."""
        state = runstate.read(name, rootfs)
        if state is None or state.rootfs != rootfs:
            raise PycorError(
                f"no run state for container {name}: the pycor pre-start hook did not run",
                "the container config needs lxc.hook.pre-start = .../pycor-pre-start (see 'pycor install')",
            )
        fds = [layer.open_rootfs(rootfs)]
        src = fds[0]
        try:
            # upper, work, layer.json and pushed files: through the layer mount pre-start made, if the layer is
            # unshifted on disk (its root-owned .pycor is reachable by the container's root only that way)
            if state.layer_mount:
                src = self._open_layer_mount(state)
                fds.append(src)
            fds[1:1] = layer.open_layer_dirs(src, rootfs)
            meta = layer.read_meta(src, rootfs)
            if state.choices is not None and layer.choices(meta) != state.choices:
                raise Damaged(f"container {name}: {rootfs}/{layer.META} changed while it started (something other than "
                              "pycor wrote it, such as a file pushed into its .pycor)", "start it again")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        under = fds.pop() if state.layer_mount else None
        try:
            self._mount(state, fds, meta, userxattr=runstate.in_user_namespace(), under=under)
        finally:
            if under is not None:
                os.close(under)

    def _mount(self, state: RunState, fds: list[int], meta: LayerMeta, userxattr: bool, under: int | None = None) -> None:
        """Mount the overlay of state's lower stack over fds [rootfs, upper, work], which this closes; under: the
        layer's rootfs directory as this process may read it (a layer mount), if not fds[0].

        Refused in the host's mount namespace: there the overlay would hide
        the container's rootfs (and its .pycor) from the host for good.
        """
        name, rootfs = state.name, state.rootfs
        try:
            if runstate.in_host_mount_namespace(state.monitor):
                raise PycorError(
                    f"refusing to mount the overlay of container {name} on {rootfs} in the host's mount namespace",
                    "pycor-pre-mount runs only inside a container's start (LXC runs it in the container's mount namespace); "
                    f"start the container instead ('lxc-start -n {name}' or 'lxc start {name}')",
                )
            # hosting (volumes.py, imported only then): an ephemeral layer's upper and work in memory, volumes
            hosting = meta.ephemeral or bool(meta.volumes) or layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", ""))
            if hosting:
                from . import volumes

                volumes.before_overlay(fds, rootfs, meta)
            for lower in state.lowerdirs:
                try:
                    fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                except OSError as e:
                    raise PycorError(f"cannot open base layer {lower}: {e.strerror}", "check the store with 'pycor base ls'") from None
            try:
                overlay.mount_overlay(fds[3:], fds[1], fds[2], fds[0], userxattr=userxattr,
                                      options=() if userxattr else overlay.PRIVILEGED_OPTIONS)
            except OSError as e:
                raise PycorError(
                    f"cannot mount the overlay of base {state.base} version {state.version} on {rootfs}: {e.strerror}",
                    "the kernel log (dmesg) says why; 'pycor doctor' checks overlay support",
                ) from None
            if hosting:
                volumes.mount_volumes(fds[0], rootfs, meta)  # bound over the overlay
            if not layer.is_overlay_clone(os.environ.get("LXC_ROOTFS_PATH", "")):
                self._replay_inbox(fds[0] if under is None else under, rootfs, name)
        finally:
            for fd in fds:
                os.close(fd)

    def _replay_inbox(self, under_fd: int, rootfs: str, name: str) -> None:
        """pre-mount, with the overlay (and volumes) mounted: put what was pushed into the stopped container in place.

        One failed stat when nothing was; the inbox module is loaded only when something was.
        """
        try:
            os.stat(f"{layer.PYCOR_DIR}/inbox", dir_fd=under_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        import sys

        from . import inbox

        root = layer.open_rootfs(rootfs)  # now the overlay's root: the container's view
        try:
            work = inbox.replay(under_fd, root)
        finally:
            os.close(root)
        if work is not None and (work.done or work.rejected):
            print(f"pycor: container {name}: {inbox.summary(work)}", file=sys.stderr)

    def release(self, name: str, rootfs: str) -> None:
        """post-stop: forget this start, and release idmapped views no running container uses.

        The overlay lived in the container's mount namespace and is gone with it.
        The exclusive lock orders this against a pre-start that is making views.
        Records of containers whose monitor died go too, found by the monitor
        index: what a stop reads does not grow with the containers that run.
        """
        with self.store.lock():
            own = runstate.record_path(name, rootfs)
            state = runstate.read(name, rootfs)
            runstate.remove(own)
            if state is not None:
                runstate.remove(os.path.join(runstate.RUN_MONITORS, runstate.monitor_entry(state, own)))
                runstate.release_layer_mount(state)
            cleared = runstate.sweep_stale_records(skip=own)
            # only idmapped starts use views: a privileged stop reads no other record
            if any(s is not None and s.idmap for s in [state, *cleared]) or os.path.lexists(runstate.VIEWS_STALE):
                self.release_views()

    def release_views(self) -> None:
        """Remove idmapped views that no live recorded start uses, and layer mounts of starts whose monitor is
        gone: a stale record's, or a killed pre-start's (caller holds the store lock)."""
        from . import idmap as idmap_mod

        runstate.remove(runstate.VIEWS_STALE)  # before the records are read: a start clearing one after this leaves it again
        idmap_mod.release_layer_mounts(runstate.monitor_runs)
        if not os.path.isdir(idmap_mod.RUN_VIEWS):
            return
        in_use = {(s.idmap, v) for s in runstate.running_states() if s.idmap and is_live(s) for v in s.views}
        idmap_mod.release_unused(in_use)

    def clear_stale(self) -> list[RunState]:
        """Remove stale run records, the idmapped views only they used, the marks of moves whose start died and the
        lock files nobody holds (for gc and doctor --fix)."""
        with self.store.lock():
            cleared = runstate.clear_stale_records()
            self.release_views()
            self.moves_in_flight(sweep=True)
        locks.sweep()
        return cleared

    # -- layers unshifted on disk (a daemon's idmapped rootfs): their idmapped mounts --------
    def _mount_layer(self, lay: layer.OpenLayer, name: str, idmap: IdMap, monitor: tuple[int, int]) -> str:
        """pre-start, unshifted: the idmapped mount of the container's rootfs directory, named by this start."""
        from . import idmap as idmap_mod

        path = idmap_mod.layer_mount_path(runstate.volume_key(name, lay.rootfs), monitor)
        return idmap_mod.mount_layer(idmap, lay.rootfs_fd, lay.rootfs, path)

    def _unmount_layer(self, name: str, rootfs: str, monitor: tuple[int, int]) -> None:
        from . import idmap as idmap_mod

        idmap_mod.remove_layer_mount(idmap_mod.layer_mount_path(runstate.volume_key(name, rootfs), monitor))

    def _open_layer_mount(self, state: RunState) -> int:
        """pre-mount: the layer mount pre-start recorded (a path under /run/pycor, which only root writes)."""
        assert state.layer_mount
        try:
            return os.open(state.layer_mount, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise PycorError(f"container {state.name}: cannot open the idmapped mount of its layer at {state.layer_mount}: "
                             f"{e.strerror}", "its pre-start hook makes it: start the container again") from None

    def stale_layer_mounts(self) -> list[str]:
        """Layer mounts of starts whose monitor is gone (for doctor): a stale record's, or a killed pre-start's."""
        from . import idmap as idmap_mod

        return [path for path in idmap_mod.list_layer_mounts()
                if not runstate.monitor_runs(idmap_mod.layer_mount_monitor(path) or (0, 0))]

    # -- daemons: LXD's and Incus's overlay profile and images ------------------------
    def daemon_init(self, client: Daemon) -> list[str]:
        """The daemon's overlay profile and one image per base, all of this store; safe to repeat. What it did."""
        from .lxcconfig import profile_lines
        from .store import hooks_dir

        done = []
        if client.ensure_profile("\n".join(profile_lines(hooks_dir(), self.store.hook_arg)), self.store.root):
            done.append("profile overlay written")
        for base in self.store.base_names():
            outcome = client.ensure_image(base, self.store.root)
            if outcome == "added":
                done.append(f"image pycor/{base} added")
            elif outcome == "other":
                done.append(f"image pycor/{base} belongs to another pycor store: left alone")
        return done

    # -- bases ----------------------------------------------------------------
    def base_users(self, base: str, extra: list[Registration] | None = None) -> list[Registration]:
        """Containers whose layer names this base, running or not."""
        users: dict[str, Registration] = {}
        for reg in self.registrations() + list(extra or []):
            try:
                if self.volume_meta(reg.rootfs).base == base:
                    users[reg.rootfs] = reg
            except PycorError:
                # unreadable metadata: it may be on this base, so it counts (named as damaged)
                users[reg.rootfs] = Registration(f"{reg.name} (damaged layer metadata)", reg.rootfs, reg.runtime, reg.lxcpath)
        for state in runstate.running_states():
            # a start whose container was destroyed since (no post-stop ran) uses nothing
            if state.base == base and state.rootfs not in users and is_live(state) and layer.is_layer(state.rootfs):
                users[state.rootfs] = Registration(state.name, state.rootfs, "?", None)
        return sorted(users.values(), key=lambda r: r.name)

    def delete_base(self, base: str, extra: list[Registration] | None = None) -> None:
        from .fsutil import remove_tree

        with self.store.lock():
            self.store.require(base)
            users = self.base_users(base, extra)
            if users:
                raise PycorError(
                    f"base {base!r} is used by {len(users)} container(s): {', '.join(u.name for u in users)}",
                    "remove those containers first ('pycor rm NAME')",
                )
            doomed = os.path.join(self.store.bases_dir, f".{base}.rm{os.getpid()}")
            os.rename(self.store.base_dir(base), doomed)  # gone from view in one step
        faults.point("base-rm.renamed")  # killed here, the next store lock removes .BASE.rmPID
        remove_tree(doomed)

    # -- moving a layer's changes between versions (reconciliation) -------------------
    def move_volume(self, lay: layer.OpenLayer, target: str, force: bool = False, dry_run: bool = False,
                    move: _Move | None = None, allow_breaks: bool = False) -> Plan | None:
        """Bring a layer's changes from the version they were made against to target: the one path a layer
        takes between versions.

        The caller holds the layer lock (the container is not running: a start,
        or a StoppedLayer). Both versions are resolved and marked in flight
        under the store's shared lock (move, or made here), and merged without
        it. Returns the reconciliation plan, or None when there was nothing to
        reconcile. A layer that does not know its version (made by pycor 0.1),
        or whose version is gone, is recorded as being on target. Raises
        Conflict (an id collision, the container's own packages broken) unless forced; nothing is changed
        then. allow_breaks: move even if its packages break (upgrade_volume upgrades them next).
        """
        meta = lay.meta
        old = meta.based_on
        if old == target:
            return None
        own = move is None
        if move is None:
            with self.store.lock(exclusive=False):
                move = _Move(self.store, meta.base, old, target)
        try:
            result = None
            if old is not None and move.a is not None:
                from . import reconcile

                result = reconcile.reconcile(lay.rootfs_fd, lay.upper_fd, old, target, move.a, move.b, force, dry_run,
                                             allow_breaks)
            if not dry_run:
                self._moved(lay, target)
            return result
        finally:
            if own:
                move.close()

    def _moved(self, lay: layer.OpenLayer, target: str) -> None:
        """The one writer of a layer's based_on: its changes were reconciled with target (move_volume, recover_volume)."""
        try:
            digest = self.store.recorded_digest(lay.meta.base, target)
        except NotFound:
            digest = None
        lay.meta = lay.meta.but(based_on=target, digest=digest)
        layer.write_meta(lay.rootfs, lay.meta)

    def recover_volume(self, lay: layer.OpenLayer) -> None:
        """Finish (or discard) a reconciliation a crash interrupted; cheap when there is none."""
        try:  # one stat; the reconcile module is imported only when there is something to finish
            os.stat(f"{layer.PYCOR_DIR}/reconcile", dir_fd=lay.rootfs_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        from . import reconcile

        target = reconcile.recover(lay.rootfs_fd, lay.upper_fd)
        if target:
            self._moved(lay, target)

    def _check_clone_origin(self, lay: layer.OpenLayer, name: str) -> None:
        """An overlay clone runs on its origin's layer as it is: refuse one whose move was interrupted."""
        try:
            os.stat(f"{layer.PYCOR_DIR}/reconcile", dir_fd=lay.rootfs_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise PycorError(f"container {name} is an overlay clone of the container in {lay.rootfs}, whose move to another "
                         "base version was interrupted", "start that container once (or 'pycor rebase' it), then this clone")

    def _clone_version(self, meta: LayerMeta, name: str) -> str:
        """An overlay clone runs on the version its origin's changes were made on (they are not moved for it)."""
        if not meta.based_on:
            return meta.pin or self.store.current(meta.base)
        try:
            self.store.version(meta.base, meta.based_on)
        except NotFound:
            raise NotFound(f"container {name} is an overlay clone of a container whose changes were made on base {meta.base} "
                           f"version {meta.based_on}, which is gone from this store",
                           "start the original container once (or 'pycor rebase' it) so its changes move to a version "
                           "this store has, then start the clone") from None
        return meta.based_on

    def _hold_for_clones(self, lay: layer.OpenLayer, target: str, clones: list[RunState]) -> str:
        """A start that would move a layer its running overlay clones read stays where it is, and says why."""
        from . import reconcile

        why = (f"not moved to version {target}: {', '.join(c.name for c in clones)} runs on this layer "
               "(an LXC overlay clone); it moves at a start once they stopped")
        plan = reconcile.Plan()
        plan.findings.append(reconcile.Finding("/", "held", why))
        reconcile.record_move(lay.rootfs_fd, str(lay.meta.based_on), target, plan, held_back=True)
        return why

    def rebase_volume(self, held: StoppedLayer, to: str | None = None, force: bool = False) -> tuple[str, Plan | None]:
        """Move a stopped container's changes to version `to` (default: its pin, else current); returns (target, plan)."""
        lay = held.layer
        with self.store.lock(exclusive=False):
            self.store.require(lay.meta.base)
            target = to or lay.meta.pin or self.store.current(lay.meta.base)
            self.store.version(lay.meta.base, target)
        return target, self.move_volume(lay, target, force)

    def rebase_plan(self, rootfs: str, to: str | None = None) -> tuple[str, Plan | None]:
        """What rebase_volume would do (running or not); changes nothing."""
        with layer.OpenLayer(rootfs) as lay:
            with self.store.lock(exclusive=False):
                self.store.require(lay.meta.base)
                target = to or lay.meta.pin or self.store.current(lay.meta.base)
                self.store.version(lay.meta.base, target)
            return target, self.move_volume(lay, target, dry_run=True)

    # -- moving with the container's own packages (pycor rebase --upgrade) ------------------------
    def has_own_packages(self, rootfs: str) -> bool:
        """Whether the container installed, removed or upgraded packages itself (a dpkg status of its own)."""
        from . import upgrade

        with layer.OpenLayer(rootfs) as lay:
            return upgrade.has_own_packages(lay.upper_fd)

    def upgrade_volume(self, held: StoppedLayer, rt: Runtime, name: str, to: str | None = None,
                       force: bool = False) -> tuple[str, Plan | None, list[str] | None]:
        """Move a stopped container's changes to version `to` (default: its pin, else current) and bring the
        packages it installed itself along, as apt-get full-upgrade in place would, in the container itself,
        started through its runtime rt (name: its name there); all or nothing (upgrade.py). It is stopped again
        after.

        Returns (target, the move's plan, what the upgrade changed: "NAME OLD -> NEW" lines, or None when the
        container has no packages of its own and only moved). Raises PycorError, the container unchanged,
        when the upgrade fails.
        """
        from . import reconcile, upgrade

        lay, rootfs = held.layer, held.rootfs
        upgrade.discard(rootfs)  # what a killed run left that never became the container's (held: recovered)
        meta = lay.meta
        with self.store.lock(exclusive=False):
            self.store.require(meta.base)
            target = to or meta.pin or self.store.current(meta.base)
            self.store.version(meta.base, target)
            b_layers = self.store.lower_stack(meta.base, target)
        if not upgrade.has_own_packages(lay.upper_fd):
            return target, self.move_volume(lay, target, force), None
        copy_rootfs = upgrade.stage(lay)
        try:
            with layer.OpenLayer(copy_rootfs) as copy:
                plan = self.move_volume(copy, target, force, allow_breaks=True)
                upgrade.require_init(held.shown, [copy.upper, *b_layers])
                before = upgrade.package_versions(copy.upper_fd)
                layer.write_meta(copy_rootfs, copy.meta.but(pin=target), durable=True)  # its start runs on target
            upgrade.record(copy_rootfs, meta.based_on, target)
            faults.point("upgrade-staged")
            upgrade.swap(rootfs)  # the copy is the container's layer, the old one in the scratch
        except BaseException:
            upgrade.discard(rootfs)
            raise
        try:
            faults.point("upgrade-swapped")
            held.release()  # the container's start takes the layer lock
            try:
                upgrade.run_in(rt, name)
            finally:
                held.retake()  # stopped again, checked; the layer (the upgraded one) reopened
            lay = held.layer
            problems = reconcile.package_problems(lay.upper_fd, b_layers)
            if problems:
                raise PycorError(f"after the upgrade, apt-get check still finds {len(problems)} problem(s): "
                                 + "; ".join(problems[:3]) + "; the container is unchanged",
                                 "a package held back (apt-mark showhold) or one its sources no longer offer: "
                                 "fix that in the container, then run the same command again")
            changes = upgrade.changed(before, upgrade.package_versions(lay.upper_fd))
            upgrade.note(lay.rootfs_fd, changes, target)
            layer.write_meta(rootfs, lay.meta.but(pin=meta.pin), durable=True)
            lay.meta = lay.meta.but(pin=meta.pin)
        except BaseException as e:
            if not held.holding:
                why = e.message if isinstance(e, PycorError) else f"{type(e).__name__}: {e}"
                raise PycorError(f"the upgrade of container {held.shown} stopped half-way, and the container could "
                                 f"not be held again (it may still run on the upgraded copy of its layer): {why}",
                                 f"stop it ({rt.hint('stop', name)}): its next start, or 'pycor rebase {held.shown}', puts "
                                 "its old layer back") from e
            upgrade.undo(rootfs)
            held.reopen()  # its fds named the upgraded copy, which is gone
            raise
        upgrade.commit(rootfs)  # the commit point: owner.json goes; then the old layer
        return target, plan, changes

    def volume_conflicts(self, rootfs: str) -> dict:
        """What the layer's reconciliations found: {"from", "to", "findings": [{"path", "kind", "detail"}]}."""
        from . import reconcile

        with layer.OpenLayer(rootfs) as lay:
            return reconcile.read_findings(lay.rootfs_fd)

    def held_back(self, rootfs: str) -> str | None:
        """Why a stopped container's last move was held back, if it still would be (the same versions), else None."""
        from . import reconcile

        try:
            with layer.OpenLayer(rootfs) as lay:
                record = reconcile.read_findings(lay.rootfs_fd)
                meta = lay.meta
            target = meta.pin or self.store.current(meta.base)
        except (PycorError, OSError, ValueError):
            return None
        if not record.get("held_back") or record.get("from") != meta.based_on or record.get("to") != target:
            return None
        return reconcile.holding_message([f for f in record.get("findings", []) if f.get("kind") in reconcile.HOLDING])

    def unresolved_conflicts(self, rootfs: str) -> int:
        """How many reported conflicts of the layer's moves are still unresolved (0 if it cannot be read)."""
        from . import reconcile

        try:
            with layer.OpenLayer(rootfs) as lay:
                return len(reconcile.unresolved(lay.rootfs_fd))
        except (PycorError, OSError):
            return 0

    def resolve_conflict(self, held: StoppedLayer, path: str) -> tuple[list[str], list[str], list[str]]:
        """Settle one reported conflict with the base's version; returns (replaced, kept, deleted): see
        reconcile.take_base (a directory is settled entry by entry; nothing of the container's own goes unnamed)."""
        from . import reconcile

        lay = held.layer
        rel = self._settle(lay, path)
        version = lay.meta.based_on or lay.meta.pin or self.store.current(lay.meta.base)
        with self.store.lock(exclusive=False):
            layers = self.store.lower_stack(lay.meta.base, version)  # the layer's based_on: gc keeps it
        return reconcile.take_base(lay.upper_fd, rel, layers)

    def keep_conflict(self, rootfs: str, path: str) -> None:
        """Settle one reported conflict with the container's version: only the record changes (running or not)."""
        with locks.layer_lock(rootfs), layer.OpenLayer(rootfs) as lay:
            self._settle(lay, path)

    def _settle(self, lay: layer.OpenLayer, path: str) -> str:
        """Remove path's conflicts from the layer's record; the path relative to upper."""
        from . import reconcile

        rel = path.strip("/")
        record = reconcile.read_findings(lay.rootfs_fd)
        findings = record.get("findings", [])
        hits = [f for f in findings if f.get("path") == "/" + rel and f.get("kind") in ("conflict", "collision")]
        if not rel or not hits:
            raise NotFound(f"container layer {lay.rootfs} has no conflict at /{rel}", "'pycor conflicts NAME' lists them")
        record["findings"] = [f for f in findings if f not in hits]
        reconcile.write_findings(lay.rootfs_fd, record)
        return rel

    def compare_with_base(self, name: str, rootfs: str, path: str, version: str, shown: str) -> list[Difference]:
        """Where the base's view of path (at version) and the container's differ: diff.compare's Differences,
        a the base's side, b the container's (a directory compared entry by entry). The base is the one the
        container was made on (open_layer): never another tenant's a pushed layer.json names."""
        from .diff import compare

        with self.open_layer(name, rootfs, shown) as lay:
            with self.store.lock(exclusive=False):
                lowers = self.store.lower_stack(lay.meta.base, version)
            return compare(lowers, [lay.upper, *lowers], path.strip("/"))

    # -- moves in flight: what gc keeps while a merge runs without the store lock -------------------
    def moves_in_flight(self, sweep: bool = False) -> dict[str, set[str]]:
        """base -> versions of moves running now. sweep: remove the marks of movers that died (only under the
        store's exclusive lock: a mark is made and flocked under the shared one)."""
        import fcntl

        used: dict[str, set[str]] = {}
        try:
            entries = os.listdir(MOVES_DIR)
        except FileNotFoundError:
            return used
        for entry in entries:
            path = os.path.join(MOVES_DIR, entry)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # its mover runs
                    base, *versions = os.read(fd, 4096).decode().split()
                    used.setdefault(base, set()).update(versions)
                    continue
                if sweep:
                    os.unlink(path)  # its mover died
            except (OSError, ValueError):
                continue
            finally:
                os.close(fd)
        return used


MOVES_DIR = os.path.join(runstate.RUN_DIR, "moves")


class _Move:
    """A move in flight: both versions' lower stacks (a: None when the old version is gone), resolved under
    the store's shared lock (make it there), and marked in MOVES_DIR (a file its maker holds flocked) so gc
    keeps both versions until close(), while the merge runs without the store lock."""

    def __init__(self, store: Store, base: str, old: str | None, target: str) -> None:
        import fcntl

        self.b = store.lower_stack(base, target)
        self.a: list[str] | None = None
        if old is not None:
            try:
                self.a = store.lower_stack(base, old)
            except PycorError:
                pass  # that version is gone: no common ancestor to merge against
        os.makedirs(MOVES_DIR, mode=0o700, exist_ok=True)
        self.path = os.path.join(MOVES_DIR, f"{os.getpid()}.{time.monotonic_ns()}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.write(self.fd, " ".join([base, *(v for v in (old, target) if v)]).encode() + b"\n")  # checked names
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


class StoppedLayer:
    """A stopped container's layer, held: the one way to a writer of it (Driver.rebase_volume, resolve_conflict,
    versions.reset, versions.commit take this, never a path).

    runtime_state() is asked first, outside the lock (a start waiting for the
    lock in pre-start holds up its monitor, which answers lxc-info and LXD);
    then, under the layer lock held until exit, Driver.require_stopped: the
    container does not run, nor does an overlay clone of it. Then an
    interrupted upgrade of it is undone (said through report), or one in
    progress refuses (Driver.recover_upgrade). With open_layer, the layer is
    opened (naming an interrupted reset and what finishes it) and an
    interrupted reconciliation is finished first.

    release() and retake() let the container's own start through meanwhile
    (an upgrade runs in the container: its pre-start takes the layer lock).
    """

    def __init__(self, driver: Driver, name: str, rootfs: str, runtime_state: Callable[[], str], what: str, how: str,
                 shown: str, open_layer: bool, report: Callable[[str], None] | None = None) -> None:
        self.driver, self.name, self.rootfs, self.shown = driver, name, rootfs, shown
        self._runtime_state, self._what, self._how, self._open = runtime_state, what, how, open_layer
        self._report = report
        self._lock: locks.Flock | None = None
        self._layer: layer.OpenLayer | None = None

    @property
    def layer(self) -> layer.OpenLayer:
        if self._layer is None:
            raise PycorError(f"internal: the layer of {self.name} was held without being opened")
        return self._layer

    def __enter__(self) -> StoppedLayer:
        runtime_state = self._runtime_state()
        self._lock = locks.layer_lock(self.rootfs)
        self._lock.__enter__()
        try:
            self.driver.require_stopped(self.name, self.rootfs, runtime_state, self._what, self._how)
            said = self.driver.recover_upgrade(self.shown, self.rootfs)
            if said and self._report is not None:
                self._report(f"container {self.shown}: {said}")
            if self._open:
                self._layer = self.driver.open_layer(self.name, self.rootfs, self.shown)
                self.driver.recover_volume(self._layer)
        except BaseException as e:
            self.__exit__(type(e))
            raise
        return self

    def __exit__(self, exc_type: object = None, *exc: object) -> None:
        try:
            if self._layer is not None:
                self._layer.__exit__()
                self._layer = None
        finally:
            if self._lock is not None:
                self._lock.__exit__(exc_type)
                self._lock = None

    @property
    def holding(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        """Let go of the layer and its lock (the container's start may take them); retake() holds them again."""
        self.__exit__()

    def retake(self, wait: float = 60.0) -> None:
        """Hold the layer again, checked as at first (stopped; its layer reopened). A container its runtime just
        stopped may still have its start recorded until its post-stop hook has run: wait for that."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.__enter__()
                return
            except InUse:
                if time.monotonic() > deadline or self._runtime_state() != "STOPPED":
                    raise
            time.sleep(0.2)

    def reopen(self) -> None:
        """Open the layer again (the lock kept): what .pycor is now, after a writer swapped it."""
        if self._layer is not None:
            self._layer.__exit__()
            self._layer = None
        if self._open:
            self._layer = self.driver.open_layer(self.shown, self.rootfs)
