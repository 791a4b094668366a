"""`scaling fit --law auto`: choose the L(N, D) form that extrapolates best inside the data.

Users fit a law to predict larger runs, so the forms are scored on exactly that, without looking
at the runs to be predicted: **leave-the-largest-out validation**. For each fold the runs are
sorted by compute, the largest-compute share (`FOLDS`: the top 20 % and the top 35 %, at least
one run, at most all but `min_fit` runs) is held out, each candidate is fitted to the rest and
scored by its absolute relative error on the held-out runs. A candidate's score is its mean
absolute percentage error over all held-out predictions of all folds. The simplest law (fewest
parameters: Chinchilla) is kept unless a larger one beats it on the mean by more than `TIE_PCT`
*and* on every fold: a better mean from one fold is not evidence enough. (This does not make the
choice right: on Gadre et al.'s C4 ladder chinchilla_gamma wins both folds inside the small models
and then errs twice as much as Chinchilla on the 1.4B and 6.9B runs; see docs/scaling.md.)

The chosen law is then fitted to all the data. Its **extrapolation band** is the prediction times
`1 +- e`: `e` is the chosen law's worst validation error per decade of compute it extrapolated
(`max |error| / log10(C / C_max fitted)`, distances below `MIN_DECADES` counted as that), times
the target's own distance in decades beyond the largest fitted run, and at least its worst
validation error. The band also spans the predictions of every candidate that scored within
`BAND_PCT` of the chosen one, so it includes the model uncertainty. This is an empirical band,
not a confidence interval: it says how wrong the same procedure was one step smaller, and assumes
the error grows no faster than linearly with the distance.

Limits: with few runs per fold the scores are noisy; every candidate can share a bias (all of
them err on the same side when the largest runs were trained differently); and the band covers
only errors of the size already seen inside the data.
"""

from __future__ import annotations

import numpy as np

from .band import MIN_DECADES, extrapolation_band

__all__ = ["CANDIDATES", "FOLDS", "select_law", "extrapolation_band"]

CANDIDATES = ("chinchilla", "chinchilla_gamma", "kaplan")
FOLDS = (0.2, 0.35)  # share of the runs, by compute, held out in each fold
TIE_PCT = 0.1  # scores closer than this (percentage points) count as a tie: the simpler law wins
BAND_PCT = 0.5  # candidates within this of the best score widen the band with their predictions


def _fold_masks(compute, min_fit: int):
    order = np.argsort(compute, kind="stable")
    masks = []
    for share in FOLDS:
        k = int(round(share * compute.size))
        k = min(max(k, 1), compute.size - min_fit)
        if k < 1:
            continue
        test = np.zeros(compute.size, bool)
        test[order[-k:]] = True
        if not any((m == test).all() for m in masks):
            masks.append(test)
    return masks


