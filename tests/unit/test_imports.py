"""Base import: real files, real tar, real busybox, a real debootstrap (slow), run as root."""


from __future__ import annotations

import io
from pathlib import Path

import pytest

from pycor_hooks.debian import apt_mirror
from pycor_hooks.errors import PycorError
from pycor_hooks.importing import (
    import_from_dir,
    missing_rootfs_parts,
)
from pycor_hooks.proc import Progress
from pycor_hooks.store import Store


def quiet() -> Progress:
    return Progress(io.StringIO())


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


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rootfs_check_resolves_symlinks_inside_the_tree(tmp_path: Path) -> None:
    # bin -> /usr/bin must mean the tree's usr/bin, even though the host has a /usr/bin/sh.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("/usr/bin")
    assert missing_rootfs_parts(str(root)) == ["shell at bin/sh or usr/bin/sh"]
    (root / "usr/bin/sh").symlink_to("/bin/busybox-not-on-host")
    assert missing_rootfs_parts(str(root)) == []
    (root / "usr/bin/sh").unlink()
    (root / "bin").unlink()
    (root / "bin").symlink_to("../../../../../../usr/bin")  # '..' stops at the tree's root
    assert missing_rootfs_parts(str(root)) == ["shell at bin/sh or usr/bin/sh"]


def test_store_inside_the_source_is_refused(tmp_path: Path) -> None:
    make_minimal_rootfs(tmp_path / "src")
    store = Store(str(tmp_path / "src" / "var" / "pycor"))
    with pytest.raises(PycorError, match="inside the source"):
        import_from_dir(store, "b", str(tmp_path / "src"), quiet())
    assert_store_empty(store)


def test_apt_mirror_prefers_the_plain_release_in_deb822(tmp_path: Path) -> None:
    write(tmp_path / "sources.list.d/debian.sources", """\
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
# a comment inside a paragraph
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm-updates
 bookworm
Components: main
""")
    write(tmp_path / "sources.list.d/other.sources.disabled", "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n")
    write(tmp_path / "sources.list.d/node.sources", "Types: deb\nURIs: https://node.example/node\nSuites: nodistro\n")
    assert apt_mirror(str(tmp_path)) == "http://mirror.example/debian"


def test_apt_mirror_reads_one_line_sources(tmp_path: Path) -> None:
    write(tmp_path / "sources.list", """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://cloud.example/apt cloud-sdk-bookworm main
deb [ arch=amd64 ] http://updates.example/debian bookworm-updates main
""")
    assert apt_mirror(str(tmp_path)) == "http://updates.example/debian"
    write(tmp_path / "sources.list.d/main.list", "deb [trusted=yes] http://plain.example/debian stable main contrib\n")
    assert apt_mirror(str(tmp_path)) == "http://plain.example/debian"


def test_apt_mirror_without_a_debian_entry_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "sources.list", "deb http://security.example/debian-security bookworm-security main\n")
    write(tmp_path / "sources.list.d/node.sources", "Types: deb\nURIs: https://node.example/node\nSuites: nodistro\n")
    with pytest.raises(PycorError, match="no Debian mirror"):
        apt_mirror(str(tmp_path))


def test_apt_mirror_on_this_machine_is_a_url() -> None:
    assert apt_mirror().startswith(("http://", "https://", "ftp://", "file:"))


def test_progress_prints_every_ten_percent_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out)
    p.start("copying", 1000)
    for done in range(0, 1001, 10):
        p.update(done)
    p.finish("copied")
    lines = out.getvalue().splitlines()
    assert lines[0] == "copying" and lines[-1] == "copied"
    assert 10 <= len(lines) <= 13 and "\r" not in out.getvalue()


def test_progress_updates_one_line_in_place_on_a_terminal() -> None:
    out = FakeTTY()
    p = Progress(out)
    p.start("copying", 1000)
    p.update(500)
    p.finish("copied")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("copied\n") and "\r" in text
