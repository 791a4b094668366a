"""Functional forms of scaling laws.

Every law is described by one [`Law`] object that knows:

- its public parameter names and how to predict the loss from them (`predict`);
- an internal, unconstrained parameterisation in log space (the log-sum-exp form of
  Hoffmann et al. 2022) with the analytic Jacobian of the predicted log-loss, which
  `scaling.fit` minimises with L-BFGS;
- its *variable projection* structure: for fixed exponents the law is linear in its
  remaining coefficients, so a grid over the exponents plus a tiny non-negative linear
  solve finds the global basin cheaply.

The laws:

- `power`:      L(N)    = E + A * N^-alpha
- `chinchilla`: L(N, D) = E + A / N^alpha + B / D^beta
- `kaplan`:     L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D
- `chinchilla_gamma`: L(N, D) = E + (A / N^alpha + B / D^beta)^gamma (Busbridge et al. 2025,
  Eq. 1; `ChinchillaGammaLaw`)
- `gadre`: L(C, M) = E + (a M^eta + b M^-eta) C^-eta with C = 6ND and M = D / N (Gadre et al.
  2024, over-trained ladders; `GadreLaw`): Chinchilla with alpha = beta = 2 eta, 4 parameters

N is a parameter count, D a number of training tokens, losses are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Law", "ChinchillaGammaLaw", "GadreLaw", "LAWS", "get_law", "predict"]


def _softmax_rows(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp over the last axis and the matching softmax weights."""
    m = z.max(axis=-1, keepdims=True)
    ez = np.exp(z - m)
    s = ez.sum(axis=-1, keepdims=True)
    return (m + np.log(s))[..., 0], ez / s


