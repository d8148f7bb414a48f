"""Pure logic: three-way merge of account, dpkg, apt, debconf and ucf databases; id ranges."""


from __future__ import annotations

import hashlib
import os
import random
import subprocess

import pytest

from pycor_hooks import merge
from pycor_hooks.errors import Damaged
from pycor_hooks.merge import RecordConflict, merge3


def record(kind: str, key: str, v: str = "1") -> str:
    """One record of `kind` named `key`; `v` tells two versions of it apart."""
    n = sum(key.encode()) % 400 + 100
    h = int(hashlib.md5(v.encode()).hexdigest()[:4], 16)
    return {
        "passwd": f"{key}:x:{n}:{n}:{v}:/home/{key}:/bin/sh",
        "group": f"{key}:!{v}:{n}:",
        "shadow": f"{key}:!{v}:19000:0:99999:7:::",
        "gshadow": f"{key}:!{v}::",
        "subid": f"{key}:{100000 + n * 65536}:{65536 + h}",
        "lines": f"/bin/{key}",
        "dpkg-status": f"Package: {key}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.{v}\n"
                       f"Description: {key}\n more about {key}",
        "apt-extended-states": f"Package: {key}\nArchitecture: amd64\nAuto-Installed: {v}",
        "debconf": f"Name: {key}/q\nTemplate: {key}/q\nValue: {v}\nOwners: {key}",
        "dpkg-diversions": f"/usr/bin/{key}\n/usr/bin/{key}.{v}\n{key}-pkg",
        "dpkg-statoverride": f"root root {h % 778} /usr/bin/{key}",
        "ucf-registry": f"pkg{v} \t /etc/{key}.conf",
        "ucf-hashfile": f"{hashlib.md5(v.encode()).hexdigest()}  /etc/{key}.conf",
    }[kind]


def key_of(kind: str, key: str) -> str:
    return {"dpkg-status": f"{key}:amd64", "apt-extended-states": f"{key}:amd64", "debconf": f"{key}/q",
            "lines": f"/bin/{key}", "dpkg-diversions": f"/usr/bin/{key}", "dpkg-statoverride": f"/usr/bin/{key}",
            "ucf-registry": f"/etc/{key}.conf", "ucf-hashfile": f"/etc/{key}.conf"}.get(kind, key)


def db(kind: str, *recs: str | tuple[str, str]) -> bytes:
    """A database file of `kind`: each item a name, or (name, version)."""
    sep = "\n\n" if kind in ("dpkg-status", "apt-extended-states", "debconf") else "\n"
    items = [record(kind, *((r,) if isinstance(r, str) else r)) for r in recs]
    return (sep.join(items) + sep).encode() if items else b""


KINDS = merge.KINDS


CHANGEABLE = [k for k in KINDS if k != "lines"]  # a line set has no record that changes in place


def merged_twice(kind, a, b, o):
    """merge3, checked to be idempotent: merging its result again with the same base changes nothing."""
    r = merge3(kind, a, b, o)
    again = merge3(kind, a, b, r.data)
    assert again.data == r.data, "a second merge changed the result"
    assert again.same_as_base == r.same_as_base
    return r


def dpkg_rewrite(status: bytes, tmp) -> bytes:
    """The status file as dpkg itself writes it back (sorted its way)."""
    admin = tmp / "admin"
    for sub in ("updates", "info", "triggers"):
        (admin / sub).mkdir(parents=True, exist_ok=True)
    (admin / "status").write_bytes(status)
    (admin / "available").write_bytes(b"")
    subprocess.run(["dpkg", f"--admindir={admin}", "--set-selections"], input=b"", check=True, capture_output=True)
    return (admin / "status").read_bytes()


LOGIN_DEFS_CONTAINER = [
    (b"UID_MIN\t\t\t 1000", b"UID_MIN\t\t\t 30000"), (b"UID_MAX\t\t\t60000", b"UID_MAX\t\t\t59999"),
    (b"#SYS_UID_MIN\t\t  100", b"SYS_UID_MIN\t\t  500"), (b"#SYS_UID_MAX\t\t  999", b"SYS_UID_MAX\t\t  899"),
    (b"GID_MIN\t\t\t 1000", b"GID_MIN\t\t\t 30000"), (b"GID_MAX\t\t\t60000", b"GID_MAX\t\t\t59999"),
    (b"#SYS_GID_MIN\t\t  100", b"SYS_GID_MIN\t\t  500"), (b"#SYS_GID_MAX\t\t  999", b"SYS_GID_MAX\t\t  899")]


ADDUSER_CONF_BASE = [
    (b"#FIRST_SYSTEM_UID=100", b"FIRST_SYSTEM_UID=100"), (b"#LAST_SYSTEM_UID=999", b"LAST_SYSTEM_UID=499"),
    (b"#FIRST_SYSTEM_GID=100", b"FIRST_SYSTEM_GID=100"), (b"#LAST_SYSTEM_GID=999", b"LAST_SYSTEM_GID=499"),
    (b"#FIRST_UID=1000", b"FIRST_UID=1000"), (b"LAST_UID = 59999", b"LAST_UID = 29999"),
    (b"#FIRST_GID=1000", b"FIRST_GID=1000"), (b"#LAST_GID=59999", b"LAST_GID=29999")]


PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
messagebus:x:100:102::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""


STATUS_DPKG = """\
Package: dpkg
Essential: yes
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 6409
Maintainer: Dpkg Developers <debian-dpkg@lists.debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 1.21.22
Depends: tar (>= 1.28-1)
Conffiles:
 /etc/alternatives/README 7be88b21f7e386c8d5a8790c2461c92b
 /etc/cron.daily/dpkg 94bb6c1363245e46256908a5d52ba4fb
Description: Debian package management system
 This package provides the low-level infrastructure for handling the
 installation and removal of Debian software packages.
 .
 For Debian package development tools, install dpkg-dev.
Homepage: https://wiki.debian.org/Teams/Dpkg"""


STATUS_LIBC6 = """\
Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 13001
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14
Depends: libgcc-s1
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
Homepage: https://www.gnu.org/software/libc/libc.html"""


STATUS_LIBZSTD1 = """\
Package: libzstd1
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 785
Maintainer: RPM packaging team <team+pkg-rpm@tracker.debian.org>
Architecture: amd64
Multi-Arch: same
Source: libzstd
Version: 1.5.4+dfsg2-5
Depends: libc6 (>= 2.34)
Description: fast lossless compression algorithm
 Zstd, short for Zstandard, is a fast lossless compression algorithm.
Homepage: https://github.com/facebook/zstd"""


LOGIN_DEFS = """\
PASS_WARN_AGE	7

#
# Min/max values for automatic uid selection in useradd
#
UID_MIN			 1000
UID_MAX			60000
# System accounts
#SYS_UID_MIN		  100
#SYS_UID_MAX		  999
# Extra per user uids
SUB_UID_MIN		   100000
SUB_UID_MAX		600100000
SUB_UID_COUNT		    65536

#
# Min/max values for automatic gid selection in groupadd
#
GID_MIN			 1000
GID_MAX			60000
# System accounts
#SYS_GID_MIN		  100
#SYS_GID_MAX		  999
"""


ADDUSER_CONF = """\
# Default: FIRST_SYSTEM_UID=100, LAST_SYSTEM_UID=999
#FIRST_SYSTEM_UID=100
#LAST_SYSTEM_UID=999

# Default: FIRST_SYSTEM_GID=100, LAST_SYSTEM_GID=999
#FIRST_SYSTEM_GID=100
#LAST_SYSTEM_GID=999

# Default: FIRST_UID=1000, LAST_UID=59999
#FIRST_UID=1000
#LAST_UID=59999
LAST_UID = 59999

# Default: FIRST_GID=1000, LAST_GID=59999
#FIRST_GID=1000
#LAST_GID=59999
"""


def test_every_kind_is_tested():
    assert set(KINDS) == set(merge._FORMATS) and set(merge.DATABASES.values()) <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_base_and_container_additions_both_land(kind):
    a = db(kind, "aa", "cc")
    b = db(kind, "aa", "bb", "cc")  # the base adds bb
    o = db(kind, "aa", "cc", "dd")  # the container adds dd
    r = merged_twice(kind, a, b, o)
    assert r.data == db(kind, "aa", "bb", "cc", "dd")
    assert r.conflicts == [] and r.merged == [key_of(kind, "bb")] and not r.same_as_base


@pytest.mark.parametrize("kind", KINDS)
def test_removals_on_either_side_apply(kind):
    a = db(kind, "aa", "bb", "cc", "dd")
    b = db(kind, "aa", "cc", "dd")  # the base removed bb
    o = db(kind, "aa", "bb", "cc")  # the container removed dd
    r = merged_twice(kind, a, b, o)
    assert r.data == db(kind, "aa", "cc")
    assert r.conflicts == [] and r.merged == [key_of(kind, "bb")]


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_base_change_applies_and_container_change_stays(kind):
    a = db(kind, "aa", "bb", "cc")
    b = db(kind, ("aa", "base"), "bb", "cc")
    o = db(kind, "aa", "bb", ("cc", "mine"))
    r = merged_twice(kind, a, b, o)
    assert r.data == db(kind, ("aa", "base"), "bb", ("cc", "mine"))
    assert r.conflicts == [] and r.merged == [key_of(kind, "aa")]


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_both_changed_a_record_keeps_the_containers_and_reports_it(kind):
    a = db(kind, "aa", "bb")
    b = db(kind, "aa", ("bb", "base"))
    o = db(kind, "aa", ("bb", "mine"))
    r = merged_twice(kind, a, b, o)
    assert r.data == o
    assert r.conflicts == [RecordConflict(key_of(kind, "bb"), "changed", "changed")] and r.merged == []


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_container_removed_what_the_base_changed_stays_removed_and_is_reported(kind):
    a = db(kind, "aa", "bb")
    b = db(kind, "aa", ("bb", "base"))
    o = db(kind, "aa")
    r = merged_twice(kind, a, b, o)
    assert r.data == o
    if kind in ("dpkg-status", "apt-extended-states", "debconf"):
        # a package the container purged (its auto mark and its debconf questions gone with it): its decision
        assert r.conflicts == []
    else:
        assert r.conflicts == [RecordConflict(key_of(kind, "bb"), "changed", "removed")]


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_a_record_a_conflict_names_is_found_by_that_name(kind):
    data = db(kind, "aa", ("bb", "mine"))
    assert merge.record(kind, data, key_of(kind, "bb")) == merge.record(kind, db(kind, ("bb", "mine")), key_of(kind, "bb"))
    assert merge.record(kind, data, key_of(kind, "bb")) is not None
    assert merge.record(kind, data, key_of(kind, "zz")) is None


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_base_removed_what_the_container_changed_keeps_the_containers(kind):
    a = db(kind, "aa", "bb")
    b = db(kind, "aa")
    o = db(kind, "aa", ("bb", "mine"))
    r = merged_twice(kind, a, b, o)
    assert r.data == o
    assert r.conflicts == [RecordConflict(key_of(kind, "bb"), "removed", "changed")]


