"""Three-way merge of the shared databases a container and its base both change.

Pure logic on bytes: no filesystem, no subprocess. Imported only when a
container moves to another base version (start after `current` moved,
rollout, pin, rebase), never on a normal start.

API
- `classify(path) -> Action`: what reconciliation does with a path (no leading
  slash) that both the container and the base changed: `merge` (with a kind,
  see `merge3`), `drop` (a derived cache: remove the container's copy so the
  base's shows through), `keep` (per-container by nature: the container's
  copy stays, nothing reported) or `conflict` (the container's copy stays and
  the path is reported, as dpkg keeps an admin's modified conffile).
- `DATABASES` (path -> kind), `DATABASE_PATTERNS`, `DERIVED` (path -> "drop"),
  `REGENERATE` (derived path -> command to refresh it in the container, a
  hint), `IGNORED_PREFIXES`: the tables `classify` reads.
  A table key ending in "/" matches everything under it; a path segment may
  hold one "*" (any run of characters within that segment).
- `merge3(kind, ancestor, base, ours) -> MergeResult` (`KINDS` lists the kinds): record by record,
  ancestor = the old base version's file, base = the new base version's,
  ours = the container's copy; None = the file does not exist there.
  The base's additions, changes and removals apply; the container's own stay;
  a record both changed merges field by field (accounts, deb822 paragraphs;
  group member lists as sets), and when one field was changed both ways the
  container's record stays whole and is reported (`conflicts`), except
  where the container's side is its settled decision: a package it removed
  or purged (dpkg status), an auto-installed mark it dropped (apt) and the
  debconf questions a purge removed, which the base changed, stay removed
  without a conflict. `merged` lists the
  records the base's changes reached.
  `same_as_base`: the result is byte-equal to the base's file, so the
  container's copy can be dropped. Output is byte-stable and idempotent:
  merging the result again with the same base changes nothing. A file that
  cannot be parsed raises `errors.Damaged` (the caller then keeps the whole
  file as the container's and reports it as a conflict).
- `reconcile(path, ancestor, base, ours) -> Decision`: both of the above in one
  call: write the merged bytes, drop the container's copy, or keep it (with
  the reason when the whole file is a conflict).
- `record(kind, data, key)`: one record of a database by the key a conflict names (is it still
  in conflict?).
- `id_collisions(passwd, group) -> list[str]`: ids that several names share.
- `ID_RANGES`, `login_defs_for(role, data)`, `adduser_conf_for(role, data)`:
  disjoint uid/gid allocation ranges for base updates ("base") and containers
  ("container"), written into /etc/login.defs and /etc/adduser.conf (pure
  transforms of the file's bytes; other lines untouched). `SYSUSERS_RANGE`:
  the block systemd-sysusers allocates from on both sides whatever those say.

Cost: a 850 KB dpkg status (930 packages) merges in about 27 ms, a 1 MB
debconf templates.dat in 14 ms, /etc/passwd in 0.1 ms.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

from .errors import Damaged

# --- limits: what a container's copy of a database may hold before it is not merged -----------------

# A container's root writes these files, and host root parses them at the container's next move: each
# is bounded in bytes (checked on the open file before a byte is read: reconcile.read_bounded), in
# records, and in the numbers it holds. A file past a limit is not merged: it stays the container's
# and is reported as a conflict (Damaged). Sizes are far above real systems (a Debian desktop's
# dpkg status: 3 MiB, 4,000 packages; its debconf templates.dat: 2 MiB) and bound a merge to a few
# seconds on this machine.
_MiB = 1 << 20
SIZE_LIMITS: dict[str, int] = {
    "passwd": 8 * _MiB, "group": 8 * _MiB, "shadow": 8 * _MiB, "gshadow": 8 * _MiB, "subid": 1 * _MiB,
    "lines": 1 * _MiB, "dpkg-status": 32 * _MiB, "apt-extended-states": 8 * _MiB, "debconf": 32 * _MiB,
    "dpkg-diversions": 1 * _MiB, "dpkg-statoverride": 1 * _MiB, "ucf-registry": 1 * _MiB, "ucf-hashfile": 1 * _MiB,
}
MAX_RECORDS = 100_000  # accounts, packages, debconf questions, lines: per file
MAX_ID = 2**32 - 2  # the kernel's largest uid and gid ((uid_t)-1 means "no id")

# --- what reconciliation does with a path -------------------------------------------------------------

DATABASES: dict[str, str] = {
    # Account databases: one "name:..." line per account, keyed by name. A frozen copy hides the
    # base's new system users (a service that fails with status=217/USER) and groups.
    "etc/passwd": "passwd",
    "etc/group": "group",
    "etc/shadow": "shadow",
    "etc/gshadow": "gshadow",
    # Subordinate id ranges ("name:start:count"), written by useradd next to passwd: same hazard.
    "etc/subuid": "subid",
    "etc/subgid": "subid",
    # Login shells, a set of lines: a base package adding a shell (add-shell in its postinst) must
    # reach containers that added their own.
    "etc/shells": "lines",
    # dpkg's database: a frozen status hides the base's new packages from dpkg and apt.
    "var/lib/dpkg/status": "dpkg-status",
    "var/lib/dpkg/diversions": "dpkg-diversions",
    "var/lib/dpkg/statoverride": "dpkg-statoverride",
    # File-trigger interests ("path package" lines): a frozen copy stops the base's new packages'
    # triggers from firing after a local install (no ldconfig, no systemd catalog update).
    "var/lib/dpkg/triggers/File": "lines",
    # apt's auto-installed marks: frozen, `apt autoremove` would treat the base's new
    # dependencies as manually installed (never removed) or forget the container's marks.
    "var/lib/apt/extended_states": "apt-extended-states",
    # debconf's database: without the base's new questions, dpkg-reconfigure of a base package
    # fails in the container and the next upgrade asks again.
    "var/cache/debconf/config.dat": "debconf",
    "var/cache/debconf/templates.dat": "debconf",
    "var/cache/debconf/passwords.dat": "debconf",
    # ucf's registry and hashes of the conffiles it manages, keyed by path: frozen, ucf treats the
    # base's new ucf-managed files as unknown and asks, or forgets the container's.
    "var/lib/ucf/registry": "ucf-registry",
    "var/lib/ucf/hashfile": "ucf-hashfile",
}

# Explicit trigger interests: one file per trigger name, one interested package a line.
DATABASE_PATTERNS: dict[str, str] = {"var/lib/dpkg/triggers/*": "lines"}

DERIVED: dict[str, str] = {
    # ldconfig's output. Dropped, the container sees the base's cache; a library the container
    # installed in the multiarch directories is still found: with an empty /etc/ld.so.cache
    # bind-mounted over the real one (Debian 12), ld.so falls back to its system search path
    # (/lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, ...) and `curl --version` still loads
    # libcurl. Libraries in other ld.so.conf.d directories need `ldconfig` (REGENERATE).
    "etc/ld.so.cache": "drop",
    # ldconfig's stat-keyed memory of which files it already read: stale, it can skip a changed
    # library. ldconfig rebuilds it.
    "var/cache/ldconfig/aux-cache": "drop",
    # apt's binary caches: rebuilt by apt from status and the lists whenever missing.
    "var/cache/apt/pkgcache.bin": "drop",
    "var/cache/apt/srcpkgcache.bin": "drop",
    # man-db's index of man pages (mandb rebuilds it daily and from its dpkg trigger).
    "var/cache/man/": "drop",
    # journalctl's message catalog, compiled from /usr/lib/systemd/catalog by a dpkg file trigger.
    "var/lib/systemd/catalog/database": "drop",
}

# What refreshes a dropped derived file in the container, for the container's own additions
# (a hint for the caller; dropping alone is already safe).
REGENERATE: dict[str, list[str]] = {
    "etc/ld.so.cache": ["ldconfig"],
    "var/cache/ldconfig/aux-cache": ["ldconfig"],
    "var/cache/man/": ["mandb", "--quiet"],
    "var/lib/systemd/catalog/database": ["journalctl", "--update-catalog"],
}

IGNORED_PREFIXES: tuple[str, ...] = (
    # State and data a container produces for itself: never the base's business.
    "var/log/", "var/tmp/", "tmp/", "run/", "var/spool/", "var/mail/", "var/lib/dhcp/",
    "var/lib/apt/lists/", "var/lib/apt/periodic/", "var/cache/apt/archives/",
    "var/lib/systemd/timers/", "var/lib/systemd/timesync/", "var/lib/systemd/coredump/",
    "var/lib/logrotate/", "var/backups/",
    # dpkg's journal of an interrupted run and its locks: the container's own dpkg state.
    "var/lib/dpkg/updates/", "var/lib/dpkg/lock*", "var/lib/dpkg/triggers/Lock",
    "var/lib/dpkg/triggers/Unincorp",
    # Identity of this container.
    "etc/hostname", "etc/hosts", "etc/machine-id", "var/lib/dbus/machine-id", "etc/resolv.conf",
    "etc/mtab", "etc/adjtime", "etc/.pwd.lock", "var/lib/systemd/random-seed",
    # The backups the tools write next to a database (passwd-, status-old, config.dat-old,
    # registry.0): the container's own last good state, worth more to it than the base's.
    "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-",
    "var/lib/dpkg/*-old", "var/cache/debconf/*-old", "var/lib/ucf/registry.*",
    "var/lib/ucf/hashfile.*",
    # dselect's list of available packages: the container's own view of its sources.
    "var/lib/dpkg/available",
)


class Action(NamedTuple):
    action: str  # "merge" | "drop" | "keep" | "conflict"
    kind: str = ""  # the merge3 kind for "merge"


def _matches(pattern: str, path: str) -> bool:
    """A table key against a path: segment by segment, "*" within a segment; a key ending in "/"
    matches what lies under it."""
    under = pattern.endswith("/")
    psegs, segs = pattern.rstrip("/").split("/"), path.split("/")
    if len(segs) < len(psegs) + under or (not under and len(segs) != len(psegs)):
        return False
    for p, s in zip(psegs, segs):
        head, star, tail = p.partition("*")
        if not star:
            if p != s:
                return False
        elif len(s) < len(head) + len(tail) or not s.startswith(head) or not s.endswith(tail):
            return False
    return True


def classify(path: str) -> Action:
    """What reconciliation does with `path` (relative, no leading slash) when both sides changed it."""
    kind = DATABASES.get(path)
    if kind:
        return Action("merge", kind)
    for pattern, action in DERIVED.items():
        if _matches(pattern, path):
            return Action(action)
    for pattern in IGNORED_PREFIXES:
        if _matches(pattern, path):
            return Action("keep")
    for pattern, kind in DATABASE_PATTERNS.items():
        if _matches(pattern, path):
            return Action("merge", kind)
    return Action("conflict")


# --- records ------------------------------------------------------------------------------------------

class RecordConflict(NamedTuple):
    key: str
    base: str  # what the base did to the record: "added" | "changed" | "removed"
    ours: str  # what the container did


class MergeResult(NamedTuple):
    data: bytes | None  # None: the file should not exist
    conflicts: list[RecordConflict]
    merged: list[str]  # records the base's changes reached (taken, or merged field by field)
    same_as_base: bool


_Order = tuple[bytes, int, bytes]


class _Record(NamedTuple):
    key: bytes
    data: bytes  # the record's exact bytes, without the separator that follows it
    order: _Order = (b"", 0, b"")  # sort key, for kinds kept sorted


class _File(NamedTuple):
    records: list[_Record]
    trailer: bytes  # what follows the last record (b"\n", b"" or b"\n\n")


class _Format(NamedTuple):
    parse: Callable[[bytes, str], _File]
    sep: bytes
    sorted: bool  # new records go in sort order (dpkg status, debconf), else after their neighbour
    # Merges one record both sides changed (ancestor, base, ours), or None when they truly clash.
    fields: Callable[[bytes, bytes, bytes], bytes | None] | None = None
    # Whether the container's side of a record both changed is its settled decision, kept without a
    # conflict (ancestor, base, ours; ours None: the container removed the record).
    settled: Callable[[bytes | None, bytes | None, bytes | None], bool] | None = None


def _damaged(what: str, line: int, expected: str) -> Damaged:
    return Damaged(f"{what}: line {line} is not {expected}",
                   "the whole file is kept as the container's and reported as a conflict; fix the file, then rebase")


def _split_lines(data: bytes, what: str) -> tuple[list[bytes], bytes]:
    if not data:
        return [], b"\n"
    _count(data.count(b"\n"), what)  # before splitting: a million empty lines cost no list
    if data.endswith(b"\n"):
        return data[:-1].split(b"\n"), b"\n"
    return data.split(b"\n"), b""


def _count(n: int, what: str) -> None:
    if n > MAX_RECORDS:
        raise Damaged(f"{what}: more than {MAX_RECORDS} records",
                      "the whole file is kept as the container's and reported as a conflict")


def _unique(records: list[_Record], what: str) -> None:
    seen: set[bytes] = set()
    for n, r in enumerate(records, 1):
        if r.key in seen:
            raise Damaged(f"{what}: record {n} repeats {_show(r.key)!r}",
                          "the whole file is kept as the container's and reported as a conflict; "
                          "remove the duplicate, then rebase")
        seen.add(r.key)


def _keyed_lines(key_of: Callable[[bytes], bytes | None], expected: str) -> Callable[[bytes, str], _File]:
    def parse(data: bytes, what: str) -> _File:
        lines, trailer = _split_lines(data, what)
        records = []
        for n, line in enumerate(lines, 1):
            key = key_of(line)
            if not key:
                raise _damaged(what, n, expected)
            records.append(_Record(key, line))
        _unique(records, what)
        return _File(records, trailer)
    return parse


def is_id(field: bytes) -> bool:
    """A uid or gid as the kernel takes it: decimal, 0 to MAX_ID (a 5,000-digit number is not parsed)."""
    return 0 < len(field) <= 10 and field.isdigit() and int(field) <= MAX_ID


def _colon(fields: int, name: str, ids: tuple[int, ...] = ()) -> Callable[[bytes, str], _File]:
    # ids: the fields that hold a uid or gid (checked in range), or a subordinate id range's start and count
    def key_of(line: bytes) -> bytes | None:
        parts = line.split(b":")
        if len(parts) != fields or not all(is_id(parts[i]) for i in ids):
            return None
        return parts[0]
    numbers = f", {' and '.join(('field ' + str(i + 1)) for i in ids)} a number from 0 to {MAX_ID}" if ids else ""
    return _keyed_lines(key_of, f"a {name} entry ({fields} fields separated by ':'{numbers})")


def _line_set(data: bytes, what: str) -> _File:
    # The line is its own key; a repeated line (blank, comment) is told apart by its occurrence.
    lines, trailer = _split_lines(data, what)
    seen: dict[bytes, int] = {}
    records = []
    for line in lines:
        n = seen[line] = seen.get(line, -1) + 1
        records.append(_Record(line + b"\0" + str(n).encode() if n else line, line))
    return _File(records, trailer)


def _statoverride_key(line: bytes) -> bytes | None:
    parts = line.split(b" ", 3)  # "user group mode path": the path may hold spaces
    return parts[3] if len(parts) == 4 and parts[3].startswith(b"/") else None


def _after(sep: bytes) -> Callable[[bytes], bytes | None]:
    def key_of(line: bytes) -> bytes | None:
        head, found, path = line.partition(sep)
        return path if found and head and path.startswith(b"/") else None
    return key_of


def _diversions(data: bytes, what: str) -> _File:
    # Groups of three lines: the diverted path, where it went, the diverting package (":" = local).
    lines, trailer = _split_lines(data, what)
    if len(lines) % 3 or not all(lines):
        bad = next((n for n, line in enumerate(lines) if not line), len(lines) - len(lines) % 3)
        raise _damaged(what, bad + 1, "part of a diversion (3 non-empty lines)")
    records = [_Record(lines[i], b"\n".join(lines[i:i + 3])) for i in range(0, len(lines), 3)]
    _unique(records, what)
    return _File(records, trailer)


def _paragraphs(data: bytes) -> list[tuple[int, bytes]]:
    """deb822 paragraphs (separated by empty lines) as (offset in data, text)."""
    out = []
    pos = 0
    for chunk in data.split(b"\n\n"):
        text = chunk.strip(b"\n")  # more than one empty line between paragraphs
        if text:
            out.append((pos + len(chunk) - len(chunk.lstrip(b"\n")), text))
        pos += len(chunk) + 2
    return out


def _fields(data: bytes, offset: int, text: bytes, wanted: dict[bytes, bytes], what: str) -> dict[bytes, bytes]:
    """The `wanted` fields of one paragraph (written as dpkg, apt and debconf spell them), keyed by
    their lower-case names; every line checked to be a field or a continuation."""
    got: dict[bytes, bytes] = {}
    for line in text.split(b"\n"):
        c = line[0]  # no empty line inside a paragraph
        if c == 32 or c == 9:  # a continuation line
            continue
        colon = line.find(b":")
        if colon <= 0 or c == 35:  # "#"
            raise _damaged(what, data.count(b"\n", 0, data.find(line, offset)) + 1, "a 'Field: value' line")
        key = wanted.get(line[:colon])
        if key:
            got[key] = line[colon + 1:].strip()
    if text.startswith((b" ", b"\t")):
        raise _damaged(what, data.count(b"\n", 0, offset) + 1, "a field (a paragraph starts with a continuation line)")
    return got


def _paragraph_trailer(data: bytes) -> bytes:
    tail = data[len(data.rstrip(b"\n")):]
    return tail[:2]


def _deb822(key_fields: tuple[bytes, ...], dpkg_order: bool) -> Callable[[bytes, str], _File]:
    wanted = {f: f.lower() for f in key_fields}
    keys = [f.lower() for f in key_fields]
    first = keys[0]

    def parse(data: bytes, what: str) -> _File:
        parsed = []
        _count(data.count(b"\n\n"), what)
        for offset, text in _paragraphs(data):
            f = _fields(data, offset, text, wanted, what)
            if not f.get(first):
                raise _damaged(what, data.count(b"\n", 0, offset) + 1,
                               f"the start of a paragraph with a {key_fields[0].decode()} field")
            parsed.append((f, text))
        native = _native_arch([f for f, _ in parsed]) if dpkg_order else b""
        records = []
        for f, body in parsed:
            key = b":".join(f.get(k, b"") for k in keys)
            order = _dpkg_order(f, native) if dpkg_order else (key, 0, b"")
            records.append(_Record(key, body, order))
        _unique(records, what)
        return _File(records, _paragraph_trailer(data) if records else b"\n\n")
    return parse


def _native_arch(fields: list[dict[bytes, bytes]]) -> bytes:
    """dpkg's native architecture: dpkg's own, else the commonest one that is not "all"."""
    counts: dict[bytes, int] = {}
    for f in fields:
        arch = f.get(b"architecture", b"")
        if f[b"package"] == b"dpkg" and arch:
            return arch
        if arch and arch != b"all":
            counts[arch] = counts.get(arch, 0) + 1
    return max(sorted(counts), key=counts.__getitem__) if counts else b""


def _dpkg_order(f: dict[bytes, bytes], native: bytes) -> _Order:
    # As dpkg writes its status: by name, then the native (or "all") instance, then the foreign
    # ones by architecture name. Checked against dpkg 1.21 itself (`dpkg --admindir=DIR
    # --set-selections` rewrites a status file): libfoo:i386, :armhf, :amd64 in any input order
    # come out amd64, armhf, i386 on an amd64 system.
    arch = f.get(b"architecture", b"")
    native_or_all = arch in (b"", b"all", native)
    return (f[b"package"], 0, b"") if native_or_all else (f[b"package"], 1, arch)


def _pick(a: bytes | None, b: bytes | None, o: bytes | None) -> tuple[bool, bytes | None]:
    """The three-way rule for one field: (True, whichever side changed it), (False, None) if both
    changed it differently."""
    if a == o or b == o:
        return True, b
    return a == b, o if a == b else None


def _members(a: bytes, b: bytes, o: bytes, sep: bytes = b",") -> bytes:
    """A comma-separated list both sides changed, merged as a set: the base's, less what the
    container removed, plus what the container added."""
    def items(v: bytes) -> list[bytes]:
        return [m for m in (x.strip() for x in v.split(b",")) if m]
    am, om, bl = set(items(a)), set(items(o)), items(b)
    kept = [m for m in bl if m in om or m not in am]
    return sep.join(kept + [m for m in items(o) if m not in am and m not in bl])


def _field_merge(member_fields: tuple[int, ...] = ()) -> Callable[[bytes, bytes, bytes], bytes | None]:
    # An account both sides changed merges field by field: the base moves a system user's home,
    # the container sets its password; a group's member list merges as a set (the base adds
    # _chrony to a group, the container adds alice).
    def merge_fields(a: bytes, b: bytes, o: bytes) -> bytes | None:
        out = []
        for i, (x, y, z) in enumerate(zip(a.split(b":"), b.split(b":"), o.split(b":"))):
            _, v = _pick(x, y, z)  # every field exists on each side: None is a clash
            if v is not None:
                out.append(v)
            elif i in member_fields:
                out.append(_members(x, y, z))
            else:
                return None
        return b":".join(out)
    return merge_fields


def _deb822_fields(text: bytes) -> dict[bytes, bytes] | None:
    """A paragraph's fields, name -> the field's lines (continuations included), in order."""
    fields: dict[bytes, list[bytes]] = {}
    name = b""
    for line in text.split(b"\n"):
        if line.startswith((b" ", b"\t")):
            fields[name].append(line)  # joined once below: a million continuation lines stay linear
            continue
        name = line.partition(b":")[0]
        if name in fields:
            return None  # a field twice: no field-wise merge
        fields[name] = [line]
    return {k: b"\n".join(v) for k, v in fields.items()}


def _deb822_merge(set_fields: tuple[bytes, ...] = ()) -> Callable[[bytes, bytes, bytes], bytes | None]:
    # A paragraph both sides changed merges field by field: the base upgrades a package (Version,
    # Depends...) that the container put on hold (Status), the base adds an owner to a debconf
    # question the container answered (Value). `set_fields` hold comma-separated sets (debconf's
    # Owners, Flags). The base's field order; the container's new fields last.
    def merge_paragraph(a: bytes, b: bytes, o: bytes) -> bytes | None:
        af, bf, of = _deb822_fields(a), _deb822_fields(b), _deb822_fields(o)
        if af is None or bf is None or of is None:
            return None
        out = []
        for name in (*bf, *(n for n in of if n not in bf), *(n for n in af if n not in bf and n not in of)):
            x, y, z = af.get(name, name + b":"), bf.get(name), of.get(name)
            ok, v = _pick(af.get(name), y, z)
            if not ok:
                if name not in set_fields or y is None or z is None:
                    return None
                xv, yv, zv = (f.partition(b":")[2] for f in (x, y, z))
                v = name + b": " + _members(xv, yv, zv, b", ")
            if v is not None:
                out.append(v)
        return b"\n".join(out)
    return merge_paragraph


_paragraph_merge = _deb822_merge()


def _dpkg_state(paragraph: bytes) -> bytes:
    """The package's state: the last word of its Status field ("installed", "config-files"...)."""
    for line in paragraph.split(b"\n"):
        if line.startswith(b"Status:"):
            words = line[7:].split()
            return words[-1] if words else b""
    return b""


