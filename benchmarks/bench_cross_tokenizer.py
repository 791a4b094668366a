"""Cross-tokenizer distillation: KD with gold and with uld against labels alone, and side by side with TRL's GOLD.

Part 1 (quality, `distill train` only). A teacher with its own 2,048-token byte-level BPE
(`recipes/tiny/causal_lm_teacher.yaml`) and a student with its own 1,024-token BPE
(`recipes/tiny/causal_lm_cross_tokenizer.yaml`), both trained on the offline corpus (CPython's docs and
docstrings). Three arms at equal steps, the same student, data and seeds: `cross_tokenizer_loss: gold`,
`cross_tokenizer_loss: uld`, and labels only (`alpha: 0`, no teacher). The student's held-out loss is
per token of its own tokenizer, so the arms compare directly. Runs are interleaved (seed by seed, arm by
arm) and each is a fresh process (peak RSS from `ru_maxrss`). Defaults: the teacher trained 1,200 steps,
students 300 steps, uld at alpha 0.1: the setting where gold beat labels alone beyond the seed spread
(docs/distilling.md). Results made before (`cross_tokenizer.json`, `cross_tokenizer_trl.json` and the
other files whose config has no `student_model_config`) used a 300-step teacher or 150 student steps as
their config records, and the earlier tied student (`--student-config tie_word_embeddings=true
--warmup-steps 20`).

Part 2 (vs TRL GOLD, TRL in its own venv as in `bench_vs_trl.py`). On the trained teacher, a fresh student
and the same texts, each side runs in its own process:
* loss agreement where the definitions match: with *identical* tokenizers, TRL's GOLD loss
  (`use_uld_loss`, hybrid, `beta=0`, `uld_token_merge_strategy="bayesian"`, which predicts token k from
  position k-1) is the forward KL, as is our gold; both are computed on the same batch, normalised TRL's way
  (per-row mean over aligned spans, then the mean over rows). With the *different* tokenizers both sides'
  numbers are reported too; they differ by definition (TRL's bayesian merge takes the span's last position's
  distribution times the earlier tokens' probabilities, ours the first position's times the later ones';
  TRL's hybrid weighs matched/unmatched by vocabulary overlap, ours adds them);
* steps/s and peak RSS of `trainer.train()` for `--trl-steps` steps (after `--warmup`), ours with gold,
  TRL's GOLDTrainer with the hybrid ULD loss (lmbda=0: no generation), batch `--trl-batch`, texts
  truncated to `--max-length` student tokens.

Part 3 (`--step-time BASELINE_TREE`, alone): where one KD step's time goes, in fresh processes that alternate
between a baseline checkout (e.g. `git archive <commit> distill | tar -x -C /tmp/base`) and this tree, one
thread each, on the same real batches: the collator, the student's and the teacher's forward, the loss
forward, the backward, and a labels-only step on the same batch. Writes `cross_tokenizer_step_time.{json,md}`.

The alpha sweep (`--gold-alphas A ...` and/or `--uld-alphas A ...`, alone): labels only and each loss at each
alpha, same seeds and steps as part 1, with per-seed paired differences; each loss's alpha is chosen on
validation, and every KD arm gets both seed-noise checks (its worst seed against labels only's best seed;
its mean gain against the larger of the two arms' seed ranges, `scaledown.significance.kd_verdict`).
Writes `cross_tokenizer_uld_alpha.{json,md}` (uld alone), else `cross_tokenizer_alpha` or `--results-stem`.

The learning-rate sweep (`--learning-rates R ...`, alone): labels only at each rate, chosen on validation;
writes `cross_tokenizer_lr.{json,md}` (or `--results-stem`). `--learning-rate R` sets the students' rate in
the other modes.

The student's setting (every mode that trains students): `--student-config KEY=VALUE ...` sets fields on top
of the student recipe's `model_config` (e.g. `tie_word_embeddings=false`), `--warmup-steps N` its warmup;
both are recorded in the result's config and header. Every arm gets the same setting, so the pairing holds;
give each setting its own `--workdir` (run directories are named by arm and seed only).

What a seed changes (`--vary`, part 1): `seed` (default) sets TrainingArguments' seed, so both the student's
initialisation and the data order change; `init` keeps the data order (data_seed 0); `data` keeps the
initialisation (seed 0). `--arms labels --vary init` and `--vary data` split labels only's seed spread.

A stronger teacher (`--teacher-steps 1200 --uld-alpha 0.1 --skip-trl --results-stem
cross_tokenizer_strong_teacher`, with its own `--workdir`): part 1 against the same teacher trained 4x
longer, uld at its recommended weight. Every part-1 result reports per-seed paired differences, whether each
KD arm's worst seed beats the best labels-only seed, and test losses per character (teacher and student
losses are per token of different tokenizers, so only per character do they compare).

    .venv/bin/python benchmarks/bench_cross_tokenizer.py                 # parts 1 and 2 (about an hour on 2 busy cores)
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --steps 20 --teacher-steps 20 --seeds 0 --skip-trl   # smoke
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --uld-alphas 0.1 0.25 0.5 --parallel 2
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --workdir runs/xt --teacher-steps 1200 --steps 300 \
        --learning-rates 1e-3 1.5e-3 2e-3 3e-3 6e-3 --parallel 2         # then, at the rate chosen:
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --workdir runs/xt --teacher-steps 1200 --steps 300 \
        --learning-rate 2e-3 --gold-alphas 0.5 0.8 0.95 --uld-alphas 0.1 --results-stem cross_tokenizer_alpha_300
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --step-time /tmp/base --repeats 3 --batches 4
    # the untied student (its own workdir, with the 1,200-step teacher copied in as WORKDIR/teacher):
    .venv/bin/python benchmarks/bench_cross_tokenizer.py --workdir runs/xt_untied --teacher-steps 1200 --steps 300 \
        --student-config tie_word_embeddings=false --warmup-steps 60 --learning-rates 1.5e-3 2e-3 3e-3 4e-3 6e-3 \
        --results-stem cross_tokenizer_untied_lr --parallel 2

Writes `benchmarks/results/cross_tokenizer.{json,md}` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TEACHER_RECIPE = ROOT / "recipes" / "tiny" / "causal_lm_teacher.yaml"
STUDENT_RECIPE = ROOT / "recipes" / "tiny" / "causal_lm_cross_tokenizer.yaml"
PROMPT_TOKENS = 16
ARMS = {
    "labels only": ["--alpha", "0", "--teacher_model_name_or_path", "", "--cross_tokenizer_loss", "none"],
    "KD gold": ["--cross_tokenizer_loss", "gold"],
    "KD uld": ["--cross_tokenizer_loss", "uld"],
}


def _env() -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",  # 1 thread per run: no OpenMP spin-waits on a shared machine
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


# ---- part 1: quality ------------------------------------------------------------------------------


def run_distill(argv: list[str], log: Path) -> dict:
    """`distill train argv` in a fresh process; its results plus the process's peak RSS and wall time."""
    code = (
        "import json, resource, sys, time; from distill.train import main; t = time.perf_counter(); "
        f"r = main({argv!r}); r['wall_s'] = time.perf_counter() - t; "
        "r['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
        "print('RESULT ' + json.dumps(r))"
    )
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=f, text=True, env=_env()
        )
    if proc.returncode != 0:
        raise RuntimeError(f"distill train failed (exit {proc.returncode}); see {log}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


SEED_ARGS = {  # what a benchmark seed s changes (`--vary`): TrainingArguments' seed and data_seed
    "seed": lambda s: ["--seed", str(s)],  # the student's initialisation and the data order
    "init": lambda s: ["--seed", str(s), "--data_seed", "0"],  # the initialisation only
    "data": lambda s: ["--seed", "0", "--data_seed", str(s)],  # the data order only
}


def parse_student_config(items: Optional[list[str]]) -> dict:
    """`--student-config KEY=VALUE ...` as a mapping (values read as YAML: false, 0.02, 4 ...)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE, e.g. tie_word_embeddings=false")
        out[key.strip()] = yaml.safe_load(value)
    return out


def student_model_config(overrides: dict, recipe: Optional[dict] = None) -> dict:
    """The student recipe's model_config with `--student-config`'s fields on top."""
    import yaml

    recipe = recipe or yaml.safe_load(STUDENT_RECIPE.read_text())
    return {**recipe["model_config"], **overrides}


def part1_config(args) -> dict:
    """What a part-1 result records of its setting: the learning rate and warmup (the flags', else the recipe's),
    the students' model_config, and `student_config` (only when given), the fields `--student-config` changed
    in the recipe's."""
    import yaml

    recipe = yaml.safe_load(STUDENT_RECIPE.read_text())
    config = {
        "steps": args.steps,
        "seeds": args.seeds,
        "teacher_steps": args.teacher_steps or 300,
        "vary": args.vary,
        "learning_rate": args.learning_rate or float(recipe["learning_rate"]),
    }
    overrides = parse_student_config(getattr(args, "student_config", None))
    if overrides:
        config["student_config"] = overrides
    warmup = getattr(args, "warmup_steps", None)
    config["warmup_steps"] = recipe.get("warmup_steps", 0) if warmup is None else warmup
    config["student_model_config"] = student_model_config(overrides, recipe)  # what the students were
    return config


def setting_text(cfg: dict) -> str:
    """The students' learning rate and `--student-config` changes, as a report's header says them."""
    text = f" at learning rate {cfg['learning_rate']:g}" if cfg.get("learning_rate") else ""
    if cfg.get("warmup_steps") is not None:
        text += f", {cfg['warmup_steps']} warmup steps"
    if cfg.get("student_config"):
        changes = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg["student_config"].items())
        text += f" (recipe's model_config with {changes})"
    elif "tie_word_embeddings" in cfg.get("student_model_config", {}):
        tied = cfg["student_model_config"]["tie_word_embeddings"]
        text += f" (the recipe's student, {'tied' if tied else 'untied'} embeddings)"
    return text


