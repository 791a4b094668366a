"""The divergences of the distillation term, each defined once, and the one check of the loss settings.

With ``p = softmax(t / T)`` the teacher's and ``q = softmax(s / T)`` the student's distribution, a
:class:`Divergence` holds:

* ``value(log_q, log_p, **settings)``: the per-row divergence from log-probabilities, differentiable by
  autograd. The plain loss (:mod:`distill.losses.logit`), the top-k cached loss (:mod:`distill.losses.cached`)
  and every float64 reference use it.
* ``chunk(log_p, log_q, want_grad, **settings)``: the same value summed over a ``[c, V]`` chunk, and the
  analytic gradient ``dD/dz`` (``z = s / T``) of each row. It consumes its inputs in place. The chunked and
  fused-head paths (:mod:`distill.losses.kernels`) use it; ``tests/test_divergences.py`` checks it against
  autograd of ``value`` for every registered kind, so a new kind's gradient is tested the day it is added.
* ``settings``: the names of the keyword settings the kind reads (``jsd_beta``, ``skew_alpha``), and
  ``check`` their ranges.

Adding a kind means adding one :class:`Divergence` to :data:`DIVERGENCES` in this file; the config's
choices, the CLI, the kernels and the cached loss pick it up from here. ``0 * log 0`` is taken as 0
everywhere, so a teacher logit of ``-inf`` (a masked token) gives neither a NaN value nor a NaN gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["DIVERGENCES", "KD_KINDS", "Divergence", "check_kd_kind", "check_loss_settings", "get_divergence"]


# ----------------------------------------------------------------------------------------------
# Shared pieces (autograd-safe)
# ----------------------------------------------------------------------------------------------
def kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p (log p - log q)`` over the last dimension, with ``0 * log 0 = 0``.

    ``F.kl_div(..., log_target=True)`` computes ``exp(log_p) * (log_p - log_q)``, which is
    ``0 * -inf = NaN`` where a logit is ``-inf``. The difference is zeroed where ``p == 0`` *before* the
    product, so that neither the value nor any gradient becomes NaN.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros((), dtype=p.dtype, device=p.device))
    return (p * diff).sum(-1)


def log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """``log(w a + (1 - w) b)`` from log-probabilities, stable, for ``w`` in ``[0, 1)``."""
    w = torch.tensor(weight_a, dtype=log_a.dtype, device=log_a.device)
    return torch.logsumexp(torch.stack([log_a + torch.log(w), log_b + torch.log1p(-w)]), dim=0)


def _log_mixture_(log_a: torch.Tensor, log_b: torch.Tensor, a: float) -> torch.Tensor:
    """``log(a x + (1 - a) y)`` as a new tensor, for the in-place chunk kernels (``a`` in ``[0, 1)``)."""
    if a == 0.0:
        return log_b.clone()
    l1a = math.log1p(-a)
    log_m = log_a.add(math.log(a) - l1a)
    return torch.logaddexp(log_m, log_b, out=log_m).add_(l1a)


# ----------------------------------------------------------------------------------------------
# The kinds: value (autograd) and chunk (value sum + analytic dD/dz, in place)
# ----------------------------------------------------------------------------------------------
def _forward_kl_value(log_q, log_p):
    return kl_sum(log_p, log_q)  # KL(p || q)


def _forward_kl_chunk(log_p, log_q, want):
    # dD/dz = q - p
    p = log_p.exp()
    div_sum = (log_p.sub(log_q).masked_fill_(p == 0, 0.0).mul_(p)).sum()
    return div_sum, (log_q.exp_().sub_(p) if want else None)


def _reverse_kl_value(log_q, log_p):
    return kl_sum(log_q, log_p)  # KL(q || p)


def _reverse_kl_chunk(log_p, log_q, want):
    # D = sum q log(q/p);  dD/dz = q (log(q/p) - D)
    r = log_p.neg_().add_(log_q)  # log q - log p, in place of log_p
    q = log_q.exp_()
    r.masked_fill_(q == 0, 0.0)
    rows = (q * r).sum(-1, keepdim=True)
    return rows.sum(), (r.sub_(rows).mul_(q) if want else None)


def _jsd_value(log_q, log_p, jsd_beta):
    log_m = log_mixture(log_p, log_q, jsd_beta)
    return jsd_beta * kl_sum(log_p, log_m) + (1 - jsd_beta) * kl_sum(log_q, log_m)


def _jsd_chunk(log_p, log_q, want, jsd_beta):
    # m = b p + (1-b) q;  D = b KL(p||m) + (1-b) KL(q||m);  dD/dz = (1-b) q (log(q/m) - KL(q||m))
    log_m = _log_mixture_(log_p, log_q, jsd_beta)
    p = log_p.exp()
    kl_t = log_p.sub_(log_m).masked_fill_(p == 0, 0.0).mul_(p).sum()
    del p, log_p
    q = log_q.exp()
    b = log_q.sub_(log_m).masked_fill_(q == 0, 0.0)  # log q - log m, in place of log_q
    del log_m
    kl_s_rows = (q * b).sum(-1, keepdim=True)
    div_sum = jsd_beta * kl_t + (1.0 - jsd_beta) * kl_s_rows.sum()
    return div_sum, (b.sub_(kl_s_rows).mul_(q).mul_(1.0 - jsd_beta) if want else None)


def _skew_forward_kl_value(log_q, log_p, skew_alpha):
    return kl_sum(log_p, log_mixture(log_p, log_q, skew_alpha))  # KL(p || a p + (1-a) q)


def _skew_forward_kl_chunk(log_p, log_q, want, skew_alpha):
    # m = a p + (1-a) q;  w = (1-a) p q / m;  dD/dz = q sum(w) - w  (a = 0: q - p)
    log_m = _log_mixture_(log_p, log_q, skew_alpha)
    p = log_p.exp()
    p_zero = p == 0
    div_sum = (p * log_p.sub(log_m).masked_fill_(p_zero, 0.0)).sum()
    if not want:
        return div_sum, None
    q = log_q.exp()
    w = log_q.sub_(log_m).add_(math.log1p(-skew_alpha)).exp_().mul_(p).masked_fill_(p_zero, 0.0)
    return div_sum, q.mul_(w.sum(-1, keepdim=True)).sub_(w)


def _skew_reverse_kl_value(log_q, log_p, skew_alpha):
    return kl_sum(log_q, log_mixture(log_q, log_p, skew_alpha))  # KL(q || a q + (1-a) p)


def _skew_reverse_kl_chunk(log_p, log_q, want, skew_alpha):
    # m = a q + (1-a) p;  g = log(q/m) - a q/m;  dD/dz = q (g - sum(q g))  (a = 0: reverse KL)
    log_m = _log_mixture_(log_q, log_p, skew_alpha)
    q = log_q.exp()
    q_zero = q == 0
    g = log_q.sub(log_m).masked_fill_(q_zero, 0.0)  # log(q / m), 0 where q = 0
    div_sum = (q * g).sum()
    if not want:
        return div_sum, None
    if skew_alpha > 0.0:
        g.sub_(log_q.sub_(log_m).exp_().mul_(skew_alpha).masked_fill_(q_zero, 0.0))
    g.sub_((q * g).sum(-1, keepdim=True))
    return div_sum, g.mul_(q)


def _check_jsd_beta(jsd_beta):
    if not 0.0 < jsd_beta < 1.0:
        # beta in {0, 1} makes the mixture equal one side and the divergence identically 0.
        raise ValueError(f"jsd_beta={jsd_beta} must be strictly between 0 and 1 (0.5 is the symmetric JSD).")


def _check_skew_alpha(skew_alpha):
    if not 0.0 <= skew_alpha < 1.0:
        # a = 1 makes the mixture equal the first distribution, so the divergence is identically 0.
        raise ValueError(f"skew_alpha={skew_alpha} must be in [0, 1) (DistiLLM uses 0.1).")


@dataclass(frozen=True)
class Divergence:
    """One divergence kind: see the module docstring."""

    name: str
    description: str
    value: Callable[..., torch.Tensor]
    chunk: Callable[..., tuple]
    settings: tuple[str, ...] = ()
    check: Optional[Callable[..., None]] = None

    def kwargs(self, jsd_beta: float, skew_alpha: float) -> dict:
        given = {"jsd_beta": jsd_beta, "skew_alpha": skew_alpha}
        return {name: given[name] for name in self.settings}


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence(
            "forward_kl", "KL(p || q), mode-covering (Hinton et al.)", _forward_kl_value, _forward_kl_chunk
        ),
        Divergence("reverse_kl", "KL(q || p), mode-seeking (MiniLLM)", _reverse_kl_value, _reverse_kl_chunk),
        Divergence(
            "jsd",
            "b KL(p || m) + (1 - b) KL(q || m), m = b p + (1 - b) q, b = jsd_beta (GKD)",
            _jsd_value,
            _jsd_chunk,
            ("jsd_beta",),
            _check_jsd_beta,
        ),
        Divergence(
            "skew_forward_kl",
            "KL(p || a p + (1 - a) q), a = skew_alpha (DistiLLM)",
            _skew_forward_kl_value,
            _skew_forward_kl_chunk,
            ("skew_alpha",),
            _check_skew_alpha,
        ),
        Divergence(
            "skew_reverse_kl",
            "KL(q || a q + (1 - a) p), a = skew_alpha (DistiLLM)",
            _skew_reverse_kl_value,
            _skew_reverse_kl_chunk,
            ("skew_alpha",),
            _check_skew_alpha,
        ),
    )
}
KD_KINDS = tuple(DIVERGENCES)


def check_kd_kind(kind: str) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"kd_kind={kind!r} is not supported; choose one of {', '.join(KD_KINDS)}.")


def get_divergence(kind: str) -> Divergence:
    check_kd_kind(kind)
    return DIVERGENCES[kind]


def check_loss_settings(
    alpha: float,
    temperature: float,
    kind: str,
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    *,
    has_labels: Optional[bool] = None,
) -> Divergence:
    """The one check of the loss settings, used by the config and by every loss path; returns the kind.

    ``has_labels``: whether the loss gets labels (``None``: not known yet, as in the config).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (0 = labels only, 1 = teacher only).")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be greater than 0, e.g. 1.0 or 2.0.")
    div = get_divergence(kind)
    if has_labels is False and alpha != 1.0:
        raise ValueError(
            f"alpha={alpha} < 1 needs labels for the cross-entropy term; pass labels or set alpha=1."
        )
    if div.check is not None:
        div.check(**div.kwargs(jsd_beta, skew_alpha))
    return div
