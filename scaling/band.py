"""The extrapolation band of a `--law auto` fit at one point (read by `scaling predict`).

Kept apart from `scaling.autolaw`, which fits, so that predicting needs only `scaling.laws`.
"""

from __future__ import annotations

import math

MIN_DECADES = 0.1  # extrapolation distances (decades of model size or compute) below this count as this


def extrapolation_band(selection: dict, fits: dict, params, tokens) -> dict:
    """The chosen law's prediction with its extrapolation band at `(params, tokens)`.

    Args:
        selection (`dict`): from `select_law` (stored as fit.json's `selection`).
        fits (`dict`): law -> public parameters of each close candidate fitted to all the data.
        params, tokens (`float`): the point to predict.

    Returns:
        `{"loss", "band": [lo, hi], "band_pct", "candidates": law -> loss}`.
    """
    from .laws import get_law

    chosen = selection["chosen"]
    per_law = {law: float(get_law(law).predict(p, params, tokens)) for law, p in fits.items()}
    loss = per_law[chosen]
    pct = selection["band_pct"]
    if "band_pct_per_decade" in selection:  # the validation error rate, scaled to this distance
        dist = math.log10(6.0 * params * tokens / selection["fitted_max_flops"])
        if "fitted_max_params" in selection:  # beyond the largest fitted model counts as well
            dist = max(dist, math.log10(params / selection["fitted_max_params"]))
        pct = max(pct, selection["band_pct_per_decade"] * max(dist, MIN_DECADES))
    e = min(pct / 100.0, 0.99)
    lo, hi = loss * (1.0 - e), loss * (1.0 + e)
    lo, hi = min([lo, *per_law.values()]), max([hi, *per_law.values()])
    return {"loss": loss, "band": [lo, hi], "band_pct": pct, "candidates": per_law}
