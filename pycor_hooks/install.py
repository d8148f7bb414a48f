"""`pycor install`: put the hook files and the template where LXC looks for them.

Each file gets the interpreter line of the Python that has pycor, run with
-I -S: no environment variable can change what a hook imports, and skipping
site's start-up saves a hook about 13 ms. Instead, the folder holding the
pycor_hooks package is put first on sys.path, fixed at install time. Files
are written beside their target and renamed over it: safe to run again.
"""

from __future__ import annotations

import os
import sys

from .errors import PycorError

HOOKS = ("pycor-pre-start", "pycor-pre-mount", "pycor-post-stop")
TEMPLATE = "lxc-pycor"
LXC_HOOKS_DIR = "/usr/share/lxc/hooks"
LXC_TEMPLATES_DIR = "/usr/share/lxc/templates"


def source_dir() -> str:
    """The checkout (editable install) or the installed data files."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for top in (checkout, os.path.join(sys.prefix, "share", "pycor")):
        if os.path.isfile(os.path.join(top, "hooks", HOOKS[0])) and os.path.isfile(os.path.join(top, "lxc-templates", TEMPLATE)):
            return top
    raise PycorError("the pycor hook files are not installed next to the package", "reinstall pycor with 'pip install .'")


def package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(text: str, python: str, hooks_dir: str, path: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith("#!") or "import sys\n" not in lines:
        raise PycorError("a pycor hook file is not as pycor ships it", "reinstall pycor")
    lines[0] = f"#!{python} -IS\n"
    out = []
    for line in lines:
        if line.startswith("HOOKS_DIR = "):
            line = f"HOOKS_DIR = {hooks_dir!r}\n"
        out.append(line)
        if line == "import sys\n":
            out.append(f"sys.path.insert(0, {path!r})  # set by 'pycor install'\n")
    return "".join(out)


def write_executable(path: str, text: str) -> None:
    tmp = f"{path}.pycor-new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def install(hooks_dir: str = LXC_HOOKS_DIR, templates_dir: str = LXC_TEMPLATES_DIR, python: str | None = None) -> list[str]:
    python = python or sys.executable
    src = source_dir()
    written = []
    for directory in (hooks_dir, templates_dir):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    for name, sub, dest in [(h, "hooks", hooks_dir) for h in HOOKS] + [(TEMPLATE, "lxc-templates", templates_dir)]:
        with open(os.path.join(src, sub, name), encoding="utf-8") as f:
            text = render(f.read(), python, hooks_dir, package_parent())
        target = os.path.join(dest, name)
        write_executable(target, text)
        written.append(target)
    return written
