"""Cross-tokenizer distillation: a teacher and a student that tokenize the same text differently.

The teacher reads the same text as the student, tokenized by its own tokenizer. Both token sequences
are aligned by character offsets: an aligned *span* is the shortest run of student tokens and of
teacher tokens that cover the same characters (`align_spans`; the two tokenizers agree on where the
span ends). Each side's prediction of a span is its distribution over the span's first token times the
probabilities of the span's remaining tokens (the chain rule on the tokens actually there; the vector is
unnormalised when a span has several tokens, as in TRL's GOLD). Two divergences compare them:

* ``uld``: Universal Logit Distillation (Boizard et al. 2024): the Wasserstein-1 distance between the
  two probability vectors sorted in decreasing order (the shorter one padded with zeros),
  ``sum_i |sort(p_s)_i - sort(p_t)_i|``. Needs no correspondence between the vocabularies.
* ``gold``: as in TRL's GOLD trainer: tokens whose strings exist in both vocabularies (`build_vocab_map`)
  get the KL divergence on the mapped vocabulary, ``sum_k p_t (log p_t - log p_s) - p_t + p_s`` (the
  generalised KL of unnormalised measures, which is the forward KL when both sides are
  distributions), and the remaining tokens of each side get ULD. With identical tokenizers every span
  is one token, every token is matched and gold is the ordinary forward KL.

Conventions of `distill.losses.logit` hold: ``loss = alpha * T^2 * KD + (1 - alpha) * CE``, softmax at
temperature T in float32 (float64 for float64 inputs), KD summed over aligned spans and CE over the
student's target tokens, both divided by the same denominator (the Trainer's ``num_items_in_batch``, the
count of the student's target tokens), so gradient accumulation and DDP give the same update as one
large batch. A span carries a loss only when every student token in it is a target (label != -100) and
both sides have a prediction for its first token (it is not the first token of the row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .logit import DistillationLossOutput, loss_denominator

CROSS_TOKENIZER_LOSSES = ("gold", "uld")

# Batch keys the cross-tokenizer collator adds (`distill.data.cross_tokenizer`); none is a model input.
TEACHER_INPUT_KEYS = ("teacher_input_ids", "teacher_attention_mask")
SPAN_KEYS = ("xtok_row", "xtok_student_pos", "xtok_student_ids", "xtok_teacher_pos", "xtok_teacher_ids")
CROSS_TOKENIZER_KEYS = TEACHER_INPUT_KEYS + SPAN_KEYS


def check_cross_tokenizer_loss(kind: str) -> None:
    if kind not in CROSS_TOKENIZER_LOSSES:
        raise ValueError(
            f"cross_tokenizer_loss={kind!r} is unknown: use one of {', '.join(CROSS_TOKENIZER_LOSSES)}."
        )


def require_offsets(tokenizer, who: str) -> None:
    """Refuse a tokenizer that cannot give character offsets (a slow, pure-Python tokenizer)."""
    if tokenizer is None:
        raise ValueError(
            f"cross_tokenizer_loss needs the {who}'s tokenizer: "
            + (
                "save one beside the teacher or set teacher_tokenizer_name_or_path."
                if who == "teacher"
                else "pass processing_class= (or tokenizer_name_or_path)."
            )
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"The {who}'s tokenizer ({type(tokenizer).__name__}) is a slow tokenizer without character offsets "
            "(return_offsets_mapping), which cross_tokenizer_loss aligns the two sequences by: load a fast "
            "tokenizer (a tokenizer.json; AutoTokenizer.from_pretrained(..., use_fast=True))."
        )


# ---- alignment ------------------------------------------------------------------------------------


def align_spans(
    student_offsets: Sequence[tuple[int, int]], teacher_offsets: Sequence[tuple[int, int]]
) -> list[tuple[range, range]]:
    """Group two tokenizations of one text into aligned spans by their character offsets.

    Both sides are walked together, always advancing the side whose current token ends first; a span
    closes where both sides' tokens end at the same character. Tokens left over at the end (one side
    covers less text) form a last span with whatever is left of the other side.

    Returns:
        ``[(student_positions, teacher_positions), ...]`` as ranges of token indices, in text order.
    """
    spans = []
    s = t = s_start = t_start = 0
    n_s, n_t = len(student_offsets), len(teacher_offsets)
    while s < n_s and t < n_t:
        s_end, t_end = student_offsets[s][1], teacher_offsets[t][1]
        if s_end < t_end:
            s += 1
        elif t_end < s_end:
            t += 1
        else:
            s += 1
            t += 1
            spans.append((range(s_start, s), range(t_start, t)))
            s_start, t_start = s, t
    if s_start < n_s and t_start < n_t:
        spans.append((range(s_start, n_s), range(t_start, n_t)))
    return spans


def span_tensors(
    rows: Sequence[tuple[list[tuple[range, range]], list[int], list[int], list[int]]],
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """The spans of a batch that carry a loss, as padded tensors (the ``xtok_*`` batch keys).

    Args:
        rows: per row ``(spans, student_ids, student_labels, teacher_ids)``; labels unshifted
            (``labels[j]`` is the target of token j, -100 for none).

    Returns:
        ``xtok_row [G]``, and per side ``xtok_{side}_pos [G, M]`` (token positions of the span, -1 padded)
        and ``xtok_{side}_ids [G, M]`` (those tokens, 0 padded).
    """
    # Vectorised over the spans of the batch (numpy): a Python loop per span and token cost more than the loss.
    bounds, row_index, s_ids, t_ids = [], [], [], []
    for r, (spans, student_ids, labels, teacher_ids) in enumerate(rows):
        b = np.array([(s.start, s.stop, t.start, t.stop) for s, t in spans], dtype=np.int64).reshape(-1, 4)
        masked = np.concatenate(([0], np.cumsum(np.asarray(labels, dtype=np.int64) == ignore_index)))
        keep = (b[:, 0] >= 1) & (b[:, 2] >= 1)  # no prediction of a row's first token
        keep &= masked[b[:, 1]] == masked[b[:, 0]]  # masked (prompt, padding) text: no loss on either side
        bounds.append(b[keep])
        row_index.append(np.full(int(keep.sum()), r, dtype=np.int64))
        s_ids.append(student_ids)
        t_ids.append(teacher_ids)
    bounds = np.concatenate(bounds) if bounds else np.zeros((0, 4), dtype=np.int64)
    row_index = np.concatenate(row_index) if row_index else np.zeros(0, dtype=np.int64)

    def side(starts, stops, id_rows):
        width = int((stops - starts).max()) if len(starts) else 1
        pos = starts[:, None] + np.arange(width)[None, :]
        inside = pos < stops[:, None]
        table = np.zeros((len(id_rows), max([len(x) for x in id_rows] + [1])), dtype=np.int64)
        for r, x in enumerate(id_rows):
            table[r, : len(x)] = x
        ids = table[row_index[:, None], np.minimum(pos, table.shape[1] - 1)]
        return torch.from_numpy(np.where(inside, pos, -1)), torch.from_numpy(np.where(inside, ids, 0))

    s_pos, s_tok = side(bounds[:, 0], bounds[:, 1], s_ids)
    t_pos, t_tok = side(bounds[:, 2], bounds[:, 3], t_ids)
    return {
        "xtok_row": torch.from_numpy(row_index),
        "xtok_student_pos": s_pos,
        "xtok_student_ids": s_tok,
        "xtok_teacher_pos": t_pos,
        "xtok_teacher_ids": t_tok,
    }


def select_rows(spans: dict[str, torch.Tensor], num_rows: int) -> dict[str, torch.Tensor]:
    """The spans of the first ``num_rows`` rows (evaluation drops the rows accelerate repeats)."""
    keep = spans["xtok_row"] < num_rows
    return {k: v[keep] for k, v in spans.items()}


# ---- vocabularies ---------------------------------------------------------------------------------


@dataclass
class VocabMap:
    """Which token strings both vocabularies hold (for ``gold``).

    Attributes:
        matched_teacher / matched_student: ids of the shared strings, in pairs (teacher id k -> student id k).
        unmatched_teacher / unmatched_student: every other id below each tokenizer's length.
    """

    matched_teacher: torch.Tensor
    matched_student: torch.Tensor
    unmatched_teacher: torch.Tensor
    unmatched_student: torch.Tensor

    def __post_init__(self):
        # Computed once: an id list that is a run of consecutive ids (two BPEs trained alike share their
        # first merges, so their shared strings often keep the same ids) is taken as a view, not a copy.
        self.column_slices = {f: _as_slice(getattr(self, f)) for f in self.__dataclass_fields__}

    def take(self, values: torch.Tensor, field: str) -> torch.Tensor:
        """``values[..., ids]`` for the id list ``field``: a view when the ids are consecutive."""
        cut = self.column_slices[field]
        return values[..., cut] if cut is not None else values.index_select(-1, getattr(self, field))

    def to(self, device) -> "VocabMap":
        return VocabMap(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _as_slice(ids: torch.Tensor) -> Optional[slice]:
    if ids.numel() == 0:
        return slice(0, 0)
    start = int(ids[0])
    if torch.equal(ids.cpu(), torch.arange(start, start + ids.numel())):
        return slice(start, start + ids.numel())
    return None


def build_vocab_map(student_tokenizer, teacher_tokenizer) -> VocabMap:
    """Pair the ids of the token strings both tokenizers have (their real vocabularies, added tokens
    included; padding rows of a larger LM head are never tokens)."""
    s_vocab = {tok: i for tok, i in student_tokenizer.get_vocab().items() if i < len(student_tokenizer)}
    t_vocab = {tok: i for tok, i in teacher_tokenizer.get_vocab().items() if i < len(teacher_tokenizer)}
    pairs = sorted((t_vocab[tok], s_vocab[tok]) for tok in t_vocab.keys() & s_vocab.keys())
    matched_t = torch.as_tensor([p[0] for p in pairs], dtype=torch.long)
    matched_s = torch.as_tensor([p[1] for p in pairs], dtype=torch.long)

    def rest(size, matched):
        keep = torch.ones(size, dtype=torch.bool)
        keep[matched] = False
        return keep.nonzero(as_tuple=True)[0]

    return VocabMap(
        matched_t, matched_s, rest(len(teacher_tokenizer), matched_t), rest(len(student_tokenizer), matched_s)
    )


# ---- divergences ----------------------------------------------------------------------------------


def span_log_probs(
    logits: torch.Tensor, positions: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``[G, V]`` log of each span's (unnormalised) prediction: the log-distribution over its first token,
    plus the log-probabilities of its remaining tokens (each predicted by the position before it)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat = logits.reshape(-1, logits.shape[-1])
    predicting = predicting_rows(positions, rows, logits.shape[1])
    needed = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    needed[predicting[positions >= 0]] = True
    log_probs, compact = row_log_probs(flat, needed, temperature, dtype)
    return gather_span_log_probs(log_probs, compact, predicting, positions, ids)


def predicting_rows(positions: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """``[G, M]`` the row of the flattened ``[B * T, V]`` logits that predicts each span token (garbage where
    ``positions`` is -1 padding)."""
    return rows[:, None] * width + positions - 1


def row_log_probs(
    flat: torch.Tensor, needed: torch.Tensor, temperature: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_softmax(flat / T)`` of the ``needed`` rows only (``[N, V]``), and ``compact [B * T]``: the row of
    that result holding each row of ``flat`` (-1 for rows not computed). One softmax per row, shared by every
    span (and the cross-entropy) that reads it."""
    index = needed.nonzero(as_tuple=True)[0]
    compact = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
    compact[index] = torch.arange(index.numel(), device=flat.device)
    x = flat.index_select(0, index).to(dtype)
    return F.log_softmax(x / temperature if temperature != 1.0 else x, dim=-1), compact


