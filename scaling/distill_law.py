"""The distillation scaling law of Busbridge et al. (2025), "Distillation Scaling Laws", Eq. 8.

A distilled student's cross-entropy `L_S` as a function of its (non-embedding) size `N_S`, its
distillation tokens `D_S` and the teacher's cross-entropy `L_T`:

    L_S = L_T + L_T^(-c0) * (1 + (L_T / (L~_S * d1))^(1/f1))^(-c1 * f1)
                * (A' / N_S^alpha' + B' / D_S^beta')^gamma'

where `L~_S = L(N_S, D_S)` is the loss the same student reaches by supervised training, from a
supervised fit (any L(N, D) law of `scaling.laws`; the paper uses `chinchilla_gamma`). The
teacher enters only through `L_T`. With positive coefficients the second term is positive, so
this form always predicts `L_S > L_T`.

Two forms:

- `full`: the nine parameters `c0, c1, d1, f1, A', alpha', B', beta', gamma'` (Eq. 8).
- `reduced`, for small ladders: `f1 = 1` (the break's sharpness) and the student term tied to
  the supervised fit, `(A'/N^alpha' + B'/D^beta')^gamma' = k * (L~_S - E)` with `E` the
  supervised fit's irreducible loss (0 for `kaplan`), so `alpha', beta', gamma'` and `B'/A'` are
  the supervised law's own; four free parameters `c0, c1, d1, k`. The reduced form is the full
  form restricted to that subspace (for `chinchilla`/`chinchilla_gamma` supervised fits
  exactly), and its optimum seeds the full fit.

Fits minimise the same summed Huber loss of log-loss residuals as `scaling.fit`
(`scaling.optimize.robust_loss`), from a variable-projection grid (for fixed `c0, c1, d1` the
reduced form is linear in `k`) refined with L-BFGS-B on analytic gradients.
"""

from __future__ import annotations

import math

import numpy as np

from .optimize import NOT_FINITE, robust_loss, single_thread_blas

__all__ = [
    "FORMS",
    "FORMULA",
    "DistillationForm",
    "supervised_terms",
    "fit_distillation_arrays",
    "predict_distillation",
    "check_distillation_data",
]

FORMULA = (
    "L_S = L_T + L_T^(-c0) * (1 + (L_T / (L~_S * d1))^(1/f1))^(-c1 * f1) * "
    "(A' / N_S^alpha' + B' / D_S^beta')^gamma'"
)
REDUCED_FORMULA = (
    "L_S = L_T + k * L_T^(-c0) * (1 + L_T / (L~_S * d1))^(-c1) * (L~_S - E), "
    "f1 = 1, student term from the supervised fit"
)


def _softplus(u):
    return np.logaddexp(0.0, u)


def _sigmoid(u):
    return 0.5 * (1.0 + np.tanh(0.5 * u))


