"""Distillation losses, as pure functions tested without a Trainer.

- `divergences`: the registry of divergence kinds (forward/reverse KL, JSD, skew KLs), each defined once
  (value and analytic gradient), and `check_loss_settings`, the one check of alpha, T and the kind's settings.
- `logit`: the reference loss `alpha * T^2 * KD + (1 - alpha) * CE` (`distillation_loss`), the
  divergences (forward/reverse KL, JSD), masking, vocabulary alignment and the shared denominator.
- `chunked`: the same loss over token chunks with a hand-written backward (no [B, T, V] copies),
  and `fused_linear_distillation_loss`, which also computes both LM heads chunk by chunk.
- `kernels`: the per-chunk loss-and-gradient kernels behind `chunked`.
- `cached`: the loss against a teacher's stored top-k log-probabilities (`distill cache-teacher`).
- `fused_head`: running a causal LM with its LM head bypassed, and the checks that make it safe.
- `hidden`: intermediate-layer terms: hidden states (MSE / cosine, through an optional projection)
  and MiniLM's self-attention KL, over a student -> teacher layer map.
"""

from .cached import cached_distillation_loss, teacher_topk  # noqa: F401
from .chunked import chunked_distillation_loss, fused_linear_distillation_loss  # noqa: F401
from .hidden import (
    HIDDEN_LOSSES,
    attention_kl_loss,
    default_layer_map,
    hidden_state_loss,  # noqa: F401
    position_weights,
)
from .logit import (
    KD_KINDS,
    DistillationLossOutput,
    align_vocab,
    check_kd_kind,  # noqa: F401
    distillation_loss,
    divergence,
    loss_denominator,
    student_cross_entropy,
)

__all__ = [
    "KD_KINDS",
    "DistillationLossOutput",
    "align_vocab",
    "check_kd_kind",
    "distillation_loss",
    "divergence",
    "loss_denominator",
    "student_cross_entropy",
    "chunked_distillation_loss",
    "fused_linear_distillation_loss",
    "cached_distillation_loss",
    "teacher_topk",
    "HIDDEN_LOSSES",
    "attention_kl_loss",
    "default_layer_map",
    "hidden_state_loss",
    "position_weights",
]