def gather_span_log_probs(
    log_probs: torch.Tensor,
    compact: torch.Tensor,
    predicting: torch.Tensor,
    positions: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """`span_log_probs` from the `row_log_probs` of the rows the spans read: the whole distribution of each
    span's first token, and one entry (the token there) for each later token."""
    first = log_probs.index_select(0, compact[predicting[:, 0]])
    if positions.shape[1] > 1:
        later = positions[:, 1:] >= 0
        later_lp = log_probs[compact[predicting[:, 1:][later]], ids[:, 1:][later]]
        extra = torch.zeros(later.shape, dtype=first.dtype, device=first.device).masked_scatter(
            later, later_lp
        )
        first = first + extra.sum(-1, keepdim=True)
    return first


def sorted_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row, ``sum_i |sort(p)_i - sort(q)_i|`` with both sorted in decreasing order and the shorter row
    padded with zeros: the Wasserstein-1 distance of ULD. Rows of width 0 count as all zeros.

    Only the ``n = min(width)`` largest entries of the wider side meet a nonzero entry of the other; the
    rest meet the zero padding and add their (nonnegative) sum. So the wider side is partially selected
    (``topk``, then a sort of those ``n``) instead of sorted in full, and when one side is empty (gold when
    one vocabulary holds every token string of the other) nothing is sorted at all.
    """
    if p.shape[-1] < q.shape[-1]:
        p, q = q, p  # p is the wider side from here on (|a - b| is symmetric)
    n = q.shape[-1]
    if n == 0:
        return p.sum(-1)
    q_sorted = q.sort(dim=-1, descending=True).values
    if n == p.shape[-1]:
        return (p.sort(dim=-1, descending=True).values - q_sorted).abs().sum(-1)
    top, index = p.topk(n, dim=-1, sorted=False)
    # the entries outside the top n, summed as they are (no cancellation of sum(p) - sum(top))
    rest = p.scatter(-1, index, 0.0).sum(-1)
    return (top.sort(dim=-1, descending=True).values - q_sorted).abs().sum(-1) + rest


def generalized_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per row, ``sum p (log p - log q) - p + q`` for unnormalised ``p`` (teacher) and ``q`` (student):
    >= 0, 0 only when p = q, and the KL divergence when both sum to 1. Terms with p = 0 give q."""
    p, q = log_p.exp(), log_q.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros((), dtype=p.dtype, device=p.device))
    return (p * diff - p + q).sum(-1)


