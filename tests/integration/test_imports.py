"""Base import: real files, real tar, real busybox, a real debootstrap (slow), run as root."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pycor_hooks import debian, importing
from pycor_hooks.errors import PycorError
from pycor_hooks.fsutil import resolve_inside
from pycor_hooks.importing import (
    import_busybox,
    import_debootstrap,
    import_from_dir,
    import_from_tar,
)
from pycor_hooks.proc import Progress
from pycor_hooks.store import Store
from pycor_hooks.tario import detect_compression

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="imports keep owners and device nodes: run as root")

# A valid vfs_cap_data v2 (cap_net_raw, effective): what `setcap cap_net_raw+ep` writes.
CAP_NET_RAW = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)


def quiet() -> Progress:
    return Progress(io.StringIO())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


def assert_store_empty(store: Store) -> None:
    assert store.base_names() == []
    staging = Path(store.staging_dir)
    assert not staging.exists() or list(staging.iterdir()) == []
    bases = Path(store.bases_dir)
    assert not bases.exists() or list(bases.iterdir()) == []


def make_minimal_rootfs(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/sh").write_text("#!/bin/true\n")
    (root / "usr/bin/sh").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")


def make_rich_rootfs(root: Path) -> None:
    """Every kind of file and attribute a root filesystem can hold."""
    make_minimal_rootfs(root)
    owned = root / "etc/owned"
    owned.write_text("owned\n")
    os.chown(owned, 1234, 5678)
    os.lchown(root / "bin", 1234, 5678)
    suid = root / "usr/bin/suid"
    suid.write_bytes(b"\x7fELF fake")
    suid.chmod(0o4755)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "etc/hard1").write_text("linked\n")
    os.link(root / "etc/hard1", root / "etc/hard2")
    (root / "etc/abs").symlink_to("/etc/passwd")
    (root / "etc/dangling").symlink_to("/nonexistent/target")
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    acl = root / "etc/acl"
    acl.write_text("acl\n")
    subprocess.run(["setfacl", "-m", "u:1234:rwx", str(acl)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", str(root / "tmp")], check=True)
    xattr = root / "etc/xattr"
    xattr.write_text("xattr\n")
    os.setxattr(xattr, "user.pycor", b"user value")
    os.setxattr(xattr, "trusted.pycor", b"trusted value")
    cap = root / "usr/bin/ping"
    cap.write_bytes(b"\x7fELF fake ping")
    cap.chmod(0o755)
    os.setxattr(cap, "security.capability", CAP_NET_RAW)
    with open(root / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"data in the middle")


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about a tree except access times."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(entry)
            xattrs = tuple(sorted((k, os.getxattr(entry, k, follow_symlinks=False)) for k in os.listxattr(entry, follow_symlinks=False)))
            content = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(entry).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(entry)
            result[os.path.relpath(entry, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                    st.st_ino, st.st_nlink, st.st_rdev, xattrs, content)
    return result


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "--numeric", "--omit-header", str(path)], check=True, capture_output=True, text=True).stdout


# -- from a directory ----------------------------------------------------------


def test_import_from_dir_keeps_every_attribute(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_rootfs(src)
    version = import_from_dir(store, "rich", str(src), quiet())
    layer = Path(version.rootfs)

    assert version.source == f"dir:{src}" and version.size > 0
    assert store.base("rich").lxc == []
    st = os.lstat(layer / "etc/owned")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (os.lstat(layer / "bin").st_uid, os.lstat(layer / "bin").st_gid) == (1234, 5678)
    assert stat.S_IMODE(os.lstat(layer / "usr/bin/suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    h1, h2 = os.lstat(layer / "etc/hard1"), os.lstat(layer / "etc/hard2")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2
    assert os.readlink(layer / "etc/abs") == "/etc/passwd"
    assert os.readlink(layer / "etc/dangling") == "/nonexistent/target"
    assert os.readlink(layer / "bin") == "usr/bin"
    dev = os.lstat(layer / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert "user:1234:rwx" in getfacl(layer / "etc/acl")
    assert "default:user:1234:r-x" in getfacl(layer / "tmp")
    assert os.getxattr(layer / "etc/xattr", "user.pycor") == b"user value"
    assert os.getxattr(layer / "etc/xattr", "trusted.pycor") == b"trusted value"
    assert os.getxattr(layer / "usr/bin/ping", "security.capability") == CAP_NET_RAW
    sparse = os.lstat(layer / "sparse")
    assert sparse.st_size == 64 << 20 and sparse.st_blocks * 512 < 1 << 20
    with open(layer / "sparse", "rb") as f:
        f.seek(32 << 20)
        assert f.read(18) == b"data in the middle"


def test_import_from_dir_leaves_source_unchanged(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_rootfs(src)
    before = snapshot(src)
    import_from_dir(store, "rich", str(src), quiet())
    assert snapshot(src) == before


def test_interrupt_during_copy_leaves_nothing(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_rootfs(src)
    (src / "big").write_bytes(os.urandom(8 << 20))

    class Interrupting(Progress):
        def update(self, done: int) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_from_dir(store, "rich", str(src), Interrupting(io.StringIO()))
    assert_store_empty(store)


# -- from a tarball ------------------------------------------------------------


def make_tarball(tmp_path: Path, filename: str, compress: list[str]) -> Path:
    tree = tmp_path / "tree"
    make_minimal_rootfs(tree)
    (tree / "etc/hard1").write_text("linked\n")
    os.link(tree / "etc/hard1", tree / "etc/hard2")
    (tree / "etc/link").symlink_to("/etc/os-release")
    os.chown(tree / "etc/os-release", 1234, 5678)
    tarball = tmp_path / filename
    subprocess.run(["tar", "--create", "--file", str(tarball), *compress, "--directory", str(tree), "."], check=True)
    return tarball


@pytest.mark.parametrize(
    "filename, compress",
    [("root.tar", []), ("root.tar.gz", ["--gzip"]), ("root.tgz", ["--gzip"]), ("root.tar.xz", ["--xz"]), ("root.tar.zst", ["--zstd"])],
)
def test_import_from_tar_each_compression(store: Store, tmp_path: Path, filename: str, compress: list[str]) -> None:
    tarball = make_tarball(tmp_path, filename, compress)
    version = import_from_tar(store, "fromtar", str(tarball), quiet())
    layer = Path(version.rootfs)
    assert version.source == f"tar:{tarball}"
    assert (layer / "etc/os-release").read_text() == "ID=test\n"
    st = os.lstat(layer / "etc/os-release")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.lstat(layer / "etc/hard1").st_ino == os.lstat(layer / "etc/hard2").st_ino
    assert os.readlink(layer / "etc/link") == "/etc/os-release"
    assert os.readlink(layer / "bin") == "usr/bin"


def test_import_from_tar_detects_compression_by_magic(store: Store, tmp_path: Path) -> None:
    liar = make_tarball(tmp_path, "really-zstd.tar.gz", ["--zstd"])
    assert detect_compression(str(liar)) == ("--zstd", "zstd")
    version = import_from_tar(store, "liar", str(liar), quiet())
    assert (Path(version.rootfs) / "etc/os-release").is_file()


def test_import_from_tar_keeps_members_inside_the_layer(store: Store, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_minimal_rootfs(tree)
    escape = tmp_path / "escaped"
    tarball = tmp_path / "abs.tar"
    # --absolute-names stores the leading '/', which the import must strip.
    subprocess.run(["tar", "--create", "--file", str(tarball), "--directory", str(tree), ".", "--absolute-names",
                    "--transform", f"s,^\\./etc/os-release$,{escape},"], check=True)
    version = import_from_tar(store, "abs", str(tarball), quiet())
    assert not escape.exists()
    assert (Path(version.rootfs) / str(escape).lstrip("/")).is_file()


# -- busybox -------------------------------------------------------------------


def test_import_busybox_makes_a_bootable_tree(store: Store) -> None:
    version = import_busybox(store, "bb", quiet())
    layer = Path(version.rootfs)
    assert importing.is_static_elf(str(layer / "bin/busybox"))
    assert os.readlink(layer / "sbin/init") == "/bin/busybox"
    assert os.readlink(layer / "bin/sh") == "/bin/busybox"
    inittab = (layer / "etc/inittab").read_text()
    assert "::sysinit:/etc/init.d/rcS" in inittab and "::shutdown:" in inittab and "::ctrlaltdel:" in inittab
    assert os.access(layer / "etc/init.d/rcS", os.X_OK)
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    for d in ("dev", "proc", "sys", "run", "root", "var/log"):
        assert (layer / d).is_dir() and not (layer / d).is_symlink()
    assert (layer / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert version.source == "busybox"
    assert store.base("bb").lxc == ["lxc.signal.halt = SIGUSR1", "lxc.signal.reboot = SIGTERM"]
    # The tree's own shell runs it: busybox and its applet links work from the layer.
    out = subprocess.run(["chroot", str(layer), "/bin/sh", "-c", "echo ok; ls /sbin/init"], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["ok", "/sbin/init"]


def test_import_busybox_refuses_a_dynamic_busybox(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importing, "BUSYBOX", "/bin/ls")
    with pytest.raises(PycorError, match="not statically linked") as e:
        import_busybox(store, "bb", quiet())
    assert e.value.hint == "apt-get install busybox-static"
    monkeypatch.setattr(importing, "BUSYBOX", "/nonexistent/busybox")
    with pytest.raises(PycorError, match="missing") as e:
        import_busybox(store, "bb", quiet())
    assert e.value.hint == "apt-get install busybox-static"
    assert_store_empty(store)


# -- refusals: one clear error, nothing in the store ---------------------------


def test_missing_dir_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PycorError, match=str(tmp_path / "nope")):
        import_from_dir(store, "b", str(tmp_path / "nope"), quiet())
    assert_store_empty(store)


def test_missing_tar_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PycorError, match=str(tmp_path / "nope.tar")):
        import_from_tar(store, "b", str(tmp_path / "nope.tar"), quiet())
    assert_store_empty(store)


def test_tar_that_is_not_a_rootfs_is_refused(store: Store, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "rootfs").mkdir(parents=True)
    make_minimal_rootfs(tree / "rootfs")  # wrapped in a folder: not at the top
    tarball = tmp_path / "wrapped.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(tree), "."], check=True)
    with pytest.raises(PycorError, match="no etc directory and no shell"):
        import_from_tar(store, "b", str(tarball), quiet())
    assert_store_empty(store)


def test_garbage_tar_is_refused(store: Store, tmp_path: Path) -> None:
    tarball = tmp_path / "garbage.tar.xz"
    tarball.write_bytes(b"\xfd7zXZ\x00" + os.urandom(4096))
    with pytest.raises(PycorError, match="extracting .* failed"):
        import_from_tar(store, "b", str(tarball), quiet())
    assert_store_empty(store)


def test_dir_that_is_not_a_rootfs_is_refused(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    with pytest.raises(PycorError, match="no shell at bin/sh or usr/bin/sh"):
        import_from_dir(store, "b", str(src), quiet())
    assert_store_empty(store)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a,b", "a:b", "", "x" * 65, "-a"])
def test_invalid_names_are_refused(store: Store, tmp_path: Path, name: str) -> None:
    src = tmp_path / "src"
    make_minimal_rootfs(src)
    with pytest.raises(PycorError, match="invalid base name"):
        import_from_dir(store, name, str(src), quiet())
    with pytest.raises(PycorError, match="invalid base name"):
        import_busybox(store, name, quiet())
    assert_store_empty(store)


def test_existing_base_name_is_refused(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_minimal_rootfs(src)
    first = import_from_dir(store, "taken", str(src), quiet())
    with pytest.raises(PycorError, match="already exists") as e:
        import_busybox(store, "taken", quiet())
    assert "pycor base rm taken" in (e.value.hint or "")
    assert store.base_names() == ["taken"]
    assert [v.version for v in store.versions("taken")] == ["1"]
    assert store.version("taken", "1").source == first.source
    assert list(Path(store.staging_dir).iterdir()) == []


# -- apt sources ---------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- progress ------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- debootstrap (slow: about 25 s from the network) -----------------------------


def test_debootstrap_refuses_bad_arguments_before_any_work(store: Store) -> None:
    with pytest.raises(PycorError, match="does not know the suite"):
        import_debootstrap(store, "deb", "no-such-suite", progress=quiet())
    with pytest.raises(PycorError, match="unknown debootstrap variant"):
        import_debootstrap(store, "deb", "bookworm", variant="huge", progress=quiet())
    with pytest.raises(PycorError, match="invalid package name"):
        import_debootstrap(store, "deb", "bookworm", include=["--evil"], progress=quiet())
    assert_store_empty(store)


def test_debootstrap_failure_reports_its_output_and_leaves_nothing(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "apt/sources.list", f"deb file://{tmp_path}/no-mirror bookworm main\n")
    monkeypatch.setattr(debian, "APT_DIR", str(tmp_path / "apt"))
    with pytest.raises(PycorError, match="debootstrap bookworm from file://.* failed") as e:
        import_debootstrap(store, "deb", "bookworm", progress=quiet())
    assert "E:" in e.value.message  # debootstrap's own last lines
    assert_store_empty(store)
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if store.root in m]


@pytest.mark.slow
def test_import_debootstrap_minbase_bookworm(store: Store) -> None:
    version = import_debootstrap(store, "bookworm", "bookworm", progress=quiet())
    layer = Path(version.rootfs)
    assert version.source == "debootstrap:bookworm/minbase"
    assert os.access(layer / "usr/bin/apt-get", os.X_OK)
    init = resolve_inside(str(layer), "sbin/init", follow_last=True)
    assert os.path.isfile(init) and os.access(init, os.X_OK)
    assert store.base("bookworm").lxc == []
    assert (layer / "etc/hostname").read_text() == "localhost\n"
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if store.root in m]
    assert list(Path(store.staging_dir).iterdir()) == []
    # Our init idles and exits 0 on SIGPWR, LXC's default halt signal.
    if Path(init).read_text().startswith("#!/bin/sh\n# pycor"):
        proc = subprocess.Popen(["chroot", str(layer), "/sbin/init"])
        try:
            time.sleep(0.5)
            assert proc.poll() is None
            os.kill(proc.pid, signal.SIGPWR)
            assert proc.wait(5) == 0
        finally:
            proc.kill()