class DistillationForm:
    """One form (`"full"` or `"reduced"`) of the distillation law.

    Internal parameters: full `(c0, log c1, log d1, log f1, log A', log B', alpha', beta', gamma')`,
    reduced `(c0, log c1, log d1, log k)`. `c1` is searched in log space, so that the published
    `c1 = 522.6` (Busbridge et al. 2025, Table 6) is an ordinary value rather than a far corner. Features of the data (`x`, a dict of arrays): `log_n`,
    `log_d`, `log_lt` (log L_T), `log_ls` (log L~_S) and `log_r` (log(L~_S - E)).
    """

    def __init__(self, name: str):
        if name not in ("full", "reduced"):
            raise ValueError(f"unknown distillation form {name!r}; choose 'full' or 'reduced'")
        self.name = name
        self.param_names = (
            ("c0", "c1", "d1", "f1", "A_prime", "B_prime", "alpha_prime", "beta_prime", "gamma_prime")
            if name == "full"
            else ("c0", "c1", "d1", "k")
        )
        self.formula = FORMULA if name == "full" else REDUCED_FORMULA
        self.fixed = (
            {}
            if name == "full"
            else {
                "f1": 1.0,
                "student_term": "k * (L~_S - E): alpha', beta', gamma', B'/A' of the supervised fit",
            }
        )

    def from_internal(self, theta) -> dict:
        t = [float(v) for v in theta]
        if self.name == "reduced":
            return {"c0": t[0], "c1": math.exp(t[1]), "d1": math.exp(t[2]), "k": math.exp(t[3])}
        return {
            "c0": t[0],
            "c1": math.exp(t[1]),
            "d1": math.exp(t[2]),
            "f1": math.exp(t[3]),
            "A_prime": math.exp(t[4]),
            "B_prime": math.exp(t[5]),
            "alpha_prime": t[6],
            "beta_prime": t[7],
            "gamma_prime": t[8],
        }

    def to_internal(self, params: dict) -> np.ndarray:
        p = {k: float(v) for k, v in params.items()}
        head = [p["c0"], math.log(max(p["c1"], 1e-300)), math.log(p["d1"])]
        if self.name == "reduced":
            return np.array(head + [math.log(p["k"])])
        return np.array(
            head
            + [
                math.log(p["f1"]),
                math.log(p["A_prime"]),
                math.log(p["B_prime"]),
                p["alpha_prime"],
                p["beta_prime"],
                p["gamma_prime"],
            ]
        )

    def log_loss_and_jac(self, theta, x: dict, jac: bool = True):
        """Predicted log L_S and its Jacobian in the internal parameters."""
        t = np.asarray(theta, dtype=float)
        c0, log_c1, log_d1 = t[:3]
        c1 = math.exp(log_c1)
        f1 = 1.0 if self.name == "reduced" else math.exp(t[3])
        u = (x["log_lt"] - x["log_ls"] - log_d1) / f1
        sp = _softplus(u)
        if self.name == "reduced":
            s, w = x["log_r"] + t[3], None
            student = s
        else:
            z = np.stack([t[4] - t[6] * x["log_n"], t[5] - t[7] * x["log_d"]], axis=-1)
            m = z.max(axis=-1, keepdims=True)
            ez = np.exp(z - m)
            s = (m + np.log(ez.sum(axis=-1, keepdims=True)))[:, 0]
            w = ez / ez.sum(axis=-1, keepdims=True)
            student = t[8] * s
        log_z = -c0 * x["log_lt"] - c1 * f1 * sp + student
        f = np.logaddexp(x["log_lt"], log_z)
        if not jac:
            return f, None
        om = _sigmoid(log_z - x["log_lt"])  # d f / d log_z
        sig = _sigmoid(u)
        cols = [-x["log_lt"], -c1 * f1 * sp, c1 * sig]
        if self.name == "reduced":
            cols.append(np.ones_like(f))
        else:
            g = t[8]
            cols += [
                -c1 * f1 * (sp - u * sig),
                g * w[:, 0],
                g * w[:, 1],
                -g * w[:, 0] * x["log_n"],
                -g * w[:, 1] * x["log_d"],
                s,
            ]
        return f, om[:, None] * np.stack(cols, axis=-1)

    def predict(self, params: dict, x: dict) -> np.ndarray:
        return np.exp(self.log_loss_and_jac(self.to_internal(params), x, jac=False)[0])


FORMS = ("full", "reduced")


# ---------------------------------------------------------------- supervised inputs
def supervised_terms(sup_fit: dict, n, d) -> dict:
    """`L~_S = L(N_S, D_S)` and the reducible part `L~_S - E` from a supervised fit.json."""
    from .laws import get_law

    lw = get_law(sup_fit["law"])
    n = np.atleast_1d(np.asarray(n, float))
    d = np.atleast_1d(np.asarray(d, float))
    ls = np.asarray(lw.predict(sup_fit["params"], n, d if lw.uses_tokens else None), float)
    e = float(sup_fit["params"].get("E", 0.0))
    r = ls - e
    if not np.all(np.isfinite(ls)) or np.any(r <= 0):
        raise ValueError(
            f"supervised fit ({lw.name}): predicted loss not above its irreducible "
            f"loss E = {e:.4g} at some student; refit the supervised law"
        )
    return {"loss": ls, "reducible": r, "E": e}


def _features(n, d, lt, sup):
    return {
        "log_n": np.log(n),
        "log_d": np.log(d),
        "log_lt": np.log(lt),
        "log_ls": np.log(sup["loss"]),
        "log_r": np.log(sup["reducible"]),
    }


def check_distillation_data(form: str, n, d, lt, loss, sources=None):
    """Refuse data that cannot identify the form, before any fitting.

    Needs finite positive values, more distinct `(N_S, D_S, L_T)` points than parameters, and
    enough distinct teacher losses and student sizes (full: 3 and 3, plus 2 token counts;
    reduced: 2 and 2).
    """
    cols = {"student_params": n, "student_tokens": d, "teacher_loss": lt, "loss": loss}
    for name, arr in cols.items():
        arr = np.asarray(arr, float)
        bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = sources[i] if sources is not None else f"point {i}"
            raise ValueError(f"{where}: {name} must be finite and > 0, got {arr[i]!r}")
    p = len(DistillationForm(form).param_names)
    triples = len({(a, b, c) for a, b, c in zip(n, d, lt)})
    n_lt, n_n, n_d = (len(set(np.asarray(v, float).tolist())) for v in (lt, n, d))
    need_lt, need_n, need_d = (3, 3, 2) if form == "full" else (2, 2, 1)
    problems = []
    if triples < p + 1:
        problems.append(f"{triples} distinct (N_S, D_S, L_T) points for {p} parameters (need {p + 1})")
    if n_lt < need_lt:
        problems.append(f"{n_lt} distinct teacher losses (need {need_lt})")
    if n_n < need_n:
        problems.append(f"{n_n} distinct student sizes (need {need_n})")
    if n_d < need_d:
        problems.append(f"{n_d} distinct token counts (need {need_d})")
    if problems:
        hint = (
            " Use --form reduced (4 parameters: f1 = 1 and the student term from the supervised fit), or"
            if form == "full"
            else ""
        ) + " distil more students from more teachers."
        raise ValueError(
            f"distillation law ({form} form) cannot be identified from these runs: "
            + "; ".join(problems)
            + "."
            + hint
        )