@pytest.mark.parametrize("kind", CHANGEABLE)
def test_both_added_the_same_name_differently_is_a_conflict(kind):
    r = merged_twice(kind, db(kind, "aa"), db(kind, "aa", ("zz", "base")), db(kind, "aa", ("zz", "mine")))
    assert r.data == db(kind, "aa", ("zz", "mine"))
    assert r.conflicts == [RecordConflict(key_of(kind, "zz"), "added", "added")]


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_change_on_both_sides_is_no_conflict_and_the_copy_can_go(kind):
    a = db(kind, "aa", "bb")
    b = db(kind, "aa", "bb", "cc")
    r = merged_twice(kind, a, b, db(kind, "aa", "bb", "cc"))
    assert (r.data, r.conflicts, r.same_as_base) == (b, [], True)
    # The container's own change undone: the result is the base's file.
    r = merged_twice(kind, a, b, db(kind, "aa"))
    assert r.data == db(kind, "aa", "cc") and not r.same_as_base


@pytest.mark.parametrize("kind", KINDS)
def test_missing_files(kind):
    a, b = db(kind, "aa"), db(kind, "aa", "bb")
    # The container deleted the file: the base's new record comes back alone.
    r = merged_twice(kind, a, b, None)
    assert r.data == db(kind, "bb") and r.conflicts == []
    # The base removed the file and the container added nothing: it goes.
    r = merged_twice(kind, a, None, db(kind))
    assert r.data is None and r.same_as_base
    r = merged_twice(kind, a, None, db(kind, "aa", "dd"))
    assert r.data == db(kind, "dd")
    # A database new in this base version, which the container created too.
    r = merged_twice(kind, None, db(kind, "bb"), db(kind, "dd"))
    assert r.data == db(kind, "bb", "dd")


@pytest.mark.parametrize("kind", KINDS)
def test_randomised_merges_are_idempotent_and_apply_every_one_sided_change(kind):
    rng = random.Random(f"merge-{kind}")
    names = [f"n{i:02d}" for i in range(12)]
    for _ in range(60):
        def side(src):
            out = []
            for name, v in src:
                roll = rng.random()
                if roll < 0.15:
                    continue  # removed
                out.append((name, f"{v}x" if roll < 0.3 and kind != "lines" else v))
            return out + [(n, "new") for n in rng.sample(names, 2) if n not in dict(src)]
        anc = [(n, "1") for n in names if rng.random() < 0.7]
        base, ours = side(anc), side(anc)
        r = merged_twice(kind, db(kind, *anc), db(kind, *base), db(kind, *ours))
        got = merge._FORMATS[kind].parse(r.data or b"", "result").records
        got_keys = {rec.key for rec in got}
        amap, bmap, omap = dict(anc), dict(base), dict(ours)
        for n in names:
            k = merge._FORMATS[kind].parse(db(kind, (n, "1")), "k").records[0].key
            if amap.get(n) == omap.get(n):  # the container left it alone: the base's word holds
                assert (k in got_keys) == (n in bmap), (n, amap.get(n), bmap.get(n), omap.get(n))
            elif amap.get(n) == bmap.get(n):  # the base left it alone: the container's holds
                assert (k in got_keys) == (n in omap)


def test_dpkg_status_keeps_dpkgs_order_and_real_paragraphs():
    kind = "dpkg-status"
    libc = STATUS_LIBC6
    zstd = STATUS_LIBZSTD1
    zstd_i386 = zstd.replace("Architecture: amd64", "Architecture: i386")
    dpkg_ = STATUS_DPKG
    a = f"{dpkg_}\n\n{libc}\n\n".encode()
    b = f"{dpkg_}\n\n{libc}\n\n{zstd}\n\n".encode()  # the base installs libzstd1
    o = f"{dpkg_}\n\n{libc}\n\n{zstd_i386}\n\n".encode()  # the container adds its i386 instance
    r = merged_twice(kind, a, b, o)
    assert r.data == f"{dpkg_}\n\n{libc}\n\n{zstd}\n\n{zstd_i386}\n\n".encode()
    assert r.merged == ["libzstd1:amd64"] and r.conflicts == []
    # A local package sorts in among the base's, as dpkg writes them.
    local = "Package: aaa-local\nStatus: install ok installed\nArchitecture: all\nVersion: 1"
    o = f"{local}\n\n{dpkg_}\n\n{libc}\n\n".encode()
    r = merged_twice(kind, a, b, o)
    assert r.data == f"{local}\n\n{dpkg_}\n\n{libc}\n\n{zstd}\n\n".encode()
    o = f"{dpkg_}\n\n{libc}\n\nPackage: libyy\nArchitecture: amd64\nVersion: 1\n\n".encode()
    r = merged_twice(kind, a, b, o)
    assert [line for line in r.data.split(b"\n") if line.startswith(b"Package:")] == \
        [b"Package: dpkg", b"Package: libc6", b"Package: libyy", b"Package: libzstd1"]


