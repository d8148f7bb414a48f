"""LXD, for the CLI: its REST API over the unix socket (never `lxc` table output).

pycor needs three things from LXD: a profile `overlay` whose raw.lxc adds the
pycor hooks to LXD's own, a nearly empty image per base (alias pycor/BASE)
whose rootfs is just the `.pycor/` layout naming the base, and the list of
instances that run on pycor bases.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import tarfile
import time
import urllib.parse

from .errors import PycorError
from .layer import META, PYCOR_DIR, LayerMeta

SOCKET = "/var/lib/lxd/unix.socket"
PROFILE = "overlay"
POOLS = "/var/lib/lxd/storage-pools"


def image_alias(base: str) -> str:
    return f"pycor/{base}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("lxd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Lxd:
    """LXD's API in one project ($PYCOR_LXD_PROJECT, else 'default')."""

    def __init__(self, socket_path: str | None = None, timeout: float = 300, project: str | None = None) -> None:
        self.socket_path = socket_path or os.environ.get("LXD_SOCKET", SOCKET)
        self.timeout = timeout
        self.project = project or os.environ.get("PYCOR_LXD_PROJECT") or "default"

    def available(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        try:
            self.request("GET", "/1.0")
            return True
        except (OSError, PycorError):
            return False

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> dict:
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = {"Content-Type": "application/octet-stream" if raw is not None else "application/json"}
            hdrs.update(headers or {})
            if self.project != "default" and path.startswith("/1.0/") and not path.startswith("/1.0/operations"):
                path += ("&" if "?" in path else "?") + "project=" + urllib.parse.quote(self.project)
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = json.loads(resp.read() or b"{}")
        except FileNotFoundError:
            raise PycorError(f"LXD is not running (no socket at {self.socket_path})",
                             "start it (lxd --group root &; lxd waitready; lxd init --auto)") from None
        finally:
            conn.close()
        if payload.get("type") == "error":
            raise PycorError(f"LXD: {method} {path}: {payload.get('error')}")
        if payload.get("type") == "async":
            return self.wait(payload["operation"])
        return payload.get("metadata") or {}

    def wait(self, operation: str) -> dict:
        op = self.request("GET", f"{operation}/wait?timeout={int(self.timeout)}")
        if op.get("status") != "Success":
            raise PycorError(f"LXD: {op.get('description', 'operation')} failed: {op.get('err') or op.get('status')}")
        return op

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
            return True
        except PycorError as e:
            if "not found" in str(e).lower():
                return False
            raise

    # -- setup ----------------------------------------------------------------
    def ensure_profile(self, raw_lxc: str) -> bool:
        """Create or update the overlay profile; True if it changed."""
        config = {"raw.lxc": raw_lxc}
        desc = "pycor: run on a shared read-only base through OverlayFS"
        if not self.exists(f"/1.0/profiles/{PROFILE}"):
            self.request("POST", "/1.0/profiles", {"name": PROFILE, "config": config, "description": desc, "devices": {}})
            return True
        current = self.request("GET", f"/1.0/profiles/{PROFILE}")
        if current.get("config", {}).get("raw.lxc") == raw_lxc:
            return False
        merged = dict(current.get("config", {}), **config)
        self.request("PATCH", f"/1.0/profiles/{PROFILE}", {"config": merged, "description": desc})
        return True

    def has_profile(self) -> bool:
        return self.exists(f"/1.0/profiles/{PROFILE}")

    def image_base(self, base: str) -> str | None:
        """The pycor.base property of the image behind alias pycor/BASE, if any."""
        alias = urllib.parse.quote(image_alias(base), safe="")
        try:
            target = self.request("GET", f"/1.0/images/aliases/{alias}")["target"]
        except PycorError as e:
            if "not found" in str(e).lower():
                return None
            raise
        image = self.request("GET", f"/1.0/images/{target}")
        return image.get("properties", {}).get("pycor.base")

    def ensure_image(self, base: str) -> bool:
        """Import the nearly empty image of a base, aliased pycor/BASE; True if it was added."""
        if self.image_base(base) == base:
            return False
        result = self.request("POST", "/1.0/images", raw=base_image_tarball(base))
        fingerprint = result.get("metadata", {}).get("fingerprint")
        alias = image_alias(base)
        quoted = urllib.parse.quote(alias, safe="")
        if self.exists(f"/1.0/images/aliases/{quoted}"):
            self.request("PUT", f"/1.0/images/aliases/{quoted}", {"target": fingerprint, "description": f"pycor base {base}"})
        else:
            self.request("POST", "/1.0/images/aliases", {"name": alias, "target": fingerprint, "description": f"pycor base {base}"})
        return True

    def remove_image(self, base: str) -> None:
        quoted = urllib.parse.quote(image_alias(base), safe="")
        try:
            target = self.request("GET", f"/1.0/images/aliases/{quoted}")["target"]
        except PycorError:
            return
        self.request("DELETE", f"/1.0/images/{target}")

    # -- instances ----------------------------------------------------------------
    def instances(self) -> list[dict]:
        found = self.request("GET", "/1.0/instances?recursion=1")
        return found if isinstance(found, list) else []  # type: ignore[unreachable]

    def instance(self, name: str) -> dict | None:
        try:
            return self.request("GET", f"/1.0/instances/{name}")
        except PycorError as e:
            if "not found" in str(e).lower():
                return None
            raise

    def create(self, name: str, base: str, start: bool = False) -> None:
        body = {"name": name, "type": "container", "profiles": ["default", PROFILE],
                "source": {"type": "image", "alias": image_alias(base)}}
        self.request("POST", "/1.0/instances", body)
        if start:
            self.set_state(name, "start")

    def set_state(self, name: str, action: str, force: bool = False) -> None:
        self.request("PUT", f"/1.0/instances/{name}/state", {"action": action, "timeout": 30, "force": force})

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/1.0/instances/{name}")


def instance_rootfs(inst: dict) -> str | None:
    """Host path of a container's rootfs in a dir pool (the only kind pycor layers live in)."""
    device = (inst.get("expanded_devices") or {}).get("root") or {}
    pool = device.get("pool")
    if not pool:
        return None
    project = inst.get("project") or "default"
    name = inst["name"] if project == "default" else f"{project}_{inst['name']}"
    return os.path.join(POOLS, pool, "containers", name, "rootfs")


def base_image_tarball(base: str) -> bytes:
    """A unified LXD image: metadata.yaml plus a rootfs holding only .pycor/ (layer.json, upper, work)."""
    now = int(time.time())
    metadata = (
        "architecture: x86_64\n"
        f"creation_date: {now}\n"
        "properties:\n"
        f"  description: pycor base {base} (a shared read-only base through OverlayFS)\n"
        "  os: pycor\n"
        f"  release: {base}\n"
        f"  pycor.base: {base}\n"
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
