"""Issue 19: the flags agree across commands. Every long option of every command line is accepted as
``--snake_case`` (the primary spelling, as `distill train` spells its fields) and as ``--kebab-case``; every
command that writes a model folder takes ``--overwrite_output_dir`` (alias ``--overwrite``)."""

from __future__ import annotations

import argparse

import pytest


def _parsers():
    from distill.students.cli import build_init_student_parser, build_prune_parser
    from distill.train import build_parser as train_parser
    from scaledown.cli import build_parser as scaledown_parser
    from scaling.cli import build_parser as scaling_parser

    roots = {
        "distill train": train_parser(),
        "distill init-student": build_init_student_parser(),
        "distill prune": build_prune_parser(),
        "scaling": scaling_parser(),
        "scaledown": scaledown_parser(),
    }
    out = {}

    def walk(name, parser):
        out[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    for name, parser in roots.items():
        walk(name, parser)
    return out


PARSERS = _parsers()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_long_option_has_both_spellings(name):
    parser = PARSERS[name]
    missing = []
    for action in parser._actions:
        for option in action.option_strings:
            body = option[2:]
            if not option.startswith("--") or ("_" not in body and "-" not in body):
                continue
            snake, kebab = "--" + body.replace("-", "_"), "--" + body.replace("_", "-")
            for spelling in (snake, kebab):
                if parser._option_string_actions.get(spelling) is not action:
                    missing.append(f"{option} (no {spelling})")
    assert not missing, f"{name}: {missing}"


def test_the_walk_sees_every_command():
    expected = {
        "scaledown run",
        "scaledown ladder",
        "scaledown export",
        "scaledown quantize",
        "scaledown bench",
    }
    expected |= {"scaledown serve", "scaling fit", "scaling ladder", "distill train", "distill prune"}
    assert expected <= set(PARSERS)


@pytest.mark.parametrize(
    "name, argv, expected",
    [
        ("scaledown bench", ["m", "--batch_size", "4", "--latency_samples", "2"], {"batch_size": 4}),
        ("scaledown serve", ["m", "--api_key_env", "KEY", "--max_batch_size", "2"], {"api_key_env": "KEY"}),
        ("distill prune", ["--model", "m", "--calibration", "c", "--output_dir", "o", "--drop_layers", "1"],
         {"drop_layers": 1, "output_dir": "o"}),
        ("scaling ladder", ["--base_config", "{}", "--widths", "8", "--vocab_size", "9", "--tokens", "1"],
         {"vocab_size": 9, "base_config": "{}"}),
    ],
)  # fmt: skip
def test_both_spellings_parse_to_the_same_value(name, argv, expected):
    kebab = [a.replace("_", "-") if a.startswith("--") else a for a in argv]
    for spelling in (argv, kebab):
        args = vars(PARSERS[name].parse_args(spelling))
        assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "name, argv",
    [
        ("scaledown export", ["m", "--output_dir", "o"]),
        ("scaledown quantize", ["m", "--method", "torchao-int8", "--output_dir", "o"]),
        ("distill init-student", ["--teacher", "t", "--layers", "2", "--output_dir", "o"]),
        ("distill prune", ["--model", "m", "--calibration", "c", "--output_dir", "o"]),
    ],
)
@pytest.mark.parametrize(
    "flag", [[], ["--overwrite"], ["--overwrite_output_dir"], ["--overwrite-output-dir", "true"]]
)
def test_every_writing_command_takes_the_same_overwrite_flag(name, argv, flag):
    args = PARSERS[name].parse_args(argv + flag)
    value = getattr(args, "overwrite_output_dir", getattr(args, "overwrite", None))
    assert value is bool(flag)


def test_distill_train_takes_the_same_overwrite_flag(tmp_path):
    from distill.train import parse_args

    base = ["--task", "causal-lm", "--model_config", '{"model_type": "llama"}', "--output_dir", str(tmp_path)]
    for flag in (["--overwrite"], ["--overwrite_output_dir"], ["--overwrite-output-dir", "true"]):
        assert parse_args(base + flag)[2].overwrite_output_dir is True
    assert parse_args(base)[2].overwrite_output_dir is False


def test_cache_teacher_and_tune_flags_take_both_spellings():
    from distill.teacher.cache_cli import _pop_option
    from distill.tune.search import TUNE_FLAGS, _split_argv

    argv = ["--cache-dir", "d", "--top_k=4", "--alpha", "0.5"]
    assert _pop_option(argv, "--cache_dir") == "d" and _pop_option(argv, "--top_k") == "4"
    assert argv == ["--alpha", "0.5"]
    kebab = [f"--{flag[2:].replace('_', '-')}" for flag in TUNE_FLAGS]
    opts, rest = _split_argv([kebab[0], "3", f"{kebab[1]}=space.yaml", "--alpha", "0.5"])[:2]
    assert opts == {"n_trials": 3, "search_space": "space.yaml"} and rest == ["--alpha", "0.5"]
