"""The start path stays light: what each hook imports is pinned, privileged starts run one hook process."""

from __future__ import annotations

import os
import re
import subprocess

from helpers import PYCOR, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The standard library modules a hook may load (besides the interpreter's own start-up and
# underscore modules): no json, re, enum, collections, contextlib, typing, argparse, subprocess.
PINNED = {"abc", "builtins", "codecs", "ctypes", "ctypes._endian", "encodings", "encodings.aliases", "encodings.utf_8",
          "errno", "fcntl", "genericpath", "io", "marshal", "os", "os.path", "posix", "posixpath", "stat", "struct", "sys",
          "time", "types", "zipimport", "zlib"}
PYCOR_MODULES = {"pycor_hooks", "pycor_hooks.driver", "pycor_hooks.errors", "pycor_hooks.faults", "pycor_hooks.flatjson",
                 "pycor_hooks.hooks", "pycor_hooks.layer", "pycor_hooks.linux", "pycor_hooks.locks", "pycor_hooks.names",
                 "pycor_hooks.overlay", "pycor_hooks.runstate", "pycor_hooks.store"}  # volumes.py: only for hosting features


def modules_after(code: str) -> set[str]:
    """sys.modules after code runs in a hook's interpreter (-IBS, the checkout first on sys.path)."""
    out = subprocess.run(["/usr/bin/python3", "-IBS", "-c", f"import sys; sys.path.insert(0, {REPO!r}); {code}; "
                          "print(' '.join(sorted(m for m in sys.modules if not m.startswith('_'))))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_privileged_lxc_container_runs_one_hook_process_at_start(make_container, busybox_base):
    c = make_container()
    config = open(c.config).read()
    assert "pycor-pre-start" not in config and "pycor-pre-mount --prepare" in config
    c.start()
    assert c.sh("cat /etc/passwd").returncode == 0
    log = open(c.log).read()
    assert "pycor-pre-mount" in log and "Executing script \"" in log and "pycor-pre-start" not in log


def traced_hook(hook: str, log: str) -> str:
    """A copy of an installed hook that logs every file it opens (audit events) and every
    path it opens inside the container's layer (linux.open_beneath, which is openat2)."""
    with open(hook) as f:
        text = f.read()
    shebang = text.splitlines()[0]
    where = re.search(r"^sys\.path\.insert\(0, (.+?)\)", text, re.M)
    assert where, f"{hook} puts no folder on sys.path"
    return f"""{shebang}
import sys
sys.path.insert(0, {where.group(1)})
from pycor_hooks import linux
log = open({log!r}, "a")
def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        log.write(args[0] + "\\n"); log.flush()
sys.addaudithook(audit)
real = linux.open_beneath
def traced(dirfd, path, *args, **kwargs):
    log.write("beneath " + path + "\\n"); log.flush()
    return real(dirfd, path, *args, **kwargs)
linux.open_beneath = traced
exec(compile({text!r}, {hook!r}, "exec"))
"""


def trace_hook(c, kind: str, folder) -> str:  # type: ignore[no-untyped-def]
    """Run container c's pycor hook of kind (pre-mount, post-stop) through traced_hook; returns the log's path."""
    with open(c.config) as f:
        config = f.read()
    line = next(ln for ln in config.splitlines() if ln.startswith(f"lxc.hook.{kind}"))
    hook = line.partition("=")[2].split()[0]
    log, wrapper = str(folder / "opens"), str(folder / f"pycor-{kind}")
    with open(wrapper, "w") as f:
        f.write(traced_hook(hook, log))
    os.chmod(wrapper, 0o755)
    with open(c.config, "w") as f:
        f.write(config.replace(f"= {hook} ", f"= {wrapper} "))
    return log


def test_privileged_start_reads_its_config_and_its_layer_once(make_container, tmp_path):
    c = make_container()
    log = trace_hook(c, "pre-mount", tmp_path)
    c.start()
    assert c.sh("cat /etc/passwd").returncode == 0
    with open(log) as f:
        opened = f.read().splitlines()
    assert opened.count(c.config) == 1, opened
    assert opened.count("beneath .pycor/layer.json") == 1, opened
    assert opened.count("beneath .pycor/upper") == 1, opened


def test_a_stop_reads_only_its_own_run_record(make_container, tmp_path):
    """post-stop holds the store lock: what it reads must not grow with the containers that run."""
    others = [make_container() for _ in range(3)]
    for other in others:
        other.start()
    c = make_container()
    log = trace_hook(c, "post-stop", tmp_path)
    c.start()
    c.stop()
    with open(log) as f:
        records = [p for p in f.read().splitlines() if p.startswith("/run/pycor/containers/")]
    assert len(records) == 1 and os.path.basename(records[0]).startswith(c.name + "-"), records
    for other in others:
        assert other.state() == "RUNNING"
        other.stop()


def test_unprivileged_lxc_container_keeps_its_pre_start_hook(make_container):
    c = make_container(extra=("--unprivileged",))
    config = open(c.config).read()
    assert "pycor-pre-start" in config and "--prepare" not in config
    c.start()
    assert c.sh("id -u").stdout.strip() == "0"


def test_prepare_is_refused_for_an_unprivileged_container(make_container, env):
    c = make_container(extra=("--unprivileged",))
    with open(c.config) as f:
        text = f.read()
    with open(c.config, "w") as f:
        f.write("\n".join(line for line in text.splitlines() if "pycor-pre-start" not in line)
                .replace("pycor-pre-mount", "pycor-pre-mount --prepare") + "\n")
    proc = c.lxc("lxc-start", "-l", "DEBUG", "-o", c.log, check=False)
    assert proc.returncode != 0 and c.state() == "STOPPED"
    assert "pre-mount --prepare is for privileged containers" in open(c.log).read()
    run(PYCOR + ["ls", "-P", c.lxcpath], env=env)


# -- the template: lxc-create -t pycor ---------------------------------------------------------

TEMPLATE_ARGVS = [
    ["--path", "/l/c1", "--name", "c1", "--rootfs", "/l/c1/rootfs", "--base", "debian12"],
    ["--path=/l/c1", "--name=c1", "--rootfs=dir:/d", "-b", "b", "--pin", "3", "--unprivileged", "--store", "/s p"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--mapped-uid", "100000", "--mapped-gid=100000", "--adopt"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--volume", "/v", "--volume=/w", "--size", "1048576", "--ephemeral"],
    ["--path", "/l/c", "--name=-x", "--base", "b", "--base", "c", "--pin="],  # the last of a repeated option
    ["--path", "/l/c", "--name", "c", "--base", "b", "--size=+5"],
    ["--path", "/l/c", "--name", "", "--base", "b", "--size", " 7 "],
    # what the fast reader leaves to argparse: abbreviations, short forms, bad values, missing ones, help
    ["--path", "/l/c", "--nam", "c", "--bas", "b"],
    ["--path", "/l/c", "--name", "c", "-bb"],
    ["--path", "/l/c", "--name", "c", "--base"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--adopt=1"],
    ["--path", "/l/c", "--name", "-x", "--base", "b"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "extra"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--size", "ten"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--", "--x"],
    ["--path", "/l/c", "--name", "c"],
    ["-h"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--rootfs=--"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--store=--", "--volume=--"],
]


def argparse_result(parse, argv):  # type: ignore[no-untyped-def]
    try:
        return vars(parse(argv))
    except SystemExit as e:
        return ("exit", e.code)


CLI_ARGVS = [
    ["ls"], ["--store", "/s", "ls"], ["--store=/s", "create", "c", "-b", "b"], ["--store", "base", "ls"],
    ["--store", "ls", "create", "c", "--base", "b"], ["--st", "ls", "create", "c", "-b", "b"], ["--store=/s", "--store", "reset", "ls"],
    ["--store", "rm", "create", "-h"], ["-h", "create"], ["--help", "ls"], ["--he", "ls"], ["--", "ls"], ["-", "ls"], ["-1", "ls"],
    ["nosuch"], ["create"], ["create", "-h"], ["base", "import", "b", "--busybox"], ["base"], ["lxd", "init"], ["-h"], [],
    ["rm", "c", "-f"], ["pin", "c", "3"], ["--version"],
]


def test_lxc_create_runs_the_template_without_argparse_re_or_hosting_modules(template, env, busybox_base, lxcpath, tmp_path):
    """A real lxc-create -t pycor, through a copy of the template that writes the modules it loaded."""
    with open(template) as f:
        text = f.read()
    loaded = tmp_path / "modules"
    wrapper = tmp_path / "lxc-pycor"
    wrapper.write_text(f"""{text.splitlines()[0]}
import atexit, sys
atexit.register(lambda: open({str(loaded)!r}, "w").write(" ".join(sorted(sys.modules))))
exec(compile({text!r}, {template!r}, "exec"))
""")
    os.chmod(wrapper, 0o755)
    name = f"t{os.getpid()}"
    try:
        subprocess.run(["lxc-create", "-P", lxcpath, "-n", name, "-t", str(wrapper), "--", "--base", busybox_base],
                       env=env, check=True, capture_output=True)
        modules = set(loaded.read_text().split())
        assert "pycor_hooks.template" in modules and "pycor_hooks.driver" in modules
        assert modules.isdisjoint({"argparse", "re", "shlex", "json", "pycor_hooks.quota", "pycor_hooks.volumes", "pycor_hooks.idmap"}), modules
    finally:
        subprocess.run(["lxc-destroy", "-P", lxcpath, "-n", name], capture_output=True)


