"""A stopped container as an image, and files in and out of a stopped container.

Two images of an LXD or Incus pycor container:

- its layer (publish_layer): the daemon's own publish of the instance, as
  `lxc publish` makes it (only .pycor/: the container's changes), marked with
  the base and version they run on (pycor.base, pycor.based_on, pycor.digest)
  and given the profiles default and overlay, so `lxc launch IMAGE NAME` runs
  it on pycor wherever that base version is (pre-start refuses another tree
  under the same number, naming the fix);
- its whole system (publish_flat): a read-only merged view of its layer over
  its base version, streamed to the daemon as an ordinary image (owners as the
  container sees them), profile default only: for hosts without pycor.

Files: pull() reads what the container would see at its next start (what
was pushed since it stopped, else its merged view); push() adds a batch to
its inbox, put in place at its next start (see inbox.py).

The caller holds the layer lock and has checked the container is stopped.
Not a hot path.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

from . import inbox, linux
from .daemon import IMAGE_PROFILES, STORE_PROPERTY, Daemon
from .errors import Conflict, NotFound, PycorError
from .fsutil import walk
from .idmap import IdMap
from .layer import LayerMeta, OpenLayer
from .overlay import merged_view
from .ovlxattr import settle
from .proc import running, tail
from .store import Store
from .tario import TAR_CREATE


def layer_properties(name: str, meta: LayerMeta) -> dict[str, str]:
    """What an image of a container's layer says about the base it needs."""
    return {
        "pycor.layer": "true",
        "pycor.base": meta.base,
        "pycor.based_on": meta.based_on or "",
        "pycor.digest": meta.digest or "",
        "description": f"pycor container {name}: its changes on base {meta.base} version {meta.based_on or '?'} "
                       "(launch with the profiles default and overlay where that base version is)",
    }


def check_alias_free(client: Daemon, alias: str | None) -> None:
    if alias and client.alias_target(alias) is not None:
        raise Conflict(f"{client.where()} already has an image alias {alias!r}",
                       f"pick another alias, or remove the old one first ({client.dialect.cli} image alias delete {alias})")


def name_image(client: Daemon, image: dict, alias: str | None, description: str) -> None:
    """Give a new image its alias; on a failure the image goes (nothing half-made)."""
    if not alias:
        return
    try:
        client.add_alias(alias, image["fingerprint"], description)
    except PycorError:
        client.delete_image(image["fingerprint"])
        raise


def publish_layer(client: Daemon, name: str, meta: LayerMeta, alias: str | None) -> dict:
    """The daemon's publish of the stopped instance, marked as a pycor layer and given the overlay profile."""
    check_alias_free(client, alias)
    image = client.publish_instance(name)
    try:
        props = {k: v for k, v in (image.get("properties") or {}).items() if k != STORE_PROPERTY}  # no store's image
        props.update(layer_properties(name, meta))
        client.update_image(image["fingerprint"], properties=props, profiles=IMAGE_PROFILES)
    except PycorError:
        client.delete_image(image["fingerprint"])
        raise
    name_image(client, image, alias, props["description"])
    return image


def layers_of(lay: OpenLayer, stack: list[str]) -> list[str | int]:
    """A merged view's lowerdirs: the container's checked upper, then its base version's layers."""
    return [lay.upper_fd, *stack]


def shifted(idmap: IdMap | None, upper_fd: int) -> IdMap | None:
    """The container's map when its layer holds host ids (shifted on disk), else None (ids are the container's)."""
    if idmap is None or idmap.is_empty:
        return None
    st = os.fstat(upper_fd)
    return idmap if (st.st_uid, st.st_gid) == idmap.root() else None


def version_of(store: Store, meta: LayerMeta) -> str:
    """The base version the container's changes were made on (what it last ran on), else where it would start."""
    if meta.based_on:
        try:
            store.version(meta.base, meta.based_on)
            return meta.based_on
        except PycorError:
            pass
    return meta.pin or store.current(meta.base)


