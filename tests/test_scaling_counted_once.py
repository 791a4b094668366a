"""Scaling data counted once, envelopes that never rise, and commands that refuse what they cannot do."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_runs import write_ladder

from scaling.cli import main
from scaling.logs import load_runs, read_run_dir
from scaling.optimal import IsoFLOPWarning, envelope_analysis

TINY_RUN = """\
task: causal-lm
alpha: 0.0
model_config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
               num_attention_heads: 2, num_key_value_heads: 2}}
dataset_name: json
data_files: {data}
block_size: 32
tokenizer_vocab_size: 300
max_steps: 4
per_device_train_batch_size: 4
eval_strategy: steps
eval_steps: 2
save_strategy: "no"
logging_steps: 1
report_to: none
disable_tqdm: true
"""


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    write_ladder(root)
    return root


@pytest.mark.slow
def test_real_trainer_run_counts_its_final_evaluation_once(tmp_path):
    """`distill train` logs the final evaluation twice (eval_steps and the closing evaluate())."""
    import random

    from distill.train import main as train_main

    rng = random.Random(0)
    words = "the of and to a in is it that for on with as was by this be are from or".split()
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n" for _ in range(80)
        )
    )
    recipe = tmp_path / "run.yaml"
    recipe.write_text(TINY_RUN.format(data=data))
    out = tmp_path / "run"
    train_main(["--config", str(recipe), "--output_dir", str(out)])

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    eval_steps = [h["step"] for h in history if "eval_loss" in h]
    assert eval_steps == [2, 4, 4]  # what the fixture writer in trainer_runs.py copies
    final = json.loads((out / "all_results.json").read_text())["eval_loss"]

    points = read_run_dir(out, points="all")
    assert [p.step for p in points] == [2, 4]
    assert points[-1].loss == pytest.approx(final)
    with pytest.warns(UserWarning, match="given more than once; counted once"):
        again = load_runs([out, out, tmp_path], points="all")  # one directory, three ways
    assert [p.step for p in again] == [2, 4]


def test_ladder_every_evaluation_point_once(ladder, capsys):
    rc, out, err = _cli(capsys, "runs", ladder, "--points", "all", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    pairs = {(r["params"], r["tokens"]) for r in rows}
    assert len(rows) == len(pairs) == 20  # 5 rungs x 4 evaluations
    assert len({(r["run"], r["step"]) for r in rows}) == 20


def test_holdout_rows_once(ladder, capsys):
    largest = read_run_dir(ladder / "w96")[0].flops
    second = read_run_dir(ladder / "w80")[0].flops
    rc, out, err = _cli(
        capsys,
        "fit",
        ladder,
        "--points",
        "all",
        "--law",
        "chinchilla",
        "--holdout-above",
        (largest + second) / 2,
        "--json",
        "--quiet",
    )
    assert rc == 0, err
    held = json.loads(out)["holdout"]
    keys = [(r["params"], r["tokens"]) for r in held["points"]]
    assert len(keys) == len(set(keys)) == held["n_test"]


# ------------------------------------------------------------------ envelope (Approach 1)
def _interp_at(curve_c, curve_l, c):
    return float(np.interp(np.log(c), np.log(curve_c), curve_l))


def test_envelope_never_rises_where_a_small_run_ends_low():
    # run "small" ends at loss 2.0 at C = 10; "big" only gets below 2.0 after C = 40
    c = [1, 10, 5, 20, 40, 100]
    loss = [3.0, 2.0, 3.5, 2.4, 2.0, 1.5]
    env = envelope_analysis([1, 1, 10, 10, 10, 10], c, loss, ["small"] * 2 + ["big"] * 4, num=40)
    losses = [p["loss"] for p in env["points"]]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    after = [p for p in env["points"] if 10 < p["flops"] < 30]  # big: 2.4 at C = 20
    assert after and all(p["run"] == "small" and p["loss"] == 2.0 for p in after)
    assert all(p["reached_at_flops"] <= 10.0 for p in after)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(1.0, 5.0), min_size=2, max_size=6), min_size=2, max_size=5),
    st.lists(st.floats(0.0, 3.0), min_size=5, max_size=5),
)
def test_envelope_is_the_running_minimum_of_every_curve(curves, starts):
    n, c, loss, run = [], [], [], []
    reference = {}
    for i, (ls, start) in enumerate(zip(curves, starts)):
        cs = 10.0 ** (start + np.arange(len(ls)) * 0.5)
        reference[f"r{i}"] = (cs, np.array(ls))
        n += [10.0**i] * len(ls)
        c += list(cs)
        loss += ls
        run += [f"r{i}"] * len(ls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsoFLOPWarning)  # an envelope made of one run
        env = envelope_analysis(n, c, loss, run, num=30)
    pts = env["points"]
    assert all(b["loss"] <= a["loss"] for a, b in zip(pts, pts[1:]))
    grid = [p["flops"] for p in pts]
    for p in pts:
        cs, ls = reference[p["run"]]
        assert p["reached_at_flops"] <= p["flops"] * (1 + 1e-12)
        assert p["loss"] == pytest.approx(_interp_at(cs, ls, p["reached_at_flops"]), abs=1e-9)
        # no curve goes lower at any grid compute up to p["flops"]
        for cs, ls in reference.values():
            for g in grid:
                if g <= p["flops"] and cs[0] <= g <= cs[-1]:
                    assert p["loss"] <= _interp_at(cs, ls, g) + 1e-9


def test_cli_envelope_and_pipeline_frontier_count_the_same_parameters(ladder, tmp_path, capsys):
    from scaledown.config import load_pipeline_config
    from scaledown.pipeline import Pipeline
    from scaledown.report import frontier_summary, plot_frontier

    rc, out, err = _cli(capsys, "envelope", ladder, "--points", "all", "--json")
    assert rc == 0, err
    cli = json.loads(out)
    demo = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "pipeline", "demo.yaml"
    )
    config = load_pipeline_config(
        demo, quick=True, overrides={"output_root": str(tmp_path), "fit": {"bootstrap": 0}}
    )
    pipeline = Pipeline(config, log=lambda m: None)
    os.makedirs(pipeline.root)
    fit = pipeline.fit_ladder({"runs": [{"dir": str(d)} for d in sorted(ladder.iterdir())]})
    frontier = frontier_summary(fit)
    assert cli["param_count"] == frontier["param_count"] == fit["full"]["param_count"] == "non_embedding"
    assert cli["a"] == pytest.approx(frontier["a"])
    plot_frontier(fit, str(tmp_path / "frontier.png"))  # its legend reads the same summary
    rc, out, _ = _cli(capsys, "envelope", ladder, "--points", "all", "--json", "--param-count", "total")
    assert json.loads(out)["param_count"] == "total" and json.loads(out)["a"] != pytest.approx(cli["a"])


# -------------------------------------------------------- refuse what cannot be answered
def test_predict_tokens_on_a_power_law_is_an_error(ladder, tmp_path, capsys):
    fit = tmp_path / "fit.json"
    rc, _, err = _cli(capsys, "fit", ladder, "--law", "power", "--out", fit, "--quiet")
    assert rc == 0, err
    rc, out, err = _cli(capsys, "predict", "--fit", fit, "--params", 1e6)
    assert rc == 0 and "loss" in json.loads(out)
    rc, out, err = _cli(capsys, "predict", "--fit", fit, "--params", 1e6, "--tokens", 1e9)
    assert rc == 2 and out == ""
    assert "no token term" in err and "--tokens" in err


def test_isoflop_on_a_one_budget_ladder_says_what_it_needs(ladder, capsys):
    rc, out, err = _cli(capsys, "isoflop", ladder, "--json")
    assert rc == 2 and out == ""
    assert "needs, for each of two or more compute budgets, runs of at least 3 model sizes" in err
    assert "--isoflop" in err