def test_foreign_architectures_sort_after_the_native_one():
    kind = "dpkg-status"
    # dpkg's architecture tells the native one: i386 here, so amd64 is foreign and sorts after it.
    native = "Package: dpkg\nArchitecture: i386\nVersion: 1"
    lib = "Package: libfoo\nArchitecture: i386\nMulti-Arch: same\nVersion: 1"
    lib_amd64 = lib.replace("i386", "amd64")
    lib_armel = lib.replace("i386", "armel")
    a = f"{native}\n\n".encode()
    r = merged_twice(kind, a, f"{native}\n\n{lib_armel}\n\n".encode(), f"{native}\n\n{lib}\n\n{lib_amd64}\n\n".encode())
    assert r.data == f"{native}\n\n{lib}\n\n{lib_amd64}\n\n{lib_armel}\n\n".encode()


def test_merged_dpkg_status_is_byte_for_byte_what_dpkg_writes(tmp_path):
    with open("/var/lib/dpkg/status", "rb") as f:
        status = f.read()
    paras = status.rstrip(b"\n").split(b"\n\n")
    libc = next(p for p in paras if p.startswith(b"Package: libc6\n"))

    def pkg(name: bytes, arch: bytes = b"all") -> bytes:
        return (b"Package: " + name + b"\nStatus: install ok installed\nPriority: optional\nSection: misc\n"
                b"Installed-Size: 1\nMaintainer: T <t@example.org>\nArchitecture: " + arch +
                b"\nVersion: 1.0\nDescription: test\n a test package")

    def status_of(records):
        return dpkg_rewrite(b"\n\n".join(records) + b"\n\n", tmp_path)

    a = status_of(paras)
    b = status_of(paras[:5] + paras[6:] + [pkg(b"zz-base"), pkg(b"mid-base", b"amd64"),
                                           libc.replace(b"Package: libc6", b"Package: libfoo"),
                                           libc.replace(b"Package: libc6", b"Package: libbar").replace(b"amd64", b"armhf")])
    o = status_of(paras + [pkg(b"aaa-local"), pkg(b"mid-local"), libc.replace(b"amd64", b"i386"),
                           libc.replace(b"Package: libc6", b"Package: libfoo").replace(b"amd64", b"armhf"),
                           libc.replace(b"Package: libc6", b"Package: libbar")])
    r = merged_twice("dpkg-status", a, b, o)
    assert r.conflicts == [] and len(r.merged) == 5
    assert dpkg_rewrite(r.data, tmp_path) == r.data
    assert r.data.count(b"\nPackage: ") == len(paras) - 1 + 4 + 5 - 1


def test_passwd_real_shaped_new_system_user_and_local_user():
    kind = "passwd"
    a = PASSWD.encode()
    b = (PASSWD + "_chrony:x:101:104:Chrony daemon,,,:/var/lib/chrony:/usr/sbin/nologin\n").encode()
    o = (PASSWD + "alice:x:30000:30000:Alice,,,:/home/alice:/bin/bash\n").encode()
    r = merged_twice(kind, a, b, o)
    assert r.data == b + b"alice:x:30000:30000:Alice,,,:/home/alice:/bin/bash\n"
    assert r.merged == ["_chrony"]
    # The container's user was added before the base's new one in the file, and stays where it was.
    o = PASSWD.replace("nobody:", "alice:x:30000:30000::/home/alice:/bin/bash\nnobody:", 1).encode()
    r = merged_twice(kind, a, b, o)
    assert r.data.split(b"\n")[-4:] == [b"alice:x:30000:30000::/home/alice:/bin/bash",
                                        PASSWD.splitlines()[-1].encode(), b.split(b"\n")[-2], b""]


def test_accounts_both_changed_merge_field_by_field():
    a = PASSWD.encode()
    b = a.replace(b"_apt:x:42:65534::/nonexistent:", b"_apt:x:42:65534::/var/lib/apt:")
    o = a.replace(b"_apt:x:42:65534::/nonexistent:/usr/sbin/nologin", b"_apt:x:42:65534::/nonexistent:/bin/false")
    r = merged_twice("passwd", a, b, o)
    assert b"\n_apt:x:42:65534::/var/lib/apt:/bin/false\n" in r.data
    assert r.merged == ["_apt"] and r.conflicts == []
    # The same field changed both ways is still a conflict, and the container's record stays whole.
    o2 = o.replace(b"_apt:x:42:65534::/nonexistent:", b"_apt:x:42:65534::/srv/apt:")
    r = merged_twice("passwd", a, b, o2)
    assert r.data == o2 and r.conflicts == [RecordConflict("_apt", "changed", "changed")]


