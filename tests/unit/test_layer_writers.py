"""Who writes a layer's metadata: based_on changes only where a move reconciled the layer (Driver._moved)."""

from __future__ import annotations

import ast
import os

import pycor_hooks

PACKAGE = os.path.dirname(pycor_hooks.__file__)


def _calls() -> list[tuple[str, str, ast.Call]]:
    """(module, enclosing function, call) for every call in the package."""
    found = []
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            module = os.path.relpath(path, PACKAGE)

            def visit(node: ast.AST, func: str, module: str = module) -> None:
                for child in ast.iter_child_nodes(node):
                    inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
                    if isinstance(child, ast.Call):
                        found.append((module, inner, child))
                    visit(child, inner)

            visit(tree, "")
    return found


def _name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


def test_based_on_is_written_only_by_the_reconcile_path():
    writers = {(m, f) for m, f, call in _calls() if any(k.arg == "based_on" for k in call.keywords)}
    assert writers == {("driver.py", "_moved")}


def test_layer_meta_is_made_only_for_a_new_layer_and_when_read():
    makers = {(m, f) for m, f, call in _calls() if _name(call) == "LayerMeta"}
    new_layers = {("driver.py", "create_volume"), ("builder.py", "prepare"), ("daemon.py", "base_image_tarball")}
    assert makers == new_layers | {("layer.py", "parse_meta"), ("layer.py", "but")}


def test_no_writer_of_a_layer_takes_a_locked_flag():
    """The check that a container is stopped has one place (Driver.stopped_layer): no writer can be told to skip it."""
    assert [(m, f) for m, f, call in _calls() if any(k.arg == "locked" for k in call.keywords)] == []
