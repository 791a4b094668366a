"""`scaledown run`: a changed setting reruns the stage that reads it and everything downstream, and only those."""

from __future__ import annotations

import json
import os

import pytest

from scaledown.config import load_pipeline_config
from scaledown.pipeline import Pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "pipeline", "demo.yaml")
ALL = ["tokenizer", "ladder", "fit", "teacher", "student", "distill", "baseline", "evaluate"]


def run_recorded(tmp_path, monkeypatch, **overrides):
    """Run the --quick pipeline with every stage's work replaced by a stub; return (stages run, log lines)."""
    config = load_pipeline_config(DEMO, quick=True, overrides={"output_root": str(tmp_path), **overrides})
    ran, lines = [], []

    def stub(name, result):
        def fn(*args, **kwargs):
            ran.append(name)
            return result

        return fn

    pipeline = Pipeline(config, log=lines.append)
    monkeypatch.setattr(pipeline, "make_tokenizer", stub("tokenizer", {"path": "tok"}))
    monkeypatch.setattr(pipeline, "train_ladder", stub("ladder", {"runs": [{"dir": "w32"}]}))
    monkeypatch.setattr(pipeline, "fit_ladder", stub("fit", {"full": {}}))
    monkeypatch.setattr(pipeline, "pick_teacher", stub("teacher", {"dir": "w96"}))
    monkeypatch.setattr(pipeline, "pick_student", stub("student", {"width": 48}))
    monkeypatch.setattr(
        pipeline,
        "train_students",
        lambda student, teacher, distill: stub("distill" if distill else "baseline", {"runs": []})(),
    )
    monkeypatch.setattr("scaledown.evaluation.evaluate_models", stub("evaluate", {}))
    monkeypatch.setattr("scaledown.report.write_report", lambda *a: {})
    pipeline.run()
    return ran, lines


@pytest.mark.parametrize(
    "overrides,rerun",
    [
        ({"distill": {"alpha": 0.9}}, ["distill", "evaluate"]),
        ({"distill": {"seeds": [0, 1, 2]}}, ["distill", "baseline", "evaluate"]),
        ({"fit": {"bootstrap": 30}}, ["fit", "student", "distill", "baseline", "evaluate"]),
        (
            {"ladder": {"tokens": 40960}},
            ["ladder", "fit", "teacher", "student", "distill", "baseline", "evaluate"],
        ),
        ({"data": {"tokenizer_vocab_size": 512}}, ALL),
        (
            {"data": {"max_test_samples": 32}},
            ["ladder", "fit", "teacher", "student", "distill", "baseline", "evaluate"],
        ),
    ],
)
def test_changed_input_reruns_that_stage_and_downstream_only(tmp_path, monkeypatch, overrides, rerun):
    assert run_recorded(tmp_path, monkeypatch)[0] == ALL
    assert run_recorded(tmp_path, monkeypatch)[0] == []  # unchanged: every stage reused
    ran, lines = run_recorded(tmp_path, monkeypatch, **overrides)
    assert ran == rerun
    first = next(line for line in lines if "rerunning" in line)
    key, value = next(iter(overrides.items()))
    field, new = next(iter(value.items()))
    assert (
        first.startswith(f"[{rerun[0]}] {key}.{field} ")
        and f"→ {json.dumps(new) if isinstance(new, list) else new}" in first
    )
    assert run_recorded(tmp_path, monkeypatch, **overrides)[0] == []


def test_alpha_change_is_logged_with_old_and_new_value(tmp_path, monkeypatch):
    run_recorded(tmp_path, monkeypatch)
    _, lines = run_recorded(tmp_path, monkeypatch, distill={"alpha": 0.9})
    assert "[distill] distill.alpha 0.5 → 0.9, rerunning" in lines
    assert "[evaluate] distill stage changed, rerunning" in lines
    assert any(line.startswith("[baseline] done earlier with the same inputs") for line in lines)


def test_marker_without_inputs_is_rerun(tmp_path, monkeypatch):
    """A marker written before stage inputs were recorded cannot be trusted: the stage reruns (and, as it
    gives the same result from the same inputs, the stages below it are reused)."""
    run_recorded(tmp_path, monkeypatch)
    marker = tmp_path / "demo-quick" / "stages" / "fit.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in record.items() if k != "inputs"}))
    ran, lines = run_recorded(tmp_path, monkeypatch)
    assert ran == ["fit"] and "[fit] no recorded inputs, rerunning" in lines


def test_scaledown_ladder_leaves_finished_rungs_to_the_run_fingerprint(tmp_path, monkeypatch):
    """`scaledown ladder` into rungs of an earlier ladder: each goes to `distill train`, whose fingerprint
    reuses an unchanged finished rung and refuses a changed one, instead of skipping on all_results.json alone."""
    from scaledown.cli import main as scaledown_main

    (tmp_path / "w64").mkdir()
    (tmp_path / "w64" / "all_results.json").write_text(
        "{}"
    )  # an earlier ladder's rung, perhaps other settings
    calls = []
    monkeypatch.setattr("distill.train.main", calls.append)
    assert (
        scaledown_main(
            [
                "ladder",
                "--base-config",
                '{"model_type": "llama"}',
                "--widths",
                "64,96",
                "--vocab-size",
                "512",
                "--tokens",
                "1e4",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert [c[c.index("--output_dir") + 1] for c in calls] == [str(tmp_path / "w64"), str(tmp_path / "w96")]
