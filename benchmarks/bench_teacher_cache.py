"""Offline teacher cache: approximation error of top-k and student throughput, side by side in one run.

1. Trains (or reuses) the tiny causal-LM teacher (recipes/tiny/causal_lm_teacher.yaml, --teacher-steps steps).
2. Approximation error: relative error of kd_loss from a top-k cache (float16 storage, as written by
   `distill cache-teacher`) against the online loss, at k = 8, 32, 128 and k = V, over --error-examples
   training blocks, for the student at initialisation and after training from the k = 32 cache.
3. Throughput: the tiny student (recipes/tiny/causal_lm.yaml) trained for --steps steps (a) plain, without
   KD (alpha = 0), (b) from the on-disk k = 32 cache (alpha = 0.5, no teacher loaded), and for reference
   (c) with the online teacher; same init, data, batch and steps, interleaved, best of --repeats.

Writes benchmarks/results/teacher_cache.{json,md}.

    python benchmarks/bench_teacher_cache.py [--teacher-steps 150] [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
TINY = os.path.join(ROOT, "recipes", "tiny")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-steps", type=int, default=150)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-examples", type=int, default=640)
    p.add_argument("--error-examples", type=int, default=64)
    p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "bench_teacher_cache"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from distill import DistillationConfig, DistillationTrainer
    from distill.data import build_datasets
    from distill.losses import distillation_loss
    from distill.teacher.cache import build_teacher_cache, cached_distillation_loss, teacher_topk
    from distill.train import main as train_main
    from distill.train import parse_args
    from distill.trainer.tasks import CausalLMCollator

    hf_logging.set_verbosity_error()
    os.makedirs(a.work_dir, exist_ok=True)
    teacher_dir = os.path.join(a.work_dir, f"teacher-{a.teacher_steps}")
    if not os.path.isfile(os.path.join(teacher_dir, "model.safetensors")):
        train_main(
            [
                "--config",
                os.path.join(TINY, "causal_lm_teacher.yaml"),
                "--output_dir",
                teacher_dir,
                "--max_steps",
                str(a.teacher_steps),
                "--save_strategy",
                "no",
                "--disable_tqdm",
                "true",
                "--logging_steps",
                "50",
                "--max_eval_samples",
                "32",
                "--max_test_samples",
                "32",
            ]
        )
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = (
        AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True).eval().requires_grad_(False)
    )
    _, data_args, _ = parse_args(
        [
            "--config",
            os.path.join(TINY, "causal_lm.yaml"),
            "--teacher_model_name_or_path",
            teacher_dir,
            "--max_train_samples",
            str(a.train_examples),
            "--output_dir",
            os.path.join(a.work_dir, "unused"),
        ]
    )
    train = build_datasets(data_args, "causal-lm", tok, seed=0).train
    V, T = len(tok), 2.0

    def new_student():
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(
            "llama",
            hidden_size=96,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            vocab_size=V,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        return LlamaForCausalLM(cfg)

    cache_dir = os.path.join(a.work_dir, "cache-k32")
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    build_teacher_cache(
        teacher,
        train,
        cache_dir,
        tokenizer=tok,
        k=32,
        temperature=T,
        teacher_name=teacher_dir,
        value_dtype="float16",
        batch_size=32,
        pad_token_id=tok.pad_token_id,
    )
    cache_seconds = time.perf_counter() - t0
    cache_bytes = sum(
        os.path.getsize(os.path.join(cache_dir, f)) for f in os.listdir(cache_dir) if f.endswith(".arrow")
    )

    # ---- throughput, interleaved ------------------------------------------------------------------
    def run(variant: str, rep: int):
        student = new_student()
        args = DistillationConfig(
            output_dir=os.path.join(a.work_dir, f"{variant}-{rep}"),
            per_device_train_batch_size=16,
            max_steps=a.steps,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            warmup_steps=0,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            alpha=0.0 if variant == "plain" else 0.5,
            temperature=T,
        )
        kw = dict(
            model=student,
            args=args,
            train_dataset=train,
            processing_class=tok,
            data_collator=CausalLMCollator(tok.pad_token_id),
        )
        if variant == "cache":
            kw["teacher_cache"] = cache_dir
        elif variant == "online":
            kw["teacher_model"] = teacher
        trainer = DistillationTrainer(**kw)
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
        return student, a.steps * 16 / seconds

    variants = ("plain", "cache", "online")
    speed = {v: 0.0 for v in variants}
    trained_from_cache = None
    for rep in range(a.repeats):
        for v in variants:
            student, sps = run(v, rep)
            speed[v] = max(speed[v], sps)
            if v == "cache":
                trained_from_cache = student
            print(f"rep {rep} {v:>6}: {sps:.1f} samples/s", flush=True)

    # ---- approximation error ----------------------------------------------------------------------
    collate = CausalLMCollator(tok.pad_token_id)
    rows = [train[i] for i in range(min(a.error_examples, len(train)))]
    errors = {}
    for name, student in (("init", new_student()), (f"after {a.steps} cache steps", trained_from_cache)):
        student.eval()
        online = 0.0
        approx = {k: 0.0 for k in (8, 32, 128, V)}
        n_total = 0
        for i in range(0, len(rows), 16):
            batch = collate(rows[i : i + 16])
            with torch.no_grad():
                kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                t_logits = teacher(**kw).logits[:, :-1, :V]
                s_logits = student(**kw).logits[:, :-1, :V]
                labels = batch["labels"][:, 1:]
                n = int(labels.ne(-100).sum())
                online += (
                    distillation_loss(s_logits, t_logits, labels, alpha=1.0, temperature=T).kd_loss.item() * n
                )
                for k in approx:
                    ids, lp, rest = teacher_topk(t_logits, k, T)
                    out = cached_distillation_loss(
                        s_logits, ids, lp.half(), rest.half(), labels, alpha=1.0, temperature=T
                    )
                    approx[k] += out.kd_loss.item() * n
                n_total += n
        errors[name] = {
            "online_kd": online / n_total,
            **{f"k={'V' if k == V else k}": (approx[k] - online) / online for k in approx},
        }

    result = {
        "setup": {
            "vocab": V,
            "temperature": T,
            "teacher_steps": a.teacher_steps,
            "student_steps": a.steps,
            "batch": 16,
            "block_size": data_args.block_size,
            "train_examples": len(train),
            "threads": a.threads,
            "repeats": a.repeats,
            "error_examples": len(rows),
            "cache_k": 32,
            "cache_dtype": "float16",
        },
        "throughput_samples_per_s": speed,
        "cache_vs_plain": speed["cache"] / speed["plain"],
        "online_vs_plain": speed["online"] / speed["plain"],
        "cache_build_seconds": cache_seconds,
        "cache_arrow_bytes": cache_bytes,
        "kd_relative_error": errors,
    }
    md = [
        f"Tiny recipe: V={V}, block {data_args.block_size}, batch 16, {a.steps} steps, {a.threads} CPU threads, "
        f"best of {a.repeats} interleaved runs; teacher trained {a.teacher_steps} steps; cache k=32, float16 "
        f"({cache_bytes / 2**20:.1f} MiB for {len(train)} blocks, built in {cache_seconds:.1f} s).",
        "",
        "| training | samples/s | vs plain |",
        "|---|---:|---:|",
        f"| plain (no KD, alpha=0) | {speed['plain']:.1f} | 1.00x |",
        f"| from cache (k=32, alpha=0.5, no teacher) | {speed['cache']:.1f} | {speed['cache'] / speed['plain']:.2f}x |",
        f"| online teacher (alpha=0.5) | {speed['online']:.1f} | {speed['online'] / speed['plain']:.2f}x |",
        "",
        f"Relative error of kd_loss (forward KL, T={T}) from a float16 top-k cache vs online, over {len(rows)} "
        "training blocks (negative = underestimate):",
        "",
        "| student | online kd_loss | k=8 | k=32 | k=128 | k=V |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in errors.items():
        md.append(
            f"| {name} | {e['online_kd']:.4f} | "
            + " | ".join(f"{100 * e[c]:+.2f}%" for c in ("k=8", "k=32", "k=128", "k=V"))
            + " |"
        )
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    from _measure import provenance

    with open(os.path.join(out, "teacher_cache.json"), "w") as f:
        json.dump({"provenance": provenance(), **result}, f, indent=2)
    with open(os.path.join(out, "teacher_cache.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
