"""`DistillationTrainer` against TRL's `GKDTrainer` (beta=0), supervised (lmbda=0) or on-policy (lmbda=1), side by side.

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

On-policy, `--lmbda 1` (read from the same file): every step of both trainers is on-policy (TRL:
`random.random() <= 1`; ours: `step_is_on_policy` at lmbda = 1). TRL's `training_step` calls the
unwrapped student's `generate(input_ids=inputs["prompts"], attention_mask=inputs["prompt_attention_mask"])`
with `do_sample=True` always, `temperature=GKDConfig.temperature`, `top_k=0`, `top_p=1`, the KV cache,
`max_new_tokens`, eos from the student's generation config; the completion counts up to and including
its first eos, the prompt and everything after that eos get label -100 (and attention 0 after it), and
`compute_loss` is the same shifted forward KL at T = 1 as above on those labels (beta=0). Ours
(`distill/data/on_policy.py`) does the same on its own code: prompt = the tokens before the first
target, continuation up to and including the first eos, loss on the continuation alone. Made equal here:
* greedy on both sides: ours `generation_temperature=0`; TRL cannot switch sampling off through its
  config, so it samples at temperature 1e-6, where `softmax(logits / 1e-6)` puts all mass on the argmax
  (the script checks rather than assumes it: each step's continuations are compared between the sides);
* every prompt has `--prompt-len` tokens, so there is no padding in the prompts: TRL's prompts would be
  left-padded, and its training forward (attention mask, no position ids) then places the tokens at other
  positions than ours (right-padded), a different logit for the same text;
* the divisor: TRL divides the summed divergence by the `num_items_in_batch` the Trainer counted on the
  *dataset's* labels before `training_step` replaced them, ours by the number of generated tokens.
  Every row here has a reference completion of exactly `--max-new-tokens` tokens, so the two divisors
  are equal as long as no continuation stops early at eos (counted and reported per side; with early
  stops TRL's loss is that much smaller).
With `--generation-temperature 0` (default) the continuations, and hence the losses of every step, must
agree; with `--generation-temperature > 0` both sides sample from different random streams, so only
throughput and the loss magnitude compare. Also measured: generated tokens/s (tokens up to and including
eos, over the timed steps), captured by wrapping the student's `generate`.

    .venv/bin/python benchmarks/bench_vs_trl.py                       # creates the TRL venv if needed
    .venv/bin/python benchmarks/bench_vs_trl.py --venv /path/to/venv --steps 20 --repeats 1
    .venv/bin/python benchmarks/bench_vs_trl.py --lmbda 1             # on-policy, greedy
    .venv/bin/python benchmarks/bench_vs_trl.py --lmbda 1 --generation-temperature 1

Writes `benchmarks/results/vs_trl.{json,md}` (on-policy: `vs_trl_onpolicy.{json,md}`, sampled:
`vs_trl_onpolicy_sampled.{json,md}`) and prints the Markdown table. If TRL cannot be installed or run,
the table says why and no TRL numbers are written.
"""

from __future__ import annotations

