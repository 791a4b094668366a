"""On-policy distillation (GKD, Agarwal et al. 2024) for causal LMs: the student writes the continuations.

With probability ``lmbda`` an optimizer step is *on-policy*: for every micro-batch of that step, each
example's prompt (its tokens before the first target, i.e. the masked-label part; the first token when
the example has no prompt) is continued by the student (``max_new_tokens`` at most, sampled at
``generation_temperature``; 0 = greedy), and the micro-batch is replaced by ``prompt + continuation``
with the continuation as the only targets (up to and including the first eos). The teacher then scores
those sequences in the ordinary forward, and the loss is the chosen divergence (``kd_kind``, at the
distillation ``temperature``) on the generated tokens alone: every row is marked KD-only, so ``alpha``
and the labels' cross-entropy do not apply. The Trainer's item count (``num_items_in_batch``) is
recomputed over the generated tokens of all micro-batches of the step, so accumulation stays exact.

Seeding: whether a step is on-policy depends on (seed, global step) only, the same on every process;
sampling is seeded by (seed, step, micro-batch, process). A resumed run therefore repeats the decisions
and samples of an uninterrupted one.

Distributed generation: the student is unwrapped (`accelerator.unwrap_model`) and generates without
gradients in eval mode. Under DeepSpeed ZeRO-3 and FSDP, whose parameters are gathered collectively in
each forward, generation runs with ``synced_gpus=True`` (every process keeps stepping until all are
done), and since the on-policy decision is the same on every process, all of them generate together.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from .augment import AUGMENTED_KEY


def _seed(*parts) -> int:
    return int.from_bytes(
        hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little"
    )


def step_is_on_policy(seed: int, global_step: int, lmbda: float) -> bool:
    """Whether the optimizer step ``global_step`` trains on student-generated continuations."""
    if lmbda <= 0.0:
        return False
    return bool(np.random.default_rng(_seed(seed, "on-policy", global_step)).random() < lmbda)


def split_prompts(
    input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> list[torch.Tensor]:
    """Each row's prompt: its real tokens before the first target (at least the first token)."""
    prompts = []
    for ids, lab, mask in zip(input_ids, labels, attention_mask):
        real = ids[mask.bool()]
        targets = (lab[mask.bool()] != -100).nonzero()
        first = int(targets[0]) if targets.numel() else real.numel()
        prompts.append(real[: max(first, 1)])
    return prompts


def _needs_synced_gpus(trainer) -> bool:
    if trainer.args.world_size <= 1:
        return False
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
        return (config.get("zero_optimization") or {}).get("stage", 0) == 3
    return False


def generate_continuations(trainer, batch: dict, *, seed: int) -> dict:
    """``batch`` with each row replaced by ``prompt + student continuation``; targets on the continuation only."""
    from transformers import GenerationConfig

    args, tokenizer = trainer.args, trainer.processing_class
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = eos if pad is None else pad
    prompts = split_prompts(ids, labels, mask)
    width = max(p.numel() for p in prompts)
    left = torch.full((len(prompts), width), pad, dtype=ids.dtype, device=ids.device)
    left_mask = torch.zeros_like(left)
    for r, p in enumerate(prompts):  # left padding, as generation wants
        left[r, width - p.numel() :], left_mask[r, width - p.numel() :] = p, 1
    sampling = args.generation_temperature > 0
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        top_k=0,
        top_p=1.0,
        temperature=args.generation_temperature if sampling else None,
        pad_token_id=pad,
        eos_token_id=eos,
        num_beams=1,
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []),
        ):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=left,
                attention_mask=left_mask,
                generation_config=config,
                synced_gpus=_needs_synced_gpus(trainer),
            )
    finally:
        model.train(was_training)
    new = out[:, width:]
    rows = []
    for p, cont in zip(prompts, new):
        stop = (cont == eos).nonzero() if eos is not None else cont.new_zeros((0, 1))
        cont = cont[: int(stop[0]) + 1] if stop.numel() else cont
        rows.append((p, cont))
    return _right_padded(rows, pad, ids)


def _right_padded(rows: list, pad: int, like: torch.Tensor) -> dict:
    length = max(p.numel() + c.numel() for p, c in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=like.dtype, device=like.device)
    labels = torch.full_like(input_ids, -100)
    attention_mask = torch.zeros_like(input_ids)
    for r, (p, c) in enumerate(rows):
        n = p.numel() + c.numel()
        input_ids[r, :n] = torch.cat([p, c])
        labels[r, p.numel() : n] = c
        attention_mask[r, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        AUGMENTED_KEY: torch.ones(len(rows), dtype=torch.bool, device=like.device),
    }  # KD alone on every row


def on_policy_batches(trainer, batch_samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The micro-batches of one optimizer step, replaced by generated ones when the step is on-policy."""
    args = trainer.args
    if not step_is_on_policy(args.seed, trainer.state.global_step, args.lmbda):
        return batch_samples
    return [
        generate_continuations(
            trainer, batch, seed=_seed(args.seed, trainer.state.global_step, i, args.process_index)
        )
        for i, batch in enumerate(batch_samples)
    ]


def check_on_policy(args, task, *, has_cache: bool, tokenizer) -> None:
    """Errors for ``lmbda > 0`` that need the task, the teacher or the tokenizer (the trainer's ``__init__``)."""
    if args.lmbda <= 0:
        return
    if not task.token_level:
        raise ValueError(
            f"lmbda={args.lmbda} > 0 (on-policy distillation) applies to causal-lm only, not task "
            f"{task.name!r}: set lmbda: 0."
        )
    if has_cache:
        raise ValueError(
            "lmbda > 0 needs an online teacher to score the student's continuations, not a teacher "
            "cache: set lmbda: 0 or drop teacher_cache."
        )
    if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            "lmbda > 0 needs the tokenizer (processing_class) with an eos token, to stop and pad "
            "the student's continuations."
        )
