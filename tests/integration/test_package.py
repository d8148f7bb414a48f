"""pycor as users get it: 'pycor install' refusing hooks that cannot run, and the Debian package.

The package tests build the .deb (scripts/deb.sh, or $PYCOR_DEB), install it
with apt and run containers on the INSTALLED hooks: LXC privileged and
unprivileged, one LXD launch, apt remove and reinstall with containers
present, purge. They take a couple of minutes; the machine is restored
afterwards (the package purged, whatever files it replaced put back), and
other tests never depend on it: they run their session's own hooks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from conftest import REPO, TEST_ROOT, destroy, private_lxd_project

from helpers import PYCOR, run, tree_checksum

HOOKS = ("pycor-pre-start", "pycor-pre-mount", "pycor-post-stop")
LXC_HOOKS = "/usr/share/lxc/hooks"
LXC_TEMPLATE = "/usr/share/lxc/templates/lxc-pycor"
CONF = "/etc/pycor/pycor.conf"
STORE = "/var/lib/pycor"
PACKAGE_DIR = "/usr/lib/python3/dist-packages"
CACHE_TAG = sys.implementation.cache_tag  # the package's Python is this one: /usr/bin/python3


def closed_dir(parent: str) -> str:
    """A folder only root may enter, as /root is (where pyenv puts its Pythons)."""
    path = os.path.join(parent, f"private-{uuid.uuid4().hex[:6]}")
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)
    return path


def copy_source(dest: str) -> str:
    """A copy of this checkout's package and hook files, without bytecode."""
    ignore = shutil.ignore_patterns("__pycache__")
    for sub in ("pycor_hooks", "hooks", "lxc-templates"):
        shutil.copytree(os.path.join(REPO, sub), os.path.join(dest, sub), ignore=ignore)
    return dest


def install_env(env: dict[str, str], pythonpath: str) -> dict[str, str]:
    # no bytecode from this run itself: what the package folder has after it, install compiled
    return dict(env, PYTHONPATH=pythonpath, PYTHONDONTWRITEBYTECODE="1")


def pycor_install(python: str, source: str, env: dict[str, str], dest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "pycor_hooks.cli", "install", "--hooks-dir", os.path.join(dest, "hooks"),
                           "--templates-dir", os.path.join(dest, "templates")],
                          capture_output=True, text=True, env=install_env(env, source), cwd=source, stdin=subprocess.DEVNULL)


# -- pycor install (pip or source) ----------------------------------------------
def test_install_refuses_an_interpreter_under_a_folder_container_root_cannot_enter(session_dir, env):
    private = closed_dir(session_dir)
    run(["/usr/bin/python3", "-m", "venv", "--without-pip", os.path.join(private, "venv")])
    dest = os.path.join(session_dir, f"refused-{uuid.uuid4().hex[:6]}")
    proc = pycor_install(os.path.join(private, "venv", "bin", "python3"), REPO, env, dest)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"the interpreter {private}/venv/bin/python3" in proc.stderr
    assert f"{private} is mode 0700: others cannot enter it" in proc.stderr
    assert not os.path.exists(dest)  # nothing written


def test_install_refuses_a_link_in_an_open_folder_to_an_interpreter_under_a_closed_one(session_dir, env):
    """The pyenv case: python3 found on PATH in an open folder, the real binary under /root (0700)."""
    private = closed_dir(session_dir)
    shutil.copy2(os.path.realpath("/usr/bin/python3"), os.path.join(private, "python3"))
    open_bin = os.path.join(session_dir, f"bin-{uuid.uuid4().hex[:6]}")
    os.mkdir(open_bin)
    os.symlink(os.path.join(private, "python3"), os.path.join(open_bin, "python3"))
    dest = os.path.join(session_dir, f"refused-{uuid.uuid4().hex[:6]}")
    proc = pycor_install(os.path.join(open_bin, "python3"), REPO, env, dest)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"the interpreter {open_bin}/python3 (-> {private}/python3): {private} is mode 0700" in proc.stderr
    assert not os.path.exists(dest)


