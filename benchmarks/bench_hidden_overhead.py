"""Cost of the intermediate-layer terms: a KD training step with and without hidden states / attention.

On one tiny Llama teacher/student pair and one batch, times in interleaved rounds one full optimizer
step (`DistillationTrainer.training_step` + `optimizer.step()` + `zero_grad()`) of:

* **logit KD (sdpa)**: the default loss, both models with PyTorch's sdpa attention;
* **logit KD (eager)**: the same with `attn_implementation="eager"`, which attention transfer needs:
  what switching the attention implementation alone costs;
* **+ hidden (projection)**: `hidden_weight=1` over the default evenly spaced map, through the learned
  student -> teacher projection (sdpa);
* **+ hidden + attention (eager)**: also `attention_weight=1` (MiniLM attention KL; eager).

Medians over `--rounds` after `--warmup`; the ratio is against the first variant. The load average
is recorded beside the timings (the machine may be shared).

    .venv/bin/python benchmarks/bench_hidden_overhead.py                 # B=8, T=128, V=4096, 256x4 -> 128x2
    .venv/bin/python benchmarks/bench_hidden_overhead.py --rounds 5      # quicker

Writes `benchmarks/results/hidden_overhead.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {  # name: (attention implementation, extra DistillationConfig fields)
    "logit KD (sdpa)": ("sdpa", {}),
    "logit KD (eager)": ("eager", {}),
    "+ hidden (projection)": ("sdpa", {"hidden_weight": 1.0}),
    "+ hidden + attention (eager)": ("eager", {"hidden_weight": 1.0, "attention_weight": 1.0}),
}


def llama(hidden, layers, heads, args, seed):
    """A Llama of the benchmark's shape with a fixed head count (attention transfer needs the same in both)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=args.V,
            hidden_size=hidden,
            intermediate_size=int(8 / 3 * hidden) // 8 * 8,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=args.T,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    )


def run(args) -> list[dict]:
    from bench_kd_overhead import make_batch

    from distill import DistillationConfig, DistillationTrainer
    from distill.trainer.tasks import CausalLMCollator

    th, tl = map(int, args.teacher.split("x"))
    sh, sl = map(int, args.student.split("x"))
    teacher0 = llama(th, tl, args.heads, args, seed=1).eval().requires_grad_(False)
    student0 = llama(sh, sl, args.heads, args, seed=0)
    batch = make_batch(args.B, args.T, args.V)
    n_items = (batch["labels"][:, 1:] != -100).sum()
    tmp = tempfile.mkdtemp(prefix="hidden_overhead_")
    trainers = {}
    for name, (implementation, extra) in VARIANTS.items():
        student, teacher = copy.deepcopy(student0), copy.deepcopy(teacher0)
        student.set_attn_implementation(implementation)
        teacher.set_attn_implementation(implementation)
        config = DistillationConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.B,
            learning_rate=1e-4,
            optim="adamw_torch",
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            report_to="none",
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
            alpha=0.5,
            temperature=2.0,
            **extra,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=[{"input_ids": [3, 4]}],
            data_collator=CausalLMCollator(0),
        )
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        trainers[name] = trainer

    def step(trainer):
        loss = trainer.training_step(trainer.model, dict(batch), n_items)
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        return float(loss)

    times = {name: [] for name in trainers}
    for r in range(args.warmup + args.rounds):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            step(trainer)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["logit KD (sdpa)"])
    return [
        dict(
            variant=name,
            median_ms=1e3 * statistics.median(ts),
            min_ms=1e3 * min(ts),
            n=len(ts),
            ratio=statistics.median(ts) / base,
        )
        for name, ts in times.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--V", type=int, default=4096)
    p.add_argument("--teacher", default="256x4", help="hidden x layers")
    p.add_argument("--student", default="128x2", help="hidden x layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads of both models")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch
    from _measure import write_results

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = run(args)
    load = [round(x, 2) for x in (load_before[0], os.getloadavg()[0])]
    table = "\n".join(
        [
            f"B={args.B}, T={args.T}, V={args.V}, teacher {args.teacher} -> student {args.student} (hidden x layers, "
            f"{args.heads} heads), {args.threads} "
            f"thread(s), load average {load[0]} -> {load[1]} (1 min)",
            "",
            "| variant | median ms/step | ratio |",
            "|---|---:|---:|",
        ]
        + [f"| {r['variant']} | {r['median_ms']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    )
    args.load_average = load
    write_results("hidden_overhead", args, rows, table)
    print(table)


if __name__ == "__main__":
    main()
