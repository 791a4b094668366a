"""`scaledown bench MODEL_DIR [MORE_DIRS...] --data RECIPE --out bench.json`: one table for every variant.

Each directory is a variant (PyTorch fp32, torchao int8, ONNX fp32, ONNX int8; `--teacher DIR`
adds the teacher for reference); a torchao int8 directory is measured twice, eager and under
`torch.compile`, because its CPU kernels are fast only compiled, and then so is the fp32 reference, so that
compiled int8 is compared with compiled fp32 (column `compiled`). For every variant:

- **size on disk** (weight files only),
- **latency** p50/p95 at batch 1 over the first `latency_samples` test examples,
- **throughput** (examples/s) on one batch of `batch_size` test examples,
- **quality** on the test split: accuracy for classifiers, token-weighted cross-entropy and
  perplexity for causal LMs,

and ratios to the first directory (the fp32 student) at the same compile setting. The timings are interleaved (every
example or round runs every variant in turn, in rotating order) and use the same inputs and a
pinned thread count (`torch.set_num_threads`, ONNX Runtime's intra-op threads), so a noisy
machine slows all variants alike; the load average is recorded beside them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Optional

from .artifacts import ModelInfo, describe, disk_bytes, eval_examples, load_processor, model_inputs
from .runners import make_runner


@dataclass
class Variant:
    """A model under test: its name, directory description, runner and inputs."""

    name: str
    info: ModelInfo
    runner: Any
    batches: list  # quality batches (model inputs + labels)
    singles: list  # batch-1 inputs for latency
    throughput_batch: dict
    compiled: bool = False  # run under torch.compile


def _quality(info: ModelInfo, runner, batches: list[dict]) -> dict:
    """Accuracy (classifiers) or token-weighted cross-entropy and perplexity (causal LMs)."""
    import numpy as np

    if info.task != "causal-lm":
        correct = total = 0
        for batch in batches:
            predictions = runner.logits(batch).argmax(-1)
            labels = batch["labels"].numpy()
            correct += int((predictions == labels).sum())
            total += len(labels)
        return {"accuracy": correct / total, "examples": total}
    nll = tokens = 0.0
    for batch in batches:
        logits = runner.logits(batch)[:, :-1].astype(np.float64)
        labels = batch["labels"].numpy()[:, 1:]
        mask = labels != -100
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, np.where(mask, labels, 0)[..., None], -1)[..., 0]
        nll -= float(picked[mask].sum())
        tokens += int(mask.sum())
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(tokens)}


def _timed(runner, inputs) -> float:
    start = time.perf_counter()
    runner.logits(inputs)
    return time.perf_counter() - start


def _interleaved(variants: list[Variant], inputs_of, count: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each variant on `inputs_of(variant, i)`, i < count, in rotating order."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for v in variants:
        for i in range(min(warmup, count)):
            v.runner.logits(inputs_of(v, i))
    for i in range(count):
        shift = i % len(variants)
        for v in variants[shift:] + variants[:shift]:
            times[v.name].append(_timed(v.runner, inputs_of(v, i)))
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _variant_inputs(
    info: ModelInfo, data: Optional[str], limit: Optional[int], batch_size: int, latency_samples: int
) -> tuple[list, list, dict]:
    processor = load_processor(info.path, info.task)
    examples = eval_examples(info, processor, data, limit=limit)
    rows = [examples[i] for i in range(len(examples))]
    batches = [
        model_inputs(info, processor, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)
    ]
    singles = [model_inputs(info, processor, [row]) for row in rows[:latency_samples]]
    throughput = model_inputs(info, processor, (rows * math.ceil(batch_size / len(rows)))[:batch_size])
    return batches, singles, throughput


def compile_plan(infos: list[ModelInfo], compile_int8: bool) -> list[list[bool]]:
    """Per directory, the compile settings it is measured at (False = eager, True = `torch.compile`).

    A torchao int8 directory is measured eager and compiled (its CPU kernels are fast only compiled). So
    that each quantised row is compared with fp32 at the same compile setting, the reference (the first
    directory, when it is a PyTorch model) is then measured compiled too: compiled int8 is set against
    compiled fp32, not against eager fp32.
    """
    compiles = compile_int8 and any((i.format, i.precision) == ("pytorch", "int8") for i in infos)
    plan = []
    for index, info in enumerate(infos):
        int8 = (info.format, info.precision) == ("pytorch", "int8")
        reference = index == 0 and info.format == "pytorch"
        plan.append([False, True] if compiles and (int8 or reference) else [False])
    return plan


def _variants(
    model_dirs: list[str],
    names: Optional[list[str]],
    teacher: Optional[str],
    threads: int,
    compile_int8: bool,
    inputs,
) -> list[Variant]:
    variants: list[Variant] = []
    entries = list(zip(model_dirs, names or [None] * len(model_dirs))) + (
        [(teacher, "teacher")] if teacher else []
    )
    infos = [describe(path) for path, _ in entries]
    plan = compile_plan(infos[: len(model_dirs)], compile_int8) + [[False]] * (len(entries) - len(model_dirs))
    for (path, given), info, modes in zip(entries, infos, plan):
        batches, singles, tp = inputs(info)
        for compiled in modes:
            name = (given or info.variant) + ("+compile" if compiled else "")
            if any(v.name == name for v in variants):
                name = f"{name} ({os.path.basename(os.path.normpath(path))})"
            runner = make_runner(info, threads=threads, compile=compiled)
            variants.append(Variant(name, info, runner, batches, singles, tp, compiled))
    return variants


def bench(
    model_dirs: list[str],
    *,
    data=None,
    teacher: Optional[str] = None,
    names: Optional[list[str]] = None,
    threads: int = 1,
    batch_size: int = 32,
    latency_samples: int = 50,
    rounds: int = 5,
    max_eval_samples: Optional[int] = None,
    compile_int8: bool = True,
) -> dict:
    """Measure every variant; the first of `model_dirs` is the reference (the fp32 student).

    Args:
        model_dirs: PyTorch or ONNX model directories of one task, the fp32 student first.
        data: a recipe path, a dataset name, a mapping of `DataArguments` fields, or None (the
            task's built-in source); the test split (else validation) is measured.
        teacher: a teacher directory, measured for reference (row `teacher`).
        names: row names for `model_dirs` (default: their variant, e.g. `onnx-int8`).

    Returns:
        `{"rows": [...], "reference": name, "machine": {...}, "settings": {...}}`.
    """
    import torch

    if not model_dirs:
        raise ValueError("bench needs at least one MODEL_DIR (the fp32 student first).")
    if names is not None and len(names) != len(model_dirs):
        raise ValueError(f"names has {len(names)} entries for {len(model_dirs)} model directories.")
    infos = [describe(d) for d in model_dirs + ([teacher] if teacher else [])]
    tasks = {i.task for i in infos}
    if len(tasks) != 1:
        raise ValueError(f"All directories must be models of one task; got {sorted(tasks)}.")
    for name, value in (
        ("threads", threads),
        ("batch_size", batch_size),
        ("latency_samples", latency_samples),
        ("rounds", rounds),
    ):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    variants = _variants(
        model_dirs,
        names,
        teacher,
        threads,
        compile_int8,
        lambda info: _variant_inputs(info, data, max_eval_samples, batch_size, latency_samples),
    )
    quality = {v.name: _quality(v.info, v.runner, v.batches) for v in variants}
    latency = _interleaved(variants, lambda v, i: v.singles[i], min(len(v.singles) for v in variants))
    rounds_times = _interleaved(variants, lambda v, i: v.throughput_batch, rounds, warmup=1)
    rows = []
    for v in variants:
        lat = latency[v.name]
        rows.append(
            {
                "variant": v.name,
                "dir": os.path.abspath(v.info.path),
                "format": v.info.format,
                "precision": v.info.precision,
                "task": v.info.task,
                "compiled": v.compiled,
                "disk_bytes": disk_bytes(v.info.path),
                "latency_p50_ms": 1e3 * statistics.median(lat),
                "latency_p95_ms": 1e3 * _percentile(lat, 95),
                "throughput_per_s": batch_size / statistics.median(rounds_times[v.name]),
                **quality[v.name],
            }
        )
    _add_ratios(rows)
    return {
        "reference": rows[0]["variant"],
        "task": infos[0].task,
        "rows": rows,
        "settings": {
            "threads": threads,
            "batch_size": batch_size,
            "latency_samples": len(latency[rows[0]["variant"]]),
            "rounds": rounds,
            "data": data if not isinstance(data, dict) else dict(data),
            "max_eval_samples": max_eval_samples,
        },
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }


def _version(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _add_ratios(rows: list[dict]) -> None:
    """Ratios of every row to the reference measured at the same compile setting: the first row (eager), or
    its compiled twin for compiled rows when there is one. `ratio_reference` names the row used."""
    eager_ref = rows[0]
    compiled_ref = next(
        (r for r in rows if r.get("compiled") and r["dir"] == eager_ref["dir"]),
        None,
    )
    for row in rows:
        ref = compiled_ref if row.get("compiled") and compiled_ref is not None else eager_ref
        row["ratio_reference"] = ref["variant"]
        row["size_ratio"] = row["disk_bytes"] / ref["disk_bytes"]
        row["speedup_batch1"] = ref["latency_p50_ms"] / row["latency_p50_ms"]
        row["throughput_ratio"] = row["throughput_per_s"] / ref["throughput_per_s"]
        if "accuracy" in row:
            row["accuracy_delta_points"] = 100 * (row["accuracy"] - ref["accuracy"])
        else:
            row["loss_delta"] = row["loss"] - ref["loss"]


def markdown_table(result: dict) -> str:
    """The bench result as a Markdown table with a line on the settings and the machine load."""
    rows = result["rows"]
    classifier = "accuracy" in rows[0]
    quality_head = "accuracy | Δ points" if classifier else "loss | perplexity | Δ loss"
    lines = [
        f"| variant | compiled | size MB | size × | p50 ms (batch 1) | p95 ms | speedup × | throughput /s "
        f"(batch {result['settings']['batch_size']}) | throughput × | {quality_head} |",
        "|---|:---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * (2 if classifier else 3)),
    ]
    for r in rows:
        quality = (
            f"{r['accuracy']:.4f} | {r['accuracy_delta_points']:+.2f}"
            if classifier
            else f"{r['loss']:.4f} | {r['perplexity']:.2f} | {r['loss_delta']:+.4f}"
        )
        lines.append(
            f"| {r['variant']} | {'yes' if r.get('compiled') else 'no'} | {r['disk_bytes'] / 1e6:.2f} | {r['size_ratio']:.2f} | "
            f"{r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['speedup_batch1']:.2f} | "
            f"{r['throughput_per_s']:.1f} | {r['throughput_ratio']:.2f} | {quality} |"
        )
    m, s = result["machine"], result["settings"]
    lines.append("")
    compiled_refs = sorted({r["ratio_reference"] for r in rows if r.get("compiled")} - {result["reference"]})
    against = f"`{result['reference']}`" + "".join(
        f"; compiled rows against `{name}` (the same model, compiled)" for name in compiled_refs
    )
    lines.append(
        f"Ratios against {against}. {s['threads']} thread(s), {s['latency_samples']} batch-1 "
        f"examples, {s['rounds']} throughput rounds, interleaved; load average "
        f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after, on {m['cpu_count']} CPUs."
    )
    return "\n".join(lines)


def write_bench(result: dict, out: str) -> tuple[str, str]:
    """Write `out` (JSON) and the Markdown table beside it (same stem, `.md`)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    md = os.path.splitext(out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown_table(result) + "\n")
    return out, md
