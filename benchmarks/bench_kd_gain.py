"""Does distillation pay? KD student vs same-size baseline across seeds, from one pipeline run.

Runs (or reuses) `scaledown run --config recipes/pipeline/demo.yaml` and tabulates the test loss
of every seed of the KD student and of the baseline, the teacher, the KD gain, the seed spread
and the held-out scaling prediction. Writes benchmarks/results/kd_gain.{json,md}.

    python benchmarks/bench_kd_gain.py [--config recipes/pipeline/demo.yaml] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=os.path.join(HERE, "..", "recipes", "pipeline", "demo.yaml"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-root", default="runs")
    args = parser.parse_args()
    from scaledown.config import load_pipeline_config
    from scaledown.pipeline import Pipeline

    config = load_pipeline_config(args.config, quick=args.quick, overrides={"output_root": args.output_root})
    summary = Pipeline(config).run()
    rows = [("teacher", 0, summary["teacher"]["test_loss"])]
    rows += [
        ("KD student", s["dir"].rsplit("seed", 1)[-1], s["test_loss"]) for s in summary["student"]["seeds"]
    ]
    rows += [
        ("baseline", s["dir"].rsplit("seed", 1)[-1], s["test_loss"]) for s in summary["baseline"]["seeds"]
    ]
    h = summary["holdout_prediction"] or {}
    result = {
        "rows": [{"model": m, "seed": int(s), "test_loss": loss} for m, s, loss in rows],
        "kd_improvement": summary["kd_improvement"],
        "seed_spread": summary["seed_spread"],
        "kd_gain": summary["kd_gain"],
        "holdout_error_pct": h.get("error_pct"),
        "seconds": summary["seconds"],
    }
    md = ["| model | seed | test loss |", "|---|---|---|"] + [
        f"| {m} | {s} | {loss:.4f} |" for m, s, loss in rows
    ]
    md += [
        "",
        f"KD improvement over baseline (mean of seeds): {result['kd_improvement']:.4f}; largest seed spread: "
        f"{result['seed_spread']:.4f}; KD gain: {100 * result['kd_gain']:.1f}% of the baseline-to-teacher gap.",
        f"Held-out rung predicted within {h.get('error_pct', float('nan')):+.2f}%.",
    ]
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    from _measure import provenance

    with open(os.path.join(out, "kd_gain.json"), "w") as f:
        json.dump({"provenance": provenance(), **result}, f, indent=2)
    with open(os.path.join(out, "kd_gain.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
