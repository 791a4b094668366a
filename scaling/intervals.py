"""Honest bootstrap intervals: converged refits only, undetermined parameters said, the estimate
inside or why not.

The supervised fitter's L-BFGS runs **unbounded** (`scaling.optimize`); the exponent ranges of
`scaling.laws` only lay out the variable-projection start grid, so an exponent beyond them (a
converged fit with alpha = 2.8) is an ordinary value, not a bound. A bootstrap refit ends in one
of three ways:

- **failed**: too few distinct points to fit, an error, or L-BFGS did not converge. Left out.
- **unidentified**: it converged, but the data of that resample do not determine some of its
  parameters: a term of the law vanished (its share of the predicted log-loss is below
  `VANISHED` at every point, so its coefficient went to zero and its exponent is free), or the
  Jacobian of the predicted log-loss has a null direction (e.g. three parameters and two distinct
  sizes: a whole curve of parameters fits equally well). The values of the parameters along that
  direction are arbitrary; they only say on which side of the estimate the resample left them.
- **determined**: everything else.

`percentile_intervals` takes the percentile interval over the converged refits (failed ones
excluded), with each unidentified refit's value of an undetermined parameter replaced by -inf or
+inf on its side of the point estimate. A side of an interval that reaches such a refit is
reported as `None` and the parameter's status is `"unbounded"`: the data do not bound it there at
this level. A percentile interval need not contain the point estimate (with few runs the refits
are biased); when it does not, the status is `"excludes_estimate"` and the note says so, instead
of a silent contradiction.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

__all__ = [
    "VANISHED",
    "NULL_TOLERANCE",
    "identification_hits",
    "identification_flags",
    "affected_parameters",
    "percentile_intervals",
    "bootstrap_lines",
    "interval_summary",
    "format_interval",
]

VANISHED = 1e-5  # a term whose weight in the predicted log-loss stays below this has vanished (1e-5
# of a loss of 2 nats is 2e-5 nats, below any measured noise)
NULL_TOLERANCE = 1e-7  # singular value (relative to the largest) of a null direction of the Jacobian
_NULL_SHARE = 0.1  # a parameter moves along a null direction when its component exceeds this


def identification_hits(law, theta, log_n, log_d) -> list:
    """The parameters a fitted internal vector leaves undetermined, as `(internal name, "vanished"
    | "free" | "not finite")` pairs (empty when the data determine them all).

    `vanished`: its column of the Jacobian of the predicted log-loss is below `VANISHED` at every
    point. `free`: it moves along a null direction of the (column-normalised) Jacobian, a
    direction in which the predictions do not change to first order.
    """
    theta = np.asarray(theta, float)
    if not np.all(np.isfinite(theta)):
        return [(name, "not finite") for name, v in zip(law.internal_names, theta) if not np.isfinite(v)]
    with np.errstate(all="ignore"):
        _, jac = law.log_loss_and_jac(theta, np.asarray(log_n, float), np.asarray(log_d, float))
    norms = np.max(np.abs(jac), axis=0)
    vanished = ~(norms >= VANISHED)  # also NaN
    hits = [(name, "vanished") for name, v in zip(law.internal_names, vanished) if v]
    keep = np.flatnonzero(~vanished)
    if keep.size:
        cols = jac[:, keep] / np.linalg.norm(jac[:, keep], axis=0)
        _, sv, vt = np.linalg.svd(cols, full_matrices=True)
        sv = np.concatenate([sv, np.zeros(max(0, keep.size - sv.size))])
        null = vt[sv <= NULL_TOLERANCE * sv[0]]
        moved = (np.abs(null) > _NULL_SHARE).any(axis=0) if null.size else np.zeros(keep.size, bool)
        hits += [(law.internal_names[j], "free") for j, m in zip(keep, moved) if m]
    return hits


def _describe(law, hit) -> str:
    name, kind = hit
    if kind == "vanished":
        return f"{name} has no effect on the fit (its term vanished)"
    if kind == "free":
        return f"{name} is not determined by the data (a flat direction of the fit)"
    return f"{name} is not finite"


def identification_flags(law, theta, log_n, log_d) -> list:
    """Why a fitted internal vector leaves parameters undetermined (empty when it does not).

    Args:
        law (`Law`): the law.
        theta (`array-like`): internal parameters of the fit.
        log_n, log_d (`np.ndarray`): logs of the data's N and D (the points it was fitted to).

    Returns:
        `list[str]`: one sentence per undetermined parameter, without numbers of the refit, so
        that sentences of many refits can be counted.
    """
    return [_describe(law, h) for h in identification_hits(law, theta, log_n, log_d)]


def _public_dependence(law, theta) -> dict:
    """internal name -> the public parameters that change with it (checked numerically)."""
    base = law.from_internal(theta)
    out = {}
    for j, name in enumerate(law.internal_names):
        moved = np.array(theta, float)
        moved[j] += 1e-3
        new = law.from_internal(moved)
        out[name] = {k for k in law.param_names if not math.isclose(new[k], base[k], rel_tol=1e-9)}
    return out


def affected_parameters(law, hits, dependence) -> set:
    """Public parameters whose refit values are arbitrary: those that change with an internal
    parameter in `hits` (see `identification_hits`)."""
    internal = {name for name, _ in hits}
    return set().union(*(dependence[name] for name in internal)) if internal else set()


def _endpoint(sorted_values: np.ndarray, pct: float):
    """numpy's linear percentile of sorted values, or None when it reaches an infinite one."""
    h = (sorted_values.size - 1) * pct / 100.0
    lo, hi = math.floor(h), math.ceil(h)
    a, b = sorted_values[lo], sorted_values[hi]
    if not np.isfinite(a) or (hi != lo and not np.isfinite(b)):
        return None
    return float(a + (b - a) * (h - lo)) if hi != lo else float(a)


