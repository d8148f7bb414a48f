"""A container to create: every option checked once, where it enters, then handed down.

`pycor create`, `lxc-create -t pycor` and LXD's and Incus's creates all make
a ContainerSpec with spec(); nothing below re-checks its values. Values that
come from someone else's control (a hosting panel passing a name, a size, a
volume path) are refused here, before anything is made: names by the one
name rule, sizes by the one size parser, volume paths by volumes.check_paths,
and every text that can reach an LXC config (the template's arguments,
which LXC copies into the config as a comment line, included) by
lxcconfig.check_value.

Domain: the template and the CLI use it, never a hook.
"""

from __future__ import annotations

import os

from . import lxcconfig
from .errors import PycorError
from .flatjson import Record
from .names import check_name, check_version
from .units import parse_size

RUNTIMES = ("lxc", "lxd", "incus")
NETWORKS = ("default", "none")


class ContainerSpec(Record):
    __slots__ = ("name", "base", "pin", "unprivileged", "network", "runtime", "adopt", "rootfs", "size", "volumes",
                 "ephemeral")
    name: str
    base: str
    pin: str | None
    unprivileged: bool
    network: str  # "default" (LXC's default config) or "none"
    runtime: str  # "lxc", "lxd" or "incus"
    adopt: bool  # re-create the container around the layer in its rootfs
    rootfs: str | None  # --dir: a rootfs elsewhere than LXCPATH/NAME/rootfs (absolute)
    size: int | None  # bytes: the quota on its layer, or the size of its in-memory layer (ephemeral)
    volumes: list[str]  # container paths that bypass the overlay (volumes.check_paths)
    ephemeral: bool

    @property
    def hosting(self) -> bool:
        """Whether it uses volumes, an in-memory layer or a quota (volumes.py and quota.py then load)."""
        return bool(self.volumes or self.ephemeral or self.size)

    def template_args(self) -> list[str]:
        """What `lxc-create -t pycor -- ...` is given for it, each value already checked."""
        args = ["--base", self.base]
        if self.pin:
            args += ["--pin", self.pin]
        if self.unprivileged:
            args.append("--unprivileged")
        if self.adopt:
            args.append("--adopt")
        args += [f"--volume={path}" for path in self.volumes]
        if self.size:
            args.append(f"--size={self.size}")
        if self.ephemeral:
            args.append("--ephemeral")
        return args


def spec(name: str, base: str, pin: str | None = None, unprivileged: bool = False, network: str = "default",
         runtime: str = "lxc", adopt: bool = False, rootfs: str | None = None, size: str | int | None = None,
         volumes: list[str] | tuple[str, ...] = (), ephemeral: bool = False) -> ContainerSpec:
    """A ContainerSpec, or one PycorError naming the first option that is wrong and what to do."""
    name = check_name(lxcconfig.check_value(name, "container name"), "container name")
    base = check_name(lxcconfig.check_value(base, "base name"), "base name")
    pin = check_version(lxcconfig.check_value(pin, "version")) if pin else None
    if network not in NETWORKS:
        raise PycorError(f"unknown network {network!r}", f"use one of: {', '.join(NETWORKS)}")
    if runtime not in RUNTIMES:
        raise PycorError(f"unknown runtime {runtime!r}", f"use one of: {', '.join(RUNTIMES)}")
    if rootfs is not None:
        lxcconfig.check_value(rootfs, "--dir")
        if not rootfs:
            raise PycorError("--dir is empty", "give the directory the container's rootfs goes in")
        rootfs = os.path.abspath(rootfs)
    nbytes = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
    if size is not None and nbytes is None:
        nbytes = parse_size(lxcconfig.check_value(str(size), "size"))
    paths: list[str] = []
    if volumes:
        from .volumes import check_paths

        paths = check_paths([lxcconfig.check_value(p, "volume path") for p in volumes])
    if adopt and pin:
        raise PycorError("--adopt keeps the layer's own pin: --pin does not go with it",
                         "change the pin afterwards with 'pycor pin'")
    if adopt and (nbytes or paths or ephemeral):
        raise PycorError("--adopt keeps the layer as it was: --size, --volume and --ephemeral do not go with it",
                         "adopt it first, then 'pycor set NAME size=...' for a limit")
    if runtime != "lxc":
        if adopt or rootfs:
            raise PycorError("--adopt and --dir are for LXC containers", "drop them, or use --runtime lxc")
        if paths:
            raise PycorError("--volume is for LXC containers: under LXD a custom volume does the same",
                             f"'{'lxc' if runtime == 'lxd' else 'incus'} storage volume create default VOL' and "
                             "'... config device add NAME VOL disk pool=default source=VOL path=/var/lib/postgresql' (see README)")
    if nbytes and rootfs and not ephemeral:
        raise PycorError("--size with --dir: the rootfs must be a btrfs subvolume that lxc-create makes",
                         "drop --dir (the rootfs then lives in LXCPATH/NAME) or drop --size")
    return ContainerSpec(name, base, pin, unprivileged, network, runtime, adopt, rootfs, nbytes, paths, ephemeral)


