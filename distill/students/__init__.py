"""Students made from a teacher: chosen blocks copied (DistilBERT style) and structured pruning (Minitron style).

- `architectures`: where blocks, MLP projections and attention heads live in each supported family.
- `from_layers`: `init_student_from_teacher` (in memory) and `save_student_from_teacher` (`distill init-student`).
"""

from .architectures import ARCHITECTURES, Architecture, get_architecture, supported_model_types  # noqa: F401
from .from_layers import (init_student_from_teacher, load_model_dir, resolve_layers,  # noqa: F401
                          save_student_from_teacher)

__all__ = ["ARCHITECTURES", "Architecture", "get_architecture", "supported_model_types",
           "init_student_from_teacher", "load_model_dir", "resolve_layers", "save_student_from_teacher"]
