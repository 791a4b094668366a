"""Honest bootstrap intervals: converged refits only, undetermined sides `unbounded` (the optimiser has
no bounds), the estimate inside or said."""

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


def test_refits_that_leave_alpha_undetermined_leave_the_interval_open(five_rung_fit):
    """Five rungs, three parameters: resamples with two distinct sizes fit any alpha exactly (a
    flat direction), others lose E's term. Their side of the interval is `None`, not a number."""
    fit = five_rung_fit
    boot = fit["bootstrap"]
    assert boot["n_unidentified"] > 0 and boot["n_converged"] + boot["n_failed"] == boot["n"] == 40
    assert any("alpha is not determined by the data" in k for k in boot["unidentified"])
    assert any("e has no effect" in k for k in boot["unidentified"])
    assert not any("search range" in k for k in boot["unidentified"])  # the start grid is no bound
    assert fit["ci"]["alpha"][1] is None and fit["ci_status"]["alpha"] == "unbounded"
    assert fit["ci"]["A"][1] is None  # A moves with alpha along the flat direction
    assert format_interval(fit, "alpha").endswith("unbounded]")
    json.dumps(fit, allow_nan=False)  # None, not inf or NaN, in fit.json


def test_converged_fit_beyond_the_start_grid_keeps_closed_intervals():
    """alpha = 2.8 lies beyond the VP start grid ([0.01, 2.5]) but L-BFGS is unbounded: a converged,
    well-determined fit there is no bound (it used to get `[..., unbounded]`)."""
    n = np.geomspace(1.0, 40.0, 10)
    rng = np.random.default_rng(1)
    loss = POWER.predict({"E": 2.0, "A": 5.0, "alpha": 2.8}, n) * (1 + 0.002 * rng.standard_normal(n.size))
    fit = fit_runs(_points(n, loss), law="power", n_bootstrap=30, jobs=1)
    assert fit["converged"] and fit["params"]["alpha"] == pytest.approx(2.8, rel=0.05)
    assert fit["unidentified"] == [] and fit["bootstrap"]["n_unidentified"] == 0
    for k in ("E", "A", "alpha"):
        assert fit["ci_status"][k] == "ok" and None not in fit["ci"][k], k
    lo, hi = fit["ci"]["alpha"]
    assert lo < 2.8 < hi and hi > 2.5


def test_no_finite_objective_is_an_error(monkeypatch):
    """The objective's non-finite fallback (1e300) is finite to numpy: it must not pass as a fit."""
    import scaling.optimize as optimize
    from scaling.fit import fit_arrays
    from scaling.logs import ScalingDataError

    monkeypatch.setattr(optimize, "objective", lambda theta, *a, **k: (optimize.NOT_FINITE, 0 * theta))
    with pytest.raises(ScalingDataError, match="no start reached a finite objective"):
        fit_arrays(N5, None, _five_rungs(), "power")


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
    assert "left some undetermined" in err and "failed or not converged" in err
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["bootstrap"]["n_unidentified"] == doc["bootstrap"]["n_unidentified"] > 0


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
    for k, interval in fit["ci"].items():
        if fit["ci_status"][k] == "excludes_estimate":
            assert k in fit["ci_notes"]
        else:
            assert _contains(interval, fit["params"][k]), k
        # a side is a finite number (a converged refit, wherever it lies) or None (undetermined)
        assert all(v is None or np.isfinite(v) for v in interval), k
        assert (fit["ci_status"][k] == "unbounded") == (None in interval) or fit["ci_status"][k] != "ok"


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


def test_a_fit_that_leaves_a_parameter_undetermined_says_so():
    n = np.geomspace(1e4, 1e7, 6)
    fit = fit_runs(_points(n, 30.0 * n**-0.3), law="power")  # no irreducible loss: E's term vanishes
    assert fit["params"]["E"] < 1e-6 and any(f.startswith("e has no effect") for f in fit["unidentified"])
    assert bootstrap_lines(fit)[0].startswith("warning: the data do not determine some parameters")
    inside = fit_runs(_points(n, 2.0 + 30.0 * n**-0.3), law="power")
    assert inside["unidentified"] == [] and bootstrap_lines(inside) == []
    two = fit_runs(
        _points(np.repeat([1e4, 1e6], 3), 2.0 + 30.0 * np.repeat([1e4, 1e6], 3) ** -0.3), law="power"
    )
    assert any("not determined by the data" in f for f in two["unidentified"])  # 3 parameters, 2 sizes