@dataclass(frozen=True)
class Law:
    """A scaling-law family.

    Args:
        name (`str`): registry name (`"power"`, `"chinchilla"`, `"kaplan"`, ...).
        param_names (`tuple[str, ...]`): public parameter names, in storage order.
        internal_names (`tuple[str, ...]`): names of the unconstrained internal parameters.
        exponent_names (`tuple[str, ...]`): internal parameters searched on a grid during
            variable projection (the rest are solved linearly).
        exponent_ranges (`tuple[tuple[float, float], ...]`): search range of each exponent.
        uses_tokens (`bool`): whether the law depends on D.
        formula (`str`): human-readable formula.
        grid_points (`int`, *optional*): most VP grid points per exponent (laws with many
            exponents keep their grid small).
    """

    name: str
    param_names: tuple
    internal_names: tuple
    exponent_names: tuple
    exponent_ranges: tuple
    uses_tokens: bool
    formula: str
    grid_points: int | None = None

    # ------------------------------------------------------------------ public form
    def predict(self, params: dict, n, d=None) -> np.ndarray:
        """Predicted loss for parameter counts `n` (and token counts `d`).

        Args:
            params (`dict`): public parameters, e.g. `{"E":..., "A":..., "alpha":...}`.
            n (`float` or array): parameter counts.
            d (`float` or array, *optional*): token counts; required when `uses_tokens`.

        Returns:
            `np.ndarray`: predicted loss, broadcast over `n` and `d`.
        """
        missing = [k for k in self.param_names if k not in params]
        if missing:
            raise ValueError(f"law {self.name!r} needs parameters {missing}")
        if self.uses_tokens and d is None:
            raise ValueError(f"law {self.name!r} needs a token count D")
        theta = self.to_internal(params)
        log_n = np.log(np.asarray(n, dtype=float))
        log_d = np.log(np.asarray(d, dtype=float)) if d is not None else np.zeros_like(log_n)
        log_n, log_d = np.broadcast_arrays(log_n, log_d)
        f, _ = self.log_loss_and_jac(theta, log_n.ravel(), log_d.ravel(), jac=False)
        return np.exp(f).reshape(log_n.shape)

    # ------------------------------------------------------------------ internal form
    def to_internal(self, params: dict) -> np.ndarray:
        """Public parameters to the unconstrained internal vector."""
        p = {k: float(v) for k, v in params.items()}
        if self.name == "power":
            return np.array([math.log(p["A"]), math.log(max(p["E"], 1e-300)), p["alpha"]])
        if self.name == "chinchilla":
            return np.array(
                [math.log(p["A"]), math.log(p["B"]), math.log(max(p["E"], 1e-300)), p["alpha"], p["beta"]]
            )
        ratio = p["alpha_N"] / p["alpha_D"]
        return np.array([math.log(p["N_c"]), math.log(p["D_c"]), ratio, p["alpha_D"]])

    def from_internal(self, theta) -> dict:
        """Internal vector to public parameters (plain floats)."""
        t = [float(x) for x in theta]
        if self.name == "power":
            return {"E": math.exp(t[1]), "A": math.exp(t[0]), "alpha": t[2]}
        if self.name == "chinchilla":
            return {
                "E": math.exp(t[2]),
                "A": math.exp(t[0]),
                "B": math.exp(t[1]),
                "alpha": t[3],
                "beta": t[4],
            }
        return {"N_c": math.exp(t[0]), "D_c": math.exp(t[1]), "alpha_N": t[2] * t[3], "alpha_D": t[3]}

    def log_loss_and_jac(self, theta, log_n, log_d, jac: bool = True):
        """Predicted log-loss and its Jacobian with respect to the internal parameters.

        Args:
            theta (`np.ndarray`): internal parameters.
            log_n, log_d (`np.ndarray`): natural logs of N and D, shape `(n,)`.
            jac (`bool`): also return the `(n, p)` Jacobian.

        Returns:
            `(f, J)` with `f` of shape `(n,)` and `J` of shape `(n, p)` or `None`.
        """
        t = np.asarray(theta, dtype=float)
        if self.name == "power":
            a, e, alpha = t
            z = np.stack([a - alpha * log_n, np.full_like(log_n, e)], axis=-1)
            f, w = _softmax_rows(z)
            if not jac:
                return f, None
            return f, np.stack([w[:, 0], w[:, 1], -w[:, 0] * log_n], axis=-1)
        if self.name == "chinchilla":
            a, b, e, alpha, beta = t
            z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=-1)
            f, w = _softmax_rows(z)
            if not jac:
                return f, None
            return f, np.stack([w[:, 0], w[:, 1], w[:, 2], -w[:, 0] * log_n, -w[:, 1] * log_d], axis=-1)
        lnc, ldc, ratio, alpha_d = t
        z = np.stack([ratio * (lnc - log_n), ldc - log_d], axis=-1)
        s, w = _softmax_rows(z)
        f = alpha_d * s
        if not jac:
            return f, None
        return f, np.stack(
            [alpha_d * w[:, 0] * ratio, alpha_d * w[:, 1], alpha_d * w[:, 0] * (lnc - log_n), s], axis=-1
        )

    # ------------------------------------------------------------- variable projection
    def linear_system(self, exps: np.ndarray, n, d, loss):
        """Design matrices of the linear sub-problem for a batch of exponent vectors.

        For fixed exponents the law reads `target = X @ c` with `c >= 0`.

        Args:
            exps (`np.ndarray`): `(G, k)` exponent vectors (see `exponent_names`).
            n, d, loss (`np.ndarray`): data, shape `(n,)`.

        Returns:
            `(X, y)`: `X` of shape `(G, n, m)` and targets `y` of shape `(G, n)`.
        """
        g = exps.shape[0]
        ones = np.ones((g, n.size))
        if self.name == "power":
            x = np.stack([ones, n[None, :] ** -exps[:, :1]], axis=-1)
            return x, np.broadcast_to(loss, (g, n.size))
        if self.name == "chinchilla":
            x = np.stack([ones, n[None, :] ** -exps[:, :1], d[None, :] ** -exps[:, 1:2]], axis=-1)
            return x, np.broadcast_to(loss, (g, n.size))
        ratio, alpha_d = exps[:, :1], exps[:, 1:2]
        x = np.stack([n[None, :] ** -ratio, 1.0 / np.broadcast_to(d, (g, n.size))], axis=-1)
        return x, loss[None, :] ** (1.0 / alpha_d)

    def internal_from_linear(self, exps, coef) -> np.ndarray:
        """Internal vector from grid exponents and linear coefficients (floored at tiny)."""
        c = np.log(np.maximum(np.asarray(coef, dtype=float), 1e-12))
        if self.name == "power":  # coef = (E, A)
            return np.array([c[1], c[0], exps[0]])
        if self.name == "chinchilla":  # coef = (E, A, B)
            return np.array([c[1], c[2], c[0], exps[0], exps[1]])
        ratio, alpha_d = exps  # coef = (N_c^ratio, D_c)
        return np.array([c[0] / ratio, c[1], ratio, alpha_d])


