"""A builder's view of its base, worked out without starting it: where the base's resolv.conf
leads, what is mounted for the command, what apt says it could not fetch, what an import drops."""

from __future__ import annotations

import io
import os

from pycor_hooks import builder
from pycor_hooks.debian import drop_apt_caches


def layer(root, files: dict[str, str], links: dict[str, str] | None = None) -> str:  # type: ignore[no-untyped-def]
    """A layer under root: files (path -> text) and symlinks (path -> target)."""
    os.makedirs(root)
    for rel, text in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    for rel, target in (links or {}).items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        os.symlink(target, os.path.join(root, rel))
    return str(root)


def test_resolv_conf_leading_to_resolveds_stub_resolves_inside_the_base(tmp_path):
    low = layer(tmp_path / "1", {"etc/resolv.conf": "nameserver 192.0.2.1\n"})
    top = layer(tmp_path / "2", {}, {"etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"})
    assert builder.resolve_lower([top, low], "etc/resolv.conf") == ("run/systemd/resolve/stub-resolv.conf", None)


def test_links_are_followed_in_the_base_never_on_the_host(tmp_path):
    base = layer(tmp_path / "1", {"srv/alt/resolv.conf": "nameserver 192.0.2.1\n"},
                 {"etc/resolv.conf": "/etc/alt/resolv.conf", "etc/alt": "../srv/alt", "etc/out": "../../../../run/x",
                  "etc/host": "/etc/hostname"})
    rel, st = builder.resolve_lower([base], "etc/resolv.conf")  # type: ignore[misc]
    assert rel == "srv/alt/resolv.conf" and st is not None and st.st_size == len("nameserver 192.0.2.1\n")
    assert builder.resolve_lower([base], "etc/out") == ("run/x", None)  # '..' stops at the base's /
    assert builder.resolve_lower([base], "etc/host") == ("etc/hostname", None)  # the base has none; the host's is not read


def test_a_link_loop_resolves_to_nothing(tmp_path):
    base = layer(tmp_path / "1", {}, {"etc/resolv.conf": "a", "etc/a": "b", "etc/b": "a"})
    assert builder.resolve_lower([base], "etc/resolv.conf") is None


def mounts(stack: list[str]) -> list[str]:
    return [line.split(" = ", 1)[1] for line in builder.runtime_mounts(stack, "/STAGING") if line.startswith("lxc.mount.entry")]


def test_builder_binds_the_hosts_name_servers_where_the_bases_resolv_conf_leads(tmp_path):
    stub = layer(tmp_path / "stub", {}, {"etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"})
    found = mounts([stub])
    assert found[0].startswith("tmpfs run tmpfs ")  # /run first: the bind below lands on it, not in the layer
    assert "/etc/resolv.conf run/systemd/resolve/stub-resolv.conf none bind,ro,create=file 0 0" in found
    plain = layer(tmp_path / "plain", {"etc/resolv.conf": "nameserver 192.0.2.1\n"})
    assert "/etc/resolv.conf etc/resolv.conf none bind,ro 0 0" in mounts([plain])
    nowhere = layer(tmp_path / "nowhere", {}, {"etc/resolv.conf": "/etc/missing/resolv.conf"})
    assert not [m for m in mounts([nowhere]) if m.startswith("/etc/resolv.conf ")]  # no mount point made in the layer
    odd = layer(tmp_path / "odd", {}, {"etc/resolv.conf": "/run/a b"})
    assert not [m for m in mounts([odd]) if m.startswith("/etc/resolv.conf ")]  # no target LXC would split


def test_builder_gets_apts_config_and_a_policy_rc_d_unless_the_base_has_its_own(tmp_path):
    lines = builder.runtime_mounts([layer(tmp_path / "1", {})], "/STAGING")
    assert "lxc.environment = APT_CONFIG=/run/pycor-builder/apt.conf" in lines
    assert "lxc.mount.entry = /STAGING/builder-files/policy-rc.d usr/sbin/policy-rc.d none bind,ro,create=file 0 0" in lines
    own = layer(tmp_path / "2", {"usr/sbin/policy-rc.d": "#!/bin/sh\nexit 0\n"})
    assert not [m for m in mounts([own]) if "policy-rc.d" in m]


def test_builder_files_make_a_failed_fetch_an_error_and_keep_lists_out_of_the_layer(tmp_path):
    builder.write_builder_files(str(tmp_path))
    conf = (tmp_path / "builder-files" / "apt.conf").read_text()
    assert 'APT::Update::Error-Mode "any";' in conf
    assert 'Dir::State::Lists "/run/pycor-apt/lists/";' in conf and 'Dir::Cache "/run/pycor-apt/cache/";' in conf
    assert (tmp_path / "builder-apt" / "lists" / "partial").is_dir() and (tmp_path / "builder-apt" / "cache" / "archives" / "partial").is_dir()
    assert os.access(tmp_path / "builder-files" / "policy-rc.d", os.X_OK)


def test_stderr_is_relayed_and_apts_fetch_failures_are_named(capsysbinary):
    text = (b"Reading package lists...\n"
            b"E: Failed to fetch http://a.invalid/debian/dists/bookworm/InRelease  Could not resolve 'a.invalid'\n"
            b"E: Some index files failed to download. They have been ignored, or old ones used instead.\n"
            b"W: Failed to fetch http://b.invalid/x  \x1b[31mTemporary failure\n"
            b"E: Failed to fetch http://a.invalid/debian/dists/bookworm/InRelease  Could not resolve 'a.invalid'\n")
    found = builder.relay_stderr(io.BytesIO(text))
    assert capsysbinary.readouterr().err == text.replace(b"\x1b", b"?")  # no control character reaches the terminal
    assert found == ["http://b.invalid/x (?[31mTemporary failure)", "http://a.invalid/debian/dists/bookworm/InRelease (Could not resolve 'a.invalid')"]
    many = b"".join(b"E: Failed to fetch http://h%d.invalid/  no\n" % i for i in range(20))
    assert len(builder.relay_stderr(io.BytesIO(many))) == builder.MAX_UNREACHED


def test_import_drops_apts_downloads_lists_and_caches(tmp_path):
    kept = ["lock", "partial"]
    root = layer(tmp_path / "root", {"var/cache/apt/archives/hello_2.10-3_amd64.deb": "deb", "var/cache/apt/archives/lock": "",
                                     "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "x",
                                     "var/lib/apt/lists/lock": "", "var/cache/apt/pkgcache.bin": "c", "etc/apt/sources.list": "deb"})
    for rel in ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial"):
        os.makedirs(os.path.join(root, rel))
    assert drop_apt_caches(root) == 3
    assert sorted(os.listdir(os.path.join(root, "var/cache/apt/archives"))) == kept
    assert sorted(os.listdir(os.path.join(root, "var/lib/apt/lists"))) == kept
    assert os.listdir(os.path.join(root, "var/cache/apt")) == ["archives"]
    assert os.path.exists(os.path.join(root, "etc/apt/sources.list"))
