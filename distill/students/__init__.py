"""Students made from a teacher: chosen blocks copied (DistilBERT style) and structured pruning (Minitron style).

- `architectures`: where blocks, MLP projections and attention heads live in each supported family.
- `from_layers`: `init_student_from_teacher` (in memory) and `save_student_from_teacher` (`distill init-student`).
- `calibration`: calibration data and importance scores (block influence, neuron and head importance).
- `prune`: `prune_model` (in memory) and `prune_model_dir` (`distill prune`, writes `pruning.json`).
"""

from .architectures import ARCHITECTURES, Architecture, get_architecture, supported_model_types  # noqa: F401
from .calibration import calibration_batches, score_model  # noqa: F401
from .from_layers import (
    init_student_from_teacher,
    load_model_dir,
    resolve_layers,  # noqa: F401
    save_student_from_teacher,
)
from .prune import check_prune_request, prune_model, prune_model_dir  # noqa: F401

__all__ = [
    "calibration_batches",
    "score_model",
    "check_prune_request",
    "prune_model",
    "prune_model_dir",
    "ARCHITECTURES",
    "Architecture",
    "get_architecture",
    "supported_model_types",
    "init_student_from_teacher",
    "load_model_dir",
    "resolve_layers",
    "save_student_from_teacher",
]
