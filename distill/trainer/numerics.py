"""Numerical faults: skip optimizer steps whose gradients are not finite, and blame a bad teacher.

`NonFiniteGuard` is a [`~transformers.TrainerCallback`] that runs before every optimizer step
(``on_pre_optimizer_step``, after gradient accumulation and clipping). When any gradient is NaN or
infinite (which a non-finite loss always causes) it drops the gradients, so the optimizer leaves
weights and moments untouched (torch optimizers skip parameters without a gradient), logs
``nonfinite_step_skipped`` in the log history and warns. The learning-rate schedule and the data
order still advance, as with a step skipped by a gradient scaler, so a resumed run replays the
same steps. After ``max_nonfinite_steps`` consecutive skipped steps it stops training with
`NonFiniteTrainingError`, naming the last checkpoint, which holds the last good weights. Under
DDP the decision is reduced across processes, so every rank skips (or stops at) the same step.
Under DeepSpeed, whose engine steps the optimizer itself, the guard is not installed.

`check_teacher_logits` raises `TeacherNonFiniteError` when the frozen teacher's logits are not
finite, with the batch index, so that a broken teacher is not mistaken for a diverging student.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

logger = logging.getLogger("distill")


class NonFiniteTrainingError(FloatingPointError):
    """Too many consecutive optimizer steps had non-finite gradients."""


class TeacherNonFiniteError(FloatingPointError):
    """The teacher's logits hold NaN or infinity."""


def gradients_finite(parameters) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms]).sum()))


class NonFiniteGuard(TrainerCallback):
    """Skips optimizer steps with non-finite gradients; stops after `max_nonfinite_steps` in a row."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.consecutive = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        finite = gradients_finite(model.parameters())
        if args.world_size > 1:  # every rank takes the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=args.device)
            finite = float(self.trainer.accelerator.reduce(flag, reduction="sum")) == 0.0
        if finite:
            self.consecutive = 0
            return
        for p in model.parameters():
            p.grad = None  # the optimizer skips parameters without a gradient: no update, moments unchanged
        self.consecutive += 1
        step = state.global_step + 1
        logger.warning(
            "Step %d: non-finite loss or gradient norm; the step is skipped (%d in a row, limit %d).",
            step,
            self.consecutive,
            args.max_nonfinite_steps,
        )
        state.log_history.append(
            {"nonfinite_step_skipped": step, "nonfinite_consecutive": self.consecutive, "step": step}
        )
        if self.consecutive >= args.max_nonfinite_steps:
            from distill.trainer.checkpoints import last_complete_checkpoint

            last = last_complete_checkpoint(args.output_dir, need_optimizer=not args.save_only_model)
            raise NonFiniteTrainingError(
                f"Stopped at step {step}: the last {self.consecutive} optimizer steps had a non-finite loss or gradient "
                f"norm (max_nonfinite_steps={args.max_nonfinite_steps}); none of them changed the weights. "
                + (f"The last good checkpoint is {last}. " if last else "No checkpoint was saved yet. ")
                + "Lower the learning rate, add warmup or gradient clipping (max_grad_norm), or check the data."
            )


def install_nonfinite_guard(trainer) -> None:
    """Add `NonFiniteGuard` to a trainer unless disabled (``max_nonfinite_steps: 0``) or under DeepSpeed."""
    if trainer.args.max_nonfinite_steps > 0 and not trainer.is_deepspeed_enabled:
        trainer.add_callback(NonFiniteGuard(trainer))


def check_teacher_logits(logits: torch.Tensor, trainer) -> None:
    """Raise `TeacherNonFiniteError` (with the batch index) when the teacher's logits are not finite."""
    index = getattr(trainer, "_teacher_batches", 0)
    trainer._teacher_batches = index + 1
    if bool(torch.isfinite(torch.sum(logits, dtype=torch.float32))):
        return
    where = "training" if trainer.model.training else "evaluation"
    raise TeacherNonFiniteError(
        f"The teacher produced non-finite logits (NaN or infinity) on its batch {index} ({where}, training step "
        f"{trainer.state.global_step}). This is the teacher's fault, not the student's: check the teacher's weights, "
        f"and its dtype (teacher_dtype={trainer.args.teacher_dtype}; float16 overflows easily, try bfloat16 or float32)."
    )
