"""Memory-lean distillation losses: the semantics of :func:`distill.losses.distillation_loss`,
computed over chunks of token positions.

The plain loss keeps several float32 ``[N, V]`` tensors alive for autograd (log-softmaxes of both
models, the KL terms, the cross-entropy input, ...). Here a custom :class:`torch.autograd.Function`
walks over the *valid* positions ``chunk_size`` rows at a time, computes the loss sums and,
analytically, the gradient with respect to the student logits of that chunk, and writes that
gradient into one preallocated buffer (Liger-Kernel style). Backward only scales the buffer by the
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

from distill.losses import DistillationLossOutput, align_vocab, check_kd_kind

__all__ = ["chunked_distillation_loss", "fused_linear_distillation_loss"]


# ----------------------------------------------------------------------------------------------
# Validation and bookkeeping shared by both entry points
# ----------------------------------------------------------------------------------------------
def _validate(alpha: float, temperature: float, kind: str, jsd_beta: float, labels, chunk_size: int):
    # Same checks, order and messages as distillation_loss (plus chunk_size).
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be greater than 0.")
    check_kd_kind(kind)
    if labels is None and alpha != 1.0:
        raise ValueError(
            f"alpha={alpha} < 1 needs labels for the cross-entropy term; pass labels or set alpha=1."
        )
    if kind == "jsd" and not 0.0 < jsd_beta < 1.0:
        raise ValueError(f"jsd_beta={jsd_beta} must be strictly between 0 and 1.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer.")


def _shared_vocab(vs: int, vt: int, vocab_size: Optional[int]) -> int:
    """Vocabulary width after slicing, validated exactly like :func:`align_vocab` (on meta tensors)."""
    s, _ = align_vocab(
        torch.empty((0, vs), device="meta"), torch.empty((0, vt), device="meta"), vocab_size
    )
    return s.shape[-1]


def _valid_rows(lead_shape: torch.Size, labels: Optional[torch.Tensor], ignore_index: int,
                device: torch.device):
    """Index tuple of the valid positions (works on non-contiguous tensors without a copy),
    their labels, and the count."""
    if labels is None:
        valid = torch.ones(lead_shape, dtype=torch.bool, device=device)
        valid_labels = None
    else:
        if labels.shape != lead_shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} must have the leading shape of the logits "
                f"{tuple(lead_shape)}."
            )
        valid = labels != ignore_index
        valid_labels = labels[valid].to(device)
        valid = valid.to(device)
    rows = valid.nonzero(as_tuple=True)
    return rows, valid_labels, valid.sum()


def _denominator(num_valid: torch.Tensor, num_items_in_batch) -> float:
    # Same rule as distillation_loss: the count of valid positions (at least 1, so that an
    # all-ignored batch gives 0, not NaN), or the caller's num_items_in_batch.
    if num_items_in_batch is None:
        return float(max(int(num_valid), 1))
    return float(num_items_in_batch)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk when none is given.

    On CPU a chunk of about 2^20 values (4 MiB in float32) keeps the few ``[c, V]`` buffers of the
    kernel in cache: at V = 4096 (256 rows) a whole KD training step measured 1.00x a plain step
    plus a teacher forward, against 1.03x with 64 rows and 1.08x with 1024
    (``benchmarks/bench_kd_overhead.py``, one thread). On accelerators 1024 rows, bounded by 2^27
    values (not measured here: no GPU).
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
# One chunk: loss sums and the analytic gradient w.r.t. the student logits
# ----------------------------------------------------------------------------------------------
def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place log-softmax over the last dimension (one transient ``[c, V]`` inside logsumexp)."""
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def _chunk_loss_and_grad(
    logits: list,
    labels: Optional[torch.Tensor],
    *,
    temperature: float,
    kind: str,
    jsd_beta: float,
    kd_coef: float,
    ce_coef: float,
    emit: Optional[Callable[[torch.Tensor], None]],
    dtype: torch.dtype,
):
    """Loss sums of one chunk, and the gradient ``kd_coef * d(T^2 D)/ds + ce_coef * dCE/ds``.

    Args:
        logits: ``[s, t]``, the student and teacher logits of the chunk (``[c, V]``). The kernel
            takes ownership: it empties the list and overwrites the tensors in place, so the
            caller must pass fresh tensors (a gather or a matmul output) and keep no reference.
        emit: called with ``[c, V]`` gradient parts in ``dtype``; their sum is the chunk gradient.
            Parts are emitted and dropped one at a time, so that at most about three ``[c, V]``
            float tensors are alive at once (four for JSD). ``None``: no gradient work. Forward KL
            goes to the faster :func:`_forward_kl_chunk`, which emits the whole gradient once.

    With ``z = s / T``, ``q = softmax(z)`` (student) and ``p = softmax(t / T)`` (teacher):

    * forward KL ``sum p log(p/q)``: ``dD/dz = q - p``
    * reverse KL ``D = sum q log(q/p)``: ``dD/dz = q * (log(q/p) - D)``
    * JSD with ``m = b p + (1-b) q``: ``dD/dz = (1-b) q (log(q/m) - KL(q||m))``
    * cross-entropy at ``T = 1``: ``softmax(s) - onehot(label)``

    and ``d(T^2 D)/ds = T dD/dz``. ``0 * log 0`` is taken as 0, as in the plain path.

    Returns:
        ``(divergence_sum, ce_sum or None)`` as 0-dim tensors in ``dtype``.
    """
    if kind == "forward_kl":
        return _forward_kl_chunk(logits, labels, temperature=temperature, kd_coef=kd_coef,
                                 ce_coef=ce_coef, emit=emit, dtype=dtype)
    s = logits.pop(0).to(dtype)
    t = logits.pop(0).to(dtype)
    T = temperature
    log_p = _log_softmax_(t.div_(T) if T != 1.0 else t)
    del t

    ce_sum = None
    lse = None
    if labels is not None:
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        ce_sum = (lse - s.gather(-1, labels[:, None])).sum()
        if emit is not None and ce_coef != 0.0:
            g = s.sub(lse).exp_()  # softmax(s)
            g[torch.arange(g.shape[0], device=g.device), labels] -= 1.0
            emit(g.mul_(ce_coef))
            del g
    if T == 1.0 and lse is not None:
        log_q = s.sub_(lse)
    else:
        log_q = _log_softmax_(s.div_(T) if T != 1.0 else s)
    del s, lse

    want = emit is not None and kd_coef != 0.0
    scale = kd_coef * T
    if kind == "reverse_kl":
        r = log_p.neg_().add_(log_q)  # log q - log p, in place of log_p
        q = log_q.exp_()
        r.masked_fill_(q == 0, 0.0)
        div_rows = (q * r).sum(-1, keepdim=True)
        div_sum = div_rows.sum()
        if want:
            emit(r.sub_(div_rows).mul_(q).mul_(scale))
    else:  # jsd
        l1b = math.log1p(-jsd_beta)
        # log m = log(b p + (1-b) q) = l1b + logaddexp(log p + log b - l1b, log q)
        log_m = log_p.add(math.log(jsd_beta) - l1b)
        torch.logaddexp(log_m, log_q, out=log_m).add_(l1b)
        p = log_p.exp()
        kl_t = log_p.sub_(log_m).masked_fill_(p == 0, 0.0).mul_(p).sum()
        del p, log_p
        q = log_q.exp()
        b = log_q.sub_(log_m).masked_fill_(q == 0, 0.0)  # log q - log m, in place of log_q
        del log_m
        kl_s_rows = (q * b).sum(-1, keepdim=True)
        div_sum = jsd_beta * kl_t + (1.0 - jsd_beta) * kl_s_rows.sum()
        if want:
            emit(b.sub_(kl_s_rows).mul_(q).mul_((1.0 - jsd_beta) * scale))
    return div_sum, ce_sum


