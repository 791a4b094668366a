"""Memory-lean distillation losses: the semantics of :func:`distill.losses.distillation_loss`,
computed over chunks of token positions.

The plain loss keeps several float32 ``[N, V]`` tensors alive for autograd (log-softmaxes of both
models, the KL terms, the cross-entropy input, ...). Here a custom :class:`torch.autograd.Function`
walks over the *valid* positions ``chunk_size`` rows at a time, computes the loss sums and,
analytically, the gradient with respect to the student logits of that chunk, and writes that
gradient into one preallocated buffer (Liger-Kernel style; the per-chunk math is in
:mod:`distill.losses.kernels`). Backward only scales the buffer by the
incoming gradient. So the only full-size tensor besides the logits is the gradient buffer (in the
student logits' dtype), which the plain path also creates in its backward pass.

:func:`fused_linear_distillation_loss` goes one step further and takes hidden states and LM-head
weights: logits exist only one chunk at a time, and the gradients are accumulated straight into
the hidden states, head weight and bias. No ``[N, V]`` tensor is ever materialised.

Differences from the plain path, by design:

* Only ``loss`` is differentiable. ``kd_loss`` and ``ce_loss`` are returned *detached* (for
  logging); call :func:`distill.losses.distillation_loss` if you need to backpropagate a single term.
* The teacher never receives a gradient, even if its tensors require one.
* The gradient is computed during the forward pass whenever grad mode is on and a student input
  requires grad, so the graph can be backpropagated only once (a second backward raises).
* Under ``torch.no_grad()`` (or when no student input requires grad) no gradient work is done.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .divergences import check_loss_settings
from .kernels import chunk_loss_and_grad
from .logit import DistillationLossOutput, align_vocab, loss_denominator

__all__ = ["chunked_distillation_loss", "fused_linear_distillation_loss"]


# ----------------------------------------------------------------------------------------------
# Validation and bookkeeping shared by both entry points
# ----------------------------------------------------------------------------------------------
def _validate(
    alpha: float, temperature: float, kind: str, jsd_beta: float, skew_alpha: float, labels, chunk_size: int
):
    # The checks of distillation_loss (plus chunk_size).
    check_loss_settings(alpha, temperature, kind, jsd_beta, skew_alpha, has_labels=labels is not None)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer.")


def _shared_vocab(vs: int, vt: int, vocab_size: Optional[int]) -> int:
    """Vocabulary width after slicing, validated exactly like :func:`align_vocab` (on meta tensors)."""
    s, _ = align_vocab(torch.empty((0, vs), device="meta"), torch.empty((0, vt), device="meta"), vocab_size)
    return s.shape[-1]


def _valid_rows(
    lead_shape: torch.Size, labels: Optional[torch.Tensor], ignore_index: int, device: torch.device
):
    """Index tuple of the valid positions (works on non-contiguous tensors without a copy),
    their labels, and the count."""
    if labels is None:
        valid = torch.ones(lead_shape, dtype=torch.bool, device=device)
        valid_labels = None
    else:
        if labels.shape != lead_shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} must have the leading shape of the logits {tuple(lead_shape)}."
            )
        valid = labels != ignore_index
        valid_labels = labels[valid].to(device)
        valid = valid.to(device)
    rows = valid.nonzero(as_tuple=True)
    return rows, valid_labels, valid.sum()


def _denominator(num_valid: torch.Tensor, num_items_in_batch) -> float:
    return float(loss_denominator(num_valid, num_items_in_batch))  # the rule of distillation_loss


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk when none is given.

    On CPU a chunk of about 2^20 values (4 MiB in float32) keeps the few ``[c, V]`` buffers of the
    kernel near the core: at V = 4096 (256 rows) a whole KD training step measured 1.00x a plain
    step plus a teacher forward on one machine, against 1.03x with 64 rows and 1.08x with 1024
    (``benchmarks/bench_kd_overhead.py``, one thread). On another, with 2 MiB of L2 per core, the
    loss alone was fastest at 2^17-2^18 values (64 rows: 24 ms against 28-37 ms at 256), but whole
    steps differed by about 1% (1.077x with 64 rows, 1.088x with 256), so the default stays. On
    accelerators 1024 rows, bounded by 2^27 values (not measured here: no GPU).
    """
    if torch.device(device).type == "cpu":
        return max(8, min(4096, 2**20 // max(vocab_size, 1)))
    return max(16, min(1024, 2**27 // max(vocab_size, 1)))


class _RowGather:
    """Copies chunks of the valid rows of a ``[..., V]`` tensor as contiguous ``[c, vocab]`` blocks.

    When the rows sit at offsets that are multiples of one row stride (a contiguous tensor, or the
    causal shift ``logits[:, :-1]`` of one), chunks come from ``index_select`` on a 2-D strided view
    of the storage, several times faster on CPU than advanced indexing, which is the fallback.
    """

    def __init__(self, x: torch.Tensor, rows: tuple, vocab: int):
        self.x, self.rows, self.vocab = x, rows, vocab
        self.view, self.offsets = None, None
        lead = [(x.stride(d), x.shape[d]) for d in range(x.dim() - 1) if x.shape[d] > 1]
        if x.stride(-1) != 1 or not lead or not rows[0].numel():
            return
        row_stride = 0
        for stride, _ in lead:
            row_stride = math.gcd(row_stride, stride)
        if row_stride < 1:
            return
        offsets = torch.zeros_like(rows[0])
        for d, r in enumerate(rows):
            offsets += r * (x.stride(d) // row_stride)
        n = int(offsets.max()) + 1
        self.view = x.as_strided((n, vocab), (row_stride, 1), x.storage_offset())
        self.offsets = offsets

    def take(self, start: int, stop: int) -> torch.Tensor:
        if self.view is not None:
            return self.view.index_select(0, self.offsets[start:stop])
        return self.x[tuple(r[start:stop] for r in self.rows)][:, : self.vocab].contiguous()


# ----------------------------------------------------------------------------------------------
# The autograd Function: all work in forward, backward scales precomputed gradients
# ----------------------------------------------------------------------------------------------
class _PrecomputedGradLoss(torch.autograd.Function):
    """Runs ``compute()`` in forward; it returns ``(loss, kd, ce, grads)`` where ``grads`` lines up
    with ``inputs``. Backward multiplies those buffers in place by ``grad_output`` and returns them."""

    @staticmethod
    def forward(ctx, compute: Callable, *inputs: torch.Tensor):
        loss, kd_loss, ce_loss, grads = compute()
        ctx.grads = grads
        ctx.mark_non_differentiable(kd_loss, ce_loss)
        return loss, kd_loss, ce_loss

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "The chunked distillation loss precomputes its gradient and can be backpropagated "
                "only once; compute the loss again instead of using retain_graph=True."
            )
        ctx.grads = None  # release the buffers with the graph
        out = []
        for g in grads:
            if g is not None:
                g.mul_(grad_loss)  # in place: no second full-size buffer
            out.append(g)
        return (None, *out)


def _finish(div_sum, ce_sum, denom, alpha, temperature, dtype, device, has_labels):
    kd_loss = (temperature**2 * div_sum / denom).to(dtype)
    if has_labels:
        ce_loss = (ce_sum / denom).to(dtype)
    else:
        ce_loss = torch.zeros((), dtype=dtype, device=device)
    loss = alpha * kd_loss + (1.0 - alpha) * ce_loss
    return loss, kd_loss, ce_loss


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def chunked_distillation_loss(
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
    chunk_size: Optional[int] = None,
) -> DistillationLossOutput:
    """:func:`distill.losses.distillation_loss`, computed ``chunk_size`` valid positions at a time.

    Same arguments, semantics and errors as :func:`~distill.losses.distillation_loss`, plus
    ``chunk_size`` (rows per chunk; peak extra memory is a few ``chunk_size x V`` float32 tensors
    plus one gradient buffer shaped like ``student_logits``; ``None`` picks
    :func:`default_chunk_size` for the vocabulary and device).

    Returns:
        :class:`~distill.losses.DistillationLossOutput`. Only ``loss`` carries a gradient (to
        ``student_logits`` only); ``kd_loss`` and ``ce_loss`` are detached.
    """
    _validate(alpha, temperature, kind, jsd_beta, skew_alpha, labels, 1 if chunk_size is None else chunk_size)
    if student_logits.dim() == 1 and teacher_logits.dim() == 1:  # a single position
        student_logits, teacher_logits = student_logits[None], teacher_logits[None]
        labels = None if labels is None else labels.reshape(1)
    vocab = _shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab, student_logits.device)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape[:-1]) + (vocab,)} and teacher logits "
            f"{tuple(teacher_logits.shape[:-1]) + (vocab,)} do not align position by position."
        )
    device = student_logits.device
    dtype = _compute_dtype(student_logits.dtype)
    rows, valid_labels, num_valid = _valid_rows(student_logits.shape[:-1], labels, ignore_index, device)
    denom = _denominator(num_valid, num_items_in_batch)
    n_rows = rows[0].numel()
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    # Row-major flat index of each valid position (its row in the contiguous gradient buffer).
    flat_rows = torch.zeros_like(rows[0])
    for dim, r in enumerate(rows):
        flat_rows = flat_rows * student_logits.shape[dim] + r
    ignored_rows = None
    if need_grad and n_rows < student_logits[..., 0].numel():
        keep = torch.ones(student_logits[..., 0].numel(), dtype=torch.bool, device=device)
        keep[flat_rows] = False
        ignored_rows = keep.nonzero().view(-1)

    student_rows = _RowGather(student_logits.detach(), rows, vocab)
    teacher_rows = _RowGather(teacher_logits.detach(), rows, vocab)

    def compute():
        # A contiguous buffer, so that valid rows can be addressed by their flat index. Every valid
        # row is written once (index_copy_); only the rest (ignored rows, padded vocabulary) is zeroed.
        grad_buf = grad_rows = None
        if need_grad:
            width = student_logits.shape[-1]
            if vocab == width:
                grad_buf = torch.empty(student_logits.shape, dtype=student_logits.dtype, device=device)
                if n_rows < grad_buf.numel() // max(width, 1):
                    grad_buf.view(-1, width).index_fill_(0, ignored_rows, 0.0)
            else:
                grad_buf = torch.zeros(student_logits.shape, dtype=student_logits.dtype, device=device)
            grad_rows = grad_buf.view(-1, width)[:, :vocab]
        div_total = torch.zeros((), dtype=torch.float64, device=device)
        ce_total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n_rows, chunk_size):
            stop = min(start + chunk_size, n_rows)
            flat_idx = flat_rows[start:stop]
            lab = None if valid_labels is None else valid_labels[start:stop]
            acc = []  # gradient parts, summed in the compute dtype and rounded once

            def emit(g, acc=acc):
                if acc:
                    acc[0].add_(g)
                else:
                    acc.append(g)

            # Fresh contiguous copies, so the kernel owns (and may overwrite) these chunks.
            chunk = [student_rows.take(start, stop), teacher_rows.take(start, stop)]
            div_sum, ce_sum = chunk_loss_and_grad(
                chunk,
                lab,
                temperature=temperature,
                kind=kind,
                jsd_beta=jsd_beta,
                skew_alpha=skew_alpha,
                kd_coef=alpha / denom,
                ce_coef=(1.0 - alpha) / denom,
                emit=emit if need_grad else None,
                dtype=dtype,
            )
            div_total += div_sum.to(torch.float64)
            if ce_sum is not None:
                ce_total += ce_sum.to(torch.float64)
            if acc:
                grad_rows.index_copy_(0, flat_idx, acc.pop().to(grad_buf.dtype))
            elif need_grad:  # no gradient terms (alpha = 0 without labels): zero rows
                grad_rows.index_fill_(0, flat_idx, 0.0)
        loss, kd_loss, ce_loss = _finish(
            div_total, ce_total, denom, alpha, temperature, dtype, device, valid_labels is not None
        )
        return loss, kd_loss, ce_loss, (grad_buf,)

    if need_grad:
        loss, kd_loss, ce_loss = _PrecomputedGradLoss.apply(compute, student_logits)
    else:
        with torch.no_grad():
            loss, kd_loss, ce_loss, _ = compute()
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)


