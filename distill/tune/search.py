"""`distill tune`: hyperparameter search over a recipe with `Trainer.hyperparameter_search` (optuna).

    distill tune --config recipes/tiny/causal_lm.yaml --search_space space.yaml --n_trials 20 \\
        --output_dir runs/tune [--pruner median --eval_steps 50] [any distill train field]

The search space is a YAML mapping, one entry per field:

    alpha: {low: 0.1, high: 0.9}
    temperature: {low: 1.0, high: 4.0}
    learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
    lr_scheduler_type: {choices: [cosine, linear]}
    model.hidden_size: {choices: [64, 96]}        # architecture: through model_init

Training fields are any `DistillationConfig` / `TrainingArguments` field; the Trainer sets them
on its arguments at the start of each trial. `model.<key>` entries change the student's
`model_config` (students built from scratch) and are applied by `model_init`. Each trial's
objective is the student's `eval_loss` (plain cross-entropy; the Trainer's default objective
would also add `eval_kd_loss` and `eval_teacher_loss`).

The study lives in `OUTPUT_DIR/study.db` (optuna's RDB storage on SQLite): running the same
command again continues it; a trial that was running when the process stopped is run again with
the same settings. Results: `trials.json`, `trials.csv`, `best.yaml` (the recipe with the best
trial's values, ready for `distill train`) and `objective.png` (objective against each
hyperparameter).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

logger = logging.getLogger("distill")

TUNE_FLAGS = {
    "--n_trials": int,
    "--search_space": str,
    "--pruner": str,
    "--study_name": str,
    "--pruner_startup_trials": int,
    "--sampler_seed": int,
}
MODEL_PREFIX = "model."
# Fields the trainer reads once, at construction: a per-trial value would be silently ignored.
UNTUNABLE = {
    name: "the trainer builds its hidden-state / attention transfer (projection attached to the "
    "student) once, before the trials"
    for name in ("hidden_weight", "attention_weight")
}
UNTUNABLE["kd_fused_lm_head"] = "the fused loss holds the student's head, which model_init replaces"
UNTUNABLE["output_dir"] = "trials share the study's output_dir"


@dataclasses.dataclass
class Dimension:
    """One searched field: `name`, `kind` (`"float"`, `"int"`, `"categorical"`), range or choices."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    @property
    def is_model(self) -> bool:
        return self.name.startswith(MODEL_PREFIX)

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


def _field_types(args) -> dict:
    return {f.name: f.type for f in dataclasses.fields(args)}


def parse_search_space(space: dict, args, model_config=None) -> list[Dimension]:
    """Check a search-space mapping against the training arguments, before any compute.

    Raises:
        `ValueError`: unknown field (with a suggestion), architecture entries without
            `model_config`, an empty or inverted range, `log` with `low <= 0`, no choices, unknown
            keys in an entry, or a value the field's own checks refuse (e.g. alpha above 1).
    """
    from distill.utils.hints import did_you_mean

    if not isinstance(space, dict) or not space:
        raise ValueError("search space: expected a non-empty mapping of field: {low, high} or {choices}")
    types = _field_types(args)
    dims = []
    for name, spec in space.items():
        where = f"search space field {name!r}"
        if name.startswith(MODEL_PREFIX):
            if model_config is None:
                raise ValueError(
                    f"{where}: architecture entries need a student built from model_config "
                    "(a pretrained model_name_or_path has a fixed architecture)"
                )
            from distill.students.model_config import config_class_keys

            key = name[len(MODEL_PREFIX) :]
            known = config_class_keys(model_config["model_type"])
            if key not in known or key == "model_type":
                raise ValueError(
                    f"{where}: {key!r} is not a field of model_type {model_config['model_type']!r}'s config"
                    f"{did_you_mean(key, known, prefix=MODEL_PREFIX)}; transformers would ignore it"
                )
        elif name not in types:
            raise ValueError(
                f"{where}: not a training field{did_you_mean(name, set(types))} (data and model "
                "fields are fixed for a study; model.<key> changes the student's model_config)"
            )
        if name in UNTUNABLE:
            raise ValueError(f"{where}: not supported by distill tune: {UNTUNABLE[name]}")
        if not isinstance(spec, dict):
            raise ValueError(
                f"{where}: expected {{low: .., high: .., log: true}} or {{choices: [...]}}, got {spec!r}"
            )
        extra = set(spec) - {"low", "high", "log", "step", "choices"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; use low/high/log/step or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ValueError(f"{where}: choices must be a non-empty list")
            dims.append(Dimension(name, "categorical", choices=list(spec["choices"])))
            continue
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"{where}: give both low and high (or choices)")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ValueError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
        if not low < high:
            raise ValueError(f"{where}: empty range: low ({low}) must be below high ({high})")
        if spec.get("log") and low <= 0:
            raise ValueError(f"{where}: log: true needs low > 0, got {low}")
        current = (
            model_config.get(name[len(MODEL_PREFIX) :])
            if name.startswith(MODEL_PREFIX)
            else getattr(args, name)
        )
        is_int = (
            isinstance(current, int)
            and not isinstance(current, bool)
            and isinstance(low, int)
            and isinstance(high, int)
        )
        dims.append(
            Dimension(
                name,
                "int" if is_int else "float",
                float(low),
                float(high),
                bool(spec.get("log", False)),
                spec.get("step"),
            )
        )
    _check_values(dims, args)
    return dims


