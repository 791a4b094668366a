"""Intermediate-layer distillation losses, as pure functions: hidden states and self-attention.

Both terms compare the student's and the teacher's per-layer outputs (transformers'
``output_hidden_states`` / ``output_attentions``) over a layer map, student layer -> teacher layer,
and follow the logit loss's exactness rules: every position carries a weight (0 for padding,
prompt, unlabelled examples), the weighted per-position losses are *summed* and divided by the
Trainer's ``num_items_in_batch``, so that micro-batching, gradient accumulation and data parallelism
give the same update as one large batch.

**Layer indices** are indices into transformers' ``hidden_states`` tuple: 0 is the embedding output
and ``i`` (1..N) the output of block ``i`` (for Llama-style models the last entry is after the final
norm, as transformers returns it). The attention of block ``i`` is ``attentions[i - 1]``.

**Items** (what ``num_items_in_batch`` counts) and the per-position weights that spread one item
over positions (:func:`position_weights`):

- causal LM: an item is a position whose *next* token is a label (``labels[:, 1:] != -100``), the
  positions the logit loss counts; each such position weighs 1, every other position (prompt,
  padding, the last token) 0;
- sequence / image classification: an item is an example with a label; its weight 1 is spread
  evenly over its attended tokens (``attention_mask``) or over all patches, i.e. a per-example mean.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .logit import loss_denominator

HIDDEN_LOSSES = ("mse", "cosine")


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Evenly spaced map (TinyBERT's uniform strategy): student block m -> teacher block m * N_t // N_s.

    The last student block always meets the last teacher block. The embedding output (index 0) is
    left out: it carries no contextual information and, when the student's embeddings are copied
    from the teacher, is already matched. Add ``0: 0`` to an explicit map to include it (TinyBERT does).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"Both models need at least one layer (student {student_layers}, teacher {teacher_layers})."
        )
    return {m: m * teacher_layers // student_layers for m in range(1, student_layers + 1)}


def parse_layer_map(value: Union[None, str, Mapping]) -> Optional[dict[int, int]]:
    """``hidden_layer_map`` from a config: a mapping, JSON (``'{"1": 2}'``) or ``"1:2,2:4"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            import json

            value = json.loads(text)
        else:
            try:
                value = dict(part.split(":") for part in text.replace(" ", "").split(",") if part)
            except ValueError:
                raise ValueError(
                    f"hidden_layer_map={text!r} is not a map: write it as 'student:teacher' pairs, e.g. '1:2,2:4', "
                    "or as a YAML/JSON mapping {1: 2, 2: 4}."
                ) from None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"hidden_layer_map={value!r} must be a non-empty mapping of student layer -> teacher layer."
        )
    try:
        layer_map = {int(s): int(t) for s, t in value.items()}
    except (TypeError, ValueError):
        raise ValueError(f"hidden_layer_map={value!r}: layer indices must be integers.") from None
    if any(s < 0 or t < 0 for s, t in layer_map.items()):
        raise ValueError(
            f"hidden_layer_map={value!r}: layer indices must be >= 0 (0 = embedding output, i = output of block i)."
        )
    return dict(sorted(layer_map.items()))


def check_layer_map(layer_map: Mapping[int, int], student_layers: int, teacher_layers: int) -> None:
    """Refuse a map that points past either model's last layer (index N = output of the last block)."""
    for who, index, layers in [("student", s, student_layers) for s in layer_map] + [
        ("teacher", t, teacher_layers) for t in layer_map.values()
    ]:
        if index > layers:
            raise ValueError(
                f"hidden_layer_map={dict(layer_map)} points past the {who}'s last layer: it has {layers} blocks, so "
                f"indices run from 0 (embeddings) to {layers}; fix the map or leave it unset for an evenly spaced one."
            )


