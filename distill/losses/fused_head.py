"""Training with the KD loss fused into the LM heads (`DistillationConfig.kd_fused_lm_head`).

With the option on, the student and the teacher run with their LM heads bypassed, so that their
forward passes return final hidden states (``[B, T, H]``) instead of logits (``[B, T, V]``), and
:func:`distill.losses.chunked.fused_linear_distillation_loss` computes the logits of both models a
chunk of positions at a time from those hidden states and the heads' weights. Neither model's
full ``[B, T, V]`` logits, nor the student's gradient with respect to them, ever exist.

The heads are bypassed by shadowing their ``forward`` for the duration of one call, so the models
keep every parameter and are still called through their wrappers (DDP hooks run, and the head
weight's gradient, accumulated by the fused loss, is reduced like any other).

Limits, each refused with an error before training (:func:`fused_head_problem`):

- causal LMs with an online teacher only (not a teacher cache, not ``alpha=0``);
- not under DeepSpeed ZeRO-3 or FSDP: there the head weights are sharded outside the models'
  forward, where the fused loss needs them whole (use the default chunked loss there);
- both heads must be plain weights on the training device, not dispatched by accelerate's
  ``device_map`` / offload hooks (:func:`check_head_placement`);
- the head must be a linear layer whose output is the model's logits unchanged. Models that
  transform logits after the head (Gemma-2's final soft-capping, Cohere's ``logit_scale``,
  Granite's ``logits_scaling``) are detected by running both paths on a few tokens
  (:func:`check_head_gives_logits`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn


def output_head(model: nn.Module) -> nn.Module:
    """The model's LM head (``get_output_embeddings()``), unwrapped from a DeepSpeed engine."""
    model = getattr(model, "module", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if head is None or weight is None or weight.dim() != 2:
        raise ValueError(
            f"kd_fused_lm_head needs a linear LM head, but {type(model).__name__}.get_output_embeddings() "
            f"returned {type(head).__name__}; set kd_fused_lm_head=false."
        )
    return head


def _pass_through(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def bypass_head(head: nn.Module) -> Iterator[None]:
    """Within the block, ``head(x)`` returns ``x``: the model's "logits" are its final hidden states."""
    previous = head.__dict__.get("forward")  # an instance forward of someone else's, kept and restored
    head.forward = _pass_through  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cpu`` and ``cpu:0`` are one device: an index is compared only where both have one."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_head_placement(model: nn.Module, who: str, device: Optional[torch.device] = None) -> None:
    """Refuse a head that accelerate dispatches (``device_map``, offload) or that sits off ``device``
    (when given): the fused loss reads its weight directly, on the training device, outside any hook."""
    head = output_head(model)
    if hasattr(head, "_hf_hook") or head.weight.device.type == "meta":
        raise ValueError(
            f"kd_fused_lm_head: the {who}'s LM head is dispatched by accelerate (device_map or offload), so "
            "its weight is not in place outside its hook; load the model without device_map or set "
            "kd_fused_lm_head=false."
        )
    if device is not None and not _same_device(head.weight.device, torch.device(device)):
        raise ValueError(
            f"kd_fused_lm_head: the {who}'s LM head is on {head.weight.device}, but training runs on {device}; "
            "both heads must be on the training device (or set kd_fused_lm_head=false)."
        )


def check_head_gives_logits(model: nn.Module, who: str, vocab_size: int) -> None:
    """Refuse a model whose logits are not ``head(hidden_states)``, checked on a few tokens.

    Runs the model twice under ``no_grad`` in eval mode (its training mode is restored): once
    plainly, once with the head bypassed and applied by hand.
    """
    model = getattr(model, "module", model)
    head = output_head(model)
    ids = torch.arange(4, device=head.weight.device).remainder(max(1, vocab_size))[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            with bypass_head(head):
                hidden = model(input_ids=ids).logits
            by_hand = head(hidden)
    finally:
        model.train(was_training)
    scale = logits.abs().max().clamp_min(1.0)
    if by_hand.shape != logits.shape or (by_hand - logits).abs().max() > 1e-3 * scale:
        raise ValueError(
            f"kd_fused_lm_head: the {who} ({type(model).__name__}) changes its logits after the LM head "
            "(e.g. final logit soft-capping or a logit scale), which the fused loss would skip; "
            "set kd_fused_lm_head=false."
        )


def fused_head_problem(trainer, has_teacher: bool) -> Optional[str]:
    """Why `kd_fused_lm_head` cannot be used in this setup, or None when it can."""
    if not trainer.task.token_level:
        return f"kd_fused_lm_head applies to causal-lm only, not task {trainer.task.name!r}; set it to false."
    if not has_teacher:
        return (
            "kd_fused_lm_head fuses the distillation loss with the teacher's and the student's LM heads, "
            "so it needs an online teacher (not teacher_cache, not alpha=0); set it to false."
        )
    if trainer.is_fsdp_enabled:
        return (
            "kd_fused_lm_head cannot be used under FSDP, which shards the LM-head weights outside the "
            "forward; set it to false (the default chunked loss bounds the loss's memory there)."
        )
    if trainer.is_deepspeed_enabled:
        plugin = trainer.accelerator.state.deepspeed_plugin
        stage = (plugin.deepspeed_config.get("zero_optimization") or {}).get("stage", 0)
        if stage == 3:
            return (
                "kd_fused_lm_head cannot be used under DeepSpeed ZeRO-3, which partitions the LM-head "
                "weights outside the forward; set it to false or use ZeRO-2."
            )
    return None