def fused_linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    student_head_bias: Optional[torch.Tensor] = None,
    teacher_head_bias: Optional[torch.Tensor] = None,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    ignore_index: int = -100,
    num_items_in_batch: Optional[int | torch.Tensor] = None,
    vocab_size: Optional[int] = None,
    chunk_size: Optional[int] = 1024,
) -> DistillationLossOutput:
    """The distillation loss of ``F.linear(hidden, weight, bias)`` logits, fused with the LM heads.

    Equals ``distillation_loss(F.linear(student_hidden, W_s, b_s), F.linear(teacher_hidden, W_t,
    b_t), labels, ...)`` but computes logits ``chunk_size`` valid positions at a time, so no
    ``[N, V]`` tensor is ever materialised.

    Args:
        student_hidden: ``[..., H_s]`` final hidden states of the student (positions aligned with
            ``labels``, i.e. already shifted for causal LMs).
        student_head_weight: ``[V_s, H_s]`` LM-head weight (``lm_head.weight``).
        teacher_hidden: ``[..., H_t]`` teacher hidden states with the same leading shape.
        teacher_head_weight: ``[V_t, H_t]``.
        student_head_bias, teacher_head_bias: optional ``[V]`` biases.
        Other arguments: as :func:`distill.losses.distillation_loss`; ``vocab_size`` slices the
        head rows; ``chunk_size`` as in :func:`chunked_distillation_loss` (``None``: the default
        for the vocabulary and device).

    Returns:
        :class:`~distill.losses.DistillationLossOutput`. ``loss`` is differentiable with respect to
        ``student_hidden``, ``student_head_weight`` and ``student_head_bias``; the teacher gets no
        gradient; ``kd_loss`` and ``ce_loss`` are detached. Low-precision weight gradients are
        accumulated in float32 across chunks and cast at the end.
    """
    _validate(alpha, temperature, kind, jsd_beta, skew_alpha, labels, 1 if chunk_size is None else chunk_size)
    if student_hidden.dim() == 1 and teacher_hidden.dim() == 1:  # a single position
        student_hidden, teacher_hidden = student_hidden[None], teacher_hidden[None]
        labels = None if labels is None else labels.reshape(1)
    for name, h, w in (
        ("student", student_hidden, student_head_weight),
        ("teacher", teacher_hidden, teacher_head_weight),
    ):
        if w.dim() != 2 or w.shape[1] != h.shape[-1]:
            raise ValueError(f"{name} head weight {tuple(w.shape)} must be [V, {h.shape[-1]}].")
    vocab = _shared_vocab(student_head_weight.shape[0], teacher_head_weight.shape[0], vocab_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab, student_hidden.device)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"Student hidden states {tuple(student_hidden.shape)} and teacher hidden states "
            f"{tuple(teacher_hidden.shape)} do not align position by position."
        )
    device = student_hidden.device
    logits_dtype = torch.promote_types(student_hidden.dtype, student_head_weight.dtype)
    dtype = _compute_dtype(logits_dtype)
    rows, valid_labels, num_valid = _valid_rows(student_hidden.shape[:-1], labels, ignore_index, device)
    denom = _denominator(num_valid, num_items_in_batch)
    n_rows = rows[0].numel()
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and student_hidden.requires_grad
    need_w = grad_on and student_head_weight.requires_grad
    need_b = grad_on and student_head_bias is not None and student_head_bias.requires_grad
    need_grad = need_h or need_w or need_b

    w_s = student_head_weight[:vocab]
    b_s = None if student_head_bias is None else student_head_bias[:vocab]
    w_t = teacher_head_weight[:vocab].detach()
    b_t = None if teacher_head_bias is None else teacher_head_bias[:vocab].detach()

    def acc_dtype(t: torch.Tensor) -> torch.dtype:
        return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype

    def compute():
        grad_h = torch.zeros_like(student_hidden) if need_h else None
        grad_w = (
            torch.zeros(student_head_weight.shape, dtype=acc_dtype(student_head_weight), device=device)
            if need_w
            else None
        )
        grad_b = (
            torch.zeros(student_head_bias.shape, dtype=acc_dtype(student_head_bias), device=device)
            if need_b
            else None
        )
        div_total = torch.zeros((), dtype=torch.float64, device=device)
        ce_total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n_rows, chunk_size):
            idx = tuple(r[start : start + chunk_size] for r in rows)
            lab = None if valid_labels is None else valid_labels[start : start + chunk_size]
            h = student_hidden[idx]
            acc = []

            def emit(g, acc=acc):
                if acc:
                    acc[0].add_(g)
                else:
                    acc.append(g)

            chunk = [F.linear(h, w_s, b_s), F.linear(teacher_hidden[idx].detach(), w_t, b_t)]
            div_sum, ce_sum = chunk_loss_and_grad(
                chunk,
                lab,
                temperature=temperature,
                kind=kind,
                jsd_beta=jsd_beta,
                skew_alpha=skew_alpha,
                kd_coef=alpha / denom,
                ce_coef=(1.0 - alpha) / denom,
                emit=emit if need_grad else None,
                dtype=dtype,
            )
            div_total += div_sum.to(torch.float64)
            if ce_sum is not None:
                ce_total += ce_sum.to(torch.float64)
            if acc:
                # Same rounding as autograd through F.linear: dL/dz in the logits' dtype.
                g = acc.pop().to(logits_dtype)
                if need_h:
                    grad_h[idx] = (g @ w_s.to(logits_dtype)).to(grad_h.dtype)
                if need_w:
                    grad_w[:vocab].addmm_(g.t().to(grad_w.dtype), h.to(grad_w.dtype))
                if need_b:
                    grad_b[:vocab] += g.sum(0).to(grad_b.dtype)
                del g
        loss, kd_loss, ce_loss = _finish(
            div_total, ce_total, denom, alpha, temperature, dtype, device, valid_labels is not None
        )
        grads = (
            grad_h,
            None if grad_w is None else grad_w.to(student_head_weight.dtype),
            None if grad_b is None else grad_b.to(student_head_bias.dtype),
        )
        return loss, kd_loss, ce_loss, grads

    if need_grad:
        inputs = (
            student_hidden,
            student_head_weight,
            student_head_bias if student_head_bias is not None else torch.empty(0),
        )
        loss, kd_loss, ce_loss = _PrecomputedGradLoss.apply(compute, *inputs)
    else:
        with torch.no_grad():
            loss, kd_loss, ce_loss, _ = compute()
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)
