"""The pipeline's distillation ladder without training: the grid is checked before compute, and the
fit / held-out prediction / report run on KD run directories written from a known law."""

import json
import os
import types

import numpy as np
import pytest

from scaledown.config import load_pipeline_config
from scaledown.distill_ladder import DistillLadderConfig, fit_and_predict, markdown, plan_grid, plot
from scaling.distill_law import DistillationForm, _features, supervised_terms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = [32, 48, 64, 80, 96]


@pytest.mark.parametrize(
    "config,message",
    [
        (DistillLadderConfig(teachers=[96], students=[32, 48]), "needs 6"),
        (DistillLadderConfig(teachers=[100, 96], students=[32]), "not ladder widths"),
        (DistillLadderConfig(form="full"), "needs 11"),
        (DistillLadderConfig(form="other"), "use reduced or full"),
    ],
)
def test_grid_is_checked_before_compute(config, message):
    with pytest.raises(ValueError, match=message):
        plan_grid(config, WIDTHS)
    assert plan_grid(DistillLadderConfig(), WIDTHS) == [
        (64, 32),
        (64, 48),
        (80, 32),
        (80, 48),
        (96, 32),
        (96, 48),
    ]


def test_recipe_enables_it_and_unknown_fields_are_refused(tmp_path):
    config = load_pipeline_config(
        os.path.join(ROOT, "recipes", "pipeline", "distill_ladder.yaml"), quick=True
    )
    assert config.distill_ladder.students == [32, 48] and config.distill_ladder.bootstrap == 20
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill_ladder: {studnets: [32]}\nladder: {tokens: 1000}\n")
    with pytest.raises(ValueError, match="did you mean 'distill_ladder.students'"):
        load_pipeline_config(str(bad))


def test_fit_predicts_the_held_out_student(tmp_path):
    sup = {"law": "power", "param_count": "non_embedding", "params": {"E": 3.0, "A": 400.0, "alpha": 0.45}}
    true = {"c0": 2.0, "c1": 3.0, "d1": 0.9, "k": 1.2}
    sizes = {32: 2.0e4, 48: 5.0e4, 64: 9.0e4, 80: 1.5e5, 96: 2.3e5}
    tokens = 3.0e5
    sup_loss = {w: float(supervised_terms(sup, n, tokens)["loss"][0]) for w, n in sizes.items()}
    runs = []
    for t, s in plan_grid(DistillLadderConfig(), WIDTHS):
        n, lt = np.array([sizes[s]]), np.array([sup_loss[t]])
        x = _features(n, np.array([tokens]), lt, supervised_terms(sup, n, tokens))
        loss = float(DistillationForm("reduced").predict(true, x)[0])
        d = tmp_path / f"T{t}_S{s}"
        d.mkdir()
        (d / "all_results.json").write_text(
            json.dumps(
                {
                    "eval_loss": loss,
                    "student_params": sizes[s] * 2,
                    "student_non_embedding_params": sizes[s],
                    "train_tokens": tokens,
                    "teacher_params": sizes[t] * 2,
                    "eval_teacher_loss": sup_loss[t],
                }
            )
        )
        base = tmp_path / f"rung{s}"
        base.mkdir(exist_ok=True)
        (base / "all_results.json").write_text(json.dumps({"eval_loss": sup_loss[s]}))
        runs.append({"teacher_width": t, "width": s, "dir": str(d), "baseline_dir": str(base)})
    pipe = types.SimpleNamespace(
        root=str(tmp_path),
        log=lambda m: None,
        config=types.SimpleNamespace(seed=0, fit=types.SimpleNamespace(param_count="non_embedding")),
    )
    result = fit_and_predict(pipe, runs, DistillLadderConfig(bootstrap=3), {"full": sup})
    assert result["holdout"]["run"] == "T96_S48"  # the largest student with the strongest teacher
    assert abs(result["holdout"]["error_pct"]) < 0.1
    assert set(result["holdout"]["naive_error_pct"]) == {"supervised_law", "mean_of_same_width"}
    assert {a["width"] for a in result["advice"]} == {32, 48}
    assert all(a["verdict"] in ("distill", "supervised") for a in result["advice"])
    result["plot"] = "plots/distill_ladder.png"
    assert os.path.getsize(plot(result, result["dfit"], str(tmp_path / "plots" / "distill_ladder.png"))) > 0
    text = markdown(result)
    assert "T96_S48" in text and "## Distillation ladder" in text