def _forward_kl_chunk(
    logits: list,
    labels: Optional[torch.Tensor],
    *,
    temperature: float,
    kd_coef: float,
    ce_coef: float,
    emit: Optional[Callable[[torch.Tensor], None]],
    dtype: torch.dtype,
):
    """Forward KL (+ cross-entropy) of one chunk with two ``exp2`` passes and few full-size buffers.

    The default loss, so it is written for speed. With ``u = (t - max t) / T`` (kept in base-2
    units, ``u / ln 2``, because ``exp2`` is about 3x faster than ``exp`` on CPU), ``p_e = exp(u)``,
    ``Z_t = sum p_e``, and the same ``u_s``, ``q_e``, ``Z_s`` for the student:

    * ``KL = sum p (log p - log q) = sum(p_e (u - u_s)) / Z_t - log Z_t + log Z_s``;
    * ``softmax(s) = e1 / Z1`` with ``e1 = exp(T u_s)``, which is ``q_e`` at ``T = 1`` and ``q_e^2``
      at ``T = 2`` (no third exponential); ``CE = max s + log Z1 - s[label]``;
    * gradient ``kd_coef T (q - p) + ce_coef (softmax(s) - onehot)``, built with fused
      multiply-adds into one buffer.

    ``0 log 0 = 0``: a teacher logit of ``-inf`` gives ``0 * -inf = NaN`` in its row's product;
    only such rows are summed again with NaN read as 0. Same arguments and return value as
    :func:`_chunk_loss_and_grad`.
    """
    s = logits.pop(0).to(dtype)
    t = logits.pop(0).to(dtype)
    T = temperature
    base2 = 1.0 / (math.log(2.0) * T)
    m_t = t.amax(-1, keepdim=True)
    t.sub_(m_t).mul_(base2)
    p_e = torch.exp2(t)
    z_t = p_e.sum(-1, keepdim=True)
    s_lab = None if labels is None else s.gather(-1, labels[:, None])
    m_s = s.amax(-1, keepdim=True)
    s.sub_(m_s).mul_(base2)
    q_e = torch.exp2(s)
    z_s = q_e.sum(-1, keepdim=True)

    prod = t.sub_(s).mul_(p_e)  # p_e (u - u_s) / ln 2, in place of u
    kl_rows = prod.sum(-1, keepdim=True)
    bad = kl_rows.isnan().view(-1)
    if bool(bad.any()):
        kl_rows[bad] = prod[bad].nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf).sum(-1, keepdim=True)
    del prod, t
    div_sum = (kl_rows.mul_(math.log(2.0) / z_t) - z_t.log() + z_s.log()).sum()

    ce_sum, e1, z1 = None, None, None
    if labels is not None:
        if T == 1.0:
            e1, z1 = q_e, z_s
        else:
            e1 = torch.mul(q_e, q_e, out=s) if T == 2.0 else torch.exp2(s.mul_(T), out=s)  # exp(s - max s)
            z1 = e1.sum(-1, keepdim=True)
        ce_sum = (m_s + z1.log() - s_lab).sum()
    del s

    if emit is None:
        return div_sum, ce_sum
    a = kd_coef * T
    ce_coef = ce_coef if labels is not None else 0.0
    if ce_coef == 0.0:
        g = q_e.mul_(a / z_s)
    elif T == 1.0:
        g = q_e.mul_((a + ce_coef) / z_s)
    else:
        g = e1.mul_(ce_coef / z1).addcmul_(q_e, a / z_s)
    if a != 0.0:
        g.addcmul_(p_e, -a / z_t)
    if ce_coef != 0.0:
        g[torch.arange(g.shape[0], device=g.device), labels] -= ce_coef
    del p_e, q_e, e1
    emit(g)
    return div_sum, ce_sum


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
    _validate(alpha, temperature, kind, jsd_beta, labels, 1 if chunk_size is None else chunk_size)
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
            div_sum, ce_sum = _chunk_loss_and_grad(
                chunk, lab,
                temperature=temperature, kind=kind, jsd_beta=jsd_beta,
                kd_coef=alpha / denom, ce_coef=(1.0 - alpha) / denom,
                emit=emit if need_grad else None, dtype=dtype,
            )
            div_total += div_sum.to(torch.float64)
            if ce_sum is not None:
                ce_total += ce_sum.to(torch.float64)
            if acc:
                grad_rows.index_copy_(0, flat_idx, acc.pop().to(grad_buf.dtype))
            elif need_grad:  # no gradient terms (alpha = 0 without labels): zero rows
                grad_rows.index_fill_(0, flat_idx, 0.0)
        loss, kd_loss, ce_loss = _finish(div_total, ce_total, denom, alpha, temperature, dtype,
                                         device, valid_labels is not None)
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
    ignore_index: int = -100,
    num_items_in_batch: Optional[int | torch.Tensor] = None,
    vocab_size: Optional[int] = None,
    chunk_size: int = 1024,
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
        head rows.

    Returns:
        :class:`~distill.losses.DistillationLossOutput`. ``loss`` is differentiable with respect to
        ``student_hidden``, ``student_head_weight`` and ``student_head_bias``; the teacher gets no
        gradient; ``kd_loss`` and ``ce_loss`` are detached. Low-precision weight gradients are
        accumulated in float32 across chunks and cast at the end.
    """
    _validate(alpha, temperature, kind, jsd_beta, labels, chunk_size)
    if student_hidden.dim() == 1 and teacher_hidden.dim() == 1:  # a single position
        student_hidden, teacher_hidden = student_hidden[None], teacher_hidden[None]
        labels = None if labels is None else labels.reshape(1)
    for name, h, w in (("student", student_hidden, student_head_weight),
                       ("teacher", teacher_hidden, teacher_head_weight)):
        if w.dim() != 2 or w.shape[1] != h.shape[-1]:
            raise ValueError(f"{name} head weight {tuple(w.shape)} must be [V, {h.shape[-1]}].")
    vocab = _shared_vocab(student_head_weight.shape[0], teacher_head_weight.shape[0], vocab_size)
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
        grad_w = (torch.zeros(student_head_weight.shape, dtype=acc_dtype(student_head_weight),
                              device=device) if need_w else None)
        grad_b = (torch.zeros(student_head_bias.shape, dtype=acc_dtype(student_head_bias),
                              device=device) if need_b else None)
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
            div_sum, ce_sum = _chunk_loss_and_grad(
                chunk, lab,
                temperature=temperature, kind=kind, jsd_beta=jsd_beta,
                kd_coef=alpha / denom, ce_coef=(1.0 - alpha) / denom,
                emit=emit if need_grad else None, dtype=dtype,
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
        loss, kd_loss, ce_loss = _finish(div_total, ce_total, denom, alpha, temperature, dtype,
                                         device, valid_labels is not None)
        grads = (
            grad_h,
            None if grad_w is None else grad_w.to(student_head_weight.dtype),
            None if grad_b is None else grad_b.to(student_head_bias.dtype),
        )
        return loss, kd_loss, ce_loss, grads

    if need_grad:
        inputs = (student_hidden, student_head_weight,
                  student_head_bias if student_head_bias is not None else torch.empty(0))
        loss, kd_loss, ce_loss = _PrecomputedGradLoss.apply(compute, *inputs)
    else:
        with torch.no_grad():
            loss, kd_loss, ce_loss, _ = compute()
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)
