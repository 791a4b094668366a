"""A model card (README.md) for a distilled student, written before `push_to_hub`."""

from __future__ import annotations

import os

import yaml

from .intermediate import intermediate_description, parameter_count

_TASK_TAGS = {"causal-lm": "text-generation", "seq-cls": "text-classification", "image-cls": "image-classification"}


def _teacher_name(trainer) -> str:
    name = trainer.args.teacher_model_name_or_path
    if name:
        return name
    cache = getattr(trainer, "teacher_cache", None)
    if cache is not None:
        return str(cache.manifest.get("teacher") or "")
    teacher = trainer.teacher
    if teacher is None:
        return ""
    teacher = getattr(teacher, "module", teacher)
    return getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__


def _last_eval(log_history: list[dict]) -> dict:
    evals = [entry for entry in log_history if any(k.startswith("eval_") for k in entry)]
    return evals[-1] if evals else {}


def write_model_card(trainer, output_dir: str, **kwargs) -> str:
    """Write ``README.md`` in ``output_dir`` and return its path.

    The card states the teacher, the loss (kind, alpha, temperature), the training setup and the
    last evaluation results, with Hub metadata (`base_model`, `pipeline_tag`, tags).
    """
    args = trainer.args
    teacher = _teacher_name(trainer)
    student = trainer.model
    n_params = parameter_count(student)  # not a hidden-state projection, which is not saved with the model
    cache = getattr(trainer, "teacher_cache", None)
    distilled = trainer.teacher is not None or cache is not None
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": _TASK_TAGS.get(trainer.task.name),
        "tags": ["scaledown"] + (["distillation", "knowledge-distillation"] if distilled else []),
    }
    if teacher and not os.path.isdir(teacher):
        metadata["base_model"] = teacher
    dataset = kwargs.get("dataset") or kwargs.get("dataset_tags")
    if dataset:
        metadata["datasets"] = [dataset] if isinstance(dataset, str) else list(dataset)
    results = _last_eval(trainer.state.log_history)
    lines = [
        "---",
        yaml.safe_dump({k: v for k, v in metadata.items() if v}, sort_keys=False).strip(),
        "---",
        "",
        f"# {kwargs.get('model_name') or os.path.basename(os.path.abspath(output_dir))}",
        "",
    ]
    if distilled:
        lines += [
            f"A {n_params:,}-parameter student distilled from `{teacher}` with "
            "[scaledown](https://pypi.org/project/scaledown/)'s `DistillationTrainer`.",
            "",
            "## Distillation",
            "",
            f"Loss: `alpha * T^2 * {args.kd_kind}(teacher || student) + (1 - alpha) * CE(student, labels)`",
            "",
        ]
        if getattr(args, "extra_teachers", None):
            lines += [f"Teachers: `{teacher}` and " + ", ".join(f"`{t}`" for t in args.extra_teachers)
                      + f", combined by `{args.teacher_ensemble}`"
                      + (f" with weights {args.teacher_weights}." if args.teacher_weights else "."), ""]
        if getattr(args, "hidden_weight", 0) > 0 or getattr(args, "attention_weight", 0) > 0:
            lines += [intermediate_description(trainer), ""]
        if cache is not None:
            exact = cache.k >= cache.vocab_size
            lines += [
                f"The teacher's targets came from an offline cache of its top-{cache.k} log-probabilities per "
                "token plus one bucket for the rest (`distill cache-teacher`)"
                + (", which covers the whole vocabulary." if exact else
                   ", so the KD term approximates the full-vocabulary one."),
                "",
            ]
        lines += [
            "| setting | value |",
            "|---|---|",
            f"| alpha | {args.alpha} |",
            f"| temperature | {args.temperature} |",
            f"| kd_kind | {args.kd_kind} |",
        ]
    else:
        lines += [f"A {n_params:,}-parameter model trained with scaledown (no teacher, alpha = 0).", "", "## Training", "",
                  "| setting | value |", "|---|---|"]
    lines += [
        f"| learning_rate | {args.learning_rate} |",
        f"| per_device_train_batch_size | {args.per_device_train_batch_size} |",
        f"| gradient_accumulation_steps | {args.gradient_accumulation_steps} |",
        f"| optimizer steps | {trainer.state.global_step} |",
        f"| seed | {args.seed} |",
    ]
    if results:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(results.items()) if k.startswith("eval_") and isinstance(v, float)]
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
