"""Report figures said no more strongly than their noise: the KD verdict and the throughput column."""

from __future__ import annotations

import json

import pytest
import torch

from scaledown import evaluation
from scaledown.report import render_markdown, render_table
from scaledown.significance import kd_headline, kd_verdict


@pytest.mark.parametrize(
    "improvement,spread,seeds,verdict,significant",
    [
        (0.017, 0.020, 2, "within seed noise", False),  # the --quick report that said "closed 111 %"
        (0.020, 0.020, 3, "within seed noise", False),
        (0.050, 0.020, 2, "better beyond seed noise", True),
        (-0.05, 0.020, 2, "worse beyond seed noise", True),
        (0.050, 0.000, 1, "one seed: noise unknown", None),
    ],
)
def test_kd_verdict(improvement, spread, seeds, verdict, significant):
    assert kd_verdict(improvement, spread, seeds) == {"kd_verdict": verdict, "kd_significant": significant}


def _row(loss, seeds, tps=1000.0):
    return {
        "params": 1000,
        "test_loss": loss,
        "perplexity": 2.718**loss,
        "tokens_per_second": tps,
        "tokens_per_second_iqr": [0.9 * tps, 1.1 * tps],
        "disk_bytes": 4000,
        "seeds": [{"dir": f"d{i}", "test_loss": x} for i, x in enumerate(seeds)],
    }


def _summary(kd_seeds, base_seeds, teacher=4.80):
    kd, base = sum(kd_seeds) / len(kd_seeds), sum(base_seeds) / len(base_seeds)
    spread = max(max(kd_seeds) - min(kd_seeds), max(base_seeds) - min(base_seeds))
    s = {
        "name": "t",
        "teacher": _row(teacher, [teacher], 500.0),
        "student": {**_row(kd, kd_seeds), "width": 32, "reason": "given"},
        "baseline": _row(base, base_seeds),
        "kd_gain": (base - kd) / (base - teacher),
        "kd_improvement": base - kd,
        "seed_spread": spread,
        "retention": 0.9,
        "perplexity_retention": 0.8,
        "compression": 4.0,
        "speedup": 2.0,
        "speedup_iqr": [1.8, 2.2],
        "holdout_prediction": None,
        "fit": {
            "law": "power",
            "params": {"E": 1.0, "A": 2.0, "alpha": 0.3},
            "objective": 1e-4,
            "n_points": 5,
        },
        "ladder": [],
        "plots": [],
        "seconds": 1.0,
        "invocation_seconds": 1.0,
        "stage_seconds": {},
        "reused_stages": [],
        "throughput": {
            "batch": [8, 128],
            "threads": 2,
            "device": "cpu",
            "rounds": 15,
            "warmup_rounds": 3,
            "loadavg": [6.5, 6.0, 5.0],
        },
    }
    s.update(kd_verdict(s["kd_improvement"], spread, min(len(kd_seeds), len(base_seeds))))
    return s


def _kd_line(markdown):
    return next(line for line in markdown.splitlines() if line.startswith("- **KD gain"))


def test_gain_within_seed_noise_is_said_in_the_headline():
    # baseline 5.017 -> KD 5.000 (improvement 0.017), teacher 5.0017: "111 %" of the gap, seed spread 0.020
    s = _summary([4.990, 5.010], [5.007, 5.027], teacher=5.0017)
    assert s["kd_gain"] > 1.0 and s["kd_improvement"] < s["seed_spread"]
    line = _kd_line(render_markdown(s))
    assert line.startswith("- **KD gain: within seed noise.**")
    assert "closed" not in line and "does not show that distillation helped" in line


def test_gain_beyond_seed_noise_is_stated():
    s = _summary([4.90, 4.91], [5.00, 5.01])
    assert s["kd_significant"] is True
    line = _kd_line(render_markdown(s))
    assert line.startswith("- **KD gain:** distillation closed") and "exceeds the seed spread" in line
    s = _summary([4.90], [5.00])
    assert kd_headline(s).startswith("- **KD gain: untested against noise**")


