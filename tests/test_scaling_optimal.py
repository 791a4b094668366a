"""Compute-optimal allocation, IsoFLOP (Approach 2), envelope (Approach 1), holdout check."""

import numpy as np
import pytest

from scaling.fit import fit_runs
from scaling.laws import get_law
from scaling.logs import RunPoint, ScalingDataError
from scaling.optimal import (
    IsoFLOPWarning,
    allocation,
    compute_optimal,
    compute_optimal_numeric,
    envelope_analysis,
    isoflop_analysis,
    optimal_from_fit,
    parse_cost,
    predict_from_fit,
)

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
KAPLAN = {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}


def test_closed_form_chinchilla_allocation():
    al = allocation(HOFFMANN)
    assert al["a"] == pytest.approx(0.28 / 0.62) and al["b"] == pytest.approx(0.34 / 0.62)
    c = np.array([1e21, 1e23])
    opt = compute_optimal("chinchilla", HOFFMANN, c)
    np.testing.assert_allclose(6 * opt["params"] * opt["tokens"], c, rtol=1e-12)
    ratio = opt["params"][1] / opt["params"][0]
    assert np.log(ratio) / np.log(100) == pytest.approx(al["a"])
    # the optimum is a minimum along the constant-compute line
    law = get_law("chinchilla")
    n = opt["params"][0]
    for f in (0.8, 1.25):
        assert law.predict(HOFFMANN, n * f, 1e21 / (6 * n * f)) > opt["loss"][0]


@pytest.mark.parametrize("law,params", [("chinchilla", HOFFMANN), ("kaplan", KAPLAN)])
def test_numeric_matches_closed_form(law, params):
    closed = compute_optimal(law, params, 1e22)
    numeric = compute_optimal_numeric(law, params, 1e22)
    generic = compute_optimal_numeric(law, params, 1e22, cost=parse_cost("6*N*D"))
    for sol in (numeric, generic):
        assert sol["params"] == pytest.approx(closed["params"], rel=1e-4)
        assert sol["loss"] == pytest.approx(closed["loss"], rel=1e-9)


def test_teacher_cost_shifts_the_optimum_to_fewer_tokens():
    plain = compute_optimal("chinchilla", HOFFMANN, 1e21)
    distil = compute_optimal_numeric(
        "chinchilla", HOFFMANN, 1e21, parse_cost("6*N*D + 2*NT*D", teacher_params=7e10)
    )
    assert distil["tokens"] < plain["tokens"]
    assert 6 * distil["params"] * distil["tokens"] + 2 * 7e10 * distil["tokens"] == pytest.approx(
        1e21, rel=1e-6
    )


def test_power_law_has_no_allocation_and_cost_names_are_checked():
    with pytest.raises(ValueError, match="no token term"):
        compute_optimal("power", {"E": 1, "A": 1, "alpha": 0.3}, 1e20)
    with pytest.raises(ValueError, match="unknown names"):
        parse_cost("6*N*D + __import__('os')")


def _isoflop_data(budgets, spans):
    law = get_law("chinchilla")
    n_all, c_all, l_all = [], [], []
    for c, (lo, hi) in zip(budgets, spans):
        n = np.logspace(lo, hi, 9)
        n_all += list(n)
        c_all += [c] * 9
        l_all += list(law.predict(HOFFMANN, n, c / (6 * n)))
    return np.array(n_all), np.array(l_all), np.array(c_all)


def test_isoflop_parabolas_and_excluded_budget_warning():
    budgets = [1e18, 1e19, 1e20, 1e21]
    centre = [np.log10(compute_optimal("chinchilla", HOFFMANN, c)["params"]) for c in budgets]
    spans = [(m - 1, m + 1) for m in centre[:3]] + [(centre[3] - 2.5, centre[3] - 1.2)]
    n, loss, c = _isoflop_data(budgets, spans)
    with pytest.warns(IsoFLOPWarning, match=r"C = 1e\+21 FLOPs excluded: .*outside the sampled"):
        iso = isoflop_analysis(n, loss, c)
    assert [b["flops"] for b in iso["budgets"]] == pytest.approx(budgets[:3])
    assert iso["excluded"][0]["flops"] == pytest.approx(1e21)
    assert iso["a"] == pytest.approx(allocation(HOFFMANN)["a"], abs=0.03)
    assert iso["a"] + iso["b"] == pytest.approx(1.0)


def test_envelope_approach_one():
    law = get_law("chinchilla")
    sizes = np.logspace(7, 10, 13)
    pn, pc, pl, runs = [], [], [], []
    for i, n in enumerate(sizes):
        d = np.logspace(8, 12, 40)
        pn += [n] * d.size
        pc += list(6 * n * d)
        pl += list(law.predict(HOFFMANN, n, d))
        runs += [f"r{i}"] * d.size
    env = envelope_analysis(pn, pc, pl, runs)
    assert env["a"] == pytest.approx(allocation(HOFFMANN)["a"], abs=0.08)
    with pytest.raises(ScalingDataError, match="learning curves"):
        envelope_analysis([1, 2], [1, 2], [1, 2], ["a", "b"])


def _points(n, d, loss):
    return [
        RunPoint(
            params=a, tokens=b, loss=c, flops=6 * a * b, flops_6nd=6 * a * b, source=f"synthetic row {i}"
        )
        for i, (a, b, c) in enumerate(zip(n, d, loss))
    ]


def test_holdout_above_reports_errors_on_larger_runs():
    law = get_law("chinchilla")
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 7), np.logspace(8, 11, 7)))
    loss = law.predict(HOFFMANN, n, d)
    fit = fit_runs(_points(n, d, loss), holdout_above=1e18)
    h = fit["holdout"]
    assert h["n_test"] == int((6 * n * d > 1e18).sum()) > 0
    assert h["n_fit"] + h["n_test"] == n.size == fit["n_points"] + h["n_test"]
    assert h["mape"] < 0.1
    assert set(h["points"][0]) >= {"source", "params", "tokens", "loss", "predicted", "error_pct"}
    with pytest.raises(ScalingDataError, match="no run has more compute"):
        fit_runs(_points(n, d, loss), holdout_above=1e30)


def test_intervals_from_bootstrap_samples():
    law = get_law("chinchilla")
    rng = np.random.default_rng(0)
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 7), np.logspace(8, 11, 7)))
    loss = law.predict(HOFFMANN, n, d) * (1 + 0.01 * rng.standard_normal(n.size))
    fit = fit_runs(_points(n, d, loss), n_bootstrap=20, jobs=1)
    pred = predict_from_fit(fit, 1e9, 2e10)
    assert pred["interval"][0] <= pred["loss"] <= pred["interval"][1]
    opt = optimal_from_fit(fit, 1e21)
    lo, hi = opt["interval"]["params"]
    assert lo <= opt["params"] <= hi
    with pytest.raises(ValueError, match="needs --tokens"):
        predict_from_fit(fit, 1e9)