def _package_merge(a: bytes, b: bytes, o: bytes) -> bytes | None:
    # Only while the package stays in the same state on both sides (installed, config-files...):
    # a package the container removed and the base upgraded is a conflict to see, not a record
    # to blend (the base's new files show up in the container, unowned by dpkg).
    if not _dpkg_state(a) == _dpkg_state(b) == _dpkg_state(o):
        return None
    return _paragraph_merge(a, b, o)


_GONE = (b"config-files", b"not-installed")


def _package_removed(a: bytes | None, b: bytes | None, o: bytes | None) -> bool:
    # A package the container removed or purged, which the base upgraded: the removal is the
    # container's decision and stays (what its removal breaks, reconciliation's package check says).
    return a is not None and b is not None and _dpkg_state(a) not in _GONE and _dpkg_state(b) not in _GONE \
        and (o is None or _dpkg_state(o) in _GONE)


def _entry_removed(a: bytes | None, b: bytes | None, o: bytes | None) -> bool:
    # apt drops a package's auto-installed mark when it is purged or marked manual here; a purge drops the
    # package's debconf questions (db_purge).
    return o is None and a is not None and b is not None


_FORMATS: dict[str, _Format] = {
    "passwd": _Format(_colon(7, "passwd", (2, 3)), b"\n", False, _field_merge()),
    "group": _Format(_colon(4, "group", (2,)), b"\n", False, _field_merge((3,))),
    "shadow": _Format(_colon(9, "shadow"), b"\n", False, _field_merge()),
    "gshadow": _Format(_colon(4, "gshadow"), b"\n", False, _field_merge((2, 3))),
    "subid": _Format(_colon(3, "subordinate id", (1, 2)), b"\n", False),
    "lines": _Format(_line_set, b"\n", False),
    "dpkg-status": _Format(_deb822((b"Package", b"Architecture"), True), b"\n\n", True, _package_merge, _package_removed),
    # apt appends new entries at the end and keeps the file's order: no sort.
    "apt-extended-states": _Format(_deb822((b"Package", b"Architecture"), False), b"\n\n", False,
                                   _paragraph_merge, _entry_removed),
    # debconf's File driver writes its items sorted by name.
    "debconf": _Format(_deb822((b"Name",), False), b"\n\n", True, _deb822_merge((b"Owners", b"Flags")), _entry_removed),
    "dpkg-diversions": _Format(_diversions, b"\n", False),
    "dpkg-statoverride": _Format(_keyed_lines(_statoverride_key, "'user group mode /path'"), b"\n", False),
    "ucf-registry": _Format(_keyed_lines(_after(b" \t "), "'package \\t /path'"), b"\n", False),
    "ucf-hashfile": _Format(_keyed_lines(_after(b"  "), "'md5sum  /path'"), b"\n", False),
}

