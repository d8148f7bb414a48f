"""The package's shape: four tiers whose imports point only down, and no import cycle.

Every import counts, function-local ones included (they are for start-up
speed, never to hide a cycle); imports under `if TYPE_CHECKING:` give types
only and do not count. A module may import its own tier or a lower one.
"""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pycor_hooks")

PRIMITIVES, STORAGE, DOMAIN, FRONT_ENDS = 0, 1, 2, 3
TIER_NAMES = ("primitives", "storage", "domain", "front ends")
TIERS: dict[str, int] = {
    # primitives: no pycor state, no policy
    "errors": PRIMITIVES, "names": PRIMITIVES, "faults": PRIMITIVES, "flatjson": PRIMITIVES, "linux": PRIMITIVES,
    "units": PRIMITIVES, "lxcconfig": PRIMITIVES, "proc": PRIMITIVES,
    # storage: bytes on disk, locks, mounts, records
    "locks": STORAGE, "fsutil": STORAGE, "layer": STORAGE, "overlay": STORAGE, "idmap": STORAGE, "store": STORAGE,
    "runstate": STORAGE, "digest": STORAGE, "staging": STORAGE, "tario": STORAGE, "ovlxattr": STORAGE, "inbox": STORAGE,
    # domain: what pycor does with them
    "merge": DOMAIN, "diff": DOMAIN, "reconcile": DOMAIN, "volumes": DOMAIN, "quota": DOMAIN, "builder": DOMAIN,
    "versions": DOMAIN, "importing": DOMAIN, "debian": DOMAIN, "export": DOMAIN, "spec": DOMAIN, "driver": DOMAIN,
    "lxc": DOMAIN, "daemon": DOMAIN, "runtime": DOMAIN, "layers_seen": DOMAIN, "rollout": DOMAIN, "doctor": DOMAIN,
    "install": DOMAIN, "upgrade": DOMAIN, "publish": DOMAIN, "depcheck": DOMAIN,
    # front ends: parse, call, print
    "hooks": FRONT_ENDS, "template": FRONT_ENDS, "cli": FRONT_ENDS, "commands": FRONT_ENDS,
}


def modules() -> dict[str, str]:
    """module name (relative to the package, 'commands.base' for a subpackage's) -> file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        rel = os.path.relpath(folder, PACKAGE)
        prefix = "" if rel == "." else rel.replace(os.sep, ".") + "."
        for f in files:
            if f.endswith(".py"):
                stem = f[:-3]
                name = prefix[:-1] if stem == "__init__" else prefix + stem
                found[name or "__init__"] = os.path.join(folder, f)
    return found


def tier_of(module: str) -> int | None:
    return TIERS.get(module.split(".")[0])


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(module: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that module imports at run time, wherever the import statement is."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    skip = _type_checking_nodes(tree)
    is_pkg = path.endswith("__init__.py")
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    if module == "__init__":
        here = []
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("pycor_hooks"):
                mod = node.module[len("pycor_hooks") + 1:]
            else:
                continue
            names = [mod] + [f"{mod}.{a.name}" if mod else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name[len("pycor_hooks") + 1:] for a in node.names if a.name.startswith("pycor_hooks.")]
        out.update(n for n in names if n in known and n != module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_tier():
    untiered = sorted(m for m in modules() if m != "__init__" and tier_of(m) is None)
    assert not untiered, f"give these modules a tier in TIERS (and the README's code map): {untiered}"


def test_imports_point_down():
    upward = []
    for module, targets in graph().items():
        mine = tier_of(module)
        for target in sorted(targets):
            theirs = tier_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module} ({TIER_NAMES[mine]}) imports {target} ({TIER_NAMES[theirs]})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" ".join(c) for c in cycles)