def position_weights(
    token_level: bool,
    labels: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    batch: int,
    length: int,
    device=None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """``[batch, length]`` float weights: how much each position's loss counts (see the module docstring).

    They sum to the number of items, so ``(weights * per_position_loss).sum() / num_items`` is a mean
    over items that is exact under any split of the batch.
    """
    if token_level:
        weights = torch.zeros(batch, length, device=device)
        if labels is not None:
            valid = labels[:, 1:] != ignore_index
        elif attention_mask is not None:
            valid = attention_mask[:, 1:].bool()
        else:
            valid = torch.ones(batch, length - 1, dtype=torch.bool, device=device)
        weights[:, :-1] = valid.to(device=device, dtype=weights.dtype)
        return weights
    if attention_mask is not None and attention_mask.shape == (batch, length):
        tokens = attention_mask.to(device=device, dtype=torch.float32)
    else:
        tokens = torch.ones(batch, length, device=device)
    weights = tokens / tokens.sum(-1, keepdim=True).clamp_min(1.0)
    if labels is not None:
        weights = (
            weights
            * (labels.reshape(batch, -1)[:, 0] != ignore_index).to(device=device, dtype=weights.dtype)[
                :, None
            ]
        )
    return weights


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weighted_sum(per_position: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(weights * per_position)`` where zero-weight positions are selected out, not multiplied
    (a padded position's NaN or inf cannot leak through ``0 * nan``)."""
    weights = weights.to(per_position.dtype)
    return torch.where(
        weights > 0,
        per_position * weights,
        torch.zeros((), dtype=per_position.dtype, device=per_position.device),
    ).sum()


def hidden_state_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-position distance ``[B, T]`` between ``[B, T, H]`` states of the same width, in float32 (or 64).

    ``mse``: mean over the width of the squared difference (TinyBERT); ``cosine``: ``1 - cos``
    (DistilBERT's cosine embedding loss with target 1).
    """
    dtype = _compute_dtype(student)
    s, t = student.to(dtype), teacher.to(dtype)
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    raise ValueError(f"hidden_loss={kind!r} is not supported; choose one of {', '.join(HIDDEN_LOSSES)}.")


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Mapping[int, int],
    weights: torch.Tensor,
    *,
    kind: str = "mse",
    projection: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-state distillation: the mean over mapped layer pairs of the weighted summed distance.

    Args:
        student_hidden, teacher_hidden: the models' ``hidden_states`` tuples (``[B, T, H]`` each).
        layer_map: student index -> teacher index (0 = embeddings, i = block i).
        weights: ``[B, T]`` position weights (:func:`position_weights`).
        kind: ``"mse"`` or ``"cosine"`` (:func:`hidden_state_distance`).
        projection: maps the student's width to the teacher's (TinyBERT's learned ``W_h``), applied to
            every mapped student state; None when the widths agree.
        num_items_in_batch: the denominator; defaults to ``weights.sum()`` (the local number of items).

    Returns:
        ``(loss, num_items)``: the loss divided by the denominator, and this call's number of items.
    """
    num_items = weights.sum()
    denom = loss_denominator(num_items, num_items_in_batch)
    total = None
    for s_index, t_index in layer_map.items():
        s = student_hidden[s_index]
        if projection is not None:
            s = projection(s)
        t = teacher_hidden[t_index].to(s.device)
        if s.shape != t.shape:
            raise ValueError(
                f"Student layer {s_index} {tuple(s.shape)} and teacher layer {t_index} {tuple(t.shape)} do not align; "
                "widths that differ need a projection."
            )
        term = _weighted_sum(hidden_state_distance(s, t, kind), weights.to(s.device))
        total = term if total is None else total + term
    return total / len(layer_map) / denom, num_items


def attention_kl_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Mapping[int, int],
    weights: torch.Tensor,
    *,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM's self-attention transfer: ``KL(A_teacher || A_student)`` per head and query position,
    summed over keys, averaged over heads and mapped layer pairs, weighted per query position.

    Args:
        student_attentions, teacher_attentions: the models' ``attentions`` tuples, post-softmax
            probabilities ``[B, heads, T, T]``; head counts must agree.
        layer_map: student -> teacher in ``hidden_states`` indices; block ``i`` is ``attentions[i - 1]``,
            and a pair with index 0 (the embeddings, which have no attention) is skipped.
        weights: ``[B, T]`` weights of the query positions (:func:`position_weights`).
        num_items_in_batch: the denominator; defaults to ``weights.sum()``.

    Keys that the teacher gives zero probability (padding, the future) contribute exactly 0; a
    student probability that underflowed to 0 is clamped to the smallest normal float before the log.
    """
    pairs = [(s, t) for s, t in layer_map.items() if s > 0 and t > 0]
    if not pairs:
        raise ValueError(
            f"hidden_layer_map={dict(layer_map)} maps no transformer block, so there is no attention to transfer."
        )
    num_items = weights.sum()
    denom = loss_denominator(num_items, num_items_in_batch)
    total = None
    for s_index, t_index in pairs:
        s_att, t_att = student_attentions[s_index - 1], teacher_attentions[t_index - 1]
        if s_att is None or t_att is None:
            raise ValueError(
                "The attention probabilities are missing (None): load both models with "
                "attn_implementation='eager'."
            )
        dtype = _compute_dtype(s_att)
        s_att, t_att = s_att.to(dtype), t_att.to(device=s_att.device, dtype=dtype)
        if s_att.shape != t_att.shape:
            raise ValueError(
                f"Student block {s_index} attention {tuple(s_att.shape)} and teacher block {t_index} attention "
                f"{tuple(t_att.shape)} differ: attention transfer needs the same number of heads."
            )
        log_s = torch.log(s_att.clamp_min(torch.finfo(dtype).tiny))
        log_t = torch.log(t_att.clamp_min(torch.finfo(dtype).tiny))
        diff = torch.where(t_att > 0, log_t - log_s, torch.zeros((), dtype=dtype, device=s_att.device))
        per_query = (t_att * diff).sum(-1).mean(1)  # [B, T]: summed over keys, averaged over heads
        term = _weighted_sum(per_query, weights.to(s_att.device))
        total = term if total is None else total + term
    return total / len(pairs) / denom, num_items


__all__ = [
    "HIDDEN_LOSSES",
    "attention_kl_loss",
    "check_layer_map",
    "default_layer_map",
    "hidden_state_distance",
    "hidden_state_loss",
    "parse_layer_map",
    "position_weights",
]
