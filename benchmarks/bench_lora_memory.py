"""Peak memory of LoRA self-distillation (`teacher_model_name_or_path: self`) vs the same run with a separate teacher copy.

Both variants run `distill train` on the same LoRA student (a ~60M-parameter Llama-style base), the same chat
data (`builtin:python-chat` conversations with `assistant_only_loss`), the same seed and steps. The teacher is
the base model in both: once as the student's own weights with its adapters disabled (`self`), once loaded
from the same directory as a second, frozen model (`copy`). So their losses must agree to float precision, and
the difference in peak resident memory is the price of the second copy.

Each run is a fresh process (glibc told to mmap allocations above 64 KiB, so RSS follows live tensors; see
`benchmarks/_measure.py`); the figure is the process's peak RSS (``VmHWM``) over the whole run: imports, model
loading, training, evaluation and saving. Variants are interleaved, ``--repeats`` times each.

    .venv/bin/python benchmarks/bench_lora_memory.py             # ~60M base, 6 steps, 2 repeats (a few minutes)
    .venv/bin/python benchmarks/bench_lora_memory.py --hidden 256 --layers 2 --repeats 1   # quick

Writes `benchmarks/results/lora_self_distill_memory.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_worker, status_kib, write_results  # noqa: E402

VARIANTS = ["self", "copy"]


def make_base(root: str, hidden: int, layers: int, vocab: int, conversations: int) -> tuple[str, str]:
    """A random-init Llama base model with a BPE tokenizer, and a JSONL of chats; returns their paths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.data.chat_corpus import python_chat_corpus
    from distill.data.corpus import train_bpe_tokenizer

    chats = python_chat_corpus()["train"].select(range(conversations))
    data = os.path.join(root, "chats.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for messages in chats["messages"]:
            f.write(json.dumps({"messages": messages}) + "\n")
    tokenizer = train_bpe_tokenizer((m["content"] for c in chats["messages"] for m in c), vocab_size=vocab)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = os.path.join(root, "base")
    model = LlamaForCausalLM(config)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base, data


def worker(args) -> dict:
    import torch

    from distill.train import main as train_main

    torch.set_num_threads(args.threads)
    name = VARIANTS[args.worker]
    out = tempfile.mkdtemp(prefix=f"lora_memory_{name}_")
    teacher = "self" if name == "self" else args.base
    start = time.perf_counter()
    results = train_main(
        [
            "--task", "causal-lm",
            "--model_name_or_path", args.base,
            "--teacher_model_name_or_path", teacher,
            "--use_peft", "true",
            "--lora_r", "16",
            "--lora_alpha", "32",
            "--lora_dropout", "0.0",
            "--dataset_name", "json",
            "--data_files", args.data,
            "--assistant_only_loss", "true",
            "--chat_template_path", "builtin:zephyr",
            "--block_size", "256",
            "--max_steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch),
            "--per_device_eval_batch_size", str(args.batch),
            "--max_eval_samples", "16",
            "--learning_rate", "1e-3",
            "--alpha", "0.5",
            "--seed", "0",
            "--save_strategy", "no",
            "--logging_steps", "1",
            "--report_to", "none",
            "--disable_tqdm", "true",
            "--output_dir", out,
        ]
    )  # fmt: skip
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        losses = [h["loss"] for h in json.load(f)["log_history"] if "loss" in h]
    return {
        "variant": name,
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "seconds": round(seconds, 1),
        "student_params": results["student_params"],
        "teacher_params": results["teacher_params"],
        "train_losses": losses,
        "eval_loss": results.get("eval_loss"),
        "eval_kd_loss": results.get("eval_kd_loss"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--conversations", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--base", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory(prefix="lora_memory_") as root:
        args.base, args.data = make_base(root, args.hidden, args.layers, args.vocab, args.conversations)
        weights_mib = os.path.getsize(os.path.join(args.base, "model.safetensors")) / 2**20
        flags = [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "repeats") and v is not None
        ]
        rows = []
        for repeat in range(args.repeats):
            for i in range(len(VARIANTS)):
                row = run_worker(__file__, i, flags)
                row["repeat"] = repeat
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "train_losses"}), flush=True)
        args.base = args.data = None
    args.base_weights_mib = round(weights_mib, 1)
    by = {name: [r for r in rows if r["variant"] == name] for name in VARIANTS}
    same = all(a["train_losses"] == b["train_losses"] for a, b in zip(by["self"], by["copy"]))
    lines = [
        f"LoRA self-distillation vs a separate teacher copy: {rows[0]['student_params']:,}-parameter base "
        f"({weights_mib:.0f} MiB of float32 weights), {args.steps} steps of batch {args.batch}, {args.threads} threads.",
        "",
        "| teacher | peak RSS (MiB) | seconds | eval_loss | eval_kd_loss |",
        "|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        for r in by[name]:
            lines.append(
                f"| {name} (repeat {r['repeat']}) | {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} | "
                f"{r['eval_loss']:.4f} | {r['eval_kd_loss']:.6f} |"
            )
    saved = min(r["peak_rss_mib"] for r in by["copy"]) - max(r["peak_rss_mib"] for r in by["self"])
    lines += [
        "",
        f"Peak RSS saved by `self` (least of `copy` minus most of `self`): {saved:.0f} MiB. "
        f"Training losses identical in every repeat: {same}. Seconds are wall time on a shared machine (its load "
        "is in the JSON's provenance), not a speed comparison.",
    ]
    table = "\n".join(lines)
    write_results("lora_self_distill_memory", args, rows, table)
    print(table)


if __name__ == "__main__":
    main()
