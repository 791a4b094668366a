"""The distillation loss for training from an offline teacher cache (:mod:`distill.teacher.cache`).

:func:`teacher_topk` turns teacher logits into what a cache row stores: the top-k log-probs
``log softmax(z / T)``, most likely first, and the log of the mass outside them (the "rest"
bucket, a log-sum-exp over the other tokens, so it does not cancel). :func:`cached_distillation_loss`
is :func:`distill.losses.distillation_loss` with the teacher given as those cached columns. Both are
re-exported by :mod:`distill.teacher.cache`.

The loss (:func:`cached_distillation_loss`). The teacher's distribution is coarsened to ``k + 1``
buckets: the k cached tokens and one "other" bucket. The student's distribution is coarsened the
same way (its top-k-token log-probs gathered, its "other" bucket a log-sum-exp of its log-probs
outside the teacher's top-k). The divergence (forward KL, reverse KL, JSD or skew KL) is taken between the
two ``(k+1)``-way distributions, times ``T^2``, with the same denominator and CE term as
:func:`distill.losses.distillation_loss`. With k = V it *is* the online loss (tested to 1e-5 with
float32 storage). With k < V it is an approximation, and never an overestimate: all kinds
are f-divergences or KLs against a mixture (which coarsens with its parts), and cannot grow under
coarsening (data-processing inequality). The stored
16-bit log-probs are renormalised over the k + 1 buckets before use.

Measured approximation error (``benchmarks/bench_teacher_cache.py``, results in
``benchmarks/results/teacher_cache.md``): tiny recipe, 2048-token BPE, ~2M-parameter Llama teacher
trained 150 steps on the python-docs corpus, T = 2, forward KL, float16 storage; relative error of
kd_loss vs the online loss over 64 training blocks of 128 tokens (negative = underestimate):

=====================================  ===============  ========  ========  ========  =======
student                                online kd_loss   k = 8     k = 32    k = 128   k = V
=====================================  ===============  ========  ========  ========  =======
at initialisation                      1.3702           -81.5 %   -64.7 %   -42.4 %   -0.00 %
after 60 steps trained from k=32 cache 0.6898           -98.0 %   -94.9 %   -81.9 %   +0.00 %
=====================================  ===============  ========  ========  ========  =======

So on this weak, high-entropy teacher (at T = 2 its mass is spread over hundreds of tokens) the
top-k loss is a strong underestimate: the rest bucket supervises only the *total* tail mass, not
its shape, and a student trained from the cache matches the k + 1 buckets while the tail stays
unsupervised (hence the larger error after training). Prefer large k (or float32 storage and
k = V for small vocabularies) for such teachers; peaked, well-trained teachers or T = 1 should
lose less (not measured here). The throughput cost is small: training from a k = 32 cache ran at 0.92x-0.98x plain student
training (no KD) in the same benchmark over three runs on two machines, and the online teacher at 0.49x-0.64x.

Memory: forward KL uses a fused kernel with an analytic gradient (:class:`_CachedForwardKL`,
about three ``[N, V]`` float32 tensors, not chunked over positions like :mod:`distill.losses.chunked`);
reverse KL and JSD use plain autograd (several ``[N, V]`` copies). The training temperature must
equal the cached one (the rest bucket cannot be re-tempered).
"""

from __future__ import annotations

from typing import Optional

import torch

from .divergences import check_loss_settings
from .logit import DistillationLossOutput, divergence_from_log_probs, loss_denominator

__all__ = ["cached_distillation_loss", "teacher_topk"]