KINDS: tuple[str, ...] = tuple(_FORMATS)


def _show(key: bytes) -> str:
    line, _, n = key.partition(b"\0")
    text = line[:80].decode("utf-8", "backslashreplace") + ("..." if len(line) > 80 else "")  # a container's key: bounded
    return f"{text} (#{int(n) + 1})" if n else text


def record(kind: str, data: bytes, key: str) -> bytes | None:
    """The record a finding names (a key as `RecordConflict.key` shows it) in a database's bytes, or None."""
    fmt = _FORMATS[kind]
    for r in fmt.parse(data, kind).records:
        if _show(r.key) == key:
            return r.data
    return None


def _did(old: bytes | None, new: bytes | None) -> str:
    return "added" if old is None else "removed" if new is None else "changed"


def _fields_merged(fmt: _Format, a: bytes | None, b: bytes | None, o: bytes | None) -> bytes | None:
    if fmt.fields is None or a is None or b is None or o is None:
        return None
    return fmt.fields(a, b, o)


def _parse(fmt: _Format, data: bytes | None, what: str) -> _File | None:
    return None if data is None else fmt.parse(data, what)


def merge3(kind: str, ancestor: bytes | None, base: bytes | None, ours: bytes | None) -> MergeResult:
    """Merge the container's copy of a database (`ours`) with the base's move from `ancestor` to `base`."""
    fmt = _FORMATS.get(kind)
    if fmt is None:
        raise ValueError(f"unknown merge kind {kind!r}")
    if ours == base:
        return MergeResult(base, [], [], True)
    if ancestor == base:  # the base did not touch it: nothing to bring in
        return MergeResult(ours, [], [], False)
    name = next((p for p, k in DATABASES.items() if k == kind), kind)
    a = _parse(fmt, ancestor, f"the old base version's {name}")
    b = _parse(fmt, base, f"the new base version's {name}")
    o = _parse(fmt, ours, f"the container's {name}")
    amap = {r.key: r for r in a.records} if a else {}
    bmap = {r.key: r for r in b.records} if b else {}
    omap = {r.key: r for r in o.records} if o else {}

    result: dict[bytes, _Record] = {}
    conflicts: list[RecordConflict] = []
    merged: list[str] = []
    for key in (*bmap, *(k for k in omap if k not in bmap), *(k for k in amap if k not in bmap and k not in omap)):
        ar, br, orr = amap.get(key), bmap.get(key), omap.get(key)
        av, bv, ov = (r.data if r else None for r in (ar, br, orr))
        if bv == ov:
            keep = br
        elif av == ov:  # only the base changed it
            keep = br
            merged.append(_show(key))
        elif av == bv:  # only the container changed it
            keep = orr
        elif (both := _fields_merged(fmt, av, bv, ov)) is not None and orr:
            keep = orr._replace(data=both)
            merged.append(_show(key))
        elif fmt.settled is not None and fmt.settled(av, bv, ov):
            keep = orr  # the container's decision (None: its removal) stands
        else:  # a true clash: the container's record stays
            keep = orr
            conflicts.append(RecordConflict(_show(key), _did(av, bv), _did(av, ov)))
        if keep is not None:
            result[key] = keep

    order = _order(fmt, b, o, result, set(bmap) - set(amap))
    records = [result[k] for k in order]
    if not records and (ours is None or base is None):
        data: bytes | None = None
    else:
        trailer = next((f.trailer for f in (o, b, a) if f and f.records), fmt.sep)
        data = fmt.sep.join(r.data for r in records) + trailer if records else b""
    return MergeResult(data, conflicts, merged, data == base)


