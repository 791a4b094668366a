"""Benchmark: predicting the largest runs of public scaling ladders, `--law auto` against Chinchilla.

Each data set is split by model size: every law is fitted to the smaller models only and predicts
the losses of the largest ones, which it never saw. Compared side by side, on the same data and the
same objective (summed Huber, delta 1e-3, on log-loss):

- `gadre`, `chinchilla`, `chinchilla_gamma`, `kaplan`: one fixed form each (`gadre` is Gadre et
  al.'s L(C, M) = E + (a M^eta + b M^-eta) C^-eta, i.e. Chinchilla with alpha = beta);
- `auto`: `scaling.autolaw.select_law` chooses among them by leave-the-largest-models-out
  validation *inside the smaller models*, with gadre (Chinchilla restricted) as the baseline, and
  gives an extrapolation band (see `scaling/autolaw.py`);
- for the record, the same selection with Chinchilla as the baseline (the rule before gadre
  existed, given gadre as a candidate), with gadre as the baseline but every law challenging it
  and the lowest validation mean winning (`auto_not_stepwise`), and the rule before that (held out by compute, a lower mean
  on every fold, among the three older forms), with each form's mean signed validation error
  (`validation_bias_pct`) next to its signed error on the predicted runs (`test_bias_pct`).

A diagnosis of the Gadre ladders (`diagnosis` in the JSON, the third table): each held-out run's
error by size and token multiplier; the residuals of the fitted runs by multiplier; refits
without the over-trained (16x) runs, without the smallest size, and on the 1x and smaller runs
only (still scored on the held-out runs only); and, as a diagnosis of the form that *uses* the
held-out runs and is no prediction, each form fitted to every run, with its residuals on the
largest ones.

A second table repeats the Gadre et al. ladders with N counted without the embeddings (derived
from each run's width and depth; `open_lm_params` reproduces every total count in the CSVs
exactly), the count `scaling` uses for run directories and Kaplan et al. recommend.

Data (committed, with provenance, under `benchmarks/data/scaling/` and `tests/fixtures/scaling/`):

- `overtraining_{c4,rpj,rw}.csv`: Gadre et al. 2024, "Language models scale reliably with
  over-training" (github.com/mlfoundations/scaling, `exp_data/models/*.json`): loss on their C4
  validation set of models trained on C4, RedPajama and RefinedWeb; sizes 11M-411M at 0.5-16x the
  Chinchilla token count are fitted, the 1.4B and 6.9B runs are predicted.
- `chinchilla_epoch_svg_extracted.csv`: Epoch AI's extraction of Chinchilla's Figure 4 (240 points
  after dropping the 5 highest losses); models above 5e9 parameters are predicted.

Run from the repository root:

    .venv/bin/python benchmarks/bench_scaling_extrapolation.py

Writes `benchmarks/results/bench_scaling_extrapolation.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "scaling"
EPOCH = ROOT / "tests" / "fixtures" / "scaling" / "chinchilla_epoch_svg_extracted.csv"
LAWS = ("gadre", "chinchilla", "chinchilla_gamma", "kaplan")
OLD_LAWS = ("chinchilla", "chinchilla_gamma", "kaplan")  # the candidates of the compute-fold rule


VOCAB = 50432  # open_lm's padded GPT-NeoX vocabulary; with ARCH it reproduces every total count exactly
ARCH = {"open_lm_1b": (2048, 24), "open_lm_7b": (4096, 32)}  # (width, layers) of the named models


def open_lm_params(run):
    """`(total, non_embedding)` parameters of an open_lm run from its name: width d and layers l
    (`d=96_l=8` in the name, or `ARCH`); SwiGLU hidden 256 * ceil(8d / 3 / 256), RMS norm weights,
    untied input and output embeddings of `VOCAB` x d."""
    import re

    m = re.search(r"d=(\d+)_l=(\d+)", run)
    d, layers = (int(m.group(1)), int(m.group(2))) if m else ARCH[re.search(r"open_lm_\d+b", run).group(0)]
    hidden = 256 * ((int(8 * d / 3) + 255) // 256)
    non_embedding = layers * (4 * d * d + 3 * d * hidden + 2 * d) + d
    return non_embedding + 2 * VOCAB * d, non_embedding


def overtraining(name, non_embedding=False):
    rows = list(csv.DictReader((DATA / f"overtraining_{name}.csv").open()))
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss")}
    runs = [r["run"] for r in rows]
    if non_embedding:  # Kaplan et al.'s count; the smallest models here are 92 % embedding
        counts = np.array([open_lm_params(r) for r in runs], dtype=float)
        if not np.array_equal(counts[:, 0], cols["params"]):
            raise ValueError(f"overtraining_{name}.csv: the architecture does not reproduce the total counts")
        small = cols["params"] < 1e9  # the same split as with total counts
        return counts[:, 1], cols["tokens"], cols["loss"], runs, counts[~small, 1].min()
    return cols["params"], cols["tokens"], cols["loss"], runs, 1e9


def epoch():
    from scaling.logs import read_table, to_arrays

    a = to_arrays(read_table(EPOCH, 'params="Model Size",flops="Training FLOP"'))
    keep = np.argsort(a["loss"])[:-5]
    runs = [f"N={n:.3g} D={d:.3g}" for n, d in zip(a["params"][keep], a["tokens"][keep])]
    return a["params"][keep], a["tokens"][keep], a["loss"][keep], runs, 5e9


DATASETS = {
    "overtraining C4 (Gadre et al. 2024)": lambda: overtraining("c4"),
    "overtraining RedPajama (Gadre et al. 2024)": lambda: overtraining("rpj"),
    "overtraining RefinedWeb (Gadre et al. 2024)": lambda: overtraining("rw"),
    "Chinchilla, Epoch AI extraction": epoch,
}
# the Gadre ladders again, with N = non-embedding parameters (the count `scaling` uses for run
# directories); a variant, kept out of the main table's mean
NON_EMBEDDING = {
    "overtraining C4, non-embedding N": lambda: overtraining("c4", non_embedding=True),
    "overtraining RedPajama, non-embedding N": lambda: overtraining("rpj", non_embedding=True),
    "overtraining RefinedWeb, non-embedding N": lambda: overtraining("rw", non_embedding=True),
}
DIAGNOSE = {k for k in (*DATASETS, *NON_EMBEDDING) if k.startswith("overtraining")}


def run_dataset(name, loader):
    from scaling.autolaw import extrapolation_band, select_law
    from scaling.fit import fit_arrays
    from scaling.laws import get_law

    n, d, loss, runs, split = loader()
    small, large = n < split, n >= split
    out = {"n_fit": int(small.sum()), "n_predicted": int(large.sum()), "split_params": split, "laws": {}}
    fits = {}
    for law in LAWS:
        t0 = time.perf_counter()
        res = fit_arrays(n[small], d[small], loss[small], law)
        pred = get_law(law).predict(res["params"], n[large], d[large])
        err = 100.0 * (pred / loss[large] - 1.0)
        fits[law] = res["params"]
        out["laws"][law] = {
            "mape": float(np.mean(np.abs(err))),
            "max_abs_pct": float(np.max(np.abs(err))),
            "errors_pct": [float(e) for e in err],
            "seconds": time.perf_counter() - t0,
        }
    t0 = time.perf_counter()
    sel = select_law(n[small], d[small], loss[small])
    chosen = sel["chosen"]
    seconds = time.perf_counter() - t0
    # the rule before gadre existed: Chinchilla as the baseline (given gadre as a candidate too)
    chin_base = select_law(n[small], d[small], loss[small], baselines=("chinchilla",))
    # gadre as the baseline, but every law challenging the baseline (not stepwise), lowest mean wins
    flat = select_law(n[small], d[small], loss[small], stepwise=False)
    # the rule before that (held out by compute, a lower mean on every fold), for the record
    old = select_law(n[small], d[small], loss[small], candidates=OLD_LAWS, folds="compute")
    old_chosen = _old_rule(old["scores"])
    bands = [
        extrapolation_band(sel, {k: fits[k] for k in {chosen, *sel["close"]}}, a, b)
        for a, b in zip(n[large], d[large])
    ]
    covered = [bool(b["band"][0] <= y <= b["band"][1]) for b, y in zip(bands, loss[large])]
    out["auto"] = {
        **out["laws"][chosen],
        "chosen": chosen,
        "fold_kind": sel["fold_kind"],
        "folds": sel["folds"],
        "validation_mape": {k: (v["mape"] if v else None) for k, v in sel["scores"].items()},
        "validation_errors_pct": {k: (v["fold_errors_pct"] if v else None) for k, v in sel["scores"].items()},
        "comparisons": sel["comparisons"],
        "band_pct": sel["band_pct"],
        "band_half_width_pct": [100.0 * (b["band"][1] - b["band"][0]) / 2.0 / b["loss"] for b in bands],
        "coverage": float(np.mean(covered)),
        "points": [
            {"run": r, "loss": float(y), "predicted": b["loss"], "band": b["band"], "covered": c}
            for r, y, b, c in zip(np.asarray(runs, dtype=object)[large], loss[large], bands, covered)
        ],
        "seconds_selection": seconds,
    }
    out["auto_chinchilla_baseline"] = {
        "rule": "the same folds and test, Chinchilla as the baseline (the rule before gadre was added)",
        "chosen": chin_base["chosen"],
        "mape": out["laws"][chin_base["chosen"]]["mape"],
        "comparisons": chin_base["comparisons"],
    }
    out["auto_not_stepwise"] = {
        "rule": "gadre as the baseline, every law against it, the lowest validation mean among the winners",
        "chosen": flat["chosen"],
        "mape": out["laws"][flat["chosen"]]["mape"],
        "comparisons": flat["comparisons"],
    }
    out["auto_compute_folds"] = {
        "rule": "held out by compute (top 20 % and 35 %) among chinchilla, chinchilla_gamma and kaplan; a "
        "larger law if its mean is lower by > 0.1 points and lower on every fold (the rule before those)",
        "chosen": old_chosen,
        "mape": out["laws"][old_chosen]["mape"],
        "validation_mape": {k: (v["mape"] if v else None) for k, v in old["scores"].items()},
        "validation_bias_pct": {
            k: (float(np.mean(v["errors_pct"])) if v else None) for k, v in old["scores"].items()
        },
    }
    out["auto"]["validation_bias_pct"] = {
        k: (float(np.mean(v["errors_pct"])) if v else None) for k, v in sel["scores"].items()
    }
    out["test_bias_pct"] = {k: float(np.mean(v["errors_pct"])) for k, v in out["laws"].items()}
    if name in DIAGNOSE:
        out["diagnosis"] = diagnose(n, d, loss, runs, small, large)
    return out


def multiplier(run):
    """Gadre et al.'s token multiplier of a run (its name ends in it): 1 is 20 tokens per parameter."""
    return float(run.rsplit("-", 1)[1])