def test_install_refuses_a_package_folder_container_root_cannot_read(session_dir, env):
    source = copy_source(closed_dir(session_dir))
    dest = os.path.join(session_dir, f"refused-{uuid.uuid4().hex[:6]}")
    proc = pycor_install("/usr/bin/python3", source, env, dest)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"the package folder {source}/pycor_hooks: {source} is mode 0700" in proc.stderr
    assert not os.path.exists(dest)


def hook_imports(hook: str) -> subprocess.CompletedProcess[str]:
    """Run an installed hook with its own #! line plus -v (which reports where each module came from)."""
    with open(hook, encoding="utf-8") as f:
        python, *flags = f.readline()[2:].split()
    return subprocess.run([python, *flags, "-v", hook], capture_output=True, text=True, env={}, stdin=subprocess.DEVNULL)


def pycache(folder: str) -> dict[str, int]:
    cache = os.path.join(folder, "pycor_hooks", "__pycache__")
    return {n: os.stat(os.path.join(cache, n)).st_mtime_ns for n in os.listdir(cache)} if os.path.isdir(cache) else {}


def test_install_compiles_the_package_and_a_hook_loads_it_without_writing_bytecode(session_dir, env):
    source = copy_source(os.path.join(session_dir, f"src-{uuid.uuid4().hex[:6]}"))
    os.chmod(source, 0o755)
    assert pycache(source) == {}
    dest = os.path.join(session_dir, f"inst-{uuid.uuid4().hex[:6]}")
    proc = pycor_install("/usr/bin/python3", source, env, dest)
    assert proc.returncode == 0, proc.stderr
    compiled = pycache(source)
    assert f"hooks.{CACHE_TAG}.pyc" in compiled  # compiled by install, not by this run (no bytecode written)
    hook = os.path.join(dest, "hooks", "pycor-pre-start")
    with open(hook, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/python3 -IBS\n")
    assert f"sys.path.insert(0, {source!r})" in text
    proc = hook_imports(hook)
    assert f"code object from '{source}/pycor_hooks/__pycache__/hooks.{CACHE_TAG}.pyc'" in proc.stderr, proc.stderr[-2000:]
    assert pycache(source) == compiled  # nothing new, nothing rewritten
    assert not os.path.exists(os.path.join(dest, "hooks", "__pycache__"))


def doctor_hooks_check(env: dict[str, str], hooks_dir: str) -> dict:
    proc = run(PYCOR + ["doctor", "--format", "json"], env=dict(env, PYCOR_HOOKS_DIR=hooks_dir), check=False)
    return next(c for c in json.loads(proc.stdout) if c["name"] == "pycor hooks installed")


def test_doctor_finds_hooks_whose_interpreter_or_package_folder_is_gone(session_dir, env):
    venv = os.path.join(session_dir, f"venv-{uuid.uuid4().hex[:6]}")
    run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv])
    old = os.path.join(session_dir, f"old-{uuid.uuid4().hex[:6]}")
    assert pycor_install(os.path.join(venv, "bin", "python3"), REPO, env, old).returncode == 0
    assert doctor_hooks_check(env, os.path.join(old, "hooks"))["ok"]
    shutil.rmtree(venv)
    check = doctor_hooks_check(env, os.path.join(old, "hooks"))
    assert not check["ok"] and f"the interpreter {venv}/bin/python3 no longer exists" in check["detail"]

    source = copy_source(os.path.join(session_dir, f"src-{uuid.uuid4().hex[:6]}"))
    moved = os.path.join(session_dir, f"moved-{uuid.uuid4().hex[:6]}")
    assert pycor_install("/usr/bin/python3", source, env, moved).returncode == 0
    shutil.rmtree(source)
    check = doctor_hooks_check(env, os.path.join(moved, "hooks"))
    assert not check["ok"] and f"the package folder {source} has no pycor_hooks" in check["detail"]


# -- the Debian package -------------------------------------------------------------
def sh(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run(argv, env=dict(env or os.environ, DEBIAN_FRONTEND="noninteractive"), timeout=timeout)


@pytest.fixture(scope="session")
def deb(session_dir: str) -> str:
    """The .deb: $PYCOR_DEB if set, else built from this checkout by scripts/deb.sh (lintian errors fail it)."""
    if os.environ.get("PYCOR_DEB"):
        return os.environ["PYCOR_DEB"]
    proc = run(["bash", os.path.join(REPO, "scripts", "deb.sh"), "--out", os.path.join(session_dir, "deb")], timeout=900)
    return proc.stdout.strip().splitlines()[-1]


def dpkg_installed() -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "pycor"], capture_output=True, text=True)
    return proc.stdout.endswith(" installed")


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return sh(["apt-get", "-y", "-q", *args])


