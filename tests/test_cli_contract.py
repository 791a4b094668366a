"""The command lines keep their word: one-line errors, 'did you mean', exit status 2 for usage errors,
--help that shows --config, inferred tasks, accuracy in the summary, `make help`, requires-python."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distill.cli import main as distill_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "recipes", "tiny")


def exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse exits by itself
        return e.code


def test_offline_hub_dataset_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = distill_main(
        [
            "train",
            "--config",
            os.path.join(TINY, "causal_lm_teacher.yaml"),
            "--output_dir",
            str(tmp_path / "o"),
            "--dataset_name",
            "someone/no-such-dataset-here",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [
        line for line in err.splitlines() if line.startswith("error:")
    ]  # one line (above: import warnings)
    assert "HF_DATASETS_OFFLINE" in line and "builtin:python-docs" in line and "no-such-dataset-here" in line


def test_command_line_typo_gets_did_you_mean(tmp_path, capsys):
    code = distill_main(
        [
            "train",
            "--config",
            os.path.join(TINY, "causal_lm.yaml"),
            "--alhpa",
            "0.9",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "'--alhpa' (did you mean '--alpha'?)" in capsys.readouterr().err


def test_yaml_typo_exits_2_with_did_you_mean(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: causal-lm\nmodel_config: {model_type: llama}\ntemprature: 2.0\n")
    assert distill_main(["train", "--config", str(bad)]) == 2
    assert "did you mean 'temperature'" in capsys.readouterr().err


def test_config_is_in_train_help_and_usage():
    from distill.train import build_parser

    text = build_parser().format_help()
    assert text.startswith("usage: distill train [--config RECIPE.yaml]")
    assert "--config RECIPE.yaml" in text.split("options:", 1)[1] or "recipe:" in text


@pytest.mark.parametrize(
    "program,argv",
    [
        ("distill", []),
        ("distill", ["trian"]),
        ("distill", ["train", "--config", "/nonexistent.yaml"]),
        ("scaling", []),
        ("scaling", ["fit"]),
        ("scaling", ["fti"]),
        ("scaledown", []),
        ("scaledown", ["run", "--config", "/nonexistent.yaml"]),
        ("scaledown", ["run", "--bogus"]),
    ],
)
def test_usage_errors_exit_2(program, argv, capsys):
    import importlib

    main = importlib.import_module(f"{program}.cli").main
    assert exit_status(main, argv) == 2


def test_task_is_inferred_when_unset(tmp_path):
    from distill.train import _infer_task_name, parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_config: {model_type: vit}\ndataset_name: builtin:digits\n")
    assert (
        _infer_task_name(*parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])) == "image-cls"
    )
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    argv = [
        "--model_config",
        '{"model_type": "bert"}',
        "--teacher_model_name_or_path",
        str(teacher),
        "--dataset_name",
        "json",
        "--data_files",
        str(recipe),
        "--output_dir",
        str(tmp_path),
    ]
    assert _infer_task_name(*parse_args(argv)) == "seq-cls"
    with pytest.raises(ValueError, match="task is not set"):
        _infer_task_name(*parse_args(argv[:2] + argv[4:]))


def test_classification_summary_shows_accuracy():
    from distill.train import format_summary

    table = format_summary(
        {
            "student_params": 10,
            "eval_loss": 1.0,
            "eval_accuracy": 0.5,
            "teacher_params": 99,
            "eval_teacher_loss": 0.4,
            "eval_teacher_accuracy": 0.875,
        }
    )
    header, student, teacher = table.splitlines()[1:]
    assert "eval_accuracy" in header.split()
    assert student.split()[header.split().index("eval_accuracy")] == "0.5000"
    assert teacher.split()[header.split().index("eval_accuracy")] == "0.8750"
    assert "accuracy" not in format_summary({"student_params": 10, "eval_loss": 1.0})


def test_make_help_lists_every_target():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    phony = (
        next(line for line in makefile.splitlines() if line.startswith(".PHONY:")).split(":", 1)[1].split()
    )
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[1] for line in shown.splitlines() if line.startswith("make ")}
    assert set(phony) - {"help"} <= listed


def test_requires_python_admits_no_version_the_dependencies_refuse():
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    ours = SpecifierSet(project["requires-python"])
    for line in project["dependencies"]:
        name = Requirement(line).name
        needed = md.metadata(name).get("Requires-Python")
        if not needed:
            continue
        for minor in range(8, sys.version_info.minor + 1):
            version = f"3.{minor}"
            if version in ours:
                assert version in SpecifierSet(needed), (
                    f"{name} needs Python {needed}, pyproject admits {version}"
                )
