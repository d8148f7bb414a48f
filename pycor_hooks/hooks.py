"""What LXC's hooks do: thin front ends over the driver.

LXC runs hooks/pycor-pre-start, pycor-pre-mount and pycor-post-stop; each
calls main() here. Data comes from the environment LXC sets (LXC_NAME,
LXC_ROOTFS_PATH, LXC_CONFIG_FILE, LXC_HOOK_TYPE with hook version 1); with
hook version 0 LXC also appends NAME SECTION TYPE as arguments, which we
accept and check. Our own options come first: --store PATH.

A hook that fails prints one line naming the container and the cause and
exits 1, so the container does not start.

Hot path: runs at every container start. Imports stay minimal.
"""

from __future__ import annotations

import os
import sys

from .errors import PycorError
from .names import printable

HOOKS = ("pre-start", "pre-mount", "post-stop")


def parse_args(hook: str, argv: list[str]) -> tuple[str | None, bool]:
    """Return (--store, --prepare); check the hook type LXC says it is running, if it says.

    --prepare (pre-mount only): do pre-start's work here too, for a
    privileged container whose config has no pre-start hook.
    """
    store, prepare = None, False
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        opt = rest.pop(0)
        if opt == "--store" and rest:
            store = rest.pop(0)
        elif opt.startswith("--store="):
            store = opt.split("=", 1)[1]
        elif opt == "--prepare" and hook == "pre-mount":
            prepare = True
        else:
            raise PycorError(f"unknown option {opt!r}", "the options are --store PATH, and --prepare for pre-mount")
    kind = os.environ.get("LXC_HOOK_TYPE") or (rest[2] if len(rest) >= 3 else None)
    if kind is not None and kind != hook:
        raise PycorError(f"this is the {hook} hook but LXC runs it as {kind}", f"configure it as lxc.hook.{hook}")
    return store, prepare


def container_from_env() -> tuple[str, str, str | None]:
    name = os.environ.get("LXC_NAME")
    rootfs = os.environ.get("LXC_ROOTFS_PATH")
    if not name or not rootfs:
        raise PycorError(
            "LXC_NAME and LXC_ROOTFS_PATH are not set",
            "this hook is run by LXC (lxc.hook.* in a container config), not by hand",
        )
    from .layer import hook_rootfs

    return name, hook_rootfs(rootfs), os.environ.get("LXC_CONFIG_FILE")  # hosting: lxc-copy -e clones too


