"""Pure distillation losses: no Trainer, no state, tested against a float64 reference.

The total loss is ``alpha * T^2 * D(teacher, student) + (1 - alpha) * CE(student, labels)`` where
``D`` is a per-position divergence summed over the vocabulary. Both terms share one denominator
(the number of valid positions, or the Trainer's ``num_items_in_batch``), so that gradient
accumulation and data parallelism give the same update as one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .divergences import KD_KINDS, check_kd_kind, check_loss_settings, get_divergence

__all__ = [
    "KD_KINDS",
    "DistillationLossOutput",
    "align_vocab",
    "check_kd_kind",
    "divergence",
    "divergence_from_log_probs",
    "distillation_loss",
    "loss_denominator",
    "student_cross_entropy",
]


@dataclass
class DistillationLossOutput:
    """Result of :func:`distillation_loss`.

    Attributes:
        loss: ``alpha * kd_loss + (1 - alpha) * ce_loss``.
        kd_loss: ``T^2`` times the summed divergence over valid positions, divided by the denominator.
        ce_loss: summed cross-entropy of the student (at ``T = 1``) over valid positions, divided by
            the denominator; zero when no labels are given.
        num_valid: number of valid (non-ignored) positions in this call, as a tensor.
    """

    loss: torch.Tensor
    kd_loss: torch.Tensor
    ce_loss: torch.Tensor
    num_valid: torch.Tensor


def align_vocab(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, vocab_size: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice both logit tensors to the shared real vocabulary.

    Models that share a tokenizer may pad their embedding matrices differently (Qwen2.5: 151936
    vs 152064). Padding rows are never real tokens, so they are cut off; logits are never
    zero-padded, because a zero logit still receives probability mass.
    """
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if vs != vt:
            raise ValueError(
                f"Student and teacher logits have different vocabulary sizes ({vs} vs {vt}); pass "
                "vocab_size=len(tokenizer) so both can be sliced to the real vocabulary."
            )
        return student_logits, teacher_logits
    if vocab_size > min(vs, vt):
        raise ValueError(
            f"vocab_size={vocab_size} is larger than the logits (student {vs}, teacher {vt}); "
            "the tokenizer does not fit one of the models."
        )
    return student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]


