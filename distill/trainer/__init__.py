"""The trainer: `DistillationTrainer` and what it is made of.

- `distillation_trainer`: `DistillationTrainer`, a `transformers.Trainer` whose loss is
  ``alpha * T^2 * KD + (1 - alpha) * CE``.
- `checkpointing` / `evaluation`: its mixins (atomic checkpoints and checked resume; evaluation with
  the teacher's metrics).
- `checkpoints`: checkpoint completeness and finite-weight checks, disk-full errors.
- `fingerprint`: the run fingerprint that refuses to mix two runs in one output directory.
- `numerics`: the non-finite loss / teacher-logit guard.
- `intermediate`: hidden-state and attention transfer inside the trainer.
- `multitask`: one student, several tasks, a teacher per task.
- `tasks`: what differs between tasks (model classes, logits/labels alignment, collators, metrics).
"""

__all__ = ["DistillationTrainer", "MultiTaskDistillationTrainer"]


def __getattr__(name):
    # Lazy, so that importing a light submodule (fingerprint, checkpoints) does not import transformers.Trainer.
    if name == "DistillationTrainer":
        from distill.trainer.distillation_trainer import DistillationTrainer

        return DistillationTrainer
    if name == "MultiTaskDistillationTrainer":
        from distill.trainer.multitask import MultiTaskDistillationTrainer

        return MultiTaskDistillationTrainer
    raise AttributeError(f"module 'distill.trainer' has no attribute {name!r}")
