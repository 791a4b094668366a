"""The `gadre` law, L(C, M) = E + (a M^eta + b M^-eta) C^-eta with C = 6ND and M = D / N
(Gadre et al. 2024): it is Chinchilla with alpha = beta = 2 eta, it is fitted by the same robust
machinery, and `--law auto` takes it as its baseline (Chinchilla restricted) and keeps it when the
data came from it."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.autolaw import select_law
from scaling.cli import main
from scaling.fit import fit_arrays, objective
from scaling.laws import GadreLaw, get_law
from scaling.optimal import compute_optimal, compute_optimal_numeric, derived_quantities

GADRE = {"E": 1.7, "a": 500.0, "b": 700.0, "eta": 0.16}


def _reference(p, n, d):
    """The paper's form in float64, written in C and M."""
    c, m = 6.0 * n * d, d / n
    return p["E"] + (p["a"] * m ** p["eta"] + p["b"] * m ** -p["eta"]) * c ** -p["eta"]


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    e=st.floats(0.5, 3.0),
    a=st.floats(1.0, 1e4),
    b=st.floats(1.0, 1e4),
    eta=st.floats(0.02, 0.6),
    log_n=st.floats(13.0, 27.0),
    log_m=st.floats(-2.0, 8.0),
)
def test_equals_the_paper_form_and_chinchilla_with_tied_exponents(e, a, b, eta, log_n, log_m):
    p = {"E": e, "a": a, "b": b, "eta": eta}
    n, d = math.exp(log_n), math.exp(log_n + log_m)
    got = float(get_law("gadre").predict(p, n, d))
    assert got == pytest.approx(_reference(p, n, d), rel=1e-12)
    # the same coefficients as Chinchilla: alpha = beta = 2 eta, A = a 6^-eta, B = b 6^-eta
    chin = {"E": e, "A": a * 6.0**-eta, "B": b * 6.0**-eta, "alpha": 2 * eta, "beta": 2 * eta}
    assert GadreLaw.as_chinchilla(p) == pytest.approx(chin, rel=1e-12)
    assert got == pytest.approx(float(get_law("chinchilla").predict(chin, n, d)), rel=1e-12)
    # the public <-> internal round trip
    lw = get_law("gadre")
    assert lw.from_internal(lw.to_internal(p)) == pytest.approx(p, rel=1e-12)


def test_jacobian_matches_finite_differences():
    lw = get_law("gadre")
    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(14, 23, 30), rng.uniform(18, 27, 30)
    theta = lw.to_internal(GADRE)
    _, jac = lw.log_loss_and_jac(theta, log_n, log_d)
    eps = 1e-6
    num = np.stack(
        [
            (
                lw.log_loss_and_jac(theta + eps * u, log_n, log_d, jac=False)[0]
                - lw.log_loss_and_jac(theta - eps * u, log_n, log_d, jac=False)[0]
            )
            / (2 * eps)
            for u in np.eye(theta.size)
        ],
        axis=1,
    )
    np.testing.assert_allclose(jac, num, rtol=1e-6, atol=1e-9)


def _true_gadre(eta, e, r_n, r_d):
    """Parameters whose reducible terms are r_n, r_d nats at the smallest N (1e6) and D (1e8)."""
    return {"E": e, "a": r_n * 1e6 ** (2 * eta) * 6**eta, "b": r_d * 1e8 ** (2 * eta) * 6**eta, "eta": eta}


def test_exact_recovery_without_noise():
    true = _true_gadre(0.17, 1.8, 2.0, 1.5)
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(6, 10, 9), np.logspace(8, 12, 9)))
    fit = fit_arrays(n, d, get_law("gadre").predict(true, n, d), "gadre")
    assert fit["converged"] and fit["objective"] < 1e-12
    assert fit["params"] == pytest.approx(true, rel=1e-4)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(
    eta=st.floats(0.1, 0.25),
    e=st.floats(1.5, 2.5),
    r_n=st.floats(1.0, 3.0),
    r_d=st.floats(1.0, 3.0),
    seed=st.integers(0, 2**31),
)
def test_recovers_coefficients_with_one_percent_noise(eta, e, r_n, r_d, seed):
    law = get_law("gadre")
    true = _true_gadre(eta, e, r_n, r_d)
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(6, 10, 20), np.logspace(8, 12, 20)))
    loss = law.predict(true, n, d) * (1 + 0.01 * np.random.default_rng(seed).standard_normal(n.size))
    fit = fit_arrays(n, d, loss, "gadre")
    assert fit["converged"]
    p = fit["params"]
    assert p["eta"] == pytest.approx(eta, rel=0.05)
    assert p["E"] == pytest.approx(e, rel=0.03)
    for k in ("a", "b"):  # a and b trade off against E and eta: looser
        assert p[k] == pytest.approx(true[k], rel=0.25), k
    truth = objective(law.to_internal(true), law, np.log(n), np.log(d), np.log(loss))[0]
    assert fit["objective"] <= truth * (1 + 1e-9)


