"""`pycor install`: put the hook files and the template where LXC looks for them.

The files in hooks/ and lxc-templates/ are, as shipped, what the Debian
package installs: `#!/usr/bin/python3 -IBS` and pycor's folder
/usr/lib/python3/dist-packages put first on sys.path. -I: no environment
variable changes what a hook imports; -B: a hook never writes bytecode at
start (install compiles it once); -S: no site start-up (about 13 ms a hook),
which is why the package folder is put on sys.path by hand. `pycor install`
(the pip or source path) rewrites those two lines for the Python it runs
with, after checking that an unprivileged container's root, an unprivileged
host uid that is neither owner nor group, can reach and read every file a
hook needs: LXC runs pre-mount inside the container's user namespace, and an
interpreter it cannot reach fails every start with a bare "status 126".
Files are written beside their target and renamed over it: safe to run again.
"""

from __future__ import annotations

import os
import stat
import sys

from . import lxcconfig
from .errors import PycorError

HOOKS = ("pycor-pre-start", "pycor-pre-mount", "pycor-post-stop")
SECCOMP = lxcconfig.SECCOMP
TEMPLATE = "lxc-pycor"
LXC_HOOKS_DIR = "/usr/share/lxc/hooks"
LXC_TEMPLATES_DIR = "/usr/share/lxc/templates"
DEB_PACKAGE_DIR = "/usr/lib/python3/dist-packages"  # where the Debian package puts pycor_hooks
DPKG_LIST = "/var/lib/dpkg/info/pycor.list"  # the files the Debian package owns
SHEBANG_FLAGS = "-IBS"
PATH_LINE = "sys.path.insert(0, "


def source_dir() -> str:
    """The checkout (editable install) or the installed data files."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for top in (checkout, os.path.join(sys.prefix, "share", "pycor")):
        if os.path.isfile(os.path.join(top, "hooks", HOOKS[0])) and os.path.isfile(os.path.join(top, "lxc-templates", TEMPLATE)):
            return top
    raise PycorError("the pycor hook files are not installed next to the package", "reinstall pycor with 'pip install .'")


def package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- what an unprivileged container's root can reach -------------------------------
def unreachable(path: str, need: str) -> str | None:
    """Why a stranger (a host uid that is neither root, owner nor group) cannot use path, or None.

    need: "r", "x" or "rx" on the final file. Walks the path as the kernel does,
    following every symlink, so a link in an open folder to a file under
    /root is refused for where it leads.
    """
    parts = [p for p in path.split("/") if p]
    cur, links = "/", 0
    while parts:
        mode = os.stat(cur).st_mode
        if not mode & stat.S_IXOTH:
            return f"{cur} is mode {stat.S_IMODE(mode):04o}: others cannot enter it"
        part = parts.pop(0)
        if part in (".", ""):
            continue
        nxt = os.path.normpath(os.path.join(cur, part))
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return f"{nxt} does not exist"
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                return f"{path}: too many levels of symbolic links"
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                cur = "/"
        else:
            cur = nxt
    mode = os.stat(cur).st_mode
    bits = {"r": stat.S_IROTH, "x": stat.S_IXOTH}
    missing = [c for c in need if not mode & bits[c]]
    if missing:
        what = {"r": "read", "x": "execute" if not stat.S_ISDIR(mode) else "enter"}
        return f"{cur} is mode {stat.S_IMODE(mode):04o}: others cannot {' or '.join(what[c] for c in missing)} it"
    return None


def package_problems(folder: str) -> list[str]:
    """What a container's root cannot read of the pycor_hooks package under folder."""
    pkg = os.path.join(folder, "pycor_hooks")
    if not os.path.isfile(os.path.join(pkg, "__init__.py")):
        return [f"the package folder {folder} has no pycor_hooks (it no longer exists or moved)"]
    why = unreachable(pkg, "rx")
    if why:
        return [f"the package folder {pkg}: {why}"]
    problems = []
    for sub in (pkg, os.path.join(pkg, "__pycache__")):
        if not os.path.isdir(sub):
            continue
        if sub != pkg and (why := unreachable(sub, "rx")):
            problems.append(f"{sub}: {why}")
            continue
        for name in sorted(os.listdir(sub)):
            if name.endswith((".py", ".pyc")) and (why := unreachable(os.path.join(sub, name), "r")):
                problems.append(f"{os.path.join(sub, name)}: {why}")
    return problems


def interpreter_problems(python: str) -> list[str]:
    """What a container's root cannot run of the interpreter python (its path, symlinks followed)."""
    if not os.path.exists(python):
        return [f"the interpreter {python} no longer exists"]
    real = os.path.realpath(python)
    shown = python if real == python else f"{python} (-> {real})"
    why = unreachable(python, "x")
    return [f"the interpreter {shown}: {why}"] if why else []


def stdlib_problems() -> list[str]:
    """The running interpreter's standard library, which its hooks import from."""
    lib = os.path.dirname(os.__file__)
    why = unreachable(lib, "rx") or unreachable(os.__file__, "r")
    return [f"the standard library {lib}: {why}"] if why else []


