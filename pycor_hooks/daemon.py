"""LXD and Incus daemons: one REST client over their unix sockets, two dialects.

pycor needs three things from either daemon: a profile `overlay` whose
raw.lxc adds the pycor hooks to the daemon's own, a nearly empty image per
base (alias pycor/BASE) whose rootfs is just the `.pycor/` layout naming the
base, and the list of instances that run on pycor bases. Never `lxc` or
`incus` table output.

The two daemons speak the same API; they differ in where they live (socket,
storage pools, logs under their daemon directory: $LXD_DIR or $INCUS_DIR,
the snap's, or the default), in the prefix of their custom headers
(X-LXD-* or X-Incus-*: an Incus image upload reads only its own), and in
Incus having only /1.0/instances (pycor uses only that, for both).

Images and profiles belong to one store: the image property pycor.store and
the profile key user.pycor.store say which, and a command on another store
never adds, replaces or deletes them.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shlex
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from .errors import Conflict, NotFound, PycorError, Unsupported
from .layer import META, PYCOR_DIR, LayerMeta
from .store import DEFAULT_STORE

PROFILE = "overlay"
IMAGE_PROFILES = ["default", PROFILE]  # an image's own profiles: what a launch that names none gets
STORE_PROPERTY = "pycor.store"  # image property
STORE_KEY = "user.pycor.store"  # profile config key


class Dialect:
    """What tells LXD and Incus apart: where they live, what they call their headers, their CLI."""

    def __init__(self, kind: str, title: str, default_dir: str, dir_env: str, header_prefix: str, cli: str,
                 start_hint: str, extra_dirs: tuple[str, ...] = ()) -> None:
        self.kind, self.title, self.default_dir, self.dir_env = kind, title, default_dir, dir_env
        self.header_prefix, self.cli, self.start_hint, self.extra_dirs = header_prefix, cli, start_hint, extra_dirs

    @property
    def project_env(self) -> str:
        return f"PYCOR_{self.kind.upper()}_PROJECT"

    def header(self, name: str) -> str:
        return f"{self.header_prefix}-{name}"

    def daemon_dirs(self) -> list[str]:
        """Where this daemon may live here: $LXD_DIR / $INCUS_DIR first, then the default, then the snap's."""
        dirs = [os.environ.get(self.dir_env) or "", self.default_dir, *self.extra_dirs]
        return list(dict.fromkeys(os.path.abspath(d) for d in dirs if d))

    def __repr__(self) -> str:
        return f"Dialect({self.kind})"


LXD = Dialect("lxd", "LXD", "/var/lib/lxd", "LXD_DIR", "X-LXD", "lxc",
              "start it (lxd --group root &; lxd waitready; lxd init --auto)",
              extra_dirs=("/var/snap/lxd/common/lxd",))
INCUS = Dialect("incus", "Incus", "/var/lib/incus", "INCUS_DIR", "X-Incus", "incus",
                "start it (scripts/incus-up.sh, or incusd --group root &; incus admin waitready; incus admin init --auto)")
DIALECTS = {d.kind: d for d in (LXD, INCUS)}