import argparse
import hashlib
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
from _measure import MALLOC_ENV, provenance, reset_peak, status_kib  # noqa: E402

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

    def collate_with_prompts(rows):  # TRL generates from `prompts` / `prompt_attention_mask`
        batch = collate(rows)
        return dict(
            batch,
            prompts=batch["input_ids"][:, : args.prompt_len],
            prompt_attention_mask=batch["attention_mask"][:, : args.prompt_len],
        )

    on_policy = args.lmbda > 0
    continuations = capture_continuations(student, eos_id=tok.eos_token_id) if on_policy else []

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())

    timer = Timer()
    common = dict(
        output_dir=str(work / f"out-{args.worker}"),
        per_device_train_batch_size=args.B,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    if args.worker == "ours":
        sys.path.insert(0, str(ROOT))
        from distill import DistillationConfig, DistillationTrainer

        cfg = DistillationConfig(
            alpha=1.0,
            temperature=1.0,
            kd_kind="forward_kl",
            lmbda=args.lmbda,
            max_new_tokens=args.max_new_tokens,
            generation_temperature=args.generation_temperature,
            **common,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=cfg,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=collate,
            callbacks=[timer],
        )
        import distill

        version = getattr(distill, "__version__", "repo")
    else:
        import trl
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        # GKDConfig.temperature is only the sampling temperature of on-policy generation (always do_sample=True).
        sampling_t = (args.generation_temperature or NEAR_GREEDY_TEMPERATURE) if on_policy else 1.0
        cfg = GKDConfig(
            lmbda=args.lmbda,
            beta=0.0,
            seq_kd=False,
            temperature=sampling_t,
            max_length=args.T,
            max_new_tokens=args.max_new_tokens,
            **common,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=cfg,
            train_dataset=dataset,
            processing_class=tok,
            data_collator=collate_with_prompts if on_policy else collate,
            callbacks=[timer],
        )
        version = trl.__version__

    # Loss on the first batch, untrained student, through the trainer's own training code path. On-policy, the
    # batch is generated inside the training step, so the first logged step loss is that loss (below).
    first_loss = None
    if not on_policy:
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
    generated = {}
    if on_policy:
        if len(continuations) != args.warmup + args.steps:
            raise RuntimeError(f"{len(continuations)} generate() calls for {args.warmup + args.steps} steps")
        per_step = [sum(len(c) for c in step) for step in continuations]
        generated = dict(
            generated_tokens_per_step=per_step,
            generated_tokens_per_s=sum(per_step[args.warmup :]) / timed,
            continuation_digests=[
                hashlib.sha1(json.dumps(step).encode()).hexdigest() for step in continuations
            ],
            first_step_continuations=continuations[0],
            rows_stopped_by_eos=sum(c[-1] == tok.eos_token_id for step in continuations for c in step if c),
            pad_tokens_generated=sum(c.count(tok.pad_token_id) for step in continuations for c in step),
        )
        first_loss = losses[0]
    return dict(
        side=args.worker,
        version=version,
        torch=torch.__version__,
        first_batch_loss=first_loss,
        **generated,
        step_losses=losses,
        steps_timed=args.steps,
        seconds=timed,
        steps_per_s=args.steps / timed,
        tokens_per_s=args.steps * tokens / timed,
        train_wall_s=wall,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        train_growth_mib=None if growth_kib is None else growth_kib / 1024,
        threads=torch.get_num_threads(),
    )


NEAR_GREEDY_TEMPERATURE = 1e-6  # TRL always samples; logits / 1e-6 make sampling pick the argmax


def capture_continuations(model, eos_id: int) -> list:
    """Wrap ``model.generate`` (both trainers call it on the unwrapped student with ``input_ids=`` the prompts)
    and collect, per call, each row's continuation up to and including its first eos."""
    calls = []
    original = model.generate

    def generate(*a, **kw):
        out = original(*a, **kw)
        sequences = out.sequences if hasattr(out, "sequences") else out
        rows = []
        for cont in sequences[:, kw["input_ids"].shape[1] :].tolist():
            rows.append(cont[: cont.index(eos_id) + 1] if eos_id in cont else cont)
        calls.append(rows)
        return out

    model.generate = generate
    return calls


# ---- driver (project venv) -------------------------------------------------------------------------


def ensure_trl_venv(venv: Path, trl_version: str, torch_version: str) -> tuple[Path | None, str]:
    """Return (python, log); create the venv and install TRL when it has none."""
    py = venv / "bin" / "python"
    probe = [
        str(py),
        "-c",
        "import trl, torch, transformers; print(trl.__version__, torch.__version__, transformers.__version__)",
    ]
    if py.exists():
        r = subprocess.run(probe, capture_output=True, text=True)
        if r.returncode == 0:
            return py, "reused: " + r.stdout.strip()
    log = []
    for cmd in (
        [
            sys.executable
            if not hasattr(sys, "base_prefix")
            else os.path.join(sys.base_prefix, "bin", "python3"),
            "-m",
            "venv",
            str(venv),
        ],
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
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="t3",
    )

    def llama(spec, seed):
        hidden, layers = map(int, spec.split("x"))
        torch.manual_seed(seed)
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=args.V,
                hidden_size=hidden,
                intermediate_size=int(8 / 3 * hidden) // 8 * 8,
                num_hidden_layers=layers,
                num_attention_heads=max(1, hidden // 32),
                num_key_value_heads=max(1, hidden // 32),
                max_position_embeddings=args.T,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                tie_word_embeddings=True,
                initializer_range=0.1,  # sharper random distributions: a KL well away from 0
            )
        )

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
        if args.lmbda > 0:  # a prompt of prompt_len tokens and a reference completion of max_new_tokens
            length, prompt = args.prompt_len + args.max_new_tokens, args.prompt_len
        row = torch.tensor([rng.randrange(3, args.V) for _ in range(length)])
        ids[i, :length], mask[i, :length] = row, 1
        labels[i, prompt:length] = row[prompt:]
    save_file({"input_ids": ids, "attention_mask": mask, "labels": labels}, str(work / "data.safetensors"))


def write_on_policy(args, config: dict, venv_log: str, runs: dict, stem: str) -> None:
    """The lmbda = 1 comparison: continuations, losses while they are identical, throughput, memory."""
    first = {
        side: runs[side][0] for side in ("ours", "trl")
    }  # continuations and losses: round 0 of each side
    digests = [
        a == b for a, b in zip(first["ours"]["continuation_digests"], first["trl"]["continuation_digests"])
    ]
    same_steps = (
        digests.index(False) if False in digests else len(digests)
    )  # leading steps with equal continuations
    diffs = [abs(a - b) for a, b in zip(first["ours"]["step_losses"], first["trl"]["step_losses"])]
    loss_diff = diffs[0]
    same_diff = max(diffs[:same_steps]) if same_steps else None
    stopped = {s: first[s]["rows_stopped_by_eos"] for s in first}
    best = {
        s: dict(
            steps_per_s=max(r["steps_per_s"] for r in runs[s]),
            generated_tokens_per_s=max(r["generated_tokens_per_s"] for r in runs[s]),
            peak_rss_mib=min(r["peak_rss_mib"] for r in runs[s]),
        )
        for s in first
    }
    ratio = {k: best["ours"][k] / best["trl"][k] for k in best["ours"]}
    greedy = args.generation_temperature == 0
    loss_ok = same_steps > 0 and loss_diff <= 1e-4 * max(1.0, abs(first["trl"]["first_batch_loss"]))
    header = (
        f"On-policy (lmbda = 1): teacher {args.teacher}, student {args.student} (hidden x layers, Llama), B={args.B}, "
        f"V={args.V}, prompts of {args.prompt_len} tokens, continuations of at most {args.max_new_tokens} tokens, "
        + (
            f"greedy (ours: generation_temperature=0; TRL, which always samples: temperature={NEAR_GREEDY_TEMPERATURE}, "
            "top_k=0)"
            if greedy
            else f"sampled at temperature {args.generation_temperature} on both sides"
        )
        + f"; loss forward KL at T=1 on the continuation tokens (ours: alpha=1, kd_kind=forward_kl; TRL GKDTrainer: "
        f"beta=0); AdamW lr 1e-4, float32, {args.threads} CPU thread(s), torch {config['torch']}, TRL "
        f"{first['trl']['version']}. Throughput: {args.steps} `train()` steps after {args.warmup} warm-up, best of "
        f"{args.repeats} alternating fresh processes per side (load average {config['loadavg_start'][0]:.2f} at the "
        f"start, {config['loadavg_end'][0]:.2f} at the end)."
    )
    n = len(digests)
    lines = [
        header,
        "",
        "| | scaledown DistillationTrainer | TRL GKDTrainer | ours / TRL | note |",
        "|---|---:|---:|---:|---|",
        f"| steps whose generated continuations are identical on both sides | | | {sum(digests)} of {n} | "
        f"leading run of equal steps: {same_steps} |",
        f"| loss, step 1 (untrained student, its own continuations) | {first['ours']['first_batch_loss']:.6f} | "
        f"{first['trl']['first_batch_loss']:.6f} | diff {loss_diff:.1e} | "
        + (
            f"equal: {'met' if loss_ok else 'NOT met'} |" if greedy else "different samples: magnitude only |"
        ),
        f"| max logged-loss diff over the {same_steps} leading steps with equal continuations | | | "
        f"{'-' if same_diff is None else f'{same_diff:.1e}'} | |",
        f"| rows whose continuation stopped at eos (all steps) | {stopped['ours']} | {stopped['trl']} | | "
        "early stops: TRL still divides by the dataset's target count, ours by the generated tokens |",
        f"| throughput, steps/s | {best['ours']['steps_per_s']:.2f} | {best['trl']['steps_per_s']:.2f} | "
        f"{ratio['steps_per_s']:.2f}x | |",
        f"| throughput, generated tokens/s | {best['ours']['generated_tokens_per_s']:.0f} | "
        f"{best['trl']['generated_tokens_per_s']:.0f} | {ratio['generated_tokens_per_s']:.2f}x | |",
        f"| peak RSS of the process, MiB | {best['ours']['peak_rss_mib']:.0f} | {best['trl']['peak_rss_mib']:.0f} | "
        f"{ratio['peak_rss_mib']:.2f}x | |",
    ]
    table = "\n".join(lines)
    out = dict(
        provenance=provenance(),
        config=config,
        venv=venv_log,
        best=best,
        ratios=ratio,
        runs=runs,
        identical_continuation_steps=digests,
        leading_identical_steps=same_steps,
        first_step_loss_abs_diff=loss_diff,
        max_step_loss_abs_diff_while_identical=same_diff,
        rows_stopped_by_eos=stopped,
        targets=dict(equal_first_step_loss=loss_ok if greedy else None),
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(table)


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
    p.add_argument(
        "--lmbda",
        type=float,
        choices=[0.0, 1.0],
        default=0.0,
        help="1: on-policy, both trainers train on the student's own continuations of the prompts",
    )
    p.add_argument(
        "--prompt-len", dest="prompt_len", type=int, default=16, help="on-policy: prompt tokens per row"
    )
    p.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=64,
        help="on-policy: longest continuation (every row's reference completion has this length)",
    )
    p.add_argument(
        "--generation-temperature",
        dest="generation_temperature",
        type=float,
        default=0.0,
        help=f"on-policy: 0 = greedy (TRL, which always samples: temperature {NEAR_GREEDY_TEMPERATURE})",
    )
    p.add_argument("--worker", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.lmbda > 0 and args.prompt_len + args.max_new_tokens > args.T:
        p.error(
            f"--prompt-len {args.prompt_len} + --max-new-tokens {args.max_new_tokens} must be <= --T {args.T}"
        )

    if args.worker is not None:
        print("RESULT " + json.dumps(worker(args)))
        return

    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = (
        "vs_trl"
        if args.lmbda == 0
        else "vs_trl_onpolicy"
        if args.generation_temperature == 0
        else "vs_trl_onpolicy_sampled"
    )
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir")}
    config.update(
        python=platform.python_version(),
        machine=platform.machine(),
        torch=torch.__version__,
        loadavg_start=os.getloadavg(),
    )
    trl_py, venv_log = ensure_trl_venv(Path(args.venv), args.trl_version, torch.__version__.split("+")[0])
    print("TRL venv:", venv_log.splitlines()[0] if venv_log else "", flush=True)
    if trl_py is None:
        msg = f"TRL could not be set up, no comparison was run.\n\n```\n{venv_log}\n```"
        (RESULTS / f"{stem}.json").write_text(
            json.dumps(dict(provenance=provenance(), config=config, error=venv_log), indent=2)
        )
        (RESULTS / f"{stem}.md").write_text(msg + "\n")
        sys.exit(msg)

    env = dict(os.environ, **MALLOC_ENV, TOKENIZERS_PARALLELISM="false", PYTHONPATH="")
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
                    f"--{k.replace('_', '-')}={getattr(args, k)}"
                    for k in (
                        "B",
                        "T",
                        "V",
                        "steps",
                        "warmup",
                        "threads",
                        "lmbda",
                        "prompt_len",
                        "max_new_tokens",
                        "generation_temperature",
                    )
                ]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                if res.returncode != 0 or not lines:
                    errors[side] = res.stderr[-3000:]
                    print(f"{side} worker failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs[side].append(json.loads(lines[-1][len("RESULT ") :]))
                runs[side][-1]["loadavg"] = os.getloadavg()
                print(f"round {r} {side}: {runs[side][-1]['steps_per_s']:.2f} steps/s", flush=True)
    if errors:
        msg = "A side failed; no comparison written.\n\n" + "\n".join(
            f"{k}:\n```\n{v}\n```" for k, v in errors.items()
        )
        (RESULTS / f"{stem}.json").write_text(
            json.dumps(dict(provenance=provenance(), config=config, error=errors, runs=runs), indent=2)
        )
        (RESULTS / f"{stem}.md").write_text(msg + "\n")
        sys.exit(msg)

    config["loadavg_end"] = os.getloadavg()
    if args.lmbda > 0:
        return write_on_policy(args, config, venv_log, runs, stem)

    def best(side):
        rs = runs[side]
        return dict(
            version=rs[0]["version"],
            first_batch_loss=rs[0]["first_batch_loss"],
            step_losses=rs[0]["step_losses"],
            steps_per_s=max(r["steps_per_s"] for r in rs),
            tokens_per_s=max(r["tokens_per_s"] for r in rs),
            peak_rss_mib=min(r["peak_rss_mib"] for r in rs),
            train_growth_mib=min(
                (r["train_growth_mib"] for r in rs if r["train_growth_mib"] is not None), default=None
            ),
        )

    ours, trl = best("ours"), best("trl")
    loss_diff = abs(ours["first_batch_loss"] - trl["first_batch_loss"])
    traj_diff = max(abs(a - b) for a, b in zip(ours["step_losses"], trl["step_losses"]))
    thr = ours["steps_per_s"] / trl["steps_per_s"]
    mem = ours["peak_rss_mib"] / trl["peak_rss_mib"]
    growth = (
        (ours["train_growth_mib"] / trl["train_growth_mib"])
        if ours["train_growth_mib"] and trl["train_growth_mib"]
        else None
    )
    loss_ok = loss_diff <= 1e-4 * max(1.0, abs(trl["first_batch_loss"]))
    targets = dict(
        equal_loss=loss_ok,
        throughput_ge_1=thr >= 1.0,
        peak_memory_le_1=mem <= 1.0,
        train_growth_le_1=None if growth is None else growth <= 1.0,
    )
    header = (
        f"Teacher {args.teacher}, student {args.student} (hidden x layers, Llama), B={args.B}, T={args.T}, "
        f"V={args.V}; forward KL at T=1, no CE (ours: alpha=1, temperature=1; TRL GKDTrainer: lmbda=0, beta=0); "
        f"AdamW lr 1e-4, float32, no gradient checkpointing, {args.threads} CPU thread(s), torch "
        f"{config['torch']}, TRL {trl['version']}. Throughput: {args.steps} `train()` steps after {args.warmup} "
        f"warm-up, best of {args.repeats} alternating fresh processes per side; memory: lowest of them."
    )
    fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    lines = [
        header,
        "",
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
    out = dict(
        provenance=provenance(),
        config=config,
        venv=venv_log,
        ours=ours,
        trl=trl,
        runs=runs,
        first_batch_loss_abs_diff=loss_diff,
        max_step_loss_abs_diff=traj_diff,
        throughput_ratio=thr,
        peak_rss_ratio=mem,
        train_growth_ratio=growth,
        targets=targets,
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
