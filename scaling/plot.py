"""Matplotlib figures of fits and compute-optimal analyses.

Every figure is written twice, as PNG and SVG, next to each other: `save_figure(fig,
"fit.png")` writes `fit.png` and `fit.svg`. Figures read only the fit.json dictionary (or
an IsoFLOP / envelope analysis dictionary), so they can be redrawn from files alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = [
    "save_figure",
    "plot_fit",
    "plot_residuals",
    "plot_frontier",
    "plot_isoflop",
    "plot_envelope",
    "plot_all",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> list:
    """Save `fig` as PNG and SVG (same stem as `path`); returns the two paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".svg"):
        target = path.with_suffix(ext)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=ext[1:])
        out.append(str(target))
    _plt().close(fig)
    return out


def _data(fit):
    d = fit["data"]
    arr = {k: np.asarray(d[k], float) for k in ("params", "tokens", "loss", "flops")}
    arr["used"] = np.asarray(d.get("used", [True] * arr["params"].size), bool)
    arr["holdout"] = np.asarray(d.get("holdout", [False] * arr["params"].size), bool)
    return arr


def _n_label(result: dict, symbol: str = "N") -> str:
    """Axis label naming what N counts, e.g. `N (non-embedding parameters)`."""
    kind = result.get("param_count") or "unknown"
    return f"{symbol} ({kind.replace('_', '-')} parameters)"


