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

HOOKS = ("pre-start", "pre-mount", "post-stop")


def parse_args(hook: str, argv: list[str]) -> str | None:
    """Return --store; check the hook type LXC says it is running, if it says."""
    store = None
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        opt = rest.pop(0)
        if opt == "--store" and rest:
            store = rest.pop(0)
        elif opt.startswith("--store="):
            store = opt.split("=", 1)[1]
        else:
            raise PycorError(f"unknown option {opt!r}", "the only option is --store PATH")
    kind = os.environ.get("LXC_HOOK_TYPE") or (rest[2] if len(rest) >= 3 else None)
    if kind is not None and kind != hook:
        raise PycorError(f"this is the {hook} hook but LXC runs it as {kind}", f"configure it as lxc.hook.{hook}")
    return store


def container_from_env() -> tuple[str, str, str | None]:
    name = os.environ.get("LXC_NAME")
    rootfs = os.environ.get("LXC_ROOTFS_PATH")
    if not name or not rootfs:
        raise PycorError(
            "LXC_NAME and LXC_ROOTFS_PATH are not set",
            "this hook is run by LXC (lxc.hook.* in a container config), not by hand",
        )
    from .layer import rootfs_dir

    return name, rootfs_dir(rootfs), os.environ.get("LXC_CONFIG_FILE")


def runtime_of(config_file: str | None) -> tuple[str, str | None]:
    """('lxd', None) for LXD's generated config, else ('lxc', LXCPATH)."""
    if config_file and (config_file.startswith("/var/log/lxd/") or config_file.endswith("/lxc.conf")):  # also $LXD_DIR/logs/NAME/
        return "lxd", None
    if config_file:
        return "lxc", os.path.dirname(os.path.dirname(config_file))
    return "lxc", None


def run(hook: str, argv: list[str]) -> None:
    store_path = parse_args(hook, argv)
    name, rootfs, config_file = container_from_env()
    from .driver import Driver
    from .store import Store

    driver = Driver(Store(store_path))
    if hook == "pre-start":
        runtime, lxcpath = runtime_of(config_file)
        driver.prepare_start(name, rootfs, runtime, lxcpath, config_file)
    elif hook == "pre-mount":
        driver.mount_volume(name, rootfs)
    elif hook == "post-stop":
        driver.release(name, rootfs)
    else:
        raise PycorError(f"unknown hook {hook!r}", f"pycor has {', '.join(HOOKS)}")


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
        line = f"pycor-{hook}: container {who}: {text}"
        # LXC files a hook's stdout in the container's log (lxc-start -o, at
        # INFO level) and passes stderr to lxc-start's own: say it on both.
        print(line, file=sys.stderr, flush=True)
        if not os.isatty(1) and os.path.sameopenfile(1, 2) is False:
            print(line, flush=True)
        log_to_lxd(line)
        return 1


def log_to_lxd(line: str) -> None:
    """Under LXD, also put the reason in the instance's lxc.log, which 'lxc info --show-log' shows.

    LXD keeps LXC's log at error level, where a hook's output never appears.
    """
    config = os.environ.get("LXC_CONFIG_FILE", "")
    if runtime_of(config)[0] != "lxd":
        return
    import time

    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    try:
        fd = os.open(os.path.join(os.path.dirname(config), "lxc.log"), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # pre-mount in a user namespace cannot open it; stderr and stdout carry the line
    with os.fdopen(fd, "a") as f:
        f.write(f"lxc {os.environ.get('LXC_NAME', '?')} {stamp}.000 ERROR    pycor - {line}\n")
