"""depcheck: dpkg's version order and apt-get check's verdict, against dpkg, python-debian and apt themselves."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess

import pytest

from pycor_hooks import depcheck

PAIRS = [
    ("1.0", "1.0"), ("1.0", "1.0-0"), ("1.0-1", "1.0-2"), ("1:0.1", "2.0"), ("1.0~rc1", "1.0"), ("1.0~~", "1.0~"),
    ("1.0a", "1.0"), ("1.0+b1", "1.0"), ("1.0.1", "1.0a"), ("2.36-9+deb12u10", "2.41-12"), ("5.36.0-7+deb12u1", "5.40.1-6"),
    ("1.2.3-1", "1.2.3-1.1"), ("0:1.0", "1.0"), ("1.0-1~bpo12+1", "1.0-1"), ("010", "10"), ("1.00", "1.0"),
    ("a", "b"), ("1.0-a", "1.0-1"), ("3.0.11-1~deb12u2", "3.0.11-1"), ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12"),
    ("1:2.39.1-4", "2.40-1"), ("1.2.3+dfsg-1", "1.2.3-1"), ("9.3-4", "9.3-4+b1"),
]


def test_version_order_is_dpkgs():
    for a, b in PAIRS + [(b, a) for a, b in PAIRS]:
        ours = depcheck.compare_versions(a, b)
        for op, holds in (("lt", ours < 0), ("eq", ours == 0), ("gt", ours > 0)):
            theirs = subprocess.run(["dpkg", "--compare-versions", a, op, b], capture_output=True).returncode == 0
            assert holds == theirs, (a, op, b)


def test_version_order_is_python_debians():
    version = pytest.importorskip("debian.debian_support").Version  # the test extras install it
    rng = random.Random(20)

    def one() -> str:
        chars = "0123456789.~+ab"
        text = rng.choice(["", "1:", "2:"]) + rng.choice("0123456789") + "".join(rng.choice(chars) for _ in range(rng.randint(0, 5)))
        return text + (("-" + "".join(rng.choice(chars) for _ in range(rng.randint(1, 4)))) if rng.random() < 0.5 else "")

    for _ in range(3000):
        a, b = one(), one()
        try:
            va, vb = version(a), version(b)
        except ValueError:
            continue
        expect = (va > vb) - (va < vb)
        got = depcheck.compare_versions(a, b)
        assert (got > 0) - (got < 0) == expect, (a, b)


def test_relations_parse_as_python_debian_parses_them():
    relation = pytest.importorskip("debian.deb822").PkgRelation
    texts = ["libc6 (>= 2.38), perl-base (= 5.36.0-7+deb12u1) | perl:any, foo:amd64 (<< 2~)",
             "a (>= 1) [amd64 !i386] <!nocheck>, b ( <= 3 ) | c", "python3:any (>= 3.11~), debconf (>= 0.5) | debconf-2.0"]
    for text in texts:
        ours = [[(r.name, r.arch, r.op, r.version) for r in group] for group in depcheck.parse_relations(text)]
        theirs = [[(r["name"], r.get("archqual"), *(r["version"] or (None, None))) for r in group]
                  for group in relation.parse_relations(text)]
        assert ours == theirs


def _para(name: str, version: str = "1", arch: str = "amd64", status: str = "installed", **fields: str) -> str:
    lines = [f"Package: {name}", f"Status: install ok {status}", f"Architecture: {arch}", f"Version: {version}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def status(*paragraphs: str) -> bytes:
    return "\n".join(paragraphs).encode()


def test_a_newer_base_library_breaks_the_containers_own_package():
    # perl needs exactly its perl-base; the base moved perl-base on
    s = status(_para("perl-base", "5.40.1-6"), _para("perl", "5.36.0-7", Depends="perl-base (= 5.36.0-7)"),
               _para("libc6", "2.41-12", Breaks="locales (<< 2.41)"), _para("locales", "2.36-9", arch="all"))
    assert depcheck.check(s) == [
        "libc6 : Breaks: locales (<< 2.41) but locales 2.36-9 is installed",
        "perl : Depends: perl-base (= 5.36.0-7) but 5.40.1-6 is installed",
    ]


def test_provides_alternatives_multiarch_and_the_conflicts_provides_idiom():
    s = status(
        _para("mawk", "1.3", Provides="awk", Multi_Arch="foreign"),
        _para("needs-awk", Depends="awk"),
        _para("needs-awk2", Depends="awk (>= 2)"),  # an unversioned Provides meets no versioned relation
        _para("libfoo", "2", Provides="libfoo-abi (= 2)"),
        _para("needs-abi", Depends="libfoo-abi (= 2)"),
        _para("either", Depends="missing | mawk"),
        _para("mta", Provides="mail-transport-agent", Conflicts="mail-transport-agent"),
        _para("python3", "3.11", Multi_Arch="allowed"),
        _para("script", arch="all", Depends="python3:any (>= 3.9)"),
        _para("gone", status="config-files"),
        _para("needs-gone", Depends="gone"),
        _para("half", status="unpacked", Depends="libfoo (>= 3)"),
    )
    assert depcheck.check(s) == [
        "half : Depends: libfoo (>= 3) but 2 is installed",
        "needs-awk2 : Depends: awk (>= 2) but it is not installed",
        "needs-gone : Depends: gone but it is not installed",
    ]


def test_nothing_breaks_on_odd_input():
    assert depcheck.check(b"") == []
    assert depcheck.check(b"\xff\xfe garbage\n\nPackage:\n\n  continuation\n") == []
    assert depcheck.check(status(_para("x", Depends="(>= 1), y (?? 2), , |"))) == []


# -- against apt-get check itself ---------------------------------------------------------------------------

APT_LINE = re.compile(r"^ (\S+) : (PreDepends|Depends|Breaks|Conflicts): (\S+)")
MORE_LINE = re.compile(r"^\s+(PreDepends|Depends|Breaks|Conflicts): (\S+)")


def apt_check(path: str, scratch: str) -> set[tuple[str, str, str]]:
    """(package, field, first related name) of every problem apt-get check reports for a status file."""
    for d in ("lists/partial", "cache"):
        os.makedirs(os.path.join(scratch, d), exist_ok=True)
    open(os.path.join(scratch, "extended_states"), "w").close()
    proc = subprocess.run(
        ["apt-get", "check", "-q", "-o", "Debug::NoLocking=1", "-o", f"Dir::State::status={path}",
         "-o", f"Dir::State::lists={scratch}/lists", "-o", f"Dir::Cache={scratch}/cache", "-o", "Dir::Cache::pkgcache=",
         "-o", "Dir::Cache::srcpkgcache=", "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={scratch}/lists",
         "-o", f"Dir::State::extended_states={scratch}/extended_states", "-o", "APT::Architecture=amd64"],
        capture_output=True, text=True)
    found = set()
    pkg = None
    for line in proc.stdout.splitlines():
        m = APT_LINE.match(line)
        if m:
            pkg = m.group(1)
            found.add((pkg, m.group(2).replace("PreDepends", "Pre-Depends"), m.group(3)))
            continue
        m = MORE_LINE.match(line)
        if m and pkg:
            found.add((pkg, m.group(1).replace("PreDepends", "Pre-Depends"), m.group(2)))
    return found


def ours(data: bytes) -> set[tuple[str, str, str]]:
    out = set()
    for line in depcheck.check(data, "amd64"):
        pkg, _, rest = line.partition(" : ")
        field, _, rel = rest.partition(": ")
        out.add((pkg, field, rel.split()[0]))
    return out


def _paragraphs(data: bytes) -> list[bytes]:
    return [p.strip(b"\n") for p in data.split(b"\n\n") if p.strip(b"\n")]


def _mutations(data: bytes) -> list[bytes]:
    """The host's status, and variants with packages gone or moved to another version (seeded)."""
    paras = _paragraphs(data)
    rng = random.Random(19)
    out = [data]
    for _ in range(6):
        changed = []
        for p in paras:
            r = rng.random()
            if r < 0.03:
                continue  # removed: its dependents break
            if r < 0.08:
                p = re.sub(rb"\nVersion: ([^\n]*)", lambda m: b"\nVersion: " + rng.choice([b"0.1-1", b"99:9", m.group(1) + b"~old"]), p)
            changed.append(p)
        out.append(b"\n\n".join(changed) + b"\n")
    return out


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is the oracle")
def test_check_says_what_apt_get_check_says(tmp_path):
    with open("/var/lib/dpkg/status", "rb") as f:
        host = f.read()
    synthetic = status(
        _para("perl-base", "5.40.1-6"), _para("perl", "5.36.0-7", Depends="perl-base (= 5.36.0-7)"),
        _para("libc6", "2.41-12", Breaks="locales (<< 2.41)"), _para("locales", "2.36-9", arch="all"),
        _para("mawk", "1.3", Provides="awk", Multi_Arch="foreign"), _para("needs-awk2", Depends="awk (>= 2)"),
        _para("mta", Provides="mail-transport-agent", Conflicts="mail-transport-agent"),
        _para("other-mta", Provides="mail-transport-agent", Conflicts="mail-transport-agent"),
        _para("python3", "3.11", Multi_Arch="allowed"), _para("script", arch="all", Depends="python3:any (>= 3.12)"),
    )
    checked = 0
    for n, data in enumerate([synthetic, *_mutations(host)]):
        path = tmp_path / f"status{n}"
        path.write_bytes(data)
        expect = apt_check(str(path), str(tmp_path / f"apt{n}"))
        assert ours(data) == expect, n
        checked += len(expect)
    assert checked > 20  # the mutations did break something for both to agree on