def lxc_lines(spec: ContainerSpec, rootfs: str, base_lxc: list[str], hooks_dir: str, store_arg: str | None,
              keys: dict[str, list[str]], idmap: list[str]) -> list[str]:
    """What the template adds to the config lxc-create wrote (keys: what is there already), every line through
    lxcconfig.line: its rootfs, LXC's common includes, its idmap, its name, pycor's hooks, the base's own
    (admitted) lines, and lxc.ephemeral."""
    unprivileged = bool(idmap or keys.get("lxc.idmap"))
    lines = ["", lxcconfig.comment(f"pycor: this container runs on a shared base; its own changes live in {rootfs}/.pycor")]
    if "lxc.rootfs.path" not in keys:
        lines.append(lxcconfig.line("lxc.rootfs.path", f"dir:{rootfs}"))
    for conf in ["common.conf"] + (["userns.conf"] if unprivileged else []):
        path = os.path.join(lxcconfig.LXC_CONFIG_DIR, conf)
        if os.path.exists(path):
            lines.append(lxcconfig.line("lxc.include", path))
    lines.extend(idmap)
    lines.append(lxcconfig.line("lxc.uts.name", spec.name))
    # a disk limit gets pre-start even when privileged: it runs before LXC pins the rootfs (with a file it creates
    # there), so a container at its limit stops with pycor's message and the fix, not LXC's bare 'Disk quota exceeded'
    limited = bool(spec.size) and not spec.ephemeral
    lines.extend(lxcconfig.hook_lines(hooks_dir, store_arg, privileged=not unprivileged and not limited))
    lines.extend(lxcconfig.base_line(text) for text in base_lxc)
    if spec.ephemeral:
        lines.append(lxcconfig.line("lxc.ephemeral", "1"))
    elif spec.volumes:  # on the layer's own filesystem: no subvolume made in one escapes its limit (install.SECCOMP)
        lines.append(lxcconfig.line("lxc.seccomp.profile", os.path.join(hooks_dir, lxcconfig.SECCOMP)))
    return lines


def subordinate_range(path: str, user: str = "root") -> tuple[int, int]:
    """The first subordinate id range of user in /etc/subuid or /etc/subgid, else 100000:65536."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == user and fields[1].isdigit() and fields[2].isdigit():
                    return int(fields[1]), int(fields[2])
    except FileNotFoundError:
        pass
    return 100000, 65536


def idmap_lines(keys: dict[str, list[str]], unprivileged: bool) -> list[str]:
    """lxc.idmap lines to add: none if LXC's default config already maps ids, or if privileged."""
    if keys.get("lxc.idmap") or not unprivileged:
        return []
    uid, uids = subordinate_range("/etc/subuid")
    gid, gids = subordinate_range("/etc/subgid")
    return [lxcconfig.line("lxc.idmap", f"u 0 {uid} {uids}"), lxcconfig.line("lxc.idmap", f"g 0 {gid} {gids}")]


def mapped_root(keys: dict[str, list[str]], extra: list[str]) -> tuple[int, int]:
    """Host uid and gid of container root under the config's idmap (0, 0 when privileged)."""
    if not keys.get("lxc.idmap") and not extra:
        return 0, 0
    from .idmap import IdMap

    text = "\n".join([f"lxc.idmap = {v}" for v in keys.get("lxc.idmap", [])] + extra)
    idmap = IdMap.parse_lxc_config(text)
    if idmap.is_empty:
        return 0, 0
    return idmap.check().root()