def test_group_members_merge_as_sets():
    a = b"root:x:0:\nadm:x:4:syslog,bob\nsudo:x:27:\n"
    b = b"root:x:0:\nadm:x:4:syslog,bob,_chrony\nsudo:x:27:\n"  # the base adds _chrony to adm
    o = b"root:x:0:\nadm:x:4:syslog,alice\nsudo:x:27:alice\n"  # the container: alice in, bob out
    r = merged_twice("group", a, b, o)
    assert r.data == b"root:x:0:\nadm:x:4:syslog,_chrony,alice\nsudo:x:27:alice\n"
    assert r.merged == ["adm"] and r.conflicts == []
    a = b"adm:*::syslog\n"
    r = merged_twice("gshadow", a, b"adm:*:root:syslog,_chrony\n", b"adm:*:alice:alice,syslog\n")
    assert r.data == b"adm:*:root,alice:syslog,_chrony,alice\n"


def test_paragraphs_both_changed_merge_field_by_field():
    # The base upgrades libzstd1; the container put it on hold.
    a = f"{STATUS_DPKG}\n\n{STATUS_LIBZSTD1}\n\n".encode()
    b = a.replace(b"Version: 1.5.4+dfsg2-5", b"Version: 1.5.4+dfsg2-5+deb12u1")
    o = a.replace(b"Package: libzstd1\nStatus: install ok installed", b"Package: libzstd1\nStatus: hold ok installed")
    r = merged_twice("dpkg-status", a, b, o)
    assert r.data == b.replace(b"Package: libzstd1\nStatus: install ok installed",
                               b"Package: libzstd1\nStatus: hold ok installed")
    assert r.merged == ["libzstd1:amd64"] and r.conflicts == []
    # The container upgraded it itself to another version: a conflict, the container's record stays.
    o2 = o.replace(b"Version: 1.5.4+dfsg2-5", b"Version: 1.5.5")
    r = merged_twice("dpkg-status", a, b, o2)
    assert r.data == o2 and r.conflicts == [RecordConflict("libzstd1:amd64", "changed", "changed")]
    # The container removed it (config files kept) and the base upgraded it: the removal stands, no conflict.
    o3 = a.replace(b"Package: libzstd1\nStatus: install ok installed",
                   b"Package: libzstd1\nStatus: deinstall ok config-files")
    r = merged_twice("dpkg-status", a, b, o3)
    assert r.data == o3 and r.conflicts == [] and r.merged == []
    # debconf: the container answered a question whose owners the base changed; a field new on one
    # side goes after the base's fields.
    a = b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nOwners: tzdata\n\n"
    b = b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nOwners: tzdata, tzdata-legacy\n\n"
    o = b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nValue: Europe\nOwners: tzdata\nFlags: seen\n\n"
    r = merged_twice("debconf", a, b, o)
    assert r.data == b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nOwners: tzdata, tzdata-legacy\nValue: Europe\n" \
        b"Flags: seen\n\n"
    # debconf's Owners and Flags are sets: both sides' additions stay.
    o2 = b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nOwners: tzdata, mine\nFlags: seen\n\n"
    r = merged_twice("debconf", a, b, o2)
    assert r.data == b"Name: tzdata/Areas\nTemplate: tzdata/Areas\nOwners: tzdata, tzdata-legacy, mine\nFlags: seen\n\n"
    # Continuation lines belong to their field.
    a = b"Package: p\nArchitecture: all\nDescription: x\n one\n\n"
    b = b"Package: p\nArchitecture: all\nDescription: x\n two\n\n"
    o = b"Package: p\nArchitecture: all\nDescription: x\n one\nAuto-Installed: 1\n\n"
    r = merged_twice("apt-extended-states", a, b, o)
    assert r.data == b"Package: p\nArchitecture: all\nDescription: x\n two\nAuto-Installed: 1\n\n"


def test_records_a_container_put_first_stay_ahead():
    kind = "passwd"
    a, b = db(kind, "aa", "bb"), db(kind, "aa", "bb", "zz")
    r = merged_twice(kind, a, b, db(kind, "first", "aa", "bb"))
    assert r.data == db(kind, "first", "aa", "bb", "zz")


def test_the_containers_trailing_newline_convention_is_kept():
    a, b = b"root:x:0:\n", b"root:x:0:\n_ssh:x:101:\n"
    r = merged_twice("group", a, b, b"root:x:0:\nstaff:x:50:")
    assert r.data == b"root:x:0:\n_ssh:x:101:\nstaff:x:50:"
    r = merged_twice("debconf", b"Name: a\n\n", b"Name: a\n\nName: b\n\n", b"Name: a\n\nName: c\n")
    assert r.data == b"Name: a\n\nName: b\n\nName: c\n"


def test_line_sets_keep_comments_and_repeated_lines():
    a = b"# /etc/shells: valid login shells\n/bin/sh\n/bin/bash\n"
    b = a + b"/usr/bin/tmux\n"
    o = a.replace(b"/bin/bash\n", b"/bin/bash\n\n# mine\n/bin/zsh\n\n")
    r = merged_twice("lines", a, b, o)
    # The base's new line follows its neighbour; the container's block follows the base's additions.
    assert r.data == a + b"/usr/bin/tmux\n\n# mine\n/bin/zsh\n\n" and r.merged == ["/usr/bin/tmux"]


