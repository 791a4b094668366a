"""Robust fitting of scaling laws, with bootstrap intervals, and the fit.json file.

This module holds the fitting entry points: `fit_arrays` (one fit of arrays), `check_fit_data`,
`bootstrap` (resample-and-refit intervals, in worker processes), `fit_runs` (runs to the
self-contained fit.json dictionary), `save_fit` and `load_fit`.

The objective follows Hoffmann et al. (2022) and Besiroglu et al. (2024): a robust loss
(Huber, delta = 1e-3 by default) of the residuals in log-loss, **summed** over points, with
the law written in its log-sum-exp parameterisation (see `scaling.laws`).

Two global searches are available:

- `"vp"` (default), variable projection: for fixed exponents the law is linear in its
  coefficients, so a dense exponent grid is scored with a batched non-negative least-squares
  solve; the best distinct basins are then refined with L-BFGS-B on the exact objective using
  analytic gradients.
- `"grid"`: L-BFGS-B from every point of Chinchilla's start grid (4,500 starts for the
  Chinchilla law), best result kept. Exact but much slower; kept for comparison.

The objective, the searches, L-BFGS-B and BLAS thread limiting live in `scaling.optimize`;
`LOSSES`, `robust_loss`, `objective`, `vp_starts`, `grid_starts` and `single_thread_blas` are
re-exported here.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .checks import ignored_tokens
from .intervals import identification_flags, identification_hits, interval_summary
from .laws import get_law
from .logs import ScalingDataError
from .optimize import (
    LOSSES,
    NOT_FINITE,
    _lbfgs,
    grid_starts,
    objective,
    robust_loss,
    single_thread_blas,
    vp_starts,
)

__all__ = [
    "LOSSES",
    "robust_loss",
    "objective",
    "vp_starts",
    "grid_starts",
    "fit_arrays",
    "check_fit_data",
    "bootstrap",
    "fit_runs",
    "save_fit",
    "load_fit",
]


def fit_arrays(
    n,
    d,
    loss,
    law="chinchilla",
    method="vp",
    kind="huber",
    delta=1e-3,
    starts=None,
    top_k=4,
    grid_points=None,
    progress=False,
) -> dict:
    """Fit a law to arrays; returns the core of a fit.json dictionary (see `fit_runs`).

    Args:
        n, d, loss (`array-like`): parameter counts, token counts (ignored by `power`) and
            losses. Must be finite and positive (see `check_fit_data`).
        law (`str`): a name of `scaling.laws.LAWS` (`"chinchilla"`, `"power"`, `"kaplan"`,
            `"chinchilla_gamma"`, `"gadre"`).
        method (`str`): `"vp"` (variable projection, default) or `"grid"` (Chinchilla grid).
        kind (`str`): robust loss (`"huber"`, `"squared"`, `"cauchy"`).
        delta (`float`): its scale.
        starts (`list`, *optional*): extra internal start vectors (e.g. a previous optimum).
        top_k (`int`): number of VP basins refined.
        grid_points (`int`, *optional*): VP grid points per exponent.
        progress (`bool`): show a progress bar over the starts (when there are many).

    Returns:
        `dict` with `law, params, internal, objective, converged, message, n_points,
        n_starts, method, loss, delta, seconds`.
    """
    with single_thread_blas():
        return _fit_arrays(n, d, loss, law, method, kind, delta, starts, top_k, grid_points, progress)


def _fit_arrays(n, d, loss, law, method, kind, delta, starts, top_k, grid_points, progress):
    lw = get_law(law)
    n = np.asarray(n, float)
    loss = np.asarray(loss, float)
    d = np.asarray(d, float) if d is not None and lw.uses_tokens else np.ones_like(n)
    t0 = time.perf_counter()
    if method == "vp":
        cands = vp_starts(lw, n, d, loss, kind, delta, points=grid_points, top_k=top_k)
    elif method == "grid":
        cands = grid_starts(lw)
    else:
        raise ValueError(f"unknown method {method!r}; choose 'vp' or 'grid'")
    cands = list(starts or []) + cands
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    best = None
    it = cands
    if progress and len(cands) > 20:
        from tqdm.auto import tqdm

        it = tqdm(cands, desc=f"L-BFGS ({method})", unit="start", leave=False)
    tight = method == "vp"  # the grid runs scipy's default tolerances, then polishes the best
    for th in it:
        res = _lbfgs(th, lw, log_n, log_d, log_l, kind, delta, tight)
        if np.isfinite(res.fun) and res.fun < NOT_FINITE and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ScalingDataError(f"law {lw.name!r}: no start reached a finite objective")
    if not tight:
        polished = _lbfgs(best.x, lw, log_n, log_d, log_l, kind, delta)
        best = polished if polished.fun <= best.fun else best
    theta = best.x
    grad_norm = float(np.max(np.abs(best.jac))) if best.jac is not None else float("nan")
    return {
        "law": lw.name,
        "params": lw.from_internal(theta),
        "internal": [float(v) for v in theta],
        "objective": float(best.fun),
        "converged": bool(best.success) or grad_norm < 1e-8,
        "message": str(best.message),
        "grad_norm": grad_norm,
        "n_points": int(n.size),
        "n_starts": len(cands),
        "method": method,
        "loss": kind,
        "delta": float(delta),
        "seconds": time.perf_counter() - t0,
    }


def check_fit_data(law: str, n, d, loss, sources=None):
    """Raise `ScalingDataError` when the data cannot identify the law.

    Checks finiteness and positivity (naming the source row), enough points (parameters + 1)
    and, for laws of N and D, more than one distinct N and D.
    """
    lw = get_law(law)
    n = np.asarray(n, float)
    loss = np.asarray(loss, float)
    cols = {"params (N)": n, "loss": loss}
    if lw.uses_tokens:
        cols["tokens (D)"] = np.asarray(d, float)
    for name, arr in cols.items():
        bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = sources[i] if sources is not None else f"point {i}"
            raise ScalingDataError(f"{where}: {name} must be finite and > 0, got {arr[i]!r}")
    need = len(lw.param_names) + 1
    if n.size < need:
        raise ScalingDataError(
            f"law {law!r} has {len(lw.param_names)} parameters and needs at least {need} points; got {n.size}"
        )
    if lw.uses_tokens:
        for name, arr in (("parameter count N", n), ("token count D", cols["tokens (D)"])):
            if np.unique(arr).size < 2:
                raise ScalingDataError(
                    f"law {law!r} is a function of N and D but all points "
                    f"share a single {name} ({arr[0]:.4g}); it cannot be "
                    "identified. Add runs of other sizes or fit --law power."
                )
    elif np.unique(n).size < 2:
        raise ScalingDataError(f"all points share a single parameter count N ({n[0]:.4g})")


# ------------------------------------------------------------------------ bootstrap
def _bootstrap_chunk(args):
    law, n, d, loss, chunk, kind, delta, theta0, grid_points = args
    out = []
    with single_thread_blas():
        for idx in chunk:
            out.append(_refit(law, n[idx], d[idx], loss[idx], kind, delta, theta0, grid_points))
    return out


def _refit(law, n, d, loss, kind, delta, theta0, grid_points):
    """A refit's `(internal vector, identification hits)`; `None` when it failed, `False` when it
    did not converge."""
    try:
        check_fit_data(law, n, d, loss)
        res = fit_arrays(
            n, d, loss, law, kind=kind, delta=delta, starts=[theta0], top_k=2, grid_points=grid_points
        )
    except (ScalingDataError, ValueError, FloatingPointError):
        return None
    if not res["converged"]:
        return False
    lw = get_law(law)
    # what this resample leaves undetermined is a property of its own points, not the full data's
    return res["internal"], identification_hits(lw, res["internal"], np.log(n), np.log(d))


def _mp_context():
    """fork when safe (instant start); spawn once torch is loaded (its threads don't fork)."""
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    safe = "fork" in methods and "torch" not in sys.modules and sys.platform == "linux"
    return multiprocessing.get_context("fork" if safe else "spawn")


def bootstrap(
    n,
    d,
    loss,
    law="chinchilla",
    n_boot=1000,
    seed=0,
    jobs=None,
    groups=None,
    kind="huber",
    delta=1e-3,
    theta0=None,
    grid_points=21,
    progress=False,
) -> dict:
    """Non-parametric bootstrap of a fit: resample, refit, collect parameters.

    Points are resampled with replacement; when `groups` is given (e.g. the run of each
    evaluation point) whole groups are resampled, since points of one learning curve are not
    independent. Resamples are drawn up front from `seed`, so results do not depend on `jobs`.

    Args:
        n, d, loss (`np.ndarray`): the data.
        law (`str`): the law.
        n_boot (`int`): number of refits.
        seed (`int`): random seed.
        jobs (`int`, *optional*): worker processes (default: all available cores).
        groups (`list`, *optional*): group label of every point.
        kind, delta: robust loss.
        theta0 (`np.ndarray`, *optional*): the full-data optimum (internal), used as a start.
        grid_points (`int`): VP grid points per exponent of each refit (21 reached the
            101-point, 10-basin optimum on 200 of 200 resamples of the Epoch data).
        progress (`bool`): show a progress bar.

    Returns:
        `dict` with `samples` (`(n_boot, p)` public parameters, NaN rows for refits that
        failed or did not converge), `hits` (per refit, the parameters its resample leaves
        undetermined, `scaling.intervals.identification_hits`), `n_failed` (both),
        `n_not_converged`, `seed`, `n`.
    """
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    lw = get_law(law)
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    d = np.asarray(d, float) if d is not None else np.ones_like(n)
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, n.size, size=(n_boot, n.size))
    else:
        labels = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
        members = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
        idx = [
            np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            for _ in range(n_boot)
        ]
    if theta0 is None:
        theta0 = np.array(fit_arrays(n, d, loss, law, kind=kind, delta=delta)["internal"])
    if not jobs:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    size = max(1, min(25, -(-n_boot // max(1, jobs * 4))))
    chunks = [
        (lw.name, n, d, loss, idx[s : s + size], kind, delta, theta0, grid_points)
        for s in range(0, n_boot, size)
    ]
    results = [None] * len(chunks)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_boot, desc="bootstrap", unit="fit", leave=False)
    if jobs <= 1:
        for i, ch in enumerate(chunks):
            results[i] = _bootstrap_chunk(ch)
            bar and bar.update(len(ch[4]))
    else:
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({k: "1" for k in saved})  # one BLAS thread per worker
        try:
            with ProcessPoolExecutor(jobs, mp_context=_mp_context()) as pool:
                futs = {pool.submit(_bootstrap_chunk, ch): i for i, ch in enumerate(chunks)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar and bar.update(len(chunks[futs[fut]][4]))
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    bar and bar.close()
    samples = np.full((n_boot, len(lw.param_names)), np.nan)
    thetas = [t for r in results for t in r]
    hits = [[] for _ in thetas]
    for i, th in enumerate(thetas):
        if th is not None and th is not False:
            p = lw.from_internal(th[0])
            samples[i] = [p[k] for k in lw.param_names]
            hits[i] = th[1]
    return {
        "samples": samples,
        "hits": hits,
        "n_failed": int(np.isnan(samples[:, 0]).sum()),
        "n_not_converged": sum(th is False for th in thetas),
        "seed": seed,
        "n": n_boot,
    }


# ------------------------------------------------------------------ runs to fit.json
FIT_VERSION = 1


def _holdout(lw, params, arrays, test):
    pred = lw.predict(params, arrays["params"][test], arrays["tokens"][test])
    rows = []
    for j, i in enumerate(np.flatnonzero(test)):
        err = 100.0 * (pred[j] - arrays["loss"][i]) / arrays["loss"][i]
        rows.append(
            {
                "source": arrays["source"][i],
                "params": arrays["params"][i],
                "tokens": arrays["tokens"][i],
                "flops": arrays["flops"][i],
                "loss": arrays["loss"][i],
                "predicted": float(pred[j]),
                "error_pct": float(err),
            }
        )
    return rows


def fit_runs(
    points,
    law="chinchilla",
    method="vp",
    loss="huber",
    delta=1e-3,
    n_bootstrap=0,
    seed=0,
    jobs=None,
    holdout_above=None,
    budgets=None,
    drop_highest=0,
    level=0.95,
    progress=False,
) -> dict:
    """Fit a law to runs and return the self-contained fit.json dictionary.

    Args:
        points (`list[RunPoint]`): from `scaling.logs.load_runs`.
        law, method, loss, delta: see `fit_arrays`.
        n_bootstrap (`int`): bootstrap refits (0: none).
        seed (`int`), jobs (`int`): bootstrap seed and worker processes.
        holdout_above (`float`, *optional*): fit on runs with `flops <= holdout_above` only and
            report the prediction error on the others.
        budgets (`list[float]`, *optional*): budgets for the derived optimum (default: the
            largest compute in the data, 10x and 100x it).
        drop_highest (`int`): drop this many highest-loss points first (Epoch drops 5).
        level (`float`): interval level.
        progress (`bool`): progress bars on stderr.

    Returns:
        `dict`: `law, formula, params, objective, n_points, converged, param_count, ...`, plus
        `ci` and `bootstrap` when bootstrapped and `holdout` when asked. `unidentified` lists
        the parameters the data leave undetermined in the fit itself (empty: none). The
        optimiser is unbounded: an exponent beyond the start grid is an ordinary value.
        Intervals come from converged refits only (`scaling.intervals`): `ci[k]` is `[lo, hi]`
        with `None` for a side that reaches refits that left `k` undetermined, `ci_status[k]`
        is `"ok"`, `"unbounded"` or `"excludes_estimate"` (explained in `ci_notes`), and
        `bootstrap` counts the refits that failed (`n_failed`, of which `n_not_converged`) or
        left parameters undetermined (`n_unidentified`, `unidentified`: reason -> count).
    """
    from .logs import param_count_of, to_arrays
    from .optimal import budget_key, derived_quantities

    lw = get_law(law)
    arrays = to_arrays(points)
    use = np.ones(len(points), bool)
    if drop_highest:
        use[np.argsort(arrays["loss"])[::-1][:drop_highest]] = False
    test = np.zeros_like(use)
    if holdout_above is not None:
        test = use & (arrays["flops"] > holdout_above)
        use &= ~test
        if not test.any():
            raise ScalingDataError(
                f"--holdout-above {holdout_above:.3g}: no run has more "
                f"compute (largest: {arrays['flops'].max():.3g} FLOPs)"
            )
    n, d, y = arrays["params"][use], arrays["tokens"][use], arrays["loss"][use]
    check_fit_data(law, n, d, y, [s for s, u in zip(arrays["source"], use) if u])
    several = ignored_tokens(lw.uses_tokens, n, d)
    warned = []
    if several:
        warned.append(
            f"law {lw.name!r} has no token term, but {len(several)} of {np.unique(n).size} sizes were "
            f"run at several token budgets (N = {', '.join(dict.fromkeys(f'{v:.3g}' for v in several[:4]))}"
            f"{' ...' if len(several) > 4 else ''}): the fit ignores D and mixes those points; fit an "
            "L(N, D) law (--law chinchilla) or one point per size (--points final)"
        )
        warnings.warn(warned[-1], stacklevel=2)
    res = fit_arrays(n, d, y, law, method, loss, delta, progress=progress)
    res["unidentified"] = identification_flags(lw, res["internal"], np.log(n), np.log(d))
    budgets = (
        list(budgets) if budgets else [float(f"{arrays['flops'][use].max() * m:.2g}") for m in (1, 10, 100)]
    )
    derived = derived_quantities(law, res["params"], budgets)
    out = {
        "version": FIT_VERSION,
        "law": lw.name,
        "formula": lw.formula,
        **res,
        "param_count": param_count_of(points),
        "budgets": budgets,
        "derived": derived,
        "warnings": warned,
        "data": {
            "params": arrays["params"].tolist(),
            "tokens": arrays["tokens"].tolist(),
            "loss": arrays["loss"].tolist(),
            "flops": arrays["flops"].tolist(),
            "run": arrays["run"],
            "used": use.tolist(),
            "holdout": test.tolist(),
        },
    }
    if n_bootstrap:
        runs = np.asarray(arrays["run"], dtype=object)[use]
        groups = runs if len(set(runs)) < len(runs) else None
        boot = bootstrap(
            n,
            d,
            y,
            law,
            n_bootstrap,
            seed,
            jobs,
            groups,
            loss,
            delta,
            np.array(res["internal"]),
            progress=progress,
        )
        ok = ~np.isnan(boot["samples"][:, 0])
        if ok.sum() < 2:
            raise ScalingDataError(
                f"bootstrap: {boot['n_failed']} of {n_bootstrap} refits failed; too few points to resample?"
            )
        honest = interval_summary(
            lw,
            boot["samples"],
            ok,
            res["params"],
            n,
            d,
            level,
            lambda p: derived_quantities(law, p, budgets),
            hits=boot["hits"],
        )
        out.update({k: honest[k] for k in ("ci", "ci_status", "ci_notes")})
        out["bootstrap"] = {
            "n": n_bootstrap,
            "seed": seed,
            "n_failed": boot["n_failed"],
            "n_not_converged": boot["n_not_converged"],
            **honest["counts"],
            "level": level,
            "resampled": "runs" if groups is not None else "points",
            "param_names": list(lw.param_names),
            "samples": [[None if np.isnan(v) else float(v) for v in r] for r in boot["samples"]],
        }
    if holdout_above is not None:
        rows = _holdout(lw, res["params"], arrays, test)
        out["holdout"] = {
            "threshold_flops": float(holdout_above),
            "n_fit": int(use.sum()),
            "n_test": len(rows),
            "points": rows,
            "mape": float(np.mean([abs(r["error_pct"]) for r in rows])),
        }
    out["budget_keys"] = [budget_key(c) for c in budgets]
    return out


def save_fit(fit: dict, path):
    """Write a fit dictionary as JSON."""
    import json

    from .atomic import write_text_atomic

    write_text_atomic(path, json.dumps(fit, indent=1, allow_nan=False))


def load_fit(path) -> dict:
    """Read and check a fit.json written by `save_fit` / `scaling fit`."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        fit = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScalingDataError(f"{path}: no such fit file") from None
    except json.JSONDecodeError as err:
        raise ScalingDataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(fit, dict) or "law" not in fit or "params" not in fit:
        raise ScalingDataError(f"{path}: not a scaling fit (needs 'law' and 'params')")
    lw = get_law(fit["law"])
    missing = [k for k in lw.param_names if k not in fit["params"]]
    if missing:
        raise ScalingDataError(f"{path}: law {lw.name!r} parameters missing: {missing}")
    return fit
