"""Which coefficients of the distillation law do the students pin down? Profile them.

For each parameter in turn, `profile_distillation` fixes it at values on both sides of the fit
(internal coordinates: `c0`, the exponents, and the logs of `c1, d1, f1, A', B'`), refits all the
others (L-BFGS-B from the neighbouring optimum) and records the objective. The fit minimises a
summed Huber loss of log-residuals whose residuals mostly lie beyond `delta` (the linear part), so
the objective is read as a Laplace likelihood with its scale estimated from the fit: the profile
statistic is `n * (objective(value) - objective_min) / objective_min`, and the profile interval
is where it stays below `PROFILE_THRESHOLD` (1.92, half the 95 % chi-square quantile of one degree
of freedom). This is an approximation (the residuals of a law fitted to noiseless data are not
Laplace; there the objective is ~0 and every parameter is pinned). A side of the interval that
reaches the end of the scanned span (a factor `SPAN` on log-parameters, +-`SPAN_LINEAR` on the
others) or an optimiser bound is open: the data do not pin the parameter down on that side.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PROFILE_THRESHOLD", "SPAN", "SPAN_LINEAR", "profile_distillation"]

PROFILE_THRESHOLD = 1.92
SPAN = 100.0  # log-parameters are scanned over a factor 100 each way
SPAN_LINEAR = 1.5  # c0 and the exponents over +-1.5
_STEPS = 6  # values per side


def _scan(form, x, log_l, kind, delta, theta, j, values):
    from .distill_law import _lbfgs

    out, th = [], np.array(theta, float)
    for v in values:
        start = th.copy()
        start[j] = v
        res = _lbfgs(start, form, x, log_l, kind, delta, fixed={j: v})
        out.append(float(res.fun))
        if np.isfinite(res.fun):
            th = res.x
    return out


def _side(values, stats):
    """Where the statistic first crosses the threshold (interpolated between scanned values);
    `None` when it stays below it over the whole scan."""
    prev_v, prev_s = None, 0.0
    for v, s in zip(values, stats):
        if s > PROFILE_THRESHOLD:
            if prev_v is None:
                return v
            t = (PROFILE_THRESHOLD - prev_s) / (s - prev_s)
            return prev_v + t * (v - prev_v)
        prev_v, prev_s = v, s
    return None


def profile_distillation(n, d, lt, loss, sup_fit, fit: dict, kind="huber", delta=1e-3) -> dict:
    """Profile every parameter of a distillation fit (see the module docstring).

    Args:
        n, d, lt, loss (`array-like`): the students the fit was made on.
        sup_fit (`dict`): the supervised fit.
        fit (`dict`): the result of `fit_distillation_arrays` on those students.

    Returns:
        `dict` with `params` (name -> `{"estimate", "interval": [lo, hi], "identified": bool}`,
        `None` for an open side), `undetermined` (names with an open side), `threshold`,
        `statistic` and `objective`.
    """
    from .distill_law import DistillationForm, _bounds, _features, supervised_terms

    form = DistillationForm(fit["form"])
    n, d, lt, loss = (np.asarray(v, float) for v in (n, d, lt, loss))
    x = _features(n, d, lt, supervised_terms(sup_fit, n, d))
    log_l = np.log(loss)
    theta = np.array(fit["internal"], float)
    best = float(fit["objective"])
    scale = n.size / max(best, 1e-300)
    bounds = _bounds(form)
    out = {}
    for j, name in enumerate(form.param_names):
        logged = name not in ("c0", "alpha_prime", "beta_prime", "gamma_prime")
        span = math.log(SPAN) if logged else SPAN_LINEAR
        lo_b, hi_b = bounds[j]
        ends = []
        for sign in (-1, 1):
            stop = min(max(theta[j] + sign * span, lo_b), hi_b)
            values = theta[j] + (stop - theta[j]) * np.arange(1, _STEPS + 1) / _STEPS
            stats = [scale * (v - best) for v in _scan(form, x, log_l, kind, delta, theta, j, values)]
            side = _side(values, stats)
            ends.append(None if side is None else float(math.exp(side) if logged else side))
        est = fit["params"][name]
        out[name] = {"estimate": est, "interval": ends, "identified": None not in ends}
    return {
        "params": out,
        "undetermined": [k for k, v in out.items() if not v["identified"]],
        "threshold": PROFILE_THRESHOLD,
        "statistic": "n * (objective - objective_min) / objective_min (Huber read as Laplace)",
        "objective": best,
        "span": {"log_parameters_factor": SPAN, "linear_parameters": SPAN_LINEAR},
    }