class Installed(str):
    """The .deb's path, and the (uid, gid, mode) of /var/lib/pycor before the package came, if it existed."""

    store_before: tuple[int, int, int] | None


@pytest.fixture(scope="module")
def package(deb: str, session_dir: str) -> Iterator[Installed]:
    """The package, installed; afterwards purged and the machine as it was (files it replaced put back)."""
    os.makedirs(TEST_ROOT, exist_ok=True)
    with open(os.path.join(TEST_ROOT, "package.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one test session at a time installs the package
        if dpkg_installed():
            pytest.fail("the pycor package is installed on this machine already: these tests would replace it")
        saved = os.path.join(session_dir, "replaced")
        replaced = [p for p in [os.path.join(LXC_HOOKS, h) for h in HOOKS] + [LXC_TEMPLATE, CONF] if os.path.lexists(p)]
        for p in replaced:
            os.makedirs(os.path.dirname(saved + p), exist_ok=True)
            shutil.copy2(p, saved + p, follow_symlinks=False)
        installed = Installed(deb)
        st = os.stat(STORE) if os.path.isdir(STORE) else None
        installed.store_before = (st.st_uid, st.st_gid, st.st_mode) if st else None
        try:
            apt_get("install", deb)
            yield installed
        finally:
            if subprocess.run(["dpkg", "-s", "pycor"], capture_output=True).returncode == 0:  # installed or config-files
                apt_get("purge", "pycor")
            if st is None and os.path.isdir(STORE) and not os.listdir(STORE):
                os.rmdir(STORE)  # postinst's; anything put in it since is someone's data, left alone
            for p in replaced:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                shutil.copy2(saved + p, p, follow_symlinks=False)
            if os.path.isdir("/etc/pycor") and not os.listdir("/etc/pycor"):
                os.rmdir("/etc/pycor")


@pytest.fixture(scope="module")
def pkg_env(package: str, session_dir: str) -> dict[str, str]:
    """The installed package's defaults (hooks and template in LXC's folders), on a private store made as postinst makes it."""
    store = os.path.join(session_dir, f"pkgstore-{uuid.uuid4().hex[:6]}")
    os.mkdir(store, 0o700)
    os.chmod(store, 0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYCOR_")}
    env["PYCOR_STORE"] = store
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # /usr/bin/pycor and Debian's python3, whatever the caller's PATH
    run(["pycor", "base", "import", "busybox", "--busybox"], env=env)
    return env


def owner(path: str) -> str:
    return run(["dpkg-query", "-S", path]).stdout.split(":", 1)[0]


@pytest.mark.package
def test_package_owns_its_files_and_hooks_run_debians_python(package):
    files = [os.path.join(LXC_HOOKS, h) for h in HOOKS] + [
        LXC_TEMPLATE, CONF, "/usr/bin/pycor", f"{PACKAGE_DIR}/pycor_hooks/hooks.py",
        "/usr/share/man/man1/pycor.1.gz", "/usr/share/bash-completion/completions/pycor"]
    for path in files:
        assert owner(path) == "pycor", path
    for path in [os.path.join(LXC_HOOKS, h) for h in HOOKS] + [LXC_TEMPLATE]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert text.startswith("#!/usr/bin/python3 -IBS\n"), path
        assert f'sys.path.insert(0, "{PACKAGE_DIR}")' in text, path
        assert os.stat(path).st_mode & 0o777 == 0o755
    # bytecode compiled at install (dh_python3), not shipped: the hooks load it and never write any
    pyc = f"{PACKAGE_DIR}/pycor_hooks/__pycache__/hooks.{CACHE_TAG}.pyc"
    assert os.path.isfile(pyc)
    assert subprocess.run(["dpkg-query", "-S", pyc], capture_output=True).returncode != 0
    before = pycache(PACKAGE_DIR)
    assert f"code object from '{pyc}'" in hook_imports(os.path.join(LXC_HOOKS, "pycor-pre-mount")).stderr
    assert pycache(PACKAGE_DIR) == before

    conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "pycor"]).stdout
    assert CONF in conffiles
    with open(CONF, encoding="utf-8") as f:
        conf = f.read()
    for key in ("store", "hooks_dir", "templates_dir", "idmapped_layers"):
        assert f"\n#{key} = " in conf, key
    st = os.stat(STORE)
    if package.store_before is None:  # postinst made it
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o700)
    else:  # a store made before the package (pycor from pip, another run): postinst leaves it as it was
        assert (st.st_uid, st.st_gid, st.st_mode) == package.store_before

    page = run(["sh", "-c", "zcat /usr/share/man/man1/pycor.1.gz"]).stdout
    for words in ("pycor \\- ", "OPTIONS 'pycor base import'", "OPTIONS 'pycor lxd init'", ".SH FILES"):
        assert words in page, words
    completion = run(["bash", "-c", "source /usr/share/bash-completion/completions/pycor; "
                      "COMP_WORDS=(pycor base im); COMP_CWORD=2; _pycor; echo \"${COMPREPLY[*]}\"; "
                      "COMP_WORDS=(pycor create x --un); COMP_CWORD=3; _pycor; echo \"${COMPREPLY[*]}\""]).stdout
    assert completion.splitlines() == ["import", "--unprivileged"]


