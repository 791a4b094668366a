"""`DistillationTrainer` against TRL's supervised KD trainer (`GKDTrainer`, lmbda=0, beta=0), side by side.

TRL is installed in its own virtual environment (`--venv`, default `/tmp/scaledown-trl-venv`; created
without system site-packages on first use: `pip install torch==<this torch> trl==<--trl-version>`),
so it cannot change the project's environment. Both sides run the same script as a worker, ours
in this interpreter and TRL's in the venv's, each in a fresh subprocess, on:

* the same tiny Llama teacher and student (built here, `save_pretrained` to a temp dir, safetensors),
  the same word-level tokenizer, the same rows (fixed-width padded tensors in a safetensors file, a
  stacking collator, the Trainer's seeded sampler: the same batches in the same order);
* the same training arguments: AdamW, constant LR, float32 (`bf16=False`: TRL's configs default
  to bf16), no gradient checkpointing (TRL's configs default to it), one process, `--threads`.

What the two losses are (read from `trl/experimental/gkd/gkd_trainer.py`, TRL 1.16):
`GKDTrainer.compute_loss` calls `generalized_jsd_loss(student, teacher, labels, beta)` *without* a
temperature (`GKDConfig.temperature` is only the sampling temperature of on-policy generation), so
its KD is at T = 1. With beta = 0 it is `F.kl_div(log p_student, log p_teacher, log_target=True)`
= sum_v p_t (log p_t - log p_s) = KL(teacher || student), the forward KL, summed over unmasked
shifted positions and divided by `num_items_in_batch` (else their count). There is no CE term and
no T^2. lmbda = 0 (and seq_kd = False) means no generation: the dataset's sequences are used
(`random.random() <= 0` is never true). Ours therefore runs with alpha = 1 (no CE), T = 1 (T^2 = 1),
kd_kind = forward_kl: the same quantity, so the losses must agree on the same batch.

Measured per side: the loss of the untrained student on the first batch (through each trainer's
own `compute_loss`, with gradients enabled, i.e. the training code path), the logged loss of every
step, throughput over `--steps` optimizer steps of `trainer.train()` after `--warmup` steps, and
memory: peak RSS of the process (`ru_maxrss`) and the peak RSS growth during `train()` (VmHWM
after `/proc/self/clear_refs`, with glibc told to mmap allocations > 64 KiB so RSS follows live
tensors). Sides alternate (ours, TRL, ours, TRL, ...) for `--repeats` rounds; best throughput and
lowest memory of each side are reported.

    .venv/bin/python benchmarks/bench_vs_trl.py                       # creates the TRL venv if needed
    .venv/bin/python benchmarks/bench_vs_trl.py --venv /path/to/venv --steps 20 --repeats 1

Writes `benchmarks/results/vs_trl.{json,md}` and prints the Markdown table. If TRL cannot be
installed or run, the table says why and no TRL numbers are written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MALLOC_ENV, reset_peak, status_kib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


# ---- worker (runs in either environment; imports `distill` only for our side) ---------------------

def worker(args) -> dict:
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    tok = AutoTokenizer.from_pretrained(work / "student")
    student = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32)
    data = load_file(str(work / "data.safetensors"))
    dataset = Dataset.from_dict({k: v.tolist() for k, v in data.items()})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())

    timer = Timer()
    common = dict(
        output_dir=str(work / f"out-{args.worker}"), per_device_train_batch_size=args.B, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=1e-4, optim="adamw_torch", lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
        seed=0, data_seed=0, disable_tqdm=True, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    if args.worker == "ours":
        sys.path.insert(0, str(ROOT))
        from distill import DistillationConfig, DistillationTrainer

        cfg = DistillationConfig(alpha=1.0, temperature=1.0, kd_kind="forward_kl", **common)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=dataset,
                                      processing_class=tok, data_collator=collate, callbacks=[timer])
        import distill

        version = getattr(distill, "__version__", "repo")
    else:
        import trl
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        cfg = GKDConfig(lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0, max_length=args.T, **common)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=dataset,
                             processing_class=tok, data_collator=collate, callbacks=[timer])
        version = trl.__version__

    # Loss on the first batch, untrained student, through the trainer's own training code path.
    batch = collate([dataset[i] for i in range(args.B)])
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    trainer.model.train()
    first_loss = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n_items))
    if args.worker == "ours":
        trainer._train_sums = trainer._zero_sums()  # forget the probe's logging sums

    rss0 = status_kib("VmRSS")
    exact = reset_peak()
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    growth_kib = status_kib("VmHWM") - rss0 if exact else None
    ends = timer.ends
    timed = ends[-1] - ends[args.warmup - 1] if args.warmup > 0 else ends[-1] - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    tokens = args.B * args.T
    return dict(
        side=args.worker, version=version, torch=torch.__version__, first_batch_loss=first_loss,
        step_losses=losses, steps_timed=args.steps, seconds=timed, steps_per_s=args.steps / timed,
        tokens_per_s=args.steps * tokens / timed, train_wall_s=wall,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        train_growth_mib=None if growth_kib is None else growth_kib / 1024, threads=torch.get_num_threads(),
    )


# ---- driver (project venv) -------------------------------------------------------------------------

def ensure_trl_venv(venv: Path, trl_version: str, torch_version: str) -> tuple[Path | None, str]:
    """Return (python, log); create the venv and install TRL when it has none."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import trl, torch, transformers; print(trl.__version__, torch.__version__, transformers.__version__)"]
    if py.exists():
        r = subprocess.run(probe, capture_output=True, text=True)
        if r.returncode == 0:
            return py, "reused: " + r.stdout.strip()
    log = []
    for cmd in (
        [sys.executable if not hasattr(sys, "base_prefix") else os.path.join(sys.base_prefix, "bin", "python3"),
         "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", f"torch=={torch_version}", f"trl=={trl_version}"],
    ):
        print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        log.append(r.stderr[-2000:])
        if r.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n" + r.stderr[-2000:]
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode != 0:
        return None, "TRL installed but does not import:\n" + r.stderr[-2000:]
    return py, "installed: " + r.stdout.strip()


