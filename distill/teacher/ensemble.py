"""Several teachers for the same task, seen by the loss as one teacher.

:class:`TeacherEnsemble` runs every member and returns *equivalent logits* ``z`` whose distribution at
the distillation temperature T is the combined soft target: for ``teacher_ensemble="mean"``,
``z = T * log(sum_k w_k softmax(z_k / T))``, so ``softmax(z / T) = sum_k w_k p_k`` exactly. Every
divergence, the chunked causal-LM loss and the exactness rules then apply unchanged: the combination
is per position, so it does not depend on how a batch is split into micro-batches or processes.

``teacher_ensemble="most_confident"`` takes, at each position (each example for classification,
each token for a causal LM), the logits of the member whose own prediction (its distribution at
T = 1) has the largest top probability.

The members are frozen and placed one by one exactly like a single teacher (see
:func:`distill.teacher.placement.place_teacher`: a replica under DDP, one DeepSpeed engine per member,
FSDP2 per member).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from torch import nn

from .loading import freeze

ENSEMBLE_MODES = ("mean", "most_confident")


def normalized_teacher_weights(weights: Optional[Sequence[float]], n_teachers: int) -> list[float]:
    """The weights as a distribution over ``n_teachers``; equal weights when ``weights`` is None."""
    if weights is None:
        return [1.0 / n_teachers] * n_teachers
    weights = [float(w) for w in weights]
    if len(weights) != n_teachers:
        raise ValueError(
            f"teacher_weights has {len(weights)} value(s) but there are {n_teachers} teachers "
            "(teacher_model_name_or_path first, then extra_teachers): give one weight per teacher."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"teacher_weights={weights} must be non-negative numbers with a positive sum.")
    total = sum(weights)
    return [w / total for w in weights]


def combine_teacher_logits(
    logits: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    temperature: float,
    mode: str = "mean",
    vocab_size: Optional[int] = None,
) -> torch.Tensor:
    """One teacher's worth of logits from several (``[..., V_k]`` each, sliced to ``vocab_size``).

    Args:
        logits: the members' logits, same leading shape.
        weights: normalised weights (``mode="mean"`` only).
        temperature: the distillation temperature the mixture is formed at.
        mode: ``"mean"`` (weighted average of the distributions at ``temperature``) or
            ``"most_confident"`` (per position, the member with the largest top probability at T = 1).

    Returns:
        Float32 (float64 for float64 inputs) logits ``z`` with ``softmax(z / T)`` the combined target.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"teacher_ensemble={mode!r} is unknown: use one of {', '.join(ENSEMBLE_MODES)}.")
    widths = {t.shape[-1] for t in logits}
    if vocab_size is None and len(widths) > 1:
        raise ValueError(
            f"The teachers' logits have different widths {sorted(widths)}; pass the tokenizer so that they "
            "can be sliced to the real vocabulary."
        )
    dtype = torch.float64 if all(t.dtype == torch.float64 for t in logits) else torch.float32
    stacked = torch.stack([t[..., :vocab_size].to(dtype) for t in logits])  # [K, ..., V]
    if mode == "most_confident":
        confidence = torch.softmax(stacked, dim=-1).amax(-1)  # [K, ...]
        best = confidence.argmax(0)  # first member on ties
        return stacked.gather(0, best[None, ..., None].expand_as(stacked[:1]))[0]
    log_w = torch.tensor(weights, dtype=dtype, device=stacked.device).log()
    log_p = torch.log_softmax(stacked / temperature, dim=-1)
    log_w = log_w.view(-1, *([1] * (log_p.dim() - 1)))
    return temperature * torch.logsumexp(log_p + log_w, dim=0)


class TeacherGroup(nn.Module):
    """Several frozen teachers (``members``) used as one; `place_teacher` places each member alone."""

    def train(self, mode: bool = True):  # the members never leave eval mode
        return super().train(False)


class TeacherEnsemble(TeacherGroup):
    """Frozen teachers of the same task whose forward returns the combined target's logits.

    Args:
        members: the teacher models (same task, same tokenizer).
        weights: one weight per member for ``mode="mean"`` (normalised here; None: equal).
        temperature: the distillation temperature.
        mode: ``"mean"`` or ``"most_confident"``, see :func:`combine_teacher_logits`.
        vocab_size: the real vocabulary each member's logits are sliced to (token-level tasks).

    ``forward(**inputs)`` returns an object with ``.logits``, like a model output. The members are
    called through their wrappers (DeepSpeed engines, FSDP modules) once placed.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        weights: Optional[Sequence[float]] = None,
        temperature: float,
        mode: str = "mean",
        vocab_size: Optional[int] = None,
    ):
        super().__init__()
        if len(members) < 2:
            raise ValueError("A teacher ensemble needs at least two teachers.")
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"teacher_ensemble={mode!r} is unknown: use one of {', '.join(ENSEMBLE_MODES)}.")
        if mode == "most_confident" and weights is not None:
            raise ValueError(
                "teacher_weights apply to teacher_ensemble='mean' only; remove them for most_confident."
            )
        self.members = nn.ModuleList(freeze(m) for m in members)
        self.weights = normalized_teacher_weights(weights, len(members))
        self.temperature, self.mode, self.vocab_size = temperature, mode, vocab_size
        self.config = getattr(members[0], "config", None)  # for code that reads teacher.config

    def forward(self, **inputs):
        logits = [member(**inputs).logits for member in self.members]
        return SimpleNamespace(
            logits=combine_teacher_logits(
                logits, self.weights, temperature=self.temperature, mode=self.mode, vocab_size=self.vocab_size
            )
        )


def build_ensemble(
    teachers: Sequence, task, args, student: nn.Module, processing_class, teacher_processing_class=None
):
    """Load (paths) and check (tokenizers, vocabularies) the teachers, and combine them.

    Each member's tokenizer (saved beside it, or ``teacher_processing_class``) must equal the
    student's; each member's logits are sliced to the real vocabulary before they are combined.
    """
    from .loading import check_same_tokenizer, load_teacher

    if getattr(args, "kd_fused_lm_head", False):
        raise ValueError(
            "kd_fused_lm_head works with one teacher only; set it to false for several teachers."
        )
    members, vocab_size = [], None
    for teacher in teachers:
        tokenizer = teacher_processing_class
        if isinstance(teacher, (str, bytes)) or hasattr(teacher, "__fspath__"):
            teacher, tokenizer = load_teacher(str(teacher), task, args)
            tokenizer = tokenizer or teacher_processing_class
        if task.token_level:
            vocab_size = check_same_tokenizer(processing_class, tokenizer, student, teacher)
        members.append(teacher)
    weights = getattr(args, "teacher_weights", None)
    ensemble = TeacherEnsemble(
        members,
        weights=weights,
        temperature=args.temperature,
        mode=getattr(args, "teacher_ensemble", "mean"),
        vocab_size=vocab_size,
    )
    return ensemble
