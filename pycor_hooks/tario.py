"""GNU tar, the one way pycor copies and streams a layer: one option list, every attribute kept.

Imports, squashes, commits and export streams all read and write layers
through it. The POSIX format carries xattrs (overlayfs' opaque and redirect
marks, file capabilities) and ACLs; numeric owners keep ids as they are;
--sparse keeps holes as holes.

Storage: not on a hook's path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from .errors import PycorError
from .fsutil import disk_usage
from .proc import Progress, pump, running, tail

# GNU tar options that carry everything a root filesystem needs. The posix
# format is required for xattrs and ACLs; '*' includes security.* and trusted.*
# (on extraction GNU tar otherwise restores only user.*).
TAR_METADATA = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
TAR_CREATE = ["tar", "--create", "--file=-", "--format=posix", "--sparse", *TAR_METADATA]
# No --absolute-names: GNU tar strips a leading '/' (of names and hard-link
# targets), refuses members with '..', and extracts a symlink that is absolute
# or holds '..' as a placeholder file until the end, so nothing is written or
# linked through it; it never replaces the target directory itself ('.' as a
# file or symlink fails: File exists). tests/integration/test_hostile_stream.py
# proves each with hand-made archives.
TAR_EXTRACT = ["tar", "--extract", "--file=-", "--same-owner", "--same-permissions", *TAR_METADATA]

COMPRESSION_MAGIC: list[tuple[bytes, str, str]] = [
    (b"\x1f\x8b", "--gzip", "gzip"),
    (b"\xfd7zXZ\x00", "--xz", "xz"),
    (b"\x28\xb5\x2f\xfd", "--zstd", "zstd"),
    (b"BZh", "--bzip2", "bzip2"),
]


# Messages in English whatever the locale, so no_space() can read them; names are bytes either way.
TAR_ENV = {"LANGUAGE": "C"}
_NO_SPACE = ("No space left on device", "Disk quota exceeded")


def create_argv(directory: str, sparse: bool = True) -> list[str]:
    """tar writing the tree at directory (its contents, as '.') to stdout.

    sparse=False writes holes as the zeros they read as: for a layer whose
    recorded manifest hashed a file with holes as plain bytes (digest.py), so
    the receiving side gets it dense and hashes it the same way.
    """
    return [*(TAR_CREATE if sparse else [a for a in TAR_CREATE if a != "--sparse"]), f"--directory={directory}", "."]


def no_space(tar_stderr: str, directory: str) -> bool:
    """Whether tar failed because the filesystem holding directory is full (blocks, inodes or a quota)."""
    if any(text in tar_stderr for text in _NO_SPACE):
        return True
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bfree * st.f_frsize < (1 << 20) or (st.f_files > 0 and st.f_ffree == 0)


def extract_argv(directory: str) -> list[str]:
    """tar reading an archive from stdin into directory."""
    return [*TAR_EXTRACT, f"--directory={directory}"]


def detect_compression(tarball: str) -> tuple[str, str] | None:
    """(tar option, tool) for a compressed tarball, None for a plain one; by magic bytes, not by name."""
    with open(tarball, "rb") as f:
        head = f.read(512)
    for magic, option, tool in COMPRESSION_MAGIC:
        if head.startswith(magic):
            return option, tool
    return None


def copy_tree(src: str, rootfs: str, progress: Progress) -> None:
    """GNU tar from src piped through us into tar in rootfs, so we can count the bytes."""
    progress.start(f"copying {src}", disk_usage(src))
    with tempfile.TemporaryFile() as err_c, tempfile.TemporaryFile() as err_x, \
            running(create_argv(src), stdout=subprocess.PIPE, stderr=err_c) as create, \
            running(extract_argv(rootfs), stdin=subprocess.PIPE, stderr=err_x) as extract:
        assert create.stdout is not None and extract.stdin is not None
        pump(create.stdout, extract.stdin, progress)
        create.stdout.close()
        rc_x, rc_c = extract.wait(), create.wait()
        # When the extracting side fails first, the creating side dies of SIGPIPE.
        if rc_c not in (0, -signal.SIGPIPE) or (rc_c != 0 and rc_x == 0):
            raise PycorError(f"reading {src} failed:\n{tail(err_c)}", "make sure nothing writes to the source during the import, then retry")
        if rc_x != 0:
            raise PycorError(f"copying {src} failed:\n{tail(err_x)}", "check free space in the store and that its filesystem supports xattrs and ACLs")
    progress.finish(f"copied {src}")



def extract_tarball(tarball: str, compression: tuple[str, str] | None, rootfs: str, progress: Progress) -> None:
    """Feed the tarball through us into tar, so progress counts the input bytes read."""
    cmd = extract_argv(rootfs)
    if compression:
        option, tool = compression
        if shutil.which(tool) is None:
            raise PycorError(f"{tarball} is {tool}-compressed but {tool} is not installed", f"apt-get install {tool}")
        cmd.append(option)
    progress.start(f"extracting {tarball}", os.path.getsize(tarball))
    with open(tarball, "rb") as src, tempfile.TemporaryFile() as err, \
            running(cmd, stdin=subprocess.PIPE, stderr=err) as tar:
        assert tar.stdin is not None
        pump(src, tar.stdin, progress)
        if tar.wait() != 0:
            raise PycorError(f"extracting {tarball} failed:\n{tail(err)}", "check that it is a complete tar archive and that the store has free space")
    progress.finish(f"extracted {tarball}")