def _check_values(dims, args) -> None:
    """Let DistillationConfig's own checks see each training range's ends (and every choice)."""
    for dim in dims:
        if dim.is_model:
            continue
        values = dim.choices if dim.kind == "categorical" else [dim.low, dim.high]
        for value in values:
            if dim.kind == "int":
                value = int(value)
            try:
                dataclasses.replace(args, **{dim.name: value})
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"search space field {dim.name!r}: value {value!r} is refused: {e}"
                ) from None


def _split_argv(argv):
    """`distill tune` flags out of argv; the rest is a `distill train` command line."""
    opts, rest, i = {}, [], 0
    # the kebab-case spelling of a tune flag is an alias (issue 19: one rule for every command)
    kebab = {"--" + flag[2:].replace("_", "-"): flag for flag in TUNE_FLAGS}
    argv = [kebab.get(a.partition("=")[0], a.partition("=")[0]) + "".join(a.partition("=")[1:]) for a in argv]
    while i < len(argv):
        arg = argv[i]
        key, _, value = arg.partition("=")
        if key in TUNE_FLAGS:
            if not value:
                if i + 1 >= len(argv):
                    raise ValueError(f"{key} needs a value")
                value, i = argv[i + 1], i + 1
            try:
                opts[key[2:]] = TUNE_FLAGS[key](value)
            except ValueError:
                raise ValueError(f"{key}: expected {TUNE_FLAGS[key].__name__}, got {value!r}") from None
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def _recover_interrupted(study) -> list:
    """Trials stopped by a crash (still RUNNING) or Ctrl-C (FAIL, listed in the study's
    `interrupted` attribute) are run again first, with the same settings, each once."""
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get("interrupted", []))
    done = set(study.user_attrs.get("requeued", []))
    requeued = []
    for t in study.get_trials(deepcopy=False):
        stale = t.state == TrialState.RUNNING
        if t.number in done or not (stale or (t.state == TrialState.FAIL and t.number in interrupted)):
            continue
        if stale:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
        requeued.append(t.number)
    if requeued:
        study.set_user_attr("requeued", sorted(done | set(requeued)))
    return requeued


def _mark_interrupted(study) -> None:
    from optuna.trial import TrialState

    failed = [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    if failed:
        study.set_user_attr(
            "interrupted", sorted(set(study.user_attrs.get("interrupted", [])) | {failed[-1]})
        )


def _forced_overrides(args, pruner: str) -> list[str]:
    """Trials save nothing (best.yaml retrains the winner); median pruning needs evaluations."""
    extra = ["--save_strategy", "no", "--load_best_model_at_end", "false"]
    if pruner == "median" and str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        steps = args.eval_steps or max(1, (args.max_steps if args.max_steps > 0 else 100) // 5)
        extra += ["--eval_strategy", "steps", "--eval_steps", str(int(steps))]
    return extra


def _config_path(argv):
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str], callbacks=None) -> dict:
    """Run (or continue) a study; returns the summary written to `OUTPUT_DIR/trials.json`.

    Args:
        argv (`list[str]`): `distill tune` command line.
        callbacks (`list`, *optional*): extra `TrainerCallback`s for every trial (tests).
    """
    import yaml

    from distill.train import _check_before_compute, parse_args, parse_model_config
    from distill.tune.report import write_reports

    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(
            "Tune flags: --n_trials N, --search_space SPACE.yaml, --pruner median|none, --pruner_startup_trials K "
            "(default 2), --study_name NAME, --sampler_seed S (TPE, default 0); every other flag is a "
            "`distill train` field (see distill train --help)."
        )
        return {}
    opts, rest = _split_argv(argv)
    if "search_space" not in opts:
        raise ValueError(
            "distill tune needs --search_space SPACE.yaml (fields with {low, high} or {choices})"
        )
    if opts.get("n_trials", 0) < 1:
        raise ValueError("distill tune needs --n_trials N with N >= 1")
    pruner_name = opts.get("pruner", "none")
    if pruner_name not in ("median", "none"):
        raise ValueError(f"--pruner {pruner_name!r}: choose median or none")
    if not os.path.isfile(opts["search_space"]):
        raise FileNotFoundError(f"--search_space {opts['search_space']}: no such file")
    with open(opts["search_space"], encoding="utf-8") as f:
        space = yaml.safe_load(f)
    model_args, data_args, args = parse_args(rest)
    if not args.output_dir or args.output_dir == "trainer_output":
        raise ValueError("distill tune needs --output_dir OUT (study.db, trials.json, best.yaml go there)")
    model_config = parse_model_config(model_args.model_config) if model_args.model_config else None
    dims = parse_search_space(space, args, model_config)
    rest = rest + _forced_overrides(args, pruner_name)
    model_args, data_args, args = parse_args(rest)
    _check_before_compute(model_args, data_args, args)
    trainer = _build_trainer(model_args, data_args, args, dims, model_config, callbacks)
    study, storage, name = _open_study(args.output_dir, opts)
    requeued = _recover_interrupted(study)
    if requeued:
        logger.info("Continuing study %s: trials %s were interrupted and run again first.", name, requeued)
    from optuna.trial import TrialState

    finished = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False)
    )
    remaining = opts["n_trials"] - finished
    if remaining <= 0:
        print(
            f"distill tune: the study in {args.output_dir} already has {finished} finished trial(s) of the "
            f"{opts['n_trials']} asked for; nothing to run. Raise --n_trials to search further.",
            file=sys.stderr,
        )
    try:
        if remaining > 0:
            trainer.hyperparameter_search(
                hp_space=_hp_space(dims),
                compute_objective=lambda metrics: metrics["eval_loss"],
                n_trials=remaining,
                direction="minimize",
                backend="optuna",
                storage=storage,
                study_name=name,
                load_if_exists=True,
                pruner=_pruner(pruner_name, opts),
                sampler=_sampler(opts),
                catch=(ValueError,),
            )
    except KeyboardInterrupt:
        _mark_interrupted(study)
        write_reports(study, dims, args.output_dir, _config_path(rest), rest)
        raise
    summary = write_reports(study, dims, args.output_dir, _config_path(rest), rest)
    print(tune_outcome(summary, args.output_dir), file=sys.stderr)
    return summary


