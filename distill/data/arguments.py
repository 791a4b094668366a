"""What data to use: `DataArguments`, the task and source names, and their checks.

`DataArguments` is parsed by `HfArgumentParser` beside `DistillationConfig`; every check runs in
`__post_init__`, so a wrong field fails before any model or dataset is loaded.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

logger = logging.getLogger(__name__)

TASKS = ("causal-lm", "seq-cls", "image-cls")
BUILTIN_SOURCES = {
    "builtin:python-docs": "causal-lm",
    "builtin:docstring-topics": "seq-cls",
    "builtin:digits": "image-cls",
    "builtin:docstring-kind": "seq-cls",  # class / method / function (distill.data.docstring_kind)
    "builtin:python-chat": "causal-lm",  # question/answer chats about the stdlib (distill.data.chat_corpus)
    # unlabelled docstrings outside docstring-topics: a transfer set (distill.data.docstring_transfer)
    "builtin:docstring-transfer": "seq-cls",
}
DEFAULT_SOURCE = {
    "causal-lm": "builtin:python-docs",
    "seq-cls": "builtin:docstring-topics",
    "image-cls": "builtin:digits",
}
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow", "imagefolder")
_EXTENSION_TO_BUILDER = {
    "txt": "text",
    "text": "text",
    "json": "json",
    "jsonl": "json",
    "csv": "csv",
    "parquet": "parquet",
    "arrow": "arrow",
}
# Streaming sources without a validation split and of unknown length: eval examples to carve.
_STREAMING_EVAL_FALLBACK = 1_000


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to turn it into model inputs."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "A Hub dataset id (e.g. 'HuggingFaceFW/fineweb-edu'); a local builder ('text', 'json', "
                "'csv', 'parquet', 'arrow', 'imagefolder') used with data_files; a folder written by "
                "save_to_disk; or an offline built-in: 'builtin:python-docs' (causal-lm), "
                "'builtin:docstring-topics' (seq-cls), 'builtin:digits' (image-cls), "
                "'builtin:docstring-kind' (seq-cls: class, method or function), 'builtin:python-chat' "
                "(causal-lm: a messages column of questions and answers about the standard library), "
                "'builtin:docstring-transfer' (unlabelled docstrings, a transfer set for docstring-topics). "
                "Default: the "
                "task's built-in, or the builder implied by data_files' extension."
            )
        },
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "Configuration (subset) of the Hub dataset, e.g. 'sample-10BT'."}
    )
    data_files: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "Local file(s): a path or glob, or a JSON object mapping split to path(s), e.g. "
                '\'{"train": "data/train.jsonl", "validation": "data/val.jsonl"}\'. A mapping is '
                "also accepted from YAML. For imagefolder a directory is passed as data_dir."
            )
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": (
                "Stream examples instead of downloading and preparing the whole dataset; gives "
                "IterableDatasets (train shuffled with shuffle_buffer_size), so set max_steps."
            )
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: Optional[str] = field(
        default="validation",
        metadata={
            "help": (
                "Split to evaluate on. If the default 'validation' is absent, "
                "validation_split_percentage of train is carved off instead. Empty: no evaluation."
            )
        },
    )
    test_split: Optional[str] = field(
        default="test",
        metadata={"help": ("Split for the final test metrics; the default 'test' is skipped when absent.")},
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": (
                "Percent of train held out for evaluation when the source has no eval_split. When "
                "streaming, the first max_eval_samples (else this percent of the known split size, "
                "else 1,000) examples are taken for evaluation and skipped in train. 0: no carving."
            )
        },
    )
    text_column: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "Column with the text. Default: 'text'; for seq-cls 'text', 'sentence', "
                "'sentence1' (+ 'sentence2'), else the first string column."
            )
        },
    )
    text_pair_column: Optional[str] = field(
        default=None,
        metadata={"help": "seq-cls only: the second text of a sentence pair (e.g. 'sentence2')."},
    )
    prompt_column: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "causal-lm only: column with a prompt placed before text_column. Prompt tokens get "
                "label -100 (loss only on the completion), and without packing the sequence is "
                "truncated to block_size instead of chunked, so no chunk loses its prompt."
            )
        },
    )
    assistant_only_loss: bool = field(
        default=False,
        metadata={
            "help": (
                "causal-lm with conversational data (a messages column of {role, content} lists, TRL's "
                "format): label only the assistant's turns, so CE and KD skip system, user and template "
                "tokens (TRL SFTConfig's field). False: every token of the rendered chat is a target."
            )
        },
    )
    chat_template_path: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "Chat template for conversational data (TRL SFTConfig's field): a tokenizer directory, a "
                ".jinja file, or builtin:zephyr (for tokenizers without one). Saved with the tokenizer. "
                "Default: the tokenizer's own template."
            )
        },
    )
    label_column: str = field(
        default="label",
        metadata={"help": "seq-cls / image-cls: column with the class (int, string or ClassLabel)."},
    )
    class_names: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "seq-cls / image-cls without a teacher: the classes in id order (names as in label_column; "
            "default: a ClassLabel's names, else ids 0..n-1, else the sorted distinct labels). With a teacher the "
            "classes and their order are always the teacher's (config.json id2label)."
        },
    )
    image_column: Optional[str] = field(
        default=None, metadata={"help": "image-cls: column with the image. Default: 'image', else 'img'."}
    )
    block_size: int = field(
        default=128,
        metadata={"help": "causal-lm: tokens per example (the longest chunk; packed block length)."},
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": (
                "causal-lm: concatenate documents, each ending with eos, and cut full block_size "
                "blocks (run_clm's group_texts; the remainder of every 1,000 documents is dropped). "
                "Off: one example per document chunk, of varying length, padded by the collator."
            )
        },
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "seq-cls: tokens kept per example (longer inputs are truncated)."}
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                "image-cls: side of the square input when no image processor is given (default 32), "
                "and the size builtin:digits is rendered at. An image processor uses its own size."
            )
        },
    )
    max_train_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Keep only the first N training examples (after tokenization and chunking)."},
    )
    max_eval_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Keep only the first N evaluation examples (after tokenization and chunking)."},
    )
    max_test_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Keep only the first N test examples (after tokenization and chunking)."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes for Dataset.map (not used when streaming)."}
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "Streaming only: size of the buffer the train stream is shuffled in."},
    )
    tasks: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "Multi-task distillation (seq-cls): a list of tasks, each with name, dataset_name (or "
                "data_files), teacher, weight, and optionally label_column, text_column, text_pair_column, "
                "max_train_samples, max_eval_samples; see distill.data.multitask. YAML list or JSON string."
            )
        },
    )
    transfer_split: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "seq-cls: a split of unlabelled in-domain text (of dataset_name, or of transfer_dataset_name / "
                "transfer_data_files when given) that the teacher labels during training: its rows are added "
                "to the training split and trained on the distillation term alone (DistilBERT's transfer "
                "set; labels there are ignored). Needs alpha > 0 and an online teacher. See "
                "distill.data.transfer."
            )
        },
    )
    transfer_dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "The transfer set from another source than dataset_name (same kinds of source); its "
                "transfer_split (default 'train') is used."
            )
        },
    )
    transfer_data_files: Optional[str] = field(
        default=None,
        metadata={
            "help": "The transfer set from local file(s), like data_files (split: transfer_split or train)."
        },
    )
    max_transfer_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first N examples of the transfer set."}
    )
    tokenizer_vocab_size: int = field(
        default=2048,
        metadata={
            "help": (
                "Vocabulary of the byte-level BPE tokenizer trained on the train split when no "
                "tokenizer is given."
            )
        },
    )

    def __post_init__(self):
        self.data_files = _parse_data_files(self.data_files)
        self.transfer_split = self.transfer_split or None  # "" from the command line means none
        self.transfer_dataset_name = self.transfer_dataset_name or None
        self.transfer_data_files = _parse_data_files(self.transfer_data_files)
        if self.tasks is not None:  # multi-task distillation: checked here, before any compute
            from .task_list import parse_tasks

            self.tasks = parse_tasks(self.tasks, needs_teacher=False)
        self.eval_split = self.eval_split or None  # "" from the command line means none
        self.test_split = self.test_split or None
        _check_ranges(self)
        name = self.dataset_name
        if name and name.startswith("builtin:") and name not in BUILTIN_SOURCES:
            raise ValueError(
                f"dataset_name={name!r} is not a built-in source; choose one of {sorted(BUILTIN_SOURCES)}."
            )
        if name in LOCAL_BUILDERS and self.data_files is None:
            raise ValueError(
                f"dataset_name={name!r} is a local file builder and needs "
                "data_files (a path, glob or JSON mapping of split to paths)."
            )
        if self.data_files is not None:
            if name in BUILTIN_SOURCES:
                raise ValueError(
                    f"data_files cannot be combined with dataset_name={name!r} (a "
                    "built-in source); drop data_files or set dataset_name to a "
                    f"builder such as {LOCAL_BUILDERS}."
                )
            builder = self.builder  # raises when it cannot be told
            if builder in LOCAL_BUILDERS:
                _check_paths_exist(self.data_files)
        _check_transfer_source(self)

    @property
    def builder(self) -> Optional[str]:
        """`dataset_name`, or the builder implied by the data_files extension (run_clm)."""
        if self.dataset_name or self.data_files is None:
            return self.dataset_name
        paths = _flat_paths(self.data_files)
        extensions = {os.path.basename(p).rsplit(".", 1)[-1].lower() for p in paths}
        builders = {_EXTENSION_TO_BUILDER.get(e) for e in extensions}
        if len(builders) != 1 or None in builders:
            raise ValueError(
                f"data_files={self.data_files!r} was given without dataset_name and its "
                f"extension(s) {sorted(extensions)} do not name one builder; set dataset_name "
                f"to one of {LOCAL_BUILDERS}."
            )
        return builders.pop()


def _parse_data_files(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"data_files looks like a JSON object but does not parse ({err}); "
                'write it as \'{"train": "path", ...}\'.'
            ) from None
    if isinstance(value, dict):
        return {str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _flat_paths(data_files: Any) -> list[str]:
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _flat_paths(v)]
    return [data_files] if isinstance(data_files, str) else list(data_files)


def _check_paths_exist(data_files: Any) -> None:
    for path in _flat_paths(data_files):
        if "://" in path:  # hf://, s3://...: left to datasets
            continue
        found = glob.glob(path, recursive=True) if glob.has_magic(path) else os.path.exists(path)
        if not found:
            raise FileNotFoundError(
                f"data_files: {path!r} does not exist (relative to "
                f"{os.getcwd()!r}); fix the path or the glob."
            )


def _check_ranges(args: DataArguments) -> None:
    checks = [
        ("block_size", args.block_size, 2, "a causal LM needs an input and a next token"),
        ("max_seq_length", args.max_seq_length, 1, ""),
        ("shuffle_buffer_size", args.shuffle_buffer_size, 1, ""),
        ("tokenizer_vocab_size", args.tokenizer_vocab_size, 259, "256 bytes + 3 special tokens"),
        ("image_size", args.image_size, 1, ""),
        ("max_train_samples", args.max_train_samples, 1, ""),
        ("max_eval_samples", args.max_eval_samples, 1, ""),
        ("max_test_samples", args.max_test_samples, 1, ""),
        ("max_transfer_samples", args.max_transfer_samples, 1, ""),
        ("preprocessing_num_workers", args.preprocessing_num_workers, 1, ""),
    ]
    for name, value, low, why in checks:
        if value is not None and value < low:
            raise ValueError(
                f"{name} must be >= {low}{f' ({why})' if why else ''}, got "
                f"{value}; set --{name} to a larger value."
            )
    if not 0 <= args.validation_split_percentage < 100:
        raise ValueError(
            f"validation_split_percentage must be in [0, 100), got {args.validation_split_percentage}."
        )


def _check_transfer_source(args: DataArguments) -> None:
    """The transfer set's own source, checked like dataset_name / data_files (before any compute)."""
    if not (args.transfer_split or args.transfer_dataset_name or args.transfer_data_files):
        if args.max_transfer_samples is not None:
            raise ValueError(
                "max_transfer_samples is set but there is no transfer set; set transfer_split (or "
                "transfer_dataset_name / transfer_data_files), or drop max_transfer_samples."
            )
        return
    if args.streaming:
        raise ValueError(
            "a transfer set (transfer_split / transfer_dataset_name / transfer_data_files) needs a map-style "
            "training set: set streaming: false."
        )
    if args.tasks is not None:
        raise ValueError("a transfer set is not supported with multi-task runs (tasks); drop one of them.")
    name, files = args.transfer_dataset_name, args.transfer_data_files
    if name and name.startswith("builtin:") and name not in BUILTIN_SOURCES:
        raise ValueError(
            f"transfer_dataset_name={name!r} is not a built-in source; choose one of {sorted(BUILTIN_SOURCES)}."
        )
    if name in LOCAL_BUILDERS and files is None:
        raise ValueError(
            f"transfer_dataset_name={name!r} is a local file builder and needs transfer_data_files."
        )
    if files is not None:
        for path in _flat_paths(files):
            if "://" not in path and not (
                glob.glob(path, recursive=True) if glob.has_magic(path) else os.path.exists(path)
            ):
                raise FileNotFoundError(
                    f"transfer_data_files: {path!r} does not exist (relative to {os.getcwd()!r}); fix the path."
                )
        if name is None:
            extensions = {os.path.basename(p).rsplit(".", 1)[-1].lower() for p in _flat_paths(files)}
            builders = {_EXTENSION_TO_BUILDER.get(e) for e in extensions}
            if len(builders) != 1 or None in builders:
                raise ValueError(
                    f"transfer_data_files={files!r}: the extension(s) {sorted(extensions)} do not name one "
                    f"builder; set transfer_dataset_name to one of {LOCAL_BUILDERS}."
                )
            args.transfer_dataset_name = builders.pop()
