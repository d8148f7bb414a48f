"""Shared helpers for the integration tests: run pycor and LXC for real."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time

PYCOR = [sys.executable, "-m", "pycor_hooks.cli"]


def run(argv: list[str], check: bool = True, env: dict | None = None, timeout: float = 300,
        stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
    stdin = {"input": stdin_text} if stdin_text is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, **stdin)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def tree_checksum(root: str) -> str:
    """Hash of everything under root: names, types, modes, owners, sizes, contents, link targets, xattrs."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            h.update(f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_rdev}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            try:
                for attr in sorted(os.listxattr(path, follow_symlinks=False)):
                    h.update(attr.encode() + os.getxattr(path, attr, follow_symlinks=False))
            except OSError:
                pass
    return h.hexdigest()


def tree_paths(root: str) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add("/" + os.path.relpath(os.path.join(dirpath, name), root))
    return found


def layer_of(store: str, base: str, version: str = "1") -> str:
    return os.path.join(store, "bases", base, "versions", version, "rootfs")


def view_suffix(store: str, base: str, version: str = "1") -> str:
    """How the idmapped views of one base layer of this store end: /BASE.VERSION.DEV.INODE."""
    st = os.stat(layer_of(store, base, version))
    return f"/{base}.{version}.{st.st_dev:x}.{st.st_ino:x}"


def view_mounts() -> list[str]:
    """Mount points of pycor's idmapped views on the host."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith("/run/pycor/views/")]


def host_overlays() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if line.split()[2] == "overlay"]


def wait_for(predicate, timeout: float = 20, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
