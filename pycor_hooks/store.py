"""The base store: named bases, their versions and layers, on disk.

Hot path: hooks resolve a base here at every container start, so this module
imports only the standard library's cheapest modules.

Layout (root defaults to /var/lib/pycor)::

    bases/NAME/base.json                  name, created, LXC config hints
    bases/NAME/current -> versions/N      switched by one atomic rename
    bases/NAME/versions/N/version.json    parent, created, size, source, digest (see digest.py)
    bases/NAME/versions/N/manifest        the layer's manifest, whose sha256 the digest chains
    bases/NAME/versions/N/rootfs/         the layer: read-only once published
    staging/                              work in progress, same filesystem
    lock                                  flock: shared for starts, exclusive for changes

Version N's lower stack is its own layer, then its parent's, and so on down
(top first, the order overlayfs wants in ``lowerdir``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from .errors import PycorError
from .names import check_name, check_version

DEFAULT_STORE = "/var/lib/pycor"
CONFIG_FILE = "/etc/pycor/pycor.conf"
STORE_ENV = "PYCOR_STORE"
RUN_DIR = "/run/pycor"


def setting(key: str, env: str, default: str) -> str:
    """A setting: $ENV, then 'KEY = VALUE' in /etc/pycor/pycor.conf, then the default."""
    value = os.environ.get(env)
    if value:
        return value
    try:
        with open(CONFIG_FILE, encoding="utf-8") as f:
            for line in f:
                k, sep, v = line.partition("=")
                if sep and k.strip() == key and v.strip():
                    return v.strip()
    except FileNotFoundError:
        pass
    return default


def hooks_dir() -> str:
    """Where the hook files LXC runs live: $PYCOR_HOOKS_DIR, 'hooks_dir =' in the config file, else LXC's folder."""
    return setting("hooks_dir", "PYCOR_HOOKS_DIR", "/usr/share/lxc/hooks")


def templates_dir() -> str:
    """Where the LXC template lives: $PYCOR_TEMPLATES_DIR, 'templates_dir =' in the config file, else LXC's folder."""
    return setting("templates_dir", "PYCOR_TEMPLATES_DIR", "/usr/share/lxc/templates")


def store_root(explicit: str | None = None) -> str:
    """The store path: argument, then $PYCOR_STORE, then 'store =' in the config file."""
    return os.path.abspath(explicit or setting("store", STORE_ENV, DEFAULT_STORE))


class Record:
    """A plain value object (dataclasses would cost every hook 7 ms of imports)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *args: object) -> None:
        for slot, value in zip(self.__slots__, args, strict=True):
            setattr(self, slot, value)

    def to_json(self) -> dict:
        return {slot: getattr(self, slot) for slot in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_json() == other.to_json()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_json().items())})"


class Version(Record):
    __slots__ = ("base", "version", "parent", "created", "size", "source", "rootfs")
    base: str
    version: str
    parent: str | None
    created: float
    size: int
    source: str
    rootfs: str


class Base(Record):
    __slots__ = ("name", "created", "lxc")
    name: str
    created: float
    lxc: list[str]


class _Flock:
    def __init__(self, path: str, exclusive: bool) -> None:
        self.path, self.exclusive, self.fd = path, exclusive, -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def read_json(path: str, limit: int = 1 << 20) -> dict:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PycorError(f"{path} is larger than {limit} bytes", "it was not written by pycor")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise PycorError(f"{path} does not hold a JSON object", "it was not written by pycor")
    return value


def write_json(path: str, value: dict, mode: int = 0o644) -> None:
    """Write atomically: a temporary file beside it, then rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.rename(tmp, path)


