"""`scaledown run`: ladder -> scaling fit -> teacher -> student size -> distillation -> baseline -> evaluation -> report.

Every stage writes ``<run_dir>/stages/<stage>.json`` atomically when it finishes, with the inputs it
depended on; a second run reuses the stage when those inputs are unchanged and reruns it, and the
stages downstream of it, when they changed (scaledown/provenance.py). Every training run also
decides by its run fingerprint: reused when finished with the same settings, resumed from its last
checkpoint when cut short, trained afresh when its settings changed.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Optional

from .config import PipelineConfig
from .files import write_json_atomic

STAGES = (
    "tokenizer",
    "ladder",
    "fit",
    "teacher",
    "student",
    "distill",
    "baseline",
    "evaluate",
    "ship",
    "distill_ladder",
)


def banner(text: str) -> None:
    print(f"\n{'=' * 78}\n== {text}\n{'=' * 78}", flush=True)


class Pipeline:
    """Runs the stages of one pipeline config; see the module docstring."""

    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.root = config.run_dir
        self.timings: dict[str, float] = {}  # seconds each stage took when it ran (here or earlier)
        self.reused: list[str] = []
        self.stage_digests: dict[str, str] = {}  # a hash of each finished stage's inputs and result
        self.plans = None

    # ---- checks before any compute -------------------------------------------------------

    def validate(self) -> None:
        """Every error a user can fix, raised before any tokenizer training or model training."""
        from distill.data import DataArguments
        from scaling.ladder import LadderSpec, plan_ladder

        c = self.config
        DataArguments(**c.data)  # unknown fields, missing data files, bad block sizes
        spec = self.ladder_spec()
        budget = self._budget_kwargs()
        if not budget:
            raise ValueError("ladder: give one budget: tokens, flops, isoflop_budgets or tokens_per_param.")
        self.plans = plan_ladder(
            spec,
            vocab_size=int(c.data.get("tokenizer_vocab_size", 2048)),
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            **budget,
        )
        if c.fit.law not in ("power", "chinchilla", "kaplan", "chinchilla_gamma", "gadre"):
            raise ValueError(
                f"fit.law={c.fit.law!r}: use power, chinchilla, chinchilla_gamma, gadre or kaplan."
            )
        if c.distill_ladder is not None and c.distill_ladder.enabled:
            from .distill_ladder import plan_grid

            plan_grid(c.distill_ladder, list(c.ladder.widths))
        from scaling.laws import get_law

        needed = len(get_law(c.fit.law).param_names) + 1 + int(c.fit.hold_out_largest)
        if len(c.ladder.widths) < needed:
            raise ValueError(
                f"ladder.widths: fit.law={c.fit.law} needs at least {needed} rungs "
                f"({'one held out, ' if c.fit.hold_out_largest else ''}parameters + 1 to fit)."
            )
        given = [
            x is not None
            for x in (c.student.width, c.student.target_loss, c.student.flops_budget, c.student.from_teacher)
        ]
        if sum(given) != 1:
            raise ValueError("student: give exactly one of width, target_loss, flops_budget or from_teacher.")
        if c.student.from_teacher is not None:
            from .students import check_student_from_teacher

            check_student_from_teacher(c.student, c.teacher, self.plans)
        if c.student.width is not None:
            teacher_width = self._teacher_width()
            if teacher_width is not None and c.student.width >= teacher_width:
                raise ValueError(
                    f"student.width={c.student.width} is not smaller than the teacher's width ({teacher_width}): "
                    "a student must be smaller than its teacher."
                )
            LadderSpec(
                base_config=c.ladder.base_config,
                widths=[c.student.width],
                aspect_ratio=c.ladder.aspect_ratio,
                head_dim=c.ladder.head_dim,
                mlp_ratio=c.ladder.mlp_ratio,
            )
        if c.teacher is not None and not os.path.isfile(os.path.join(c.teacher, "config.json")):
            raise FileNotFoundError(f"teacher={c.teacher!r} is not a model directory (no config.json).")
        if not c.distill.seeds:
            raise ValueError("distill.seeds must list at least one seed (two to measure the spread).")
        from distill.config import DistillationConfig  # ranges of alpha, temperature, kd_kind

        DistillationConfig(
            output_dir=self.root,
            alpha=c.distill.alpha,
            temperature=c.distill.temperature,
            kd_kind=c.distill.kd_kind,
            report_to="none",
        )

    def ladder_spec(self):
        from scaling.ladder import LadderSpec

        c = self.config.ladder
        return LadderSpec(
            base_config=dict(c.base_config),
            widths=list(c.widths),
            aspect_ratio=c.aspect_ratio,
            head_dim=c.head_dim,
            mlp_ratio=c.mlp_ratio,
        )

    def _budget_kwargs(self) -> dict:
        c = self.config.ladder
        names = ("tokens", "flops", "isoflop_budgets", "tokens_per_param")
        return {k: getattr(c, k) for k in names if getattr(c, k) is not None}

    def _teacher_width(self) -> Optional[int]:
        if self.config.teacher is None:
            return max(self.config.ladder.widths)
        path = os.path.join(self.config.teacher, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                cfg = json.load(f)
            return cfg.get("hidden_size") or cfg.get("n_embd")
        return None

    @property
    def seq_len(self) -> int:
        return int(self.config.data.get("block_size", 128))

    @property
    def batch_size(self) -> int:
        return int(self.config.train.get("per_device_train_batch_size", 16))

    # ---- stage machinery -----------------------------------------------------------------

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run stage ``name``, or reuse its marker when its inputs (scaledown/provenance.py) are unchanged."""
        from .provenance import changed_inputs, stage_digest, stage_inputs

        marker = os.path.join(self.root, "stages", f"{name}.json")
        inputs = stage_inputs(self.config, name, self.stage_digests)
        if os.path.isfile(marker):
            with open(marker) as f:
                done = json.load(f)
            changes = (
                changed_inputs(done.get("inputs") or {}, inputs)
                if "inputs" in done
                else ["no recorded inputs"]
            )
            if not changes:
                self.log(f"[{name}] done earlier with the same inputs, reusing {marker}")
                self.timings[name] = done["seconds"]
                self.reused.append(name)
                self.stage_digests[name] = stage_digest(inputs, done["result"])
                return done["result"]
            self.log(f"[{name}] {'; '.join(changes)}, rerunning")
        banner(f"stage {STAGES.index(name) + 1}/{len(STAGES)}: {name}")
        start = time.time()
        result = fn()
        self.timings[name] = time.time() - start
        write_json_atomic(
            marker, {"stage": name, "seconds": self.timings[name], "inputs": inputs, "result": result}
        )
        self.stage_digests[name] = stage_digest(inputs, json.loads(json.dumps(result, default=float)))
        return result

    def train_args(self, seed: Optional[int] = None) -> list[str]:
        """`distill train` arguments shared by every run: data, tokenizer, optimisation."""
        c = self.config
        args: list[str] = []
        for key, value in {**c.data, **c.train}.items():
            if value is None:
                continue
            args += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
        args += [
            "--tokenizer_name_or_path",
            self.tokenizer_dir,
            "--seed",
            str(c.seed if seed is None else seed),
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--save_strategy",
            "steps",
            "--save_total_limit",
            "1",
            "--eval_strategy",
            "steps",
        ]
        return args

    def lr_args(self, width: int) -> list[str]:
        """The learning rate of a model of this width (see LadderConfig.lr_inverse_width)."""
        c = self.config
        if not c.ladder.lr_inverse_width or "learning_rate" not in c.train:
            return []
        return ["--learning_rate", f"{float(c.train['learning_rate']) * min(c.ladder.widths) / width:.6g}"]

    @property
    def tokenizer_dir(self) -> str:
        return self.config.tokenizer or os.path.join(self.root, "tokenizer")

    # ---- stages --------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.time()
        self.validate()
        self.stage("tokenizer", self.make_tokenizer)
        ladder = self.stage("ladder", self.train_ladder)
        fit = self.stage("fit", lambda: self.fit_ladder(ladder))
        teacher = self.stage("teacher", lambda: self.pick_teacher(ladder))
        student = self.stage("student", lambda: self.pick_student(fit, teacher))
        kd = self.stage("distill", lambda: self.train_students(student, teacher, distill=True))
        base = self.stage("baseline", lambda: self.train_students(student, teacher, distill=False))
        from .evaluation import evaluate_models

        evaluation = self.stage("evaluate", lambda: evaluate_models(self, teacher, kd, base))
        from .report import write_report

        banner("report")
        seconds = time.time() - start
        summary = write_report(self, ladder, fit, teacher, student, kd, base, evaluation, seconds)
        if self.config.ship.enabled:  # after the report, so a failed export still leaves the evaluation
            from scaledown.ship import add_ship_to_report, ship_stage

            ship = self.stage("ship", lambda: ship_stage(self, teacher, kd, base))
            summary = add_ship_to_report(self, summary, ship)
        if self.config.distill_ladder is not None and self.config.distill_ladder.enabled:  # issue 15
            from . import distill_ladder

            result = self.stage("distill_ladder", lambda: distill_ladder.run_stage(self, ladder, fit))
            distill_ladder.append_to_report(self, result, summary)
        self.log(f"\nreport: {os.path.join(self.root, 'report.md')}  ({time.time() - start:.0f} s in all)")
        return summary

    def make_tokenizer(self) -> dict:
        if self.config.tokenizer:
            return {"path": self.config.tokenizer, "trained": False}
        from distill.data import DataArguments, texts_for_tokenizer
        from distill.data.corpus import train_bpe_tokenizer

        data_args = DataArguments(**self.config.data)
        tokenizer = train_bpe_tokenizer(
            texts_for_tokenizer(data_args),
            vocab_size=data_args.tokenizer_vocab_size,
            model_max_length=max(1024, data_args.block_size),
        )
        tokenizer.save_pretrained(self.tokenizer_dir)
        self.log(f"trained a {len(tokenizer)}-token BPE tokenizer -> {self.tokenizer_dir}")
        return {"path": self.tokenizer_dir, "trained": True, "vocab_size": len(tokenizer)}

    def train_ladder(self) -> dict:
        from scaling.ladder import format_plan

        from .ladder import train_ladder

        self.log(format_plan(self.plans))

        def run_args(plan) -> list[str]:
            every = str(max(1, math.ceil(plan.steps / max(1, self.config.ladder.eval_points))))
            return [*self.lr_args(plan.width), "--eval_steps", every, "--save_steps", every]

        from .provenance import train_run

        dirs = train_ladder(
            self.plans,
            os.path.join(self.root, "ladder"),
            self.train_args(),
            run_args=run_args,
            log=self.log,
            skip_finished=False,
            train_fn=lambda argv: train_run(argv, f"ladder {argv[argv.index('--output_dir') + 1]}", self.log),
        )
        return {
            "runs": [
                {
                    "name": p.name,
                    "dir": d,
                    "width": p.width,
                    "params": p.params,
                    "non_embedding_params": p.non_embedding_params,
                    "tokens": p.tokens,
                    "steps": p.steps,
                    "flops": p.flops,
                }
                for p, d in zip(self.plans, dirs)
            ]
        }

    def fit_ladder(self, ladder: dict) -> dict:
        from scaling.fit import fit_runs
        from scaling.logs import load_runs

        c = self.config.fit
        dirs = [r["dir"] for r in ladder["runs"]]
        points = load_runs(dirs, points="final", param_count=c.param_count)
        result = {"full": fit_runs(points, law=c.law, n_bootstrap=c.bootstrap, seed=self.config.seed)}
        if c.hold_out_largest:
            flops = sorted(p.flops for p in points)
            threshold = (flops[-2] + flops[-1]) / 2
            held = fit_runs(points, law=c.law, holdout_above=threshold)
            row = held["holdout"]["points"][0]
            run = next((os.path.basename(p.run) for p in points if p.flops == row["flops"]), None)
            result["holdout"] = {
                "fit": {k: held[k] for k in ("law", "params", "objective", "n_points")},
                "run": run,
                "params": row["params"],
                "predicted": row["predicted"],
                "actual": row["loss"],
                "error_pct": row["error_pct"],
            }
            self.log(
                f"held-out rung {run}: predicted {row['predicted']:.4f}, measured {row['loss']:.4f} "
                f"({row['error_pct']:+.2f}%)"
            )
        params = result["full"]["params"]
        self.log("fit: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        from scaling.fit import save_fit

        save_fit(result["full"], os.path.join(self.root, "fit.json"))
        # Learning curves of every rung, for the compute-optimal frontier (Approach 1).
        curve = load_runs(dirs, points="all", param_count=c.param_count)
        result["curves"] = [
            {"run": p.run, "params": p.params, "tokens": p.tokens, "flops": p.flops, "loss": p.loss}
            for p in curve
        ]
        return result

    def pick_teacher(self, ladder: dict) -> dict:
        if self.config.teacher:
            return {"dir": self.config.teacher, "source": "given"}
        best = min(ladder["runs"], key=lambda r: _results(r["dir"])["eval_loss"])
        self.log(f"teacher: ladder rung {best['name']} ({best['params']:,} parameters)")
        return {"dir": best["dir"], "source": "ladder", "name": best["name"], "width": best["width"]}

    def pick_student(self, fit: dict, teacher: dict) -> dict:
        from scaling.ladder import rung_config
        from scaling.params import count_parameters

        c, spec = self.config, self.ladder_spec()
        vocab = int(c.data.get("tokenizer_vocab_size", 2048))
        teacher_params = _results(teacher["dir"]).get("student_params")
        tokens = int(c.distill.tokens or self.plans[0].tokens)
        if c.student.from_teacher is not None:
            from .students import student_from_teacher

            student = student_from_teacher(self, teacher["dir"])
            student["steps"] = max(1, tokens // (self.batch_size * self.seq_len))
            self.log(f"student: {student['params']:,} parameters, {student['reason']}")
            return student
        if c.student.width is not None:
            width, reason = c.student.width, "given"
        else:
            candidates = range(spec.head_dim, (teacher.get("width") or max(c.ladder.widths)), spec.head_dim)
            sized = [(w, count_parameters(rung_config(spec, w, vocab))) for w in candidates]
            if c.student.target_loss is not None:
                from scaling.laws import predict

                full = fit["full"]
                ok = [
                    w
                    for w, n in sized
                    if float(predict(full["law"], full["params"], n[c.fit.param_count], tokens))
                    <= c.student.target_loss
                ]
                if not ok:
                    raise ValueError(
                        f"student.target_loss={c.student.target_loss}: no width below the teacher's "
                        "reaches it according to the fit; raise the target."
                    )
                width, reason = ok[0], f"smallest width predicted to reach loss {c.student.target_loss}"
            else:
                cost = [(w, (6 * n["non_embedding"] + 2 * (teacher_params or 0)) * tokens) for w, n in sized]
                ok = [w for w, f in cost if f <= c.student.flops_budget]
                if not ok:
                    raise ValueError(
                        f"student.flops_budget={c.student.flops_budget:.3g} is too small for the "
                        "smallest student plus the teacher's forward passes."
                    )
                width, reason = (
                    ok[-1],
                    f"largest width within {c.student.flops_budget:.3g} FLOPs (teacher included)",
                )
        config = rung_config(spec, width, vocab)
        counts = count_parameters(config)
        if teacher_params and counts["total"] >= teacher_params:
            raise ValueError(
                f"The student ({counts['total']:,} parameters) is not smaller than the teacher "
                f"({teacher_params:,})."
            )
        steps = max(1, tokens // (self.batch_size * self.seq_len))
        self.log(f"student: width {width} ({counts['total']:,} parameters), {reason}")
        return {
            "width": width,
            "config": config,
            "params": counts["total"],
            "non_embedding_params": counts["non_embedding"],
            "steps": steps,
            "reason": reason,
        }

    def _ladder_twin(self, student: dict) -> Optional[str]:
        """The finished ladder rung that a baseline at the pipeline seed would repeat, if any.

        A rung runs `distill train` with alpha 0, the pipeline seed, the same data, learning rate
        (by width), cosine schedule and evaluation interval; it is the baseline when its model
        config and step count equal the student's.
        """
        if student.get("dir"):  # made from the teacher: no ladder rung has its weights
            return None
        for plan in self.plans or []:
            run_dir = os.path.join(self.root, "ladder", plan.name)
            if (
                plan.steps == student["steps"]
                and _same_config(plan.config, student["config"])
                and os.path.isfile(os.path.join(run_dir, "all_results.json"))
            ):
                return run_dir
        return None

    def train_students(self, student: dict, teacher: dict, distill: bool) -> dict:
        from .provenance import train_run

        c = self.config
        kind = "kd" if distill else "baseline"
        runs = []
        eval_steps = max(1, math.ceil(student["steps"] / max(1, c.ladder.eval_points)))
        twin = None if distill else self._ladder_twin(student)
        for seed in c.distill.seeds:
            if twin is not None and seed == c.seed:
                # Same config, data, seed, steps, learning rate and schedule: the same run.
                runs.append({"seed": seed, "dir": twin, "ladder_rung": os.path.basename(twin)})
                self.log(f"[{kind} seed {seed}] identical to ladder rung {os.path.basename(twin)}: reused")
                continue
            out = os.path.join(self.root, f"{kind}_seed{seed}")
            runs.append({"seed": seed, "dir": out})
            self.log(f"[{kind} seed {seed}] {student['steps']} steps -> {out}")
            extra = (
                [
                    "--teacher_model_name_or_path",
                    teacher["dir"],
                    "--alpha",
                    str(c.distill.alpha),
                    "--temperature",
                    str(c.distill.temperature),
                    "--kd_kind",
                    c.distill.kd_kind,
                ]
                if distill
                else ["--alpha", "0"]
            )
            train_run(
                self.train_args(seed)
                + [
                    "--task",
                    "causal-lm",
                    *(
                        ["--model_name_or_path", student["dir"]]
                        if student.get("dir")
                        else ["--model_config", json.dumps(student["config"])]
                    ),
                    "--max_steps",
                    str(student["steps"]),
                    "--lr_scheduler_type",
                    "cosine",
                    "--output_dir",
                    out,
                    "--eval_steps",
                    str(eval_steps),
                    "--save_steps",
                    str(eval_steps),
                    *self.lr_args(student["width"]),
                    *extra,
                ],
                f"{kind} seed {seed}",
                self.log,
            )
        return {"runs": runs}


def _same_config(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "all_results.json")) as f:
        return json.load(f)