def test_real_dpkg_status_of_this_machine_merges():
    with open("/var/lib/dpkg/status", "rb") as f:
        status = f.read()
    paras = status.rstrip(b"\n").split(b"\n\n")
    assert len(paras) > 50
    gone, kept = paras[10], paras[:10] + paras[11:]
    base = b"\n\n".join(kept) + b"\n\n"  # the base removed one package
    local = b"Package: zzz-local\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n\n"
    r = merged_twice("dpkg-status", status, base, status + local)
    assert r.data == base + local and len(r.merged) == 1 and gone.startswith(b"Package: ")
    assert merge3("dpkg-status", status, base, status).same_as_base


@pytest.mark.parametrize("kind,data", [
    ("passwd", b"root:x:0:0:root:/root:/bin/bash\nbroken-line\n"),
    ("passwd", b"root:x:0:0:root:/root:/bin/bash\n\n"),
    ("passwd", b"root:x:0:0:root:/root:/bin/bash\nroot:x:1:0:root:/root:/bin/bash\n"),
    ("group", b"root:x:0\n"),
    ("shadow", b"root:*:1\n"),
    ("gshadow", b":x::\n"),
    ("subid", b"alice:100000\n"),
    ("dpkg-status", b"Package: a\nno colon here\n\n"),
    ("dpkg-status", b" continuation first\n\n"),
    ("dpkg-status", b"Status: install ok installed\n\n"),
    ("dpkg-status", b"Package: a\nArchitecture: amd64\n\nPackage: a\nArchitecture: amd64\n\n"),
    ("apt-extended-states", b"# comment: here\n\n"),
    ("debconf", b"Template: x\n\n"),
    ("dpkg-diversions", b"/usr/bin/a\n/usr/bin/a.real\n"),
    ("dpkg-diversions", b"/usr/bin/a\n\npkg\n"),
    ("dpkg-statoverride", b"root root 755\n"),
    ("dpkg-statoverride", b"root root 755 relative/path\n"),
    ("ucf-registry", b"pkg /etc/x\n"),
    ("ucf-hashfile", b"d41d8cd98f00b204e9800998ecf8427e /etc/x\n"),
])
def test_malformed_input_raises_damaged_naming_the_side(kind, data):
    good = db(kind, "aa") if kind != "passwd" else b"root:x:0:0:root:/root:/bin/bash\n"
    other = db(kind, "aa", "bb") if kind != "passwd" else good + b"bin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
    with pytest.raises(Damaged) as e:
        merge3(kind, good, other, data)
    assert "the container's" in str(e.value) and ("line" in str(e.value) or "repeats" in str(e.value))
    with pytest.raises(Damaged) as e:
        merge3(kind, good, data, other)
    assert "new base version's" in str(e.value)


def test_garbage_bytes_never_crash():
    rng = random.Random(7)
    for kind in KINDS:
        for _ in range(200):
            junk = bytes(rng.choice(b"ab:\n\t #/=\xff ") for _ in range(rng.randrange(40)))
            try:
                merge3(kind, db(kind, "aa"), db(kind, "aa", "bb"), junk)
            except Damaged:
                pass


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        merge3("nope", b"", b"x", b"y")


def test_id_collisions_name_the_id_and_both_names():
    passwd = (PASSWD + "systemd-timesync:x:997:997::/:/usr/sbin/nologin\n"
              "polkitd:x:997:996::/:/usr/sbin/nologin\n").encode()
    group = b"root:x:0:\nsystemd-timesync:x:997:\npolkitd:x:996:\nlocal:x:996:\n"
    assert merge.id_collisions(passwd, group) == ["uid 997: systemd-timesync, polkitd", "gid 996: polkitd, local"]
    assert merge.id_collisions(PASSWD.encode(), b"root:x:0:\n") == []
    with pytest.raises(Damaged):
        merge.id_collisions(b"root:x:zero:0::/:/bin/sh\n", b"")


def test_a_merge_that_shares_an_id_is_detected():
    a = PASSWD.encode()
    b = a + b"_chrony:x:101:104::/var/lib/chrony:/usr/sbin/nologin\n"
    o = a + b"webapp:x:101:101::/srv:/usr/sbin/nologin\n"
    r = merge3("passwd", a, b, o)
    assert merge.id_collisions(r.data, b"") == ["uid 101: _chrony, webapp"]


def test_id_ranges_are_disjoint_and_leave_sysusers_its_block():
    base, cont = merge.ID_RANGES["base"], merge.ID_RANGES["container"]
    spans = sorted([base.system, base.users, cont.system, cont.users, merge.SYSUSERS_RANGE])
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert lo1 <= hi1 < lo2 <= hi2
    assert spans[0][0] >= 100 and spans[-1][1] < 60000


@pytest.mark.parametrize("rewrite,role,expected", [
    (merge.login_defs_for, "container", LOGIN_DEFS_CONTAINER),
    (merge.adduser_conf_for, "base", ADDUSER_CONF_BASE),
])
def test_range_rewrites_touch_only_those_lines(rewrite, role, expected):
    data = (LOGIN_DEFS if rewrite is merge.login_defs_for else ADDUSER_CONF).encode()
    out = rewrite(role, data)
    assert rewrite(role, out) == out
    assert len(out.split(b"\n")) == len(data.split(b"\n"))
    assert [(x, y) for x, y in zip(data.split(b"\n"), out.split(b"\n")) if x != y] == expected