class ChinchillaGammaLaw(Law):
    """`L(N, D) = E + (A / N^alpha + B / D^beta)^gamma`, Busbridge et al. (2025), Eq. 1.

    Internal parameters `(a, b, e, alpha, beta, gamma)` with `a = log A`, `b = log B`,
    `e = log E`, so that `log L = LSE(e, gamma * LSE(a - alpha log N, b - beta log D))`.
    With `gamma = 1` it is the Chinchilla law. Variable projection searches a grid over
    `(alpha, beta, gamma, rho = log(B / A))`, for which the law is linear in `(E, A^gamma)`.
    Since `t -> t^gamma` is increasing, its compute-optimal N and D under C = 6ND are
    Chinchilla's closed form with the same `A, B, alpha, beta`.
    """

    def to_internal(self, params: dict) -> np.ndarray:
        p = {k: float(v) for k, v in params.items()}
        return np.array(
            [
                math.log(p["A"]),
                math.log(p["B"]),
                math.log(max(p["E"], 1e-300)),
                p["alpha"],
                p["beta"],
                p["gamma"],
            ]
        )

    def from_internal(self, theta) -> dict:
        t = [float(x) for x in theta]
        return {
            "E": math.exp(t[2]),
            "A": math.exp(t[0]),
            "B": math.exp(t[1]),
            "alpha": t[3],
            "beta": t[4],
            "gamma": t[5],
        }

    def log_loss_and_jac(self, theta, log_n, log_d, jac: bool = True):
        a, b, e, alpha, beta, gamma = np.asarray(theta, dtype=float)
        s, w = _softmax_rows(np.stack([a - alpha * log_n, b - beta * log_d], axis=-1))
        f, v = _softmax_rows(np.stack([np.full_like(log_n, e), gamma * s], axis=-1))
        if not jac:
            return f, None
        g = v[:, 1] * gamma
        return f, np.stack(
            [g * w[:, 0], g * w[:, 1], v[:, 0], -g * w[:, 0] * log_n, -g * w[:, 1] * log_d, v[:, 1] * s],
            axis=-1,
        )

    def linear_system(self, exps: np.ndarray, n, d, loss):
        alpha, beta, gamma, rho = (exps[:, i : i + 1] for i in range(4))
        inner = n[None, :] ** -alpha + np.exp(rho) * d[None, :] ** -beta
        x = np.stack([np.ones((exps.shape[0], n.size)), inner**gamma], axis=-1)
        return x, np.broadcast_to(loss, (exps.shape[0], n.size))

    def internal_from_linear(self, exps, coef) -> np.ndarray:
        alpha, beta, gamma, rho = (float(x) for x in exps)
        e, k = np.log(np.maximum(np.asarray(coef, dtype=float), 1e-12))
        a = k / gamma  # coef = (E, A^gamma)
        return np.array([a, a + rho, e, alpha, beta, gamma])


LOG6 = math.log(6.0)


