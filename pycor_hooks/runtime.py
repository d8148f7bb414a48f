"""The runtimes pycor containers run under: LXC, LXD and Incus, behind one interface.

Every runtime answers the same questions and takes the same orders:
containers() lists its pycor containers, state(), start(), stop(), restart()
(each waiting until it is done), exec() runs a command inside, destroy()
removes a container with its changes, idmap() gives its lxc.idmap lines.
LXD and Incus are one class over one REST client (lxd.Daemon), told apart by
its dialect. Nothing above this module asks which runtime a container has:
the inventory (all_containers, find_container, used_versions) is here.

For the CLI only: hooks never import this module.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from . import lxc
from .driver import Driver, Registration
from .errors import NotFound, PycorError
from .layer import is_layer
from .names import check_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .builder import Ran
    from .daemon import Daemon
    from .spec import ContainerSpec

WAIT_SECONDS = 60


class Container:
    """One pycor container: its name, runtime kind ('lxc', 'lxd', 'incus'), rootfs, state; rt drives it."""

    __slots__ = ("name", "runtime", "rootfs", "state", "lxcpath", "rt", "store", "lxc_name")

    def __init__(self, name: str, runtime: str, rootfs: str, state: str, lxcpath: str | None, rt: "Runtime",
                 store: str | None = None, lxc_name: str | None = None) -> None:
        self.name, self.runtime, self.rootfs, self.state, self.lxcpath, self.rt = name, runtime, rootfs, state, lxcpath, rt
        self.store = store  # the store its hook lines name (None: not known)
        # the name LXC and so the hooks know it by (its run state's): PROJECT_NAME outside a daemon's default project
        self.lxc_name = lxc_name or name

    def registration(self) -> Registration:
        return Registration(self.lxc_name, self.rootfs, self.runtime, self.lxcpath)

    def __repr__(self) -> str:
        return f"Container({self.runtime}:{self.name})"


class Runtime:
    """What pycor needs of a container runtime."""

    kind = "?"
    title = "?"

    def containers(self, with_state: bool = True) -> list[Container]:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def create(self, want: ContainerSpec, driver: Driver, template: str | None = None) -> None:
        """Make a container of the spec (checked in full first: nothing is half-made on a refusal)."""
        raise NotImplementedError

    def state(self, name: str) -> str:
        """RUNNING, STOPPED, ... (upper case, as LXC says it)."""
        raise NotImplementedError

    def start(self, name: str) -> None:
        raise NotImplementedError

    def stop(self, name: str, force: bool = False) -> None:
        raise NotImplementedError

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def exec(self, name: str, argv: list[str], seconds: float = WAIT_SECONDS, relay: bool = False) -> Ran:
        """Run argv inside the running container (its runtime's tool; confined as the container is; what runs
        is the container's own), its output and errors through one pipe: relayed to our stderr without control
        characters (relay), or kept, its end. Bounded whatever the container does (builder.run_bounded); a
        process of the container that keeps the pipe open after the command ended ends with the container,
        which is stopped."""
        from .builder import run_bounded

        cmd, env = self.exec_argv(name, argv)
        return run_bounded(cmd, env, seconds, relay, hung=lambda: self.stop(name, force=True))

    def exec_argv(self, name: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        """The command line (and environment, None: ours) that runs argv inside the running container, through
        the runtime's own tool (for exec)."""
        raise NotImplementedError

    def destroy(self, name: str, force: bool = False) -> None:
        """Remove a container with its changes; a running one only with force (stopped first)."""
        if self.state(name) != "STOPPED":
            if not force:
                raise PycorError(f"container {name!r} is running", f"stop it first ({self.hint('stop', name)}) or use --force")
            self.stop(name, force=True)
        from . import faults

        faults.point("rm.stopped")
        self.delete(name)

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def idmap(self, name: str) -> str | None:
        """The container's lxc.idmap lines, or None for a privileged one."""
        raise NotImplementedError

    def shifted(self, name: str) -> bool:
        """Whether an unprivileged container's layer holds its ids shifted by its idmap on disk (LXC's, LXD 5.0's),
        rather than as the container sees them (a daemon that mounts the rootfs idmapped: Incus by default)."""
        return True

    def hint(self, verb: str, name: str) -> str:
        """The command a user runs to start or stop (verb) this container: its own lxcpath, daemon and project."""
        raise NotImplementedError


class LxcRuntime(Runtime):
    """Raw LXC in one lxcpath (containers registered in other lxcpaths are listed with their own)."""

    kind, title = "lxc", "LXC"

    def __init__(self, lxcpath: str) -> None:
        self.lxcpath = lxcpath

    def containers(self, with_state: bool = True) -> list[Container]:
        return [Container(c.name, "lxc", c.rootfs, self.state(c.name) if with_state else "?", c.lxcpath, self,
                          self.store_of(c.name)) for c in lxc.containers(self.lxcpath)]

    def store_of(self, name: str) -> str | None:
        from .daemon import hooks_store

        try:
            with open(os.path.join(self.lxcpath, name, "config"), encoding="utf-8", errors="replace") as f:
                return hooks_store(f.read())
        except OSError:
            return None

    def has(self, name: str) -> bool:
        return lxc.exists(name, self.lxcpath)

    def create(self, want: ContainerSpec, driver: Driver, template: str | None = None) -> None:
        """lxc-create -t pycor; --size on disk makes the rootfs a btrfs subvolume (checked before anything is made)."""
        driver.store.require(want.base)
        # before lxc-create, whose cleanup of a failed create removes the rootfs directory it was given
        driver.check_place(want.name, want.rootfs or os.path.join(self.lxcpath, want.name, "rootfs"), self.lxcpath, want.adopt)
        if want.pin:
            driver.store.version(want.base, want.pin)
        backing = None
        if want.size and not want.ephemeral:
            from . import quota

            os.makedirs(self.lxcpath, exist_ok=True)
            if quota.require(self.lxcpath) == "btrfs":
                backing = "btrfs"
        if template is None:
            from .install import LXC_TEMPLATES_DIR, TEMPLATE
            from .store import templates_dir

            template = "pycor" if templates_dir() == LXC_TEMPLATES_DIR else os.path.join(templates_dir(), TEMPLATE)

        def check_layer(rootfs: str) -> None:
            if want.adopt:  # all of it, before lxc-create runs
                from .spec import idmap_lines, mapped_root

                uid, gid = mapped_root({}, idmap_lines({}, want.unprivileged))
                driver.adopt_volume(want.name, rootfs, want.base, uid, gid, register=False)

        lxc.create(want, self.lxcpath, template, driver.store.hook_arg, check=check_layer, backing=backing)

    def state(self, name: str) -> str:
        return lxc.state(name, self.lxcpath)

    def tool(self, tool: str, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return lxc.run_tool([tool, "-n", name, "-P", self.lxcpath, *args], check=check)

    def start(self, name: str) -> None:
        self.tool("lxc-start", name)
        self.tool("lxc-wait", name, "-s", "RUNNING", "-t", str(WAIT_SECONDS))

    def stop(self, name: str, force: bool = False) -> None:
        if not force:
            self.tool("lxc-stop", name, "-t", "30", check=False)
        if self.state(name) != "STOPPED":
            self.tool("lxc-stop", name, "-k")

    def exec_argv(self, name: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        return ["lxc-attach", "-n", name, "-P", self.lxcpath, "--clear-env", "--", *argv], None

    def destroy(self, name: str, force: bool = False) -> None:
        from . import locks

        with locks.name_lock(self.lxcpath, name):  # never in the middle of a create of the same name
            if not self.has(name):
                raise NotFound(f"no container {name!r} in {self.lxcpath}", "'pycor ls' lists them")
            super().destroy(name, force)

    def delete(self, name: str) -> None:
        self.tool("lxc-destroy", name)

    def idmap(self, name: str) -> str | None:
        with open(os.path.join(self.lxcpath, name, "config"), encoding="utf-8") as f:
            return f.read()

    def hint(self, verb: str, name: str) -> str:
        try:  # a hint may be part of another error's message: it never raises
            default = os.path.abspath(lxc.default_lxcpath())
        except Exception:  # noqa: BLE001 - no lxc-config: name the lxcpath
            default = None
        where = [] if os.path.abspath(self.lxcpath) == default else ["-P", self.lxcpath]
        return shlex.join([f"lxc-{verb}", "-n", name, *where])


class DaemonRuntime(Runtime):
    """LXD or Incus: one daemon, one project, through its REST API (exec through its own CLI)."""

    def __init__(self, client: Daemon) -> None:
        self.client = client
        self.kind, self.title = client.kind, client.title

    def containers(self, with_state: bool = True) -> list[Container]:
        from .daemon import hooks_store, instance_dir_name

        found = []
        for inst in self.client.instances():
            rootfs = self.client.instance_rootfs(inst)
            if rootfs and is_layer(rootfs):
                raw = str((inst.get("expanded_config") or {}).get("raw.lxc", ""))
                found.append(Container(inst["name"], self.kind, rootfs, str(inst.get("status", "?")).upper(),
                                       self.client.dir, self, hooks_store(raw), instance_dir_name(inst)))
        return found

    def has(self, name: str) -> bool:
        return self.client.instance(name) is not None

    def create(self, want: ContainerSpec, driver: Driver, template: str | None = None) -> None:
        """An instance on the base's image with the overlay profile (set up first, safe to repeat)."""
        driver.store.require(want.base)
        if self.has(want.name):
            raise PycorError(f"{self.title} instance {want.name!r} already exists", "pick another name, or 'pycor rm' it first")
        driver.daemon_init(self.client)
        self.client.create(want.name, want.base, size=want.size, ephemeral=want.ephemeral)

    def set_size(self, name: str, size: int | None) -> None:
        self.client.set_root_size(name, size)

    def instance(self, name: str) -> dict:
        inst = self.client.instance(name)
        if inst is None:
            raise NotFound(f"no {self.title} instance {name!r} in {self.client.where()}", "'pycor ls' lists them")
        return inst

    def state(self, name: str) -> str:
        return str(self.instance(name).get("status", "?")).upper()

    def start(self, name: str) -> None:
        self.client.set_state(name, "start", timeout=WAIT_SECONDS)

    def stop(self, name: str, force: bool = False) -> None:
        self.client.set_state(name, "stop", force=force, timeout=30)

    def restart(self, name: str) -> None:
        self.client.set_state(name, "restart", timeout=30)

    def exec_argv(self, name: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        return self.client.cli_argv("exec", name, "--", *argv), self.client.cli_env()

    def delete(self, name: str) -> None:
        self.client.delete(name)

    def idmap(self, name: str) -> str | None:
        config = self.instance(name).get("config", {})
        raw = config.get("volatile.idmap.current") or config.get("volatile.last_state.idmap")
        if not raw:
            return None
        lines = []
        for e in json.loads(raw):
            for kind, flag in (("u", "Isuid"), ("g", "Isgid")):
                if e.get(flag):
                    lines.append(f"lxc.idmap = {kind} {e['Nsid']} {e['Hostid']} {e['Maprange']}")
        return "\n".join(lines)

    def shifted(self, name: str) -> bool:
        # volatile.last_state.idmap: the map the instance's storage is shifted by on disk, "[]" for none
        return self.instance(name).get("config", {}).get("volatile.last_state.idmap", "") not in ("[]", "null")

    def hint(self, verb: str, name: str) -> str:
        d, dialect = self.client, self.client.dialect
        env = "" if d.dir in (dialect.default_dir, *dialect.extra_dirs) else f"{dialect.dir_env}={shlex.quote(d.dir)} "
        return env + shlex.join([dialect.cli, verb, name, *([] if d.project == "default" else ["--project", d.project])])


def daemon_runtimes() -> list[DaemonRuntime]:
    """Every LXD and Incus daemon that runs here, each in its pycor project."""
    from .daemon import daemons

    return [DaemonRuntime(client) for client in daemons()]


def daemon_runtime(kind: str) -> DaemonRuntime:
    """The runtime of one daemon kind; a clear error if it does not run here."""
    from .daemon import DIALECTS, daemon

    client = daemon(kind)
    if client is None:
        dialect = DIALECTS[kind]
        raise PycorError(f"{dialect.title} is not running here", f"{dialect.start_hint}, or use LXC (--runtime lxc)")
    return DaemonRuntime(client)


def all_containers(driver: Driver, lxcpath: str, with_state: bool = True) -> list[Container]:
    """This store's pycor containers: LXC ones in lxcpath or registered in another, and those of every LXD and
    Incus daemon. Containers whose hooks name another store run on that store's bases: not listed."""
    found: dict[str, Container] = {}
    lxc_here = LxcRuntime(lxcpath)
    for c in lxc_here.containers(with_state):
        found[c.rootfs] = c
    for reg in driver.registrations():
        if reg.runtime == "lxc" and reg.lxcpath and reg.rootfs not in found:
            rt = LxcRuntime(reg.lxcpath)
            found[reg.rootfs] = Container(reg.name, "lxc", reg.rootfs, rt.state(reg.name) if with_state else "?",
                                          reg.lxcpath, rt, rt.store_of(reg.name))
    for drt in daemon_runtimes():
        for c in drt.containers(with_state):
            found[c.rootfs] = c
    mine = [c for c in found.values() if c.store in (None, driver.store.root)]
    return sorted(mine, key=lambda c: (c.name, c.runtime))


def find_container(driver: Driver, lxcpath: str, name: str) -> Container:
    check_name(name, "container name")
    matches = [c for c in all_containers(driver, lxcpath) if c.name == name]
    if not matches:
        raise NotFound(f"no pycor container named {name!r}", "'pycor ls' lists them")
    if len(matches) > 1:
        runtimes = " and ".join(sorted({c.runtime for c in matches}))
        raise PycorError(f"{runtimes} each have a container named {name!r}", "use -P to pick the LXC one, or rename one")
    return matches[0]


def runtime_with(name: str, lxcpath: str, kind: str | None = None) -> Runtime:
    """The runtime that has a container of this name (any container, pycor's or not): LXC first, then each daemon."""
    if kind is not None and kind != "lxc":
        return daemon_runtime(kind)
    lxc_here = LxcRuntime(lxcpath)
    if kind == "lxc" or lxc_here.has(name):
        return lxc_here
    for rt in daemon_runtimes():
        if rt.has(name):
            return rt
    return lxc_here  # says what is missing
