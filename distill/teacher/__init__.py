"""The teacher: loading (safetensors only) and tokenizer checks (`loading`), placement per
distributed setup (`placement`), and the offline top-k cache (`cache`, CLI in `cache_cli`).
"""

from .cache import CACHE_COLUMNS, TeacherCache, TeacherCacheCollator, build_teacher_cache  # noqa: F401
from .loading import check_same_tokenizer, freeze, load_teacher, load_tokenizer_if_present  # noqa: F401
from .placement import place_teacher, shard_teacher_fsdp2, teacher_deepspeed_config  # noqa: F401

__all__ = [
    "CACHE_COLUMNS",
    "TeacherCache",
    "TeacherCacheCollator",
    "build_teacher_cache",
    "check_same_tokenizer",
    "freeze",
    "load_teacher",
    "load_tokenizer_if_present",
    "place_teacher",
    "shard_teacher_fsdp2",
    "teacher_deepspeed_config",
]
