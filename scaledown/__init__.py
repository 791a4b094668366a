"""scaledown: the pipeline that joins `scaling` (how loss scales with size) and `distill` (distillation)."""
