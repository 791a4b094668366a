"""`scaling fit --law auto`: leave-the-largest-out validation chooses the form that extrapolates
inside the data, keeps Chinchilla unless another form wins every fold, and gives a band."""

import json

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
    n, d, loss = _ladder("chinchilla_gamma", GAMMA, noise=0.001)
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
