#!/usr/bin/python3
"""Finish argparse-manpage's page: a whatis line for NAME, no empty .SS, the extra sections.

Usage: manpage.py GENERATED EXTRA > pycor.1
"""

import sys

from pycor_hooks import __version__
from pycor_hooks.cli import parser


def main(generated: str, extra: str) -> None:
    lines = open(generated, encoding="utf-8").read().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith(".TH "):
            line = f'.TH PYCOR 1 "" "pycor {__version__}" "User Commands"'
        elif i and lines[i - 1] == ".SH NAME":
            line = "pycor \\- " + parser().description.replace("-", "\\-")
        elif line == ".SS" and i + 1 < len(lines) and lines[i + 1].startswith("\\fB"):
            line = ".SS " + lines[i + 1].replace("\\fB", "").replace("\\fR", "")
            lines[i + 1] = ""
        elif line.startswith(".SH AUTHORS"):
            break  # argparse-manpage's AUTHORS and DISTRIBUTION sections say nothing here
        if line:
            out.append(line)
    out += open(extra, encoding="utf-8").read().splitlines()
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
