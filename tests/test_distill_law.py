"""The chinchilla_gamma law and the distillation scaling law (Busbridge et al. 2025): recovery
of known parameters from noisy synthetic data, the paper's qualitative findings, data checks
and the CLI round trip (fit -> dfit.json -> predict)."""

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.cli import main
from scaling.distill_fit import fit_distillation, load_distill_runs, predict_from_dfit
from scaling.distill_law import (
    DistillationForm,
    _features,
    check_distillation_data,
    fit_distillation_arrays,
    supervised_terms,
)
from scaling.fit import fit_arrays
from scaling.laws import get_law
from scaling.optimize import objective

# The paper's supervised fit (Eq. 1 constants as transcribed); the distillation constants below
# are synthetic, chosen to show a capacity gap inside the sampled teacher losses.
SUP = {
    "law": "chinchilla_gamma",
    "param_count": "non_embedding",
    "params": {"E": 1.220, "A": 3355.0, "B": 18186.0, "alpha": 0.408, "beta": 0.431, "gamma": 0.452},
}
K = 1.5
TRUE_FULL = {
    "c0": 3.0,
    "c1": 6.0,
    "d1": 0.85,
    "f1": 0.3,
    "A_prime": 3355.0 * K ** (1 / 0.452),
    "B_prime": 18186.0 * K ** (1 / 0.452),
    "alpha_prime": 0.408,
    "beta_prime": 0.431,
    "gamma_prime": 0.452,
}
TRUE_REDUCED = {"c0": 2.5, "c1": 3.0, "d1": 0.9, "k": 1.3}


def _grid():
    n = np.repeat([1e8, 3e8, 1e9, 3e9], 8)
    d = np.tile(np.repeat([2e10, 1e11], 4), 4)
    lt = np.tile([1.2, 1.5, 1.9, 2.4], 8)
    return n, d, lt


def _reference_full(p, n, d, lt):
    """Eq. 8 written directly in float64, independent of the log-space implementation."""
    sup = SUP["params"]
    ls = sup["E"] + (sup["A"] / n ** sup["alpha"] + sup["B"] / d ** sup["beta"]) ** sup["gamma"]
    brk = (1 + (lt / (ls * p["d1"])) ** (1 / p["f1"])) ** (-p["c1"] * p["f1"])
    student = p["A_prime"] / n ** p["alpha_prime"] + p["B_prime"] / d ** p["beta_prime"]
    return lt + lt ** (-p["c0"]) * brk * student ** p["gamma_prime"]


def _synthetic(form, true, noise, seed=0):
    n, d, lt = _grid()
    x = _features(n, d, lt, supervised_terms(SUP, n, d))
    clean = DistillationForm(form).predict(true, x)
    return n, d, lt, clean * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))


def test_distillation_law_matches_float64_reference_and_gradient():
    n, d, lt = _grid()
    fm = DistillationForm("full")
    x = _features(n, d, lt, supervised_terms(SUP, n, d))
    np.testing.assert_allclose(fm.predict(TRUE_FULL, x), _reference_full(TRUE_FULL, n, d, lt), rtol=1e-12)
    for form, true in (("full", TRUE_FULL), ("reduced", TRUE_REDUCED)):
        fm = DistillationForm(form)
        th = fm.to_internal(true)
        f, jac = fm.log_loss_and_jac(th, x)
        for i in range(th.size):
            step = np.zeros_like(th)
            step[i] = 1e-6
            num = (fm.log_loss_and_jac(th + step, x)[0] - fm.log_loss_and_jac(th - step, x)[0]) / 2e-6
            np.testing.assert_allclose(jac[:, i], num, atol=1e-7)


@pytest.mark.parametrize("form,true,tol", [("full", TRUE_FULL, 0.02), ("reduced", TRUE_REDUCED, 0.01)])
def test_recovers_known_parameters_from_noisy_data(form, true, tol):
    exact = fit_distillation_arrays(*_synthetic(form, true, 0.0), SUP, form)
    for k in ("c0", "c1", "d1"):
        assert exact["params"][k] == pytest.approx(true[k], rel=1e-3), k
    noisy = fit_distillation_arrays(*_synthetic(form, true, 0.002), SUP, form)
    assert noisy["converged"]
    n, d, lt = np.array([5e8, 2e9]), np.array([5e10, 5e10]), np.array([1.4, 2.0])
    x = _features(n, d, lt, supervised_terms(SUP, n, d))
    fm = DistillationForm(form)
    np.testing.assert_allclose(fm.predict(noisy["params"], x), fm.predict(true, x), rtol=tol)
    assert abs(noisy["params"]["c0"] - true["c0"]) < 0.5