def percentile_intervals(names, values, estimates, at_bound, level: float = 0.95) -> dict:
    """Percentile intervals of converged refits, with sides that reach a bound left open.

    Args:
        names (`list[str]`): quantity names (columns of `values`).
        values (`np.ndarray`): `(m, p)` values of the converged refits (failed ones removed).
        estimates (`array-like`): `(p,)` point estimates from the full data.
        at_bound (`np.ndarray`): `(m,)` or `(m, p)` bool: refits whose value (of every
            quantity, or of each) is arbitrary (undetermined by the data, or at a real optimiser
            bound, as in the bounded distillation fit).
        level (`float`): interval level.

    Returns:
        `dict` name -> `{"interval": [lo, hi], "status": ..., "note": ...}` with `None` for an
        unbounded side; status `"ok"`, `"unbounded"` or `"excludes_estimate"`.
    """
    at_bound = np.asarray(at_bound, bool)
    values = np.asarray(values, float).reshape(len(at_bound), len(names))
    if at_bound.ndim == 1:
        at_bound = np.repeat(at_bound[:, None], len(names), axis=1)
    q = 50.0 * (1.0 - level)
    out = {}
    for j, name in enumerate(names):
        est = float(estimates[j])
        v = values[:, j].copy()
        v[~np.isfinite(v)] = np.inf
        pinned = at_bound[:, j]
        v[pinned] = np.where(v[pinned] >= est, np.inf, -np.inf)
        v.sort()
        lo, hi = _endpoint(v, q), _endpoint(v, 100.0 - q)
        open_sides = [s for s, e in (("below", lo), ("above", hi)) if e is None]
        inside = (lo is None or lo <= est) and (hi is None or est <= hi)
        if not inside:
            status = "excludes_estimate"
            note = (
                f"the estimate {est:.4g} lies outside the central {100 * level:g}% of the "
                "converged refits: the bootstrap distribution is biased (few runs, or a "
                "skewed parameter), so read the interval as the refits' spread, not as a "
                "confidence interval around the estimate"
            )
        elif open_sides:
            status = "unbounded"
            note = (
                f"unbounded {' and '.join(open_sides)}: more than {q:g}% of the refits on "
                "that side left it undetermined (see bootstrap.unidentified)"
            )
        else:
            status, note = "ok", None
        out[name] = {"interval": [lo, hi], "status": status, "note": note}
    return out


