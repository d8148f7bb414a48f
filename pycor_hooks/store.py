"""The base store: named bases, their versions and layers, on disk.

Hot path: hooks resolve a base here at every container start, so this module
imports only the standard library's cheapest modules.

Layout (root defaults to /var/lib/pycor)::

    bases/NAME/base.json                  name, created, LXC config hints
    bases/NAME/current -> versions/N      switched by one atomic rename
    bases/NAME/versions/N/version.json    parent, created, size, source, digest (see digest.py)
    bases/NAME/versions/N/manifest        the layer's manifest, whose sha256 the digest chains
    bases/NAME/versions/N/rootfs/         the layer: read-only once published
    bases/NAME/holds/N                    version N kept by gc (pycor base hold)
    staging/LABEL.PID.NS/                 work in progress, same filesystem
    staging/LABEL.PID.NS.lock             flock held by the command that owns that staging
    lock                                  flock: shared for starts, exclusive for changes

Crash safety: every change is built aside and appears with one rename.
What a killed command leaves (staging directories, bases/.X.new*, bases/.X.rm*,
current.new* links, versions/.N.rm*) is removed by Store.recover(), which runs
whenever the exclusive lock is taken.

Version N's lower stack is its own layer, then its parent's, and so on down
(top first, the order overlayfs wants in ``lowerdir``).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

from . import faults
from .errors import NotFound, PycorError
from .flatjson import Record, read_json, write_json
from .names import check_name, check_version, printable

DEFAULT_STORE = "/var/lib/pycor"
CONFIG_FILE = "/etc/pycor/pycor.conf"
STORE_ENV = "PYCOR_STORE"
STORE_MODE = 0o700  # the store root and its bases and staging folders: root only
# Bounds of what a record may say (an export stream's header is held to them, records read back are clamped):
CREATED_MAX = 2**40  # seconds since 1970: the year 36812
SIZE_MAX = 2**60  # bytes
SOURCE_MAX = 1024  # characters of a version's source


def record_number(value: object, upper: int) -> float | None:
    """value if it is a finite number in [0, upper) (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 <= value < upper else None  # NaN compares False both ways


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
    """The store lock; taking it exclusively first clears what killed commands left (Store.recover)."""

    def __init__(self, path: str, exclusive: bool, store: "Store | None" = None) -> None:
        self.path, self.exclusive, self.store, self.fd = path, exclusive, store, -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        if self.exclusive and self.store is not None:
            try:
                self.store.recover()
            except (OSError, PycorError) as e:  # a leftover that resists is reported, never fatal
                import logging

                logging.getLogger("pycor").warning("could not clear a leftover in %s: %s", self.store.root, e)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


_staging_locks: dict[str, int] = {}  # staging path -> fd of its held flock, for stagings this process owns


def _pid_alive(suffix: str) -> bool:
    """Whether the pid a leftover's name ends with still runs (no pid: an old name, its owner is gone)."""
    return suffix.isdigit() and os.path.exists(f"/proc/{suffix}")


def _try_flock(path: str) -> int | None:
    """An fd holding path's flock if nobody else holds it, else None (its owner still runs)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _discard(path: str) -> None:
    """Remove a leftover tree: stop a builder container still running in it, detach its mounts, delete."""
    if os.path.lexists(path):
        from .staging import discard

        discard(path)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


class Store:
    def __init__(self, root: str | None = None) -> None:
        self.root = store_root(root)

    # -- paths ---------------------------------------------------------------
    @property
    def hook_arg(self) -> str | None:
        """The store a container's hook lines name (--store), or None for the default store."""
        return None if self.root == DEFAULT_STORE else self.root

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

    # -- locking -------------------------------------------------------------
    def lock(self, exclusive: bool = True) -> _Flock:
        """Shared for resolving a start, exclusive for anything that removes or switches."""
        self.make_root()
        return _Flock(os.path.join(self.root, "lock"), exclusive, self)

    # -- recovery ------------------------------------------------------------
    def recover(self) -> list[str]:
        """Remove what killed commands left; returns what went. Cheap (a few listdirs) when nothing is left.

        Runs under the exclusive store lock, which publishing, switching and
        renaming for removal also hold: a .X.new or current.new found now is
        dead. Removals done after the lock is dropped (.X.rm, .N.rm) carry
        their owner's pid; a staging directory its owner's flock.
        """
        done = self.sweep_staging()
        try:
            entries = os.listdir(self.bases_dir)
        except FileNotFoundError:
            return done
        for entry in entries:
            path = os.path.join(self.bases_dir, entry)
            if entry.startswith("."):
                head, sep, pid = entry.rpartition(".rm")
                if sep and _pid_alive(pid):
                    continue
                if sep or ".new" in entry:
                    _discard(path)
                    done.append(path)
                continue
            done.extend(self._recover_base(path))
        return done

    def _recover_base(self, path: str) -> list[str]:
        done: list[str] = []
        try:
            entries = os.listdir(path)
        except (NotADirectoryError, FileNotFoundError):
            return done
        for entry in entries:
            if entry.startswith("current.new"):
                os.unlink(os.path.join(path, entry))
                done.append(os.path.join(path, entry))
        try:
            vers = os.listdir(os.path.join(path, "versions"))
        except (NotADirectoryError, FileNotFoundError):
            return done
        for entry in vers:
            head, sep, pid = entry.rpartition(".rm")
            if entry.startswith(".") and sep and not _pid_alive(pid):
                _discard(os.path.join(path, "versions", entry))
                done.append(os.path.join(path, "versions", entry))
        return done

    def sweep_staging(self) -> list[str]:
        """Remove staging directories whose owner died: their lock file's flock is free (safe without the store lock)."""
        try:
            entries = set(os.listdir(self.staging_dir))
        except FileNotFoundError:
            return []
        done = []
        editing = self.edit_stagings()
        for entry in sorted(entries):
            path = os.path.join(self.staging_dir, entry)
            if path in editing or path[:-5] in editing:
                continue  # a 'pycor base edit' session: its builder runs on after the command exits
            if entry.endswith(".lock"):
                fd = _try_flock(path)
                if fd is None:
                    continue
                try:
                    if os.path.lexists(path[:-5]):
                        _discard(path[:-5])
                        done.append(path[:-5])
                    os.unlink(path)
                finally:
                    os.close(fd)
            elif f"{entry}.lock" not in entries:  # made before staging had lock files: judge by the pid in its name
                parts = entry.rsplit(".", 2)
                if len(parts) == 3 and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}") and os.path.lexists(path):
                    _discard(path)
                    done.append(path)
        return done

    def edit_stagings(self) -> set[str]:
        """Staging directories of running edit sessions (bases/NAME/edit.json), which recovery leaves alone."""
        found = set()
        for name in self.base_names():
            try:
                found.add(str(read_json(os.path.join(self.base_dir(name), "edit.json")).get("staging", "")))
            except (OSError, PycorError, ValueError):
                continue
        return found

    def leftovers(self) -> list[str]:
        """What a killed command could have left, whether or not its owner still runs (for checks and tests)."""
        found = []
        with_dir = lambda d, pred: [os.path.join(d, e) for e in _listdir(d) if pred(e)]  # noqa: E731
        found += with_dir(self.staging_dir, lambda e: True)
        found += with_dir(self.bases_dir, lambda e: e.startswith("."))
        for name in self.base_names():
            found += with_dir(self.base_dir(name), lambda e: e.startswith("current.new"))
            found += with_dir(os.path.join(self.base_dir(name), "versions"), lambda e: e.startswith("."))
        return found

    def check(self) -> list[str]:
        """Everything wrong with the store, one sentence each; [] when consistent and clean.

        Damage (an unreadable record, a dangling current or parent, a missing
        layer), leftovers of killed commands, and mounts left under the store.
        """
        problems = [f"leftover {p}" for p in self.leftovers()]
        for name in self.base_names():
            try:
                self.base(name)
            except (OSError, ValueError, PycorError) as e:
                problems.append(f"base {name}: base.json: {e}")
            found, damaged = self.scan_versions(name)
            problems += [f"base {name} version {v}: {why}" for v, why in sorted(damaged.items())]
            try:
                current = self.current(name)
                if current not in {v.version for v in found}:
                    problems.append(f"base {name}: current names version {current}, which is missing or damaged")
            except (OSError, PycorError) as e:
                problems.append(f"base {name}: current: {e}")
        from .linux import mounts_under

        problems += [f"mount left at {point}" for point in mounts_under(self.root) if point != os.path.realpath(self.root)]
        return problems

    def make_root(self) -> None:
        """Create the store root, mode 0700, and take back wider modes an older pycor left.

        Bases hold setuid-root binaries and device nodes: a host user who
        could walk down to them would run them as root. Only root walks the
        store; unprivileged containers reach the base through their own
        idmapped view, never through it.
        """
        os.makedirs(self.root, mode=STORE_MODE, exist_ok=True)
        st = os.stat(self.root)
        if stat.S_IMODE(st.st_mode) != STORE_MODE:
            os.chmod(self.root, STORE_MODE)

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
        from .lxcconfig import base_lines

        lines = meta.get("lxc")
        lxc = base_lines(lines if isinstance(lines, list) else [])[0]  # only what a base may carry
        return Base(name, float(record_number(meta.get("created"), CREATED_MAX) or 0), lxc)

    def current(self, name: str) -> str:
        self.require(name)
        target = os.readlink(os.path.join(self.base_dir(name), "current"))
        return check_version(os.path.basename(target))

    def recorded_digest(self, name: str, version: str) -> str | None:
        """The digest version.json records (see digest.py), or None for a version published before
        digests. One small read: cheap enough for a start."""
        try:
            value = read_json(os.path.join(self.version_dir(name, version), "version.json")).get("digest")
        except FileNotFoundError:
            raise NotFound(f"base {name!r} has no version {version}", "'pycor base versions' lists them") from None
        return str(value) if value else None

    def version_digest(self, name: str, version: str) -> str:
        """The digest of a version, computed (with its parents') and recorded if it has none yet (see digest.py)."""
        found = self.recorded_digest(name, version)
        if found:
            return found
        from .digest import stamp

        v = self.version(name, version)
        parent = self.version_digest(name, v.parent) if v.parent else None
        vdir = os.path.dirname(v.rootfs)
        digest = stamp(vdir, parent, self.base(name).lxc if parent is None else [])
        meta = read_json(os.path.join(vdir, "version.json"))
        meta["digest"] = digest
        write_json(os.path.join(vdir, "version.json"), meta)
        return digest

    def version(self, name: str, version: str) -> Version:
        """A version's record. What it says beyond its parent (its date, size and source: nothing a digest
        covers, possibly written from another host's export) is bounded and made printable, never an error."""
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
            float(record_number(meta.get("created"), CREATED_MAX) or 0),
            int(record_number(meta.get("size"), SIZE_MAX) or 0),
            printable(meta.get("source", ""), SOURCE_MAX),
            os.path.join(path, "rootfs"),
        )

    def versions(self, name: str) -> list[Version]:
        self.require(name)
        vdir = os.path.join(self.base_dir(name), "versions")
        found = [e for e in os.listdir(vdir) if e.isdigit()]
        return [self.version(name, v) for v in sorted(found, key=int)]

    def scan_versions(self, name: str) -> tuple[list[Version], dict[str, str]]:
        """The versions that read whole, and the damaged ones (number -> what is wrong); never raises for damage.

        Damaged: an unreadable version.json, a missing layer, a parent that is
        missing or damaged itself (its whole stack is unusable).
        """
        self.require(name)
        try:
            entries = os.listdir(os.path.join(self.base_dir(name), "versions"))
        except OSError as e:
            return [], {"?": f"cannot list versions: {e.strerror}"}
        read: dict[str, Version] = {}
        damaged: dict[str, str] = {}
        for entry in sorted((e for e in entries if e.isdigit() and e[0] != "0"), key=int):
            try:
                v = self.version(name, entry)
            except (OSError, ValueError, TypeError, PycorError) as e:
                damaged[entry] = f"version.json cannot be read ({e})"
                continue
            if not os.path.isdir(v.rootfs):
                damaged[entry] = f"its layer {v.rootfs} is missing"
                continue
            read[entry] = v
        for number, v in list(read.items()):
            seen, parent = {number}, v.parent
            while parent is not None:
                if parent in damaged or parent not in read:
                    damaged[number] = f"its parent version {parent} is {'damaged' if parent in damaged else 'missing'}"
                    break
                if parent in seen:
                    damaged[number] = "its parents form a cycle"
                    break
                seen.add(parent)
                parent = read[parent].parent
        return [v for k, v in read.items() if k not in damaged], damaged

    # -- lxcpaths seen, for gc: a copy of a layer may land in any of them -----------
    def remember_lxcpath(self, lxcpath: str) -> None:
        """Record an lxcpath (one file each, so concurrent records never lose one); kept after its containers go."""
        import zlib

        path = os.path.abspath(lxcpath)
        rec = os.path.join(self.root, "lxcpaths", f"{zlib.crc32(path.encode()):08x}{zlib.adler32(path.encode()):08x}.json")
        if not os.path.exists(rec):
            os.makedirs(os.path.dirname(rec), mode=0o700, exist_ok=True)
            write_json(rec, {"lxcpath": path}, mode=0o600)

    def lxcpaths(self) -> list[str]:
        found = []
        for entry in sorted(_listdir(os.path.join(self.root, "lxcpaths"))):
            try:
                path = read_json(os.path.join(self.root, "lxcpaths", entry)).get("lxcpath")
            except (OSError, ValueError, PycorError):
                continue
            if isinstance(path, str) and path.startswith("/"):
                found.append(path)
        return found

    # -- holds: versions kept by gc whatever uses them ---------------------------
    def holds(self, name: str) -> set[str]:
        return {e for e in _listdir(os.path.join(self.base_dir(name), "holds")) if e.isdigit()}

    def hold(self, name: str, version: str) -> None:
        with self.lock():
            self.version(name, version)
            hdir = os.path.join(self.base_dir(name), "holds")
            os.makedirs(hdir, mode=0o755, exist_ok=True)
            os.close(os.open(os.path.join(hdir, check_version(version)), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))

    def unhold(self, name: str, version: str) -> None:
        with self.lock():
            self.require(name)
            try:
                os.unlink(os.path.join(self.base_dir(name), "holds", check_version(version)))
            except FileNotFoundError:
                raise PycorError(f"base {name!r} version {version} is not held", f"'pycor base versions {name}' lists the held ones") from None

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
        """A fresh directory on the store's filesystem for building a layer.

        Its lock file (PATH.lock) is flocked first and held until
        end_staging() or this process's death: recovery removes a staging
        directory only once that flock is free.
        """
        self.make_root()
        os.makedirs(self.staging_dir, mode=STORE_MODE, exist_ok=True)
        self.sweep_staging()
        path = os.path.join(self.staging_dir, f"{label}.{os.getpid()}.{time.monotonic_ns()}")
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _staging_locks[path] = fd
        os.mkdir(path, 0o700)
        return path

    def end_staging(self, path: str) -> None:
        """Remove a staging directory (if still there: it was not published) and its lock file.

        The lock is this process's, or (an edit session's staging, ended by a
        later command) free to take: never one another live command holds.
        """
        try:
            _discard(path)
        finally:
            fd = _staging_locks.pop(path, None)
            if fd is None:
                fd = _try_flock(f"{path}.lock") if os.path.lexists(f"{path}.lock") else None
            if fd is not None:
                try:
                    os.unlink(f"{path}.lock")
                except FileNotFoundError:
                    pass
                os.close(fd)

    def publish_base(self, name: str, staging: str, source: str, size: int, lxc: list[str]) -> Version:
        """Make the layer at staging/rootfs version 1 of a new base, in one rename."""
        check_name(name, "base name")
        from .digest import stamp

        digest = stamp(staging, None, lxc)  # the tree's identity, before it can be seen
        with self.lock():
            if self.exists(name):
                raise PycorError(f"base {name!r} already exists", f"remove it first with 'pycor base rm {name}', or pick another name")
            now = time.time()
            os.makedirs(self.bases_dir, mode=STORE_MODE, exist_ok=True)
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
                faults.point("publish.base-assembled")
                os.rename(tmp, self.base_dir(name))
            except BaseException:
                _discard(tmp)
                raise
        self.end_staging(staging)  # published: only its lock file is left
        return self.version(name, "1")

    def publish_version(self, name: str, staging: str, parent: str | None, source: str, size: int,
                        expected_current: str | None = None) -> Version:
        """Make the layer at staging/rootfs the next version of a base and switch 'current' to it.

        expected_current: refuse if 'current' moved meanwhile (another update
        published), rather than silently dropping that version's changes.
        """
        from .digest import stamp

        # a version without parent (a squash) is a first version: its digest covers the base's LXC lines
        digest = stamp(staging, self.version_digest(name, parent) if parent else None, [] if parent else self.base(name).lxc)
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
            faults.point("publish.version-renamed")
            self.set_current(name, number)
        self.end_staging(staging)  # published: only its lock file is left
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
        faults.point("publish.current-linked")
        os.rename(tmp, link)