def _order(fmt: _Format, b: _File | None, o: _File | None, result: dict[bytes, _Record],
           base_added: set[bytes]) -> list[bytes]:
    """The base's order, with the container's own records put where the container had them."""
    skeleton = [r.key for r in b.records if r.key in result] if b else []
    placed = set(skeleton)
    own = [r.key for r in o.records if r.key in result and r.key not in placed] if o else []
    if not own:
        return skeleton
    if fmt.sorted:
        # Each new record before the first record of the base that sorts after it.
        keys = [result[k].order for k in skeleton]
        slots: dict[int, list[bytes]] = {}
        for k in own:
            slots.setdefault(bisect_right(keys, result[k].order), []).append(k)
        out: list[bytes] = []
        for i, k in enumerate(skeleton):
            out.extend(sorted(slots.get(i, ()), key=lambda x: result[x].order))
            out.append(k)
        out.extend(sorted(slots.get(len(skeleton), ()), key=lambda x: result[x].order))
        return out
    # After the record that preceded it in the container's file, past the base's own additions
    # that follow that record (so a re-merge finds every record where it left it).
    after: dict[bytes | None, list[bytes]] = {}
    anchor: bytes | None = None
    for r in o.records if o else ():
        if r.key in placed:
            anchor = r.key
        elif r.key in result:
            after.setdefault(anchor, []).append(r.key)
    out = []
    pending = after.get(None, [])
    for k in skeleton:
        if pending and k not in base_added:
            out.extend(pending)
            pending = []
        out.append(k)
        pending = pending + after.get(k, [])
    out.extend(pending)
    return out