def image_alias(base: str) -> str:
    return f"pycor/{base}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Daemon:
    """One LXD or Incus daemon, in one project ($PYCOR_LXD_PROJECT / $PYCOR_INCUS_PROJECT, else 'default')."""

    def __init__(self, dialect: Dialect = LXD, daemon_dir: str | None = None, socket_path: str | None = None,
                 timeout: float = 300, project: str | None = None) -> None:
        self.dialect = dialect
        self.dir = os.path.abspath(daemon_dir or dialect.daemon_dirs()[0])
        self.socket_path = socket_path or os.path.join(self.dir, "unix.socket")
        self.timeout = timeout
        self.project = project or os.environ.get(dialect.project_env) or "default"

    @property
    def kind(self) -> str:
        return self.dialect.kind

    @property
    def title(self) -> str:
        return self.dialect.title

    def __repr__(self) -> str:
        return f"Daemon({self.kind}, {self.dir}, project={self.project})"

    def available(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        try:
            self.request("GET", "/1.0")
            return True
        except (OSError, PycorError):
            return False

    def _in_project(self, path: str) -> str:
        if self.project != "default" and path.startswith("/1.0/") and not path.startswith("/1.0/operations"):
            path += ("&" if "?" in path else "?") + "project=" + urllib.parse.quote(self.project)
        return path

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Any:
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = {"Content-Type": "application/octet-stream" if raw is not None else "application/json"}
            hdrs.update(headers or {})
            path = self._in_project(path)
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            status = resp.status
            payload = json.loads(resp.read() or b"{}")
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unsupported(f"{self.title} is not running (no socket at {self.socket_path})", self.dialect.start_hint) from None
        finally:
            conn.close()
        return self._answer(method, path, status, payload)

    def upload(self, path: str, chunks: Iterable[bytes], headers: dict[str, str]) -> Any:
        """POST a body streamed in chunks (chunked transfer encoding: nothing is held in memory).

        If chunks raises, the request is cut off before its last chunk, so the
        daemon sees a broken upload and makes nothing of it.
        """
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        path = self._in_project(path)
        try:
            conn.putrequest("POST", path)
            for key, value in {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked", **headers}.items():
                conn.putheader(key, value)
            conn.endheaders()
            for chunk in chunks:
                if chunk:
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            status = resp.status
            payload = json.loads(resp.read() or b"{}")
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unsupported(f"{self.title} is not running (no socket at {self.socket_path})", self.dialect.start_hint) from None
        finally:
            conn.close()
        return self._answer("POST", path, status, payload)

    def _answer(self, method: str, path: str, status: int, payload: dict) -> Any:
        if payload.get("type") == "error" or status >= 400:
            code = payload.get("error_code") or status
            error = NotFound if code == 404 else PycorError
            raise error(f"{self.title}: {method} {path}: {payload.get('error') or status}")
        if payload.get("type") == "async":
            return self.wait(payload["operation"])
        return payload.get("metadata") or {}

    def wait(self, operation: str) -> dict:
        op = self.request("GET", f"{operation}/wait?timeout={int(self.timeout)}")
        if op.get("status") != "Success":
            raise PycorError(f"{self.title}: {op.get('description', 'operation')} failed: {op.get('err') or op.get('status')}")
        return op

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
            return True
        except NotFound:
            return False

    # -- setup: one profile and one image per base, owned by one store ---------------
    def profile(self) -> dict | None:
        try:
            return self.request("GET", f"/1.0/profiles/{PROFILE}")
        except NotFound:
            return None

    def where(self) -> str:
        return f"{self.title} project {self.project}" + ("" if self.dir == self.dialect.default_dir else f" of {self.dir}")

    def ensure_profile(self, raw_lxc: str, store: str) -> bool:
        """Create or update the overlay profile of this store; True if it changed.

        A profile of another store is never overwritten: Conflict.
        """
        config = {"raw.lxc": raw_lxc, STORE_KEY: store}
        desc = "pycor: run on a shared read-only base through OverlayFS"
        current = self.profile()
        if current is None:
            self.request("POST", "/1.0/profiles", {"name": PROFILE, "config": config, "description": desc, "devices": {}})
            return True
        owner = profile_store(current)
        if owner != store:
            raise Conflict(
                f"profile {PROFILE!r} in {self.where()} belongs to pycor store {owner}, not {store}",
                f"use that store (pycor --store {owner} ...), or give this store its own project ({self.dialect.project_env}=NAME)",
            )
        if all(current.get("config", {}).get(k) == v for k, v in config.items()):
            return False
        merged = dict(current.get("config", {}), **config)
        self.request("PATCH", f"/1.0/profiles/{PROFILE}", {"config": merged, "description": desc})
        return True

    def has_profile(self) -> bool:
        return self.profile() is not None

    def is_set_up_for(self, store: str) -> bool:
        """'pycor lxd init' / 'pycor incus init' was run here for this store."""
        current = self.profile()
        return current is not None and profile_store(current) == store

    def image(self, base: str) -> dict | None:
        """The image behind alias pycor/BASE, if any."""
        alias = urllib.parse.quote(image_alias(base), safe="")
        try:
            target = self.request("GET", f"/1.0/images/aliases/{alias}")["target"]
            return self.request("GET", f"/1.0/images/{target}")
        except NotFound:
            return None

    def ensure_image(self, base: str, store: str) -> str:
        """Import the nearly empty image of a base, aliased pycor/BASE.

        'added', 'present' (already this store's), or 'other' (the alias names
        another store's image, which is left alone).
        """
        image = self.image(base)
        if image is not None:
            owner = image_store(image)
            if owner != store:
                return "other"
            if image.get("properties", {}).get("pycor.base") == base:
                if image.get("profiles") != IMAGE_PROFILES:  # made by an older pycor: a plain launch runs on pycor too
                    self.update_image(image["fingerprint"], profiles=IMAGE_PROFILES)
                return "present"
        props = urllib.parse.urlencode({"pycor.base": base, STORE_PROPERTY: store})
        result = self.request("POST", "/1.0/images", raw=base_image_tarball(base, store),
                              headers={self.dialect.header("properties"): props})
        fingerprint = result.get("metadata", {}).get("fingerprint")
        self.update_image(fingerprint, profiles=IMAGE_PROFILES)
        alias = image_alias(base)
        quoted = urllib.parse.quote(alias, safe="")
        body = {"target": fingerprint, "description": f"pycor base {base}"}
        if image is not None:
            self.request("PUT", f"/1.0/images/aliases/{quoted}", body)
        else:
            self.request("POST", "/1.0/images/aliases", dict(body, name=alias))
        return "added"

    def update_image(self, fingerprint: str, properties: dict[str, str] | None = None,
                     profiles: list[str] | None = None) -> None:
        """Replace an image's properties and/or profiles, keeping the rest of what the daemon says of it."""
        image = self.request("GET", f"/1.0/images/{fingerprint}")
        body = {k: image.get(k) for k in ("auto_update", "properties", "public", "expires_at", "profiles") if k in image}
        if properties is not None:
            body["properties"] = properties
        if profiles is not None:
            body["profiles"] = profiles
        self.request("PUT", f"/1.0/images/{fingerprint}", body)

    def alias_target(self, alias: str) -> str | None:
        """The fingerprint an image alias names, or None."""
        try:
            return str(self.request("GET", f"/1.0/images/aliases/{urllib.parse.quote(alias, safe='')}")["target"])
        except NotFound:
            return None

    def add_alias(self, alias: str, fingerprint: str, description: str = "") -> None:
        self.request("POST", "/1.0/images/aliases", {"name": alias, "target": fingerprint, "description": description})

    def delete_image(self, fingerprint: str) -> None:
        self.request("DELETE", f"/1.0/images/{fingerprint}")

    def publish_instance(self, name: str) -> dict:
        """The daemon's own publish of a stopped instance (what 'lxc publish' does): the new image."""
        op = self.request("POST", "/1.0/images", {"source": {"type": "instance", "name": name}})
        return self.request("GET", f"/1.0/images/{op['metadata']['fingerprint']}")

    def upload_image(self, chunks: Iterable[bytes], properties: dict[str, str]) -> dict:
        """A unified image tarball (metadata.yaml, rootfs/) streamed to the daemon: the new image."""
        op = self.upload("/1.0/images", chunks, {self.dialect.header("properties"): urllib.parse.urlencode(properties)})
        return self.request("GET", f"/1.0/images/{op['metadata']['fingerprint']}")

    def remove_image(self, base: str, store: str) -> bool:
        """Delete this store's image of a base; another store's is left alone. True if deleted."""
        image = self.image(base)
        if image is None or image_store(image) != store:
            return False
        self.request("DELETE", f"/1.0/images/{image['fingerprint']}")
        return True

    # -- instances ----------------------------------------------------------------
    def instances(self) -> list[dict]:
        found = self.request("GET", "/1.0/instances?recursion=1")
        return found if isinstance(found, list) else []

    def instance(self, name: str) -> dict | None:
        try:
            return self.request("GET", f"/1.0/instances/{name}")
        except NotFound:
            return None

    def create(self, name: str, base: str, start: bool = False, size: int | None = None, ephemeral: bool = False) -> None:
        """An instance on the base's image with the overlay profile; size: its root disk's size (the daemon's own
        quota), refused first where the pool cannot enforce one; ephemeral: the daemon's flag."""
        root = self.root_device()
        if size:
            self.check_size(root)
        body = {"name": name, "type": "container", "profiles": ["default", PROFILE],
                "source": {"type": "image", "alias": image_alias(base)}}
        self.request("POST", "/1.0/instances", body)
        if size or ephemeral:
            patch: dict[str, object] = {"ephemeral": ephemeral}
            if size:
                patch["devices"] = {"root": {**root, "size": str(size)}}
            try:
                self.request("PATCH", f"/1.0/instances/{name}", patch)
            except PycorError:
                self.delete(name)  # made by this call a moment ago: nothing half-made is left
                raise
        if start:
            self.set_state(name, "start")

    def root_device(self, name: str | None = None) -> dict:
        """The root disk device an instance has (or, before it exists, the default profile's)."""
        if name is None:
            return dict(self.request("GET", "/1.0/profiles/default").get("devices", {}).get("root") or {})
        return dict((self.instance(name) or {}).get("expanded_devices", {}).get("root") or {})

    def check_size(self, root: dict) -> None:
        """Refuse a size the pool cannot enforce: a dir pool limits only with project quotas."""
        from .quota import backend

        pool = root.get("pool")
        if not pool:
            raise PycorError(f"the {self.title} profile 'default' has no root disk device with a pool",
                             f"add one: {self.dialect.cli} profile device add default root disk path=/ pool=POOL")
        info = self.request("GET", f"/1.0/storage-pools/{pool}")
        if info.get("driver") == "dir" and backend(str(info.get("config", {}).get("source", "/")))[0] != "project":
            cli = self.dialect.cli
            raise Unsupported(f"{self.title} pool {pool!r} is a dir pool without project quotas: {self.title} cannot "
                              "enforce a size there",
                              f"use a btrfs (or zfs, lvm) pool: '{cli} storage create POOL btrfs' and "
                              f"'{cli} profile device set default root pool=POOL' (or '{cli} launch ... -s POOL -d root,size=...')")

    def set_root_size(self, name: str, size: int | None) -> None:
        """The instance's root disk size (None: no limit)."""
        root = {k: v for k, v in self.root_device(name).items() if k != "size"}
        if size:
            self.check_size(root)
            root["size"] = str(size)
        self.request("PATCH", f"/1.0/instances/{name}", {"devices": {"root": root}})

    def set_state(self, name: str, action: str, force: bool = False, timeout: int = 30) -> None:
        self.request("PUT", f"/1.0/instances/{name}/state", {"action": action, "timeout": timeout, "force": force})

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/1.0/instances/{name}")

    def instance_rootfs(self, inst: dict) -> str | None:
        """Host path of a container's rootfs in a dir pool (the only kind pycor layers live in)."""
        device = (inst.get("expanded_devices") or {}).get("root") or {}
        pool = device.get("pool")
        if not pool:
            return None
        return os.path.join(self.dir, "storage-pools", pool, "containers", instance_dir_name(inst), "rootfs")

    def cli_argv(self, *args: str) -> list[str]:
        """The daemon's own command line (lxc or incus) in this project, for what needs a terminal stream (exec)."""
        return [self.dialect.cli, "--project", self.project, *args]

    def cli_env(self) -> dict[str, str]:
        return dict(os.environ, **{self.dialect.dir_env: self.dir})


def instance_dir_name(inst: dict) -> str:
    """The instance's folder name in pools and logs: NAME, or PROJECT_NAME outside the default project."""
    project = inst.get("project") or "default"
    return inst["name"] if project == "default" else f"{project}_{inst['name']}"


def profile_store(profile: dict) -> str:
    """The store a profile belongs to: user.pycor.store, else (profiles older pycor made) its hooks' --store."""
    config = profile.get("config") or {}
    if config.get(STORE_KEY):
        return str(config[STORE_KEY])
    return hooks_store(str(config.get("raw.lxc", "")))


def hooks_store(config_text: str) -> str:
    """The store the pycor hook lines of an LXC config (or raw.lxc) name: their --store, else the default store."""
    for line in config_text.splitlines():
        if "pycor-pre-start" not in line and "pycor-pre-mount" not in line:  # privileged: pre-mount --prepare only
            continue
        try:
            words = shlex.split(line.partition("=")[2])
        except ValueError:
            continue
        for i, word in enumerate(words[:-1]):
            if word == "--store":
                return words[i + 1]
    return DEFAULT_STORE


def image_store(image: dict) -> str:
    """The store an image belongs to (images older pycor made name none: the default store's)."""
    return str((image.get("properties") or {}).get(STORE_PROPERTY) or DEFAULT_STORE)


def daemons(kinds: tuple[str, ...] = ("lxd", "incus")) -> list[Daemon]:
    """Every LXD and Incus daemon that answers here, each in its pycor project."""
    found = []
    for kind in kinds:
        for d in DIALECTS[kind].daemon_dirs():
            client = Daemon(DIALECTS[kind], d)
            if client.available():
                found.append(client)
    return found


def daemon(kind: str) -> Daemon | None:
    """The first daemon of a kind that answers ($LXD_DIR / $INCUS_DIR first), else None."""
    found = daemons((kind,))
    return found[0] if found else None


def base_image_tarball(base: str, store: str = DEFAULT_STORE) -> bytes:
    """A unified image: metadata.yaml plus a rootfs holding only .pycor/ (layer.json, upper, work)."""
    now = int(time.time())
    metadata = (
        "architecture: x86_64\n"
        f"creation_date: {now}\n"
        "properties:\n"
        f"  description: pycor base {base} (a shared read-only base through OverlayFS)\n"
        "  os: pycor\n"
        f"  release: {base}\n"
        f"  pycor.base: {base}\n"
        f"  {STORE_PROPERTY}: {json.dumps(store)}\n"
    ).encode()
    meta = (json.dumps(LayerMeta(base, None).to_json()) + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, mode: int, data: bytes | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = now, mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        add("metadata.yaml", 0o644, metadata)
        add("rootfs", 0o755)
        add(f"rootfs/{PYCOR_DIR}", 0o711)
        add(f"rootfs/{META}", 0o644, meta)
        add(f"rootfs/{PYCOR_DIR}/upper", 0o755)
        add(f"rootfs/{PYCOR_DIR}/work", 0o700)
    return buf.getvalue()
