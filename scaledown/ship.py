"""The pipeline's `ship` stage: export, quantise and bench the distilled student beside its teacher.

After evaluation, the KD student (first seed) is exported to ONNX (parity-checked) and quantised
(torchao int8, ONNX Runtime int8); `deploy.bench` then measures teacher, KD student, baseline
student and the three variants on the pipeline's own test data. The table goes into
`summary.json` (`ship`) and `report.md` (a "Shipping" section), with `plots/quality_latency.png`:
quality against batch-1 latency, one point per variant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class ShipConfig:
    """The pipeline's `ship:` block (`scaledown run --ship` turns it on for one run)."""

    enabled: bool = False
    threads: int = 1
    batch_size: int = 16
    latency_samples: int = 20
    rounds: int = 3
    max_eval_samples: int = 64
    # torch.compile of the torchao int8 student: the fast CPU path, but the compile takes a while.
    compile_int8: bool = True


def ship_stage(pipeline, teacher: dict, kd: dict, base: dict) -> dict:
    """Run the stage; returns the bench result plus the files written (paths relative to the run)."""
    from deploy.bench import bench, write_bench
    from deploy.export import export
    from deploy.quantize import quantize

    cfg = pipeline.config.ship
    root = os.path.join(pipeline.root, "ship")
    student = kd["runs"][0]["dir"]
    onnx_dir, onnx_int8, torchao_dir = (
        os.path.join(root, n) for n in ("onnx-fp32", "onnx-int8", "torchao-int8")
    )
    data = dict(pipeline.config.data)
    # The run folder is the pipeline's own: a folder an interrupted step left without its report is replaced.
    if not os.path.isfile(os.path.join(onnx_dir, "export_report.json")):
        export(student, onnx_dir, data=data, overwrite=True)
    if not os.path.isfile(os.path.join(onnx_int8, "quantize_report.json")):
        quantize(onnx_dir, "onnx-int8", onnx_int8, data=data, overwrite=True)
    if not os.path.isfile(os.path.join(torchao_dir, "quantize_report.json")):
        quantize(student, "torchao-int8", torchao_dir, data=data, overwrite=True)
    result = bench(
        [student, base["runs"][0]["dir"], torchao_dir, onnx_dir, onnx_int8],
        teacher=teacher["dir"],
        names=[
            "student pytorch-fp32",
            "baseline pytorch-fp32",
            "student pytorch-int8",
            "student onnx-fp32",
            "student onnx-int8",
        ],
        data=data,
        threads=cfg.threads,
        batch_size=cfg.batch_size,
        latency_samples=cfg.latency_samples,
        rounds=cfg.rounds,
        max_eval_samples=cfg.max_eval_samples,
        compile_int8=cfg.compile_int8,
    )
    bench_json, bench_md = write_bench(result, os.path.join(root, "bench.json"))
    plot = plot_quality_latency(result, os.path.join(pipeline.root, "plots", "quality_latency.png"))
    result["files"] = [os.path.relpath(p, pipeline.root) for p in (bench_json, bench_md, plot)]
    return result


def plot_quality_latency(result: dict, path: str) -> str:
    """Quality (test loss, or accuracy) against batch-1 p50 latency, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    metric = "accuracy" if "accuracy" in rows[0] else "loss"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>ph*"
    for i, row in enumerate(rows):  # a legend, not labels on the points: variants of one model overlap
        ax.plot(
            row["latency_p50_ms"],
            row[metric],
            markers[i % len(markers)],
            ms=8,
            alpha=0.85,
            label=row["variant"],
        )
    ax.legend(fontsize=8, loc="best")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency p50 at batch 1 (ms, {result['settings']['threads']} thread(s))")
    ax.set_ylabel("test accuracy" if metric == "accuracy" else "test loss (cross-entropy)")
    ax.set_title("Quality against latency: teacher, students and quantised variants")
    ax.grid(True, alpha=0.3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_ship_to_report(pipeline, summary: dict, ship: dict) -> dict:
    """Put the ship table into the summary, count the ship stage in the total time, and rewrite
    `summary.json` and `report.md` with both."""
    from .report import write_summary_and_report

    summary["ship"] = {k: ship[k] for k in ("reference", "rows", "settings", "machine", "files")}
    summary["ship"]["served_dirs"] = [
        os.path.relpath(os.path.join(pipeline.root, "ship", n))
        for n in ("onnx-fp32", "onnx-int8", "torchao-int8")
    ]
    summary["stage_seconds"] = dict(pipeline.timings)
    summary["seconds"] = sum(pipeline.timings.values())
    write_summary_and_report(pipeline.root, summary)
    return summary
