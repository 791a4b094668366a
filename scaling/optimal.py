"""Compute-optimal model and data sizes.

- `compute_optimal`: N*(C), D*(C), L*(C) under C = 6ND in closed form, for the Chinchilla
  law (Hoffmann et al. 2022, eq. 4; also chinchilla_gamma, and gadre as Chinchilla with
  alpha = beta) and for Kaplan's L(N, D).
- `compute_optimal_numeric`: the same for any cost function C = cost(N, D), e.g. one that
  counts a teacher's forward passes, 6ND + 2 N_T D.
- `isoflop_analysis`: Chinchilla's Approach 2, parabolas of loss in log N per FLOP budget.
- `envelope_analysis`: Chinchilla's Approach 1, the minimum-loss envelope of learning curves.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .laws import get_law
from .logs import ScalingDataError

__all__ = [
    "IsoFLOPWarning",
    "allocation",
    "compute_optimal",
    "compute_optimal_numeric",
    "parse_cost",
    "group_budgets",
    "isoflop_analysis",
    "envelope_analysis",
    "budget_key",
    "derived_quantities",
    "predict_from_fit",
    "optimal_from_fit",
]


class IsoFLOPWarning(UserWarning):
    """A FLOP budget left out of the IsoFLOP analysis."""


def allocation(params: dict) -> dict:
    """Allocation exponents N* ∝ C^a, D* ∝ C^b (Chinchilla: N* = G (C/6)^a, D* = (C/6)^b / G).

    Accepts Chinchilla parameters (`alpha`, `beta`, `A`, `B`), Kaplan's (`alpha_N`,
    `alpha_D`: a = alpha_D / (alpha_N + alpha_D)) or Gadre et al.'s (`a`, `b`, `eta`: Chinchilla
    with alpha = beta = 2 eta, so a = b = 1/2).

    Returns:
        `dict` with `a = beta / (alpha + beta)`, `b = alpha / (alpha + beta)` and
        `G = (alpha A / (beta B))^(1 / (alpha + beta))`.
    """
    if "alpha_N" in params:
        s = params["alpha_N"] + params["alpha_D"]
        return {"a": params["alpha_D"] / s, "b": params["alpha_N"] / s}
    if "eta" in params:
        from .laws import GadreLaw

        params = GadreLaw.as_chinchilla(params)
    al, be = params["alpha"], params["beta"]
    g = (al * params["A"] / (be * params["B"])) ** (1.0 / (al + be))
    return {"a": be / (al + be), "b": al / (al + be), "G": g}


def compute_optimal(law: str, params: dict, flops) -> dict:
    """Compute-optimal allocation under C = 6ND.

    Args:
        law (`str`): an L(N, D) law (`"chinchilla"`, `"chinchilla_gamma"`, `"gadre"`, `"kaplan"`).
        params (`dict`): fitted parameters.
        flops (`float` or array): compute budgets C.

    Returns:
        `dict` with `params`, `tokens`, `loss`, `tokens_per_param` (floats or arrays).
    """
    lw = get_law(law)
    if not lw.uses_tokens:
        raise ValueError(
            f"law {law!r} has no token term: a compute-optimal allocation needs "
            "an L(N, D) law (chinchilla, chinchilla_gamma, gadre or kaplan)"
        )
    c = np.asarray(flops, float)
    if lw.name == "kaplan":  # d/dN [(N_c/N)^p + 6 D_c N / C] = 0, p = alpha_N / alpha_D
        p = params["alpha_N"] / params["alpha_D"]
        n = (p * params["N_c"] ** p * c / (6.0 * params["D_c"])) ** (1.0 / (p + 1.0))
        d = c / (6.0 * n)
    else:
        al = allocation(params)
        n = al["G"] * (c / 6.0) ** al["a"]
        d = (c / 6.0) ** al["b"] / al["G"]
    loss = lw.predict(params, n, d)
    return _out(n, d, loss, np.ndim(flops) == 0)


def _out(n, d, loss, scalar):
    res = {"params": n, "tokens": d, "loss": loss, "tokens_per_param": d / n}
    return {k: float(v) for k, v in res.items()} if scalar else res


def parse_cost(expr: str, teacher_params: float = 0.0):
    """Turn an expression in `N`, `D` (and `NT`, the teacher size) into a cost function.

    Example: `"6*N*D + 2*NT*D"`. numpy functions `log`, `exp`, `sqrt` are available.
    The cost must increase with `D`.
    """
    code = compile(expr, "<cost>", "eval")
    names = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt, "NT": float(teacher_params)}
    unknown = set(code.co_names) - set(names) - {"N", "D"}
    if unknown:
        raise ValueError(
            f"cost expression {expr!r} uses unknown names {sorted(unknown)}; use N, D, NT, log, exp, sqrt"
        )

    def cost(n, d):
        return eval(code, {"__builtins__": {}}, {**names, "N": n, "D": d})  # noqa: S307

    return cost


def _tokens_for(cost, n, budget):
    """Vectorised bisection in log D of cost(n, D) = budget (inf where unreachable)."""
    lo, hi = np.full_like(n, -10.0), np.full_like(n, 120.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        over = cost(n, np.exp(mid)) > budget
        hi, lo = np.where(over, mid, hi), np.where(over, lo, mid)
    return np.exp(0.5 * (lo + hi))


def compute_optimal_numeric(law: str, params: dict, flops, cost=None) -> dict:
    """Minimise L(N, D) subject to cost(N, D) = C numerically.

    Args:
        law (`str`): an L(N, D) law.
        params (`dict`): fitted parameters.
        flops (`float` or array): budgets C.
        cost (`callable`, *optional*): vectorised cost(N, D) in FLOPs; default 6ND.

    Returns:
        `dict` like `compute_optimal`.
    """
    from scipy.optimize import minimize_scalar

    lw = get_law(law)
    budgets = np.atleast_1d(np.asarray(flops, float))
    out = {k: np.empty_like(budgets) for k in ("params", "tokens", "loss")}
    for i, c in enumerate(budgets):
        if cost is None:

            def tok(n, c=c):
                return c / (6.0 * n)

            n_hi = c / 6.0
        else:

            def tok(n, c=c):
                return _tokens_for(cost, np.atleast_1d(np.asarray(n, float)), c)

            n_hi = float(
                np.exp(
                    minimize_scalar(  # largest N that still gets one token
                        lambda x, c=c: (
                            (math.log(max(float(cost(math.exp(x), 1.0)), 1e-300)) - math.log(c)) ** 2
                        ),
                        bounds=(0, 120),
                        method="bounded",
                    ).x
                )
            )
        xs = np.linspace(math.log(n_hi) - 40, math.log(n_hi), 801)
        losses = lw.predict(params, np.exp(xs), tok(np.exp(xs)))
        j = int(np.nanargmin(losses))
        lo, hi = xs[max(j - 1, 0)], xs[min(j + 1, xs.size - 1)]

        def loss_at(x):
            n = math.exp(x)
            return float(lw.predict(params, n, float(np.ravel(tok(n))[0])))

        res = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
        n = math.exp(res.x)
        d = float(np.asarray(tok(n)).ravel()[0])
        out["params"][i], out["tokens"][i] = n, d
        out["loss"][i] = float(lw.predict(params, n, d))
    scalar = np.ndim(flops) == 0
    return _out(*(out[k][0] if scalar else out[k] for k in ("params", "tokens", "loss")), scalar)


# ------------------------------------------------------------------------ Approach 2
def group_budgets(flops, tolerance: float = 0.05) -> np.ndarray:
    """Label points by FLOP budget: sorted log10 C split at gaps wider than `tolerance` dex."""
    lc = np.log10(np.asarray(flops, float))
    order = np.argsort(lc)
    labels = np.empty(lc.size, int)
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(lc[order]) > tolerance)])
    return labels


def _power_fit(c, y):
    """Least squares of log y = a log c + k; returns (a, exp k)."""
    a, k = np.polyfit(np.log(c), np.log(y), 1)
    return float(a), float(math.exp(k))


def _no_isoflop_budget(n, c, excluded, min_sizes, tolerance) -> str:
    """Why no budget could be used, and what an IsoFLOP analysis needs."""
    if all("distinct model sizes" in e["reason"] for e in excluded):
        found = (
            f"the {n.size} runs fall into {len(excluded)} FLOP budgets (within "
            f"{tolerance:g} dex), none of which has runs of {min_sizes} or more sizes"
        )
    else:
        found = "; ".join(f"C = {e['flops']:.3g}: {e['reason']}" for e in excluded)
    return (
        f"no IsoFLOP budget can be analysed: {found}. Approach 2 needs, for each of two or "
        f"more compute budgets, runs of at least {min_sizes} model sizes trained to that "
        "budget (a ladder with one token budget gives each size its own compute). Plan "
        "one with `scaling ladder ... --isoflop 1e15,3e15,1e16`, or use `scaling "
        "envelope` (Approach 1) or `scaling fit` (Approach 3) on these runs."
    )


def isoflop_analysis(params, loss, flops, tolerance: float = 0.05, min_sizes: int = 3) -> dict:
    """Chinchilla Approach 2: for each FLOP budget fit loss = p(log N), a parabola.

    A budget is excluded, with an `IsoFLOPWarning` naming it, when it has fewer than
    `min_sizes` distinct model sizes, its parabola is not convex, or its minimum falls outside
    the sampled range of N (the optimum was not bracketed).

    Args:
        params, loss, flops (`array-like`): one entry per run (final points).
        tolerance (`float`): budgets within this many dex of each other are grouped.
        min_sizes (`int`): minimum distinct N per budget.

    Returns:
        `dict` with `budgets` (kept: flops, params_opt, tokens_opt, loss_opt, parabola, range),
        `excluded` (flops, reason), and, with two or more kept budgets, the exponents `a`, `b`
        and prefactors of N* = k_N C^a and D* = k_D C^b.

    Raises:
        `ScalingDataError`: no budget can be analysed (e.g. a ladder trained on one token
            budget, where every size has its own compute); the message says what is needed.
    """
    n, l, c = (np.asarray(x, float) for x in (params, loss, flops))
    labels = group_budgets(c, tolerance)
    kept, excluded = [], []
    for g in np.unique(labels):
        m = labels == g
        budget = float(np.exp(np.log(c[m]).mean()))
        x = np.log(n[m])
        reason = None
        if np.unique(n[m]).size < min_sizes:
            reason = f"only {np.unique(n[m]).size} distinct model sizes (need {min_sizes})"
        else:
            p2, p1, p0 = np.polyfit(x, l[m], 2)
            if p2 <= 0:
                reason = "the loss is not convex in log N there (no minimum)"
            else:
                xs = -p1 / (2 * p2)
                if not x.min() <= xs <= x.max():
                    reason = (
                        f"its minimum N = {math.exp(xs):.3g} is outside the sampled range "
                        f"[{n[m].min():.3g}, {n[m].max():.3g}]"
                    )
        if reason:
            excluded.append({"flops": budget, "n_points": int(m.sum()), "reason": reason})
            continue
        n_opt = math.exp(xs)
        kept.append(
            {
                "flops": budget,
                "n_points": int(m.sum()),
                "params_opt": n_opt,
                "tokens_opt": budget / (6 * n_opt),
                "loss_opt": float(np.polyval([p2, p1, p0], xs)),
                "parabola": [float(p2), float(p1), float(p0)],
                "range": [float(n[m].min()), float(n[m].max())],
                "points": {"params": n[m].tolist(), "loss": l[m].tolist()},
            }
        )
    if not kept:
        raise ScalingDataError(_no_isoflop_budget(n, c, excluded, min_sizes, tolerance))
    for e in excluded:
        warnings.warn(
            f"IsoFLOP budget C = {e['flops']:.3g} FLOPs excluded: {e['reason']}", IsoFLOPWarning, stacklevel=2
        )
    out = {
        "method": "isoflop (Approach 2)",
        "tolerance_dex": tolerance,
        "budgets": kept,
        "excluded": excluded,
    }
    if len(kept) < 2:
        warnings.warn(
            f"only one FLOP budget ({kept[0]['flops']:.3g}) has an IsoFLOP minimum: "
            "N* ∝ C^a needs two or more budgets",
            IsoFLOPWarning,
            stacklevel=2,
        )
    if len(kept) >= 2:
        cs = np.array([b["flops"] for b in kept])
        out["a"], out["k_params"] = _power_fit(cs, [b["params_opt"] for b in kept])
        out["b"], out["k_tokens"] = _power_fit(cs, [b["tokens_opt"] for b in kept])
    return out


# ------------------------------------------------------------------------ Approach 1
def _lowest_curve(curves, c, l, grid):
    """At each grid compute, the lowest interpolated loss of the curves that reach it."""
    best_l = np.full(grid.size, np.inf)
    best_r = [None] * grid.size
    for r, ix in curves.items():
        lc = np.log(c[ix])
        inside = (np.log(grid) >= lc[0]) & (np.log(grid) <= lc[-1])
        li = np.interp(np.log(grid), lc, l[ix])
        better = inside & (li < best_l)
        best_l[better] = li[better]
        for j in np.flatnonzero(better):
            best_r[j] = r
    return best_l, best_r


def envelope_analysis(params, flops, loss, run, num: int = 60, param_count=None) -> dict:
    """Chinchilla Approach 1: the minimum-loss envelope of learning curves, N* ∝ C^a.

    Each run's learning curve (loss against cumulative FLOPs) is interpolated in log C on a
    common grid. The envelope at compute C is the lowest loss reached by any run with compute
    at most C (a running minimum over C): a run that ends before C could have stopped there,
    so the best loss for a budget never increases with the budget. The run that reached it
    gives N*(C); `reached_at_flops` says where (less than C when an earlier, smaller run is
    still the best).

    Args:
        params, flops, loss (`array-like`): every evaluation point.
        run (`list`): the run of each point (curves are grouped by it).
        num (`int`): grid points in C (log-spaced), to which every evaluated compute is added.
        param_count (`str`, *optional*): what `params` counts (`"total"` or
            `"non_embedding"`), recorded in the result so plots and tables can say it.

    Returns:
        `dict` with `points` (flops, params, tokens, loss, run, reached_at_flops),
        `param_count`, `a`, `b` and prefactors.
    """
    n, c, l = (np.asarray(x, float) for x in (params, flops, loss))
    runs = {}
    for i, r in enumerate(run):
        runs.setdefault(r, []).append(i)
    curves = {r: np.array(sorted(ix, key=lambda i: c[i])) for r, ix in runs.items() if len(ix) >= 2}
    if len(curves) < 2:
        raise ScalingDataError(
            "Approach 1 needs learning curves of at least two runs: read run "
            "directories with --points all, or give a table with a run column"
        )
    lo = max(min(c[ix].min() for ix in curves.values()), c.min())
    # the evaluated computes themselves are on the grid, so every run's last point is reached
    grid = np.unique(np.concatenate([np.logspace(math.log10(lo), math.log10(c.max()), num), c[c >= lo]]))
    best_l, best_r = _lowest_curve(curves, c, l, grid)
    pts, low = [], None
    for j in range(grid.size):
        if best_r[j] is not None and (low is None or best_l[j] < low["loss"]):
            size = float(n[curves[best_r[j]][0]])
            low = {
                "params": size,
                "tokens": float(grid[j] / (6 * size)),
                "loss": float(best_l[j]),
                "run": str(best_r[j]),
                "reached_at_flops": float(grid[j]),
            }
        if low is not None:
            pts.append({"flops": float(grid[j]), **low})
    out = {
        "method": "envelope (Approach 1, running minimum of loss over compute)",
        "param_count": param_count or "unknown",
        "points": pts,
    }
    if len({p["params"] for p in pts}) >= 2:
        cs = [p["flops"] for p in pts]
        out["a"], out["k_params"] = _power_fit(cs, [p["params"] for p in pts])
        out["b"], out["k_tokens"] = _power_fit(cs, [p["tokens"] for p in pts])
    else:
        warnings.warn(
            "the envelope is a single run: N* ∝ C^a cannot be estimated", IsoFLOPWarning, stacklevel=2
        )
    return out


# ------------------------------------------------------------- derived and from fit
def budget_key(flops: float) -> str:
    """Stable text key of a budget, e.g. `1e+24` or `5.8e+23`."""
    return f"{flops:.3g}"


def derived_quantities(law: str, params: dict, budgets=()) -> dict:
    """Quantities derived from a fit, flat, for point estimates and bootstrap intervals.

    For L(N, D) laws: allocation exponents `a`, `b` and, per budget C,
    `params_opt@C`, `tokens_opt@C`, `tokens_per_param@C`, `loss_opt@C`. The power law has none.
    The `gadre` law's exponents are 1/2 by its form (and `a`, `b` name its coefficients), so it
    gives `tokens_per_param_opt`, its optimal multiplier M* (the same at every budget), instead.
    """
    if not get_law(law).uses_tokens:
        return {}
    if law == "gadre":
        from .laws import GadreLaw

        out = {"tokens_per_param_opt": GadreLaw.optimal_multiplier(params)}
    else:
        al = allocation(params)
        out = {"a": al["a"], "b": al["b"]}
    if len(budgets):
        opt = compute_optimal(law, params, np.asarray(budgets, float))
        for i, c in enumerate(budgets):
            key = budget_key(c)
            for name, col in (
                ("params_opt", "params"),
                ("tokens_opt", "tokens"),
                ("tokens_per_param", "tokens_per_param"),
                ("loss_opt", "loss"),
            ):
                out[f"{name}@{key}"] = float(opt[col][i])
    return out


def _sample_params(fit: dict):
    boot = fit.get("bootstrap") or {}
    names = boot.get("param_names") or list(fit["params"])
    rows = [r for r in boot.get("samples") or [] if r and all(v is not None for v in r)]
    return [dict(zip(names, r)) for r in rows if all(math.isfinite(v) for v in r)]


def _interval(values, level, estimate, notes: dict, name: str):
    """Percentile interval of the refits' values; a note in `notes[name]` when it misses the
    estimate (see `scaling.intervals`)."""
    from .intervals import percentile_intervals

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    res = percentile_intervals([name], v[:, None], [float(estimate)], np.zeros(v.size, bool), level)[name]
    if res["status"] == "excludes_estimate":
        notes[name] = res["note"]
    return res["interval"]


def predict_from_fit(fit: dict, params, tokens=None, level: float = 0.95) -> dict:
    """Predicted loss from a fit.json dictionary, with a bootstrap interval when available.

    Returns:
        `{"loss": ..., "interval": [lo, hi]}` (interval only for bootstrapped fits, from its
        converged refits; `interval_note` says why when the interval misses the estimate).
    """
    from .checks import extrapolation, positive

    lw = get_law(fit["law"])
    params = positive("--params", params)
    if lw.uses_tokens and tokens is None:
        raise ValueError(f"law {lw.name!r} needs --tokens as well as --params")
    if not lw.uses_tokens and tokens is not None:
        raise ValueError(
            f"law {lw.name!r} ({lw.formula}) has no token term, so --tokens "
            "would be ignored; drop --tokens, or fit an L(N, D) law "
            "(scaling fit --law chinchilla) on runs of several token budgets"
        )
    if tokens is not None:
        tokens = positive("--tokens", tokens)
    out = {
        "loss": float(lw.predict(fit["params"], params, tokens)),
        "param_count": fit.get("param_count", "total"),
    }
    reach = extrapolation(fit, params, tokens)
    if reach:
        out["extrapolation"] = reach
    if fit.get("selection", {}).get("fits"):  # --law auto: the band of the candidates and past errors
        from .band import extrapolation_band

        band = extrapolation_band(fit["selection"], fit["selection"]["fits"], params, tokens)
        out["extrapolation_band"] = band["band"]
        out["extrapolation_band_pct"] = band["band_pct"]
    samples = _sample_params(fit)
    if samples:
        notes = {}
        out["interval"] = _interval(
            [float(lw.predict(p, params, tokens)) for p in samples], level, out["loss"], notes, "loss"
        )
        out["level"] = level
        if notes:
            out["interval_note"] = notes["loss"]
    return out


def optimal_from_fit(fit: dict, flops: float, cost=None, level: float = 0.95) -> dict:
    """Compute-optimal allocation at `flops` from a fit.json dictionary.

    Args:
        fit (`dict`): the fit.
        flops (`float`): budget C.
        cost (`callable`, *optional*): cost(N, D); default C = 6ND (closed form).
        level (`float`): bootstrap interval level.

    Returns:
        `{"params", "tokens", "loss", "tokens_per_param", "flops"}` plus `"interval"`
        (per quantity) for bootstrapped fits.
    """

    from .checks import positive

    flops = positive("--flops", flops)

    def solve(p):
        if cost is None:
            return compute_optimal(fit["law"], p, flops)
        return compute_optimal_numeric(fit["law"], p, flops, cost)

    out = {**solve(fit["params"]), "flops": float(flops), "param_count": fit.get("param_count", "total")}
    samples = _sample_params(fit)
    if samples:
        sols = [solve(p) for p in samples]
        notes = {}
        out["interval"] = {
            k: _interval([s[k] for s in sols], level, out[k], notes, k)
            for k in ("params", "tokens", "loss", "tokens_per_param")
        }
        out["level"] = level
        if notes:
            out["interval_notes"] = notes
    return out