# ---------------------------------------------------------------------------- fitting
def _objective(theta, form, x, log_l, kind, delta):
    f, jac = form.log_loss_and_jac(theta, x)
    val, dr = robust_loss(f - log_l, kind, delta)
    total = float(val.sum())
    if not math.isfinite(total) or not np.all(np.isfinite(jac)):
        return NOT_FINITE, np.zeros_like(theta)
    return total, jac.T @ dr


# Bounds of the internal parameters (L-BFGS-B): without them the fit can escape along a
# degenerate ridge (c1 and d1 both huge: the break becomes an exponential in L_T / L~_S). They
# are wide enough for the published fit (c1 = 522.6): c1 up to 1e5, d1 and f1 over 4-5 decades.
_BOUNDS = {
    "c0": (-5.0, 20.0),
    "log_c1": (math.log(1e-4), math.log(1e5)),
    "log_d1": (-5.0, 5.0),
    "log_f1": (math.log(1e-3), math.log(20.0)),
    "log_k": (-25.0, 25.0),
    "log_A": (-25.0, 80.0),
    "log_B": (-25.0, 80.0),
    "alpha": (0.0, 3.0),
    "beta": (0.0, 3.0),
    "gamma": (0.02, 5.0),
}
BOUND_NAMES = {
    "reduced": ("c0", "log_c1", "log_d1", "log_k"),
    "full": ("c0", "log_c1", "log_d1", "log_f1", "log_A", "log_B", "alpha", "beta", "gamma"),
}


def _bounds(form):
    return [_BOUNDS[k] for k in BOUND_NAMES[form.name]]


def at_bounds(form, theta, tol=1e-4) -> list:
    """Public names of the parameters that ended on an optimiser bound (within `tol` of its range)."""
    return [
        p
        for p, (lo, hi), v in zip(form.param_names, _bounds(form), theta)
        if v <= lo + tol * (hi - lo) or v >= hi - tol * (hi - lo)
    ]


def _lbfgs(theta0, form, x, log_l, kind, delta, fixed=None):
    """L-BFGS-B within the bounds; `fixed` `{index: value}` pins internal parameters (profiles)."""
    from scipy.optimize import minimize

    bounds = list(_bounds(form))
    for j, v in (fixed or {}).items():
        bounds[j] = (v, v)
    th = np.clip(np.asarray(theta0, float), [b[0] for b in bounds], [b[1] for b in bounds])
    return minimize(
        _objective,
        th,
        args=(form, x, log_l, kind, delta),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
    )


C1_GRID = (1e-3, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)  # log-spaced: large c1 is ordinary
F1_GRID = (0.03, 0.1, 0.3, 1.0, 2.0)


def _grid_starts(x, loss, kind, delta, f1s=(1.0,), top_k=6):
    """VP grid over (c0, c1, log d1, f1) with the student term k * (L~_S - E): for fixed
    exponents the law is linear in k, solved by least squares of the relative error of
    L_S - L_T. c1 runs over `C1_GRID` (1e-3 to 3000, log-spaced). Returns
    `(c0, log c1, log d1, f1, log k)` rows of the best distinct cells."""
    c0s, c1s, lds = np.linspace(-1, 6, 15), np.asarray(C1_GRID), np.linspace(-2.0, 2.0, 17)
    g = np.stack(
        [a.ravel() for a in np.meshgrid(c0s, c1s, lds, np.asarray(f1s, float), indexing="ij")], axis=-1
    )
    lt = np.exp(x["log_lt"])
    r = np.exp(x["log_r"])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        u = (x["log_lt"][None, :] - x["log_ls"][None, :] - g[:, 2:3]) / g[:, 3:4]
        h = np.exp(-g[:, :1] * x["log_lt"][None, :] - g[:, 1:2] * g[:, 3:4] * _softplus(u)) * r
        w2 = 1.0 / loss**2
        k = np.clip((h * (loss - lt) * w2).sum(1) / (h * h * w2).sum(1), 1e-12, None)
        val, _ = robust_loss(np.log(lt + k[:, None] * h) - np.log(loss), kind, delta)
    score = np.where(np.isfinite(val.sum(1)) & np.isfinite(np.log(k)), val.sum(1), np.inf)
    starts, seen = [], set()
    for i in np.argsort(score):  # best cells, one per (c0, c1, f1) neighbourhood
        key = (round(g[i, 0]), g[i, 1], g[i, 3])
        if key in seen or not np.isfinite(score[i]):
            continue
        seen.add(key)
        starts.append(np.array([g[i, 0], math.log(g[i, 1]), g[i, 2], g[i, 3], math.log(k[i])]))
        if len(starts) == top_k:
            break
    return starts