def test_login_defs_for_base_and_missing_settings():
    out = merge.login_defs_for("container", LOGIN_DEFS.encode())
    base = merge.login_defs_for("base", out)
    assert b"\nSYS_UID_MAX\t\t  499\n" in base and b"\nUID_MAX\t\t\t29999\n" in base
    # Settings the file lacks are appended; a missing final newline is repaired first.
    assert merge.login_defs_for("base", b"MAIL_DIR /var/mail") == (
        b"MAIL_DIR /var/mail\nSYS_UID_MIN\t\t100\nSYS_UID_MAX\t\t499\nUID_MIN\t\t1000\nUID_MAX\t\t29999\n"
        b"SYS_GID_MIN\t\t100\nSYS_GID_MAX\t\t499\nGID_MIN\t\t1000\nGID_MAX\t\t29999\n")
    with pytest.raises(ValueError):
        merge.login_defs_for("other", out)


@pytest.mark.parametrize("path", ["/etc/login.defs", "/etc/adduser.conf"])
def test_range_rewrites_on_this_machines_files(path):
    if not os.path.exists(path):
        pytest.fail(f"{path} is part of every Debian system")
    with open(path, "rb") as f:
        data = f.read()
    rewrite = merge.login_defs_for if path.endswith("login.defs") else merge.adduser_conf_for
    out = rewrite("container", data)
    assert rewrite("container", out) == out
    assert len(out.splitlines()) == len(data.splitlines())
    changed = [x for x, y in zip(data.splitlines(), out.splitlines()) if x != y]
    assert len(changed) == 8 and all(b"UID" in x or b"GID" in x for x in changed)


@pytest.mark.parametrize("path,expected", [
    ("etc/passwd", ("merge", "passwd")),
    ("var/lib/dpkg/status", ("merge", "dpkg-status")),
    ("var/cache/debconf/templates.dat", ("merge", "debconf")),
    ("var/lib/dpkg/triggers/File", ("merge", "lines")),
    ("var/lib/dpkg/triggers/ldconfig", ("merge", "lines")),
    ("var/lib/dpkg/triggers/Unincorp", ("keep", "")),
    ("var/lib/dpkg/triggers/sub/x", ("conflict", "")),
    ("etc/ld.so.cache", ("drop", "")),
    ("var/cache/apt/pkgcache.bin", ("drop", "")),
    ("var/cache/man/fr/index.db", ("drop", "")),
    ("var/cache/man", ("conflict", "")),
    ("var/log/apt/history.log", ("keep", "")),
    ("var/lib/dpkg/status-old", ("keep", "")),
    ("var/lib/dpkg/lock-frontend", ("keep", "")),
    ("var/cache/debconf/config.dat-old", ("keep", "")),
    ("var/lib/ucf/registry.0", ("keep", "")),
    ("etc/passwd-", ("keep", "")),
    ("etc/passwdx", ("conflict", "")),
    ("etc/ssh/sshd_config", ("conflict", "")),
    ("var/lib/dpkg/info/openssh-server.list", ("conflict", "")),
])
def test_classify(path, expected):
    assert tuple(merge.classify(path)) == expected


def test_reconcile_says_what_to_do_with_each_path():
    a, b = b"root:x:0:\n", b"root:x:0:\n_ssh:x:101:\n"
    d = merge.reconcile("etc/group", a, b, b"root:x:0:\nstaff:x:50:\n")
    assert d == merge.Decision("write", b"root:x:0:\n_ssh:x:101:\nstaff:x:50:\n", [], ["_ssh"], "")
    assert merge.reconcile("etc/group", a, b, b).action == "drop"
    assert merge.reconcile("etc/group", a, b, b"root:x:0:\n_ssh:x:101:\n\n").action == "keep"  # Damaged
    assert "line 3" in merge.reconcile("etc/group", a, b, b"root:x:0:\n_ssh:x:101:\n\n").file_conflict
    # The container removed the whole file; the base changed only what the container removed.
    d = merge.reconcile("etc/group", b"root:x:0:\n", b"root:x:1:\n", None)
    assert d.action == "keep" and d.conflicts == [RecordConflict("root", "changed", "removed")]
    # Records both changed: the container's kept, reported, nothing to write if that is all.
    d = merge.reconcile("etc/group", a, b"root:!:0:\n", b"root:*:0:\n")
    assert d.action == "keep" and d.conflicts == [RecordConflict("root", "changed", "changed")]
    assert merge.reconcile("etc/ssh/sshd_config", b"a", b"b", b"c") == \
        merge.Decision("keep", None, [], [], "changed in the container and in the base")
    assert merge.reconcile("var/log/syslog", b"a", b"b", b"c") == merge.Decision("keep", None, [], [], "")
    assert merge.reconcile("etc/ld.so.cache", b"a", b"b", b"c").action == "drop"


# --- hostile input: what a container's root can put in a database host root merges ---------------------------

ACCOUNTS = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
BASE_NEW = ACCOUNTS + b"sys2:x:102:102::/:/bin/false\n"


