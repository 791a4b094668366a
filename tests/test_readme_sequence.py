"""The `distill` commands of the README and then docs/distilling.md on the tiny causal-LM recipes, run in order
(on a tiny data file): none
of them silently takes another's results. Whatever an output directory holds after a command that
succeeded was made with exactly that command's settings; a command is refused only where the README
says so."""

from __future__ import annotations

import json
import os
import random
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(r"^distill (train|cache-teacher) --config recipes/tiny/causal_lm\.yaml")
PAGES = ["README.md", "docs/distilling.md"]


def readme_commands() -> list[tuple[list[str], str]]:
    """``(argv, comment)`` of every line of the README, then docs/distilling.md, that runs `distill` on
    recipes/tiny/causal_lm.yaml, in order."""
    out = []
    for page in PAGES:
        for line in open(os.path.join(ROOT, page), encoding="utf-8"):
            if COMMAND.match(line):
                command, _, comment = line.partition("  #")
                out.append((shlex.split(command)[1:], comment.strip()))
    return out


@pytest.mark.slow
def test_readme_commands_in_order_never_reuse_other_results(tmp_path, monkeypatch, capsys):
    from distill.cli import main as distill_main
    from distill.train import parse_args
    from distill.trainer.fingerprint import read_fingerprint, run_fingerprint

    rng = random.Random(0)
    words = "model loss teacher student token layer weight data train step scale law fit size".split()
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n" for _ in range(200)
        )
    )
    tiny = [
        "--dataset_name",
        "json",
        "--data_files",
        str(data),
        "--max_steps",
        "2",
        "--max_eval_samples",
        "8",
        "--max_test_samples",
        "8",
        "--disable_tqdm",
        "true",
        "--save_steps",
        "1",
    ]
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "recipes"), tmp_path / "recipes")
    teacher = [
        "train",
        "--config",
        "recipes/tiny/causal_lm_teacher.yaml",
        *tiny,
        "--tokenizer_vocab_size",
        "300",
    ]
    assert distill_main(teacher) == 0  # what the student recipe's comment says to run first

    commands = readme_commands()
    assert len(commands) >= 6 and any("--teacher_cache" in argv for argv, _ in commands)
    for argv, comment in commands:
        argv = [*argv, *tiny]
        capsys.readouterr()
        code = distill_main(argv)
        err = capsys.readouterr().err
        if "refused" in comment:
            assert code == 2 and " -> " in err, (argv, err)
            continue
        assert code == 0, (argv, err)
        if argv[0] == "train":
            model_args, data_args, args = parse_args(argv[1:])
            stored = read_fingerprint(args.output_dir)
            assert stored["finished"]
            assert stored["fingerprint"] == run_fingerprint(model_args, data_args, args), argv