def tune_outcome(summary: dict, output_dir: str) -> str:
    """What a finished `distill tune` tells the user: the best trial, and where its recipe is."""
    lines = [f"distill tune: {summary['n_complete']} complete, {summary['n_pruned']} pruned trial(s)."]
    best = summary.get("best")
    if best is None:
        lines.append(f"No trial completed, so no best.yaml; see {os.path.join(output_dir, 'trials.csv')}.")
        return "\n".join(lines)
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
    )
    best_yaml = os.path.join(output_dir, "best.yaml")
    lines += [
        f"Best: trial {best['number']}, eval_loss {best['value']:.4f} ({params}).",
        f"Its recipe: {best_yaml}. Train it with: distill train --config {best_yaml}",
    ]
    return "\n".join(lines)


def _hp_space(dims):
    def space(trial):
        for dim in dims:  # architecture entries: recorded with the trial, applied by model_init
            if dim.is_model:
                dim.suggest(trial)
        return {dim.name: dim.suggest(trial) for dim in dims if not dim.is_model}

    return space


def _pruner(name, opts):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=opts.get("pruner_startup_trials", 2), n_warmup_steps=0
        )
    return optuna.pruners.NopPruner()


def _sampler(opts):
    import optuna

    return optuna.samplers.TPESampler(seed=opts.get("sampler_seed", 0))


def _open_study(output_dir, opts):
    import optuna

    os.makedirs(output_dir, exist_ok=True)
    storage = f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'study.db'))}"
    name = opts.get("study_name", "distill-tune")
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, direction="minimize")
    return study, storage, name


def _build_trainer(model_args, data_args, args, dims, model_config, callbacks):
    """The `distill train` pipeline up to the Trainer, with `model_init` in place of the student."""
    import transformers

    from distill.students.modeling import build_student
    from distill.train import prepare_data
    from distill.trainer.distillation_trainer import DistillationTrainer
    from distill.trainer.tasks import accuracy_metric, get_task, make_collator

    task = get_task(args.task)
    transformers.set_seed(args.seed)
    processing_class, bundle = prepare_data(model_args, data_args, args, task)
    if bundle.eval is None:
        raise ValueError("distill tune needs an evaluation split: each trial's objective is its eval_loss.")
    model_dims = [d for d in dims if d.is_model]

    def model_init(trial=None):
        margs = model_args
        if trial is not None and model_dims:
            config = dict(model_config)
            config.update({d.name[len(MODEL_PREFIX) :]: d.suggest(trial) for d in model_dims})
            margs = dataclasses.replace(model_args, model_config=config)
        return build_student(margs, data_args, args, task, processing_class, bundle)

    teacher = args.teacher_model_name_or_path
    if model_args.teacher_cache:
        teacher = None
    elif args.extra_teachers:
        teacher = [teacher, *args.extra_teachers]
    return DistillationTrainer(
        model=None,
        model_init=model_init,
        teacher_model=teacher,
        teacher_cache=model_args.teacher_cache or None,
        args=args,
        train_dataset=bundle.train,
        eval_dataset=bundle.eval,
        processing_class=processing_class,
        data_collator=make_collator(task, processing_class),
        compute_metrics=None if task.token_level else accuracy_metric(),
        callbacks=callbacks,
    )
