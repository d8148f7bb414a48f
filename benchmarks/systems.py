"""The systems the benchmark compares, behind one small interface.

- pycor-lxc:   pycor with LXC (pycor create)
- pycor-lxd:   pycor with LXD (image pycor/BASE, profile overlay)
- lxc-overlay: LXC's own overlay backend, lxc-copy -s -B overlay of a directory container
- lxc-copy:    full copies, lxc-copy of a directory container
- lxd-dir:     LXD's dir pool launching a regular image of the same root filesystem
- lxd-btrfs:   LXD's btrfs pool (loop-backed) launching that image (snapshot clones)

Every system runs the same root filesystem: the pycor base's merged view,
copied for the systems that need their own copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

PYCOR = [sys.executable, "-m", "pycor_hooks.cli"]


def sh(argv: list[str], env: dict | None = None, check: bool = True, stdin=None, timeout: float = 900) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def make_project(project: str, cli: str = "lxc", nic: str | None = None) -> None:
    """A daemon project of the run's own, with its own images and profiles, its default profile's root disk
    on the default pool, and eth0 on the bridge nic if given. The caller deletes it."""
    sh([cli, "project", "create", project, "-c", "features.images=true", "-c", "features.profiles=true"])
    sh([cli, "--project", project, "profile", "device", "add", "default", "root", "disk", "path=/", "pool=default"])
    if nic:
        sh([cli, "--project", project, "profile", "device", "add", "default", "eth0", "nic", "name=eth0", f"network={nic}"])


LXC_LEASES = "/var/lib/misc/dnsmasq.lxcbr0.leases"


def release_lease(host: str, bridge: str = "lxcbr0") -> None:
    """Hand a destroyed container's DHCP lease on lxc-net's bridge back to dnsmasq.

    dnsmasq keeps a lease an hour after its container is gone, and lxcbr0's
    10.0.3.0/24 holds 253: a run that boots a few hundred containers would
    leave the last ones (and anything started in the next hour) without an address.
    """
    if not shutil.which("dhcp_release"):  # dnsmasq-utils (setup installs it)
        return
    try:
        with open(LXC_LEASES) as f:
            lines = f.read().splitlines()  # read first: dnsmasq rewrites the file at each release
    except OSError:
        return
    for line in lines:
        fields = line.split()  # EXPIRY MAC IP HOSTNAME CLIENT-ID
        if len(fields) >= 5 and fields[3] == host:
            sh(["dhcp_release", bridge, fields[2], fields[1]] + ([] if fields[4] == "*" else [fields[4]]), check=False)


def du(path: str) -> int:
    """Bytes allocated under path, hard links once (du -s --block-size=1)."""
    return int(sh(["du", "-s", "--block-size=1", path]).split()[0])


class Context:
    """What every system shares: the store with the base, the source rootfs copy, the LXD project."""

    def __init__(self, work: str, env: dict[str, str], base: str, src_rootfs: str, project: str) -> None:
        self.work, self.env, self.base, self.src_rootfs, self.project = work, env, base, src_rootfs, project
        self.lxcpath = os.path.join(work, "lxc")
        os.makedirs(self.lxcpath, exist_ok=True)


class System:
    name = "?"
    pycor = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def setup(self) -> None: ...
    def teardown(self) -> None: ...
    def create(self, c: str) -> None: raise NotImplementedError
    def start(self, c: str) -> None: raise NotImplementedError
    def stop(self, c: str) -> None: raise NotImplementedError
    def start_log(self, c: str) -> str: return ""  # the runtime's log of c's last start, where it keeps one
    def destroy(self, c: str) -> None: raise NotImplementedError
    def sh(self, c: str, script: str, timeout: float = 900) -> str: raise NotImplementedError
    def push(self, c: str, src: str, dst: str) -> None: raise NotImplementedError
    def disk(self, c: str) -> int: raise NotImplementedError


class LxcSystem(System):
    def start(self, c: str) -> None:
        sh(["lxc-start", "-n", c, "-P", self.ctx.lxcpath, "-o", os.path.join(self.ctx.lxcpath, c, "start.log"), "-l", "ERROR"])
        sh(["lxc-wait", "-n", c, "-P", self.ctx.lxcpath, "-s", "RUNNING", "-t", "30"])

    def stop(self, c: str) -> None:
        sh(["lxc-stop", "-n", c, "-P", self.ctx.lxcpath, "-k"], check=False)

    def start_log(self, c: str) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.ctx.lxcpath, c, "start.log"), errors="replace") as f:
            return f.read()
        return ""

    def destroy(self, c: str) -> None:
        self.stop(c)
        sh(["lxc-destroy", "-n", c, "-P", self.ctx.lxcpath], check=False)
        if not os.path.exists(os.path.join(self.ctx.lxcpath, c)):  # gone: its lease is free
            release_lease(c)

    def sh(self, c: str, script: str, timeout: float = 900) -> str:
        return sh(["lxc-attach", "-n", c, "-P", self.ctx.lxcpath, "--clear-env", "--", "/bin/sh", "-c", script], timeout=timeout)

    def push(self, c: str, src: str, dst: str) -> None:
        with open(src, "rb") as f:
            subprocess.run(["lxc-attach", "-n", c, "-P", self.ctx.lxcpath, "--clear-env", "--", "/bin/sh", "-c", f"cat > {dst}"],
                           stdin=f, check=True, capture_output=True)

    def disk(self, c: str) -> int:
        return du(os.path.join(self.ctx.lxcpath, c))


class PycorLxc(LxcSystem):
    name, pycor = "pycor-lxc", True

    def create(self, c: str) -> None:
        sh(PYCOR + ["create", c, "--base", self.ctx.base, "-P", self.ctx.lxcpath, "--network", "none"], env=self.ctx.env)


SOURCE = "bench-src"


class LxcFromSource(LxcSystem):
    """A directory container holding a copy of the base, cloned by lxc-copy."""

    copy_args: list[str] = []

    def setup(self) -> None:
        src = os.path.join(self.ctx.lxcpath, SOURCE)
        if os.path.exists(src):
            return
        os.makedirs(src)
        sh(["cp", "-a", self.ctx.src_rootfs, os.path.join(src, "rootfs")])
        with open(os.path.join(src, "config"), "w") as f:
            f.write(f"lxc.rootfs.path = dir:{src}/rootfs\nlxc.include = /usr/share/lxc/config/common.conf\n"
                    f"lxc.net.0.type = empty\nlxc.uts.name = {SOURCE}\n")

    def create(self, c: str) -> None:
        sh(["lxc-copy", "-n", SOURCE, "-N", c, "-P", self.ctx.lxcpath, *self.copy_args])

    def teardown(self) -> None:
        sh(["lxc-destroy", "-n", SOURCE, "-P", self.ctx.lxcpath], check=False)


class LxcOverlay(LxcFromSource):
    name, copy_args = "lxc-overlay", ["-s", "-B", "overlay"]


class LxcCopy(LxcFromSource):
    name = "lxc-copy"


class LxdSystem(System):
    pool = "default"

    def lxc(self, *args: str, check: bool = True, timeout: float = 900) -> str:
        return sh(["lxc", "--project", self.ctx.project, *args], check=check, timeout=timeout)

    def init_options(self, c: str) -> list[str]:
        """More 'lxc init' arguments for container c (the fleet benchmark's network and MAC address)."""
        return []

    def start(self, c: str) -> None:
        self.lxc("start", c)

    def stop(self, c: str) -> None:
        self.lxc("stop", "--force", c, check=False)

    def start_log(self, c: str) -> str:
        return self.lxc("info", "--show-log", c, check=False, timeout=30)

    def destroy(self, c: str) -> None:
        self.lxc("delete", "--force", c, check=False)

    def sh(self, c: str, script: str, timeout: float = 900) -> str:
        return self.lxc("exec", c, "--", "/bin/sh", "-c", script, timeout=timeout)

    def push(self, c: str, src: str, dst: str) -> None:
        self.lxc("file", "push", src, f"{c}{dst}")

    def volume_path(self, c: str) -> str:
        return f"/var/lib/lxd/storage-pools/{self.pool}/containers/{self.ctx.project}_{c}"

    def disk(self, c: str) -> int:
        return du(self.volume_path(c))


class PycorLxd(LxdSystem):
    name, pycor = "pycor-lxd", True

    def setup(self) -> None:
        sh(PYCOR + ["lxd", "init"], env=self.ctx.env)

    def create(self, c: str) -> None:
        self.lxc("init", f"pycor/{self.ctx.base}", c, "--profile", "default", "--profile", "overlay", *self.init_options(c))


PLAIN = "bench-plain"


class LxdImage(LxdSystem):
    """A regular LXD image of the same root filesystem."""

    def setup(self) -> None:
        images = json.loads(self.lxc("image", "list", "--format", "json"))
        if any(a["name"] == PLAIN for i in images for a in i["aliases"]):
            return
        tarball = os.path.join(self.ctx.work, "plain.tar")
        with open(os.path.join(self.ctx.work, "metadata.yaml"), "w") as f:
            f.write(f"architecture: x86_64\ncreation_date: {int(time.time())}\nproperties:\n  description: pycor benchmark plain image\n")
        sh(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", tarball, "-C", self.ctx.work, "metadata.yaml",
            "--transform", f"s,^{os.path.basename(self.ctx.src_rootfs)},rootfs,", "-C", os.path.dirname(self.ctx.src_rootfs),
            os.path.basename(self.ctx.src_rootfs)])
        self.lxc("image", "import", tarball, "--alias", PLAIN)
        os.unlink(tarball)

    def create(self, c: str) -> None:
        self.lxc("init", PLAIN, c, "-s", self.pool, *self.init_options(c))


class LxdDir(LxdImage):
    name = "lxd-dir"


class LxdBtrfs(LxdImage):
    name = "lxd-btrfs"
    pool_gib = 24  # its loop file: sparse, it takes what the containers write

    def setup(self) -> None:
        self.pool = f"bench-btrfs-{self.ctx.project[-6:]}"
        if sh(["lxc", "storage", "show", self.pool], check=False) == "":
            sh(["lxc", "storage", "create", self.pool, "btrfs", f"size={self.pool_gib}GiB"])
        super().setup()

    def disk(self, c: str) -> int:
        """Bytes exclusive to the container's subvolume (shared extents of the image snapshot not counted)."""
        os.sync()  # btrfs accounts extents once they are written out
        out = sh(["btrfs", "filesystem", "du", "-s", "--raw", self.volume_path(c)]).splitlines()[-1].split()
        return int(out[1])

    def teardown(self) -> None:
        sh(["lxc", "storage", "delete", self.pool], check=False)


ALL = [PycorLxc, PycorLxd, LxcOverlay, LxcCopy, LxdDir, LxdBtrfs]