@pytest.mark.package
def test_packaged_pycor_refuses_to_overwrite_its_hooks_and_doctor_passes_them(package, pkg_env):
    proc = run(["pycor", "install"], env=pkg_env, check=False)
    assert proc.returncode == 1
    assert f"{LXC_HOOKS}/pycor-pre-start belongs to the Debian package pycor" in proc.stderr
    check = next(c for c in json.loads(run(["pycor", "doctor", "--format", "json"], env=pkg_env, check=False).stdout)
                 if c["name"] == "pycor hooks installed")
    assert check["ok"], check


class Fleet:
    """Containers on the installed package: LXC privileged, LXC unprivileged, LXD; each holds a file of its own."""

    def __init__(self, env: dict[str, str], lxcpath: str, project: str) -> None:
        self.env, self.lxcpath, self.project = env, lxcpath, project
        self.lxc_names: list[str] = []
        self.lxd_name = ""

    def lxc(self, tool: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run([tool, "-n", name, "-P", self.lxcpath, *args], env=self.env)

    def lxd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["lxc", "--project", self.project, *args], env=self.env, timeout=180)

    def start_all(self) -> None:
        for name in self.lxc_names:
            self.lxc("lxc-start", name, "-l", "DEBUG", "-o", os.path.join(self.lxcpath, f"{name}.log"))
            self.lxc("lxc-wait", name, "-s", "RUNNING", "-t", "20")
        self.lxd("start", self.lxd_name)

    def stop_all(self) -> None:
        for name in self.lxc_names:
            self.lxc("lxc-stop", name, "-t", "10")
        self.lxd("stop", self.lxd_name, "--force")

    def read_all(self) -> list[str]:
        out = [self.lxc("lxc-attach", n, "--clear-env", "--", "/bin/cat", "/own").stdout for n in self.lxc_names]
        return out + [self.lxd("exec", self.lxd_name, "--", "/bin/cat", "/own").stdout]


@pytest.fixture(scope="module")
def fleet(pkg_env: dict[str, str], session_dir: str) -> Iterator[Fleet]:
    lxcpath = os.path.join(session_dir, f"pkglxc-{uuid.uuid4().hex[:6]}")
    os.makedirs(lxcpath)
    with private_lxd_project() as project:
        f = Fleet(pkg_env, lxcpath, project)
        try:
            yield f
        finally:
            for name in f.lxc_names:
                destroy(name, lxcpath)