class GadreLaw(Law):
    """`L(C, M) = E + (a M^eta + b M^-eta) C^-eta`, Gadre et al. (2024), "Language models scale
    reliably with over-training and on downstream tasks" (arXiv 2403.08540), with compute
    `C = 6ND` and token multiplier `M = D / N` (tokens per parameter; 20 is Chinchilla's ratio).

    Since `M^eta C^-eta = 6^-eta N^-2eta` and `M^-eta C^-eta = 6^-eta D^-2eta`, it is the Chinchilla
    law with tied exponents, `alpha = beta = 2 eta`, `A = a 6^-eta`, `B = b 6^-eta` (`as_chinchilla`):
    4 parameters instead of 5. It is fitted in exactly that form: internal parameters
    `(log A, log B, log E, alpha)`, `log L = LSE(log A - alpha log N, log B - alpha log D, log E)`,
    linear in `(E, A, B)` for fixed `alpha` (variable projection over one exponent), so the
    optimiser sees Chinchilla's conditioning. (Internal `(log a, log b, eta)` couple the exponent
    with the coefficients through `6^eta`, and L-BFGS-B's first line search failed on one ladder.)
    Its compute-optimal allocation is Chinchilla's with equal exponents: `N*, D* ∝ C^(1/2)`, and the
    optimal multiplier `M* = (b / a)^(1 / (2 eta))` is the same at every budget.
    """

    def to_internal(self, params: dict) -> np.ndarray:
        c = self.as_chinchilla(params)
        return np.array([math.log(c["A"]), math.log(c["B"]), math.log(max(c["E"], 1e-300)), c["alpha"]])

    def from_internal(self, theta) -> dict:
        la, lb, e, alpha = (float(x) for x in theta)
        eta = alpha / 2.0
        return {"E": math.exp(e), "a": math.exp(la + eta * LOG6), "b": math.exp(lb + eta * LOG6), "eta": eta}

    def log_loss_and_jac(self, theta, log_n, log_d, jac: bool = True):
        la, lb, e, alpha = np.asarray(theta, dtype=float)
        f, w = _softmax_rows(
            np.stack([la - alpha * log_n, lb - alpha * log_d, np.full_like(log_n, e)], axis=-1)
        )
        if not jac:
            return f, None
        return f, np.stack([w[:, 0], w[:, 1], w[:, 2], -w[:, 0] * log_n - w[:, 1] * log_d], axis=-1)

    def linear_system(self, exps: np.ndarray, n, d, loss):
        alpha = exps[:, :1]
        ones = np.ones((exps.shape[0], n.size))
        x = np.stack([ones, n[None, :] ** -alpha, d[None, :] ** -alpha], axis=-1)
        return x, np.broadcast_to(loss, (exps.shape[0], n.size))

    def internal_from_linear(self, exps, coef) -> np.ndarray:
        e, a, b = np.log(np.maximum(np.asarray(coef, dtype=float), 1e-12))  # coef = (E, A, B)
        return np.array([a, b, e, float(exps[0])])

    @staticmethod
    def as_chinchilla(params: dict) -> dict:
        """The same law as Chinchilla parameters: `alpha = beta = 2 eta`, `A = a 6^-eta`, `B = b 6^-eta`."""
        eta = float(params["eta"])
        scale = 6.0**-eta
        return {
            "E": float(params["E"]),
            "A": float(params["a"]) * scale,
            "B": float(params["b"]) * scale,
            "alpha": 2.0 * eta,
            "beta": 2.0 * eta,
        }

    @staticmethod
    def optimal_multiplier(params: dict) -> float:
        """The compute-optimal tokens per parameter `M* = (b / a)^(1 / (2 eta))`, the same at every budget."""
        return float((float(params["b"]) / float(params["a"])) ** (1.0 / (2.0 * float(params["eta"]))))


LAWS = {
    "power": Law(
        "power",
        ("E", "A", "alpha"),
        ("a", "e", "alpha"),
        ("alpha",),
        ((0.01, 2.5),),
        False,
        "L(N) = E + A * N^-alpha",
    ),
    "chinchilla": Law(
        "chinchilla",
        ("E", "A", "B", "alpha", "beta"),
        ("a", "b", "e", "alpha", "beta"),
        ("alpha", "beta"),
        ((0.01, 2.5), (0.01, 2.5)),
        True,
        "L(N, D) = E + A / N^alpha + B / D^beta",
    ),
    "kaplan": Law(
        "kaplan",
        ("N_c", "D_c", "alpha_N", "alpha_D"),
        ("log_N_c", "log_D_c", "alpha_N_over_alpha_D", "alpha_D"),
        ("alpha_N_over_alpha_D", "alpha_D"),
        ((0.05, 4.0), (0.01, 1.5)),
        True,
        "L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D",
    ),
    "chinchilla_gamma": ChinchillaGammaLaw(
        "chinchilla_gamma",
        ("E", "A", "B", "alpha", "beta", "gamma"),
        ("a", "b", "e", "alpha", "beta", "gamma"),
        ("alpha", "beta", "gamma", "rho"),
        ((0.02, 2.0), (0.02, 2.0), (0.1, 2.0), (-12.0, 20.0)),
        True,
        "L(N, D) = E + (A / N^alpha + B / D^beta)^gamma",
        grid_points=13,
    ),
    "gadre": GadreLaw(
        "gadre",
        ("E", "a", "b", "eta"),
        ("a", "b", "e", "alpha"),  # Chinchilla's internal form with beta = alpha (= 2 eta)
        ("alpha",),
        ((0.01, 2.5),),
        True,
        "L(C, M) = E + (a M^eta + b M^-eta) C^-eta, C = 6ND, M = D / N",
    ),
}


def get_law(name: str) -> Law:
    """Return the law called `name`, with a clear error listing the known ones."""
    try:
        return LAWS[name]
    except KeyError:
        raise ValueError(f"unknown law {name!r}; choose one of {sorted(LAWS)}") from None


def predict(law: str, params: dict, n, d=None) -> np.ndarray:
    """Shortcut for `get_law(law).predict(params, n, d)`."""
    return get_law(law).predict(params, n, d)