def divergence_from_log_probs(
    log_ps: torch.Tensor,
    log_pt: torch.Tensor,
    *,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Per-row divergence between student (``log_ps``) and teacher (``log_pt``) log-probabilities.

    With ``p`` the teacher's and ``q`` the student's distribution:

    * ``forward_kl``: ``KL(p || q)``; ``reverse_kl``: ``KL(q || p)``;
    * ``jsd``: ``b KL(p || m) + (1 - b) KL(q || m)`` with ``m = b p + (1 - b) q``, ``b = jsd_beta``;
    * ``skew_forward_kl``: ``KL(p || a p + (1 - a) q)``; ``skew_reverse_kl``: ``KL(q || a q + (1 - a) p)``
      with ``a = skew_alpha`` (DistiLLM, Ko et al. 2024). ``a = 0`` gives forward / reverse KL.
    """
    div = get_divergence(kind)
    kwargs = div.kwargs(jsd_beta, skew_alpha)
    if div.check is not None:
        div.check(**kwargs)
    return div.value(log_ps, log_pt, **kwargs)


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
) -> torch.Tensor:
    """Per-position divergence between temperature-scaled distributions, summed over the vocabulary.

    Computed in float32 (or float64 if the inputs are float64) whatever the input dtype; the kinds
    are those of :func:`divergence_from_log_probs`.

    Returns:
        A tensor with the leading shape of the logits (the vocabulary dimension reduced).
    """
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_ps = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    return divergence_from_log_probs(log_ps, log_pt, kind=kind, jsd_beta=jsd_beta, skew_alpha=skew_alpha)


def loss_denominator(num_valid, num_items_in_batch=None):
    """What both loss terms are divided by: ``num_items_in_batch`` when given, else the local count of
    valid positions; at least 1, so that positions without targets in a whole batch (or optimizer step)
    give a loss of 0 rather than 0/0 = NaN or a ZeroDivisionError."""
    denom = num_valid if num_items_in_batch is None else num_items_in_batch
    if isinstance(denom, torch.Tensor):
        return denom.clamp(min=1)
    return max(denom, 1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    ignore_index: int = -100,
    num_items_in_batch: Optional[int | torch.Tensor] = None,
    vocab_size: Optional[int] = None,
) -> DistillationLossOutput:
    """``alpha * T^2 * D(teacher || student) + (1 - alpha) * CE(student, labels)``.

    Args:
        student_logits: ``[..., V_s]`` logits of the student. The caller aligns positions; for
            causal LMs the trainer shifts logits and labels before calling.
        teacher_logits: ``[..., V_t]`` logits of the teacher (any float dtype; upcast here).
        labels: integer tensor with the leading shape of the logits, or ``None``. Positions equal
            to ``ignore_index`` count nowhere. ``None`` means every position is valid and there is
            no cross-entropy term, so ``alpha`` must be 1.
        alpha: weight of the distillation term, in ``[0, 1]``.
        temperature: softmax temperature for the distillation term (> 0). CE uses ``T = 1``.
        kind: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"skew_forward_kl"`` or
            ``"skew_reverse_kl"`` (see :func:`divergence_from_log_probs`).
        jsd_beta: mixture weight of the teacher in the JSD mixture, in ``(0, 1)``.
        skew_alpha: the skew ``a`` of the skew KL kinds, in ``[0, 1)``: ``T^2 KL(p || a p + (1-a) q)``
            and ``T^2 KL(q || a q + (1-a) p)``.
        ignore_index: label value of positions to ignore.
        num_items_in_batch: the denominator for both terms; defaults to the number of valid
            positions. The Trainer passes the count over all gradient-accumulation micro-batches
            (and all processes), so that summed losses add up to a global mean.
        vocab_size: the real vocabulary size; both logits are sliced to it. Required when the
            last dimensions differ.

    Returns:
        :class:`DistillationLossOutput`.
    """
    check_loss_settings(alpha, temperature, kind, jsd_beta, skew_alpha, has_labels=labels is not None)
    student_logits, teacher_logits = align_vocab(student_logits, teacher_logits, vocab_size)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} do not align position by position."
        )
    vocab = student_logits.shape[-1]
    flat_s = student_logits.reshape(-1, vocab)
    flat_t = teacher_logits.reshape(-1, vocab)
    if labels is None:
        valid = torch.ones(flat_s.shape[0], dtype=torch.bool, device=flat_s.device)
        flat_labels = None
    else:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"labels {tuple(labels.shape)} must have the leading shape of the logits "
                f"{tuple(student_logits.shape[:-1])}."
            )
        flat_labels = labels.reshape(-1)
        valid = flat_labels != ignore_index
    num_valid = valid.sum()
    denom = loss_denominator(num_valid, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=flat_s.device)
    # Select valid rows first: ignored positions cost no softmax and cannot leak NaNs.
    s_valid, t_valid = flat_s[valid], flat_t[valid]
    div = divergence(
        s_valid, t_valid, temperature=temperature, kind=kind, jsd_beta=jsd_beta, skew_alpha=skew_alpha
    )
    kd_loss = temperature**2 * div.sum() / denom
    if flat_labels is not None:
        dtype = torch.float64 if s_valid.dtype == torch.float64 else torch.float32
        ce_sum = F.cross_entropy(s_valid.to(dtype), flat_labels[valid], reduction="sum")
        ce_loss = ce_sum / denom
    else:
        ce_loss = kd_loss.new_zeros(())
    loss = alpha * kd_loss + (1.0 - alpha) * ce_loss
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)


def student_cross_entropy(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_values: int = 2**22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed float32 cross-entropy over valid positions and their count (evaluation, and ``alpha=0``).

    Valid rows are gathered straight from ``student_logits`` (a strided view such as the causal shift
    ``logits[:, :-1]`` is not copied whole) about ``chunk_values`` logits at a time, so without
    autograd the extra memory is a few ``[chunk, V]`` float32 blocks, not copies of the logits.
    """
    vocab = student_logits.shape[-1]
    valid = labels != ignore_index
    rows = valid.nonzero(as_tuple=True)
    targets = labels[rows]
    step = max(1, chunk_values // max(vocab, 1))
    total = student_logits.new_zeros(
        (), dtype=torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    )
    for start in range(0, targets.numel(), step):
        index = tuple(r[start : start + step] for r in rows)
        total = total + F.cross_entropy(
            student_logits[index].to(total.dtype), targets[start : start + step], reduction="sum"
        )
    return total, valid.sum()
