"""One flag spelling rule for every command line (issue 19): ``--snake_case`` first, as `distill train`
(transformers' `HfArgumentParser`) spells its fields, and the ``--kebab-case`` spelling accepted as an alias.

`both_spellings(parser)` adds the missing spelling of every long option of an argparse parser and of its
subcommands, so each command is written once in either spelling and agrees with the others. (`scaling`,
which imports nothing from `distill`, keeps a copy of these few lines in `scaling/cli.py`.)
"""

from __future__ import annotations

import argparse


def other_spelling(option: str) -> str:
    """``--batch_size`` <-> ``--batch-size`` (a long option with neither ``_`` nor ``-`` is itself)."""
    body = option[2:]
    return "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))


def both_spellings(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``--x_y`` beside ``--x-y`` (and the reverse) for every long option, in subcommands too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                both_spellings(sub)
            continue
        for option in list(action.option_strings):
            if not option.startswith("--"):
                continue
            alias = other_spelling(option)
            if alias not in parser._option_string_actions:  # snake_case listed first in --help
                action.option_strings.insert(0 if "_" in alias else len(action.option_strings), alias)
                parser._option_string_actions[alias] = action
    return parser


def str_to_bool(value) -> bool:
    """``true/false``, ``yes/no``, ``1/0`` (as `HfArgumentParser` reads a bool flag's optional value)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_overwrite_flag(parser, help_text: str, dest: str = "overwrite_output_dir") -> None:
    """``--overwrite_output_dir [true|false]`` with the alias ``--overwrite``, as on every command."""
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite",
        dest=dest,
        nargs="?",
        const=True,
        default=False,
        type=str_to_bool,
        help=help_text,
    )
