"""Fixtures that make real stores, bases and LXC containers, and always remove them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from helpers import PYCOR, run
from pycor_hooks.linux import container_cgroups, remove_cgroup_if_empty

TEST_ROOT = "/var/tmp/pycor-tests"


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("pycor's tests start real containers: run them as root (see README.md)")


@pytest.fixture(scope="session", autouse=True)
def no_container_cgroup_left() -> Iterator[None]:
    """Remove the empty container cgroups this session's containers left. A container whose monitor a test
    killed (a crash, a dead daemon) leaves its cgroups, 15 a booted one, each holding kernel memory that grows
    with every filesystem the host mounts: a run of the tests must not leave the host costlier."""
    before = set(container_cgroups())
    yield
    for top in set(container_cgroups()) - before:  # made during the session; only if no process is in any of it
        remove_cgroup_if_empty(top)


@pytest.fixture(scope="session")
def session_dir() -> Iterator[str]:
    path = os.path.join(TEST_ROOT, uuid.uuid4().hex[:8])
    os.makedirs(path)
    os.chmod(TEST_ROOT, 0o755)  # unprivileged container root must reach its rootfs
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def hooks_dir(session_dir: str) -> str:
    """This session's own copy of the hooks: test runs of two checkouts never run each other's code."""
    return os.path.join(session_dir, "hooks")


@pytest.fixture(scope="session")
def templates_dir(session_dir: str) -> str:
    return os.path.join(session_dir, "templates")


@pytest.fixture(scope="session")
def template(templates_dir: str) -> str:
    """What to pass to lxc-create -t: this session's template, by absolute path."""
    return os.path.join(templates_dir, "lxc-pycor")


@pytest.fixture(scope="session")
def installed(env: dict[str, str]) -> None:
    """The hooks and the template, installed as users install them, into this session's folders."""
    run(PYCOR + ["install"], env=env)


@pytest.fixture(scope="session")
def store(session_dir: str) -> str:
    return os.path.join(session_dir, "store")


@pytest.fixture(scope="session")
def env(store: str, hooks_dir: str, templates_dir: str) -> dict[str, str]:
    return dict(os.environ, PYCOR_STORE=store, PYCOR_HOOKS_DIR=hooks_dir, PYCOR_TEMPLATES_DIR=templates_dir)


@pytest.fixture(scope="session")
def lxcpath(session_dir: str) -> Iterator[str]:
    path = os.path.join(session_dir, "lxc")
    os.makedirs(path)
    yield path
    for name in os.listdir(path):
        subprocess.run(["lxc-stop", "-n", name, "-P", path, "-k"], capture_output=True)
        subprocess.run(["lxc-destroy", "-n", name, "-P", path], capture_output=True)


@pytest.fixture(scope="session")
def busybox_base(installed: None, env: dict[str, str]) -> str:
    run(PYCOR + ["base", "import", "busybox", "--busybox"], env=env)
    return "busybox"