def read_hook(path: str) -> tuple[str, str | None]:
    """(interpreter, package folder put on sys.path) of an installed hook file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].startswith("#!"):
        raise PycorError(f"{path} is not a pycor hook file (no #! line)", "pycor install")
    python = lines[0][2:].split()[0] if lines[0][2:].split() else ""
    folder = None
    for line in lines:
        if line.startswith(PATH_LINE):
            import ast

            try:
                node = ast.parse(line).body[0]
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
                    raise ValueError(line)
                folder = ast.literal_eval(node.value.args[1])
            except (SyntaxError, ValueError, AttributeError, IndexError):
                raise PycorError(f"{path}: its sys.path line is not as pycor writes it", "pycor install") from None
    return python, folder


def hook_problems(path: str) -> list[str]:
    """Why the installed hook file at path would fail in an unprivileged container, or []."""
    if not os.path.exists(path):
        return [f"{path} is missing"]
    problems = [f"the hook {path}: {why}"] if (why := unreachable(path, "rx")) else []
    try:
        python, folder = read_hook(path)
    except PycorError as e:
        return problems + [e.message]
    problems += interpreter_problems(python)
    if folder is None:
        problems.append(f"{path} does not put pycor's package folder on sys.path (a hook of an older pycor?)")
    else:
        problems += package_problems(folder)
    return problems


# -- writing the files -------------------------------------------------------------
def render(text: str, python: str, hooks_dir: str, path: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith("#!") or not any(line.startswith(PATH_LINE) for line in lines):
        raise PycorError("a pycor hook file is not as pycor ships it", "reinstall pycor")
    lines[0] = f"#!{python} {SHEBANG_FLAGS}\n"
    out = []
    for line in lines:
        if line.startswith("HOOKS_DIR = "):
            line = f"HOOKS_DIR = {hooks_dir!r}\n"
        elif line.startswith(PATH_LINE):
            line = f"{PATH_LINE}{path!r})  # set by 'pycor install'\n"
        out.append(line)
    return "".join(out)


def write_executable(path: str, text: str) -> None:
    tmp = f"{path}.pycor-new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def owned_by_package(paths: list[str]) -> list[str]:
    """Those of paths the Debian package pycor owns."""
    try:
        with open(DPKG_LIST, encoding="utf-8") as f:
            owned = set(f.read().splitlines())
    except FileNotFoundError:
        return []
    return [p for p in paths if os.path.normpath(p) in owned]


def make_dirs(directory: str) -> None:
    """mkdir -p, each new folder 0755 whatever the umask: a container's root must enter the hooks folder."""
    if os.path.isdir(directory):
        return
    make_dirs(os.path.dirname(directory))
    os.mkdir(directory)
    os.chmod(directory, 0o755)


def install(hooks_dir: str = LXC_HOOKS_DIR, templates_dir: str = LXC_TEMPLATES_DIR, python: str | None = None) -> list[str]:
    """Write the hooks and the template for python (default: the running one); refuse what cannot work.

    Nothing is written when a check fails. The package's bytecode is compiled
    first, so hooks (run with -B) load it instead of compiling at every start.
    """
    import compileall

    python = python or sys.executable
    hooks_dir, templates_dir = os.path.abspath(hooks_dir), os.path.abspath(templates_dir)
    targets = [os.path.join(hooks_dir, h) for h in HOOKS] + [os.path.join(templates_dir, TEMPLATE)]
    owned = owned_by_package(targets)
    if owned:
        raise PycorError(f"{owned[0]} belongs to the Debian package pycor, which installed the hooks already",
                         "nothing to do; to run pycor from pip instead, 'apt remove pycor' first, or install into "
                         "other folders (--hooks-dir, --templates-dir)")
    src = source_dir()
    folder = package_parent()
    problems = interpreter_problems(python) + stdlib_problems()
    existing = hooks_dir
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if why := unreachable(existing, "x"):
        problems.append(f"the hooks folder {hooks_dir}: {why}")
    if not problems:
        umask = os.umask(0o022)  # bytecode every user can read, whatever root's umask
        try:
            compileall.compile_dir(os.path.join(folder, "pycor_hooks"), quiet=1)
        finally:
            os.umask(umask)
        problems = package_problems(folder)
    if problems:
        raise PycorError(
            "an unprivileged container's root (a host uid that is neither root, owner nor group) could not run the "
            "hooks: " + "; ".join(problems),
            "install pycor with a Python every user can reach (e.g. /usr/bin/python3 -m venv /opt/pycor), or use the "
            "Debian package; privileged containers alone would work, but every unprivileged start would fail",
        )
    written = []
    for directory in (hooks_dir, templates_dir):
        make_dirs(directory)
    for name, sub, dest in [(h, "hooks", hooks_dir) for h in HOOKS] + [(TEMPLATE, "lxc-templates", templates_dir)]:
        with open(os.path.join(src, sub, name), encoding="utf-8") as f:
            text = render(f.read(), python, hooks_dir, folder)
        target = os.path.join(dest, name)
        write_executable(target, text)
        written.append(target)
    with open(os.path.join(src, "hooks", SECCOMP), encoding="utf-8") as f:
        target = os.path.join(hooks_dir, SECCOMP)
        write_executable(target, f.read())
        os.chmod(target, 0o644)
        written.append(target)
    return written
