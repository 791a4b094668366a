"""Training a planned ladder of model sizes (`scaledown ladder`, and the pipeline's ladder stage).

Each rung goes through `distill train` (alpha 0: no teacher) with a cosine schedule whose length is the
rung's own horizon, as Chinchilla did. Finished runs (``all_results.json`` present) are skipped, or left
to `distill train`'s run fingerprint; broken ones resume from their last checkpoint. Planning lives in
`scaling.ladder`, which never imports the trainer.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Optional, Sequence

from scaling.atomic import write_text_atomic
from scaling.ladder import RunPlan


def is_finished(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, "all_results.json"))


def train_ladder(
    plans: Sequence[RunPlan],
    out_root: str,
    train_args: Sequence[str],
    *,
    train_fn: Optional[Callable[[list[str]], Any]] = None,
    run_args: Optional[Callable[[RunPlan], list[str]]] = None,
    log: Callable[[str], None] = print,
    skip_finished: bool = True,
) -> list[str]:
    """Train each planned run into ``out_root/<name>`` with `distill train`, skipping finished ones.

    Args:
        plans: from :func:`plan_ladder`.
        out_root: parent directory of the run directories.
        train_args: the remaining `distill train` arguments (data, batch, learning rate...).
        train_fn: the training entry point (default `distill.train.main`); imported lazily.
        run_args: extra arguments for one run (e.g. its learning rate or evaluation interval).
        skip_finished: skip a run whose ``all_results.json`` exists; False leaves the decision to
            ``train_fn`` (`distill train` compares its run fingerprint).
    """
    if train_fn is None:
        from distill.train import main as train_fn
    dirs = []
    for i, plan in enumerate(plans, 1):
        out = os.path.join(out_root, plan.name)
        dirs.append(out)
        if skip_finished and is_finished(out):
            log(f"[ladder {i}/{len(plans)}] {plan.name}: finished, skipped")
            continue
        log(
            f"[ladder {i}/{len(plans)}] {plan.name}: {plan.non_embedding_params:,} non-embedding params, "
            f"{plan.tokens:,} tokens, {plan.steps} steps"
        )
        os.makedirs(out, exist_ok=True)
        extra = run_args(plan) if run_args else []
        train_fn(
            [
                *train_args,
                *extra,
                "--task",
                "causal-lm",
                "--alpha",
                "0",
                "--model_config",
                json.dumps(plan.config),
                "--max_steps",
                str(plan.steps),
                "--lr_scheduler_type",
                "cosine",
                "--output_dir",
                out,
            ]
        )
        # After training: a run refused for changed settings keeps the plan that made its results.
        write_text_atomic(os.path.join(out, "ladder_plan.json"), json.dumps(asdict(plan), indent=2))
    return dirs


def cmd_ladder(args) -> None:
    """`scaledown ladder`: print the plan of `scaling ladder`, then train every rung into ``args.out``."""
    from scaling.cli import ladder_plans_from_args, print_ladder_plan

    plans = ladder_plans_from_args(args)
    if plans:  # a typo in --base_config would be ignored by transformers: refused before any training
        from distill.students.model_config import check_model_config_keys

        check_model_config_keys(plans[0].config, "--base_config")
    print_ladder_plan(plans, as_json=args.json)
    train_ladder(
        plans,
        args.out,
        [
            "--block_size",
            str(args.seq_len),
            "--per_device_train_batch_size",
            str(args.batch_size),
            *args.distill_args,
        ],
        log=lambda m: print(m, file=sys.stderr),
        skip_finished=False,
    )  # distill train's run fingerprint decides: reuse, resume or refuse