def _ladder(law, params, noise, seed):
    """5 sizes (20M-600M) x 4 multipliers (5-320 tokens per parameter), as Gadre et al.'s ladders."""
    n = np.repeat(np.geomspace(2e7, 6e8, 5), 4)
    d = n * np.tile([5.0, 20.0, 80.0, 320.0], 5)
    loss = get_law(law).predict(params, n, d)
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))


@pytest.mark.parametrize("seed", range(4))
def test_auto_keeps_gadre_when_it_generated_the_data(seed):
    """With Chinchilla as the baseline (the rule before), seed 1 chose chinchilla: its free second
    exponent was not significantly worse on the held-out models. Now the restricted law is the
    baseline, and no candidate is significantly better than the law that generated the data."""
    sel = select_law(*_ladder("gadre", GADRE, 0.002, seed))
    assert sel["baseline"] == "gadre" and sel["chosen"] == "gadre"
    assert "gadre" in sel["candidates"] and sel["scores"]["gadre"]["n_params"] == 4


@pytest.mark.parametrize("seed", range(3))
def test_auto_leaves_gadre_when_the_exponents_differ(seed):
    """alpha = 0.1 against beta = 0.4 (as the Gadre ladders with non-embedding N fit): the tie
    costs accuracy on the held-out models, significantly, so Chinchilla is chosen. The richer
    laws then have to beat Chinchilla, not gadre: with every law against the baseline and the
    lowest mean winning (the rule before), seed 0 chose chinchilla_gamma for a 0.001-point lead."""
    chin = {"E": 1.5, "A": 8.0, "B": 1500.0, "alpha": 0.1, "beta": 0.4}
    sel = select_law(*_ladder("chinchilla", chin, 0.002, seed))
    against = {c["law"]: c["against"] for c in sel["comparisons"]}
    assert against == {"chinchilla": "gadre", "chinchilla_gamma": "chinchilla", "kaplan": "chinchilla"}
    assert next(c for c in sel["comparisons"] if c["law"] == "chinchilla")["chosen_over"]
    assert sel["chosen"] == "chinchilla"


def test_optimal_allocation_is_chinchilla_with_equal_exponents():
    chin = GadreLaw.as_chinchilla(GADRE)
    for c in (1e20, 1e23):
        ours, theirs = compute_optimal("gadre", GADRE, c), compute_optimal("chinchilla", chin, c)
        assert ours == pytest.approx(theirs, rel=1e-10)
        numeric = compute_optimal_numeric("gadre", GADRE, c)
        assert numeric["params"] == pytest.approx(ours["params"], rel=1e-4)
        # M* = (b / a)^(1 / (2 eta)) at every budget
        assert ours["tokens_per_param"] == pytest.approx(GadreLaw.optimal_multiplier(GADRE), rel=1e-10)
    derived = derived_quantities("gadre", GADRE, [1e21])
    assert "a" not in derived and "b" not in derived  # a and b are the law's coefficients
    assert derived["tokens_per_param_opt"] == pytest.approx(GadreLaw.optimal_multiplier(GADRE))
    assert derived["tokens_per_param@1e+21"] == pytest.approx(derived["tokens_per_param_opt"])


def test_cli_fit_predict_optimal_with_bootstrap(tmp_path, capsys):
    n, d, loss = _ladder("gadre", GADRE, 0.003, 0)
    table = tmp_path / "runs.csv"
    table.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss)))
    out = tmp_path / "fit.json"
    args = ["fit", str(table), "--law", "gadre", "--bootstrap", "40", "--jobs", "1", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0, capsys.readouterr().err
    fit = json.loads(out.read_text())
    assert fit["law"] == "gadre" and fit["converged"] and set(fit["params"]) == {"E", "a", "b", "eta"}
    assert fit["formula"].startswith("L(C, M) = E + (a M^eta + b M^-eta) C^-eta")
    assert fit["params"]["eta"] == pytest.approx(GADRE["eta"], rel=0.1)
    lo, hi = fit["ci"]["eta"]
    assert lo < fit["params"]["eta"] < hi and fit["ci_status"]["eta"] == "ok"
    assert "tokens_per_param_opt" in fit["ci"] and fit["bootstrap"]["param_names"] == ["E", "a", "b", "eta"]
    capsys.readouterr()
    assert main(["predict", "--fit", str(out), "--params", "2e9", "--tokens", "4e10"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["loss"] == pytest.approx(float(get_law("gadre").predict(fit["params"], 2e9, 4e10)))
    assert pred["interval"][0] <= pred["loss"] <= pred["interval"][1]
    assert main(["optimal", "--fit", str(out), "--flops", "1e21"]) == 0
    opt = json.loads(capsys.readouterr().out)
    assert opt["tokens_per_param"] == pytest.approx(fit["derived"]["tokens_per_param_opt"], rel=1e-9)
    assert opt["interval"]["params"][0] <= opt["params"] <= opt["interval"]["params"][1]
