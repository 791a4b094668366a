"""Low-level optimisation for scaling-law fits: the robust objective and the global searches.

The objective follows Hoffmann et al. (2022) and Besiroglu et al. (2024): a robust loss
(Huber, delta = 1e-3 by default) of the residuals in log-loss, **summed** over points, with
the law written in its log-sum-exp parameterisation (see `scaling.laws`).

Two global searches provide start points for L-BFGS-B (`_lbfgs`):

- `"vp"` (`vp_starts`), variable projection: for fixed exponents the law is linear in its
  coefficients, so a dense exponent grid is scored with a batched non-negative least-squares
  solve (`_batched_nnls`); the best distinct basins are then refined with L-BFGS-B on the
  exact objective using analytic gradients.
- `"grid"` (`grid_starts`): L-BFGS-B from every point of Chinchilla's start grid (4,500 starts
  for the Chinchilla law), best result kept. Exact but much slower; kept for comparison.

`single_thread_blas` keeps BLAS on one thread while these tiny systems are solved.
`scaling.fit` builds fits, bootstrap intervals and fit.json on top of this module and
re-exports its public names.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import numpy as np

from .laws import Law

__all__ = [
    "LOSSES",
    "NOT_FINITE",
    "robust_loss",
    "objective",
    "single_thread_blas",
    "vp_starts",
    "grid_starts",
]

LOSSES = ("huber", "squared", "cauchy")
NOT_FINITE = 1e300  # the objective's value where the law's prediction is not finite (L-BFGS backs off)


def robust_loss(r: np.ndarray, kind: str = "huber", delta: float = 1e-3):
    """Element-wise robust loss of residuals and its derivative.

    Args:
        r (`np.ndarray`): residuals (predicted minus observed log-loss).
        kind (`str`): `"huber"` (scipy.special.huber convention), `"squared"` (r^2 / 2) or
            `"cauchy"` (delta^2 / 2 * log(1 + (r / delta)^2)).
        delta (`float`): scale of the robust losses.

    Returns:
        `(values, derivative)`, both shaped like `r`.
    """
    if kind == "huber":
        a = np.abs(r)
        small = a <= delta
        val = np.where(small, 0.5 * r * r, delta * (a - 0.5 * delta))
        return val, np.clip(r, -delta, delta)
    if kind == "squared":
        return 0.5 * r * r, r
    if kind == "cauchy":
        q = (r / delta) ** 2
        return 0.5 * delta**2 * np.log1p(q), r / (1.0 + q)
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def objective(theta, law: Law, log_n, log_d, log_l, kind="huber", delta=1e-3):
    """Summed robust loss of log-residuals and its gradient in the internal parameters."""
    f, jac = law.log_loss_and_jac(theta, log_n, log_d)
    val, dr = robust_loss(f - log_l, kind, delta)
    total = float(val.sum())
    if not math.isfinite(total):
        return NOT_FINITE, np.zeros_like(theta)
    return total, jac.T @ dr


@contextmanager
def single_thread_blas():
    """Run BLAS on one thread. The systems solved here are tiny; on a busy machine idle
    OpenBLAS threads spinning for work made L-BFGS-B up to 40x slower."""
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        yield
        return
    import scipy.optimize  # noqa: F401  (load its BLAS before limiting the thread pools)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (comes with scikit-learn)
        yield
        return
    _BLAS_LIMITED = True
    try:
        with threadpool_limits(1):
            yield
    finally:
        _BLAS_LIMITED = False


_BLAS_LIMITED = False


# --------------------------------------------------------------------------- search
def _batched_nnls(x: np.ndarray, y: np.ndarray):
    """Exact NNLS of `min ||(X c - y) / y||` for a batch of tiny systems (m <= 3).

    Every non-empty support is solved by normal equations; the feasible solution with the
    smallest residual is the NNLS optimum (the optimum is the LS solution on its support).
    """
    xw = x / y[..., None]
    scale = np.sqrt((xw * xw).sum(axis=1)) + 1e-300  # column scaling for conditioning
    xs = xw / scale[:, None, :]
    gram = np.matmul(xs.transpose(0, 2, 1), xs)
    rhs = xs.sum(axis=1)
    g, m = rhs.shape
    best_rss = np.full(g, np.inf)
    best = np.zeros((g, m))
    for k in range(1, m + 1):
        for sub in itertools.combinations(range(m), k):
            idx = np.array(sub)
            gs = gram[:, idx[:, None], idx[None, :]] + 1e-12 * np.eye(k)
            c = np.linalg.solve(gs, rhs[:, idx, None])[..., 0]
            rss = y.shape[1] - 2 * (c * rhs[:, idx]).sum(1) + ((gs @ c[..., None])[..., 0] * c).sum(1)
            ok = (c >= 0).all(axis=1) & (rss < best_rss)
            full = np.zeros((g, m))
            full[:, idx] = c
            best[ok], best_rss[ok] = full[ok], rss[ok]
    return best / scale


def _exponent_grid(law: Law, points: int) -> np.ndarray:
    axes = [np.linspace(lo, hi, points) for lo, hi in law.exponent_ranges]
    return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=-1), axes


def vp_starts(law: Law, n, d, loss, kind="huber", delta=1e-3, points=None, top_k=4, chunk=1024):
    """Variable-projection starts: best grid basins of the exact objective.

    Args:
        law (`Law`): the law.
        n, d, loss (`np.ndarray`): data.
        points (`int`, *optional*): grid points per exponent (default 161 for one exponent,
            81 for two).
        top_k (`int`): number of distinct local minima of the grid returned.

    Returns:
        `list[np.ndarray]`: internal parameter vectors, best first.
    """
    k = len(law.exponent_names)
    points = points or (161 if k == 1 else 81)
    if law.grid_points:  # many exponents: a small grid, L-BFGS does the rest
        points = min(points, law.grid_points)
    exps, axes = _exponent_grid(law, points)
    log_l = np.log(loss)
    scores = np.empty(len(exps))
    coefs = []
    for s in range(0, len(exps), chunk):
        x, y = law.linear_system(exps[s : s + chunk], n, d, loss)
        c = _batched_nnls(x, y)
        pred = (x @ c[..., None])[..., 0]
        if law.name == "kaplan":
            pred = pred ** exps[s : s + chunk, 1:2]
        with np.errstate(divide="ignore", invalid="ignore"):
            val, _ = robust_loss(np.log(pred) - log_l, kind, delta)
        sc = val.sum(axis=1)
        scores[s : s + chunk] = np.where(np.isfinite(sc), sc, np.inf)
        coefs.append(c)
    coefs = np.concatenate(coefs)
    grid = scores.reshape([points] * k)
    # local minima of the score grid (neighbours along every axis), best first
    is_min = np.isfinite(grid)
    for ax in range(k):
        for shift in (1, -1):
            nb = np.roll(grid, shift, axis=ax)
            edge = [slice(None)] * k
            edge[ax] = 0 if shift == 1 else -1
            nb[tuple(edge)] = np.inf
            is_min &= grid <= nb
    cand = np.flatnonzero(is_min.ravel())
    cand = cand[np.argsort(scores[cand])][:top_k]
    if cand.size == 0:
        cand = np.argsort(scores)[:1]
    return [law.internal_from_linear(exps[i], coefs[i]) for i in cand]


def grid_starts(law: Law) -> list:
    """Chinchilla-style start grid (4,500 points for the Chinchilla law)."""
    exps = np.arange(0, 2.01, 0.5)
    es = np.arange(-1, 1.01, 0.5)
    coefs = np.arange(0, 25.1, 5)
    if law.name == "chinchilla":
        return [
            np.array([a, b, e, al, be]) for al, be, e, a, b in itertools.product(exps, exps, es, coefs, coefs)
        ]
    if law.name == "power":
        return [np.array([a, e, al]) for al, e, a in itertools.product(exps, es, coefs)]
    if law.name == "gadre":  # Chinchilla's grid with beta = alpha
        return [np.array([a, b, e, al]) for al, e, a, b in itertools.product(exps, es, coefs, coefs)]
    if law.name == "chinchilla_gamma":
        return [
            np.array([a, b, e, al, be, ga])
            for ga, al, be, e, a, b in itertools.product((0.5, 1.0), exps, exps, es, coefs, coefs)
        ]
    return [
        np.array([lnc, ldc, r, ad])
        for lnc, ldc, r, ad in itertools.product(
            np.arange(10, 40.1, 5), np.arange(10, 40.1, 5), np.arange(0.25, 2.01, 0.25), (0.05, 0.1, 0.2, 0.4)
        )
    ]


def _lbfgs(theta0, law, log_n, log_d, log_l, kind, delta, tight=True):
    from scipy.optimize import minimize

    opts = {"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20} if tight else {}
    return minimize(
        objective,
        np.asarray(theta0, float),
        args=(law, log_n, log_d, log_l, kind, delta),
        jac=True,
        method="L-BFGS-B",
        options=opts,
    )
