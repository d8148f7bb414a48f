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
import stat
import time
import zlib

from . import digest, layer, linux, overlay
from .errors import Conflict, NotFound, PycorError
from .layer import LayerMeta
from .locks import layer_lock
from .store import RUN_DIR, Record, Store, read_json, setting, write_json

RUN_CONTAINERS = os.path.join(RUN_DIR, "containers")


class RunState(Record):
    """What pre-start resolved for one start of one container."""

    __slots__ = ("name", "rootfs", "base", "version", "lowerdirs", "started", "idmap", "views", "held")
    name: str
    rootfs: str
    base: str
    version: str
    lowerdirs: list[str]  # base layers, or their idmapped views, top first
    started: float
    idmap: str | None  # key of the container's idmap (unprivileged), else None
    views: list[str]  # layer ids of the idmapped views it uses
    held: str | None  # why it runs on an older version than it follows (a move that conflicts), else None


def run_state_from_json(raw: dict) -> RunState:
    return RunState(str(raw["name"]), str(raw["rootfs"]), str(raw["base"]), str(raw["version"]),
                    [str(p) for p in raw["lowerdirs"]], float(raw["started"]),
                    str(raw["idmap"]) if raw.get("idmap") else None, [str(v) for v in raw.get("views", [])],
                    str(raw["held"]) if raw.get("held") else None)


class Registration(Record):
    """A container layer the store knows about (written at create and at each start)."""

    __slots__ = ("name", "rootfs", "runtime", "lxcpath")
    name: str
    rootfs: str
    runtime: str  # "lxc" or "lxd"
    lxcpath: str | None


def volume_key(name: str, rootfs: str) -> str:
    """A file name for one container: its name plus a checksum of its rootfs path."""
    return f"{name}-{zlib.crc32(rootfs.encode()):08x}"


def in_user_namespace() -> bool:
    with open("/proc/self/uid_map", encoding="ascii") as f:
        return f.read().split() != ["0", "0", "4294967295"]