# ----------------------------------------------------------------------------------------------
# Teacher side: top-k + rest bucket
# ----------------------------------------------------------------------------------------------
def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float, vocab_size: Optional[int] = None):
    """``(ids int32 [..., k], logprobs float32 [..., k], rest float32 [...])`` of ``log_softmax(z / T)``.

    ``rest`` is the log-sum-exp of the log-probs outside the top-k (``-inf`` when k = V).
    """
    if vocab_size is not None:
        teacher_logits = teacher_logits[..., :vocab_size]
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    k = min(k, log_p.shape[-1])
    values, ids = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return ids.to(torch.int32), values, rest


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------
def _bucket_log_probs(student_logits, ids, temperature):
    """Student log-probs over the teacher's top-k tokens plus one bucket for all other tokens."""
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    top = log_q.gather(-1, ids)
    # The finite fill (not -inf) keeps the gradient of an all-masked row (k = V) finite; that row's
    # bucket then has probability exp(finfo.min) = 0, exactly like the teacher's -inf.
    rest = log_q.scatter(-1, ids, torch.finfo(log_q.dtype).min).logsumexp(-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


class _CachedForwardKL(torch.autograd.Function):
    """Forward KL over the (k+1) buckets plus CE, with the gradient computed analytically in forward.

    With ``z = s / T``, ``q = softmax(z)``, the teacher's bucket probabilities ``p_i`` (top-k) and
    ``p_r`` (rest), and the student's rest mass ``q_r = 1 - sum_topk q`` (summed in float64):
    ``dKL/dz_j = q_j - p_j`` for j in the top-k and ``q_j (1 - p_r / q_r)`` otherwise, i.e. the
    student is pulled towards the teacher's top-k, and the rest mass is matched as a whole while
    its split among the other tokens is left as the student has it. CE adds ``softmax(s) - onehot``.
    A few fused passes over ``[n, V]`` (two softmaxes, two scaled adds), so that training from the
    cache costs little more than plain CE.

    Numerics: log-probs are taken as ``log(max(prob, tiny))`` of the softmax, so a top-k token or
    label to which the student gives less than ~1e-38 (a logit gap above ~87 T) counts as 1e-38; a
    student rest mass below the float32 rounding of the sum (~1e-7) counts as 0 (only when the
    teacher's rest mass is 0 too, e.g. k = V, is this exact; otherwise the term is large and finite).
    """

    @staticmethod
    def forward(ctx, s, ids, log_pt, labels, temperature, alpha, denom, need_grad):
        T = temperature
        tiny = torch.finfo(s.dtype).tiny
        q = torch.softmax(s / T if T != 1.0 else s, dim=-1)
        q_top = q.gather(-1, ids)
        P = None
        ce = s.new_zeros(())
        if labels is not None:
            if T != 1.0:
                P = torch.softmax(s, dim=-1)
            else:
                P = q.clone() if need_grad and alpha != 1.0 else q
            ce = -P.gather(-1, labels[:, None]).clamp_min(tiny).log().sum()
        q_r = (1.0 - q_top.double().sum(-1, keepdim=True)).clamp_min(0.0).to(q.dtype)
        log_q = torch.cat([q_top.clamp_min(tiny).log(), q_r.clamp_min(tiny).log()], dim=-1)
        p = log_pt.exp()
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        kd_sum = (p * torch.where(p > 0, log_pt - log_q, zero)).sum()
        ctx.has_grad = bool(need_grad)
        if need_grad:
            coef = alpha * T / denom
            ratio = torch.where(q_r > 0, p[:, -1:] / q_r.clamp_min(tiny), zero)
            grad = q.mul_((1.0 - ratio) * coef)  # q is consumed: the KD gradient outside the top-k
            grad.scatter_(-1, ids, (q_top - p[:, :-1]) * coef)
            if labels is not None and alpha != 1.0:
                P[torch.arange(P.shape[0], device=P.device), labels] -= 1.0
                grad.add_(P, alpha=(1.0 - alpha) / denom)
            ctx.save_for_backward(grad)
        kd_sum = kd_sum.detach()
        loss = (alpha * T * T * kd_sum + (1.0 - alpha) * ce) / denom
        ctx.mark_non_differentiable(kd_sum, ce)
        return loss, kd_sum, ce

    @staticmethod
    def backward(ctx, grad_loss, _kd, _ce):
        if not ctx.has_grad:
            raise RuntimeError(
                "cached_distillation_loss: no gradient was computed (the input did not require grad)."
            )
        (grad,) = ctx.saved_tensors
        # The graph is backpropagated once (as in distill.losses.chunked): scale the buffer in place.
        return grad.mul_(grad_loss), None, None, None, None, None, None, None


def cached_distillation_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    rest_logprob: torch.Tensor,
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
    fused_off: bool = False,
) -> DistillationLossOutput:
    """:func:`distill.losses.distillation_loss` with the teacher given as cached top-k log-probs.

    Args:
        student_logits: ``[..., V]`` student logits, positions already aligned (shifted).
        topk_ids: ``[..., k]`` integer ids of the teacher's top-k tokens at each position.
        topk_logprobs: ``[..., k]`` their log-probabilities at ``temperature`` (any float dtype).
        rest_logprob: ``[...]`` log of the teacher's mass outside the top-k (``-inf`` if none).
        vocab_size: the real vocabulary; student logits are sliced to it (the "other" bucket covers
            real tokens only).
        fused_off: forward KL is computed by a fused kernel with an analytic gradient
            (:class:`_CachedForwardKL`; ``kd_loss`` and ``ce_loss`` are then returned detached, only
            ``loss`` is differentiable, as in :mod:`distill.losses.chunked`); ``True`` uses plain
            autograd instead (the reference the kernel is tested against). The other kinds always
            use autograd.
        Other arguments: as in :func:`distill.losses.distillation_loss`.

    The divergence is computed between the ``(k+1)``-way coarsenings of both distributions (see the
    module docstring); exact when k = V.
    """
    check_loss_settings(alpha, temperature, kind, jsd_beta, skew_alpha, has_labels=labels is not None)
    if vocab_size is not None:
        student_logits = student_logits[..., :vocab_size]
    lead = student_logits.shape[:-1]
    if topk_ids.shape[:-1] != lead or topk_logprobs.shape != topk_ids.shape or rest_logprob.shape != lead:
        raise ValueError(
            f"Cached teacher tensors (ids {tuple(topk_ids.shape)}, logprobs {tuple(topk_logprobs.shape)}, rest "
            f"{tuple(rest_logprob.shape)}) do not align with the student logits {tuple(student_logits.shape)}."
        )
    vocab = student_logits.shape[-1]
    flat_s = student_logits.reshape(-1, vocab)
    if labels is None:
        valid = torch.ones(flat_s.shape[0], dtype=torch.bool, device=flat_s.device)
        flat_labels = None
    else:
        if labels.shape != lead:
            raise ValueError(
                f"labels {tuple(labels.shape)} must have the leading shape of the logits {tuple(lead)}."
            )
        flat_labels = labels.reshape(-1)
        valid = flat_labels != ignore_index
    num_valid = valid.sum()
    denom = loss_denominator(num_valid, num_items_in_batch)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=flat_s.device)
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s_valid = flat_s[valid].to(dtype)
    k = topk_ids.shape[-1]
    ids = topk_ids.reshape(-1, k)[valid].to(device=flat_s.device, dtype=torch.long)
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(f"Cached token id {int(ids.max())} is outside the student's vocabulary ({vocab}).")
    log_pt = torch.cat(
        [
            topk_logprobs.reshape(-1, k)[valid].to(flat_s.device, dtype),
            rest_logprob.reshape(-1, 1)[valid].to(flat_s.device, dtype),
        ],
        dim=-1,
    )
    log_pt = log_pt - log_pt.logsumexp(-1, keepdim=True)  # renormalise 16-bit storage over k + 1 buckets
    if kind == "forward_kl" and not fused_off:
        labels_valid = flat_labels[valid] if flat_labels is not None else None
        need_grad = torch.is_grad_enabled() and s_valid.requires_grad
        loss, kd_sum, ce_sum = _CachedForwardKL.apply(
            s_valid, ids, log_pt, labels_valid, float(temperature), float(alpha), float(denom), need_grad
        )
        return DistillationLossOutput(
            loss=loss, kd_loss=temperature**2 * kd_sum / denom, ce_loss=ce_sum / denom, num_valid=num_valid
        )
    log_ps = _bucket_log_probs(s_valid, ids, temperature)
    div = divergence_from_log_probs(log_ps, log_pt, kind=kind, jsd_beta=jsd_beta, skew_alpha=skew_alpha)
    kd_loss = temperature**2 * div.sum() / denom
    if flat_labels is not None:
        ce_sum = torch.nn.functional.cross_entropy(s_valid, flat_labels[valid], reduction="sum")
        ce_loss = ce_sum / denom
    else:
        ce_loss = kd_loss.new_zeros(())
    loss = alpha * kd_loss + (1.0 - alpha) * ce_loss
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)
