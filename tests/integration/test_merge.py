"""Pure logic: three-way merge of account, dpkg, apt, debconf and ucf databases; id ranges."""

from __future__ import annotations

import hashlib
import subprocess

from pycor_hooks import merge
from pycor_hooks.merge import merge3


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