def build_inputs(work: Path, args) -> None:
    """Tiny teacher/student, a word-level tokenizer of V tokens, and the training rows."""
    import random

    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, args.V)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                  pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="t3")

    def llama(spec, seed):
        hidden, layers = map(int, spec.split("x"))
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=args.V, hidden_size=hidden, intermediate_size=int(8 / 3 * hidden) // 8 * 8,
            num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 32),
            max_position_embeddings=args.T, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
            initializer_range=0.1,  # sharper random distributions: a KL well away from 0
        ))

    for name, spec, seed in (("teacher", args.teacher, 1), ("student", args.student, 0)):
        model = llama(spec, seed)
        model.save_pretrained(work / name)
        tok.save_pretrained(work / name)
    rng = random.Random(0)
    n = args.B * (args.warmup + args.steps)
    ids = torch.zeros(n, args.T, dtype=torch.long)
    mask = torch.zeros(n, args.T, dtype=torch.long)
    labels = torch.full((n, args.T), -100, dtype=torch.long)
    for i in range(n):
        length = rng.randint(args.T // 2, args.T)
        prompt = rng.randint(0, length // 4)
        row = torch.tensor([rng.randrange(3, args.V) for _ in range(length)])
        ids[i, :length], mask[i, :length] = row, 1
        labels[i, prompt:length] = row[prompt:]
    save_file({"input_ids": ids, "attention_mask": mask, "labels": labels}, str(work / "data.safetensors"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "scaledown-trl-venv"))
    p.add_argument("--trl-version", default="1.16.0")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--V", type=int, default=4096)
    p.add_argument("--teacher", default="256x4", help="hidden x layers")
    p.add_argument("--student", default="128x2", help="hidden x layers")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker is not None:
        print("RESULT " + json.dumps(worker(args)))
        return

    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir")}
    config.update(python=platform.python_version(), machine=platform.machine(), torch=torch.__version__)
    trl_py, venv_log = ensure_trl_venv(Path(args.venv), args.trl_version, torch.__version__.split("+")[0])
    print("TRL venv:", venv_log.splitlines()[0] if venv_log else "", flush=True)
    if trl_py is None:
        msg = f"TRL could not be set up, no comparison was run.\n\n```\n{venv_log}\n```"
        (RESULTS / "vs_trl.json").write_text(json.dumps(dict(config=config, error=venv_log), indent=2))
        (RESULTS / "vs_trl.md").write_text(msg + "\n")
        sys.exit(msg)

    env = dict(os.environ, **MALLOC_ENV,
               TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        work = Path(tmp)
        build_inputs(work, args)
        for r in range(args.repeats):
            for side, py in (("ours", sys.executable), ("trl", str(trl_py))):
                if side in errors:
                    continue
                cmd = [py, os.path.abspath(__file__), "--worker", side, "--workdir", str(work)] + [
                    f"--{k}={getattr(args, k)}" for k in ("B", "T", "V", "steps", "warmup", "threads")]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                if res.returncode != 0 or not lines:
                    errors[side] = res.stderr[-3000:]
                    print(f"{side} worker failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs[side].append(json.loads(lines[-1][len("RESULT "):]))
                print(f"round {r} {side}: {runs[side][-1]['steps_per_s']:.2f} steps/s", flush=True)
    if errors:
        msg = "A side failed; no comparison written.\n\n" + "\n".join(f"{k}:\n```\n{v}\n```" for k, v in errors.items())
        (RESULTS / "vs_trl.json").write_text(json.dumps(dict(config=config, error=errors, runs=runs), indent=2))
        (RESULTS / "vs_trl.md").write_text(msg + "\n")
        sys.exit(msg)

    def best(side):
        rs = runs[side]
        return dict(
            version=rs[0]["version"], first_batch_loss=rs[0]["first_batch_loss"], step_losses=rs[0]["step_losses"],
            steps_per_s=max(r["steps_per_s"] for r in rs), tokens_per_s=max(r["tokens_per_s"] for r in rs),
            peak_rss_mib=min(r["peak_rss_mib"] for r in rs),
            train_growth_mib=min((r["train_growth_mib"] for r in rs if r["train_growth_mib"] is not None), default=None),
        )

    ours, trl = best("ours"), best("trl")
    loss_diff = abs(ours["first_batch_loss"] - trl["first_batch_loss"])
    traj_diff = max(abs(a - b) for a, b in zip(ours["step_losses"], trl["step_losses"]))
    thr = ours["steps_per_s"] / trl["steps_per_s"]
    mem = ours["peak_rss_mib"] / trl["peak_rss_mib"]
    growth = (ours["train_growth_mib"] / trl["train_growth_mib"]) if ours["train_growth_mib"] and trl["train_growth_mib"] else None
    loss_ok = loss_diff <= 1e-4 * max(1.0, abs(trl["first_batch_loss"]))
    targets = dict(equal_loss=loss_ok, throughput_ge_1=thr >= 1.0, peak_memory_le_1=mem <= 1.0,
                   train_growth_le_1=None if growth is None else growth <= 1.0)
    header = (
        f"Teacher {args.teacher}, student {args.student} (hidden x layers, Llama), B={args.B}, T={args.T}, "
        f"V={args.V}; forward KL at T=1, no CE (ours: alpha=1, temperature=1; TRL GKDTrainer: lmbda=0, beta=0); "
        f"AdamW lr 1e-4, float32, no gradient checkpointing, {args.threads} CPU thread(s), torch "
        f"{config['torch']}, TRL {trl['version']}. Throughput: {args.steps} `train()` steps after {args.warmup} "
        f"warm-up, best of {args.repeats} alternating fresh processes per side; memory: lowest of them."
    )
    fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [
        header, "",
        "| | scaledown DistillationTrainer | TRL GKDTrainer | ours / TRL | target |",
        "|---|---:|---:|---:|---|",
        f"| loss, first batch (untrained student) | {ours['first_batch_loss']:.6f} | {trl['first_batch_loss']:.6f} | "
        f"diff {loss_diff:.1e} | equal: {'met' if loss_ok else 'NOT met'} |",
        f"| max logged-loss diff over {len(ours['step_losses'])} steps | | | {traj_diff:.1e} | |",
        f"| throughput, steps/s | {ours['steps_per_s']:.2f} | {trl['steps_per_s']:.2f} | {thr:.2f}x | "
        f">= 1.0x: {'met' if thr >= 1 else 'NOT met'} |",
        f"| throughput, tokens/s (padded) | {ours['tokens_per_s']:.0f} | {trl['tokens_per_s']:.0f} | {thr:.2f}x | |",
        f"| peak RSS of the process, MiB | {ours['peak_rss_mib']:.0f} | {trl['peak_rss_mib']:.0f} | {mem:.2f}x | "
        f"<= 1.0x: {'met' if mem <= 1 else 'NOT met'} |",
        f"| peak RSS growth during train(), MiB | {fmt(ours['train_growth_mib'])} | {fmt(trl['train_growth_mib'])} | "
        f"{'-' if growth is None else f'{growth:.2f}x'} | |",
    ]
    table = "\n".join(lines)
    out = dict(config=config, venv=venv_log, ours=ours, trl=trl, runs=runs, first_batch_loss_abs_diff=loss_diff,
               max_step_loss_abs_diff=traj_diff, throughput_ratio=thr, peak_rss_ratio=mem, train_growth_ratio=growth,
               targets=targets)
    (RESULTS / "vs_trl.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "vs_trl.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