class Decision(NamedTuple):
    action: str  # "write" `data` into the container's layer | "drop" the container's copy (the
    #              base's shows through) | "keep" the container's copy (or its whiteout) as it is
    data: bytes | None
    conflicts: list[RecordConflict]  # records both sides changed (the container's kept)
    merged: list[str]  # records the base's changes reached
    file_conflict: str  # why the whole file is reported as a conflict, or ""


def reconcile(path: str, ancestor: bytes | None, base: bytes | None, ours: bytes | None) -> Decision:
    """What to do with a path both sides changed, given its three versions' bytes (None: absent).

    The one call a rebase needs per path: `classify` and `merge3` together, an unparseable
    database turned into a whole-file conflict.
    """
    act = classify(path)
    if act.action == "drop":
        return Decision("drop", None, [], [], "")
    if act.action != "merge":
        why = "" if act.action == "keep" else "changed in the container and in the base"
        return Decision("keep", None, [], [], why)
    try:
        r = merge3(act.kind, ancestor, base, ours)
    except Damaged as e:
        return Decision("keep", None, [], [], str(e))
    if r.same_as_base:
        return Decision("drop", None, r.conflicts, r.merged, "")
    if r.data is None or r.data == ours:  # None here: the container deleted it, and that stays
        return Decision("keep", None, r.conflicts, r.merged, "")
    return Decision("write", r.data, r.conflicts, r.merged, "")


