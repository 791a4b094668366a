"""Does data-augmentation distillation help with few labels? Baseline vs plain KD vs augmentation KD.

For each offline task (sklearn digits, image-cls; docstring topics, seq-cls) a teacher is trained on the
whole training split with the tiny teacher recipe; then the tiny student recipe is trained on a small
labelled subset (a random ``--label-fraction`` of the training split, the same for every run) three ways,
over several seeds:

* ``baseline``: labels only (alpha = 0, no teacher);
* ``kd``: the recipe's KD (alpha, temperature);
* ``aug-kd``: the same plus ``augment_fraction`` of each batch augmented on the fly (digits: resized
  crop to 0.6-1 of the area + mixup; docstrings: token replacement + token dropout at 10%), KD alone on
  augmented examples;
* ``aug-kd-mild``: milder augmentation (digits: resized crop to 0.85-1 only; docstrings: 5% token replacement).

The seeds of one method share everything but ``seed`` (initialisation, order, augmentation). Writes
``benchmarks/results/augment_kd.{json,md}``: test accuracy mean and spread (max - min over seeds), with
the load average (the machine is shared; accuracies do not depend on it, timings would).

    python benchmarks/bench_augment_kd.py [--quick] [--seeds 0 1 2] [--label-fraction 0.15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from _measure import write_results  # noqa: E402

TASKS = {
    "digits": dict(
        prefix="image_cls",
        augment={
            "aug-kd": ["--augmentations", "resized_crop", "mixup", "--augment_crop_scale", "0.6"],
            "aug-kd-mild": ["--augmentations", "resized_crop", "--augment_crop_scale", "0.85"],
        },
    ),
    "docstring-topics": dict(
        prefix="seq_cls",
        augment={
            "aug-kd": ["--augmentations", "token_replace", "token_drop", "--augment_token_prob", "0.1"],
            "aug-kd-mild": ["--augmentations", "token_replace", "--augment_token_prob", "0.05"],
        },
    ),
}
METHODS = ("baseline", "kd", "aug-kd", "aug-kd-mild")


def recipe(name: str) -> str:
    return os.path.join(ROOT, "recipes", "tiny", f"{name}.yaml")


def run(argv: list[str]) -> dict:
    from distill.train import main

    return main(argv)


def labelled_subset(prefix: str, fraction: float, out: str) -> tuple[str, int]:
    """A random ``fraction`` of the built-in training split (validation and test whole), saved with
    `save_to_disk`; returns its directory and size. (`max_train_samples` would take the *first* examples,
    and docstring-topics is sorted by document id, so those would be one class.)"""
    from distill.data import DataArguments, load_raw_datasets

    task = "image-cls" if prefix == "image_cls" else "seq-cls"
    source = "builtin:digits" if task == "image-cls" else "builtin:docstring-topics"
    raw = load_raw_datasets(
        DataArguments(dataset_name=source, image_size=16 if task == "image-cls" else None), task=task
    )
    n = max(1, int(round(fraction * len(raw["train"]))))
    raw["train"] = raw["train"].shuffle(seed=0).select(range(n))
    path = os.path.join(out, f"{prefix}_labelled_{fraction:g}")
    raw.save_to_disk(path)
    return path, n


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label-fraction", type=float, default=0.15)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--augment-fraction", type=float, default=0.5)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_augment_kd"))
    parser.add_argument("--quick", action="store_true", help="2 seeds, 30 student and 60 teacher steps")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.student_steps, args.teacher_steps = args.seeds[:2], 30, 60
    import torch

    torch.set_num_threads(1)  # a shared machine
    common = [
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "50",
        "--report_to",
        "none",
        "--eval_strategy",
        "no",
    ]
    rows = []
    for name in args.tasks:
        spec = TASKS[name]
        prefix = spec["prefix"]
        teacher = os.path.join(args.out, f"{prefix}_teacher")
        if not os.path.isfile(os.path.join(teacher, "all_results.json")):
            run(
                [
                    "--config",
                    recipe(f"{prefix}_teacher"),
                    "--output_dir",
                    teacher,
                    "--max_steps",
                    str(args.teacher_steps),
                    *common,
                ]
            )
        with open(os.path.join(teacher, "all_results.json")) as f:
            teacher_acc = json.load(f).get("test_accuracy")
        labelled, n_labels = labelled_subset(prefix, args.label_fraction, args.out)
        tok = ["--tokenizer_name_or_path", teacher] if prefix == "seq_cls" else []
        for seed in args.seeds:
            for method in METHODS:
                out = os.path.join(args.out, f"{prefix}_{method}_seed{seed}")
                extra = (
                    ["--alpha", "0", "--teacher_model_name_or_path", ""]
                    if method == "baseline"
                    else ["--teacher_model_name_or_path", teacher]
                )
                if method.startswith("aug-kd"):
                    extra += ["--augment_fraction", str(args.augment_fraction), *spec["augment"][method]]
                start, load = time.time(), os.getloadavg()[0]
                results = run(
                    [
                        "--config",
                        recipe(prefix),
                        "--output_dir",
                        out,
                        "--max_steps",
                        str(args.student_steps),
                        "--dataset_name",
                        labelled,
                        "--seed",
                        str(seed),
                        "--overwrite_output_dir",
                        "true",
                        *tok,
                        *common,
                        *extra,
                    ]
                )
                rows.append(
                    dict(
                        task=name,
                        method=method,
                        seed=seed,
                        labels=n_labels,
                        teacher_accuracy=teacher_acc,
                        test_accuracy=results["test_accuracy"],
                        test_loss=results["test_loss"],
                        seconds=round(time.time() - start, 1),
                        loadavg=round(load, 2),
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    table = summarize(rows, args)
    write_results("augment_kd", args, rows, table)
    print(table)
    return 0


def summarize(rows: list[dict], args) -> str:
    lines = [
        f"Test accuracy, student trained on a random {args.label_fraction:.0%} of the training split "
        f"({args.student_steps} steps, seeds {args.seeds}): mean over seeds (min-max).",
        "",
        "| task | labelled examples | teacher | baseline | KD | augmentation KD | mild augmentation KD |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for method in METHODS:
            accs = [r["test_accuracy"] for r in rows if r["task"] == task and r["method"] == method]
            cells.append(f"{statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f})" if accs else "-")
        first = next(r for r in rows if r["task"] == task)
        teacher = first["teacher_accuracy"]
        lines.append(f"| {task} | {first['labels']} | {teacher:.3f} | " + " | ".join(cells) + " |")
    loads = [r["loadavg"] for r in rows]
    lines += [
        "",
        "Load average during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f} (shared machine; accuracies do not depend on it).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
