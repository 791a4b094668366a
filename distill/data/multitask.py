"""Multi-task distillation data: the `tasks:` recipe list, per-task datasets and their weighted mixture.

A recipe lists its tasks (text classification, `task: seq-cls`); each entry has the fields of
:class:`TaskEntry`:

.. code-block:: yaml

    tasks:
      - name: topic                          # required, unique: metrics are eval_topic_loss, ...
        dataset_name: builtin:docstring-topics
        teacher: runs/tiny/seq_cls_teacher   # this task's teacher (a seq-cls model directory)
        weight: 1.0                          # sampling weight (>= 0; weights must sum to > 0)
      - name: kind
        dataset_name: builtin:docstring-kind
        teacher: runs/tiny/docstring_kind_teacher
        label_column: label                  # optional: label_column, text_column, text_pair_column,
                                             # data_files, max_train_samples, max_eval_samples

Every other data field (`max_seq_length`, `max_test_samples`, ...) comes from the recipe's top level.
The training set interleaves the tasks' training splits with probabilities proportional to the weights
(`datasets.interleave_datasets`, "all_exhausted": every example of every task is seen at least once
per pass); each example carries its task's index in a `task_ids` column.
"""

from __future__ import annotations

import os

from .task_list import TASK_ID_KEY, TaskEntry, parse_tasks, task_data_args  # noqa: F401


def build_multitask_datasets(data_args, entries: list[TaskEntry], tokenizer, *, seed: int):
    """Per-task bundles, and the weighted training mixture with a `task_ids` column.

    Labels are shifted to the student's shared label space: task ``k``'s label ``y`` becomes
    ``offset_k + y`` (``bundles[name].label_offset``), so that one classifier holds every task's head.

    Returns:
        ``(mixture, bundles)``: ``bundles[name]`` is the task's `DatasetBundle` (eval and test splits
        get the `task_ids` column too).
    """
    from datasets import Dataset, interleave_datasets

    from .loading import build_datasets

    bundles, trains, offset = {}, [], 0
    for index, entry in enumerate(entries):
        # the task's classes and their order are its teacher's (issue 19), as in a single-task run
        label_space = None
        if isinstance(entry.teacher, (str, os.PathLike)):
            from distill.teacher.loading import teacher_label_space

            label_space = teacher_label_space([str(entry.teacher)])
        bundle = build_datasets(
            task_data_args(data_args, entry), "seq-cls", tokenizer, seed=seed, label_space=label_space
        )
        if not isinstance(bundle.train, Dataset):
            raise ValueError(
                f"tasks ({entry.name!r}): multi-task training needs map-style datasets, not streaming."
            )
        for split in ("train", "eval", "test"):
            ds = getattr(bundle, split)
            if ds is not None:
                ds = ds.map(lambda b, off=offset: {"labels": [y + off for y in b["labels"]]}, batched=True)
                setattr(bundle, split, ds.add_column(TASK_ID_KEY, [index] * len(ds)))
        bundle.label_offset = offset
        offset += bundle.num_labels
        bundles[entry.name] = bundle
        trains.append(bundle.train)
    active = [(ds, e.weight) for ds, e in zip(trains, entries) if e.weight > 0]
    total = sum(w for _, w in active)
    if len(active) == 1:
        return active[0][0], bundles
    mixture = interleave_datasets(
        [ds for ds, _ in active],
        probabilities=[w / total for _, w in active],
        seed=seed,
        stopping_strategy="all_exhausted",
    )
    return mixture, bundles