# --- ids ----------------------------------------------------------------------------------------------

def _ids(data: bytes, kind: str) -> dict[int, list[str]]:
    by_id: dict[int, list[str]] = {}
    for r in _FORMATS[kind].parse(data, f"/etc/{kind}").records:
        field = r.data.split(b":")[2]
        if not is_id(field):  # checked when parsed; kept for a caller's own parse
            raise Damaged(f"/etc/{kind}: {_show(r.key)!r} has the id {_show(field)!r}",
                          "an id is a decimal number; fix the entry, then rebase")
        by_id.setdefault(int(field), []).append(_show(r.key))
    return by_id


def id_collisions(passwd: bytes, group: bytes) -> list[str]:
    """Every uid and gid that more than one name holds, e.g. "uid 999: polkitd, systemd-timesync".

    Files the base owns under such an id would belong to the other name. Compare with the same call
    on the base's own files to keep only the collisions a merge brought in.
    """
    out = []
    for what, data, kind in (("uid", passwd, "passwd"), ("gid", group, "group")):
        for n, names in sorted(_ids(data, kind).items()):
            if len(names) > 1:
                out.append(f"{what} {n}: {', '.join(names)}")
    return out


class IdRanges(NamedTuple):
    system: tuple[int, int]  # first, last system uid and gid
    users: tuple[int, int]  # first, last uid and gid of people's accounts