@pytest.mark.parametrize("bad", [
    b"x:x:" + b"9" * 5000 + b":0::/:/bin/sh\n",  # int() of it raises ValueError past 4300 digits
    b"x:x:4294967295:0::/:/bin/sh\n",  # (uid_t)-1
    b"x:x:0:99999999999::/:/bin/sh\n",
    b"x:x:-1:0::/:/bin/sh\n",
    b"x:x:\xd9\xa3:0::/:/bin/sh\n",  # a non-ASCII digit
    b"x:x::0::/:/bin/sh\n",
])
def test_an_id_out_of_the_kernels_range_makes_the_file_damaged(bad):
    with pytest.raises(Damaged, match="number from 0 to 4294967294"):
        merge3("passwd", ACCOUNTS, BASE_NEW, ACCOUNTS + bad)


def test_the_largest_id_still_merges():
    ours = ACCOUNTS + b"x:x:4294967294:4294967294::/:/bin/sh\n"
    assert merge3("passwd", ACCOUNTS, BASE_NEW, ours).data == BASE_NEW + b"x:x:4294967294:4294967294::/:/bin/sh\n"


def test_id_collisions_refuse_an_id_past_the_range():
    with pytest.raises(Damaged):
        merge.id_collisions(ACCOUNTS + b"x:x:" + b"9" * 5000 + b":0::/:/bin/sh\n", b"")


@pytest.mark.parametrize("kind, data", [
    ("passwd", ACCOUNTS + b"".join(b"u%d:x:%d:100::/:/bin/sh\n" % (i, 40000 + i) for i in range(merge.MAX_RECORDS))),
    ("lines", b"\n" * (merge.MAX_RECORDS + 1)),
    ("dpkg-status", b"".join(b"Package: p%d\nStatus: install ok installed\n\n" % i for i in range(merge.MAX_RECORDS + 1))),
])
def test_more_records_than_the_limit_make_the_file_damaged(kind, data):
    base = {"passwd": ACCOUNTS, "lines": b"x\n", "dpkg-status": b"Package: q\nStatus: install ok installed\n"}[kind]
    with pytest.raises(Damaged, match="more than"):
        merge3(kind, None, base, data)


def test_a_huge_key_is_shown_bounded_in_a_report():
    long = b"a" * 100_000
    with pytest.raises(Damaged) as e:
        merge3("passwd", ACCOUNTS, BASE_NEW, ACCOUNTS + long + b":x:1:1::/:/bin/sh\n" + long + b":x:2:2::/:/bin/sh\n")
    assert len(str(e.value)) < 500


def test_a_million_continuation_lines_merge_field_by_field():
    para = b"Package: p\nStatus: install ok installed\nVersion: 1\nDescription: d\n"
    ours = para.replace(b"Version: 1", b"Version: 1\nDepends: a") + b" x\n" * 1_000_000
    got = merge3("dpkg-status", para, para.replace(b"Version: 1", b"Version: 2"), ours)
    assert got.data is not None and b"Version: 2\n" in got.data and b"Depends: a\n" in got.data
    assert got.data.count(b"\n x") == 1_000_000 and not got.conflicts


def test_every_kind_has_a_size_limit():
    assert set(merge.SIZE_LIMITS) == set(merge.KINDS)
    assert all(0 < n <= 64 << 20 for n in merge.SIZE_LIMITS.values())


# --- the one bounded reader (reconcile.read_bounded) ------------------------------------------------------------


def test_read_bounded_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path):
    from pycor_hooks.reconcile import read_bounded

    os.mkfifo(tmp_path / "fifo")  # a FIFO opened for reading would block (or read nothing) as host root
    os.symlink("/etc/hostname", tmp_path / "link")
    os.mkdir(tmp_path / "dir")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("fifo", "dir"):
            with pytest.raises(Damaged, match="not a regular file"):
                read_bounded(fd, name)
        with pytest.raises(Damaged, match="not a regular file"):
            read_bounded(dev, "null")  # a device node: never opened (opening one can act: a tape, a watchdog)
        with pytest.raises(OSError):
            read_bounded(fd, "link")  # never followed
    finally:
        os.close(fd)
        os.close(dev)


def test_read_bounded_refuses_a_file_past_the_limit_before_reading(tmp_path):
    from pycor_hooks.reconcile import TooLarge, read_bounded

    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(1 << 40)  # a terabyte of nothing: reading it would take hours
    (tmp_path / "small").write_bytes(b"x" * 100)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(TooLarge):
            read_bounded(fd, "sparse", 8 << 20)
        with pytest.raises(TooLarge):
            read_bounded(fd, "small", 99)
        assert read_bounded(fd, "small", 100) == b"x" * 100
    finally:
        os.close(fd)


def test_read_bounded_reads_the_file_it_checked_when_it_is_swapped(tmp_path, monkeypatch):
    from pycor_hooks import linux, reconcile

    (tmp_path / "passwd").write_bytes(b"checked\n")
    os.mkfifo(tmp_path / "swap")
    real = linux.open_beneath

    def open_then_swap(dirfd: int, rel: str, flags: int = 0) -> int:
        fd = real(dirfd, rel, flags)
        os.rename(tmp_path / "swap", tmp_path / "passwd")  # the container swaps in a FIFO after the check
        return fd

    monkeypatch.setattr(linux, "open_beneath", open_then_swap)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert reconcile.read_bounded(fd, "passwd") == b"checked\n"
    finally:
        os.close(fd)
