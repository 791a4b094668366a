"""Benchmark: scaling-law fitting on Epoch AI's 240 Chinchilla points, side by side.

Compares, on the same data and the same objective (summed Huber, delta 1e-3, on log-loss):

- **scaledown vp**: variable projection over the exponents + L-BFGS-B with analytic gradients
  (`scaling fit`, the default);
- **Epoch-style grid**: L-BFGS-B from each of Chinchilla's 4,500 starts, scipy's default
  tolerances and finite-difference gradients, best result kept (as Besiroglu et al. 2024 did);
- optionally (`--analytic-grid`) **scaledown grid**: the same 4,500 starts with analytic
  gradients (`scaling fit --method grid`);
- **bootstrap**: 1,000 refits with `scaling.fit.bootstrap` on all cores.

BLAS is limited to one thread for every method, so the comparison is of algorithms.

Run from the repository root:

    .venv/bin/python benchmarks/bench_scaling_fit.py            # full, a few minutes
    .venv/bin/python benchmarks/bench_scaling_fit.py --baseline-starts 450   # quick look

Writes `benchmarks/results/bench_scaling_fit.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "scaling" / "chinchilla_epoch_svg_extracted.csv"
TARGET = {"objective": 0.00101827, "E": 1.8172, "A": 477.84, "B": 2143.86, "alpha": 0.3473, "beta": 0.3672}


def load_epoch():
    """The 240 points Epoch fits: 245 extracted points minus the 5 highest losses."""
    from scaling.logs import read_table, to_arrays

    a = to_arrays(read_table(DATA, 'params="Model Size",flops="Training FLOP"'))
    keep = np.argsort(a["loss"])[:-5]
    return a["params"][keep], a["tokens"][keep], a["loss"][keep]


def epoch_style_grid(n, d, loss, max_starts=None):
    """Epoch AI's procedure: L-BFGS-B (finite differences) from every grid start, best kept."""
    from scipy.optimize import minimize
    from scipy.special import huber, logsumexp

    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)

    def obj(p):
        a, b, e, alpha, beta = p
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return np.sum(huber(1e-3, pred - log_l))

    grid = list(
        itertools.product(
            np.arange(0, 25.1, 5),
            np.arange(0, 25.1, 5),
            np.arange(-1, 1.01, 0.5),
            np.arange(0, 2.01, 0.5),
            np.arange(0, 2.01, 0.5),
        )
    )
    if max_starts:
        grid = grid[:: max(1, len(grid) // max_starts)][:max_starts]
    best = None
    for a, b, e, alpha, beta in grid:
        res = minimize(obj, [a, b, e, alpha, beta], method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return {
        "E": float(np.exp(e)),
        "A": float(np.exp(a)),
        "B": float(np.exp(b)),
        "alpha": float(alpha),
        "beta": float(beta),
        "objective": float(best.fun),
        "starts": len(grid),
    }


def timed(fn, repeat=1):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def row(name, res, seconds, note=""):
    return {
        "method": name,
        "seconds": seconds,
        "objective": res["objective"],
        **{k: res[k] for k in ("E", "A", "B", "alpha", "beta")},
        "note": note,
    }


def markdown(rows, boot, ratio, cores):
    head = (
        "| method | time (s) | objective | E | A | B | alpha | beta | note |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['method']} | {r['seconds']:.2f} | {r['objective']:.8f} | {r['E']:.4f} "
        f"| {r['A']:.2f} | {r['B']:.2f} | {r['alpha']:.4f} | {r['beta']:.4f} "
        f"| {r['note']} |\n"
        for r in rows
    )
    t = TARGET
    body += (
        f"| Epoch AI (published) | ~128 | {t['objective']:.8f} | {t['E']} | {t['A']} "
        f"| {t['B']} | {t['alpha']} | {t['beta']} | DESIGN.md section 4 |\n"
    )
    tail = f"\nSpeed-up of vp over the Epoch-style grid: **{ratio:.0f}x** ({cores} cores).\n"
    if boot:
        tail += (
            f"Bootstrap: {boot['n']} refits in **{boot['seconds']:.1f} s** on "
            f"{boot['jobs']} processes ({boot['n_failed']} failed); 95% intervals: "
            + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in boot["ci"].items())
            + ".\n"
        )
    return head + body + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline-starts",
        type=int,
        help="subsample the 4,500 Epoch starts "
        "(the baseline time is then extrapolated to 4,500 and marked so)",
    )
    parser.add_argument(
        "--analytic-grid",
        action="store_true",
        help="also time scaledown's --method grid (analytic gradients)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="refits (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from scaling.fit import bootstrap, fit_arrays, single_thread_blas

    n, d, loss = load_epoch()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with single_thread_blas():
        fit_arrays(n, d, loss)  # warm-up: imports and caches
        vp, t_vp = timed(lambda: fit_arrays(n, d, loss, method="vp"), repeat=3)
        rows.append(
            row(
                "scaledown vp",
                {**vp["params"], "objective": vp["objective"]},
                t_vp,
                f"VP grid + {vp['n_starts']} L-BFGS start(s), best of 3 runs",
            )
        )
        if args.analytic_grid:
            g, t_g = timed(lambda: fit_arrays(n, d, loss, method="grid"))
            rows.append(
                row(
                    "scaledown grid",
                    {**g["params"], "objective": g["objective"]},
                    t_g,
                    f"{g['n_starts']} starts, analytic gradients",
                )
            )
        base, t_base = timed(lambda: epoch_style_grid(n, d, loss, args.baseline_starts))
    note = f"{base['starts']} starts, finite differences"
    if base["starts"] < 4500:
        t_base *= 4500 / base["starts"]
        note += ", time extrapolated to 4,500"
    rows.insert(1, row("Epoch-style grid", base, t_base, note))
    ratio = t_base / t_vp
    boot_info = None
    if args.bootstrap:
        b, t_b = timed(
            lambda: bootstrap(
                n, d, loss, n_boot=args.bootstrap, seed=0, jobs=cores, theta0=np.array(vp["internal"])
            )
        )
        ok = b["samples"][~np.isnan(b["samples"][:, 0])]
        names = ("E", "A", "B", "alpha", "beta")
        boot_info = {
            "n": args.bootstrap,
            "seconds": t_b,
            "jobs": cores,
            "n_failed": b["n_failed"],
            "ci": {k: np.percentile(ok[:, j], [2.5, 97.5]).tolist() for j, k in enumerate(names)},
        }
    bars = {
        "objective <= 0.0010183": vp["objective"] <= 0.0010183,
        "alpha, beta, E within 0.5%": all(
            abs(vp["params"][k] / TARGET[k] - 1) <= 0.005 for k in ("alpha", "beta", "E")
        ),
        "A, B within 3%": all(abs(vp["params"][k] / TARGET[k] - 1) <= 0.03 for k in "AB"),
        "vp fit < 5 s": t_vp < 5,
        "1000 bootstrap refits < 60 s": bool(
            boot_info and boot_info["n"] >= 1000 and boot_info["seconds"] < 60
        ),
    }
    md = markdown(rows, boot_info, ratio, cores)
    md += "\nBars: " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in bars.items()) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from _measure import provenance

    result = {
        "provenance": provenance(),
        "rows": rows,
        "speedup": ratio,
        "bootstrap": boot_info,
        "bars": bars,
        "machine": {"cores": cores, "python": platform.python_version(), "platform": platform.platform()},
    }
    (out / "bench_scaling_fit.json").write_text(json.dumps(result, indent=1))
    (out / "bench_scaling_fit.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
