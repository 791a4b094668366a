"""`scaling fit --law auto`: choose the L(N, D) form that extrapolates best inside the data.

Users fit a law to predict larger models, so the forms are scored on exactly that, without
looking at the runs to be predicted: **leave-the-largest-models-out validation**. In each fold
the largest models are held out (those in the top 20 %, and in another fold the top 35 %, of the
range of log model size: `FOLDS`), each candidate is fitted to the smaller models and scored by
its relative error on the held-out ones. A fold must leave at least `MIN_SIZES` model sizes (and
enough runs for every candidate) to fit; on Gadre et al.'s ladders of four sizes (11M-411M)
only the 20 % fold (the 411M models) qualifies. Data with too few model sizes for any such fold
falls back to holding out the largest-compute runs (20 % and 35 % of the runs), and says so
(`fold_kind`).

**Choice.** The baseline is the most restricted form of the Chinchilla family that fitted
(`BASELINES`): `gadre` (Gadre et al. 2024), which is Chinchilla with its two exponents tied
(alpha = beta), else Chinchilla itself. Another law replaces it only when it is better on *every*
fold by a margin that the fold can support: its mean absolute error must be lower by more than
`TIE_PCT` percentage points, and the paired per-run differences `|e_candidate| - |e_baseline|`
must be significantly below zero (one-sided paired t-test at `ALPHA`; a fold of one run cannot
show that). The challengers go up the nested chain gadre, Chinchilla, chinchilla_gamma first, then
kaplan, each against the law chosen so far, so a law richer than Chinchilla must beat Chinchilla
once Chinchilla has beaten gadre (`_choose`).
For the nested pair this is the usual test of a restriction: Chinchilla's extra exponent is used
only when the held-out runs show that the tie costs accuracy (on the Gadre ladders with
non-embedding N, where the fitted alpha is a quarter of beta, they do: t = 8-12).
Held-out folds are small, so a lower mean alone is weak evidence: on Gadre et al.'s C4 ladder
chinchilla_gamma's lower mean than Chinchilla's on the held-out 411M models (2.03 % against
2.13 %, paired t = -0.3) came with a 2x worse prediction of the 1.4B and 6.9B runs. Why an
earlier rule (held out by compute) chose it: there the largest-compute runs are the
*over-trained small* models, so it validated extrapolation in tokens, not in model size, and its
errors had the opposite sign to the errors on the larger models (docs/scaling.md).

The chosen law is then fitted to all the data. Its **extrapolation band** is the prediction times
`1 +- e`: `e` is the chosen law's worst validation error per decade of extrapolation (per fold:
its largest |error| over the fold's largest distance, in decades of model size for size folds,
of compute for compute folds; distances below `MIN_DECADES` count as that), times the target's
own distance beyond the fitted data (the larger of its decades beyond the largest fitted model
and beyond the largest fitted compute), and at least its worst validation error. The band also
spans the predictions of every candidate that scored within `BAND_PCT` of the chosen one, so it
includes the model uncertainty. This is an empirical band, not a confidence interval: it says
how wrong the same procedure was one step smaller, and assumes the error grows no faster than
linearly with the distance.

Limits: with few runs per fold the scores are noisy (hence the test); every candidate can share
a bias (on the three Gadre ladders, with total parameter counts, every form predicts too low a
loss for the 6.9B runs, so no choice among them fixes that); and the band covers only errors of
the size already seen inside the data.
"""

from __future__ import annotations

import numpy as np

from .band import MIN_DECADES, extrapolation_band

__all__ = ["CANDIDATES", "BASELINES", "FOLDS", "select_law", "extrapolation_band"]

CANDIDATES = ("gadre", "chinchilla", "chinchilla_gamma", "kaplan")
FOLDS = (0.2, 0.35)  # top share of the log model-size range held out per fold (of the runs, by compute)
MIN_SIZES = 3  # model sizes a fold must leave to fit: two sizes cannot show curvature in N
TIE_PCT = 0.1  # a larger law must lower the fold's MAPE by more than this (percentage points)
ALPHA = 0.05  # one-sided paired t-test: the larger law's per-run improvement must be significant
BAND_PCT = 0.5  # candidates within this of the best score widen the band with their predictions
FOLD_KINDS = ("models", "compute")


# the default: the first of these that fitted every fold (gadre is Chinchilla restricted to alpha = beta);
# another law is chosen only when it is significantly better
BASELINES = ("gadre", "chinchilla")
NESTED = ("gadre", "chinchilla", "chinchilla_gamma")  # each is the one before with one parameter freed


