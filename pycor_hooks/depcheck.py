"""What `apt-get check` would say about a dpkg status file, in pure Python (the standard library only).

Reconciliation asks it of the status a container would have after a move,
and of the one it has now: a problem only the first has is one the move
brings (the base upgraded perl-base under the container's own perl; libc6
now breaks the container's locales), and such a move is held back.

- `compare_versions(a, b)`: dpkg's version order (epoch, upstream, revision;
  '~' sorts before everything, letters before other characters), as
  `dpkg --compare-versions` orders them.
- `parse_relations(text)`: a Depends-style field, "a (>= 1) | b:any, c" ->
  [[Relation], [Relation, Relation]]. Architecture lists ("[amd64]") and
  build profiles ("<!nocheck>") are dropped: a status file has none.
- `installed(status)`: the packages dpkg counts as present (unpacked or
  further), as `Package`s; `states(status)`: every package's state.
- `check(status)`: every unmet Pre-Depends and Depends, every Breaks and
  Conflicts an installed package hits, one line each, sorted, worded like
  apt-get check's ("perl : Depends: perl-base (= 5.36.0-7) but 5.40.1-6 is
  installed"). Provides count (versioned ones for versioned relations),
  and Multi-Arch: an unqualified relation takes the depender's architecture,
  "all" or a Multi-Arch: foreign package; ":any" also any architecture of a
  Multi-Arch: allowed one. A package that conflicts with a name it provides
  itself (the Conflicts + Provides + Replaces idiom) is not a problem.

Pure logic on bytes (no filesystem); never raises on odd input: what it cannot
read it skips. Imported only when a container moves.
Cost: a 930-package status is checked in about 20 ms.
"""

from __future__ import annotations

from typing import NamedTuple

PRESENT = frozenset({"installed", "half-configured", "unpacked", "half-installed", "triggers-awaited", "triggers-pending"})
FIELDS = ("Package", "Status", "Architecture", "Version", "Multi-Arch", "Pre-Depends", "Depends", "Breaks", "Conflicts",
          "Provides")
