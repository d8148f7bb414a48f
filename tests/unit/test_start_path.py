"""The start path stays light: what each hook imports is pinned, privileged starts run one hook process."""


from __future__ import annotations

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PINNED = {"abc", "builtins", "codecs", "ctypes", "ctypes._endian", "encodings", "encodings.aliases", "encodings.utf_8",
          "errno", "fcntl", "genericpath", "io", "marshal", "os", "os.path", "posix", "posixpath", "stat", "struct", "sys",
          "time", "types", "zipimport", "zlib"}


PYCOR_MODULES = {"pycor_hooks", "pycor_hooks.driver", "pycor_hooks.errors", "pycor_hooks.faults", "pycor_hooks.flatjson",
                 "pycor_hooks.hooks", "pycor_hooks.layer", "pycor_hooks.linux", "pycor_hooks.locks", "pycor_hooks.names",
                 "pycor_hooks.overlay", "pycor_hooks.runstate", "pycor_hooks.store"}  # volumes.py: only for hosting features


def modules_after(code: str) -> set[str]:
    """sys.modules after code runs in a hook's interpreter (-IBS, the checkout first on sys.path)."""
    out = subprocess.run(["/usr/bin/python3", "-IBS", "-c", f"import sys; sys.path.insert(0, {REPO!r}); {code}; "
                          "print(' '.join(sorted(m for m in sys.modules if not m.startswith('_'))))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


TEMPLATE_ARGVS = [
    ["--path", "/l/c1", "--name", "c1", "--rootfs", "/l/c1/rootfs", "--base", "debian12"],
    ["--path=/l/c1", "--name=c1", "--rootfs=dir:/d", "-b", "b", "--pin", "3", "--unprivileged", "--store", "/s p"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--mapped-uid", "100000", "--mapped-gid=100000", "--adopt"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--volume", "/v", "--volume=/w", "--size", "1048576", "--ephemeral"],
    ["--path", "/l/c", "--name=-x", "--base", "b", "--base", "c", "--pin="],  # the last of a repeated option
    ["--path", "/l/c", "--name", "c", "--base", "b", "--size=+5"],
    ["--path", "/l/c", "--name", "", "--base", "b", "--size", " 7 "],
    # what the fast reader leaves to argparse: abbreviations, short forms, bad values, missing ones, help
    ["--path", "/l/c", "--nam", "c", "--bas", "b"],
    ["--path", "/l/c", "--name", "c", "-bb"],
    ["--path", "/l/c", "--name", "c", "--base"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--adopt=1"],
    ["--path", "/l/c", "--name", "-x", "--base", "b"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "extra"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--size", "ten"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--", "--x"],
    ["--path", "/l/c", "--name", "c"],
    ["-h"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--rootfs=--"],
    ["--path", "/l/c", "--name", "c", "--base", "b", "--store=--", "--volume=--"],
]


def argparse_result(parse, argv):  # type: ignore[no-untyped-def]
    try:
        return vars(parse(argv))
    except SystemExit as e:
        return ("exit", e.code)


CLI_ARGVS = [
    ["ls"], ["--store", "/s", "ls"], ["--store=/s", "create", "c", "-b", "b"], ["--store", "base", "ls"],
    ["--store", "ls", "create", "c", "--base", "b"], ["--st", "ls", "create", "c", "-b", "b"], ["--store=/s", "--store", "reset", "ls"],
    ["--store", "rm", "create", "-h"], ["-h", "create"], ["--help", "ls"], ["--he", "ls"], ["--", "ls"], ["-", "ls"], ["-1", "ls"],
    ["nosuch"], ["create"], ["create", "-h"], ["base", "import", "b", "--busybox"], ["base"], ["lxd", "init"], ["-h"], [],
    ["rm", "c", "-f"], ["pin", "c", "3"], ["--version"],
]


def test_privileged_start_and_stop_import_only_the_pinned_modules():
    # what pre-mount --prepare and post-stop load before they act
    assert modules_after("import pycor_hooks.hooks, pycor_hooks.driver") == PINNED | PYCOR_MODULES


def test_unprivileged_pre_start_adds_only_the_idmap_module():
    assert modules_after("import pycor_hooks.hooks, pycor_hooks.driver, pycor_hooks.idmap") == \
        PINNED | PYCOR_MODULES | {"pycor_hooks.idmap"}


def test_run_states_and_layer_metadata_are_read_without_the_json_module(tmp_path):
    from pycor_hooks import flatjson

    meta = {"base": "debian12", "pin": None, "based_on": "3", "lowerdirs": ["/a,b:c", 'q"uote\\'], "started": 1.5, "n": 7}
    text = flatjson.dumps(meta)
    import json

    assert json.loads(text) == meta and flatjson.loads(text) == meta
    assert flatjson.loads(json.dumps(meta, indent=1)) == meta  # what pycor 0.1 wrote
    assert modules_after(f"from pycor_hooks import flatjson; flatjson.load({text.encode()!r})").isdisjoint({"json", "re"})
    nested = b'{"a": {"b": 1}}'
    assert flatjson.load(nested) == {"a": {"b": 1}}  # anything else: the json module reads it


def test_the_template_reads_its_options_as_argparse_does(capsys):
    from pycor_hooks import template

    for argv in TEMPLATE_ARGVS:
        assert argparse_result(template.parse_args, argv) == argparse_result(template.parser().parse_args, argv), argv


def test_the_cli_parses_as_with_every_command_built(capsys):
    """parser(argv) builds only argv's command; results, help and errors are those of the whole parser."""
    from pycor_hooks import cli

    def outcome(p, argv):  # type: ignore[no-untyped-def]
        try:
            result = {k: v for k, v in vars(p.parse_args(argv)).items() if k != "func"}
        except SystemExit as e:
            result = ("exit", e.code)
        return result, capsys.readouterr()

    for argv in CLI_ARGVS:
        assert outcome(cli.parser(argv), argv) == outcome(cli.parser(), argv), argv


def test_the_template_reads_lxc_creates_arguments_without_argparse_or_re():
    loaded = modules_after("from pycor_hooks import template; "
                           "template.parse_args(['--path', '/l/c', '--name', 'c', '--rootfs', '/l/c/rootfs', '-b', 'b', '--pin', '2'])")
    assert loaded.isdisjoint({"argparse", "re", "shlex", "json", "pycor_hooks.quota", "pycor_hooks.volumes", "pycor_hooks.idmap"}), loaded
    assert {"pycor_hooks.template", "pycor_hooks.driver"} <= loaded
    assert modules_after("from pycor_hooks import lxcconfig; lxcconfig.quote('/a/b-c_d.e:f')").isdisjoint({"shlex", "re"})
    import shlex

    from pycor_hooks.lxcconfig import quote

    for text in ("/a/b", "", "a b", "it's", "/ä", "$x", "a\nb", "@%+=:,./-_"):
        assert quote(text) == shlex.quote(text)


def test_the_cli_loads_no_typing_dataclasses_shutil_or_tempfile():
    """What every pycor command pays before it acts (typing 2 ms, shutil with bz2 and lzma 2 ms, dataclasses 6 ms)."""
    loaded = modules_after("import pycor_hooks.cli")
    assert "pycor_hooks.cli" in loaded and "argparse" in loaded
    assert loaded.isdisjoint({"typing", "dataclasses", "inspect", "shutil", "tempfile"}), loaded