def test_table_and_report_say_what_throughput_measures():
    s = _summary([4.90, 4.91], [5.00, 5.01])
    header = render_table(s).splitlines()[0]
    assert "forward tok/s" in header and "batch 8x128" in header and "2 threads" in header
    note = next(line for line in render_markdown(s).splitlines() if line.startswith("Throughput:"))
    assert "8 x 128 = 1,024 tokens" in note and "3 warm-up rounds" in note and "15 rounds" in note
    assert "load average 6.5" in note


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from helpers import tiny_llama

    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, hidden, loss in (("teacher", 64, 4.0), ("kd", 32, 4.5), ("base", 32, 4.6)):
        path = root / name
        model = tiny_llama(hidden=hidden, layers=1)
        model.save_pretrained(path)
        (path / "all_results.json").write_text(
            json.dumps({"test_loss": loss, "eval_loss": loss, "student_params": model.num_parameters()})
        )
        dirs[name] = str(path)
    return dirs


def test_throughput_reports_its_spread_and_conditions(model_dirs):
    batch = torch.randint(3, 64, (2, 16))
    speed = evaluation.throughput(
        {"teacher": model_dirs["teacher"], "student": model_dirs["kd"]}, batch, rounds=6, warmup_rounds=2
    )
    assert speed["batch"] == [2, 16] and speed["threads"] == torch.get_num_threads()
    assert speed["rounds"] == 6 and speed["warmup_rounds"] == 2 and speed["device"] == "cpu"
    for m in speed["models"].values():
        q1, q3 = m["iqr"]
        assert 0 < m["min"] <= q1 <= m["tokens_per_second"] <= q3 <= m["max"]
    assert speed["speedups"]["teacher"] == {"median": 1.0, "iqr": [1.0, 1.0]}
    assert speed["speedups"]["student"]["iqr"][0] <= speed["speedups"]["student"]["median"]


def test_evaluation_carries_verdict_and_throughput_conditions(model_dirs, monkeypatch):
    monkeypatch.setattr(evaluation, "_test_batch", lambda pipeline: torch.randint(3, 64, (2, 16)))
    runs = lambda name: {"runs": [{"dir": model_dirs[name]}, {"dir": model_dirs[name]}]}  # noqa: E731
    out = evaluation.evaluate_models(None, {"dir": model_dirs["teacher"]}, runs("kd"), runs("base"))
    assert out["kd_improvement"] == pytest.approx(0.1) and out["seed_spread"] == 0.0
    assert out["kd_verdict"] == "better beyond seed noise" and out["kd_significant"] is True
    assert out["throughput"]["batch"] == [2, 16] and len(out["student"]["tokens_per_second_iqr"]) == 2
    assert out["speedup_iqr"][0] <= out["speedup"] <= out["speedup_iqr"][1]


def test_report_counts_the_refits_that_hit_a_bound():
    from scaledown.report import _slim_fit

    s = _summary([4.90, 4.91], [5.00, 5.01])
    s["fit"] = _slim_fit(
        {
            **s["fit"],
            "ci": {"E": [0.5, 1.5], "A": [1.0, None], "alpha": [0.1, None]},
            "ci_status": {"E": "ok", "A": "unbounded", "alpha": "unbounded"},
            "data": {},
            "bootstrap": {
                "n": 20,
                "n_converged": 20,
                "n_failed": 0,
                "n_at_bound": 9,
                "samples": [[1]],
                "at_bound": {"alpha at or above the top of its search range [0.01, 2.5]": 9},
            },
        }
    )
    assert "samples" not in s["fit"]["bootstrap"]
    markdown = render_markdown(s)
    assert "alpha = 0.3 [0.1, unbounded]" in markdown
    assert "bootstrap: 20 refits, 11 converged inside the search ranges, 9 at a bound" in markdown