def _size_folds(n, min_fit: int):
    """Hold out the largest models: those within the top share (`FOLDS`) of the fitted range of
    log model size; keep the folds that leave `MIN_SIZES` sizes and `min_fit` runs."""
    log_n = np.log10(n)
    span = log_n.max() - log_n.min()
    masks = []
    for share in FOLDS:
        test = log_n >= log_n.max() - share * span - 1e-12
        fit = ~test
        if fit.sum() < min_fit or np.unique(n[fit]).size < MIN_SIZES:
            continue
        if not any((m == test).all() for m in masks):
            masks.append(test)
    return masks


def _compute_folds(compute, min_fit: int):
    """Hold out the largest-compute runs (each fold's share, at least one, at most all but `min_fit`)."""
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


def _paired_test(errors_a, errors_b) -> dict:
    """Is law a better than law b on the same held-out runs? A one-sided paired t-test on the
    differences of absolute errors (percent): `better` when the mean difference is below
    `-TIE_PCT` and significant at `ALPHA`. One run cannot show that."""
    from scipy.stats import t as student_t

    diff = np.abs(np.asarray(errors_a)) - np.abs(np.asarray(errors_b))
    k, mean = diff.size, float(diff.mean())
    if k < 2:
        return {"mean_diff_pct": mean, "t": None, "t_crit": None, "better": False}
    sd = float(diff.std(ddof=1))
    if sd > 0:
        t = mean / (sd / np.sqrt(k))
    else:
        t = -np.inf if mean < 0 else (np.inf if mean > 0 else 0.0)
    crit = float(student_t.ppf(1.0 - ALPHA, k - 1))
    return {
        "mean_diff_pct": mean,
        "t": float(t) if np.isfinite(t) else None,
        "t_crit": crit,
        "better": bool(mean < -TIE_PCT and t < -crit),
    }


def select_law(
    n,
    d,
    loss,
    candidates=CANDIDATES,
    kind="huber",
    delta=1e-3,
    folds="models",
    baselines=BASELINES,
    stepwise=True,
) -> dict:
    """Score each candidate by leave-the-largest-out validation and choose one.

    Args:
        n, d, loss (`array-like`): the runs (parameters, tokens, loss).
        candidates (`tuple[str]`): L(N, D) laws to compare.
        kind, delta: the robust loss of every fit.
        folds (`str`): `"models"` (default: hold out the largest model sizes; falls back to
            `"compute"` when the data has too few sizes) or `"compute"` (hold out the
            largest-compute runs).
        baselines (`tuple[str]`): the default law is the first of these that fitted every fold
            (`BASELINES`; the benchmark also runs the rule before, with Chinchilla alone).
        stepwise (`bool`): challengers replace the law chosen so far (default) or the baseline
            (the rule before; see `_choose`).

    Returns:
        `dict` with `chosen`, `method`, `fold_kind`, `folds` (held-out runs per fold), `scores`
        (law -> `{"mape", "fold_mape", "fold_errors_pct", "max_abs_pct", "errors_pct",
        "n_params"}`; `None` for a law that could not be fitted on some fold), `comparisons` (each
        candidate against the baseline, per fold) and `band_pct` (see `extrapolation_band`).
    """
    from .laws import get_law
    from .logs import ScalingDataError

    if folds not in FOLD_KINDS:
        raise ValueError(f"folds must be one of {FOLD_KINDS}, got {folds!r}")
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    compute = 6.0 * n * d
    need = max(len(get_law(c).param_names) for c in candidates) + 1
    fold_kind, masks = folds, []
    if folds == "models":
        masks = _size_folds(n, min_fit=need)
        if not masks:
            fold_kind = "compute"
    if fold_kind == "compute":
        masks = _compute_folds(compute, min_fit=need)
    if not masks:
        raise ScalingDataError(
            f"--law auto needs more than {need} runs to hold the largest out and still fit every "
            f"candidate ({', '.join(candidates)}); got {n.size}. Pick a law with --law"
        )
    axis = n if fold_kind == "models" else compute
    scores = {law: _score(law, n, d, loss, compute, axis, masks, kind, delta) for law in candidates}
    ok = {k: v for k, v in scores.items() if v is not None}
    if not ok:
        raise ScalingDataError("--law auto: no candidate law could be fitted on the validation folds")
    chosen, baseline, comparisons = _choose(ok, baselines, stepwise)
    best = ok[chosen]["mape"]
    close = [k for k, v in ok.items() if v["mape"] <= best + BAND_PCT]
    return {
        "method": "leave-the-largest-out validation",
        "fold_kind": fold_kind,
        "candidates": list(candidates),
        "baseline": baseline,
        "chosen": chosen,
        "folds": [
            {
                "held_out": int(m.sum()),
                "min_held_out_params": float(n[m].min()),
                "min_held_out_flops": float(compute[m].min()),
                "fitted_sizes": int(np.unique(n[~m]).size),
            }
            for m in masks
        ],
        "scores": scores,
        "comparisons": comparisons,
        "close": close,
        "band_pct": ok[chosen]["max_abs_pct"],
        "band_pct_per_decade": ok[chosen]["max_pct_per_decade"],
        "fitted_max_flops": float(compute.max()),
        "fitted_max_params": float(n.max()),
        "tie_pct": TIE_PCT,
        "alpha": ALPHA,
        "band_candidates_pct": BAND_PCT,
    }


