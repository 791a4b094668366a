"""`distill`: the command line. Heavy imports happen inside the commands, so `--help` is instant."""

from __future__ import annotations

import os
import sys

USAGE = """usage: distill <command> [options]

Knowledge distillation with transformers' Trainer:
  loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, labels)

commands:
  train     Train a student from a YAML recipe; any field can be overridden on the command line.
              distill train --config recipes/tiny/causal_lm_teacher.yaml
              distill train --config recipe.yaml --alpha 0.7 --max_steps 100
              accelerate launch --config_file accelerate_configs/ddp.yaml -m distill train --config ...
            `distill train --help` lists every field (model, data, DistillationConfig/TrainingArguments).
            A rerun into an output_dir resumes it only when its settings are unchanged (run_fingerprint.json),
            does nothing when that run finished, and is refused otherwise (--overwrite_output_dir true).
  cache-teacher
            Run the recipe's teacher once over its training split; store top-k log-probs per token
            (+ one bucket for the rest) as an Arrow dataset with a manifest. Then train any number
            of students from it with no teacher loaded:
              distill cache-teacher --config recipes/tiny/causal_lm.yaml --cache_dir runs/tiny/cache --top_k 32
              distill train --config recipes/tiny/causal_lm.yaml --teacher_cache runs/tiny/cache \
                --output_dir runs/tiny/causal_lm_cached
  init-student
            Write a student made of chosen teacher blocks (DistilBERT style), ready for distill train:
              distill init-student --teacher runs/teacher --layers 0,2,4 --output_dir runs/student_init
  prune     Structured pruning scored on calibration data (Minitron / ShortGPT), writes OUT/pruning.json:
              distill prune --model runs/teacher --drop-layers 2 --mlp-width 256 --calibration RECIPE_OR_DATA \
                --num-samples 64 --output_dir runs/pruned

  tune      Hyperparameter search (optuna, through Trainer.hyperparameter_search) over a recipe:
              distill tune --config RECIPE --search_space SPACE.yaml --n_trials 20 --output_dir runs/tune
            SPACE.yaml: alpha: {low: 0.1, high: 0.9}, learning_rate: {low: 1e-4, high: 1e-2, log: true},
            model.hidden_size: {choices: [64, 96]}. --pruner median (evaluates every --eval_steps).
            Writes trials.json/.csv, best.yaml, objective.png; run it again to continue the study.

options (any command):
  --version         print the version and exit
  --debug           show the full traceback of an error (default: one line `error: ...`, exit status 2 when
                    the command or config must change, 1 when the run failed: diverged, disk full, no network)
  --log-level LEVEL debug, info, warning, error or critical (distill train: TrainingArguments' --log_level);
                    debug also shows the third-party messages silenced by default

Recipes live in recipes/ and start with the command that runs them. Outputs follow transformers'
conventions: trainer_state.json, all_results.json, model.safetensors, README.md (model card).
"""


def _finish_distributed() -> None:
    """End a multi-process run cleanly: gloo runs can otherwise abort after training finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    from distill.utils.cli_common import (
        configure_logging,
        log_level_of,
        run_guarded,
        split_debug,
        version_text,
    )

    argv = sys.argv[1:] if argv is None else list(argv)
    debug, argv = split_debug(argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if "--version" in argv[: argv.index("--") if "--" in argv else len(argv)]:
        print(version_text("distill"))
        return 0
    level = log_level_of(argv)
    if argv and argv[0] in ("train", "cache-teacher", "tune"):  # TrainingArguments' --log_level: one field
        argv = [
            a.replace("--log-level", "--log_level", 1) if a.startswith("--log-level") else a for a in argv
        ]
    else:
        argv = _drop_log_level(argv)
    configure_logging(level)
    if not argv:  # a usage error, like `scaling` and `scaledown` without a command
        print(f"error: no command given\n\n{USAGE}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run_guarded(lambda: COMMANDS[command](rest), debug=debug)


def _drop_log_level(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--":
            return out + argv[i:]
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("--log-level="):
            out.append(arg)
    return out


def _train(rest: list[str]) -> None:
    from .train import main as train_main

    train_main(rest)
    _finish_distributed()


def _cache_teacher(rest: list[str]) -> None:
    from .teacher.cache_cli import main as cache_main

    cache_main(rest)


def _init_student(rest: list[str]) -> None:
    from .students.cli import init_student_main

    init_student_main(rest)


def _prune(rest: list[str]) -> None:
    from .students.cli import prune_main

    prune_main(rest)


def _tune(rest: list[str]) -> None:
    from distill.tune.search import main as tune_main

    tune_main(rest)


COMMANDS = {
    "train": _train,
    "cache-teacher": _cache_teacher,
    "init-student": _init_student,
    "prune": _prune,
    "tune": _tune,
}


if __name__ == "__main__":
    sys.exit(main())