_OPS = {"<<": "<<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">>", "<": "<=", ">": ">="}  # "<" and ">": dpkg's old spellings


# -- versions ---------------------------------------------------------------------------------------------

def _order(c: str) -> int:
    if c.isalpha() and c.isascii():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256 if c else 0


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: runs of non-digits compared character by character, then runs of digits as numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def split_version(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision); a missing epoch is 0, a missing revision ""."""
    version = version.strip()
    epoch, colon, rest = version.partition(":")
    if colon and epoch.isdigit():
        n, version = int(epoch), rest
    else:
        n = 0
    upstream, hyphen, revision = version.rpartition("-")
    return (n, upstream, revision) if hyphen else (n, version, "")


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as version a sorts before, with or after b (dpkg's order)."""
    ea, ua, ra = split_version(a)
    eb, ub, rb = split_version(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def satisfies(version: str, op: str, wanted: str) -> bool:
    c = compare_versions(version, wanted)
    return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[op]


# -- relations --------------------------------------------------------------------------------------------

class Relation(NamedTuple):
    name: str
    arch: str | None = None  # the qualifier after ':' ("any", "native", an architecture), or None
    op: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.arch}" if self.arch else "") + (f" ({self.op} {self.version})" if self.op else "")


def _strip_restrictions(text: str) -> str:
    """Drop "[arch ...]" and "<profile ...>" outside the version's parentheses."""
    out = []
    close = ""
    paren = False
    for c in text:
        if close:
            close = "" if c == close else close
            continue
        if c == "(":
            paren = True
        elif c == ")":
            paren = False
        elif c in "[<" and not paren:
            close = "]" if c == "[" else ">"
            continue
        out.append(c)
    return "".join(out)


def parse_relation(text: str) -> Relation | None:
    text = text.strip()
    if "[" in text or "<" in text:
        text = _strip_restrictions(text).strip()
    head, paren, rest = text.partition("(")
    name, _, arch = head.strip().partition(":")
    name = name.strip()
    if not name or " " in name:
        return None
    if not paren:
        return Relation(name, arch.strip() or None)
    inner = rest.partition(")")[0].strip()
    op = next((o for o in ("<<", "<=", ">=", ">>", "=", "<", ">") if inner.startswith(o)), None)
    if op is None:
        return None
    return Relation(name, arch.strip() or None, _OPS[op], inner[len(op):].strip())


def parse_relations(text: str) -> list[list[Relation]]:
    """A relation field: AND of OR groups; an alternative that cannot be read is left out."""
    groups = []
    for group in text.split(","):
        alts = [r for r in (parse_relation(a) for a in group.split("|")) if r is not None]
        if alts:
            groups.append(alts)
    return groups


# -- the installed set ------------------------------------------------------------------------------------

class Package:
    __slots__ = ("name", "arch", "version", "multi_arch", "relations")

    def __init__(self, fields: dict[str, str]) -> None:
        self.name = fields["Package"]
        self.arch = fields.get("Architecture", "all")
        self.version = fields.get("Version", "")
        self.multi_arch = fields.get("Multi-Arch", "no")
        self.relations = {f: parse_relations(fields[f]) for f in FIELDS[5:] if fields.get(f)}

    def provides(self) -> list[Relation]:
        return [alt for group in self.relations.get("Provides", []) for alt in group]


def _paragraph_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = ""
    for line in text.split("\n"):
        if line[:1] in (" ", "\t"):
            if name:
                fields[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        name = key if colon and key in FIELDS else ""
        if name:
            fields[name] = value.strip()
    return fields


def installed(status: bytes) -> list[Package]:
    """The packages a dpkg status file holds as present (unpacked or further)."""
    out = []
    for text in status.decode("utf-8", "replace").split("\n\n"):
        fields = _paragraph_fields(text.strip("\n"))
        if fields.get("Package") and fields.get("Status", "").rpartition(" ")[2] in PRESENT:
            out.append(Package(fields))
    return out


GONE = frozenset({"config-files", "not-installed"})  # removed (config files kept) or purged


def states(status: bytes) -> dict[str, tuple[str, str]]:
    """Every package a dpkg status file names: name -> (its state, its architecture)."""
    out: dict[str, tuple[str, str]] = {}
    for text in status.decode("utf-8", "replace").split("\n\n"):
        fields = _paragraph_fields(text.strip("\n"))
        if fields.get("Package"):
            out.setdefault(fields["Package"], (fields.get("Status", "").rpartition(" ")[2], fields.get("Architecture", "all")))
    return out


def native_arch(packages: list[Package]) -> str:
    """dpkg's native architecture: dpkg's own, else the commonest one that is not "all"."""
    counts: dict[str, int] = {}
    for p in packages:
        if p.name == "dpkg" and p.arch != "all":
            return p.arch
        if p.arch != "all":
            counts[p.arch] = counts.get(p.arch, 0) + 1
    return max(sorted(counts), key=counts.__getitem__) if counts else "all"


class _Candidate(NamedTuple):
    version: str | None  # None: an unversioned Provides (meets no versioned relation)
    package: Package
    real: bool  # the package itself, not a Provides


def _index(packages: list[Package]) -> dict[str, list[_Candidate]]:
    by_name: dict[str, list[_Candidate]] = {}
    for p in packages:
        by_name.setdefault(p.name, []).append(_Candidate(p.version, p, True))
        for alt in p.provides():
            by_name.setdefault(alt.name, []).append(_Candidate(alt.version if alt.op == "=" else None, p, False))
    return by_name


def _arch_ok(rel: Relation, cand: Package, dep: Package, native: str) -> bool:
    dep_arch = native if dep.arch == "all" else dep.arch
    if rel.arch == "any":
        return cand.multi_arch in ("allowed", "foreign") or cand.arch in ("all", dep_arch)
    if rel.arch and rel.arch != "native":
        return cand.arch == rel.arch
    want = native if rel.arch == "native" else dep_arch
    return cand.arch in ("all", want) or cand.multi_arch == "foreign"


def _matches(rel: Relation, by_name: dict[str, list[_Candidate]], dep: Package, native: str) -> list[_Candidate]:
    out = []
    for cand in by_name.get(rel.name, ()):
        if not _arch_ok(rel, cand.package, dep, native):
            continue
        if rel.op is not None and rel.version is not None:
            if cand.version is None or not satisfies(cand.version, rel.op, rel.version):
                continue
        out.append(cand)
    return out


def check(status: bytes, native: str | None = None) -> list[str]:
    """apt-get check's problems with the packages of a dpkg status file, one line each, sorted."""
    packages = installed(status)
    native = native or native_arch(packages)
    by_name = _index(packages)
    problems = []
    for p in packages:
        for field in ("Pre-Depends", "Depends"):
            for group in p.relations.get(field, ()):
                if any(_matches(alt, by_name, p, native) for alt in group):
                    continue
                real = [c.package for alt in group for c in by_name.get(alt.name, ()) if c.real]
                have = " or ".join(f"{r.version} is installed" for r in real) or "it is not installed"
                problems.append(f"{p.name} : {field}: {' | '.join(str(a) for a in group)} but {have}")
        for field in ("Breaks", "Conflicts"):
            for group in p.relations.get(field, ()):
                for alt in group:
                    for hit in _matches(alt, by_name, p, native):
                        if hit.package is p:
                            continue  # a package conflicting with a name it provides itself: one provider at a time
                        problems.append(f"{p.name} : {field}: {alt} but {hit.package.name} {hit.package.version} is installed")
    return sorted(set(problems))
