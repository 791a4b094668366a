"""One teacher per task (multi-task distillation): the teachers' logits laid out in the student's
shared label space.

The multi-task student has one classifier whose rows are split by task (task ``k`` owns rows
``offset_k .. offset_k + C_k``: one head per task on a shared encoder). :class:`TaskTeachers` runs each
task's teacher on that task's rows of a batch and writes its ``C_k`` logits into the task's slice of a
``[B, sum C]`` tensor; every other entry is :data:`MASKED_LOGIT`, whose probability underflows to exactly
0 at any temperature used in practice, so the divergences and the cross-entropy are those of each
task's own classes (``0 log 0 = 0``). The student's logits are masked the same way
(:func:`mask_to_tasks`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch
from torch import nn

from .ensemble import TeacherGroup
from .loading import freeze

# exp(MASKED_LOGIT / T - max) is exactly 0 in float32 for real logits within +-100 and T <= 50; finite, so
# that the trainer's check for non-finite teacher logits still guards real overflow.
MASKED_LOGIT = -1.0e4


def task_mask(task_ids: torch.Tensor, ranges: Sequence[tuple[int, int]], width: int) -> torch.Tensor:
    """``[B, width]`` bool: True on the label slice of each row's task."""
    starts = torch.tensor([r[0] for r in ranges], device=task_ids.device)[task_ids]
    ends = starts + torch.tensor([r[1] for r in ranges], device=task_ids.device)[task_ids]
    cols = torch.arange(width, device=task_ids.device)
    return (cols >= starts[:, None]) & (cols < ends[:, None])


def mask_to_tasks(logits: torch.Tensor, task_ids: torch.Tensor, ranges) -> torch.Tensor:
    """The logits with every entry outside a row's task slice set to :data:`MASKED_LOGIT`."""
    keep = task_mask(task_ids.to(logits.device), ranges, logits.shape[-1])
    return logits.masked_fill(~keep, MASKED_LOGIT)


class TaskTeachers(TeacherGroup):
    """The teachers of a multi-task run, one per task, in task order.

    Args:
        members: one frozen seq-cls teacher per task (``C_k`` outputs each).
        ranges: ``(offset_k, C_k)`` of each task in the student's label space.

    Set ``task_ids`` (``[B]``) before calling; ``forward(**inputs)`` returns ``.logits`` ``[B, sum C]``.
    Under DeepSpeed ZeRO-3 every member runs on the whole batch on every rank (its parameters are gathered
    collectively, so all ranks must call it), and only its task's rows are kept.
    """

    def __init__(self, members: Sequence[nn.Module], ranges: Sequence[tuple[int, int]]):
        super().__init__()
        for k, (member, (_, size)) in enumerate(zip(members, ranges)):
            got = getattr(getattr(member, "config", None), "num_labels", size)
            if got != size:
                raise ValueError(
                    f"The teacher of task {k} has {got} labels but its data has {size}: "
                    "give each task the teacher trained on its labels."
                )
        self.members = nn.ModuleList(freeze(m) for m in members)
        self.ranges = [tuple(r) for r in ranges]
        self.task_ids = None

    def forward(self, **inputs):
        task_ids = self.task_ids
        width = self.ranges[-1][0] + self.ranges[-1][1]
        batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        out = torch.full((batch.shape[0], width), MASKED_LOGIT, dtype=torch.float32, device=batch.device)
        for k, (member, (offset, size)) in enumerate(zip(self.members, self.ranges)):
            rows = (task_ids == k).nonzero().view(-1).to(batch.device)
            collective = getattr(member, "zero_optimization_stage", lambda: 0)() == 3
            if rows.numel() == 0 and not collective:
                continue
            if collective:
                logits = member(**inputs).logits[rows]
            else:
                logits = member(
                    **{n: v[rows] if isinstance(v, torch.Tensor) else v for n, v in inputs.items()}
                ).logits
            out[rows, offset : offset + size] = logits.float()
        return SimpleNamespace(logits=out)
