"""`scaledown run`: bad configs fail before any training; --quick runs end to end and resumes."""

from __future__ import annotations

import json
import os
import time

import pytest

from scaledown.cli import main as scaledown_main
from scaledown.config import load_pipeline_config
from scaledown.pipeline import Pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "pipeline", "demo.yaml")


def _validate(tmp_path, **overrides):
    config = load_pipeline_config(DEMO, quick=True, overrides={"output_root": str(tmp_path), **overrides})
    Pipeline(config).validate()


BAD = [
    ({"ladder": {"base_config": {"model_type": "transformer-xxl"}}}, "model_type"),
    ({"ladder": {"tokens": 100}}, "less than one step"),
    ({"student": {"width": 256}}, "not smaller than the teacher"),
    ({"data": {"dataset_name": "json", "data_files": "/nonexistent/train.jsonl"}}, "data_files"),
    ({"ladder": {"widths": [32, 64, 96]}}, "needs at least"),
    ({"distill": {"alpha": 2.0}}, "alpha"),
    ({"studnet": {"width": 64}}, "did you mean 'student'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[1] for b in BAD])
def test_bad_config_fails_before_training(tmp_path, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _validate(tmp_path, **overrides)
    assert not os.path.exists(tmp_path / "demo-quick")


def test_cli_reports_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "ladder: {base_config: {model_type: nonsense}, widths: [64, 96, 128, 160, 192], tokens: 1.0e5}\n"
        "student: {width: 64}\n"
    )
    assert scaledown_main(["run", "--config", str(bad), "--output-root", str(tmp_path)]) == 2
    assert "model_type" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_pipeline_end_to_end_and_resume(tmp_path):
    start = time.time()
    assert scaledown_main(["run", "--quick", "--config", DEMO, "--output-root", str(tmp_path)]) == 0
    first = time.time() - start
    run = tmp_path / "demo-quick"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("teacher", "student", "baseline"):
        assert summary[key]["params"] > 0 and summary[key]["test_loss"] > 0
        assert summary[key]["tokens_per_second"] > 0 and summary[key]["disk_bytes"] > 0
    assert summary["teacher"]["params"] > summary["student"]["params"] == summary["baseline"]["params"]
    assert len(summary["student"]["seeds"]) == 2
    # The baseline at the pipeline seed is the ladder rung of the student's width (same config,
    # data, seed, steps and schedule), reused rather than trained again; other seeds are trained.
    assert not (run / "baseline_seed0").exists() and (run / "baseline_seed1" / "all_results.json").is_file()
    assert summary["baseline"]["seeds"][0]["dir"].endswith(os.path.join("ladder", "w48"))
    assert summary["fit"]["law"] == "power" and set(summary["fit"]["params"]) == {"E", "A", "alpha"}
    h = summary["holdout_prediction"]
    assert h["predicted"] > 0 and h["actual"] > 0
    for key in ("kd_gain", "seconds"):
        assert key in summary
    report = (run / "report.md").read_text()
    assert "KD gain" in report and "plots/scaling_fit.png" in report
    # where the student is and what to run next, with the command that made this run
    assert "## Where things are" in report and f"scaledown serve {summary['where']['student']}" in report
    assert os.path.isfile(os.path.join(summary["where"]["student"], "model.safetensors"))
    assert "scaledown run --config" in report and "--quick --output-root" in report
    # KD against labels-only at every budget the KD students were evaluated at
    curve = summary["learning_curve"]
    assert len(curve) >= 2 and all(r["kd_seeds"] == 2 and r["baseline_seeds"] >= 1 for r in curve)
    assert [r["tokens"] for r in curve] == sorted(r["tokens"] for r in curve)
    assert "## KD against labels-only, by training budget" in report
    for plot in ("scaling_fit.png", "learning_curves.png", "frontier.png"):
        png = run / "plots" / plot
        assert png.stat().st_size > 10_000, plot  # a blank figure compresses to a few kB
    # A second run reuses every stage.
    start = time.time()
    assert scaledown_main(["run", "--quick", "--config", DEMO, "--output-root", str(tmp_path)]) == 0
    assert time.time() - start < 0.5 * first
    assert summary["config"]["distill"]["alpha"] == 0.5 and "## Configuration" in report
    # A copy of the config with another alpha (same name) reruns distillation and what reads it, only.
    import yaml

    changed = yaml.safe_load(open(DEMO))
    changed["distill"]["alpha"] = 0.9
    copy = tmp_path / "alpha09.yaml"
    copy.write_text(yaml.safe_dump(changed))
    kd_weights = (run / "kd_seed1" / "model.safetensors").stat().st_mtime_ns
    baseline_weights = (run / "baseline_seed1" / "model.safetensors").stat().st_mtime_ns
    assert scaledown_main(["run", "--quick", "--config", str(copy), "--output-root", str(tmp_path)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reused_stages"] == ["tokenizer", "ladder", "fit", "teacher", "student", "baseline"]
    assert summary["config"]["distill"]["alpha"] == 0.9
    assert json.loads((run / "kd_seed1" / "run_fingerprint.json").read_text())["fingerprint"]["alpha"] == 0.9
    assert (run / "kd_seed1" / "model.safetensors").stat().st_mtime_ns != kd_weights
    assert (run / "baseline_seed1" / "model.safetensors").stat().st_mtime_ns == baseline_weights
    assert "alpha: 0.9" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    "student,expected",
    [
        ({"target_loss": 4.6}, 64),  # smallest width whose predicted loss reaches 4.6
        ({"flops_budget": 4.0e11}, 48),  # largest width whose KD cost (6 N_s D + 2 N_t D) fits
    ],
)
def test_student_size_chosen_from_the_fit(tmp_path, student, expected):
    config = load_pipeline_config(
        DEMO, overrides={"output_root": str(tmp_path), "student": {"width": None, **student}}
    )
    pipeline = Pipeline(config)
    pipeline.validate()
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    (teacher_dir / "all_results.json").write_text(json.dumps({"student_params": 430_752}))
    # L(N) = 4.245 + 27.45 N^-0.3793, the demo's fit: N(w48)=55.5k -> 4.64, N(w64)=107k -> 4.57.
    fit = {"full": {"law": "power", "params": {"E": 4.245, "A": 27.45, "alpha": 0.3793}}}
    chosen = pipeline.pick_student(fit, {"dir": str(teacher_dir), "width": 96})
    assert chosen["width"] == expected
    assert chosen["params"] < 430_752


def test_unreachable_target_loss_is_refused(tmp_path):
    config = load_pipeline_config(
        DEMO, overrides={"output_root": str(tmp_path), "student": {"width": None, "target_loss": 1.0}}
    )
    pipeline = Pipeline(config)
    pipeline.validate()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "all_results.json").write_text(json.dumps({"student_params": 430_752}))
    with pytest.raises(ValueError, match="target_loss"):
        pipeline.pick_student(
            {"full": {"law": "power", "params": {"E": 4.245, "A": 27.45, "alpha": 0.3793}}},
            {"dir": str(tmp_path / "t"), "width": 96},
        )