class Store:
    def __init__(self, root: str | None = None) -> None:
        self.root = store_root(root)

    # -- paths ---------------------------------------------------------------
    @property
    def bases_dir(self) -> str:
        return os.path.join(self.root, "bases")

    @property
    def staging_dir(self) -> str:
        return os.path.join(self.root, "staging")

    def base_dir(self, name: str) -> str:
        return os.path.join(self.bases_dir, check_name(name, "base name"))

    def version_dir(self, name: str, version: str) -> str:
        return os.path.join(self.base_dir(name), "versions", check_version(version))

    def layer_dir(self, name: str, version: str) -> str:
        return os.path.join(self.version_dir(name, version), "rootfs")

    # -- locking -------------------------------------------------------------
    def lock(self, exclusive: bool = True) -> _Flock:
        """Shared for resolving a start, exclusive for anything that removes or switches."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        return _Flock(os.path.join(self.root, "lock"), exclusive)

    # -- reading -------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return os.path.isdir(self.base_dir(name))

    def require(self, name: str) -> None:
        if not self.exists(name):
            raise PycorError(
                f"unknown base {name!r} in store {self.root}",
                "'pycor base ls' lists the bases; 'pycor base import' adds one",
            )

    def base_names(self) -> list[str]:
        try:
            entries = os.listdir(self.bases_dir)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(self.bases_dir, e)))

    def base(self, name: str) -> Base:
        self.require(name)
        meta = read_json(os.path.join(self.base_dir(name), "base.json"))
        lxc = [line for line in meta.get("lxc", []) if isinstance(line, str)]
        return Base(name, float(meta.get("created", 0)), lxc)

    def current(self, name: str) -> str:
        self.require(name)
        target = os.readlink(os.path.join(self.base_dir(name), "current"))
        return check_version(os.path.basename(target))

    def version(self, name: str, version: str) -> Version:
        path = self.version_dir(name, version)
        try:
            meta = read_json(os.path.join(path, "version.json"))
        except FileNotFoundError:
            raise PycorError(
                f"base {name!r} has no version {version}",
                "'pycor base versions' lists them",
            ) from None
        parent = meta.get("parent")
        return Version(
            name,
            version,
            check_version(str(parent)) if parent else None,
            float(meta.get("created", 0)),
            int(meta.get("size", 0)),
            str(meta.get("source", "")),
            os.path.join(path, "rootfs"),
        )

    def versions(self, name: str) -> list[Version]:
        self.require(name)
        vdir = os.path.join(self.base_dir(name), "versions")
        found = [e for e in os.listdir(vdir) if e.isdigit()]
        return [self.version(name, v) for v in sorted(found, key=int)]

    def lower_stack(self, name: str, version: str) -> list[str]:
        """The layer directories of a version, top first, checked to exist."""
        stack: list[str] = []
        seen: set[str] = set()
        current: str | None = version
        while current is not None:
            if current in seen:
                raise PycorError(f"base {name!r}: version {version} has a cycle in its parents", "the store is damaged")
            seen.add(current)
            v = self.version(name, current)
            if not os.path.isdir(v.rootfs):
                raise PycorError(f"base {name!r}: layer {v.rootfs} is missing", "the store is damaged; re-import the base")
            stack.append(v.rootfs)
            current = v.parent
        return stack

    # -- writing -------------------------------------------------------------
    def new_staging(self, label: str) -> str:
        """A fresh directory on the store's filesystem for building a layer."""
        os.makedirs(self.staging_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.staging_dir, f"{label}.{os.getpid()}.{time.monotonic_ns()}")
        os.mkdir(path, 0o700)
        return path

    def publish_base(self, name: str, staging: str, source: str, size: int, lxc: list[str]) -> Version:
        """Make the layer at staging/rootfs version 1 of a new base, in one rename."""
        check_name(name, "base name")
        from .digest import stamp

        digest = stamp(staging, None)  # the tree's identity, before it can be seen
        with self.lock():
            if self.exists(name):
                raise PycorError(f"base {name!r} already exists", f"remove it first with 'pycor base rm {name}', or pick another name")
            now = time.time()
            os.makedirs(self.bases_dir, mode=0o755, exist_ok=True)
            tmp = os.path.join(self.bases_dir, f".{name}.new{os.getpid()}")
            os.makedirs(os.path.join(tmp, "versions"), mode=0o755)
            try:
                vdir = os.path.join(tmp, "versions", "1")
                os.rename(staging, vdir)
                os.chmod(vdir, 0o755)
                write_json(os.path.join(vdir, "version.json"), {"version": 1, "parent": None, "created": now, "size": size, "source": source,
                                                                     "digest": digest})
                write_json(os.path.join(tmp, "base.json"), {"name": name, "created": now, "lxc": lxc})
                os.symlink("versions/1", os.path.join(tmp, "current"))
                os.rename(tmp, self.base_dir(name))
            except BaseException:
                from .fsutil import remove_tree

                remove_tree(tmp)
                raise
        return self.version(name, "1")

    def publish_version(self, name: str, staging: str, parent: str | None, source: str, size: int,
                        expected_current: str | None = None) -> Version:
        """Make the layer at staging/rootfs the next version of a base and switch 'current' to it.

        expected_current: refuse if 'current' moved meanwhile (another update
        published), rather than silently dropping that version's changes.
        """
        from .digest import stamp, version_digest

        digest = stamp(staging, version_digest(self, name, parent) if parent else None)
        with self.lock():
            self.require(name)
            if expected_current is not None and self.current(name) != expected_current:
                raise PycorError(
                    f"base {name} moved to version {self.current(name)} while this was built on {expected_current}",
                    "run the command again on the new current version",
                )
            vdir = os.path.join(self.base_dir(name), "versions")
            number = str(max((int(v.lstrip(".").split(".")[0]) for v in os.listdir(vdir)
                              if v.lstrip(".").split(".")[0].isdigit()), default=0) + 1)
            write_json(os.path.join(staging, "version.json"),
                       {"version": int(number), "parent": int(parent) if parent else None, "created": time.time(),
                        "size": size, "source": source, "digest": digest})
            target = os.path.join(vdir, number)
            os.rename(staging, target)  # the version appears whole, or not at all
            os.chmod(target, 0o755)
            self.set_current(name, number)
        return self.version(name, number)

    def depth(self, name: str, version: str) -> int:
        return len(self.lower_stack(name, version))

    def set_current(self, name: str, version: str) -> None:
        """Switch 'current' with one atomic rename (caller holds the lock)."""
        self.version(name, version)
        link = os.path.join(self.base_dir(name), "current")
        tmp = f"{link}.new{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(f"versions/{version}", tmp)
        os.rename(tmp, link)