def interval_summary(
    law, samples, converged, estimate, data_n, data_d, level: float = 0.95, derived=None, hits=None
) -> dict:
    """Intervals and refit counts of a bootstrap, for fit.json.

    Args:
        law (`Law`): the law.
        samples (`np.ndarray`): `(n_boot, p)` public parameters of every refit (NaN rows: failed).
        converged (`np.ndarray`): `(n_boot,)` bool, refits that converged.
        estimate (`dict`): the full-data fit's public parameters.
        data_n, data_d (`np.ndarray`): the fitted points' N and D (for `identification_hits`).
        level (`float`): interval level.
        derived (`callable`, *optional*): public parameters -> `dict` of derived quantities
            (e.g. compute-optimal sizes), given intervals too.
        hits (`list`, *optional*): per refit (rows of `samples`), its `identification_hits` on its own
            resample (a resample can leave parameters undetermined that the full data pin
            down); default: evaluated at the full data's points.

    Returns:
        `dict` with `ci` (name -> [lo, hi], `None` sides unbounded), `ci_status`, `ci_notes`
        and `counts` (`n_converged`, `n_failed`, `n_unidentified`, `unidentified`: reason -> count).
    """
    samples = np.asarray(samples, float)
    usable = np.asarray(converged, bool) & np.all(np.isfinite(samples), axis=1)
    rows = samples[usable]
    log_n, log_d = np.log(np.asarray(data_n, float)), np.log(np.asarray(data_d, float))
    thetas = [law.to_internal(dict(zip(law.param_names, r))) for r in rows]
    if hits is None:
        hits = [identification_hits(law, th, log_n, log_d) for th in thetas]
    else:
        hits = [[tuple(h) for h in hits[i]] for i in np.flatnonzero(usable)]
    dependence = _public_dependence(law, law.to_internal(estimate))
    names = list(law.param_names)
    pinned = np.zeros((len(rows), len(names)), bool)
    for i, h in enumerate(hits):
        touched = affected_parameters(law, h, dependence)
        pinned[i] = [k in touched for k in names]
    est = [estimate[k] for k in names]
    values = rows
    if derived is not None:
        est_derived = derived(estimate)
        extra = list(est_derived)
        names += extra
        est += [est_derived[k] for k in extra]
        per_refit = [derived(dict(zip(law.param_names, r))) for r in rows]
        values = np.column_stack(
            [rows, np.array([[d[k] for k in extra] for d in per_refit], float).reshape(len(rows), len(extra))]
        )
        # a derived quantity depends on every parameter: any undetermined one makes it arbitrary
        pinned = np.column_stack([pinned, np.repeat(pinned.any(axis=1, keepdims=True), len(extra), axis=1)])
    result = percentile_intervals(names, values, est, pinned, level)
    return {
        "ci": {k: r["interval"] for k, r in result.items()},
        "ci_status": {k: r["status"] for k, r in result.items()},
        "ci_notes": {k: r["note"] for k, r in result.items() if r["note"]},
        "counts": {
            "n_converged": int(usable.sum()),
            "n_failed": int((~usable).sum()),
            "n_unidentified": sum(bool(h) for h in hits),
            "unidentified": dict(Counter(_describe(law, x) for h in hits for x in set(h))),
        },
    }


def format_interval(fit: dict, name: str, digits: int = 5) -> str:
    """`[lo, hi]` of a fit's parameter for people: `unbounded` sides, and why an interval
    that misses its estimate does; empty when the fit has no interval for `name`."""
    ci = fit.get("ci") or {}
    if name not in ci:
        return ""
    lo, hi = ci[name]
    text = "[" + ", ".join("unbounded" if v is None else f"{v:.{digits}g}" for v in (lo, hi)) + "]"
    if (fit.get("ci_status") or {}).get(name) == "excludes_estimate":
        text += " (excludes the estimate: the refits are biased, see ci_notes)"
    return text


def bootstrap_lines(fit: dict) -> list:
    """Sentences for people about what a fit and its refits leave undetermined (empty when there
    is nothing to say): how many refits failed or left parameters undetermined, and why. Reads
    fit.json files of both versions (`unidentified`, and the older `at_bound`)."""
    lines = []
    if fit.get("unidentified"):
        lines.append(
            "warning: the data do not determine some parameters of the fit ("
            + "; ".join(fit["unidentified"])
            + ")"
        )
    elif fit.get("at_bound"):  # fit.json written before the optimiser's ranges stopped being bounds
        lines.append(
            "warning: the fit itself is at an optimiser bound ("
            + "; ".join(fit["at_bound"])
            + "): the data do not determine those parameters"
        )
    boot = fit.get("bootstrap")
    if boot and "n_converged" in boot and "n_unidentified" in boot:
        determined = boot["n_converged"] - boot["n_unidentified"]
        text = (
            f"bootstrap: {boot['n']} refits, {determined} converged with every parameter determined, "
            f"{boot['n_unidentified']} left some undetermined, {boot['n_failed']} failed or not "
            "converged (left out)"
        )
        if boot["unidentified"]:
            text += "; undetermined: " + "; ".join(f"{k} ({v})" for k, v in boot["unidentified"].items())
        lines.append(text)
    elif boot and "n_converged" in boot and "n_at_bound" in boot:
        inside = boot["n_converged"] - boot["n_at_bound"]
        text = (
            f"bootstrap: {boot['n']} refits, {inside} converged inside the search ranges, "
            f"{boot['n_at_bound']} at a bound, {boot['n_failed']} failed or not converged "
            "(left out)"
        )
        if boot["at_bound"]:
            text += "; bounds: " + "; ".join(f"{k} ({v})" for k, v in boot["at_bound"].items())
        lines.append(text)
    lines += [
        f"{k}: {note}"
        for k, note in (fit.get("ci_notes") or {}).items()
        if (fit.get("ci_status") or {}).get(k) == "excludes_estimate"
    ]
    return lines
