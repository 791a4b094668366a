"""Every recipe parses into dataclasses and starts with the command that runs it."""

from __future__ import annotations

import glob
import os

import pytest

from distill.train import parse_args, parse_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
PIPELINES = [r for r in RECIPES if os.sep + "pipeline" + os.sep in r]
TRAIN_RECIPES = [r for r in RECIPES if r not in PIPELINES]


def test_recipes_exist():
    assert len([r for r in TRAIN_RECIPES if "/tiny/" in r]) >= 6
    assert len([r for r in TRAIN_RECIPES if "/tiny/" not in r]) >= 3


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_parses(recipe, tmp_path):
    first = open(recipe, encoding="utf-8").readline()
    rel = os.path.relpath(recipe, ROOT)
    assert first.startswith("# ") and rel in first, f"{rel} must start with the command that runs it"
    model_args, data_args, args = parse_args(
        ["--config", recipe, "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    assert args.task in ("causal-lm", "seq-cls", "image-cls")
    # A multi-task recipe names a teacher per task (distill.data.multitask), not one at the top level.
    assert args.alpha == 0 or args.teacher_model_name_or_path or all(t.teacher for t in data_args.tasks or [])
    assert args.alpha == 0 or args.teacher_model_name_or_path or data_args.tasks
    if model_args.model_config is not None:
        parse_model_config(model_args.model_config)


def test_command_line_overrides_yaml(tmp_path):
    recipe = os.path.join(ROOT, "recipes", "tiny", "causal_lm.yaml")
    _, data_args, args = parse_args(
        ["--config", recipe, "--alpha", "0.9", "--block_size", "64", "--output_dir", str(tmp_path)]
    )
    assert args.alpha == 0.9 and data_args.block_size == 64 and args.temperature == 2.0


def test_unknown_yaml_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: causal-lm\nmodel_config: {model_type: llama}\nalpah: 0.3\n")
    with pytest.raises(ValueError, match="alpah.*did you mean 'alpha'"):
        parse_args(["--config", str(bad)])


def test_unknown_command_line_key_is_an_error(tmp_path):
    recipe = os.path.join(ROOT, "recipes", "tiny", "causal_lm.yaml")
    with pytest.raises(ValueError, match="no_such_field"):
        parse_args(["--config", recipe, "--no_such_field", "1"])


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("recipe", PIPELINES, ids=lambda p: os.path.relpath(p, ROOT))
def test_pipeline_recipe_validates(recipe, quick, tmp_path):
    from scaledown.config import load_pipeline_config
    from scaledown.pipeline import Pipeline

    first = open(recipe, encoding="utf-8").readline()
    assert first.startswith("# scaledown run") and os.path.relpath(recipe, ROOT) in first
    Pipeline(load_pipeline_config(recipe, quick=quick, overrides={"output_root": str(tmp_path)})).validate()