def diagnose(n, d, loss, runs, small, large, laws=("gadre", "chinchilla")):
    """Why the largest runs are missed: errors by size and multiplier, residuals of the fitted runs by
    multiplier, refits on subsets of the fitted runs (scored on the held-out runs), and an in-sample
    fit of every run (uses the held-out runs: a diagnosis of the form, not a prediction)."""
    from scaling.fit import fit_arrays
    from scaling.laws import get_law

    mult = np.array([multiplier(r) for r in runs])
    subsets = {
        "fitted runs (as above)": small,
        "without the 16x over-trained runs": small & (mult < 16),
        "without the smallest size": small & (n > n.min()),
        "1x and 0.5x runs only": small & (mult <= 1),
    }
    out = {"held_out": [], "fitted_residuals_by_multiplier_pct": {}, "refits": {}, "in_sample_all_runs": {}}
    errors = {}
    for law in laws:
        lw = get_law(law)
        for label, mask in subsets.items():
            res = fit_arrays(n[mask], d[mask], loss[mask], law)
            err = 100.0 * (lw.predict(res["params"], n, d) / loss - 1.0)
            if label == "fitted runs (as above)":
                errors[law] = err
                out["fitted_residuals_by_multiplier_pct"][law] = {
                    f"{m:g}x": float(np.mean(err[small & (mult == m)])) for m in np.unique(mult[small])
                }
            out["refits"].setdefault(label, {})[law] = {
                "n_fit": int(mask.sum()),
                "E": res["params"]["E"],
                "mape": float(np.mean(np.abs(err[large]))),
                "errors_pct": [float(e) for e in err[large]],
            }
        res = fit_arrays(n, d, loss, law)
        err = 100.0 * (lw.predict(res["params"], n, d) / loss - 1.0)
        out["in_sample_all_runs"][law] = {
            "residuals_pct": [float(e) for e in err[large]],
            "fitted_rms_pct": float(np.sqrt(np.mean(err[small] ** 2))),
        }
    for i in np.flatnonzero(large):
        out["held_out"].append(
            {
                "run": runs[i],
                "params": float(n[i]),
                "multiplier": float(mult[i]),
                "tokens_per_param": float(d[i] / n[i]),
                "errors_pct": {law: float(errors[law][i]) for law in laws},
            }
        )
    return out


