"""Input checks shared by the `scaling` commands: refuse what cannot be answered, say how far a
prediction reaches beyond the fitted data, and notice a token column a size-only law ignores.

- `positive(name, value)`: a parameter count, token count or budget must be a finite number > 0
  (`scaling predict --params 0` used to answer NaN with exit status 0).
- `extrapolation(fit, params, tokens)`: how far `(N, D)` lies outside the range of the points the
  fit used, as a factor (1 inside); above `EXTRAPOLATION_WARN` (10x) a warning names the factor,
  and the prediction's JSON carries it.
- `ignored_tokens(law, n, d)`: for a law without a token term, the sizes that were run at several
  token budgets (their differences in D are ignored by such a fit).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["EXTRAPOLATION_WARN", "positive", "extrapolation", "ignored_tokens"]

EXTRAPOLATION_WARN = 10.0  # a prediction beyond 10x the fitted range is flagged


def positive(name: str, value) -> float:
    """`value` as a float, or a `ValueError` naming `name` when it is not a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _fitted_range(fit: dict, key: str):
    data = fit.get("data") or {}
    values = data.get(key)
    if not values:
        return None
    used = data.get("used") or [True] * len(values)
    vals = [float(v) for v, u in zip(values, used) if u and v and float(v) > 0]
    return (min(vals), max(vals)) if vals else None


def _factor(value: float, rng) -> float:
    lo, hi = rng
    return max(value / hi, lo / value, 1.0)


def extrapolation(fit: dict, params: float, tokens: float | None = None) -> dict | None:
    """How far a prediction at `(params, tokens)` reaches beyond the fitted points.

    Returns:
        `None` when the fit records no data; else `{"factor", "params_factor", "tokens_factor",
        "params_range", "tokens_range"}` (factor 1: inside the range) plus `"warning"` when the
        factor exceeds `EXTRAPOLATION_WARN`, which is also issued as a Python warning.
    """
    out = {}
    for key, value in (("params", params), ("tokens", tokens)):
        rng = _fitted_range(fit, key)
        if rng is None or value is None:
            continue
        out[f"{key}_range"] = list(rng)
        out[f"{key}_factor"] = _factor(float(value), rng)
    if not out:
        return None
    out["factor"] = max(v for k, v in out.items() if k.endswith("_factor"))
    if out["factor"] > EXTRAPOLATION_WARN:
        what = [
            f"{k[:-7]} {out[k]:.3g}x outside [{out[k[:-7] + '_range'][0]:.3g}, {out[k[:-7] + '_range'][1]:.3g}]"
            for k in ("params_factor", "tokens_factor")
            if out.get(k, 1.0) > 1.0
        ]
        out["warning"] = (
            f"extrapolating {out['factor']:.3g}x beyond the fitted data ({'; '.join(what)}): "
            "the law has not been checked there"
        )
        warnings.warn(out["warning"], stacklevel=2)
    return out


def ignored_tokens(uses_tokens: bool, n, d) -> list:
    """Sizes run at several token budgets, for a law without a token term (else `[]`)."""
    if uses_tokens or d is None:
        return []
    n, d = np.asarray(n, float), np.asarray(d, float)
    return [float(size) for size in np.unique(n) if np.unique(d[n == size]).size > 1]