def read_config(config_file: str) -> str:
    with open(config_file, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def scan_config(text: str) -> tuple[tuple[str, str, str, str] | None, bool, bool]:
    """From a container config's text: (exe, daemon dir, project, instance) of the hook lines LXD
    and Incus write into their lxc.conf, or None; whether the rootfs was to be mounted idmapped
    (an `lxc.rootfs.options = idmap=container` line: the daemon left the layer unshifted on disk);
    and whether LXC still will (the last lxc.rootfs.options line idmaps: no profile cleared it).

    Both daemons write `lxc.hook.pre-start = EXE callhook DAEMON_DIR "PROJECT" "NAME" start`
    (EXE is /proc/PID/exe on the start hook, the daemon's binary on the stop
    ones). Raw LXC configs have no such line. Plain string work: hot path.
    """
    found = None
    requested = idmapped = False
    for line in text.split("\n"):  # LXC's own line ends: splitlines() would also split on \x0b, \x85...
        if line.startswith("lxc.rootfs.options"):
            # the daemon's own line comes first, the overlay profile's raw.lxc (an empty value: cleared) after it
            idmapped = "idmap=" in line.partition("=")[2]
            requested = requested or idmapped
        if not line.startswith("lxc.hook.") or " callhook " not in line:
            continue
        value = line.partition("=")[2].strip()
        exe, _, rest = value.partition(" callhook ")
        head, _, _event = rest.rpartition(" ")
        parts = head.rsplit(" ", 2)
        if len(parts) != 3 or not parts[0]:
            continue
        hook = (exe.strip(), parts[0], parts[1].strip('"'), parts[2].strip('"'))
        if found is None or found[0].startswith("/proc/"):
            found = hook  # the daemon's own binary (stop hooks) names it best
    return found, requested, idmapped


def daemon_kind(exe: str, daemon_dir: str) -> str:
    """'incus' or 'lxd', from the daemon's binary (incusd, lxd), else from its directory."""
    try:
        exe = os.readlink(exe) if exe.startswith("/proc/") else exe
    except OSError:
        exe = ""
    name = os.path.basename(exe.split(" ")[0])
    if name.startswith("incus"):
        return "incus"
    if name.startswith("lxd"):
        return "lxd"
    return "incus" if "incus" in daemon_dir else "lxd"


def runtime_info(config_file: str | None) -> tuple[str, str | None, str | None, str | None]:
    """(runtime, where, project, instance): ('lxd' or 'incus', DAEMON_DIR, ...) for a daemon's generated
    config, else ('lxc', LXCPATH, None, None); project and instance only under LXD and Incus.

    Recognised by the daemon's own hook lines, so the Debian package, the
    snap, any LXD_DIR or INCUS_DIR and any project are all seen.
    """
    try:
        hook = scan_config(read_config(config_file))[0] if config_file else None
    except OSError:
        hook = None
    return runtime_from(hook, config_file)


def runtime_from(hook: tuple[str, str, str, str] | None,
                 config_file: str | None) -> tuple[str, str | None, str | None, str | None]:
    """runtime_info from a config's callhook line (scan_config), or, without one, from where the config is."""
    if hook is None:
        return "lxc", lxcpath_of(config_file), None, None
    exe, daemon_dir, project, instance = hook
    return daemon_kind(exe, daemon_dir), daemon_dir, project, instance


def lxcpath_of(config_file: str | None) -> str | None:
    """A raw LXC container's lxcpath: its config is LXCPATH/NAME/config."""
    return os.path.dirname(os.path.dirname(config_file)) if config_file else None


def run(hook: str, argv: list[str]) -> None:
    store_path, prepare = parse_args(hook, argv)
    name, rootfs, config_file = container_from_env()
    from .driver import Driver
    from .store import Store

    driver = Driver(Store(store_path))
    if hook == "pre-start":
        text = read_config(config_file) if config_file else ""
        callhook, unshifted, idmapped = scan_config(text)
        runtime, where, _, _ = runtime_from(callhook, config_file)
        if runtime != "lxc" and idmapped:
            raise PycorError(
                f"{runtime} would mount this container's rootfs idmapped (lxc.rootfs.options = idmap=...), "
                "which hides pycor's overlay: its overlay profile does not turn that off",
                f"update the profile with 'pycor {runtime} init' (its raw.lxc clears lxc.rootfs.options), then start it again",
            )
        driver.prepare_start(name, rootfs, runtime, where, text, unshifted=runtime != "lxc" and unshifted)
    elif hook == "pre-mount" and prepare:
        try:
            config: str | None = read_config(config_file) if config_file else ""
        except OSError:
            config = None  # a user namespace's root cannot read it: the driver refuses
        driver.start_privileged(name, rootfs, lxcpath_of(config_file), config)
    elif hook == "pre-mount":
        driver.mount_volume(name, rootfs)
    elif hook == "post-stop":
        driver.release(name, rootfs)
    else:
        raise PycorError(f"unknown hook {hook!r}", f"pycor has {', '.join(HOOKS)}")


def hook_exit(hook: str) -> None:
    """Run a hook as LXC calls it, then end the process at once.

    The output is flushed and every file was closed; skipping the
    interpreter's teardown of the loaded modules saves about 2 ms per hook.
    """
    code = main(hook)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            pass
    os._exit(code)


def main(hook: str, argv: list[str] | None = None) -> int:
    try:
        run(hook, sys.argv[1:] if argv is None else argv)
        return 0
    except (PycorError, OSError, ValueError, KeyError) as e:
        who = os.environ.get("LXC_NAME") or "?"
        if isinstance(e, OSError):
            text = f"{e.strerror}: {e.filename}"
        elif isinstance(e, PycorError):
            text = str(e)
        else:  # a damaged record under /run/pycor or the store
            text = f"unreadable pycor record ({type(e).__name__}: {e})"
        line = printable(f"pycor-{hook}: container {who}: {text}", 1 << 16)  # a log line: nothing a terminal acts on
        # LXC files a hook's stdout in the container's log (lxc-start -o, at
        # INFO level) and passes stderr to lxc-start's own: say it on both.
        print(line, file=sys.stderr, flush=True)
        if not os.isatty(1) and os.path.sameopenfile(1, 2) is False:
            print(line, flush=True)
        log_to_lxd(line)
        return 1


def daemon_log(config_file: str) -> str | None:
    """The instance's lxc.log under LXD or Incus, else None.

    LXD keeps lxc.conf and lxc.log side by side (DIR/logs/NAME, or /var/log/lxd/NAME
    for the default dir); Incus puts lxc.conf under its run dir and the log under its
    logs dir: INCUS_DIR/run/NAME and INCUS_DIR/logs/NAME when it was started with
    INCUS_DIR set (even to its default), else /run/incus/NAME and /var/log/incus/NAME.
    """
    runtime, daemon_dir, _, _ = runtime_info(config_file)
    return instance_log(runtime, daemon_dir, config_file)


def instance_log(runtime: str, daemon_dir: str | None, config_file: str) -> str | None:
    """daemon_log's rule, from the runtime and daemon dir the config's hook lines name."""
    if runtime == "lxc" or not daemon_dir:
        return None
    folder = os.path.dirname(config_file)
    if runtime == "incus":
        under_dir = os.path.dirname(folder) == os.path.join(daemon_dir, "run")
        logs = os.path.join(daemon_dir, "logs") if under_dir else "/var/log/incus"
        folder = os.path.join(logs, os.path.basename(folder))
    return os.path.join(folder, "lxc.log")


def log_to_lxd(line: str) -> None:
    """Under LXD or Incus, also put the reason in the instance's lxc.log, which 'lxc info --show-log' shows.

    Both daemons keep LXC's log at error level, where a hook's output never appears.
    """
    try:
        path = daemon_log(os.environ.get("LXC_CONFIG_FILE", ""))
    except OSError:
        return
    if path is None:
        return
    import time

    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # pre-mount in a user namespace cannot open it; stderr and stdout carry the line
    with os.fdopen(fd, "a") as f:
        f.write(f"lxc {os.environ.get('LXC_NAME', '?')} {stamp}.000 ERROR    pycor - {line}\n")