def _old_rule(scores):
    """The earlier choice: the fewest parameters, unless a larger law's mean is lower by more than
    0.1 points and lower on every fold."""
    ok = {k: v for k, v in scores.items() if v is not None}
    order = sorted(ok, key=lambda k: (ok[k]["n_params"], ok[k]["mape"]))
    chosen = order[0]
    for law in order[1:]:
        a, b = ok[law], ok[chosen]
        if a["mape"] < b["mape"] - 0.1 and all(x < y for x, y in zip(a["fold_mape"], b["fold_mape"])):
            chosen = law
    return chosen


def markdown(results):
    lines = [
        "| data set | fitted / predicted runs | gadre MAPE | chinchilla | chinchilla_gamma | kaplan | auto (chosen) | "
        "auto band (floor; mean at the targets) | band covers | Chinchilla baseline (chosen) | "
        "not stepwise (chosen) | before: compute folds (chosen) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|---|---|",
    ]
    for name, r in results.items():
        a, cb, flat = r["auto"], r["auto_chinchilla_baseline"], r["auto_not_stepwise"]
        lines.append(
            f"| {name} | {r['n_fit']} / {r['n_predicted']} | "
            + " | ".join(f"{r['laws'][k]['mape']:.2f}%" for k in LAWS)
            + f" | {a['mape']:.2f}% ({a['chosen']}) | +-{a['band_pct']:.2f}%; +-{np.mean(a['band_half_width_pct']):.2f}% | "
            f"{sum(p['covered'] for p in a['points'])}/{len(a['points'])} | {cb['mape']:.2f}% ({cb['chosen']}) | "
            f"{flat['mape']:.2f}% ({flat['chosen']}) | "
            f"{r['auto_compute_folds']['mape']:.2f}% ({r['auto_compute_folds']['chosen']}) |"
        )
    mean = {k: np.mean([r["laws"][k]["mape"] for r in results.values()]) for k in LAWS}
    auto = np.mean([r["auto"]["mape"] for r in results.values()])
    chin_base = np.mean([r["auto_chinchilla_baseline"]["mape"] for r in results.values()])
    flat = np.mean([r["auto_not_stepwise"]["mape"] for r in results.values()])
    before = np.mean([r["auto_compute_folds"]["mape"] for r in results.values()])
    cov = [p["covered"] for r in results.values() for p in r["auto"]["points"]]
    lines.append(
        "| **mean** | | "
        + " | ".join(f"{mean[k]:.2f}%" for k in LAWS)
        + f" | {auto:.2f}% | | {sum(cov)}/{len(cov)} | {chin_base:.2f}% | {flat:.2f}% | {before:.2f}% |"
    )
    return "\n".join(lines)