VARY_TEXT = {
    "seed": "",
    "init": " (a seed changes the student's initialisation only; data order fixed, data_seed 0)",
    "data": " (a seed changes the data order only; initialisation fixed, seed 0)",
}


def run_dir(work: Path, arm: str, seed: int, vary: str = "seed") -> Path:
    return work / f"{arm.replace(' ', '_')}-{vary}{seed}"


def part1(args, work: Path, arms: dict = ARMS) -> dict:
    teacher = work / "teacher"
    if not (teacher / "all_results.json").exists():
        print("training the teacher", flush=True)
        steps = ["--max_steps", str(args.teacher_steps)] if args.teacher_steps else []
        run_distill(
            ["--config", str(TEACHER_RECIPE), "--output_dir", str(teacher), "--save_strategy", "no", *steps],
            work / "teacher.log",
        )
    teacher_results = json.loads((teacher / "all_results.json").read_text())
    teacher_steps = json.loads((teacher / "trainer_state.json").read_text())["global_step"]
    if args.teacher_steps and teacher_steps != args.teacher_steps:
        raise SystemExit(
            f"--teacher-steps {args.teacher_steps}: {teacher} holds a teacher of {teacher_steps} steps; "
            "pass another --workdir"
        )
    jobs = [(seed, arm) for seed in args.seeds for arm in arms]  # interleaved: seed by seed, arm by arm
    runs = []
    overrides = parse_student_config(getattr(args, "student_config", None))
    model_config = ["--model_config", json.dumps(student_model_config(overrides))] if overrides else []

    def launch(seed, arm):
        vary = getattr(args, "vary", "seed")
        out = run_dir(work, arm, seed, vary)
        argv = ["--config", str(STUDENT_RECIPE), "--teacher_model_name_or_path", str(teacher)]
        argv += ["--output_dir", str(out), *SEED_ARGS[vary](seed), "--max_steps", str(args.steps)]
        # before the arm's flags, so that a sweep arm's own rate wins (the last flag given does)
        if getattr(args, "learning_rate", None) is not None:
            argv += ["--learning_rate", str(args.learning_rate)]
        if getattr(args, "warmup_steps", None) is not None:
            argv += ["--warmup_steps", str(args.warmup_steps)]
        argv += [*model_config, "--overwrite_output_dir", "true", *arms[arm]]
        return run_distill(argv, work / f"{out.name}.log")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [(seed, arm, pool.submit(launch, seed, arm)) for seed, arm in jobs]
        for seed, arm, fut in futures:
            r = fut.result()
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "eval_loss": r["eval_loss"],
                    "test_loss": r.get("test_loss"),
                    "train_steps_per_second": r["train_steps_per_second"],
                    "peak_rss_mib": round(r["peak_rss_mib"], 1),
                }
            )
            print(
                f"{arm:12s} seed {seed}: eval {r['eval_loss']:.4f} test {r.get('test_loss', float('nan')):.4f}",
                flush=True,
            )
    summary = {}
    labels_only = {r["seed"]: r["test_loss"] for r in runs if r["arm"] == "labels only"}
    for arm in arms:
        vals = [r["test_loss"] for r in runs if r["arm"] == arm]
        summary[arm] = {
            "mean_test_loss": statistics.mean(vals),
            "min": min(vals),
            "max": max(vals),
            "spread": max(vals) - min(vals),
            "mean_eval_loss": statistics.mean(r["eval_loss"] for r in runs if r["arm"] == arm),
            "eval_spread": max(r["eval_loss"] for r in runs if r["arm"] == arm)
            - min(r["eval_loss"] for r in runs if r["arm"] == arm),
            "steps_per_second": statistics.mean(r["train_steps_per_second"] for r in runs if r["arm"] == arm),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs if r["arm"] == arm),
        }
        if labels_only and arm != "labels only":  # same seed: same init and data order, so pair them
            diffs = [r["test_loss"] - labels_only[r["seed"]] for r in runs if r["arm"] == arm]
            summary[arm]["paired_diff_vs_labels_only"] = {"mean": statistics.mean(diffs), "per_seed": diffs}
    t = {k: teacher_results.get(k) for k in ("eval_loss", "test_loss", "student_params")}
    t["steps"] = teacher_steps
    return {
        "teacher": t,
        "per_character": per_character(work, teacher, runs, summary),
        "runs": runs,
        "summary": summary,
    }