def _full_from_grid(row, sup_fit):
    """A grid row `(c0, log c1, log d1, f1, log k)` as a full-form internal vector: the student
    term k * (L~_S - E) written as (A'/N^alpha' + B'/D^beta')^gamma' (exact for
    chinchilla-type supervised laws)."""
    c0, log_c1, log_d1, f1, log_k = (float(v) for v in row)
    p, law = sup_fit["params"], sup_fit["law"]
    if law == "gadre":  # Chinchilla with alpha = beta
        from .laws import GadreLaw

        p, law = GadreLaw.as_chinchilla(p), "chinchilla"
    if law in ("chinchilla", "chinchilla_gamma"):
        g = p.get("gamma", 1.0)
        a, b, al, be = math.log(p["A"]) + log_k / g, math.log(p["B"]) + log_k / g, p["alpha"], p["beta"]
    elif law == "kaplan":
        g, q = p["alpha_D"], p["alpha_N"] / p["alpha_D"]
        a, al = q * math.log(p["N_c"]) + log_k / g, q
        b, be = math.log(p["D_c"]) + log_k / g, 1.0
    else:  # power law: no token term in the supervised fit
        g, a, al, b, be = 1.0, math.log(p["A"]) + log_k, p["alpha"], -20.0, 0.3
    return np.array([c0, log_c1, log_d1, math.log(f1), a, b, al, be, g])


def fit_distillation_arrays(
    n, d, lt, loss, sup_fit, form="full", kind="huber", delta=1e-3, starts=None, top_k=None
) -> dict:
    """Fit the distillation law to arrays of students.

    Args:
        n, d (`array-like`): student (non-embedding) parameters and distillation tokens.
        lt (`array-like`): teacher cross-entropies L_T.
        loss (`array-like`): the students' cross-entropies L_S against the data.
        sup_fit (`dict`): the supervised fit.json (`law`, `params`) that gives `L~_S`.
        form (`str`): `"full"` or `"reduced"`.
        kind, delta: the robust loss (see `scaling.optimize.robust_loss`).
        starts (`list`, *optional*): extra internal start vectors (e.g. the full-data optimum).
        top_k (`int`, *optional*): grid starts refined (default 6 reduced, 8 full).

    Returns:
        `dict` with `form, params, internal, objective, converged, grad_norm, n_points,
        n_starts`.
    """
    fm = DistillationForm(form)
    n, d, lt, loss = (np.asarray(v, float) for v in (n, d, lt, loss))
    x = _features(n, d, lt, supervised_terms(sup_fit, n, d))
    log_l = np.log(loss)
    with single_thread_blas():
        if form == "reduced":
            grid = _grid_starts(x, loss, kind, delta, top_k=top_k or 6)
            cands = list(starts or []) + [np.array([r[0], r[1], r[2], r[4]]) for r in grid]
        else:
            grid = _grid_starts(x, loss, kind, delta, f1s=F1_GRID, top_k=top_k or 8)
            cands = list(starts or []) + [_full_from_grid(r, sup_fit) for r in grid]
        best = None
        for th in cands:
            res = _lbfgs(th, fm, x, log_l, kind, delta)
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    if best is None or best.fun >= NOT_FINITE:
        raise ValueError("distillation law: no start reached a finite objective")
    grad = float(np.max(np.abs(best.jac)))
    return {
        "form": form,
        "params": fm.from_internal(best.x),
        "internal": [float(v) for v in best.x],
        "objective": float(best.fun),
        "converged": bool(best.success) or grad < 1e-8,
        "grad_norm": grad,
        "message": str(best.message),
        "n_points": int(n.size),
        "at_bounds": at_bounds(fm, best.x),
        "n_starts": len(cands),
    }


def predict_distillation(dfit: dict, n, d, lt) -> np.ndarray:
    """Predicted student loss from a distillation fit.json for `N_S, D_S, L_T` (broadcast)."""
    n, d, lt = np.broadcast_arrays(*(np.asarray(v, float) for v in (n, d, lt)))
    fm = DistillationForm(dfit["form"])
    x = _features(
        n.ravel(), d.ravel(), lt.ravel(), supervised_terms(dfit["supervised"], n.ravel(), d.ravel())
    )
    return fm.predict(dfit["params"], x).reshape(n.shape)