def diagnosis_markdown(results):
    """Held-out errors by run, and the refits, of the Gadre ladders (gadre / chinchilla)."""
    lines = [
        "| data set | held-out run | tokens / param | gadre error | chinchilla error | "
        "in-sample fit of all runs: gadre / chinchilla residual |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        dg = r.get("diagnosis")
        if not dg:
            continue
        ins = dg["in_sample_all_runs"]
        for j, h in enumerate(dg["held_out"]):
            lines.append(
                f"| {name} | {h['params'] / 1e9:.2f}B, {h['multiplier']:g}x | {h['tokens_per_param']:.0f} | "
                f"{h['errors_pct']['gadre']:+.2f}% | {h['errors_pct']['chinchilla']:+.2f}% | "
                f"{ins['gadre']['residuals_pct'][j]:+.2f}% / {ins['chinchilla']['residuals_pct'][j]:+.2f}% |"
            )
    labels = list(next(r["diagnosis"] for r in results.values() if r.get("diagnosis"))["refits"])
    lines += [
        "",
        "Refits on subsets of the fitted runs, held-out MAPE (fitted E), gadre / chinchilla:",
        "",
        "| data set | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, r in results.items():
        dg = r.get("diagnosis")
        if not dg:
            continue
        cells = []
        for label in labels:
            g, c = dg["refits"][label]["gadre"], dg["refits"][label]["chinchilla"]
            cells.append(f"{g['mape']:.2f}% ({g['E']:.2f}) / {c['mape']:.2f}% ({c['E']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    from scaling.optimize import single_thread_blas

    t0 = time.perf_counter()
    with single_thread_blas():
        results = {name: run_dataset(name, loader) for name, loader in DATASETS.items()}
        variant = {name: run_dataset(name, loader) for name, loader in NON_EMBEDDING.items()}
    table = (
        markdown(results)
        + "\n\nThe Gadre et al. ladders with N = non-embedding parameters:\n\n"
        + markdown(variant)
        + "\n\nDiagnosis of the Gadre et al. ladders (fitted below 1B parameters):\n\n"
        + diagnosis_markdown({**results, **variant})
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _measure import provenance

    doc = {
        "provenance": provenance(),
        "benchmark": "bench_scaling_extrapolation",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": time.perf_counter() - t0,
        "results": results,
        "results_non_embedding": variant,
        "markdown": table,
    }
    (out / "bench_scaling_extrapolation.json").write_text(json.dumps(doc, indent=1))
    (out / "bench_scaling_extrapolation.md").write_text(table + "\n")
    print(table)
    return doc


if __name__ == "__main__":
    main()
