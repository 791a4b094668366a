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

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Optional

TASK_ID_KEY = "task_ids"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class TaskEntry:
    """One task of a multi-task recipe (see the module docstring)."""

    name: str
    dataset_name: Optional[str] = None
    data_files: Any = None
    teacher: Optional[str] = None
    weight: float = 1.0
    label_column: str = "label"
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


def parse_tasks(value: Any, *, needs_teacher: bool = True) -> list[TaskEntry]:
    """The `tasks` recipe field as :class:`TaskEntry` objects, with a clear error for each bad entry."""
    from ..hints import did_you_mean

    if isinstance(value, str):
        import json

        value = json.loads(value)
    if not isinstance(value, (list, tuple)) or len(value) < 1:
        raise ValueError("tasks must be a list of task entries (name, dataset_name, teacher, weight, ...).")
    known = {f.name for f in dataclasses.fields(TaskEntry)}
    entries = []
    for i, raw in enumerate(value):
        if isinstance(raw, TaskEntry):
            raw = dataclasses.asdict(raw)
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"tasks[{i}] must be a mapping with at least a name.")
        unknown = sorted(set(raw) - known)
        if unknown:
            hints = ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
            raise ValueError(f"tasks[{i}] ({raw['name']!r}): unknown field(s) {hints}; known: {', '.join(sorted(known))}.")
        entry = TaskEntry(**raw)
        if not isinstance(entry.name, str) or not _NAME.match(entry.name):
            raise ValueError(f"tasks[{i}]: name={entry.name!r} must start with a letter and hold only letters, "
                             "digits, '_' and '-' (it names the metrics eval_<name>_loss, ...).")
        if needs_teacher and not entry.teacher:
            raise ValueError(f"tasks[{i}] ({entry.name!r}) has no teacher: set its teacher (or alpha: 0).")
        entries.append(entry)
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tasks: the names {duplicates} are used more than once; task names must be unique.")
    weights = [e.weight for e in entries]
    if any(not isinstance(w, (int, float)) or w != w or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"tasks: the weights {weights} must be non-negative numbers with a positive sum.")
    return entries


def task_data_args(data_args, entry: TaskEntry):
    """The recipe's `DataArguments` with this task's data fields."""
    overrides = {k: getattr(entry, k) for k in ("dataset_name", "data_files", "label_column", "text_column",
                                                 "text_pair_column", "max_train_samples", "max_eval_samples")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args) if f.init}
    base.update(tasks=None, **overrides)
    if "dataset_name" in overrides and "data_files" not in overrides:
        base["data_files"] = None
    return type(data_args)(**base)


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
        bundle = build_datasets(task_data_args(data_args, entry), "seq-cls", tokenizer, seed=seed)
        if not isinstance(bundle.train, Dataset):
            raise ValueError(f"tasks ({entry.name!r}): multi-task training needs map-style datasets, not streaming.")
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
    mixture = interleave_datasets([ds for ds, _ in active], probabilities=[w / total for _, w in active],
                                  seed=seed, stopping_strategy="all_exhausted")
    return mixture, bundles