def plot_fit(fit: dict, path) -> list:
    """Loss against N, points coloured by D, with the fitted law drawn at several D."""
    from .laws import get_law

    plt = _plt()
    lw = get_law(fit["law"])
    a = _data(fit)
    fig, ax = plt.subplots(figsize=(7, 5))
    ngrid = np.logspace(np.log10(a["params"].min()) - 0.2, np.log10(a["params"].max()) + 0.3, 200)
    norm = plt.matplotlib.colors.LogNorm(a["tokens"].min(), a["tokens"].max())
    cmap = plt.get_cmap("viridis")
    shown = a["used"] | a["holdout"]
    sc = ax.scatter(
        a["params"][a["used"]],
        a["loss"][a["used"]],
        c=a["tokens"][a["used"]],
        cmap=cmap,
        norm=norm if lw.uses_tokens else None,
        s=14,
        label="fitted runs",
    )
    if a["holdout"].any():
        ax.scatter(
            a["params"][a["holdout"]], a["loss"][a["holdout"]], marker="x", c="red", s=30, label="held out"
        )
    if (~shown).any():
        ax.scatter(a["params"][~shown], a["loss"][~shown], marker=".", c="0.6", s=10, label="dropped")
    if lw.uses_tokens:
        for dval in np.quantile(a["tokens"], [0.05, 0.35, 0.65, 0.95]):
            ax.plot(
                ngrid,
                lw.predict(fit["params"], ngrid, dval),
                color=cmap(norm(dval)),
                lw=1.5,
                label=f"fit, D = {dval:.2g}",
            )
        fig.colorbar(sc, ax=ax, label="tokens D")
    else:
        ax.plot(ngrid, lw.predict(fit["params"], ngrid), color="C1", lw=2, label="fit")
    ax.set(xscale="log", xlabel=_n_label(fit), ylabel="loss", title=f"{fit['law']}: {fit.get('formula', '')}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_residuals(fit: dict, path) -> list:
    """Relative residuals (predicted / observed - 1, in %) against N."""
    from .laws import get_law

    plt = _plt()
    lw = get_law(fit["law"])
    a = _data(fit)
    pred = lw.predict(fit["params"], a["params"], a["tokens"] if lw.uses_tokens else None)
    res = 100 * (pred / a["loss"] - 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    sc = ax.scatter(
        a["params"][a["used"]],
        res[a["used"]],
        c=np.log10(a["tokens"][a["used"]]),
        s=14,
        cmap="viridis",
        label="fitted runs",
    )
    if a["holdout"].any():
        ax.scatter(a["params"][a["holdout"]], res[a["holdout"]], marker="x", c="red", s=30, label="held out")
    ax.axhline(0, color="k", lw=0.8)
    fig.colorbar(sc, ax=ax, label="log10 tokens D")
    ax.set(xscale="log", xlabel=_n_label(fit), ylabel="prediction error (%)", title="residuals")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_frontier(fit: dict, path, flops=None) -> list:
    """Compute-optimal N*(C) and D*(C), with the bootstrap percentile band when available."""
    from .optimal import _sample_params, compute_optimal

    plt = _plt()
    a = _data(fit)
    if flops is None:
        lo, hi = np.log10(a["flops"].min()), np.log10(max(a["flops"].max(), *fit.get("budgets", [0])))
        flops = np.logspace(lo, hi + 0.5, 60)
    best = compute_optimal(fit["law"], fit["params"], flops)
    samples = _sample_params(fit)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "params", "N*"), (axes[1], "tokens", "D*")):
        ax.plot(flops, best[key], color="C0", lw=2, label=f"{label}(C), fit")
        if samples:
            sols = np.array([compute_optimal(fit["law"], p, flops)[key] for p in samples])
            lo_q, hi_q = np.nanpercentile(sols, [2.5, 97.5], axis=0)
            ax.fill_between(flops, lo_q, hi_q, color="C0", alpha=0.25, label="95% bootstrap")
        ax.scatter(a["flops"], a[key], s=8, c="0.6", label="runs")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="compute C (FLOPs)",
            ylabel=_n_label(fit, label) if key == "params" else label,
            title=f"compute-optimal {label}",
        )
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_isoflop(iso: dict, path) -> list:
    """IsoFLOP curves (loss against N per budget) with their minima, and N* against C."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    budgets = iso["budgets"]
    cmap = plt.get_cmap("plasma")
    for i, b in enumerate(budgets):
        col = cmap(i / max(1, len(budgets) - 1) * 0.85)
        pts = b["points"]
        ax.scatter(pts["params"], pts["loss"], color=col, s=14)
        x = np.linspace(np.log(b["range"][0]), np.log(b["range"][1]), 100)
        ax.plot(np.exp(x), np.polyval(b["parabola"], x), color=col, label=f"C = {b['flops']:.2g}")
        ax.plot(b["params_opt"], b["loss_opt"], marker="*", ms=12, color=col, mec="k")
    ax.set(xscale="log", xlabel=_n_label(iso), ylabel="loss", title="IsoFLOP profiles")
    if budgets:
        ax.legend(fontsize=7)
    cs = np.array([b["flops"] for b in budgets])
    ax2.scatter(cs, [b["params_opt"] for b in budgets], color="C0", label="IsoFLOP minima")
    if "a" in iso:
        grid = np.logspace(np.log10(cs.min()), np.log10(cs.max()) + 1, 50)
        ax2.plot(grid, iso["k_params"] * grid ** iso["a"], color="C0", label=f"N* ∝ C^{iso['a']:.3f}")
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="compute C (FLOPs)",
        ylabel=_n_label(iso, "N*"),
        title="optimal size per budget",
    )
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


def plot_envelope(env: dict, path) -> list:
    """Approach 1: the minimum-loss envelope and N* against C."""
    plt = _plt()
    pts = env["points"]
    c = np.array([p["flops"] for p in pts])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot(c, [p["loss"] for p in pts], color="C3", lw=2, label="envelope (running minimum)")
    ax.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="loss", title="minimum-loss envelope")
    ax.legend(fontsize=8)
    ax2.scatter(c, [p["params"] for p in pts], s=12, label="N at the envelope")
    if "a" in env:
        ax2.plot(c, env["k_params"] * c ** env["a"], color="C1", label=f"N* ∝ C^{env['a']:.3f}")
    ax2.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=_n_label(env, "N*"))
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


def plot_all(fit: dict, path) -> list:
    """Data and fit at `path`, residuals at `<stem>_residuals`, frontier at `<stem>_frontier`
    (L(N, D) laws only). Each as PNG and SVG; returns every file written."""
    from .laws import get_law

    path = Path(path)
    files = plot_fit(fit, path)
    files += plot_residuals(fit, path.with_name(path.stem + "_residuals" + path.suffix))
    if get_law(fit["law"]).uses_tokens:
        files += plot_frontier(fit, path.with_name(path.stem + "_frontier" + path.suffix))
    return files