def per_character(work: Path, teacher: Path, runs: list, summary: dict) -> dict:
    """Test losses in nats per character, so the teacher (per BPE-2048 token) and the students (per BPE-1024
    token) compare: loss per token times tokens per character, the ratio taken over the whole test split of
    the corpus with each side's tokenizer (the runs score a subset of its blocks, so this is approximate)."""
    from transformers import AutoTokenizer

    from distill.data.corpus import python_docs_corpus

    texts = list(python_docs_corpus()["test"]["text"])
    chars = sum(len(t) for t in texts)

    def tokens_per_char(path):
        tok = AutoTokenizer.from_pretrained(path)
        return sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]) / chars

    student_dir = next(d for d in work.glob("labels_only*") if (d / "tokenizer.json").exists())
    t_ratio, s_ratio = tokens_per_char(teacher), tokens_per_char(student_dir)
    teacher_loss = json.loads((teacher / "all_results.json").read_text())["test_loss"]
    out = {"teacher_tokens_per_char": t_ratio, "student_tokens_per_char": s_ratio}
    out["teacher_test_loss"] = teacher_loss * t_ratio
    out["arms_mean_test_loss"] = {arm: s["mean_test_loss"] * s_ratio for arm, s in summary.items()}
    return out


def lr_arms(rates: list[float]) -> dict:
    """Labels only at each learning rate (the student recipe's other fields unchanged)."""
    return {f"labels only lr={lr:g}": ARMS["labels only"] + ["--learning_rate", str(lr)] for lr in rates}