def _score(law, n, d, loss, compute, axis, masks, kind, delta):
    """One candidate's validation errors over the folds (`None` when a fold cannot be fitted)."""
    from .fit import check_fit_data, fit_arrays
    from .laws import get_law
    from .logs import ScalingDataError

    lw = get_law(law)
    fold_errors, rates = [], []
    try:
        for test in masks:
            fit = ~test
            check_fit_data(law, n[fit], d[fit], loss[fit])
            res = fit_arrays(n[fit], d[fit], loss[fit], law, kind=kind, delta=delta)
            err = 100.0 * (lw.predict(res["params"], n[test], d[test]) / loss[test] - 1.0)
            if not np.all(np.isfinite(err)):
                return None
            dist = max(float(np.log10(axis[test].max() / axis[fit].max())), MIN_DECADES)
            fold_errors.append([float(e) for e in err])
            rates.append(float(np.max(np.abs(err))) / dist)
    except (ScalingDataError, ValueError, FloatingPointError):
        return None
    errors = np.concatenate([np.asarray(e) for e in fold_errors])
    return {
        "mape": float(np.mean(np.abs(errors))),
        "fold_mape": [float(np.mean(np.abs(e))) for e in fold_errors],
        "fold_errors_pct": fold_errors,
        "max_abs_pct": float(np.max(np.abs(errors))),
        "max_pct_per_decade": float(max(rates)),
        "errors_pct": [float(e) for e in errors],
        "n_params": len(lw.param_names),
    }


def _compare(ok: dict, law: str, against: str) -> dict:
    """`law` against `against` on the same held-out runs: `_paired_test` on all its held-out
    predictions together, and a lower mean error on every fold (`chosen_over` when both)."""
    pooled = _paired_test(ok[law]["errors_pct"], ok[against]["errors_pct"])
    fold_diffs = [
        float(np.mean(np.abs(a)) - np.mean(np.abs(b)))
        for a, b in zip(ok[law]["fold_errors_pct"], ok[against]["fold_errors_pct"])
    ]
    wins = pooled["better"] and all(x < 0 for x in fold_diffs)
    return {"law": law, "against": against, **pooled, "fold_mean_diff_pct": fold_diffs, "chosen_over": wins}


def _choose(ok: dict, baselines=BASELINES, stepwise=True):
    """The baseline (the first of `baselines` that fitted; else the simplest law that did), unless
    another law is significantly better (`_compare`).

    `stepwise` (default): the other laws challenge the law chosen so far, one at a time, and
    replace it only when significantly better than *it*: first up the nested chain (`NESTED`:
    gadre, Chinchilla, chinchilla_gamma, each the one before with one parameter freed), then the
    laws outside it (kaplan). So with gadre as the baseline a law richer than Chinchilla must still
    beat Chinchilla when Chinchilla has beaten gadre (restricting the baseline does not lower the
    bar for the richer forms), and a law outside the chain is tested against the chain's pick, not
    against a restriction the data already rejected. Without `stepwise`, every law challenges the
    baseline and the lowest mean error among the winners is chosen, however small its lead over
    the other winners."""
    baseline = next(
        (b for b in baselines if b in ok), min(ok, key=lambda k: (ok[k]["n_params"], ok[k]["mape"]))
    )
    chain = [k for k in NESTED if k in ok and k != baseline]
    others = chain + sorted(
        (k for k in ok if k != baseline and k not in NESTED), key=lambda k: (ok[k]["n_params"], ok[k]["mape"])
    )
    comparisons, winners, current = [], [], baseline
    for law in others:
        cmp = _compare(ok, law, current if stepwise else baseline)
        comparisons.append(cmp)
        if cmp["chosen_over"]:
            winners.append(law)
            if stepwise:
                current = law
    if not stepwise:
        current = min(winners, key=lambda k: ok[k]["mape"]) if winners else baseline
    return current, baseline, comparisons


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
