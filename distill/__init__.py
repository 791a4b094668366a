"""scaledown's distillation package: `DistillationTrainer`, `DistillationConfig`, `distillation_loss`."""

from typing import TYPE_CHECKING

from distill.utils.quiet import silence_optional_kernel_warnings

silence_optional_kernel_warnings()

__all__ = ["DistillationConfig", "DistillationTrainer", "distillation_loss", "DistillationLossOutput"]

if TYPE_CHECKING:
    from distill.trainer.distillation_trainer import DistillationTrainer

    from .config import DistillationConfig
    from .losses import DistillationLossOutput, distillation_loss


def __getattr__(name):
    # Lazy, so that `distill --help` does not import torch and transformers.
    if name == "DistillationConfig":
        from .config import DistillationConfig

        return DistillationConfig
    if name == "DistillationTrainer":
        from distill.trainer.distillation_trainer import DistillationTrainer

        return DistillationTrainer
    if name in ("distillation_loss", "DistillationLossOutput"):
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