@dataclass
class Container:
    name: str
    lxcpath: str
    env: dict[str, str]

    @property
    def rootfs(self) -> str:
        return os.path.join(self.lxcpath, self.name, "rootfs")

    @property
    def upper(self) -> str:
        return os.path.join(self.rootfs, ".pycor", "upper")

    @property
    def config(self) -> str:
        return os.path.join(self.lxcpath, self.name, "config")

    def lxc(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([tool, "-n", self.name, "-P", self.lxcpath, *args], check=check)

    def start(self) -> None:
        self.lxc("lxc-start", "-l", "DEBUG", "-o", self.log)
        self.lxc("lxc-wait", "-s", "RUNNING", "-t", "20")

    @property
    def log(self) -> str:
        return os.path.join(self.lxcpath, f"{self.name}.log")

    def stop(self) -> None:
        self.lxc("lxc-stop", "-t", "10")

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lxc("lxc-attach", "--clear-env", "--", "/bin/sh", "-c", script, check=check)

    def state(self) -> str:
        return self.lxc("lxc-info", "-s", "-H").stdout.strip()


def destroy(name: str, lxcpath: str) -> None:
    subprocess.run(["lxc-stop", "-n", name, "-P", lxcpath, "-k"], capture_output=True)
    subprocess.run(["lxc-destroy", "-n", name, "-P", lxcpath], capture_output=True)
    # a test that took the container's config away (a lost config, an adopt) leaves a directory lxc-destroy ignores
    shutil.rmtree(os.path.join(lxcpath, name), ignore_errors=True)


@pytest.fixture
def make_container(lxcpath: str, env: dict[str, str], busybox_base: str) -> Iterator[Callable[..., Container]]:
    made: list[str] = []

    def make(base: str = busybox_base, name: str | None = None, path: str = lxcpath, extra: tuple[str, ...] = ()) -> Container:
        name = name or f"c{uuid.uuid4().hex[:8]}"
        made.append((name, path))  # type: ignore[arg-type]
        run(PYCOR + ["create", name, "--base", base, "-P", path, "--network", "none", *extra], env=env)
        return Container(name, path, env)

    yield make
    for name, path in made:  # type: ignore[misc]
        destroy(name, path)


def host_suite() -> str:
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return "bookworm"


@pytest.fixture(scope="session")
def debian_base(installed: None, env: dict[str, str]) -> str:
    """A real debootstrap Debian minbase, built once per test session."""
    run(PYCOR + ["base", "import", "debian", "--debootstrap", host_suite()], env=env, timeout=900)
    return "debian"


@pytest.fixture(scope="session")
def bootable_base(installed: None, env: dict[str, str]) -> str:
    """The demo's default base (systemd, DHCP on eth0, nginx), built once per test session."""
    run(PYCOR + ["base", "import", "debian-boot", "--debootstrap", host_suite(), "--bootable"], env=env, timeout=900)
    return "debian-boot"


# -- LXD ---------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# by CLI (lxc talks to LXD); LXD_DIR / INCUS_DIR aim the whole run at another daemon (a stock incusd, say)
DAEMON_DIRS = {"lxc": os.environ.get("LXD_DIR") or "/var/lib/lxd", "incus": os.environ.get("INCUS_DIR") or "/var/lib/incus"}


def daemon_project(cli: str, up_script: str) -> Iterator[str]:
    """A private project of LXD (cli 'lxc') or Incus (cli 'incus'): own profiles and images; removed with all it holds."""
    if subprocess.run([cli, "info"], capture_output=True).returncode != 0:
        run(["bash", os.path.join(REPO, "scripts", up_script)], timeout=300)
    project = f"pycor-test-{uuid.uuid4().hex[:6]}"
    run([cli, "project", "create", project, "-c", "features.images=true", "-c", "features.profiles=true"])
    try:
        run([cli, "profile", "device", "add", "default", "root", "disk", "path=/", "pool=default", "--project", project])
        yield project
    finally:
        delete_instances(cli, project)
        images = subprocess.run([cli, "image", "list", "--project", project, "-c", "f", "--format", "csv"],
                                capture_output=True, text=True).stdout.split()
        for fp in images:
            subprocess.run([cli, "image", "delete", fp, "--project", project], capture_output=True)
        subprocess.run([cli, "profile", "delete", "overlay", "--project", project], capture_output=True)
        subprocess.run([cli, "project", "delete", project], capture_output=True)


def delete_instances(cli: str, project: str, names: frozenset[str] = frozenset()) -> None:
    """Every instance of a test project (copies and renames a test made included), and the names given."""
    listing = subprocess.run([cli, "list", "--project", project, "-c", "n", "--format", "csv"],
                             capture_output=True, text=True).stdout.split()
    for name in set(names) | set(listing):
        subprocess.run([cli, "delete", "-f", name, "--project", project], capture_output=True)


@contextlib.contextmanager
def private_lxd_project() -> Iterator[str]:
    """A private LXD project (own profiles and images), removed with all it holds on exit."""
    yield from daemon_project("lxc", "lxd-up.sh")


@pytest.fixture(scope="session")
def lxd_project(installed: None, env: dict[str, str]) -> Iterator[str]:
    """A private LXD project (own profiles and images), so tests never touch the user's."""
    with private_lxd_project() as project:
        yield project


@pytest.fixture(scope="session")
def lxd_env(env: dict[str, str], lxd_project: str, busybox_base: str) -> dict[str, str]:
    """Environment for pycor commands aimed at the test project, after 'pycor lxd init'."""
    lenv = dict(env, PYCOR_LXD_PROJECT=lxd_project)
    run(PYCOR + ["lxd", "init"], env=lenv)
    return lenv


@dataclass
class LxdContainer:
    """An LXD instance (cli 'lxc'), or an Incus one (cli 'incus')."""

    name: str
    project: str
    cli: str = "lxc"

    def lxc(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([self.cli, "--project", self.project, *args], check=check, timeout=timeout)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lxc("exec", self.name, "--", "/bin/sh", "-c", script, check=check)

    @property
    def folder(self) -> str:
        """The instance's folder name: PROJECT_NAME outside the default project."""
        return self.name if self.project == "default" else f"{self.project}_{self.name}"

    @property
    def rootfs(self) -> str:
        return f"{DAEMON_DIRS[self.cli]}/storage-pools/default/containers/{self.folder}/rootfs"

    @property
    def upper(self) -> str:
        return os.path.join(self.rootfs, ".pycor", "upper")

    def status(self) -> str:
        out = self.lxc("list", f"^{self.name}$", "-c", "s", "--format", "csv").stdout.strip()
        return out

    def snapshot(self, snap: str) -> None:
        self.lxc(*(["snapshot"] if self.cli == "lxc" else ["snapshot", "create"]), self.name, snap)

    def restore(self, snap: str) -> None:
        self.lxc(*(["restore"] if self.cli == "lxc" else ["snapshot", "restore"]), self.name, snap)

    def shifted(self) -> bool:
        """Whether the daemon keeps the instance's files shifted to its map on disk (LXD 5.0), rather than as the
        container sees them (Incus's idmapped rootfs: volatile.last_state.idmap is '[]')."""
        return self.lxc("config", "get", self.name, "volatile.last_state.idmap").stdout.strip() != "[]"

    def other(self, name: str) -> "LxdContainer":
        """Another instance of the same daemon and project (a copy, a rename)."""
        return LxdContainer(name, self.project, self.cli)


def launcher(cli: str, project: str, base: str, denv: dict[str, str] | None = None) -> Iterator[Callable[..., LxdContainer]]:
    made: list[str] = []
    default = base

    def do(base: str = base, name: str | None = None, extra: tuple[str, ...] = (), start: bool = True) -> LxdContainer:
        name = name or f"l{uuid.uuid4().hex[:8]}"
        made.append(name)
        if base != default and denv is not None:  # a base a test made since the session's init: its image
            run(PYCOR + ["lxd" if cli == "lxc" else "incus", "init"], env=denv)
        verb = "launch" if start else "init"
        run([cli, verb, f"pycor/{base}", name, "--profile", "default", "--profile", "overlay",
             "--project", project, *extra], timeout=180)
        return LxdContainer(name, project, cli)

    yield do
    delete_instances(cli, project, set(made))


@pytest.fixture(params=["lxd", "incus"])
def launch(request: pytest.FixtureRequest, busybox_base: str) -> Iterator[Callable[..., LxdContainer]]:
    """Launch pycor containers in LXD's test project, then (the same test again) in Incus's."""
    cli = "lxc" if request.param == "lxd" else "incus"
    denv = request.getfixturevalue(f"{request.param}_env")
    yield from launcher(cli, request.getfixturevalue(f"{request.param}_project"), busybox_base, denv)


@pytest.fixture
def lxd_launch(lxd_env: dict[str, str], lxd_project: str, busybox_base: str) -> Iterator[Callable[..., LxdContainer]]:
    """launch, for what is LXD's alone (its second daemon, its btrfs pool): no Incus variant."""
    yield from launcher("lxc", lxd_project, busybox_base, lxd_env)


# -- Incus -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def incus_project(installed: None, env: dict[str, str]) -> Iterator[str]:
    """A private Incus project (own profiles and images), so tests never touch the user's."""
    yield from daemon_project("incus", "incus-up.sh")


@pytest.fixture(scope="session")
def incus_env(env: dict[str, str], incus_project: str, busybox_base: str) -> dict[str, str]:
    """Environment for pycor commands aimed at the Incus test project, after 'pycor incus init'."""
    ienv = dict(env, PYCOR_INCUS_PROJECT=incus_project)
    run(PYCOR + ["incus", "init"], env=ienv)
    return ienv
