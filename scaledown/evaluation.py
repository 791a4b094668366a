"""Evaluation of teacher, distilled students and baselines on the held-out test split.

Test loss and perplexity come from each run's own `all_results.json` (token-weighted student
cross-entropy on the test split, written by `distill train`). Throughput is measured here, side
by side: the same batch, the same process, the models interleaved round by round, so that a
noisy machine slows all of them alike.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "all_results.json")) as f:
        return json.load(f)


def disk_bytes(run_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir) if f.endswith(".safetensors"))


def model_row(run_dir: str) -> dict:
    r = _results(run_dir)
    loss = r.get("test_loss", r.get("eval_loss"))
    return {"dir": run_dir, "params": r["student_params"], "non_embedding_params": r.get("student_non_embedding_params"),
            "test_loss": loss, "perplexity": math.exp(loss), "eval_loss": r.get("eval_loss"),
            "disk_bytes": disk_bytes(run_dir)}


def throughput(run_dirs: dict[str, str], input_ids, rounds: int = 5) -> dict[str, float]:
    """Forward tokens per second of each model on the same batch, measured in interleaved rounds."""
    import torch
    from transformers import AutoModelForCausalLM

    models = {name: AutoModelForCausalLM.from_pretrained(d, use_safetensors=True).eval() for name, d in run_dirs.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(input_ids=input_ids)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(input_ids=input_ids)
                times[name].append(time.perf_counter() - start)
    return {name: input_ids.numel() / statistics.median(t) for name, t in times.items()}


def _test_batch(pipeline, batch_size: int = 8):
    import torch
    from transformers import AutoTokenizer

    from distill.data import DataArguments, build_datasets

    data = {**pipeline.config.data, "packing": True, "max_test_samples": batch_size}
    tokenizer = AutoTokenizer.from_pretrained(pipeline.tokenizer_dir)
    bundle = build_datasets(DataArguments(**data), "causal-lm", tokenizer, seed=pipeline.config.seed)
    split = bundle.test if bundle.test is not None else bundle.eval
    rows = [split[i]["input_ids"] for i in range(min(batch_size, len(split)))]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows], dtype=torch.long)


def _mean_row(rows: list[dict]) -> dict:
    out = dict(rows[0])
    for key in ("test_loss", "eval_loss", "perplexity"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = statistics.fmean(values)
    losses = [r["test_loss"] for r in rows]
    out["seeds"] = [{"dir": r["dir"], "test_loss": r["test_loss"]} for r in rows]
    out["spread"] = max(losses) - min(losses)
    return out


def evaluate_models(pipeline, teacher: dict, kd: dict, base: dict) -> dict:
    """Rows for teacher, KD student and baseline student, plus the derived figures."""
    teacher_row = model_row(teacher["dir"])
    kd_row = _mean_row([model_row(r["dir"]) for r in kd["runs"]])
    base_row = _mean_row([model_row(r["dir"]) for r in base["runs"]])
    batch = _test_batch(pipeline)
    speed = throughput({"teacher": teacher["dir"], "student": kd["runs"][0]["dir"], "baseline": base["runs"][0]["dir"]},
                       batch)
    for name, row in (("teacher", teacher_row), ("student", kd_row), ("baseline", base_row)):
        row["tokens_per_second"] = speed[name]
    gap = base_row["test_loss"] - teacher_row["test_loss"]
    gain = (base_row["test_loss"] - kd_row["test_loss"]) / gap if gap > 0 else float("nan")
    derived = {
        "kd_gain": gain,
        "kd_improvement": base_row["test_loss"] - kd_row["test_loss"],
        "seed_spread": max(kd_row["spread"], base_row["spread"]),
        "retention": teacher_row["test_loss"] / kd_row["test_loss"],
        "perplexity_retention": teacher_row["perplexity"] / kd_row["perplexity"],
        "compression": teacher_row["params"] / kd_row["params"],
        "speedup": kd_row["tokens_per_second"] / teacher_row["tokens_per_second"],
        "throughput_batch": list(batch.shape),
    }
    return {"teacher": teacher_row, "student": kd_row, "baseline": base_row, **derived}
