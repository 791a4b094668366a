"""Multi-task distillation: one student, several text-classification tasks, a teacher per task.

The student is a standard sequence classifier (one shared encoder) whose classifier holds one head per
task: task ``k`` owns label rows ``offset_k .. offset_k + C_k`` (stored in the student's config as
``task_label_ranges``). Each example carries its task (``task_ids``); the student's logits outside its
task's slice are masked (:func:`distill.teacher.per_task.mask_to_tasks`) and its task's teacher supplies
the soft targets in the same slice (:class:`distill.teacher.per_task.TaskTeachers`). So every
divergence, the cross-entropy, the metrics and the exactness rules of :class:`DistillationTrainer` apply
per task unchanged: a mixed batch's loss is the sum over each task's items divided by the batch's item
count (the Trainer's ``num_items_in_batch``).

Evaluation runs per task (``eval_<task>_loss``, ``eval_<task>_accuracy``, ``eval_<task>_kd_loss``, ...)
and adds their plain averages over tasks as ``eval_loss`` / ``eval_accuracy``. `distill train` takes this
path when the recipe has a ``tasks:`` list (fields in :mod:`distill.data.multitask`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Optional, Sequence

from distill.data.multitask import TASK_ID_KEY
from distill.trainer.distillation_trainer import DistillationTrainer

logger = logging.getLogger("distill")


class MultiTaskDistillationTrainer(DistillationTrainer):
    """[`DistillationTrainer`] for several classification tasks sharing one student.

    Args:
        model: the student, a sequence classifier with ``sum C_k`` labels.
        teachers: one teacher per task (models or model directories), in task order; None with
            ``args.alpha == 0``.
        task_names: the tasks' names (metric prefixes), in task order.
        label_ranges: ``(offset_k, C_k)`` of each task in the student's label space.
        args, **kwargs: as for [`DistillationTrainer`]; ``train_dataset`` examples carry ``task_ids``, and
            ``eval_dataset`` is a dict ``{task name: dataset}``.
    """

    def __init__(
        self,
        model=None,
        teachers: Optional[Sequence[Any]] = None,
        *,
        task_names: Sequence[str],
        label_ranges: Sequence[tuple[int, int]],
        args=None,
        **kwargs,
    ):
        from distill.teacher.loading import load_teacher
        from distill.teacher.per_task import TaskTeachers
        from distill.trainer.tasks import get_task

        if args is not None and (args.extra_teachers or args.augment_fraction > 0 or args.kd_fused_lm_head):
            raise ValueError(
                "Multi-task distillation takes one teacher per task: extra_teachers, augment_fraction > 0 "
                "and kd_fused_lm_head are not supported with tasks."
            )
        if len(task_names) != len(label_ranges):
            raise ValueError("task_names and label_ranges must have one entry per task.")
        teacher = None
        if teachers is not None:
            if len(teachers) != len(task_names):
                raise ValueError(
                    f"{len(teachers)} teachers for {len(task_names)} tasks: give one teacher per task."
                )
            loaded = [
                load_teacher(str(t), get_task("seq-cls"), args)[0] if isinstance(t, (str, os.PathLike)) else t
                for t in teachers
            ]
            teacher = TaskTeachers(loaded, label_ranges)
        self.task_names, self.label_ranges, self._task_ids = (
            list(task_names),
            [tuple(r) for r in label_ranges],
            None,
        )
        width = getattr(getattr(model, "config", None), "num_labels", None)
        if width is not None and width != sum(r[1] for r in self.label_ranges):
            raise ValueError(
                f"The student has {width} labels but the tasks have {sum(r[1] for r in label_ranges)}."
            )
        super().__init__(model=model, teacher_model=teacher, args=args, **kwargs)
        model.register_forward_hook(self._mask_student_logits)

    def _mask_student_logits(self, module, inputs, output):
        from distill.teacher.per_task import mask_to_tasks

        if self._task_ids is not None:
            output.logits = mask_to_tasks(output.logits, self._task_ids, self.label_ranges)
        return output

    @contextlib.contextmanager
    def _routed(self, inputs: dict):
        """The inputs without ``task_ids``, which the student's mask and the teachers read meanwhile."""
        inputs = dict(inputs)
        task_ids = inputs.pop(TASK_ID_KEY, None)
        if task_ids is None:
            raise ValueError(f"A multi-task batch needs a {TASK_ID_KEY!r} column (distill.data.multitask).")
        self._task_ids = task_ids
        if self.teacher is not None:
            self.teacher.task_ids = task_ids.to(self.args.device)
        try:
            yield inputs
        finally:
            self._task_ids = None
            if self.teacher is not None:
                self.teacher.task_ids = None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TASK_ID_KEY not in self._signature_columns:  # keep the column the loss needs
            self._signature_columns.append(TASK_ID_KEY)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self._routed(inputs) as routed:
            return super().compute_loss(model, routed, return_outputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with self._routed(inputs) as routed:
            return super().prediction_step(model, routed, prediction_loss_only, ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Per-task metrics for a dict of datasets, plus their averages over tasks (``<prefix>_loss``, ...)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if isinstance(dataset, dict):
            averages = {}
            for stat in ("loss", "accuracy", "kd_loss", "teacher_loss"):
                values = [metrics.get(f"{metric_key_prefix}_{name}_{stat}") for name in dataset]
                if values and all(v is not None for v in values):
                    averages[f"{metric_key_prefix}_{stat}"] = sum(values) / len(values)
            metrics.update(averages)
            self.log(averages)
        return metrics


def multitask_main(model_args, data_args, args) -> dict[str, float]:
    """`distill train` for a recipe with ``tasks:`` (called by :func:`distill.train.main`)."""
    from distill.data import DatasetBundle
    from distill.data.multitask import build_multitask_datasets
    from distill.students.modeling import build_student, parameter_counts
    from distill.trainer.tasks import accuracy_metric, make_collator

    entries = data_args.tasks
    task = _check_multitask_run(entries, model_args, args)
    tokenizer = _shared_tokenizer(entries, model_args, args)
    mixture, bundles = build_multitask_datasets(data_args, entries, tokenizer, seed=args.seed)
    ranges = [(bundles[e.name].label_offset, bundles[e.name].num_labels) for e in entries]
    id2label = {}
    for e in entries:
        for i, label in (bundles[e.name].id2label or {}).items():
            id2label[bundles[e.name].label_offset + int(i)] = f"{e.name}:{label}"
    student = build_student(
        model_args,
        data_args,
        args,
        task,
        tokenizer,
        DatasetBundle(train=mixture, num_labels=sum(r[1] for r in ranges), id2label=id2label),
    )
    student.config.task_label_ranges = {e.name: list(r) for e, r in zip(entries, ranges)}
    split = {
        s: {e.name: getattr(bundles[e.name], s) for e in entries if getattr(bundles[e.name], s) is not None}
        for s in ("eval", "test")
    }
    trainer = MultiTaskDistillationTrainer(
        model=student,
        teachers=[e.teacher for e in entries] if args.alpha > 0 else None,
        task_names=[e.name for e in entries],
        label_ranges=ranges,
        args=args,
        train_dataset=mixture,
        eval_dataset=split["eval"] or None,
        processing_class=tokenizer,
        data_collator=make_collator(task, tokenizer),
        compute_metrics=accuracy_metric(),
    )
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    total, non_embedding = parameter_counts(trainer.model)
    metrics = dict(
        train_result.metrics,
        student_params=total,
        student_non_embedding_params=non_embedding,
        tasks=len(entries),
    )
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    results = dict(metrics)
    for prefix, datasets_by_task in split.items():
        if datasets_by_task:
            split_metrics = trainer.evaluate(eval_dataset=datasets_by_task, metric_key_prefix=prefix)
            trainer.log_metrics(prefix, split_metrics)
            trainer.save_metrics(prefix, split_metrics)
            results.update(split_metrics)
    trainer.save_state()
    trainer.create_model_card(dataset=[e.dataset_name for e in entries if e.dataset_name] or None)
    return results


def _check_multitask_run(entries, model_args, args):
    """Errors a user can fix, before any compute: task kind, teachers present and on disk."""
    from distill.teacher.loading import _looks_local
    from distill.trainer.tasks import get_task

    if args.task not in (None, "seq-cls"):
        raise ValueError(
            f"tasks: multi-task distillation supports text classification (task: seq-cls), not {args.task!r}."
        )
    args.task = "seq-cls"
    if model_args.teacher_cache or args.teacher_model_name_or_path:
        raise ValueError(
            "With tasks, each task names its own teacher: remove teacher_model_name_or_path / teacher_cache."
        )
    for entry in entries:
        if args.alpha > 0 and not entry.teacher:
            raise ValueError(
                f"tasks ({entry.name!r}) has no teacher but alpha={args.alpha} > 0: give it a teacher."
            )
        path = entry.teacher
        if (
            path
            and _looks_local(path)
            and not os.path.isfile(os.path.join(os.path.expanduser(path), "config.json"))
        ):
            raise FileNotFoundError(
                f"tasks ({entry.name!r}): teacher {path!r} is not a model directory (no config.json)."
            )
    return get_task("seq-cls")


def _shared_tokenizer(entries, model_args, args):
    """The one tokenizer of the student and every teacher (given, or the first teacher's); refuses others."""
    from transformers import AutoTokenizer

    from distill.teacher.loading import load_tokenizer_if_present

    tokenizer = None
    if model_args.tokenizer_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name_or_path, trust_remote_code=args.trust_remote_code
        )
    for entry in entries:
        if not entry.teacher:
            continue
        theirs = load_tokenizer_if_present(entry.teacher, trust_remote_code=args.trust_remote_code)
        if tokenizer is None:
            tokenizer = theirs
        elif theirs is not None and theirs.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"tasks ({entry.name!r}): its teacher's tokenizer differs from the student's. Train every "
                "task's teacher with the same tokenizer (tokenizer_name_or_path) and give it here too."
            )
    if tokenizer is None:
        raise ValueError("tasks: no tokenizer; set tokenizer_name_or_path (the teachers' tokenizer).")
    return tokenizer