def test_capacity_gap_and_teacher_only_through_its_loss():
    n, d, lt, loss = _synthetic("full", TRUE_FULL, 0.002)
    fit = fit_distillation_arrays(n, d, lt, loss, SUP, "full")
    dfit = {"form": "full", "params": fit["params"], "supervised": SUP}
    lts = np.linspace(1.0, 2.6, 161)
    best = {}
    for size in (1e8, 3e9):
        curve = np.array([predict_from_dfit(dfit, size, 5e10, t)["loss"] for t in lts])
        j = int(np.argmin(curve))
        assert 0 < j < lts.size - 1, "the best teacher is neither the strongest nor the weakest"
        assert curve[0] > curve[j] + 0.02  # a too-strong teacher gives a worse student
        best[size] = lts[j]
    assert best[3e9] < best[1e8]  # bigger students profit from stronger teachers
    # the teacher enters only through L_T: its size is recorded but never read by the law
    pts = [
        {
            "params": a,
            "tokens": b,
            "teacher_loss": c,
            "loss": e,
            "teacher_params": tp,
            "run": str(i),
            "source": str(i),
        }
        for i, (a, b, c, e, tp) in enumerate(
            zip(n, d, lt, loss, np.random.default_rng(1).uniform(1e9, 1e11, n.size))
        )
    ]
    other = [{**p, "teacher_params": 7e9} for p in pts]
    f1, f2 = fit_distillation(pts, SUP, "reduced"), fit_distillation(other, SUP, "reduced")
    assert f1["params"] == f2["params"]


@settings(max_examples=8, deadline=None)
@given(c0=st.floats(1.0, 4.0), c1=st.floats(1.0, 6.0), d1=st.floats(0.7, 1.3), k=st.floats(0.5, 3.0))
def test_reduced_form_recovery_property(c0, c1, d1, k):
    true = {"c0": c0, "c1": c1, "d1": d1, "k": k}
    n, d, lt, loss = _synthetic("reduced", true, 0.0)
    fit = fit_distillation_arrays(n, d, lt, loss, SUP, "reduced", top_k=3)
    fm = DistillationForm("reduced")
    x = _features(n, d, lt, supervised_terms(SUP, n, d))
    assert fit["objective"] < 1e-10
    np.testing.assert_allclose(fm.predict(fit["params"], x), loss, rtol=1e-5)


def test_too_few_points_is_a_clear_error():
    n, d, lt, loss = _synthetic("reduced", TRUE_REDUCED, 0.0)
    one_teacher = lt == 1.5
    with pytest.raises(ValueError, match="distinct teacher losses.*--form reduced"):
        check_distillation_data("full", n[one_teacher], d[one_teacher], lt[one_teacher], loss[one_teacher])
    few = np.arange(4)
    with pytest.raises(ValueError, match="distinct \\(N_S, D_S, L_T\\) points"):
        check_distillation_data("reduced", n[few], d[few], lt[few], loss[few])
    bad = loss.copy()
    bad[3] = math.nan
    with pytest.raises(ValueError, match="point 3: loss"):
        check_distillation_data("reduced", n, d, lt, bad)


def test_chinchilla_gamma_recovers_parameters():
    lw = get_law("chinchilla_gamma")
    rng = np.random.default_rng(1)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 60))
    true = SUP["params"]
    loss = lw.predict(true, n, d)
    exact = fit_arrays(n, d, loss, "chinchilla_gamma")
    for k, v in true.items():
        assert exact["params"][k] == pytest.approx(v, rel=1e-4), k
    noisy_loss = loss * np.exp(rng.normal(0, 0.001, n.size))
    noisy = fit_arrays(n, d, noisy_loss, "chinchilla_gamma")
    at_true = objective(lw.to_internal(true), lw, np.log(n), np.log(d), np.log(noisy_loss))[0]
    assert noisy["objective"] <= at_true  # the global search found at least the truth's basin
    for k, tol in (("alpha", 0.02), ("beta", 0.02), ("gamma", 0.03), ("E", 0.02)):
        assert noisy["params"][k] == pytest.approx(true[k], rel=tol), k
    # gamma = 1 is the Chinchilla law
    chin = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    np.testing.assert_allclose(
        lw.predict({**chin, "gamma": 1.0}, n, d), get_law("chinchilla").predict(chin, n, d), rtol=1e-12
    )