def select_law(n, d, loss, candidates=CANDIDATES, kind="huber", delta=1e-3) -> dict:
    """Score each candidate by leave-the-largest-out validation and choose one.

    Args:
        n, d, loss (`array-like`): the runs (parameters, tokens, loss).
        candidates (`tuple[str]`): L(N, D) laws to compare.
        kind, delta: the robust loss of every fit.

    Returns:
        `dict` with `chosen`, `method`, `folds` (held-out runs per fold), `scores` (law ->
        `{"mape", "max_abs_pct", "errors_pct", "n_params"}`; `None` for a law that could not be
        fitted on some fold) and `band_pct` (see `extrapolation_band`).
    """
    from .fit import check_fit_data, fit_arrays
    from .laws import get_law
    from .logs import ScalingDataError

    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    compute = 6.0 * n * d
    need = max(len(get_law(c).param_names) for c in candidates) + 1
    masks = _fold_masks(compute, min_fit=need)
    if not masks:
        raise ScalingDataError(
            f"--law auto needs more than {need} runs to hold the largest out and still fit every "
            f"candidate ({', '.join(candidates)}); got {n.size}. Pick a law with --law"
        )
    scores = {}
    for law in candidates:
        lw = get_law(law)
        errors, folds, rates = [], [], []
        try:
            for test in masks:
                fit = ~test
                check_fit_data(law, n[fit], d[fit], loss[fit])
                res = fit_arrays(n[fit], d[fit], loss[fit], law, kind=kind, delta=delta)
                err = 100.0 * (lw.predict(res["params"], n[test], d[test]) / loss[test] - 1.0)
                dist = np.maximum(np.log10(compute[test] / compute[fit].max()), MIN_DECADES)
                errors += list(err)
                folds.append(float(np.mean(np.abs(err))))
                rates += list(np.abs(err) / dist)
        except (ScalingDataError, ValueError, FloatingPointError):
            scores[law] = None
            continue
        errors = np.asarray(errors)
        if not np.all(np.isfinite(errors)):
            scores[law] = None
            continue
        scores[law] = {
            "mape": float(np.mean(np.abs(errors))),
            "fold_mape": folds,
            "max_abs_pct": float(np.max(np.abs(errors))),
            "max_pct_per_decade": float(np.max(rates)),
            "errors_pct": [float(e) for e in errors],
            "n_params": len(lw.param_names),
        }
    ok = {k: v for k, v in scores.items() if v is not None}
    if not ok:
        raise ScalingDataError("--law auto: no candidate law could be fitted on the validation folds")
    chosen = _choose(ok)
    best = ok[chosen]["mape"]
    close = [k for k, v in ok.items() if v["mape"] <= best + BAND_PCT]
    return {
        "method": "leave-the-largest-out validation",
        "candidates": list(candidates),
        "chosen": chosen,
        "folds": [{"held_out": int(m.sum()), "min_held_out_flops": float(compute[m].min())} for m in masks],
        "scores": scores,
        "close": close,
        "band_pct": ok[chosen]["max_abs_pct"],
        "band_pct_per_decade": ok[chosen]["max_pct_per_decade"],
        "fitted_max_flops": float(compute.max()),
        "tie_pct": TIE_PCT,
        "band_candidates_pct": BAND_PCT,
    }


def _choose(ok: dict) -> str:
    """The simplest law, unless a larger one beats it on every fold and on the mean by more than
    `TIE_PCT` (a better mean from one lucky fold is not enough)."""
    order = sorted(ok, key=lambda k: (ok[k]["n_params"], ok[k]["mape"]))
    chosen = order[0]
    for law in order[1:]:
        a, b = ok[law], ok[chosen]
        if a["mape"] < b["mape"] - TIE_PCT and all(x < y for x, y in zip(a["fold_mape"], b["fold_mape"])):
            chosen = law
    return chosen


def fit_auto(points, method="vp", loss="huber", delta=1e-3, holdout_above=None, drop_highest=0, **kw) -> dict:
    """`scaling fit --law auto`: select the law (`select_law`) on the runs the fit uses, fit it with
    `scaling.fit.fit_runs` (same options), and record the selection in the fit's `selection`.

    The close candidates are also fitted to all the used runs (`selection.fits`), so that
    `scaling predict` can give the extrapolation band. With `holdout_above`, every held-out run
    gets its band and whether the band covers it.
    """
    from .fit import fit_arrays, fit_runs
    from .logs import to_arrays

    arrays = to_arrays(points)
    use = np.ones(arrays["loss"].size, bool)
    if drop_highest:
        use[np.argsort(arrays["loss"])[::-1][:drop_highest]] = False
    if holdout_above is not None:
        use &= arrays["flops"] <= holdout_above
    n, d, y = arrays["params"][use], arrays["tokens"][use], arrays["loss"][use]
    selection = select_law(n, d, y, kind=loss, delta=delta)
    fit = fit_runs(
        points,
        selection["chosen"],
        method,
        loss,
        delta,
        holdout_above=holdout_above,
        drop_highest=drop_highest,
        **kw,
    )
    selection["fits"] = {selection["chosen"]: fit["params"]}
    for law in selection["close"]:
        if law not in selection["fits"]:
            selection["fits"][law] = fit_arrays(n, d, y, law, method, loss, delta)["params"]
    fit["selection"] = selection
    fit["law_requested"] = "auto"
    if "holdout" in fit:
        for row in fit["holdout"]["points"]:
            band = extrapolation_band(selection, selection["fits"], row["params"], row["tokens"])
            row["band"] = band["band"]
            row["covered"] = bool(band["band"][0] <= row["loss"] <= band["band"][1])
        fit["holdout"]["coverage"] = float(np.mean([r["covered"] for r in fit["holdout"]["points"]]))
    return fit
