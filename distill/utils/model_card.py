"""A model card (README.md) for a distilled student, written before `push_to_hub`.

Built with `huggingface_hub`'s `ModelCard` / `ModelCardData`, so the Hub reads its metadata:
`base_model` (the teacher, when it is a Hub id), `datasets` (Hub ids only), `pipeline_tag`, tags,
and a `model-index` with the last evaluation and test results. The body states the KD settings,
the retention against the teacher, and, when present in the output directory, the scaling fit
(`fit.json`, from `scaling fit` or the pipeline) and the deployment table (`bench.md`, from
`scaledown bench`). `Trainer.push_to_hub` then uploads the folder with `HfApi().upload_folder`
(checkpoints and `_*` files left out; `DistillationTrainer.save_model` leaves no pickles).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from distill.trainer.intermediate import intermediate_description, parameter_count

_TASK_TAGS = {
    "causal-lm": "text-generation",
    "seq-cls": "text-classification",
    "image-cls": "image-classification",
}
_METRIC_TYPES = {"loss": "loss", "accuracy": "accuracy", "perplexity": "perplexity", "teacher_loss": "loss"}


def _teacher_name(trainer) -> str:
    name = trainer.args.teacher_model_name_or_path
    if name and name.strip().lower() == "self":  # a LoRA student's own base model (distill.students.lora)
        return getattr(getattr(trainer.teacher, "config", None), "_name_or_path", "") or name
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


def _is_hub_id(name: Optional[str]) -> bool:
    """A Hub repo id (`org/name` or `name`), not a local path or a built-in source."""
    return (
        bool(name)
        and ":" not in name
        and not os.path.exists(os.path.expanduser(name))
        and not name.startswith((".", "/", "~"))
        and name.count("/") <= 1
    )


def _last_metrics(log_history: list[dict]) -> dict[str, float]:
    """The last logged value of every `eval_*` and `test_*` number."""
    out: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if (
                key.startswith(("eval_", "test_"))
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                out[key] = float(value)
    return out


def _eval_results(metrics: dict[str, float], pipeline_tag: Optional[str], dataset: Optional[str]) -> list:
    import math

    from huggingface_hub import EvalResult

    results = []
    for key, value in sorted(metrics.items()):
        split, _, name = key.partition("_")
        if name in _METRIC_TYPES and math.isfinite(value):
            results.append(
                EvalResult(
                    task_type=pipeline_tag or "other",
                    dataset_type=dataset or "custom",
                    dataset_name=dataset or "custom",
                    dataset_split="test" if split == "test" else "validation",
                    metric_type=_METRIC_TYPES[name],
                    metric_name=f"{split} {name.replace('_', ' ')}",
                    metric_value=round(value, 6),
                )
            )
    return results


def _retention_lines(metrics: dict[str, float]) -> list[str]:
    lines = []
    for split in ("test", "eval"):
        student, teacher = metrics.get(f"{split}_loss"), metrics.get(f"{split}_teacher_loss")
        if student and teacher:
            lines += [
                "",
                "## Retention against the teacher",
                "",
                f"On the {'test' if split == 'test' else 'validation'} split the student's cross-entropy is "
                f"{student:.4f} against the teacher's {teacher:.4f}: a loss retention (teacher / student) of "
                f"{teacher / student:.3f}.",
            ]
            break
    return lines


def _file_sections(output_dir: str) -> list[str]:
    lines = []
    fit_path = os.path.join(output_dir, "fit.json")
    if os.path.isfile(fit_path):
        with open(fit_path) as f:
            fit = json.load(f)
        params = ", ".join(f"{k} = {v:.4g}" for k, v in (fit.get("params") or {}).items())
        lines += [
            "",
            "## Scaling fit",
            "",
            f"`{fit.get('formula', fit.get('law', ''))}` with {params} "
            f"({fit.get('n_points', '?')} points, `scaling fit`).",
        ]
    bench_path = os.path.join(output_dir, "bench.md")
    if os.path.isfile(bench_path):
        with open(bench_path) as f:
            lines += ["", "## Deployment (`scaledown bench`)", "", f.read().strip()]
    return lines


def _settings_lines(trainer, teacher: str, distilled: bool, n_params: int) -> list[str]:
    args = trainer.args
    cache = getattr(trainer, "teacher_cache", None)
    if not distilled:
        lines = [
            f"A {n_params:,}-parameter model trained with scaledown (no teacher, alpha = 0).",
            "",
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
        ]
    else:
        lines = [
            f"A {n_params:,}-parameter student distilled from `{teacher}` with "
            "[scaledown](https://pypi.org/project/scaledown/)'s `DistillationTrainer`.",
            "",
            "## Distillation",
            "",
            f"Loss: `alpha * T^2 * {args.kd_kind}(teacher || student) + (1 - alpha) * CE(student, labels)`",
            "",
        ]
        if getattr(args, "extra_teachers", None):
            lines += [
                f"Teachers: `{teacher}` and "
                + ", ".join(f"`{t}`" for t in args.extra_teachers)
                + f", combined by `{args.teacher_ensemble}`"
                + (f" with weights {args.teacher_weights}." if args.teacher_weights else "."),
                "",
            ]
        if getattr(args, "hidden_weight", 0) > 0 or getattr(args, "attention_weight", 0) > 0:
            lines += [intermediate_description(trainer), ""]
        if cache is not None:
            exact = cache.k >= cache.vocab_size
            lines += [
                f"The teacher's targets came from an offline cache of its top-{cache.k} log-probabilities per "
                "token plus one bucket for the rest (`distill cache-teacher`)"
                + (
                    ", which covers the whole vocabulary."
                    if exact
                    else ", so the KD term approximates the full-vocabulary one."
                ),
                "",
            ]
        lines += [
            "| setting | value |",
            "|---|---|",
            f"| teacher | `{teacher}` |",
            f"| alpha | {args.alpha} |",
            f"| temperature | {args.temperature} |",
            f"| kd_kind | {args.kd_kind} |",
        ]
    return lines + [
        f"| learning_rate | {args.learning_rate} |",
        f"| per_device_train_batch_size | {args.per_device_train_batch_size} |",
        f"| gradient_accumulation_steps | {args.gradient_accumulation_steps} |",
        f"| optimizer steps | {trainer.state.global_step} |",
        f"| seed | {args.seed} |",
    ]


def write_model_card(trainer, output_dir: str, **kwargs) -> str:
    """Write ``README.md`` in ``output_dir`` and return its path.

    Args:
        trainer: the `DistillationTrainer` after training (and evaluation).
        output_dir: where the student is saved.
        kwargs: `model_name`, `dataset` (or `dataset_tags`), `tags`, as `Trainer.create_model_card` takes.
    """
    from huggingface_hub import ModelCard, ModelCardData

    teacher = _teacher_name(trainer)
    n_params = parameter_count(
        trainer.model
    )  # not a hidden-state projection, which is not saved with the model
    distilled = trainer.teacher is not None or getattr(trainer, "teacher_cache", None) is not None
    dataset = kwargs.get("dataset") or kwargs.get("dataset_tags")
    dataset = dataset if isinstance(dataset, str) or dataset is None else (list(dataset) or [None])[0]
    pipeline_tag = _TASK_TAGS.get(trainer.task.name)
    model_name = kwargs.get("model_name") or os.path.basename(os.path.abspath(output_dir))
    metrics = _last_metrics(trainer.state.log_history)
    extra_tags = kwargs.get("tags") or []
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        base_model=teacher if distilled and _is_hub_id(teacher) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        tags=["scaledown"]
        + (["distillation", "knowledge-distillation"] if distilled else [])
        + ([extra_tags] if isinstance(extra_tags, str) else list(extra_tags)),
        eval_results=_eval_results(metrics, pipeline_tag, dataset) or None,
    )
    lines = [f"# {model_name}", ""] + _settings_lines(trainer, teacher, distilled, n_params)
    if dataset:
        lines += [f"| dataset | `{dataset}` |"]
    if metrics:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |"
            for k, v in sorted(metrics.items())
            if not k.endswith(("_runtime", "_per_second"))
        ]
    lines += _retention_lines(metrics) + _file_sections(output_dir)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