def _id_maps(upper_fd: int, shift: IdMap, folder: str) -> list[str]:
    """GNU tar --owner-map/--group-map files turning the host ids found in upper into the container's."""
    ids: dict[str, set[int]] = {"u": set(), "g": set()}
    st = os.fstat(upper_fd)
    ids["u"].add(st.st_uid)
    ids["g"].add(st.st_gid)
    for _, st, _, _ in walk(upper_fd):
        ids["u"].add(st.st_uid)
        ids["g"].add(st.st_gid)
    args = []
    for kind, option in (("u", "--owner-map"), ("g", "--group-map")):
        path = os.path.join(folder, f"{kind}map")
        with open(path, "w", encoding="ascii") as f:
            for host in sorted(ids[kind]):
                ns = shift.host_to_ns(kind, host)
                if ns != host:
                    f.write(f"+{host} +{ns}\n")
        args.append(f"{option}={path}")
    return args


def image_metadata(description: str, base: str) -> bytes:
    return (f"architecture: {os.uname().machine}\ncreation_date: {int(time.time())}\nproperties:\n"
            f"  description: {description!r}\n  os: {base}\n  release: pycor\n").encode()


def flat_chunks(merged: str, folder: str, id_args: list[str]) -> Iterator[bytes]:
    """A unified image tarball, metadata.yaml then the merged view as rootfs/, from GNU tar, in chunks.

    Overlayfs' own xattrs stay out. Raises (before the last chunk, so the upload is cut off) if tar fails.
    """
    argv = [*TAR_CREATE, *id_args, "--xattrs-exclude=trusted.overlay.*", "--xattrs-exclude=user.overlay.*",
            f"--directory={folder}", "metadata.yaml", f"--directory={merged}", "--transform=s,^\\.,rootfs,S", "."]
    with tempfile.TemporaryFile() as err, running(argv, stdout=subprocess.PIPE, stderr=err) as tar:
        assert tar.stdout is not None
        yield from iter(lambda: tar.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
        if tar.wait() != 0:
            raise PycorError(f"reading the container's merged view failed:\n{tail(err)}",
                             "nothing was published; check the base with 'pycor base verify' and retry")


def publish_flat(client: Daemon, store: Store, name: str, lay: OpenLayer, idmap: IdMap | None,
                 alias: str | None) -> tuple[dict, str]:
    """The container's whole system (its base version and its layer, merged) as an ordinary image; (image, version)."""
    check_alias_free(client, alias)
    namespace = settle(lay, None, f"container {name}")
    meta = lay.meta
    with store.lock(exclusive=False):  # gc cannot remove the version while it is read
        version = version_of(store, meta)
        stack = store.lower_stack(meta.base, version)
        description = f"{name}: pycor base {meta.base} version {version} with the container's changes, merged"
        with store.staging(f"{name}.publish") as folder:
            with open(os.path.join(folder, "metadata.yaml"), "wb") as f:
                f.write(image_metadata(description, meta.base))
            shift = shifted(idmap, lay.upper_fd)
            id_args = _id_maps(lay.upper_fd, shift, folder) if shift is not None else []
            with merged_view(layers_of(lay, stack), os.path.join(folder, "merged"), userxattr=namespace == "user") as merged:
                props = {"description": description, "os": meta.base, "release": "pycor", "pycor.base": meta.base,
                         "pycor.based_on": version}
                image = client.upload_image(flat_chunks(merged, folder, id_args), props)
    try:
        client.update_image(image["fingerprint"], profiles=["default"])
    except PycorError:
        client.delete_image(image["fingerprint"])
        raise
    name_image(client, image, alias, description)
    return image, version


# -- files --------------------------------------------------------------------------------------------


def container_path(path: str) -> str:
    """An absolute path in the container, normalised; one clear error for anything else."""
    if not path.startswith("/") or "\0" in path:
        raise PycorError(f"{path!r} is not an absolute path in the container", "give it from the container's /, e.g. /etc/motd")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PycorError(f"{path!r} contains '..'", "give the path as the container names it, without '..'")
    if not parts:
        raise PycorError("'/' is a directory", "give the path of a file")
    return "/" + "/".join(parts)


def _volume_of(meta: LayerMeta, path: str) -> tuple[int, str] | None:
    """(volume index, path inside it) when path lies in one of the layer's volumes."""
    for i, vol in enumerate(meta.volumes):
        if path == vol or path.startswith(vol + "/"):
            return i, path[len(vol):] or "/"
    return None


def copy_fd(src: int, dst: int) -> None:
    """All of src (from its offset) to dst: in the kernel when it can (sendfile), else read and write (a pipe)."""
    try:
        while os.sendfile(dst, src, None, 1 << 24):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
    while True:
        data = os.read(src, 1 << 20)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def pull(store: Store, name: str, lay: OpenLayer, path: str, sink: Callable[[int], None]) -> str:
    """Hand sink an O_RDONLY fd of the file the stopped container would see at path at its next start.

    Returns where it came from: 'pushed' (waiting for the next start), 'volume', or 'view'.
    """
    path = container_path(path)
    fd = inbox.find_pending(lay.rootfs_fd, path)
    if fd is not None:
        try:
            sink(fd)
        finally:
            os.close(fd)
        return "pushed"
    vol = _volume_of(lay.meta, path)
    if vol is not None:
        from .volumes import VOLUMES_DIR

        root = linux.open_beneath(lay.rootfs_fd, f"{VOLUMES_DIR}/{vol[0]}")
        try:
            _read_file(root, vol[1], name, path, sink)
        finally:
            os.close(root)
        return "volume"
    namespace = settle(lay, None, f"container {name}")
    with store.lock(exclusive=False):
        stack = store.lower_stack(lay.meta.base, version_of(store, lay.meta))
        with store.staging(f"{name}.pull") as folder:
            with merged_view(layers_of(lay, stack), os.path.join(folder, "merged"), userxattr=namespace == "user") as merged:
                root = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    _read_file(root, path, name, path, sink)
                finally:
                    os.close(root)
    return "view"


def _read_file(root: int, rel: str, name: str, path: str, sink: Callable[[int], None]) -> None:
    fd = _open_file(root, rel, name, path)
    try:
        sink(fd)
    finally:
        os.close(fd)


def _open_file(root: int, rel: str, name: str, path: str) -> int:
    try:
        fd = inbox.open_regular(linux.open_in_root(root, rel, os.O_PATH))
    except FileNotFoundError:
        raise NotFound(f"container {name} has no {path}", f"'pycor diff {name}' lists what it changed") from None
    except OSError as e:
        raise PycorError(f"cannot open {path} in container {name}: {e.strerror}", "give the path of a file") from None
    if fd is None:
        raise PycorError(f"{path} in container {name} is not a regular file", "pull files one at a time")
    return fd


def ns_to_host(idmap: IdMap, kind: str, nsid: int) -> int:
    """The host id a container id has on disk in a shifted layer; one clear error outside the map."""
    for e in idmap.entries:
        if e.kind == kind and e.nsid <= nsid < e.nsid + e.range:
            return e.hostid + nsid - e.nsid
    raise PycorError(f"{'uid' if kind == 'u' else 'gid'} {nsid} is outside the container's idmap",
                     "give an id the container has (see /proc/self/uid_map inside it)")


def push(lay: OpenLayer, src: int, path: str, uid: int, gid: int, mode: int, shift: IdMap | None) -> str:
    """Put the content of src (a readable fd) at path of a stopped container from its next start: a new inbox batch.

    uid, gid: the container's ids (mapped to the host's when the layer is
    shifted). Returns the batch's name. Built under a hidden name, then renamed:
    a killed push leaves no batch a start would take (push clears such leftovers).
    """
    path = container_path(path)
    uid_h, gid_h = (ns_to_host(shift, "u", uid), ns_to_host(shift, "g", gid)) if shift else (uid, gid)
    root_h = (ns_to_host(shift, "u", 0), ns_to_host(shift, "g", 0)) if shift else (0, 0)
    box = inbox.open_inbox(lay.rootfs_fd, create=True)
    assert box is not None
    try:
        for leftover in [n for n in os.listdir(box) if n.startswith(".new-")]:
            shutil.rmtree(leftover, dir_fd=box)  # fd-based: never follows a link
        batch = inbox.batch_name()
        work = inbox.make_dir(box, f".new-{batch}", box)
        try:
            parts = path.strip("/").split("/")
            cur = os.dup(work)
            try:
                for part in parts[:-1]:  # parents as 'mkdir -p' makes them: a directory the container has keeps its own
                    os.mkdir(part, 0o755, dir_fd=cur)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                    os.fchown(nxt, *root_h)
                    os.fchmod(nxt, 0o755)
                    os.close(cur)
                    cur = nxt
                wfd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=cur)
                try:
                    copy_fd(src, wfd)
                    os.fchown(wfd, uid_h, gid_h)
                    os.fchmod(wfd, mode)
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
            finally:
                os.close(cur)
        finally:
            os.close(work)
        os.rename(f".new-{batch}", batch, src_dir_fd=box, dst_dir_fd=box)
        return batch
    finally:
        os.close(box)