def test_cli_fit_and_predict_distillation(tmp_path, capsys):
    n, d, lt, loss = _synthetic("reduced", TRUE_REDUCED, 0.002)
    table = tmp_path / "kd.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["student_params", "student_tokens", "teacher_loss", "loss"])
        w.writerows(zip(n, d, lt, loss))
    sup = tmp_path / "sup.json"
    sup.write_text(json.dumps(SUP))
    out = tmp_path / "dfit.json"
    assert (
        main(
            [
                "fit",
                str(table),
                "--law",
                "distillation",
                "--supervised-fit",
                str(sup),
                "--form",
                "reduced",
                "--bootstrap",
                "12",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    dfit = json.loads(out.read_text())
    assert dfit["law"] == "distillation" and dfit["form"] == "reduced" and dfit["n_points"] == 32
    boot = dfit["bootstrap"]
    assert boot["n_converged"] >= 2 and len(boot["samples"]) == len(boot["at_bound"]) == boot["n_converged"]
    assert set(dfit["ci_status"]) == set(dfit["params"])
    capsys.readouterr()
    assert (
        main(["predict", "--fit", str(out), "--params", "5e8", "--tokens", "5e10", "--teacher-loss", "1.7"])
        == 0
    )
    pred = json.loads(capsys.readouterr().out)
    x = _features(
        np.array([5e8]),
        np.array([5e10]),
        np.array([1.7]),
        supervised_terms(SUP, np.array([5e8]), np.array([5e10])),
    )
    assert pred["loss"] == pytest.approx(DistillationForm("reduced").predict(dfit["params"], x)[0])
    lo, hi = pred["interval"]
    assert pred["interval_status"] in ("ok", "unbounded", "excludes_estimate")
    if pred["interval_status"] == "ok":
        assert lo <= pred["loss"] <= hi
    # without the teacher loss: a clear error, not a guess
    assert main(["predict", "--fit", str(out), "--params", "5e8", "--tokens", "5e10"]) == 2
    assert "--teacher-loss" in capsys.readouterr().err
    # without a supervised fit
    assert main(["fit", str(table), "--law", "distillation", "--quiet"]) == 2
    assert "--supervised-fit" in capsys.readouterr().err


def test_reads_kd_run_directories(tmp_path):
    for i, (lt, teacher) in enumerate([(2.1, 5e6), (None, 0)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        res = {
            "eval_loss": 3.0,
            "student_params": 2e6,
            "student_non_embedding_params": 1e6,
            "train_tokens": 4e5,
            "global_step": 10,
        }
        if teacher:
            res |= {"teacher_params": teacher, "teacher_non_embedding_params": 4e6, "eval_teacher_loss": lt}
        (run / "all_results.json").write_text(json.dumps(res))
    with pytest.warns(UserWarning, match="skipped 1 runs without a teacher"):
        pts = load_distill_runs([tmp_path])
    assert len(pts) == 1
    assert (
        pts[0]["params"],
        pts[0]["tokens"],
        pts[0]["teacher_loss"],
        pts[0]["loss"],
        pts[0]["teacher_params"],
    ) == (1e6, 4e5, 2.1, 3.0, 4e6)


def test_refits_at_a_bound_leave_the_interval_open():
    """A refit that ends on an optimiser bound is kept and opens its side of the interval, instead of
    being dropped (which would narrow the interval) or read as a value."""
    n, d, lt, loss = _synthetic("reduced", TRUE_REDUCED, 0.002)
    pts = [
        {"params": a, "tokens": b, "teacher_loss": c, "loss": e, "run": str(i), "source": str(i)}
        for i, (a, b, c, e) in enumerate(zip(n, d, lt, loss))
    ]
    from scaling import distill_fit

    real = distill_fit.fit_distillation_arrays
    calls = []

    def fake(*args, **kw):  # every other refit "ends at the c1 bound" with a huge c1
        res = real(*args, **kw)
        calls.append(1)
        if kw.get("top_k") == 2 and len(calls) % 2:
            res = {**res, "at_bounds": ["c1"], "params": {**res["params"], "c1": 25.0}}
        return res

    distill_fit.fit_distillation_arrays = fake
    try:
        dfit = fit_distillation(pts, SUP, "reduced", n_bootstrap=6)
    finally:
        distill_fit.fit_distillation_arrays = real
    assert dfit["bootstrap"]["n_at_bound"] == 3
    assert dfit["ci"]["c1"][1] is None and dfit["ci_status"]["c1"] == "unbounded"
    assert dfit["ci"]["d1"][1] is None or dfit["ci"]["d1"][0] is None  # d1 moves with c1
    assert None not in dfit["ci"]["c0"]
