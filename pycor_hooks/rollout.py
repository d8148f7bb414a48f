"""`pycor rollout`: move running containers that follow a base onto its current version.

A batch at a time: restart each container, wait until it runs again on the
current version (and the check command succeeds inside it, if given), and
stop at the first failure. Containers not yet reached keep running on their
old version; nothing is ever half-moved, because a container only changes
version by a full restart.

A container whose move would be held back (its own packages would break, or
an id would go to two names) is not restarted: it is reported as held and
keeps running. With upgrade, a container with packages of its own is
stopped, moved with them brought along (Driver.upgrade_volume, as apt-get
full-upgrade in place would) and started again; if that fails it starts
again on its old version, unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from . import locks
from .driver import Driver
from .errors import PycorError
from .layer import LayerMeta
from .names import printable
from .runtime import Container
from .store import Store

WAIT_SECONDS = 60


class Outcome:
    __slots__ = ("name", "runtime", "status", "version", "detail")

    def __init__(self, name: str, runtime: str, status: str, version: str, detail: str = "") -> None:
        self.name, self.runtime, self.status, self.version, self.detail = name, runtime, status, version, detail

    def to_json(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "status": self.status, "version": self.version, "detail": self.detail}


def wait_on_version(driver: Driver, c: Container, version: str, since: float = 0.0) -> str | None:
    """Wait until the container runs on version: None when it does, else why not (held back at its start, or
    not back in time). since: only a start recorded after this time counts."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        state = driver.run_state(c.lxc_name, c.rootfs)
        if state is not None and state.started >= since:
            if state.version == version:
                return None
            if state.held:
                return f"held back on version {state.version}: {state.held}"
        time.sleep(0.2)
    return f"did not come back on version {version} within {WAIT_SECONDS} s"


def followers(driver: Driver, base: str, containers: list[Container]) -> Iterator[tuple[Container, LayerMeta]]:
    """(container, its layer's metadata) for each container that follows base (on it, not pinned);
    a container whose layer cannot be read is skipped."""
    for c in containers:
        try:
            meta = driver.volume_meta(c.rootfs)
        except PycorError:
            continue
        if meta.base == base and not meta.pin:
            yield c, meta


def rollout_lock(store: Store, base: str) -> locks.Flock:
    """One rollout per base at a time (not waiting): a second would restart the same containers again."""
    path = os.path.join(locks.LOCK_DIR, "rollout-" + locks._key(store.root + "\0" + base))
    os.makedirs(locks.LOCK_DIR, mode=0o700, exist_ok=True)
    return locks.Flock(path, wait=False, what=f"the rollout of base {base}")


def rollout(driver: Driver, base: str, containers: list[Container], batch: int, check: str | None,
            report: Callable[[str], None] = print, upgrade: bool = False) -> list[Outcome]:
    """containers: the running containers of every runtime (runtime.Container)."""
    with rollout_lock(driver.store, base):  # a second rollout fails at once: "the rollout of base B is busy"
        return _rollout(driver, base, containers, batch, check, report, upgrade)


def _held(driver: Driver, c: Container, target: str) -> str | None:
    """Why the container's move to target would be held back at its start, or None."""
    from .reconcile import holding_message

    try:
        _, plan = driver.rebase_plan(c.rootfs, target)
    except PycorError:
        return None  # the start says what is wrong
    holding = plan.holding if plan is not None else []
    if not holding:
        return None
    hint = "'pycor rollout --upgrade' or 'pycor rebase NAME --upgrade' brings its packages along" \
        if any(f.kind == "breaks" for f in holding) else "'pycor conflicts NAME' says why"
    return f"not restarted: moving it {holding_message(holding)} ({hint})"


def _upgrade(driver: Driver, c: Container, target: str) -> None:
    """Stop the container, move it with its own packages, start it again (on its old version if that failed)."""
    c.rt.stop(c.name)
    try:
        with driver.stopped_layer(c.lxc_name, c.rootfs, lambda: c.rt.state(c.name), "rollout --upgrade",
                                  c.rt.hint("stop", c.name), shown=c.name,
                                  report=lambda line: print(f"pycor: {line}", file=sys.stderr)) as held:
            driver.upgrade_volume(held, c.rt, c.name, target)
    finally:
        c.rt.start(c.name)


def _rollout(driver: Driver, base: str, containers: list[Container], batch: int, check: str | None,
             report: Callable[[str], None] = print, upgrade: bool = False) -> list[Outcome]:
    driver.store.require(base)
    if batch < 1:
        raise PycorError(f"--batch {batch} is not a positive number", "give how many containers to restart at once, e.g. --batch 5")
    target = driver.store.current(base)
    running = []
    for c, _ in followers(driver, base, [c for c in containers if c.state == "RUNNING"]):
        state = driver.run_state(c.lxc_name, c.rootfs)
        running.append((c, state.version if state else "?"))
    outcomes = [Outcome(c.name, c.runtime, "current", v) for c, v in running if v == target]
    todo = [(c, v) for c, v in running if v != target]

    def move(c: Container, old: str) -> Outcome:
        try:
            since = time.time()
            if upgrade and driver.has_own_packages(c.rootfs):
                _upgrade(driver, c, target)
            else:
                held = _held(driver, c, target)
                if held:
                    return Outcome(c.name, c.runtime, "held", old, held)
                c.rt.restart(c.name)
            why = wait_on_version(driver, c, target, since)
            if why and why.startswith("held back"):
                return Outcome(c.name, c.runtime, "held", old, why)
            if why:
                raise PycorError(why)
            if check:
                ran = c.rt.exec(c.name, ["/bin/sh", "-c", check], WAIT_SECONDS)
                if ran.hung:  # first: a check that timed out may have left it too (lxc-attach killed, its shell not)
                    raise PycorError("check: a process it left in the container kept its output open; the container "
                                     f"was stopped (start it again: {c.rt.hint('start', c.name)})")
                if ran.rc is None:
                    raise PycorError(f"check did not end within {WAIT_SECONDS} s (or left a process holding its output)")
                if ran.rc != 0:
                    raise PycorError(f"check failed (exit {ran.rc}): {ran.tail.replace(chr(10), '; ')[-200:]}")
            return Outcome(c.name, c.runtime, "moved", target, f"from version {old}")
        except (PycorError, subprocess.SubprocessError, OSError) as e:
            state = driver.run_state(c.lxc_name, c.rootfs)
            return Outcome(c.name, c.runtime, "failed", state.version if state else "?", printable(str(e)))

    from concurrent.futures import ThreadPoolExecutor

    for start in range(0, len(todo), batch):
        group = todo[start:start + batch]
        if any(o.status == "failed" for o in outcomes):
            outcomes += [Outcome(c.name, c.runtime, "not moved", v, "rollout stopped at a failure") for c, v in group]
            continue
        with ThreadPoolExecutor(max_workers=len(group)) as pool:
            results = list(pool.map(lambda cv: move(*cv), group))
        for o in results:
            report(f"{o.name}: moved to version {o.version} ({o.detail})" if o.status == "moved" else f"{o.name}: {o.status} ({o.detail})")
        outcomes += results
    return outcomes
