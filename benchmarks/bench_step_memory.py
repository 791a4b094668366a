"""Peak memory and time of one `DistillationTrainer` training step at a large vocabulary, by KD loss path.

`bench_loss_memory.py` measures the loss alone; this measures what a user pays for one whole
`training_step` (student forward, teacher forward, loss, backward) of a causal LM, for the three
paths the trainer can take:

* **plain loss**: `distill.trainer.distillation_trainer.chunked_distillation_loss` monkeypatched to the unchunked
  `distill.losses.distillation_loss` (full-size float32 softmax tensors);
* **chunked (default)**: what `trainer.train()` runs for causal LMs (`kd_chunk_size` default);
* **fused head** (`kd_fused_lm_head=True`): both models return hidden states and the loss computes
  logits chunk by chunk from them, so neither model's ``[B, T, V]`` logits exist.

Each variant runs in a fresh process (glibc told to mmap allocations above 64 KiB, so RSS follows
live tensors; see `benchmarks/_measure.py`). After building the models and the trainer and one
warm-up step on a small batch, the peak-RSS counter is reset; the figure is the growth of the
peak over one training step on the measured batch (parameter gradients included, since the
warm-up's are freed first). Time: best of ``--repeats`` steps.

    .venv/bin/python benchmarks/bench_step_memory.py       # B=4, T=512, V=32000 (~1 min)
    .venv/bin/python benchmarks/bench_step_memory.py --B 2 --T 256 --V 16000   # quicker

Writes `benchmarks/results/step_memory.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import reset_peak, run_worker, status_kib, write_results  # noqa: E402
from bench_kd_overhead import make_batch, tiny_llama  # noqa: E402

VARIANTS = ["plain loss", "chunked (default)", "fused head"]


def worker(args) -> dict:
    import torch

    import distill.trainer.distillation_trainer as dtrainer
    from distill import DistillationConfig, DistillationTrainer
    from distill.losses import distillation_loss
    from distill.trainer.tasks import CausalLMCollator

    name = VARIANTS[args.worker]
    torch.set_num_threads(args.threads)
    if name == "plain loss":
        dtrainer.chunked_distillation_loss = lambda *a, chunk_size=None, **kw: distillation_loss(*a, **kw)
    th, tl = map(int, args.teacher.split("x"))
    sh, sl = map(int, args.student.split("x"))
    teacher = tiny_llama(th, tl, args.V, args.T, seed=1)
    student = tiny_llama(sh, sl, args.V, args.T, seed=0)
    config = DistillationConfig(
        output_dir=tempfile.mkdtemp(prefix="step_memory_"),
        per_device_train_batch_size=args.B,
        alpha=0.5,
        temperature=2.0,
        kd_kind="forward_kl",
        kd_fused_lm_head=name == "fused head",
        optim="sgd",
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=[{"input_ids": [3, 4], "labels": [3, 4]}],
        data_collator=CausalLMCollator(pad_token_id=0),
    )
    batch = make_batch(args.B, args.T, args.V)
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))

    def step(b, n):
        loss = trainer.training_step(trainer.model, dict(b), n)
        trainer.model.zero_grad(set_to_none=True)
        return float(loss)

    small = make_batch(2, 16, args.V)
    step(small, torch.tensor(int((small["labels"][:, 1:] != -100).sum())))  # load kernels, lazy state
    rss_before = status_kib("VmRSS")
    if not reset_peak():
        sys.exit("/proc/self/clear_refs is not writable here: the peak cannot be measured.")
    t0 = time.perf_counter()
    loss = step(batch, n_items)
    times = [time.perf_counter() - t0]
    peak_mib = (status_kib("VmHWM") - rss_before) / 1024
    for _ in range(args.repeats - 1):
        t0 = time.perf_counter()
        step(batch, n_items)
        times.append(time.perf_counter() - t0)
    return dict(
        variant=name, peak_mib=peak_mib, time_s=min(times), loss=loss, threads=torch.get_num_threads()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--V", type=int, default=32000)
    p.add_argument("--teacher", default="512x2", help="teacher hidden x layers (Llama)")
    p.add_argument("--student", default="256x2", help="student hidden x layers (Llama)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return

    flags = [f"--{k}={getattr(args, k)}" for k in ("B", "T", "V", "teacher", "student", "threads", "repeats")]
    rows = []
    for i, name in enumerate(VARIANTS):
        rows.append(run_worker(__file__, i, flags))
        print(f"{name}: {rows[-1]['peak_mib']:.0f} MiB, {rows[-1]['time_s']:.2f} s", flush=True)
    base = rows[0]
    for r in rows:
        r["mem_ratio"], r["time_ratio"] = r["peak_mib"] / base["peak_mib"], r["time_s"] / base["time_s"]

    one_copy = args.B * args.T * args.V * 4 / 2**20
    header = (
        f"One DistillationTrainer.training_step (forward + backward, no optimizer step): teacher {args.teacher}, "
        f"student {args.student} (Llama hidden x layers, tied embeddings), B={args.B}, T={args.T}, V={args.V}, "
        f"float32, forward KL, alpha=0.5, T_kd=2; one [B, T, V] float32 tensor = {one_copy:.0f} MiB. Peak = RSS "
        f"growth during the step (VmHWM after clear_refs), fresh process per variant, {rows[0]['threads']} CPU "
        f"threads; time = best of {args.repeats}."
    )
    lines = [
        header,
        "",
        "| loss path | peak MiB | vs plain | time s | vs plain | loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['peak_mib']:.0f} | {r['mem_ratio']:.2f}x | {r['time_s']:.2f} | "
            f"{r['time_ratio']:.2f}x | {r['loss']:.6f} |"
        )
    table = "\n".join(lines)
    write_results("step_memory", args, rows, table)
    print(table)


if __name__ == "__main__":
    main()
