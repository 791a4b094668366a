"""Evaluation of teacher, distilled students and baselines on the held-out test split.

Test loss and perplexity come from each run's own `all_results.json` (token-weighted student
cross-entropy on the test split, written by `distill train`). Throughput is measured here, side
by side: the same batch, the same process, the models interleaved round by round in rotating
order after warm-up rounds, so that a noisy machine slows all of them alike; the spread over
rounds is reported with the median, and the speedup is the median of per-round ratios.
Whether the KD improvement stands out of the seed noise is `scaledown.significance`'s call.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

from .significance import kd_verdict


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "all_results.json")) as f:
        return json.load(f)


def disk_bytes(run_dir: str) -> int:
    return sum(
        os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir) if f.endswith(".safetensors")
    )


def model_row(run_dir: str) -> dict:
    r = _results(run_dir)
    loss = r.get("test_loss", r.get("eval_loss"))
    return {
        "dir": run_dir,
        "params": r["student_params"],
        "non_embedding_params": r.get("student_non_embedding_params"),
        "test_loss": loss,
        "perplexity": math.exp(loss),
        "eval_loss": r.get("eval_loss"),
        "disk_bytes": disk_bytes(run_dir),
    }


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def throughput(run_dirs: dict[str, str], input_ids, rounds: int = 15, warmup_rounds: int = 3) -> dict:
    """Forward tokens per second of each model on the same batch, measured in interleaved rounds.

    Every round times one forward pass of each model (in inference mode, without a KV cache),
    in an order that rotates from round to round, so that a busy machine slows all of them
    alike; `warmup_rounds` untimed rounds come first (allocator, kernels, caches).

    Returns:
        `dict` with `models` (name -> `tokens_per_second` median, `iqr` [q1, q3], `min`, `max`),
        `speedups` (name -> median and IQR of the per-round ratio of the first model's time to
        this one's: paired, so the load of a round cancels) and what was measured: `batch`,
        `threads`, `device`, `rounds`, `warmup_rounds`, `loadavg`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    models = {
        name: AutoModelForCausalLM.from_pretrained(d, use_safetensors=True).eval()
        for name, d in run_dirs.items()
    }
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup_rounds):
            for model in models.values():
                model(input_ids=input_ids, use_cache=False)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name](input_ids=input_ids, use_cache=False)
                times[name].append(time.perf_counter() - start)
    tokens = input_ids.numel()
    out = {"models": {}, "speedups": {}}
    for name, t in times.items():
        rates = [tokens / x for x in t]
        q1, med, q3 = _quartiles(rates)
        out["models"][name] = {
            "tokens_per_second": med,
            "iqr": [q1, q3],
            "min": min(rates),
            "max": max(rates),
        }
        q1, med, q3 = _quartiles([a / b for a, b in zip(times[names[0]], t)])
        out["speedups"][name] = {"median": med, "iqr": [q1, q3]}
    return {
        **out,
        "batch": list(input_ids.shape),
        "threads": torch.get_num_threads(),
        "device": str(next(models[names[0]].parameters()).device),
        "rounds": rounds,
        "warmup_rounds": warmup_rounds,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


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
    speed = throughput(
        {"teacher": teacher["dir"], "student": kd["runs"][0]["dir"], "baseline": base["runs"][0]["dir"]},
        batch,
    )
    for name, row in (("teacher", teacher_row), ("student", kd_row), ("baseline", base_row)):
        row["tokens_per_second"] = speed["models"][name]["tokens_per_second"]
        row["tokens_per_second_iqr"] = speed["models"][name]["iqr"]
    gap = base_row["test_loss"] - teacher_row["test_loss"]
    gain = (base_row["test_loss"] - kd_row["test_loss"]) / gap if gap > 0 else float("nan")
    improvement = base_row["test_loss"] - kd_row["test_loss"]
    spread = max(kd_row["spread"], base_row["spread"])
    derived = {
        "kd_gain": gain,
        "kd_improvement": improvement,
        "seed_spread": spread,
        **kd_verdict(improvement, spread, min(len(kd["runs"]), len(base["runs"]))),
        "retention": teacher_row["test_loss"] / kd_row["test_loss"],
        "perplexity_retention": teacher_row["perplexity"] / kd_row["perplexity"],
        "compression": teacher_row["params"] / kd_row["params"],
        "speedup": speed["speedups"]["student"]["median"],
        "speedup_iqr": speed["speedups"]["student"]["iqr"],
        "throughput_batch": list(batch.shape),
        "throughput": {k: v for k, v in speed.items() if k not in ("models", "speedups")},
    }
    return {"teacher": teacher_row, "student": kd_row, "baseline": base_row, **derived}