def span_divergence(
    log_ps: torch.Tensor, log_pt: torch.Tensor, kind: str, vocab_map: Optional[VocabMap] = None
) -> torch.Tensor:
    """Per span, the ``uld`` or ``gold`` divergence between the student's (``log_ps [G, Vs]``) and teacher's
    (``log_pt [G, Vt]``) span predictions (see the module docstring)."""
    check_cross_tokenizer_loss(kind)
    if kind == "uld":
        return sorted_l1(log_ps.exp(), log_pt.exp())
    if vocab_map is None:
        raise ValueError("cross_tokenizer_loss='gold' needs the vocabulary map (build_vocab_map).")
    m = vocab_map
    matched = generalized_kl(m.take(log_pt, "matched_teacher"), m.take(log_ps, "matched_student"))
    rest = sorted_l1(m.take(log_ps, "unmatched_student").exp(), m.take(log_pt, "unmatched_teacher").exp())
    return matched + rest


def cross_tokenizer_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    spans: dict[str, torch.Tensor],
    labels: Optional[torch.Tensor],
    *,
    kind: str,
    alpha: float,
    temperature: float,
    vocab_map: Optional[VocabMap] = None,
    student_vocab_size: Optional[int] = None,
    teacher_vocab_size: Optional[int] = None,
    num_items_in_batch=None,
    ignore_index: int = -100,
) -> DistillationLossOutput:
    """``alpha * T^2 * sum_spans D(teacher, student) / n + (1 - alpha) * CE(student, labels)``.

    Args:
        student_logits: ``[B, Ts, Vs]`` unshifted logits of the student (position t predicts token t + 1).
        teacher_logits: ``[B, Tt, Vt]`` unshifted logits of the teacher on its own tokens of the same text.
        spans: the ``xtok_*`` tensors of `span_tensors` (only spans that carry a loss).
        labels: ``[B, Ts]`` unshifted student labels for CE (-100: none), or None (then ``alpha`` must be 1).
        kind: ``gold`` or ``uld``.
        alpha, temperature: as in `distill.losses.logit.distillation_loss`.
        vocab_map: `build_vocab_map` of the two tokenizers (``gold``).
        student_vocab_size / teacher_vocab_size: each tokenizer's length; logits are sliced to it (an LM head
            may have padding rows, which are never tokens).
        num_items_in_batch: the shared denominator; defaults to the number of student target tokens.
    """
    check_cross_tokenizer_loss(kind)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be greater than 0.")
    if labels is None and alpha != 1.0:
        raise ValueError(
            f"alpha={alpha} < 1 needs labels for the cross-entropy term; pass labels or set alpha=1."
        )
    if student_vocab_size is not None:
        student_logits = student_logits[..., :student_vocab_size]
    if teacher_vocab_size is not None:
        teacher_logits = teacher_logits[..., :teacher_vocab_size]
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    batch, width, s_vocab = student_logits.shape
    s_flat = student_logits.reshape(-1, s_vocab)
    rows = spans["xtok_row"]
    s_pos = spans["xtok_student_pos"]
    s_pred = predicting_rows(s_pos, rows, width)
    # The student rows read: the cross-entropy's (each position with a target next token) and the spans'.
    needed = torch.zeros(s_flat.shape[0], dtype=torch.bool, device=s_flat.device)
    if labels is not None:
        targets = torch.full_like(labels, ignore_index)
        targets[:, :-1] = labels[:, 1:]  # the token each position predicts
        targets = targets.reshape(-1)
        valid = targets != ignore_index
        num_valid = valid.sum()
        needed |= valid
    else:
        valid = None
        num_valid = torch.as_tensor(rows.numel(), device=student_logits.device)
    needed[s_pred[s_pos >= 0]] = True
    denom = loss_denominator(num_valid, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=student_logits.device)
    # One log_softmax per student row: at T = 1 the cross-entropy and the spans share it.
    s_lp_ce, compact = row_log_probs(s_flat, needed, 1.0, dtype)
    s_lp = s_lp_ce if temperature == 1.0 else row_log_probs(s_flat, needed, temperature, dtype)[0]
    if rows.numel():
        log_ps = gather_span_log_probs(s_lp, compact, s_pred, s_pos, spans["xtok_student_ids"])
        with torch.no_grad():
            log_pt = span_log_probs(
                teacher_logits.detach(),
                spans["xtok_teacher_pos"],
                spans["xtok_teacher_ids"],
                rows,
                temperature,
            ).to(dtype)
        div = span_divergence(log_ps, log_pt, kind, vocab_map)
        kd_loss = temperature**2 * div.sum() / denom
    else:  # no span carries a loss here: 0, still attached to the graph
        kd_loss = student_logits.sum().to(dtype) * 0.0
    if valid is not None:
        at = compact[valid.nonzero(as_tuple=True)[0]]
        ce_sum = -s_lp_ce.index_select(0, at).gather(-1, targets[valid][:, None]).sum()
        ce_loss = ce_sum / denom
    else:
        ce_loss = kd_loss.new_zeros(())
    loss = alpha * kd_loss + (1.0 - alpha) * ce_loss
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)
