"""Run records: what each start of a container resolved, under /run/pycor (gone with a reboot).

    /run/pycor/containers/KEY.json           one record per running container (RunState)
    /run/pycor/monitors/MONITOR.START.KEY    an empty index entry per record, named by its LXC monitor

A start writes its record under the store's lock; its post-stop removes it.
A container that died without a post-stop (a killed monitor, a host crash)
leaves a stale record, told apart by its monitor process being gone (pid
and start time), and cleared by the next start, stop, gc or doctor --fix,
each re-checked under the container's layer lock; the idmapped mount of its
layer (layer_mount, for a layer unshifted on disk) goes with it.

Hot path: hooks import this. Imports stay minimal.
"""

from __future__ import annotations

import os
import zlib

from . import layer, locks
from .errors import PycorError
from .flatjson import Record, read_json

RUN_DIR = "/run/pycor"

RUN_CONTAINERS = os.path.join(RUN_DIR, "containers")
# One empty file per recorded start, named MONITOR.STARTTIME.KEY: a start finds the records of
# containers that died (their monitor pid is gone) with one listdir, not by reading every record.
RUN_MONITORS = os.path.join(RUN_DIR, "monitors")
# Left by a start that cleared a dead idmapped container's record: the next stop releases views.
VIEWS_STALE = os.path.join(RUN_DIR, "views-stale")


class RunState(Record):
    """What pre-start resolved for one start of one container."""

    __slots__ = ("name", "rootfs", "base", "version", "lowerdirs", "started", "idmap", "views", "monitor", "monitor_start", "held",
                 "layer_mount", "choices")
    name: str
    rootfs: str
    base: str
    version: str
    lowerdirs: list[str]  # base layers, or their idmapped views, top first
    started: float
    idmap: str | None  # key of the container's idmap (unprivileged), else None
    views: list[str]  # layer ids of the idmapped views it uses
    monitor: int  # pid of the LXC monitor running the container (0: recorded by an older pycor)
    monitor_start: int  # its start time in clock ticks since boot (/proc/PID/stat field 22): pids get reused
    held: str | None  # why it runs on an older version than it follows (a move that conflicts), else None
    # unprivileged on a daemon's idmapped storage (its layer unshifted on disk): the idmapped mount of its
    # rootfs directory pre-mount takes upper and work from (idmap.mount_layer), else None
    layer_mount: str | None
    # what pre-start checked layer.json to say (layer.choices): pre-mount mounts only a layer.json that still says it
    # (a daemon writes into the rootfs directory of a container that is starting as of one that is stopped)
    choices: str | None

    def __init__(self, name: str, rootfs: str, base: str, version: str, lowerdirs: list[str], started: float,
                 idmap: str | None, views: list[str], monitor: int, monitor_start: int, held: str | None,
                 layer_mount: str | None = None, choices: str | None = None) -> None:
        super().__init__(name, rootfs, base, version, lowerdirs, started, idmap, views, monitor, monitor_start, held,
                         layer_mount, choices)


def run_state_from_json(raw: dict) -> RunState:
    return RunState(str(raw["name"]), str(raw["rootfs"]), str(raw["base"]), str(raw["version"]),
                    [str(p) for p in raw["lowerdirs"]], float(raw["started"]),
                    str(raw["idmap"]) if raw.get("idmap") else None, [str(v) for v in raw.get("views", [])],
                    int(raw.get("monitor", 0)), int(raw.get("monitor_start", 0)),
                    str(raw["held"]) if raw.get("held") else None,
                    str(raw["layer_mount"]) if raw.get("layer_mount") else None,
                    str(raw["choices"]) if raw.get("choices") else None)


def release_layer_mount(state: RunState) -> None:
    """Detach the idmapped mount of the container's layer its start made, if it made one (idempotent).

    One that cannot be detached now never fails the start or stop that found
    it: release_views() tries again, and 'pycor doctor' lists it.
    """
    if state.layer_mount:
        from .idmap import remove_layer_mount

        try:
            remove_layer_mount(state.layer_mount)
        except OSError:
            pass


