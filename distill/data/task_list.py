"""The `tasks:` recipe field of multi-task distillation: :class:`TaskEntry` and its checks.

Kept apart from the dataset building in `distill.data.multitask`, so that `DataArguments` can check
the field in `__post_init__` without importing the loaders. The field's form is documented there.
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
    from distill.utils.hints import did_you_mean

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
            raise ValueError(
                f"tasks[{i}] ({raw['name']!r}): unknown field(s) {hints}; known: {', '.join(sorted(known))}."
            )
        entry = TaskEntry(**raw)
        if not isinstance(entry.name, str) or not _NAME.match(entry.name):
            raise ValueError(
                f"tasks[{i}]: name={entry.name!r} must start with a letter and hold only letters, "
                "digits, '_' and '-' (it names the metrics eval_<name>_loss, ...)."
            )
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
    overrides = {
        k: getattr(entry, k)
        for k in (
            "dataset_name",
            "data_files",
            "label_column",
            "text_column",
            "text_pair_column",
            "max_train_samples",
            "max_eval_samples",
        )
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args) if f.init}
    base.update(tasks=None, **overrides)
    if "dataset_name" in overrides and "data_files" not in overrides:
        base["data_files"] = None
    return type(data_args)(**base)