def read_idmap(config_file: str | None):  # type: ignore[no-untyped-def]
    """The container's idmap, or None for a privileged container (no lxc.idmap lines)."""
    if not config_file:
        return None
    with open(config_file, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    if "lxc.idmap" not in text and "lxc.id_map" not in text:
        return None  # privileged: skip importing the idmap module
    from .idmap import IdMap

    idmap = IdMap.parse_lxc_config(text)
    return None if idmap.is_empty else idmap.check()


def layer_id(base: str, layer_path: str) -> str:
    """A name for one base layer directory: BASE.VERSION.DEV.INODE.

    The inode makes it unique on this host: a base removed and imported
    again, or the same base name in another store, gets other views.
    """
    st = os.stat(layer_path, follow_symlinks=False)
    return f"{base}.{os.path.basename(os.path.dirname(layer_path))}.{st.st_dev:x}.{st.st_ino:x}"


def check_layer_owner(st: os.stat_result, idmap, name: str, rootfs: str) -> None:  # type: ignore[no-untyped-def]
    """upper and work must belong to container root, or the overlay mounted in its namespace cannot write."""
    root_uid, root_gid = idmap.root()
    if (st.st_uid, st.st_gid) != (root_uid, root_gid):
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
    def create_volume(self, name: str, rootfs: str, base: str, pin: str | None = None,
                      uid: int = 0, gid: int = 0, runtime: str = "lxc", lxcpath: str | None = None) -> None:
        self.store.require(base)
        if pin:
            self.store.version(base, pin)
        from .digest import version_digest

        on = pin or self.store.current(base)
        layer.create_layer(rootfs, LayerMeta(base, pin, on, version_digest(self.store, base, on)), uid, gid)
        self.register(Registration(name, rootfs, runtime, lxcpath))

    def adopt_volume(self, name: str, rootfs: str, base: str, uid: int | None = 0, gid: int | None = 0,
                     runtime: str = "lxc", lxcpath: str | None = None, register: bool = True) -> LayerMeta:
        """Take over an existing layer whose container config was lost, changing nothing in it.

        Checked in full first: layer.json readable (no symlink followed),
        naming this base, which exists (and its pin, if pinned); upper and work
        owned by container root (uid, gid; None skips that check).
        """
        if not os.path.lexists(os.path.join(rootfs, layer.PYCOR_DIR)):
            raise NotFound(f"nothing to adopt: {rootfs} holds no pycor layer", "drop --adopt to create a new container")
        with layer.OpenLayer(rootfs) as lay:
            meta = lay.meta
            owners = [os.fstat(fd) for fd in ((lay.work_fd, lay.upper_fd) if uid else (lay.work_fd,))]
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
        if register:
            self.register(Registration(name, rootfs, runtime, lxcpath))
        return meta

    def volume_meta(self, rootfs: str) -> LayerMeta:
        fd = layer.open_rootfs(rootfs)
        try:
            return layer.read_meta(fd, rootfs)
        finally:
            os.close(fd)

    def volume_version(self, name: str, rootfs: str, meta: LayerMeta, running: bool) -> str:
        """The base version a container is on: the one it started on while it runs, else its pin, else current."""
        state = self.run_state(name, rootfs) if running else None
        return state.version if state else (meta.pin or self.store.current(meta.base))

    def register(self, reg: Registration) -> None:
        os.makedirs(self.registry_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.registry_dir, volume_key(reg.name, reg.rootfs) + ".json")
        if os.path.exists(path):
            return
        write_json(path, reg.to_json(), mode=0o600)

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
                raw = read_json(path)
                reg = Registration(str(raw["name"]), str(raw["rootfs"]), str(raw["runtime"]), raw.get("lxcpath"))
            except (OSError, ValueError, KeyError, PycorError):
                continue
            if layer.is_layer(reg.rootfs):
                found.append(reg)
            else:
                os.unlink(path)
        return found

    # -- starting and stopping -----------------------------------------------
    def run_state_path(self, name: str, rootfs: str) -> str:
        return os.path.join(RUN_CONTAINERS, volume_key(name, rootfs) + ".json")

    def prepare_start(self, name: str, rootfs: str, runtime: str = "lxc", lxcpath: str | None = None,
                      config_file: str | None = None) -> RunState:
        """pre-start: resolve the base version and its lower stack, record the start.

        For an unprivileged container (lxc.idmap lines in its config, a file
        the container cannot write) the lower stack is made of idmapped views
        of the base layers, shared by every container with the same map.
        """
        idmap = read_idmap(config_file)
        with layer_lock(rootfs), layer.OpenLayer(rootfs) as lay, self.store.lock(exclusive=False):
            if idmap is not None:
                for fd in (lay.upper_fd, lay.work_fd):
                    check_layer_owner(os.fstat(fd), idmap, name, rootfs)
            self.recover_volume(lay)
            meta = lay.meta
            if not self.store.exists(meta.base):
                on = f" (its changes were made on version {meta.based_on})" if meta.based_on else ""
                raise PycorError(
                    f"container {name} runs on base {meta.base!r}, which is not in store {self.store.root}{on}",
                    f"import the base again ('pycor base import {meta.base} --from-export FILE' with an export from the host "
                    f"it came from); the container's changes in {rootfs}/{layer.UPPER} are intact",
                )
            digest.check_layer(self.store, name, meta)  # its changes must land on the tree they were made on
            version = meta.pin or self.store.current(meta.base)
            held = None
            if meta.based_on != version:
                try:
                    self.move_volume(lay, version)
                except Conflict as e:
                    # the move would hand one id to two names: stay where the changes were made
                    held, version = e.message, str(meta.based_on)
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
                made = idmap_mod.ensure_views(idmap, dict(zip(ids, lowers)))
                lowers, views = [made[i] for i in ids], ids
            state = RunState(name, rootfs, meta.base, version, lowers, time.time(),
                             idmap.key if idmap is not None else None, views, held)
            os.makedirs(RUN_CONTAINERS, mode=0o755, exist_ok=True)
            write_json(self.run_state_path(name, rootfs), state.to_json())
        self.register(Registration(name, rootfs, runtime, lxcpath))
        return state

    def run_state(self, name: str, rootfs: str) -> RunState | None:
        try:
            return run_state_from_json(read_json(self.run_state_path(name, rootfs)))
        except FileNotFoundError:
            return None

    def mount_volume(self, name: str, rootfs: str) -> None:
        """pre-mount: mount the overlay on rootfs in the current mount namespace."""
        state = self.run_state(name, rootfs)
        if state is None or state.rootfs != rootfs:
            raise PycorError(
                f"no run state for container {name}: the pycor pre-start hook did not run",
                "the container config needs lxc.hook.pre-start = .../pycor-pre-start (see 'pycor install')",
            )
        fds: list[int] = []
        try:
            fds.append(layer.open_rootfs(rootfs))
            fds.extend(layer.open_layer_dirs(fds[0], rootfs))
            for lower in state.lowerdirs:
                try:
                    fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                except OSError as e:
                    raise PycorError(f"cannot open base layer {lower}: {e.strerror}", "check the store with 'pycor base ls'") from None
            try:
                overlay.mount_overlay(fds[3:], fds[1], fds[2], fds[0], userxattr=in_user_namespace())
            except OSError as e:
                raise PycorError(
                    f"cannot mount the overlay of base {state.base} version {state.version} on {rootfs}: {e.strerror}",
                    "the kernel log (dmesg) says why; 'pycor doctor' checks overlay support",
                ) from None
        finally:
            for fd in fds:
                os.close(fd)

    def release(self, name: str, rootfs: str) -> None:
        """post-stop: forget this start, and release idmapped views no running container uses.

        The overlay lived in the container's mount namespace and is gone with it.
        The exclusive lock orders this against a pre-start that is making views.
        """
        with self.store.lock():
            try:
                os.unlink(self.run_state_path(name, rootfs))
            except FileNotFoundError:
                pass
            self.release_views()

    def release_views(self) -> None:
        """Remove idmapped views that no recorded start uses (caller holds the store lock)."""
        from .idmap import RUN_VIEWS

        if not os.path.isdir(RUN_VIEWS):
            return
        from . import idmap as idmap_mod

        in_use = {(s.idmap, v) for s in self.running_states() if s.idmap for v in s.views}
        idmap_mod.release_unused(in_use)

    def running_states(self) -> list[RunState]:
        states = []
        try:
            entries = os.listdir(RUN_CONTAINERS)
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.endswith(".json"):
                try:
                    states.append(run_state_from_json(read_json(os.path.join(RUN_CONTAINERS, entry))))
                except (OSError, ValueError, KeyError, PycorError):
                    continue
        return states

    # -- bases ----------------------------------------------------------------
    def base_users(self, base: str, extra: list[Registration] | None = None) -> list[Registration]:
        """Containers whose layer names this base, running or not."""
        users: dict[str, Registration] = {}
        for reg in self.registrations() + list(extra or []):
            try:
                if self.volume_meta(reg.rootfs).base == base:
                    users[reg.rootfs] = reg
            except PycorError:
                continue
        for state in self.running_states():
            # a start whose container was destroyed since (no post-stop ran) uses nothing
            if state.base == base and state.rootfs not in users and layer.is_layer(state.rootfs):
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
        remove_tree(doomed)

    # -- moving a layer's changes between versions (reconciliation) -------------------
    def move_volume(self, lay: layer.OpenLayer, target: str, force: bool = False, dry_run: bool = False):  # type: ignore[no-untyped-def]
        """Bring a layer's changes from the version they were made against to target.

        The caller holds the layer lock and the store's lock (the container is
        not running). Returns the reconciliation plan, or None when there was
        nothing to reconcile. A layer that does not know its version (made by
        pycor 0.1), or whose version is gone, is recorded as being on target.
        Raises Conflict (an id collision) unless forced; nothing is changed then.
        """
        meta = lay.meta
        old = meta.based_on
        if old == target:
            return None
        result = None
        if old is not None:
            try:
                a = self.store.lower_stack(meta.base, old)
            except PycorError:
                a = None  # that version is gone: no common ancestor to merge against
            if a is not None:
                from . import reconcile

                result = reconcile.reconcile(lay.rootfs_fd, lay.upper_fd, old, target, a,
                                             self.store.lower_stack(meta.base, target), force, dry_run)
        if not dry_run:
            lay.meta = LayerMeta(meta.base, meta.pin, target, digest.recorded(self.store, meta.base, target))
            layer.write_meta(lay.rootfs, lay.meta)
        return result

    def recover_volume(self, lay: layer.OpenLayer) -> None:
        """Finish (or discard) a reconciliation a crash interrupted; cheap when there is none."""
        from . import reconcile

        if not reconcile.pending(lay.rootfs_fd):
            return
        target = reconcile.recover(lay.rootfs_fd, lay.upper_fd)
        if target:
            lay.meta = LayerMeta(lay.meta.base, lay.meta.pin, target, digest.recorded(self.store, lay.meta.base, target))
            layer.write_meta(lay.rootfs, lay.meta)

    def rebase_volume(self, rootfs: str, to: str | None = None, force: bool = False, dry_run: bool = False):  # type: ignore[no-untyped-def]
        """Move a stopped container's changes to version `to` (default: its pin, else current); returns (target, plan)."""
        with layer_lock(rootfs):
            with layer.OpenLayer(rootfs) as lay:
                if not dry_run:
                    self.recover_volume(lay)
                with self.store.lock(exclusive=False):
                    self.store.require(lay.meta.base)
                    target = to or lay.meta.pin or self.store.current(lay.meta.base)
                    self.store.version(lay.meta.base, target)
                    return target, self.move_volume(lay, target, force, dry_run)

    def volume_conflicts(self, rootfs: str) -> dict:
        """What the layer's reconciliations found: {"from", "to", "findings": [{"path", "kind", "detail"}]}."""
        from . import reconcile

        with layer.OpenLayer(rootfs) as lay:
            return reconcile.read_findings(lay.rootfs_fd)

    def resolve_conflict(self, rootfs: str, path: str, take_base: bool) -> None:
        """Settle one reported conflict: take the base's version (drop the container's copy) or keep the container's."""
        import shutil

        from . import reconcile
        from .errors import NotFound

        rel = path.strip("/")
        with layer_lock(rootfs):
            with layer.OpenLayer(rootfs) as lay:
                record = reconcile.read_findings(lay.rootfs_fd)
                findings = record.get("findings", [])
                hits = [f for f in findings if f.get("path") == "/" + rel and f.get("kind") in ("conflict", "collision")]
                if not rel or not hits:
                    raise NotFound(f"container layer {rootfs} has no conflict at /{rel}", "'pycor conflicts NAME' lists them")
                if take_base:
                    head, _, name = rel.rpartition("/")
                    try:
                        parent = linux.open_beneath(lay.upper_fd, head, os.O_RDONLY | os.O_DIRECTORY) if head else os.dup(lay.upper_fd)
                    except FileNotFoundError:
                        parent = -1
                    if parent >= 0:
                        try:
                            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode):
                                shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows a symlink
                            else:
                                os.unlink(name, dir_fd=parent)
                        except FileNotFoundError:
                            pass
                        finally:
                            os.close(parent)
                record["findings"] = [f for f in findings if f not in hits]
                reconcile.write_findings(lay.rootfs_fd, record)

