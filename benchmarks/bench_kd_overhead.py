"""Overhead of a KD training step: `DistillationTrainer` vs (plain student step + teacher forward).

On the same tiny Llama teacher and student and the same batch, times, in interleaved rounds
(A, A", A', B, A, A", A', B, ...), one full optimizer step of:

* **A  kd (chunked)**: `DistillationTrainer.training_step` (student forward, teacher forward under
  `no_grad`, chunked KD + CE loss, backward) + `optimizer.step()` + `zero_grad()`; this is what
  `trainer.train()` runs for a causal LM.
* **A" kd (fused head)**: the same with `kd_fused_lm_head=True` (logits computed chunk by chunk from
  both models' hidden states inside the loss).
* **A' kd (plain loss)**: the same, with `distill.trainer.distillation_trainer.chunked_distillation_loss` monkeypatched to
  a wrapper that calls the unchunked `distill.losses.distillation_loss` (drops `chunk_size`), i.e.
  the "naive" loss that materialises full-size softmax tensors.
* **B  reference**: a plain `transformers.Trainer.training_step` of the student on the same batch
  (the model's own cross-entropy, same optimizer settings) + `optimizer.step()` + `zero_grad()`,
  plus one teacher forward under `torch.inference_mode()`: the unavoidable cost of distillation.

Each variant has its own student copy (same init) and its own AdamW optimizer. Medians over
`--rounds` rounds after `--warmup` rounds; the ratio A / B is the KD overhead (target <= 1.05).
Threads are pinned with `--threads` (default 1) to keep the comparison quiet on shared CPUs.

    .venv/bin/python benchmarks/bench_kd_overhead.py          # B=8, T=128, V=4096, two size pairs (~1.5 min)
    .venv/bin/python benchmarks/bench_kd_overhead.py --sizes 256x4:128x2 --rounds 10   # quicker

Sizes are `teacher:student` pairs of Llama `hidden x layers` (heads of 32, MLP 8/3 x hidden, tied
embeddings): the default 256x4:128x2 (4.2M -> 0.9M params) and 512x4:256x4 (~15M -> ~4.7M params).

Writes `benchmarks/results/kd_overhead.{json,md}` (`kd_overhead_v<V>.*` with another `--V`, `..._chunk<N>.*` with
`--chunk N`) and prints
the Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))


def tiny_llama(hidden, layers, vocab, max_pos, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(8 / 3 * hidden) // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=max_pos,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).float()


def make_batch(B, T, V, seed=0):
    """Variable-length rows (T/2..T tokens) with a masked prompt, padded by the project's collator."""
    from distill.trainer.tasks import CausalLMCollator

    rng = random.Random(seed)
    rows = []
    for _ in range(B):
        n = rng.randint(T // 2, T)
        ids = [rng.randrange(3, V) for _ in range(n)]
        p = rng.randint(0, n // 4)
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    rows[0] = {
        "input_ids": rows[0]["input_ids"] + [3] * (T - len(rows[0]["input_ids"])),
        "labels": rows[0]["labels"] + [3] * (T - len(rows[0]["labels"])),
    }  # one full-length row
    return CausalLMCollator(pad_token_id=0)(rows)


def run_size(teacher_spec: str, student_spec: str, args) -> dict:
    """All variants, interleaved, for one teacher/student pair."""
    import torch
    from transformers import Trainer, TrainingArguments

    import distill.trainer.distillation_trainer as dtrainer
    from distill import DistillationConfig, DistillationTrainer
    from distill.losses import distillation_loss
    from distill.trainer.tasks import CausalLMCollator

    th, tl = map(int, teacher_spec.split("x"))
    sh, sl = map(int, student_spec.split("x"))
    teacher = tiny_llama(th, tl, args.V, args.T, seed=1).eval().requires_grad_(False)
    student0 = tiny_llama(sh, sl, args.V, args.T, seed=0)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    batch = make_batch(args.B, args.T, args.V)
    num_items = int((batch["labels"][:, 1:] != -100).sum())

    tmp = tempfile.mkdtemp(prefix="kd_overhead_")
    common = dict(
        output_dir=tmp,
        per_device_train_batch_size=args.B,
        learning_rate=1e-4,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )
    collator = CausalLMCollator(pad_token_id=0)
    dummy = [{"input_ids": [3, 4], "labels": [3, 4]}]

    def kd_trainer(fused=False):
        s = copy.deepcopy(student0)
        cfg = DistillationConfig(
            alpha=0.5,
            temperature=2.0,
            kd_kind="forward_kl",
            kd_chunk_size=args.chunk,
            kd_fused_lm_head=fused,
            **common,
        )
        tr = DistillationTrainer(
            model=s, teacher_model=teacher, args=cfg, train_dataset=dummy, data_collator=collator
        )
        tr.create_optimizer_and_scheduler(num_training_steps=10**6)
        return tr

    def plain_trainer():
        s = copy.deepcopy(student0)
        tr = Trainer(model=s, args=TrainingArguments(**common), train_dataset=dummy, data_collator=collator)
        tr.create_optimizer_and_scheduler(num_training_steps=10**6)
        return tr

    kd, kd_fused, kd_plain, ref = kd_trainer(), kd_trainer(fused=True), kd_trainer(), plain_trainer()
    n_items = torch.tensor(num_items)

    def unchunked(*a, chunk_size=None, **kw):  # same signature as chunked_distillation_loss
        return distillation_loss(*a, **kw)

    def step_kd(tr, patched=False):
        original = dtrainer.chunked_distillation_loss
        if patched:
            dtrainer.chunked_distillation_loss = unchunked
        try:
            loss = tr.training_step(tr.model, dict(batch), n_items)
        finally:
            dtrainer.chunked_distillation_loss = original
        tr.optimizer.step()
        tr.model.zero_grad(set_to_none=True)
        return float(loss)

    def step_ref(tr):
        loss = tr.training_step(tr.model, dict(batch), n_items)
        with torch.inference_mode():
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tr.optimizer.step()
        tr.model.zero_grad(set_to_none=True)
        return float(loss)

    variants = {
        "kd (chunked)": lambda: step_kd(kd),
        "kd (fused head)": lambda: step_kd(kd_fused),
        "kd (plain loss)": lambda: step_kd(kd_plain, patched=True),
        "student CE + teacher fwd": lambda: step_ref(ref),
    }
    times = {k: [] for k in variants}
    first_loss = {}
    for r in range(args.warmup + args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            loss = fn()
            dt = time.perf_counter() - t0
            first_loss.setdefault(name, loss)
            if r >= args.warmup:
                times[name].append(dt)

    # Component timings (same rounds style), for context: teacher fwd alone, student CE step alone.
    comp = {"teacher fwd (inference_mode)": [], "student CE step": []}
    for r in range(args.warmup + args.rounds // 2):
        t0 = time.perf_counter()
        with torch.inference_mode():
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        t1 = time.perf_counter()
        ref.training_step(ref.model, dict(batch), n_items)
        ref.optimizer.step()
        ref.model.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if r >= args.warmup:
            comp["teacher fwd (inference_mode)"].append(t1 - t0)
            comp["student CE step"].append(t2 - t1)

    base = statistics.median(times["student CE + teacher fwd"])
    rows = []
    for name, ts in list(times.items()) + list(comp.items()):
        med = statistics.median(ts)
        rows.append(
            dict(
                variant=name,
                median_ms=1e3 * med,
                min_ms=1e3 * min(ts),
                n=len(ts),
                ratio=med / base,
                first_loss=first_loss.get(name),
            )
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return dict(
        teacher=teacher_spec,
        student=student_spec,
        teacher_params=n_params(teacher),
        student_params=n_params(student0),
        num_items=num_items,
        rows=rows,
        ratio=rows[0]["ratio"],
        fused_ratio=rows[1]["ratio"],
        target_met=rows[0]["ratio"] <= 1.05,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--V", type=int, default=4096)
    p.add_argument(
        "--sizes",
        default="256x4:128x2,512x4:256x4",
        help="comma-separated teacher:student pairs, each hidden x layers",
    )
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--chunk", type=int, default=None, help="kd_chunk_size (default: the trainer's, default_chunk_size)"
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = []
    for pair in args.sizes.split(","):
        t_spec, s_spec = pair.split(":")
        results.append(run_size(t_spec, s_spec, args))
        print(f"{pair}: kd (chunked) / reference = {results[-1]['ratio']:.3f}x", flush=True)

    from distill.losses.chunked import default_chunk_size

    chunk = args.chunk or f"default {default_chunk_size(args.V)}"
    header = (
        f"B={args.B}, T={args.T}, V={args.V}, kd_chunk_size={chunk}, forward KL, alpha=0.5, T_kd=2, AdamW, "
        f"float32, {args.threads} CPU "
        f"thread(s), torch {torch.__version__}. One optimizer step per row (forward, backward, AdamW step). "
        f"Median of {args.rounds} interleaved rounds after {args.warmup} warm-up; ratio = median / median of "
        f"'student CE + teacher fwd'. Target: kd (chunked) <= 1.05x."
    )
    lines = [
        header,
        "",
        "| teacher -> student (params) | step | median ms | min ms | vs reference |",
        "|---|---|---:|---:|---:|",
    ]
    for res in results:
        label = (
            f"{res['teacher']} ({res['teacher_params'] / 1e6:.2f}M) -> {res['student']} "
            f"({res['student_params'] / 1e6:.2f}M)"
        )
        for r in res["rows"]:
            lines.append(
                f"| {label} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio']:.3f}x |"
            )
    lines.append("")
    for res in results:
        lines.append(
            f"- {res['teacher']} -> {res['student']}: KD overhead {res['ratio']:.3f}x, target <= 1.05x "
            f"{'MET' if res['target_met'] else 'NOT MET'}; with kd_fused_lm_head {res['fused_ratio']:.3f}x."
        )
    table = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = dict(
        vars(args), python=platform.python_version(), torch=torch.__version__, machine=platform.machine()
    )
    from _measure import provenance

    out = dict(provenance=provenance(), config=meta, target=1.05, results=results)
    stem = (
        "kd_overhead"
        + ("" if args.V == 4096 else f"_v{args.V}")
        + ("" if args.chunk is None else f"_chunk{args.chunk}")
    )  # keep the default's table
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
