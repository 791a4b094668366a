"""Benchmark: refit the distillation law (Busbridge et al. 2025, Eq. 8) at the paper's scales, and
profile which of its coefficients such data pin down.

Students are generated from Eq. 8 with the published c1 = 522.6 and the paper's supervised law
(the constants of `tests/test_scaling_distill_published.py`; the other distillation coefficients
there are stand-ins in the same regime). Students of 143M-7.75B parameters at 20-500 tokens per
parameter, teachers of 198M-12.6B trained at 20 tokens per parameter (their loss from the
supervised law). Measured:

- the noiseless refit: MAPE on all students and the recovered coefficients;
- with 1 % log-normal noise, for several seeds: fit on students up to 3.3B (teachers larger than
  their student; students that noise pushes below their teacher are left out), predict the 7.75B
  students, MAPE against the law's noiseless value;
- the profile of every coefficient for one noisy fit (`scaling.distill_profile`).

Run from the repository root:

    .venv/bin/python benchmarks/bench_scaling_distill_refit.py            # a few minutes
    .venv/bin/python benchmarks/bench_scaling_distill_refit.py --no-profile

Writes `benchmarks/results/bench_scaling_distill_refit.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from test_scaling_distill_published import PUBLISHED_C1, SUP, paper_scale_students

    from scaling.distill_law import DistillationForm, _features, fit_distillation_arrays, supervised_terms
    from scaling.distill_profile import profile_distillation

    full = DistillationForm("full")
    n, d, nt, lt, clean = paper_scale_students()
    t0 = time.perf_counter()
    fit = fit_distillation_arrays(n, d, lt, clean, SUP, "full")
    x = _features(n, d, lt, supervised_terms(SUP, n, d))
    noiseless = {
        "n_students": int(n.size),
        "mape_pct": float(100 * np.mean(np.abs(full.predict(fit["params"], x) / clean - 1))),
        "params": fit["params"],
        "true": PUBLISHED_C1,
        "at_bounds": fit["at_bounds"],
        "seconds": time.perf_counter() - t0,
    }
    train = (nt > n) & (n <= 3.3e9)
    test = (nt > n) & (n > 3.3e9)
    xt = _features(n[test], d[test], lt[test], supervised_terms(SUP, n[test], d[test]))
    noisy, last = [], None
    for seed in [int(s) for s in args.seeds.split(",")]:
        y = clean * np.exp(np.random.default_rng(seed).normal(0.0, 0.01, n.size))
        keep = train & (y > lt)
        t0 = time.perf_counter()
        f = fit_distillation_arrays(n[keep], d[keep], lt[keep], y[keep], SUP, "full")
        err = 100 * (full.predict(f["params"], xt) / clean[test] - 1)
        noisy.append(
            {
                "seed": seed,
                "n_fit": int(keep.sum()),
                "n_below_teacher_dropped": int((train & ~(y > lt)).sum()),
                "n_predicted": int(test.sum()),
                "heldout_mape_pct": float(np.mean(np.abs(err))),
                "heldout_max_abs_pct": float(np.max(np.abs(err))),
                "params": f["params"],
                "at_bounds": f["at_bounds"],
                "seconds": time.perf_counter() - t0,
            }
        )
        last = (keep, y, f)
    profile = None
    if not args.no_profile:
        keep, y, f = last
        t0 = time.perf_counter()
        profile = profile_distillation(n[keep], d[keep], lt[keep], y[keep], SUP, f)
        profile["seed"] = noisy[-1]["seed"]
        profile["seconds"] = time.perf_counter() - t0
    lines = [
        f"noiseless refit of {noiseless['n_students']} students: MAPE {noiseless['mape_pct']:.2e} %, "
        f"c1 = {noiseless['params']['c1']:.2f} (true 522.6), {noiseless['seconds']:.1f} s",
        "",
        "| seed | students fitted | dropped (L_S <= L_T) | 7.75B students predicted | held-out MAPE | max | c1 | at bounds |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in noisy:
        lines.append(
            f"| {r['seed']} | {r['n_fit']} | {r['n_below_teacher_dropped']} | {r['n_predicted']} | "
            f"{r['heldout_mape_pct']:.3f}% | {r['heldout_max_abs_pct']:.3f}% | {r['params']['c1']:.4g} | "
            f"{', '.join(r['at_bounds']) or '-'} |"
        )
    if profile:
        lines += [
            "",
            f"profile (seed {profile['seed']}, {profile['seconds']:.0f} s): statistic {profile['statistic']}, "
            f"threshold {profile['threshold']}",
            "",
            "| coefficient | true | estimate | profile interval | pinned down |",
            "|---|---:|---:|---|---|",
        ]
        for k, p in profile["params"].items():
            iv = ", ".join("open" if v is None else f"{v:.4g}" for v in p["interval"])
            lines.append(
                f"| {k} | {PUBLISHED_C1[k]:.4g} | {p['estimate']:.4g} | [{iv}] | "
                f"{'yes' if p['identified'] else 'no'} |"
            )
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _measure import provenance

    doc = {
        "provenance": provenance(),
        "benchmark": "bench_scaling_distill_refit",
        "python": platform.python_version(),
        "noiseless": noiseless,
        "noisy": noisy,
        "profile": profile,
        "markdown": table,
    }
    (out / "bench_scaling_distill_refit.json").write_text(json.dumps(doc, indent=1))
    (out / "bench_scaling_distill_refit.md").write_text(table + "\n")
    print(table)
    return doc


if __name__ == "__main__":
    main()