@pytest.mark.package
def test_lxc_starts_privileged_and_unprivileged_on_the_packaged_hooks(fleet, pkg_env):
    conf = os.path.join(fleet.lxcpath, "no-network.conf")
    with open(conf, "w") as f:
        f.write("lxc.net.0.type = empty\n")
    for extra in ((), ("--unprivileged",)):
        name = f"p{uuid.uuid4().hex[:8]}"
        fleet.lxc_names.append(name)
        fleet.lxc("lxc-create", name, "-t", "pycor", "-f", conf, "--", "--base", "busybox", *extra)
        with open(os.path.join(fleet.lxcpath, name, "config"), encoding="utf-8") as f:
            config = f.read()
        store = pkg_env["PYCOR_STORE"]
        if extra:  # unprivileged: pre-start makes its idmapped views as host root
            hooks = [f"pre-start = {LXC_HOOKS}/pycor-pre-start --store {store}", f"pre-mount = {LXC_HOOKS}/pycor-pre-mount --store {store}"]
        else:  # privileged: one hook process at start
            hooks = [f"pre-mount = {LXC_HOOKS}/pycor-pre-mount --prepare --store {store}"]
        for line in hooks + [f"post-stop = {LXC_HOOKS}/pycor-post-stop --store {store}"]:
            assert f"lxc.hook.{line}" in config, config
        assert ("lxc.idmap" in config) == bool(extra)
    for name in fleet.lxc_names:
        fleet.lxc("lxc-start", name, "-l", "DEBUG", "-o", os.path.join(fleet.lxcpath, f"{name}.log"))
        fleet.lxc("lxc-wait", name, "-s", "RUNNING", "-t", "20")
        fleet.lxc("lxc-attach", name, "--clear-env", "--", "/bin/sh", "-c", f"echo {name} > /own")
        with open(os.path.join(fleet.lxcpath, f"{name}.log"), encoding="utf-8", errors="replace") as f:
            log = f.read()
        assert f"{LXC_HOOKS}/pycor-pre-mount" in log  # LXC ran the package's hook


@pytest.mark.package
def test_lxd_launches_on_the_profile_of_the_packaged_pycor(fleet, pkg_env):
    lenv = dict(pkg_env, PYCOR_LXD_PROJECT=fleet.project)
    run(["pycor", "lxd", "init"], env=lenv)
    profile = fleet.lxd("profile", "show", "overlay").stdout
    assert f"{LXC_HOOKS}/pycor-pre-mount" in profile
    fleet.lxd_name = f"l{uuid.uuid4().hex[:8]}"
    fleet.lxd("launch", "pycor/busybox", fleet.lxd_name, "--profile", "default", "--profile", "overlay")
    fleet.lxd("exec", fleet.lxd_name, "--", "/bin/sh", "-c", f"echo {fleet.lxd_name} > /own")
    assert fleet.read_all()[-1].strip() == fleet.lxd_name


@pytest.mark.package
def test_remove_and_reinstall_keep_containers_and_their_data(fleet, pkg_env, package):
    assert len(fleet.lxc_names) == 2 and fleet.lxd_name, "needs the containers of the two tests above"
    before = fleet.read_all()
    fleet.stop_all()
    base = tree_checksum(os.path.join(pkg_env["PYCOR_STORE"], "bases"))
    apt_get("remove", "pycor")
    assert not os.path.exists(os.path.join(LXC_HOOKS, "pycor-pre-mount"))
    assert os.path.isfile(CONF) and os.path.isdir(STORE)  # remove keeps the conffile and the store
    assert tree_checksum(os.path.join(pkg_env["PYCOR_STORE"], "bases")) == base
    for name in fleet.lxc_names:
        with open(os.path.join(fleet.lxcpath, name, "rootfs", ".pycor", "upper", "own"), encoding="utf-8") as f:
            assert f.read().strip() == name
    apt_get("install", package)
    fleet.start_all()
    assert fleet.read_all() == before
    fleet.stop_all()


@pytest.mark.package
def test_purge_says_what_it_leaves_and_why(fleet, pkg_env):
    proc = apt_get("purge", "pycor")
    said = proc.stdout + proc.stderr
    assert f"pycor: purge leaves the store {STORE}" in said and "own changes" in said
    assert os.path.isdir(STORE) and not os.path.exists(CONF)
    assert os.path.isdir(os.path.join(pkg_env["PYCOR_STORE"], "bases", "busybox"))
    for name in fleet.lxc_names:
        assert os.path.isdir(os.path.join(fleet.lxcpath, name, "rootfs", ".pycor", "upper"))
