"""The distillation scaling law's fits (Busbridge et al. 2025), timed.

1. ``chinchilla_gamma`` (their Eq. 1, ``E + (A/N^alpha + B/D^beta)^gamma``) against ``chinchilla`` on
   Epoch AI's 240 Chinchilla points (`bench_scaling_fit.load_epoch`): summed Huber objective (delta 1e-3,
   on log-loss) and parameters of scaledown's variable-projection fit, and, unless ``--no-grid``,
   L-BFGS from the 9,000-start grid (``method="grid"``), to check that VP reaches the grid's optimum.
2. The distillation law (Eq. 8) on 32 synthetic students (4 sizes x 2 token counts x 4 teacher
   losses, the paper's supervised constants, synthetic distillation constants, 0.2% log-normal noise,
   seed 0, as in ``tests/test_distill_law.py``): the full (9 parameters) and reduced (4) forms, each
   fitted to data drawn from itself, and the full form with a ``--bootstrap``-refit bootstrap.

Each time is the wall clock of one fit (BLAS on one thread) and the process's CPU time; the load
average is recorded before and after. Writes ``benchmarks/results/distill_law.{json,md}``.

Run: ``.venv/bin/python benchmarks/bench_distill_law.py`` (a few minutes, most of it the grid);
quicker: ``--no-grid --bootstrap 10``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import write_results  # noqa: E402
from bench_scaling_fit import load_epoch  # noqa: E402

SUP = {
    "law": "chinchilla_gamma",
    "param_count": "non_embedding",
    "params": {"E": 1.220, "A": 3355.0, "B": 18186.0, "alpha": 0.408, "beta": 0.431, "gamma": 0.452},
}
K = 1.5
TRUE = {
    "full": {
        "c0": 3.0,
        "c1": 6.0,
        "d1": 0.85,
        "f1": 0.3,
        "A_prime": 3355.0 * K ** (1 / 0.452),
        "B_prime": 18186.0 * K ** (1 / 0.452),
        "alpha_prime": 0.408,
        "beta_prime": 0.431,
        "gamma_prime": 0.452,
    },
    "reduced": {"c0": 2.5, "c1": 3.0, "d1": 0.9, "k": 1.3},
}


def timed(fn, *args, **kwargs):
    """``(result, wall seconds, CPU seconds)`` of one call."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, time.process_time() - c


def synthetic_students(form: str, noise: float = 0.002, seed: int = 0):
    from scaling.distill_law import DistillationForm, _features, supervised_terms

    n = np.repeat([1e8, 3e8, 1e9, 3e9], 8)
    d = np.tile(np.repeat([2e10, 1e11], 4), 4)
    lt = np.tile([1.2, 1.5, 1.9, 2.4], 8)
    clean = DistillationForm(form).predict(TRUE[form], _features(n, d, lt, supervised_terms(SUP, n, d)))
    return n, d, lt, clean * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-grid", action="store_true", help="skip the 9,000-start grid fit")
    parser.add_argument("--bootstrap", type=int, default=50, help="refits of the full form (0: skip)")
    args = parser.parse_args()

    from scaling.distill_fit import fit_distillation, load_distill_runs
    from scaling.distill_law import fit_distillation_arrays
    from scaling.fit import fit_arrays

    load_before = os.getloadavg()
    rows = []
    n, d, loss = load_epoch()
    fit_arrays(n, d, loss, law="chinchilla")  # warm-up: imports and caches
    cases = [("chinchilla", "vp"), ("chinchilla_gamma", "vp")] + (
        [] if args.no_grid else [("chinchilla_gamma", "grid")]
    )
    for law, method in cases:
        fit, wall, cpu = timed(fit_arrays, n, d, loss, law=law, method=method)
        rows.append(
            dict(
                data="Epoch AI Chinchilla, 240 points",
                fit=f"{law} ({method}, {fit['n_starts']} start(s))",
                objective=fit["objective"],
                params={k: float(v) for k, v in fit["params"].items()},
                converged=bool(fit["converged"]),
                wall_s=wall,
                cpu_s=cpu,
            )
        )
        print(rows[-1], flush=True)
    for form in ("full", "reduced"):
        sn, sd, slt, sloss = synthetic_students(form)
        fit, wall, cpu = timed(fit_distillation_arrays, sn, sd, slt, sloss, SUP, form)
        rows.append(
            dict(
                data="32 synthetic students",
                fit=f"distillation law, {form} form",
                objective=fit["objective"],
                params={k: float(v) for k, v in fit["params"].items()},
                true_params=TRUE[form],
                converged=bool(fit["converged"]),
                wall_s=wall,
                cpu_s=cpu,
            )
        )
        print(rows[-1], flush=True)
    if args.bootstrap:
        sn, sd, slt, sloss = synthetic_students("full")
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "kd.csv"
            with open(table, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["student_params", "student_tokens", "teacher_loss", "loss"])
                w.writerows(zip(sn, sd, slt, sloss))
            points = load_distill_runs([table])
        fit, wall, cpu = timed(fit_distillation, points, SUP, "full", n_bootstrap=args.bootstrap)
        boot = fit["bootstrap"]
        rows.append(
            dict(
                data="32 synthetic students",
                fit=f"distillation law, full form + {args.bootstrap}-refit bootstrap",
                objective=fit["objective"],
                params={k: float(v) for k, v in fit["params"].items()},
                converged=bool(fit["converged"]),
                wall_s=wall,
                cpu_s=cpu,
                bootstrap={k: boot[k] for k in boot if k not in ("samples", "at_bound", "param_names")}
                | {"n_at_bound": int(sum(boot["at_bound"]))},
            )
        )
        print({k: v for k, v in rows[-1].items() if k != "params"}, flush=True)
    load_after = os.getloadavg()

    table = [
        "| data | fit | objective (summed Huber) | key parameters | wall s | CPU s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        keys = [k for k in ("E", "gamma", "alpha", "beta", "c0", "c1", "d1", "k") if k in r["params"]]
        extra = ""
        if "bootstrap" in r:
            b = r["bootstrap"]
            extra = f"; {b['n_converged']} of {b['n']} refits converged, {b['n_at_bound']} at a bound"
        table.append(
            f"| {r['data']} | {r['fit']} | {r['objective']:.11f} | "
            + ", ".join(f"{k} = {r['params'][k]:.4g}" for k in keys)
            + extra
            + f" | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    table.append(
        f"\nLoad average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {cores} CPUs; "
        "BLAS on one thread."
    )
    text = "\n".join(table)
    print(text)
    meta = argparse.Namespace(**vars(args), load_before=load_before, load_after=load_after, cores=cores)
    write_results("distill_law", meta, rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
