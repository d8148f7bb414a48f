#!/usr/bin/python3
"""Print pycor's bash completion, generated from its argparse parser: commands, subcommands, options."""

import argparse

from pycor_hooks.cli import parser


def walk(p: argparse.ArgumentParser, path: str, table: dict[str, list[str]]) -> None:
    words: list[str] = []
    subs: dict[str, argparse.ArgumentParser] = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        elif action.help != argparse.SUPPRESS:
            words += action.option_strings
    table[path] = sorted(subs) + words
    for name, sub in subs.items():
        walk(sub, f"{path} {name}".strip(), table)


def main() -> None:
    table: dict[str, list[str]] = {}
    walk(parser(), "", table)
    commands = "|".join(f'"{k}"' for k in table if k)
    cases = "\n".join(f'        "{k}") words="{" ".join(v)}" ;;' for k, v in table.items())
    print(f"""# bash completion for pycor (generated from its argparse parser)
_pycor() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" next i words
    for ((i = 1; i < COMP_CWORD; i++)); do
        next="$path${{path:+ }}${{COMP_WORDS[i]}}"
        case "$next" in
            {commands}) path=$next ;;
        esac
    done
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _pycor pycor""")


if __name__ == "__main__":
    main()