def monitor_entry(state: "RunState", record: str) -> str:
    """The monitor index entry of a recorded start: MONITOR.STARTTIME.KEY (KEY: the record's file name)."""
    return f"{state.monitor}.{state.monitor_start}.{os.path.basename(record)[:-5]}"


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def proc_start_time(pid: int) -> int | None:
    """When process pid started (clock ticks since boot), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()  # from field 3 on: the command name may hold spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None  # dead, not yet reaped by its parent
    return int(fields[19])  # field 22: starttime


def _ppid(pid: str) -> int:
    """The parent of a process, as this /proc (the host's) numbers it, even from inside another pid namespace."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def hook_monitor(in_pre_mount: bool = False) -> tuple[int, int]:
    """The monitor of the container a hook runs for: pre-start's parent, pre-mount's grandparent.

    pre-mount runs as a child of the container's first process, itself the
    monitor's child, in the container's new pid namespace: the host's /proc
    names both by their host pids.
    """
    if in_pre_mount:
        pid = _ppid(str(_ppid("self")))
        return pid, proc_start_time(pid) or 0
    return _hook_parent()


def _hook_parent() -> tuple[int, int]:
    """The LXC monitor of the container a pre-start hook runs for: its parent process.

    Both raw LXC ('[lxc monitor] LXCPATH NAME', the daemonized lxc-start, or
    lxc-start itself with -F) and LXD ('lxd forkstart', retitled the same
    way) run hooks as direct children of the monitor, which lives exactly as
    long as the container: when it is gone, the container is too.
    """
    pid = os.getppid()
    return pid, proc_start_time(pid) or 0


def is_live(state: RunState) -> bool:
    """Whether the container a run state records still runs (its monitor is the same process)."""
    if not state.monitor:  # recorded by pycor 0.1: no monitor to tell by; it counts while its container exists
        return layer.is_layer(state.rootfs)
    return monitor_runs((state.monitor, state.monitor_start))


def monitor_runs(monitor: tuple[int, int]) -> bool:
    """Whether a monitor (pid, start time) is still the same process."""
    return monitor[0] > 0 and proc_start_time(monitor[0]) == monitor[1]


def in_host_mount_namespace(monitor: int) -> bool:
    """Whether this process shares its mount namespace with pid 1 or with the container's monitor.

    The monitor (recorded by pre-start) runs in the namespace LXC was started
    from; pre-mount runs in the container's own. A process that may not look
    at those namespaces (root of a user namespace) is not in them.
    """
    mine = os.stat("/proc/self/ns/mnt")
    for pid in (1, monitor):
        if pid <= 0:
            continue
        try:
            other = os.stat(f"/proc/{pid}/ns/mnt")
        except OSError:  # EACCES from a user namespace; ENOENT: gone
            continue
        if (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino):
            return True
    return False



def volume_key(name: str, rootfs: str) -> str:
    """A file name for one container: its name plus a checksum of its rootfs path."""
    return f"{name}-{zlib.crc32(rootfs.encode()):08x}"


def in_user_namespace() -> bool:
    with open("/proc/self/uid_map", "rb") as f:
        return f.read().split() != [b"0", b"0", b"4294967295"]



def record_path(name: str, rootfs: str) -> str:
    """The record of a container's start."""
    return os.path.join(RUN_CONTAINERS, volume_key(name, rootfs) + ".json")


def read(name: str, rootfs: str) -> RunState | None:
    """The container's record, or None when it has none."""
    try:
        return run_state_from_json(read_json(record_path(name, rootfs)))
    except FileNotFoundError:
        return None


def running_states() -> list[RunState]:
    """Every run state recorded, live or stale (see is_live)."""
    return [state for _, state in _run_records()]



def _run_records() -> list[tuple[str, RunState]]:
    found = []
    try:
        entries = os.listdir(RUN_CONTAINERS)
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.endswith(".json"):
            path = os.path.join(RUN_CONTAINERS, entry)
            try:
                found.append((path, run_state_from_json(read_json(path))))
            except (OSError, ValueError, KeyError, TypeError, PycorError):
                continue
    return found



def stale_states() -> list[RunState]:
    """Records of starts whose container no longer runs (killed monitor, host crash, destroyed container)."""
    return [state for state in running_states() if not is_live(state)]



def clear_stale_records(skip: str = "") -> list[RunState]:
    """Remove the records of containers that no longer run; returns them.

    Each is checked again under its container's layer lock, taken without
    waiting (a start holding it writes a fresh record; lock order is layer
    before store, and callers may hold the store lock). Views go with the
    next release_views(); gc and 'pycor doctor --fix' call clear_stale().
    """
    cleared = []
    for path, state in _run_records():
        if path == skip or is_live(state):
            continue
        gone = _clear_if_stale(path, state)
        if gone is not None:
            cleared.append(gone)
    try:
        for entry in os.listdir(RUN_MONITORS):  # index entries of records gone since
            key = entry.split(".", 2)[-1]
            if not os.path.exists(os.path.join(RUN_CONTAINERS, key + ".json")):
                remove(os.path.join(RUN_MONITORS, entry))
    except FileNotFoundError:
        pass
    return cleared



def _clear_if_stale(path: str, state: "RunState | None" = None) -> "RunState | None":
    """Remove one record if its container no longer runs, checked again under its layer lock; returns it."""
    try:
        state = state or run_state_from_json(read_json(path))
    except (OSError, ValueError, KeyError, TypeError, PycorError):
        return None
    if is_live(state):
        return None
    try:
        with locks.layer_lock(state.rootfs, wait=False):
            try:
                again = run_state_from_json(read_json(path))
            except FileNotFoundError:
                return None
            if is_live(again):
                return None
            os.unlink(path)
            release_layer_mount(again)  # named by this start alone: no later start of the container uses it
            return again
    except PycorError:
        return None  # busy: its container is being started, reset or committed right now



def sweep_stale_records(skip: str = "") -> list[RunState]:
    """At a start and a stop: clear the records whose monitor process is gone, found by the monitor index
    (one listdir and one /proc read per running container; reading every record would cost a
    start 13 ms at 200 containers). Records without an index entry go at the next gc or doctor --fix."""
    try:
        entries = os.listdir(RUN_MONITORS)
    except FileNotFoundError:
        return []
    cleared = []
    for entry in entries:
        pid, _, rest = entry.partition(".")
        start, _, key = rest.partition(".")
        if not pid.isdigit() or not key or str(proc_start_time(int(pid))) == start:
            continue  # its monitor runs (a killed one may linger as a zombie: proc_start_time says None)
        path = os.path.join(RUN_CONTAINERS, key + ".json")
        gone = _clear_if_stale(path) if path != skip else None
        if gone is not None:
            cleared.append(gone)
        if path == skip or not os.path.lexists(path):  # a record busy under its layer lock keeps its entry
            remove(os.path.join(RUN_MONITORS, entry))
    return cleared