# Debian's defaults give both sides the same ranges (login.defs: system 100-999, users 1000-60000;
# adduser.conf: system 100-999, users 1000-59999), so a base update and a container both hand out
# 100, 101... (adduser counts up from FIRST_SYSTEM_UID, useradd -r down from SYS_UID_MAX).
# pycor splits them. systemd-sysusers (bookworm, 252) ignores login.defs: with SYS_UID_MAX 499 in
# a root's login.defs, `systemd-sysusers --root` still created uid 999, then 998. So 900-999 is
# left to sysusers on both sides (its collisions are caught by id_collisions), and users stay
# under 60000 (60000-64999 Debian's reserved block, 61184-65519 systemd's DynamicUser=).
ID_RANGES: dict[str, IdRanges] = {
    "base": IdRanges((100, 499), (1000, 29999)),
    "container": IdRanges((500, 899), (30000, 59999)),
}
SYSUSERS_RANGE: tuple[int, int] = (900, 999)


def _ranges(role: str) -> IdRanges:
    try:
        return ID_RANGES[role]
    except KeyError:
        raise ValueError(f"role must be one of {', '.join(ID_RANGES)}, not {role!r}") from None


def _set_values(data: bytes, values: dict[str, int], separators: bytes, assign: bytes) -> bytes:
    """Set `values` in a "KEY<separators>VALUE" file, touching only those lines.

    Every active line of a key is rewritten in place; a key with none takes over its first
    commented-out line ("#KEY 100" -> "KEY 500"); a key with neither is appended.
    """
    lines = data.splitlines(keepends=True)
    keys = [k.encode() for k in values]

    def key_of(text: bytes) -> bytes | None:
        for k in keys:
            if text.startswith(k) and len(text) > len(k) and text[len(k)] in separators:
                return k
        return None

    active = {key_of(line.lstrip(b" \t")) for line in lines} - {None}
    uncommented: set[bytes] = set()
    out = []
    for line in lines:
        body = line.rstrip(b"\r\n")
        end = line[len(body):]
        indent = body[:len(body) - len(body.lstrip(b" \t"))]
        text = body[len(indent):]
        k = key_of(text)
        if k is None and text.startswith(b"#"):
            k = key_of(text[1:])
            if k is None or k in active or k in uncommented:
                out.append(line)
                continue
            uncommented.add(k)
            text = text[1:]
        if k is None:
            out.append(line)
            continue
        i = len(k)
        while i < len(text) and text[i] in separators:
            i += 1
        j = i
        while j < len(text) and text[j] not in b" \t":
            j += 1
        out.append(indent + text[:i] + str(values[k.decode()]).encode() + text[j:] + end)
    missing = [k for k in keys if k not in active and k not in uncommented]
    if missing and out and not out[-1].endswith(b"\n"):
        out[-1] += b"\n"
    out.extend(k + assign + str(values[k.decode()]).encode() + b"\n" for k in missing)
    return b"".join(out)


def _with_ranges(role: str, data: bytes, names: tuple[str, str, str, str], separators: bytes,
                 assign: bytes) -> bytes:
    # names: the settings for the first and last system id, then the first and last user id,
    # with "{}" standing for UID or GID.
    r = _ranges(role)
    values: dict[str, int] = {}
    for id_ in ("UID", "GID"):
        values.update(zip((n.format(id_) for n in names), (*r.system, *r.users)))
    return _set_values(data, values, separators, assign)


def login_defs_for(role: str, data: bytes) -> bytes:
    """/etc/login.defs with the uid and gid ranges of `role` ("base" or "container") for useradd/groupadd."""
    return _with_ranges(role, data, ("SYS_{}_MIN", "SYS_{}_MAX", "{}_MIN", "{}_MAX"), b" \t", b"\t\t")


def adduser_conf_for(role: str, data: bytes) -> bytes:
    """/etc/adduser.conf with the uid and gid ranges of `role` ("base" or "container") for adduser."""
    return _with_ranges(role, data, ("FIRST_SYSTEM_{}", "LAST_SYSTEM_{}", "FIRST_{}", "LAST_{}"), b" \t=", b"=")
