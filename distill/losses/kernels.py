"""Per-chunk distillation kernels: loss sums and the analytic gradient w.r.t. the student logits.

Used by :mod:`distill.losses.chunked`, which walks the valid positions of a batch chunk by chunk and
hands each ``[c, V]`` block of student and teacher logits to :func:`chunk_loss_and_grad`. The
kernels work in place on those blocks (the caller passes fresh copies) so that only a few
``[c, V]`` float tensors are alive at once. Forward KL, the default, has its own kernel
(:func:`forward_kl_chunk`) written for speed, fused with the cross-entropy; every other kind's value and
gradient come from its one definition in :mod:`distill.losses.divergences`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .divergences import get_divergence

__all__ = ["chunk_loss_and_grad", "forward_kl_chunk"]


# ----------------------------------------------------------------------------------------------
# One chunk: loss sums and the analytic gradient w.r.t. the student logits
# ----------------------------------------------------------------------------------------------
def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place log-softmax over the last dimension (one transient ``[c, V]`` inside logsumexp)."""
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def chunk_loss_and_grad(
    logits: list,
    labels: Optional[torch.Tensor],
    *,
    temperature: float,
    kind: str,
    jsd_beta: float,
    kd_coef: float,
    skew_alpha: float = 0.1,
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
            goes to the faster :func:`forward_kl_chunk`, which emits the whole gradient once.

    With ``z = s / T``, ``q = softmax(z)`` (student) and ``p = softmax(t / T)`` (teacher), ``dD/dz`` is the
    registered kind's own (:mod:`distill.losses.divergences`), the cross-entropy gradient at ``T = 1`` is
    ``softmax(s) - onehot(label)``, and ``d(T^2 D)/ds = T dD/dz``. ``0 * log 0`` is taken as 0, as in the
    plain path.

    Returns:
        ``(divergence_sum, ce_sum or None)`` as 0-dim tensors in ``dtype``.
    """
    if kind == "forward_kl":
        return forward_kl_chunk(
            logits, labels, temperature=temperature, kd_coef=kd_coef, ce_coef=ce_coef, emit=emit, dtype=dtype
        )
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
    div = get_divergence(kind)
    div_sum, grad = div.chunk(log_p, log_q, want, **div.kwargs(jsd_beta, skew_alpha))
    del log_p, log_q
    if want:
        emit(grad.mul_(kd_coef * T))
    return div_sum, ce_sum


def forward_kl_chunk(
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
    :func:`chunk_loss_and_grad`.
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
