"""Honest bootstrap intervals: converged refits only, bounds marked `unbounded`, the estimate inside or said."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.cli import main
from scaling.fit import fit_runs
from scaling.intervals import bootstrap_lines, format_interval, interval_summary, percentile_intervals
from scaling.laws import get_law
from scaling.logs import RunPoint

POWER = get_law("power")
N5 = np.array([13e3, 40e3, 90e3, 180e3, 300e3])  # the demo ladder's non-embedding sizes, roughly


def _five_rungs(seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    return POWER.predict({"E": 4.0, "A": 30.0, "alpha": 0.3}, N5) * (1 + noise * rng.standard_normal(5))


def _points(n, loss):
    return [
        RunPoint(params=a, tokens=1e6, loss=b, flops=6e6 * a, flops_6nd=6e6 * a, source=f"r{i}", run=f"r{i}")
        for i, (a, b) in enumerate(zip(n, loss))
    ]


@pytest.fixture(scope="module")
def five_rung_fit():
    return fit_runs(_points(N5, _five_rungs()), law="power", n_bootstrap=40, jobs=1)


def test_interval_reaching_the_search_edge_is_unbounded(five_rung_fit):
    """Five rungs, three parameters: some refits run alpha to the edge of [0.01, 2.5] (today: `[0.057, 2.5]`)."""
    fit = five_rung_fit
    boot = fit["bootstrap"]
    assert boot["n_at_bound"] > 0 and boot["n_converged"] + boot["n_failed"] == boot["n"] == 40
    assert any("alpha at or above the top of its search range" in k for k in boot["at_bound"])
    assert fit["ci"]["alpha"][1] is None and fit["ci_status"]["alpha"] == "unbounded"
    assert fit["ci"]["A"][1] is None  # A grows with alpha at the edge: its upper side is no number either
    lo, hi = POWER.exponent_ranges[0]
    for k in ("alpha",):
        assert all(v is None or lo + 1e-3 < v < hi - 1e-3 for v in fit["ci"][k])
    assert format_interval(fit, "alpha").endswith("unbounded]")
    json.dumps(fit, allow_nan=False)  # None, not inf or NaN, in fit.json


def test_printed_summary_says_unbounded_and_counts_refits(tmp_path, capsys):
    table = tmp_path / "rungs.json"
    table.write_text(json.dumps([{"params": a, "tokens": 1e6, "loss": b} for a, b in zip(N5, _five_rungs())]))
    rc = main(
        [
            "fit",
            str(table),
            "--law",
            "power",
            "--bootstrap",
            "40",
            "--jobs",
            "1",
            "--json",
            "--out",
            str(tmp_path / "fit.json"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ci_status"]["alpha"] == "unbounded" and doc["ci"]["alpha"][1] is None
    alpha_line = next(line for line in err.splitlines() if line.strip().startswith("alpha ="))
    assert "unbounded]" in alpha_line and "2.5]" not in alpha_line
    assert "at a bound" in err and "failed or not converged" in err
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["bootstrap"]["n_at_bound"] == doc["bootstrap"]["n_at_bound"] > 0


def _contains(interval, estimate):
    lo, hi = interval
    return (lo is None or lo <= estimate) and (hi is None or estimate <= hi)


def test_every_interval_contains_its_estimate_or_says_why(five_rung_fit):
    fit = five_rung_fit
    estimates = {**fit["params"], **fit["derived"]}
    for k, interval in fit["ci"].items():
        if fit["ci_status"][k] == "excludes_estimate":
            assert "outside the central 95%" in fit["ci_notes"][k]
            assert any(line.startswith(f"{k}:") for line in bootstrap_lines(fit))
        else:
            assert _contains(interval, estimates[k]), k


# --------------------------------------------------------- the interval rule itself
def _reference(values, pinned_hi, pinned_lo, estimate, level):
    """Independent: numpy's percentile with pinned refits replaced by far-away finite sentinels;
    a side is unbounded when the order statistics numpy interpolates reach a sentinel."""
    v = values.copy()
    span = np.ptp(values) + abs(estimate) + 1.0
    v[pinned_hi] = values.max() + 1e6 * span
    v[pinned_lo] = values.min() - 1e6 * span
    q = 50 * (1 - level)
    far = v[pinned_hi | pinned_lo]
    out = []
    for pct in (q, 100 - q):
        h = (v.size - 1) * pct / 100
        used = np.sort(v)[[int(np.floor(h)), int(np.ceil(h))]]
        out.append(None if np.isin(used, far).any() else float(np.percentile(v, pct)))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=60), st.data(), st.sampled_from([0.8, 0.9, 0.95]))
def test_percentile_intervals_match_numpy_with_bounds_left_open(values, data, level):
    values = np.array(values)
    m = values.size
    pinned = np.array(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    estimate = data.draw(st.floats(-5, 5))
    (res,) = percentile_intervals(["x"], values[:, None], [estimate], pinned, level).values()
    pinned_hi = pinned & (values >= estimate)
    pinned_lo = pinned & (values < estimate)
    expected = _reference(values, pinned_hi, pinned_lo, estimate, level)
    for got, want in zip(res["interval"], expected):
        assert (got is None) == (want is None)
        if got is not None:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    inside = _contains(res["interval"], estimate)
    assert res["status"] == (
        "excludes_estimate" if not inside else "unbounded" if None in res["interval"] else "ok"
    )
    assert (res["note"] is None) == (res["status"] == "ok")


def test_failed_and_unconverged_refits_are_left_out_and_counted():
    rng = np.random.default_rng(0)
    good = np.column_stack(
        [
            4 + 0.1 * rng.standard_normal(50),
            30 * np.exp(0.1 * rng.standard_normal(50)),
            0.3 + 0.02 * rng.standard_normal(50),
        ]
    )
    samples = np.vstack([good, [[1e-9, 1e12, 40.0]], [[np.nan] * 3]])
    converged = np.array([True] * 50 + [False, False])
    honest = interval_summary(POWER, samples, converged, {"E": 4.0, "A": 30.0, "alpha": 0.3}, N5, np.ones(5))
    assert honest["counts"]["n_converged"] == 50 and honest["counts"]["n_failed"] == 2
    for j, k in enumerate(("E", "A", "alpha")):
        assert honest["ci"][k] == pytest.approx(list(np.percentile(good[:, j], [2.5, 97.5])))
        assert honest["ci_status"][k] == "ok"


def test_biased_refits_are_said_not_hidden():
    # every refit above the estimate: the percentile interval cannot contain it
    samples = np.column_stack([np.full(30, 4.0), np.linspace(31, 40, 30), np.full(30, 0.3)])
    fit = {"params": {"E": 4.0, "A": 30.0, "alpha": 0.3}}
    fit.update(
        {
            k: v
            for k, v in interval_summary(
                POWER, samples, np.ones(30, bool), fit["params"], N5, np.ones(5)
            ).items()
            if k != "counts"
        }
    )
    assert fit["ci_status"]["A"] == "excludes_estimate" and fit["ci"]["A"][0] > 30.0
    assert "(excludes the estimate" in format_interval(fit, "A")
    assert any(line.startswith("A: the estimate 30 lies outside") for line in bootstrap_lines(fit))


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.003, 0.01, 0.03]), st.integers(5, 8))
def test_fitted_intervals_contain_their_estimates_or_say_why(seed, noise, rungs):
    n = np.geomspace(1e4, 3e5, rungs)
    rng = np.random.default_rng(seed)
    loss = POWER.predict({"E": 4.0, "A": 30.0, "alpha": 0.3}, n) * (1 + noise * rng.standard_normal(rungs))
    fit = fit_runs(_points(n, loss), law="power", n_bootstrap=12, seed=seed, jobs=1)
    lo_edge, hi_edge = POWER.exponent_ranges[0]
    for k, interval in fit["ci"].items():
        if fit["ci_status"][k] == "excludes_estimate":
            assert k in fit["ci_notes"]
        else:
            assert _contains(interval, fit["params"][k]), k
    assert all(v is None or lo_edge + 1e-3 < v < hi_edge - 1e-3 for v in fit["ci"]["alpha"])


def test_prediction_interval_that_misses_its_estimate_says_why():
    from scaling.optimal import predict_from_fit

    params = {"E": 4.0, "A": 30.0, "alpha": 0.3}
    rows = [[4.0, a, 0.3] for a in np.linspace(31, 40, 30)]  # every refit above the estimate
    fit = {
        "law": "power",
        "params": params,
        "bootstrap": {"param_names": ["E", "A", "alpha"], "samples": rows},
    }
    pred = predict_from_fit(fit, 1e5)
    assert pred["interval"][0] > pred["loss"] and "outside the central 95%" in pred["interval_note"]
    fit["bootstrap"]["samples"] = [[4.0, a, 0.3] for a in np.linspace(20, 40, 30)]
    pred = predict_from_fit(fit, 1e5)
    assert pred["interval"][0] <= pred["loss"] <= pred["interval"][1] and "interval_note" not in pred


def test_a_fit_at_a_bound_says_so():
    n = np.geomspace(1e4, 1e7, 6)
    fit = fit_runs(_points(n, 30.0 * n**-0.3), law="power")  # no irreducible loss: E's term vanishes
    assert fit["params"]["E"] < 1e-6 and any(f.startswith("e has no effect") for f in fit["at_bound"])
    assert bootstrap_lines(fit)[0].startswith("warning: the fit itself is at an optimiser bound")
    inside = fit_runs(_points(n, 2.0 + 30.0 * n**-0.3), law="power")
    assert inside["at_bound"] == [] and bootstrap_lines(inside) == []
