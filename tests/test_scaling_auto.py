"""`scaling fit --law auto`: leave-the-largest-models-out validation chooses the form that
extrapolates inside the data, keeps Chinchilla unless another form is significantly better, and
gives a band that grows with the distance in model size or compute."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scaling.autolaw import extrapolation_band, select_law
from scaling.cli import main
from scaling.laws import get_law


def _ladder(law, params, noise=0.0, seed=0):
    n = np.repeat(np.geomspace(2e7, 6e8, 5), 4)
    d = n * np.tile([5.0, 20.0, 80.0, 320.0], 5)
    loss = get_law(law).predict(params, n, d)
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))


GAMMA = {"E": 1.7, "A": 400.0, "B": 900.0, "alpha": 0.34, "beta": 0.3, "gamma": 0.45}
CHIN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def test_chooses_the_form_that_generated_the_data():
    sel = select_law(*_ladder("chinchilla_gamma", GAMMA), candidates=("chinchilla", "chinchilla_gamma"))
    assert sel["chosen"] == "chinchilla_gamma"
    g, c = sel["scores"]["chinchilla_gamma"], sel["scores"]["chinchilla"]
    assert g["mape"] < 0.01 < c["mape"] and all(a < b for a, b in zip(g["fold_mape"], c["fold_mape"]))
    # Chinchilla data: every form fits, the simplest is kept
    sel = select_law(*_ladder("chinchilla", CHIN, noise=0.002), candidates=("chinchilla", "chinchilla_gamma"))
    assert sel["chosen"] == "chinchilla"


def test_band_grows_with_distance_and_spans_close_candidates():
    sel = {
        "chosen": "chinchilla",
        "band_pct": 1.0,
        "band_pct_per_decade": 2.0,
        "fitted_max_flops": 6e18,
    }
    fits = {"chinchilla": CHIN}
    near = extrapolation_band(sel, fits, 1e8, 1e10)  # 6e18: at the edge -> the floor, 1 %
    far = extrapolation_band(sel, fits, 1e10, 1e12)  # 4 decades out -> 8 %
    assert near["band_pct"] == pytest.approx(1.0) and far["band_pct"] == pytest.approx(8.0)
    assert far["band"] == pytest.approx([far["loss"] * 0.92, far["loss"] * 1.08])
    both = {"chinchilla": CHIN, "chinchilla_gamma": GAMMA}  # a close candidate predicts elsewhere
    wide = extrapolation_band(sel, both, 1e8, 1e10)
    assert (
        wide["band"][0]
        <= min(wide["candidates"].values())
        <= max(wide["candidates"].values())
        <= wide["band"][1]
    )
    assert wide["band"][1] - wide["band"][0] > near["band"][1] - near["band"][0]


def test_cli_auto_fit_predict_and_holdout(tmp_path, capsys):
    # 0.03 % noise: the baseline is gadre (Chinchilla with alpha = beta), which extrapolates this
    # ladder better than Chinchilla; at 0.05 % noise gamma's gain over it, 0.11 points, is not
    # significant on 12 held-out runs (t = -1.7), at 0.03 % it is (t = -3.6)
    n, d, loss = _ladder("chinchilla_gamma", GAMMA, noise=0.0003)
    big_n, big_d = np.array([2e9, 2e9]), np.array([2e11, 8e11])
    big = get_law("chinchilla_gamma").predict(GAMMA, big_n, big_d)
    table = tmp_path / "runs.csv"
    rows = [*zip(n, d, loss), *zip(big_n, big_d, big)]
    table.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    out = tmp_path / "fit.json"
    rc = main(["fit", str(table), "--law", "auto", "--holdout-above", "1e21", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    fit = json.loads(out.read_text())
    assert fit["law"] == fit["selection"]["chosen"] == "chinchilla_gamma" and fit["law_requested"] == "auto"
    assert fit["holdout"]["n_test"] == 2 and fit["holdout"]["coverage"] == 1.0
    assert fit["holdout"]["mape"] < 1.0
    capsys.readouterr()
    assert main(["predict", "--fit", str(out), "--params", "2e9", "--tokens", "2e11"]) == 0
    pred = json.loads(capsys.readouterr().out)
    lo, hi = pred["extrapolation_band"]
    assert lo <= pred["loss"] <= hi and pred["extrapolation_band_pct"] >= fit["selection"]["band_pct"]


def test_too_few_runs_for_auto_is_a_clear_error(tmp_path, capsys):
    table = tmp_path / "few.csv"
    n, d, loss = _ladder("chinchilla", CHIN)
    table.write_text(
        "params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in list(zip(n, d, loss))[:7])
    )
    assert main(["fit", str(table), "--law", "auto", "--quiet"]) == 2
    assert "--law auto needs more than 7 runs" in capsys.readouterr().err


def test_folds_hold_out_the_largest_models_and_leave_three_sizes():
    n, d, loss = _ladder("chinchilla", CHIN, noise=0.002)  # 5 sizes x 4 token budgets
    sel = select_law(n, d, loss, candidates=("chinchilla", "chinchilla_gamma"))
    assert sel["fold_kind"] == "models"
    # 20 %: the largest size (4 runs); 35 %: the two largest (8 runs), leaving 3 sizes
    assert [f["held_out"] for f in sel["folds"]] == [4, 8]
    assert [f["fitted_sizes"] for f in sel["folds"]] == [4, 3]
    assert sel["folds"][0]["min_held_out_params"] == pytest.approx(n.max())
    # four sizes: only the largest can be held out (two left cannot show curvature in N)
    keep = n > n.min()
    sel = select_law(n[keep], d[keep], loss[keep], candidates=("chinchilla", "chinchilla_gamma"))
    assert [f["fitted_sizes"] for f in sel["folds"]] == [3]
    # three sizes: no size fold leaves three, so the largest-compute runs are held out instead
    keep = n > np.unique(n)[1]
    sel = select_law(n[keep], d[keep], loss[keep], candidates=("chinchilla", "chinchilla_gamma"))
    assert sel["fold_kind"] == "compute" and sel["folds"][0]["min_held_out_flops"] > 0


def test_a_lower_mean_on_a_few_held_out_runs_is_not_enough():
    """0.1 % noise on a chinchilla_gamma ladder: gamma's mean error on the held-out models is
    lower, but not significantly (paired t-test), so the default law is kept. The rule before
    (held out by compute, a lower mean on every fold) chose gamma here."""
    sel = select_law(
        *_ladder("chinchilla_gamma", GAMMA, noise=0.001), candidates=("chinchilla", "chinchilla_gamma")
    )
    (cmp,) = sel["comparisons"]
    assert cmp["law"] == "chinchilla_gamma" and cmp["against"] == "chinchilla" == sel["baseline"]
    assert cmp["mean_diff_pct"] < 0 and all(x < 0 for x in cmp["fold_mean_diff_pct"])
    assert -cmp["t_crit"] < cmp["t"] < 0 and not cmp["chosen_over"]
    assert sel["chosen"] == "chinchilla"


DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "scaling"


def test_public_c4_ladder_keeps_the_restricted_law():
    """Gadre et al.'s C4 ladder, fitted below 1B parameters as in the benchmark. chinchilla_gamma
    scores a lower mean than Chinchilla on the held-out 411M models (by 0.1 points, paired t = -0.3)
    and then errs twice as much on the 1.4B and 6.9B runs; an earlier rule chose it. The baseline
    is now gadre (Chinchilla with alpha = beta), which errs half as much as either on the 411M
    models, and no larger form is significantly better."""
    rows = list(csv.DictReader((DATA / "overtraining_c4.csv").open()))
    n, d, loss = (np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss"))
    small = n < 1e9
    sel = select_law(n[small], d[small], loss[small])
    assert sel["fold_kind"] == "models" and sel["baseline"] == sel["chosen"] == "gadre"
    scores = sel["scores"]
    assert scores["chinchilla_gamma"]["mape"] < scores["chinchilla"]["mape"]
    assert scores["gadre"]["mape"] < 0.6 * scores["chinchilla"]["mape"]
    assert not any(c["chosen_over"] for c in sel["comparisons"])
    # the held-out 411M models are predicted too low by every form, as the 1.4B and 6.9B runs are
    assert all(np.mean(v["errors_pct"]) < 0 for v in scores.values())


def test_band_counts_the_distance_in_model_size():
    """A larger model on fewer tokens can be within the fitted compute yet beyond the fitted
    models: the band grows with the larger of the two distances."""
    sel = {
        "chosen": "chinchilla",
        "band_pct": 1.0,
        "band_pct_per_decade": 2.0,
        "fitted_max_flops": 6e20,
        "fitted_max_params": 1e9,
    }
    fits = {"chinchilla": CHIN}
    inside = extrapolation_band(sel, fits, 1e9, 1e11)  # the largest fitted model, at the edge
    bigger = extrapolation_band(sel, fits, 1e11, 1e9)  # 2 decades more parameters, same compute
    assert inside["band_pct"] == pytest.approx(1.0) and bigger["band_pct"] == pytest.approx(4.0)
    del sel["fitted_max_params"]  # fits written before the size distance: compute only
    assert extrapolation_band(sel, fits, 1e11, 1e9)["band_pct"] == pytest.approx(1.0)
