"""Data for distillation: what to load (`DataArguments`), loading and per-task preparation
(`build_datasets`), and the offline built-in corpora (`distill.data.corpus`).

Everything users imported from the former `distill.data` module is importable from here.
"""

from .arguments import (
    BUILTIN_SOURCES,
    DEFAULT_SOURCE,
    LOCAL_BUILDERS,
    TASKS,  # noqa: F401
    DataArguments,
)
from .loading import (
    DatasetBundle,
    build_datasets,
    load_raw_datasets,  # noqa: F401
    texts_for_tokenizer,
)
from .prep import IGNORE_INDEX  # noqa: F401

__all__ = [
    "BUILTIN_SOURCES",
    "DEFAULT_SOURCE",
    "LOCAL_BUILDERS",
    "TASKS",
    "DataArguments",
    "DatasetBundle",
    "build_datasets",
    "load_raw_datasets",
    "texts_for_tokenizer",
    "IGNORE_INDEX",
]
