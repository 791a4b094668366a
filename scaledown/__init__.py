"""scaledown: the pipeline that joins `scaling` (how loss scales with size) and `distill` (distillation)."""

import distill  # noqa: E402,F401  (its import drops torchao's CUDA-kernel warnings on CPU)