def markdown_lr(res: dict) -> str:
    """The labels-only learning-rate sweep, chosen on validation (test printed for the record)."""
    p1 = res["part1"]
    summary = p1["summary"]
    best = min(summary, key=lambda arm: summary[arm]["mean_eval_loss"])
    md = [
        f"Learning-rate sweep of the BPE-1024 student trained on labels alone"
        f"{setting_text(dict(res['config'], learning_rate=None))}: {res['config']['steps']} steps, "
        f"seeds {res['config']['seeds']}; chosen on validation loss (mean over seeds): **{best.split('=')[1]}**. "
        "Loss per student token; spread = max - min over seeds.",
        "",
        "| learning rate | validation (mean) | validation spread | per seed (validation) | test (mean) | test spread |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        per_seed = ", ".join(f"{r['eval_loss']:.4f}" for r in p1["runs"] if r["arm"] == arm)
        md.append(
            f"| {arm.split('=')[1]} | {s['mean_eval_loss']:.4f} | {s['eval_spread']:.4f} | {per_seed} | "
            f"{s['mean_test_loss']:.4f} | {s['spread']:.4f} |"
        )
    return "\n".join(md)


def alpha_arms(gold_alphas: list[float], uld_alphas: list[float]) -> dict:
    """Labels only, and gold and uld at each of their alphas (the loss is ``alpha * KD + (1 - alpha) * CE``
    at T = 1, so the ULD weight of Boizard et al.'s ``CE + lambda * ULD`` is ``lambda = alpha / (1 - alpha)``)."""
    arms = {"labels only": ARMS["labels only"]}
    for kind, alphas in (("gold", gold_alphas or []), ("uld", uld_alphas or [])):
        for a in alphas:
            arms[f"KD {kind} alpha={a:g}"] = ["--cross_tokenizer_loss", kind, "--alpha", str(a)]
    return arms


def chosen_on_validation(summary: dict) -> dict:
    """Per loss (gold, uld): the alpha whose arm has the lowest mean validation loss over seeds."""
    chosen = {}
    for arm, s in summary.items():
        kind = arm.split()[1] if arm.startswith("KD ") else None
        if kind and (kind not in chosen or s["mean_eval_loss"] < summary[chosen[kind]]["mean_eval_loss"]):
            chosen[kind] = arm
    return chosen


def markdown_sweep(res: dict) -> str:
    """The alpha sweep: every arm's validation and test loss, the arm chosen on validation per loss, and for
    each KD arm its per-seed paired difference against labels only and the two seed-noise checks."""
    from scaledown.significance import kd_verdict

    p1, cfg = res["part1"], res["config"]
    summary = p1["summary"]
    base = summary["labels only"]
    chosen = chosen_on_validation(summary)
    lr = setting_text(cfg)
    md = [
        f"Alpha sweep: BPE-2048 teacher ({p1['teacher'].get('steps', '?')} steps, test loss "
        f"{p1['teacher']['test_loss']:.4f}) -> BPE-1024 student, {cfg['steps']} steps{lr}, seeds {cfg['seeds']}; "
        "loss per student token; paired difference = arm minus labels only at the same seed (negative: KD helps). "
        "Chosen on validation: " + ", ".join(f"**{arm}**" for arm in chosen.values()) + ".",
        "",
        "| arm | lambda = alpha/(1-alpha) | validation (mean) | test (mean) | min | max | paired diff (mean) | "
        "per seed | worst seed beats best labels-only seed | mean gain vs larger seed spread |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        d = s.get("paired_diff_vs_labels_only")
        a = float(arm.split("=")[1]) if "=" in arm else 0.0
        row = (
            f"| {arm} | {a / (1 - a) if a < 1 else float('inf'):.2f} | {s['mean_eval_loss']:.4f} | "
            f"{s['mean_test_loss']:.4f} | {s['min']:.4f} | {s['max']:.4f} | "
        )
        if d:
            gain, spread = -d["mean"], max(s["spread"], base["spread"])
            verdict = kd_verdict(gain, spread, len(d["per_seed"]))["kd_verdict"]
            row += (
                f"{d['mean']:+.4f} | {', '.join(f'{x:+.4f}' for x in d['per_seed'])} | "
                f"{'yes' if s['max'] < base['min'] else 'no'} | {gain:+.4f} vs {spread:.4f}: {verdict} |"
            )
        else:
            row += "- | - | - | - |"
        md.append(row)
    return "\n".join(md)


# ---- part 3: where a KD step's time goes, before/after (`--step-time BASELINE_TREE`) ----------------


def worker_components(args) -> dict:
    """Per-part wall time of one KD step on real batches of the benchmark's setting (the student recipe's
    batch of 16 blocks of 128 tokens, the trained teacher, a fresh student), in whichever tree is first on
    ``sys.path``: the cross-tokenizer collator, the student's forward, the teacher's forward, the loss forward
    and the backward (loss and student); and a labels-only forward + backward of the same batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distill.data.cross_tokenizer import CrossTokenizerCollator
    from distill.losses.cross_tokenizer import SPAN_KEYS, build_vocab_map, cross_tokenizer_distillation_loss
    from distill.train import parse_args, prepare_data
    from distill.trainer.tasks import CausalLMCollator, get_task

    torch.set_num_threads(1)
    work = Path(args.workdir)
    teacher_dir, s_tok_dir = work / "teacher", work / "labels_only-seed0"
    argv = ["--config", str(STUDENT_RECIPE), "--teacher_model_name_or_path", str(teacher_dir)]
    argv += ["--tokenizer_name_or_path", str(s_tok_dir), "--output_dir", str(work / "unused")]
    model_args, data_args, train_args = parse_args(argv)
    s_tok, bundle = prepare_data(model_args, data_args, train_args, get_task("causal-lm"))
    t_tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    torch.manual_seed(0)
    student = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(s_tok),
            hidden_size=96,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            pad_token_id=s_tok.pad_token_id,
        )
    )
    collator = CrossTokenizerCollator(CausalLMCollator(s_tok.pad_token_id), s_tok, t_tok)
    vocab_map = build_vocab_map(s_tok, t_tok) if args.kind == "gold" else None
    parts = ("collate", "student_forward", "teacher_forward", "loss_forward", "backward", "labels_only_step")
    total = dict.fromkeys(parts, 0.0)
    batch_size = train_args.per_device_train_batch_size
    for i in range(args.batches + 1):  # batch 0 warms up
        examples = [bundle.train[j] for j in range(batch_size * i, batch_size * (i + 1))]
        t = [time.perf_counter()]
        batch = collator(examples)
        t.append(time.perf_counter())
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t.append(time.perf_counter())
        with torch.no_grad():
            t_logits = teacher(
                input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
            ).logits
        t.append(time.perf_counter())
        out = cross_tokenizer_distillation_loss(
            s_logits,
            t_logits,
            {k: batch[k] for k in SPAN_KEYS},
            batch["labels"],
            kind=args.kind,
            alpha=0.5,
            temperature=1.0,
            vocab_map=vocab_map,
            student_vocab_size=len(s_tok),
            teacher_vocab_size=len(t_tok),
        )
        t.append(time.perf_counter())
        out.loss.backward()
        student.zero_grad()
        t.append(time.perf_counter())
        ce = student(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        ce.backward()
        student.zero_grad()
        t.append(time.perf_counter())
        if i:
            for k, a, b in zip(parts, t, t[1:]):
                total[k] += (b - a) * 1000 / args.batches
    total["kd_step"] = sum(total[k] for k in parts[:-1])
    total["loss"] = float(out.loss.detach())
    total["spans_per_batch"] = int(batch["xtok_row"].numel())
    return total


def step_time(args, work: Path) -> dict:
    """Interleaved (repeat by repeat, tree by tree) fresh processes of `worker_components`, one thread each:
    the baseline tree (``--step-time``, e.g. a `git archive` of an earlier commit) and this one."""
    trees = {"before": Path(args.step_time).resolve(), "after": ROOT}
    runs = {kind: {name: [] for name in trees} for kind in args.step_kinds}
    for _ in range(args.repeats):
        for kind in args.step_kinds:
            for name, tree in trees.items():
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    "components",
                    "--tree",
                    str(tree),
                ]
                cmd += ["--workdir", str(work), "--kind", kind, "--batches", str(args.batches)]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=dict(_env(), PYTHONPATH=str(tree)), timeout=1800
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"components ({name}, {kind}) failed:\n{proc.stderr[-3000:]}")
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
                runs[kind][name].append(json.loads(line[len("RESULT ") :]))
                print(kind, name, runs[kind][name][-1], flush=True)
    summary = {}
    for kind, by_tree in runs.items():
        summary[kind] = {
            name: {
                k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("loss", "spans_per_batch")
            }
            for name, rs in by_tree.items()
        }
        losses = {name: [r["loss"] for r in rs] for name, rs in by_tree.items()}
        summary[kind]["same_loss"] = max(abs(a - b) for a, b in zip(losses["before"], losses["after"]))
    return {"runs": runs, "summary": summary}


def markdown_step_time(res: dict) -> str:
    cfg = res["config"]
    md = [
        f"Where a KD step's time goes (ms per step, median of {cfg['repeats']} interleaved fresh processes x "
        f"{cfg['batches']} batches, 1 thread; batch 16 x 128 student tokens; before = `{cfg['before']}`).",
        "",
        "| loss | tree | collate | student fwd | teacher fwd | loss fwd | backward | KD step | labels-only step "
        "| KD / labels-only |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, by_tree in res["step_time"]["summary"].items():
        for name in ("before", "after"):
            s = by_tree[name]
            md.append(
                f"| {kind} | {name} | {s['collate']:.0f} | {s['student_forward']:.0f} | {s['teacher_forward']:.0f} | "
                f"{s['loss_forward']:.0f} | {s['backward']:.0f} | {s['kd_step']:.0f} | {s['labels_only_step']:.0f} | "
                f"{s['kd_step'] / s['labels_only_step']:.2f} |"
            )
    return "\n".join(md)


# ---- part 2: vs TRL GOLD (worker runs in either environment) --------------------------------------


def load_texts(path: Path, n: int) -> list[str]:
    return json.loads(path.read_text())[:n]


def worker_agree(args) -> dict:
    """Loss on one batch: identical tokenizers (gold vs TRL's hybrid at beta=0) and the real pair."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    work = Path(args.workdir)
    texts = load_texts(work / "texts.json", args.trl_batch)
    s_tok = AutoTokenizer.from_pretrained(work / "student_init")
    t_tok = AutoTokenizer.from_pretrained(work / "teacher")
    student = AutoModelForCausalLM.from_pretrained(work / "student_init", dtype=torch.float32).eval()
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32).eval()
    same_teacher = AutoModelForCausalLM.from_pretrained(
        work / "student_same_teacher", dtype=torch.float32
    ).eval()
    out = {}
    for case, tt, tm, kinds in (
        ("identical tokenizers", s_tok, same_teacher, ("gold",)),
        ("different tokenizers", t_tok, teacher, ("gold", "uld")),
    ):
        for kind in kinds:
            fn = agree_ours if args.worker == "agree-ours" else agree_trl
            with torch.no_grad():
                out[f"{case}, {kind}"] = fn(texts, s_tok, tt, student, tm, kind, args.max_length)
    return out


def agree_ours(texts, s_tok, t_tok, student, teacher, kind, max_length) -> float:
    import torch

    from distill.data.cross_tokenizer import CrossTokenizerCollator
    from distill.losses.cross_tokenizer import build_vocab_map, span_divergence, span_log_probs
    from distill.trainer.tasks import CausalLMCollator

    rows = [{"input_ids": s_tok(t, add_special_tokens=False)["input_ids"][:max_length]} for t in texts]
    batch = CrossTokenizerCollator(CausalLMCollator(s_tok.pad_token_id), s_tok, t_tok)(rows)
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    t_logits = teacher(
        input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
    ).logits
    s_logits, t_logits = s_logits[..., : len(s_tok)], t_logits[..., : len(t_tok)]
    r = batch["xtok_row"]
    log_ps = span_log_probs(s_logits, batch["xtok_student_pos"], batch["xtok_student_ids"], r, 1.0)
    log_pt = span_log_probs(t_logits, batch["xtok_teacher_pos"], batch["xtok_teacher_ids"], r, 1.0)
    div = span_divergence(log_ps, log_pt, kind, build_vocab_map(s_tok, t_tok))
    per_row = [div[r == i].mean() for i in range(len(rows)) if (r == i).any()]  # TRL's normalisation
    return float(torch.stack(per_row).mean())


def agree_trl(texts, s_tok, t_tok, student, teacher, kind, max_length) -> float:
    import torch
    from trl.experimental.gold.gold_config import GOLDConfig
    from trl.experimental.gold.gold_trainer import ULDLoss, build_teacher_inputs_from_texts
    from trl.experimental.utils import encode_with_byte_offsets

    ids = [s_tok(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    texts = [s_tok.decode(x, clean_up_tokenization_spaces=False) for x in ids]
    # the student's ids and UTF-8 byte offsets as TRL's own data path makes them
    encoded = encode_with_byte_offsets(s_tok.backend_tokenizer, texts, add_special_tokens=False)
    width = max(len(x) for x, _ in encoded) + 1
    B = len(texts)
    s_ids = torch.full((B, width), s_tok.pad_token_id)
    s_labels = torch.full((B, width), -100)
    s_mask = torch.zeros((B, width), dtype=torch.long)
    s_offs = torch.zeros((B, width, 2), dtype=torch.long)
    for i, (x, offs) in enumerate(encoded):
        seq = list(x) + [s_tok.eos_token_id]  # TRL appends eos; uld_skip_*_eos leaves it out of the loss
        s_ids[i, : len(seq)] = torch.tensor(seq)
        s_labels[i, : len(seq)] = torch.tensor(seq)
        s_mask[i, : len(seq)] = 1
        end = len(texts[i].encode())
        s_offs[i, : len(seq)] = torch.tensor([tuple(o) for o in offs] + [(end, end)])
    t_ids, t_labels, t_mask, t_offs = build_teacher_inputs_from_texts(t_tok, [""] * B, texts)
    cfg = GOLDConfig(
        output_dir=tempfile.mkdtemp(),
        use_uld_loss=True,
        use_extended_uld=True,
        uld_use_hybrid_loss=kind == "gold",
        uld_token_merge_strategy="bayesian",
        beta=0.0,
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_skip_student_eos=True,
        uld_skip_teacher_eos=True,
        use_cpu=True,
        bf16=False,
        report_to="none",
    )
    loss_fn = ULDLoss(cfg, student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    s_logits = student(input_ids=s_ids, attention_mask=s_mask).logits
    t_logits = teacher(input_ids=t_ids, attention_mask=t_mask).logits
    return float(
        loss_fn(
            student_logits=s_logits,
            teacher_logits=t_logits,
            student_labels=s_labels,
            teacher_labels=t_labels,
            student_input_ids=s_ids,
            teacher_input_ids=t_ids,
            student_byte_offsets=s_offs,
            teacher_byte_offsets=t_offs,
        )
    )


def worker_speed(args) -> dict:
    """`trainer.train()` steps/s and peak RSS: ours (gold) or TRL's GOLDTrainer (hybrid ULD)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.manual_seed(0)
    work = Path(args.workdir)
    s_tok = AutoTokenizer.from_pretrained(work / "student_init")
    student = AutoModelForCausalLM.from_pretrained(work / "student_init", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher", dtype=torch.float32)
    texts = load_texts(work / "texts.json", args.trl_batch * (args.warmup + args.trl_steps))
    # GOLD needs a prompt: the first PROMPT_TOKENS student tokens of each text (no loss on them, both sides).
    ids = [s_tok(t, add_special_tokens=False)["input_ids"][: args.max_length - 1] for t in texts]
    pairs = [(s_tok.decode(x[:PROMPT_TOKENS]), s_tok.decode(x[PROMPT_TOKENS:])) for x in ids]

    class Timer(TrainerCallback):
        ends: list = []

        def on_step_end(self, a, state, control, **kw):
            Timer.ends.append(time.perf_counter())

    common = dict(
        output_dir=str(work / f"out-{args.worker}"),
        per_device_train_batch_size=args.trl_batch,
        max_steps=args.warmup + args.trl_steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    if args.worker == "speed-ours":
        from distill import DistillationConfig, DistillationTrainer
        from distill.trainer.tasks import CausalLMCollator

        rows = []
        for x in ids:
            seq = x + [s_tok.eos_token_id]
            rows.append({"input_ids": seq, "labels": [-100] * PROMPT_TOKENS + seq[PROMPT_TOKENS:]})
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            teacher_processing_class=AutoTokenizer.from_pretrained(work / "teacher"),
            args=DistillationConfig(alpha=1.0, temperature=1.0, cross_tokenizer_loss="gold", **common),
            train_dataset=Dataset.from_list(rows),
            processing_class=s_tok,
            data_collator=CausalLMCollator(s_tok.pad_token_id),
            callbacks=[Timer()],
        )
    else:
        from trl.experimental.gold import GOLDConfig, GOLDTrainer

        cfg = GOLDConfig(
            lmbda=0.0,
            beta=0.0,
            use_uld_loss=True,
            use_extended_uld=True,
            uld_use_hybrid_loss=True,
            uld_token_merge_strategy="bayesian",
            teacher_tokenizer_name_or_path=str(work / "teacher"),
            max_length=args.max_length + 1,  # + eos, which GOLD appends
            max_completion_length=args.max_length // 2,  # generation only (lmbda=0: none)
            remove_unused_columns=False,
            **common,
        )
        trainer = GOLDTrainer(
            model=student,
            teacher_model=teacher,
            args=cfg,
            train_dataset=Dataset.from_list([{"prompt": a, "completion": b} for a, b in pairs]),
            processing_class=s_tok,
            callbacks=[Timer()],
        )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    ends = Timer.ends
    timed = ends[-1] - ends[args.warmup - 1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps_per_second": args.trl_steps / timed,
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def run_worker(python: str, worker: str, args, work: Path, tree: Optional[str] = None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--workdir", str(work)]
    cmd += ["--tree", tree] if tree else []
    cmd += [
        "--trl-batch",
        str(args.trl_batch),
        "--trl-steps",
        str(args.trl_steps),
        "--warmup",
        str(args.warmup),
    ]
    cmd += ["--max-length", str(args.max_length)]
    env = dict(_env(), PYTHONPATH=tree) if tree else _env()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def prepare_part2(work: Path) -> None:
    """A fresh student (the recipe's student config, seed 0) with the student's tokenizer, a teacher of the
    same architecture on the student's tokenizer (for the identical-tokenizer agreement), and the texts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distill.data.corpus import python_docs_corpus

    s_tok = AutoTokenizer.from_pretrained(work / "labels_only-seed0")
    spec = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    for name, seed in (("student_init", 0), ("student_same_teacher", 1)):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(s_tok),
            num_key_value_heads=4,
            tie_word_embeddings=True,
            max_position_embeddings=1024,
            pad_token_id=s_tok.pad_token_id,
            bos_token_id=s_tok.bos_token_id,
            eos_token_id=s_tok.eos_token_id,
            **spec,
        )
        LlamaForCausalLM(config).save_pretrained(work / name)
        s_tok.save_pretrained(work / name)
    texts = [t for t in python_docs_corpus()["train"]["text"] if len(t) > 400][:2000]
    (work / "texts.json").write_text(json.dumps(texts))


def part2(args, work: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from bench_vs_trl import ensure_trl_venv

    py, venv_log = ensure_trl_venv(Path(args.venv), args.trl_version, torch.__version__.split("+")[0])
    if py is None:
        return {"error": venv_log}
    prepare_part2(work)
    result = {"venv": venv_log}
    result["agreement"] = {"ours": run_worker(sys.executable, "agree-ours", args, work)}
    result["agreement"]["trl"] = run_worker(str(py), "agree-trl", args, work)
    if args.agreement_only:
        return result
    speed = {"ours": [], "trl": []}
    if args.trl_baseline_tree:  # our trainer from an earlier checkout too, in the same rounds
        speed["ours (before)"] = []
    for _ in range(args.repeats):  # interleaved
        if args.trl_baseline_tree:
            before = str(Path(args.trl_baseline_tree).resolve())
            speed["ours (before)"].append(run_worker(sys.executable, "speed-ours", args, work, tree=before))
        speed["ours"].append(run_worker(sys.executable, "speed-ours", args, work))
        speed["trl"].append(run_worker(str(py), "speed-trl", args, work))
    result["speed"] = speed
    return result


# ---- report ---------------------------------------------------------------------------------------


def markdown_paired(p1: dict) -> list:
    """Per-seed paired differences against labels only, and whether each KD arm's worst seed beats the best
    labels-only seed; the teacher and arms per character where measured."""
    best = p1["summary"]["labels only"]["min"]
    md = [
        "| arm | paired diff vs labels only (mean) | per seed | worst seed | beats every labels-only seed |",
        "|---|---|---|---|---|",
    ]
    for arm, s in p1["summary"].items():
        d = s.get("paired_diff_vs_labels_only")
        if d:
            per_seed = ", ".join(f"{x:+.4f}" for x in d["per_seed"])
            beats = "yes" if s["max"] < best else "no"
            md.append(
                f"| {arm} | {d['mean']:+.4f} | {per_seed} | {s['max']:.4f} | {beats} (best {best:.4f}) |"
            )
    pc = p1.get("per_character")
    if pc:
        arms = ", ".join(f"{arm} {v:.4f}" for arm, v in pc["arms_mean_test_loss"].items())
        md += [
            "",
            f"Per character (approx., tokens/char over the test split: teacher {pc['teacher_tokens_per_char']:.4f}, "
            f"student {pc['student_tokens_per_char']:.4f}): teacher {pc['teacher_test_loss']:.4f} nats/char; "
            f"students (mean) {arms}.",
        ]
    return md


def markdown(res: dict) -> str:
    md = []
    p1 = res.get("part1")
    if p1:
        t = p1["teacher"]
        steps = f", {t['steps']} steps" if "steps" in t else ""
        lr = setting_text(res["config"])
        md += [
            f"Teacher (BPE-2048{steps}): test loss {t['test_loss']:.4f} per teacher token. Student: BPE-1024, "
            f"{res['config']['steps']} steps{lr}, seeds {res['config']['seeds']}{VARY_TEXT[res['config'].get('vary', 'seed')]}; "
            "test loss per student token.",
            "",
            "| arm | test loss (mean) | min | max | steps/s | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for arm, s in p1["summary"].items():
            md.append(
                f"| {arm} | {s['mean_test_loss']:.4f} | {s['min']:.4f} | {s['max']:.4f} | "
                f"{s['steps_per_second']:.2f} | {s['peak_rss_mib']:.0f} |"
            )
        paired = markdown_paired(p1)
        if not any("paired_diff_vs_labels_only" in s for s in p1["summary"].values()):  # labels only alone
            paired = paired[3:]  # no KD row: the per-character line only
        md += ["", *paired]
    p2 = res.get("part2")
    if p2:
        md.append("")
        if "error" in p2:
            md.append(f"TRL GOLD: not run ({p2['error'].splitlines()[0]}).")
        else:
            md += ["| batch loss (same batch, TRL's normalisation) | ours | TRL GOLD |", "|---|---|---|"]
            ours, trl = p2["agreement"]["ours"], p2["agreement"]["trl"]
            names = {"gold": "gold / hybrid ULD", "uld": "uld / ULD"}
            for key in ours:
                case, kind = key.rsplit(", ", 1)
                md.append(f"| {case}, {names[kind]} | {ours[key]:.6f} | {trl[key]:.6f} |")
            names = {
                "ours (before)": "scaledown DistillationTrainer, before (the earlier checkout)",
                "ours": "scaledown DistillationTrainer",
                "trl": "TRL GOLDTrainer",
            }
            md += [
                "",
                "| trainer (gold / hybrid ULD) | steps/s (median) | steps/s (best) | peak RSS MiB (lowest) |",
                "|---|---|---|---|",
            ]
            for side, runs in sorted(p2["speed"].items(), key=lambda kv: list(names).index(kv[0])):
                sps = [r["steps_per_second"] for r in runs]
                md.append(
                    f"| {names[side]} | {statistics.median(sps):.2f} | {max(sps):.2f} | "
                    f"{min(r['peak_rss_mib'] for r in runs):.0f} |"
                )
    return "\n".join(md)


def write_results(stem: str, res: dict, text: str) -> None:
    """benchmarks/results/STEM.json (with the provenance) and STEM.md; the Markdown is printed too."""
    from _measure import provenance

    res["provenance"] = provenance()
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    print(text)


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Refuse nonsense before any run starts (argparse's one-line error, exit 2)."""
    for flag, values in (
        ("--gold-alphas", args.gold_alphas),
        ("--uld-alphas", args.uld_alphas),
        ("--uld-alpha", [args.uld_alpha]),
    ):
        bad = [a for a in values or [] if not 0.0 <= a <= 1.0]
        if bad:
            p.error(f"{flag}: {bad[0]:g} is not in [0, 1] (the weight of the KD term; 0 is labels only)")
    try:
        overrides = parse_student_config(args.student_config)
        if overrides:  # an unknown field fails here, not in the first student run after the teacher's
            sys.path.insert(0, str(ROOT))
            from distill.students.model_config import parse_model_config

            parse_model_config(student_model_config(overrides))
    except ValueError as e:
        p.error(f"--student-config: {e}")
    if args.warmup_steps is not None and not 0 <= args.warmup_steps < args.steps:
        p.error(f"--warmup-steps: {args.warmup_steps} is not in [0, --steps {args.steps})")
    rates = (args.learning_rates or []) + ([] if args.learning_rate is None else [args.learning_rate])
    bad = [r for r in rates if not r > 0]
    if bad:
        flag = "--learning-rates" if bad[0] in (args.learning_rates or []) else "--learning-rate"
        p.error(f"{flag}: {bad[0]:g} is not a positive learning rate")
    if args.learning_rates and (args.gold_alphas or args.uld_alphas or args.learning_rate is not None):
        p.error(
            "--learning-rates is a sweep of its own (labels only): run it without --gold-alphas, --uld-alphas "
            "and --learning-rate, then pass the rate it chose as --learning-rate"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "bench_cross_tokenizer"))
    p.add_argument(
        "--steps",
        type=int,
        default=300,
        help="student steps per arm (default 300; results before the untied student used 150)",
    )
    p.add_argument(
        "--teacher-steps",
        type=int,
        default=1200,
        help="the teacher's steps (default 1200, 4x the teacher recipe's 300: with a 300-step teacher the "
        "untied student is as good per character, and KD has nothing to give; docs/distilling.md)",
    )
    p.add_argument(
        "--uld-alpha",
        type=float,
        default=0.1,
        help="part 1: the uld arm's alpha (default 0.1, the weight measured best; the recipe's 0.5 is gold's)",
    )
    p.add_argument(
        "--arms",
        nargs="+",
        choices=["labels", "gold", "uld"],
        default=["labels", "gold", "uld"],
        help="part 1: the arms run (labels only, KD gold, KD uld)",
    )
    p.add_argument(
        "--results-stem", default="cross_tokenizer", help="part 1: writes benchmarks/results/STEM.{json,md}"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--vary",
        choices=list(SEED_ARGS),
        default="seed",
        help="part 1: what a seed changes: seed (the student's init and the data order, the default), init "
        "(data order fixed: data_seed 0) or data (init fixed: seed 0)",
    )
    p.add_argument("--parallel", type=int, default=3, help="student runs at a time (one thread each)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument(
        "--agreement-only", action="store_true", help="part 2: redo the loss agreement, keep speed"
    )
    p.add_argument("--only-trl", action="store_true", help="part 2 only (part 1's results file is kept)")
    p.add_argument(
        "--step-time",
        default=None,
        metavar="BASELINE_TREE",
        help="only part 3: per-part step time of BASELINE_TREE (a checkout of an earlier commit) and this tree",
    )
    p.add_argument(
        "--trl-baseline-tree",
        default=None,
        help="part 2: also time our trainer from this checkout of an earlier commit, in the same rounds",
    )
    p.add_argument("--step-kinds", nargs="+", default=["gold", "uld"], help="part 3: the losses timed")
    p.add_argument("--batches", type=int, default=6, help="part 3: batches timed per process")
    p.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="gold", help=argparse.SUPPRESS)
    p.add_argument(
        "--uld-alphas",
        type=float,
        nargs="+",
        default=None,
        help="only the alpha sweep: labels only and uld at each alpha (alone: cross_tokenizer_uld_alpha.{json,md})",
    )
    p.add_argument(
        "--gold-alphas",
        type=float,
        nargs="+",
        default=None,
        help="only the alpha sweep: labels only and gold at each alpha (with or without --uld-alphas; "
        "cross_tokenizer_alpha.{json,md} unless --results-stem), each loss's alpha chosen on validation",
    )
    p.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=None,
        help="only the learning-rate sweep: labels only at each rate, chosen on validation "
        "(cross_tokenizer_lr.{json,md} unless --results-stem)",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="part 1: the students' learning rate (default: the student recipe's)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="student runs: learning-rate warmup steps (default: the student recipe's)",
    )
    p.add_argument(
        "--student-config",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="student runs: fields set on top of the student recipe's model_config, e.g. "
        "tie_word_embeddings=false (recorded in the result's config)",
    )
    p.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "scaledown-trl-venv"))
    p.add_argument("--trl-version", default="1.16.0")
    p.add_argument("--trl-batch", type=int, default=8)
    p.add_argument("--trl-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="part 2: untimed steps before the timed ones")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    check_args(p, args)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        if args.tree:
            sys.path.insert(0, args.tree)
        fn = {"components": worker_components}.get(args.worker)
        fn = fn or (worker_agree if args.worker.startswith("agree") else worker_speed)
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import provenance

    if args.step_time:
        res = {"config": {"repeats": args.repeats, "batches": args.batches, "before": args.step_time}}
        res["step_time"] = step_time(args, work)
        write_results("cross_tokenizer_step_time", res, markdown_step_time(res))
        return 0
    if args.learning_rates:
        config = {k: v for k, v in part1_config(args).items() if k != "learning_rate"}  # each arm has its own
        res = {"config": dict(config, learning_rates=args.learning_rates)}
        res["part1"] = part1(args, work, lr_arms(args.learning_rates))
        stem = args.results_stem if args.results_stem != "cross_tokenizer" else "cross_tokenizer_lr"
        write_results(stem, res, markdown_lr(res))
        return 0
    if args.uld_alphas or args.gold_alphas:
        config = dict(part1_config(args), gold_alphas=args.gold_alphas, uld_alphas=args.uld_alphas)
        res = {"config": config, "part1": part1(args, work, alpha_arms(args.gold_alphas, args.uld_alphas))}
        stem = args.results_stem
        if stem == "cross_tokenizer":  # the default stem is part 1's
            stem = "cross_tokenizer_uld_alpha" if not args.gold_alphas else "cross_tokenizer_alpha"
        write_results(stem, res, markdown_sweep(res))
        return 0
    if args.results_stem != "cross_tokenizer" and not args.skip_trl:
        raise SystemExit("--results-stem: part 1 only; add --skip-trl (part 2 writes cross_tokenizer_trl)")
    out, out_trl = RESULTS / f"{args.results_stem}.json", RESULTS / "cross_tokenizer_trl.json"
    arms = {k: v for k, v in ARMS.items() if k != "KD uld"}  # uld at its own weight, named by it
    arms[f"KD uld alpha={args.uld_alpha:g}"] = ARMS["KD uld"] + ["--alpha", str(args.uld_alpha)]
    short = {"labels only": "labels", "KD gold": "gold"}
    arms = {k: v for k, v in arms.items() if short.get(k, "uld") in args.arms}
    if "labels" not in args.arms:
        raise SystemExit("--arms: include labels (the other arms are paired against it)")
    if not args.only_trl:
        config = dict(part1_config(args), arms=list(arms))
        if "uld" in args.arms:
            config["uld_alpha"] = args.uld_alpha
        res = {"config": config, "part1": part1(args, work, arms)}
        res["provenance"] = provenance()
        out.write_text(json.dumps(res, indent=1))
    if not args.skip_trl:
        config = {k: getattr(args, k) for k in ("trl_batch", "trl_steps", "warmup", "repeats", "max_length")}
        result = part2(args, work)
        if args.agreement_only:  # keep the speed runs already measured
            result = dict(json.loads(out_trl.read_text())["part2"], **result)
        out_trl.write_text(
            json.dumps({"config": config, "part2": result, "provenance": provenance()}, indent=1)
        )
    res = json.loads(out.read_text()) if out.exists() else {}
    if out_trl.exists() and args.results_stem == "cross_tokenizer":  # part 2 ran on the default teacher
        res["part2"] = json.loads(out_trl.read_text())["part2"]
    text = markdown(res)
    (RESULTS / f"{args.results_stem}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
