"""Datasets for distillation: a data description (`DataArguments`) in, tokenized splits out.

Three tasks, following transformers' `examples/pytorch` scripts:

- `"causal-lm"` (run_clm.py): `input_ids` + `labels` per example. Every document ends with
  eos (and starts with bos where the tokenizer's bos differs from eos, as for Llama). One
  example per document, cut into chunks of at most `block_size` tokens, or with `packing`
  documents concatenated into full `block_size` blocks (run_clm's `group_texts`). With
  `prompt_column`, prompt (and bos) tokens get label -100: the loss covers the completion.
- `"seq-cls"` (run_glue.py): `input_ids`, `attention_mask` (and `token_type_ids` when the
  tokenizer makes them) truncated to `max_seq_length`, plus an integer `labels`.
- `"image-cls"` (run_image_classification.py): `pixel_values` (float32 [C, H, W]) + `labels`,
  computed on the fly with `with_transform`, so that no pixel tensors are stored.

Nothing is padded: the task's collator pads each batch. Sources are Hub datasets (streamed or
not), local files through the `text`/`json`/`csv`/`parquet`/`imagefolder` builders, a folder
written by `save_to_disk`, or an offline built-in (`distill.corpus`). Every mistake this
module can detect (missing column, missing split, empty result...) is raised before training
starts, with the name of the field to change.

This module holds the public entry points and constants (`DataArguments` and its checks,
`DatasetBundle`, `load_raw_datasets` with split selection and eval carving,
`texts_for_tokenizer`, `build_datasets`, `IGNORE_INDEX`); the per-task tokenization and
transforms, label mapping and the per-split finishing live in `distill.data_prep`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .data_prep import (  # noqa: F401  (IGNORE_INDEX: re-exported)
    IGNORE_INDEX, _cls_text_columns, _columns, _finish, _prepare_causal_lm, _prepare_image_cls,
    _prepare_seq_cls, _require_column)

logger = logging.getLogger(__name__)

TASKS = ("causal-lm", "seq-cls", "image-cls")
BUILTIN_SOURCES = {
    "builtin:python-docs": "causal-lm",
    "builtin:docstring-topics": "seq-cls",
    "builtin:digits": "image-cls",
}
DEFAULT_SOURCE = {task: name for name, task in BUILTIN_SOURCES.items()}
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow", "imagefolder")
_EXTENSION_TO_BUILDER = {"txt": "text", "text": "text", "json": "json", "jsonl": "json",
                         "csv": "csv", "parquet": "parquet", "arrow": "arrow"}
# Streaming sources without a validation split and of unknown length: eval examples to carve.
_STREAMING_EVAL_FALLBACK = 1_000


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to turn it into model inputs."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": (
        "A Hub dataset id (e.g. 'HuggingFaceFW/fineweb-edu'); a local builder ('text', 'json', "
        "'csv', 'parquet', 'arrow', 'imagefolder') used with data_files; a folder written by "
        "save_to_disk; or an offline built-in: 'builtin:python-docs' (causal-lm), "
        "'builtin:docstring-topics' (seq-cls), 'builtin:digits' (image-cls). Default: the "
        "task's built-in, or the builder implied by data_files' extension.")})
    dataset_config_name: Optional[str] = field(default=None, metadata={
        "help": "Configuration (subset) of the Hub dataset, e.g. 'sample-10BT'."})
    data_files: Optional[str] = field(default=None, metadata={"help": (
        "Local file(s): a path or glob, or a JSON object mapping split to path(s), e.g. "
        "'{\"train\": \"data/train.jsonl\", \"validation\": \"data/val.jsonl\"}'. A mapping is "
        "also accepted from YAML. For imagefolder a directory is passed as data_dir.")})
    streaming: bool = field(default=False, metadata={"help": (
        "Stream examples instead of downloading and preparing the whole dataset; gives "
        "IterableDatasets (train shuffled with shuffle_buffer_size), so set max_steps.")})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: Optional[str] = field(default="validation", metadata={"help": (
        "Split to evaluate on. If the default 'validation' is absent, "
        "validation_split_percentage of train is carved off instead. Empty: no evaluation.")})
    test_split: Optional[str] = field(default="test", metadata={"help": (
        "Split for the final test metrics; the default 'test' is skipped when absent.")})
    validation_split_percentage: int = field(default=5, metadata={"help": (
        "Percent of train held out for evaluation when the source has no eval_split. When "
        "streaming, the first max_eval_samples (else this percent of the known split size, "
        "else 1,000) examples are taken for evaluation and skipped in train. 0: no carving.")})
    text_column: Optional[str] = field(default=None, metadata={"help": (
        "Column with the text. Default: 'text'; for seq-cls 'text', 'sentence', "
        "'sentence1' (+ 'sentence2'), else the first string column.")})
    text_pair_column: Optional[str] = field(default=None, metadata={
        "help": "seq-cls only: the second text of a sentence pair (e.g. 'sentence2')."})
    prompt_column: Optional[str] = field(default=None, metadata={"help": (
        "causal-lm only: column with a prompt placed before text_column. Prompt tokens get "
        "label -100 (loss only on the completion), and without packing the sequence is "
        "truncated to block_size instead of chunked, so no chunk loses its prompt.")})
    label_column: str = field(default="label", metadata={
        "help": "seq-cls / image-cls: column with the class (int, string or ClassLabel)."})
    image_column: Optional[str] = field(default=None, metadata={
        "help": "image-cls: column with the image. Default: 'image', else 'img'."})
    block_size: int = field(default=128, metadata={
        "help": "causal-lm: tokens per example (the longest chunk; packed block length)."})
    packing: bool = field(default=False, metadata={"help": (
        "causal-lm: concatenate documents, each ending with eos, and cut full block_size "
        "blocks (run_clm's group_texts; the remainder of every 1,000 documents is dropped). "
        "Off: one example per document chunk, of varying length, padded by the collator.")})
    max_seq_length: int = field(default=128, metadata={
        "help": "seq-cls: tokens kept per example (longer inputs are truncated)."})
    image_size: Optional[int] = field(default=None, metadata={"help": (
        "image-cls: side of the square input when no image processor is given (default 32), "
        "and the size builtin:digits is rendered at. An image processor uses its own size.")})
    max_train_samples: Optional[int] = field(default=None, metadata={
        "help": "Keep only the first N training examples (after tokenization and chunking)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={
        "help": "Keep only the first N evaluation examples (after tokenization and chunking)."})
    max_test_samples: Optional[int] = field(default=None, metadata={
        "help": "Keep only the first N test examples (after tokenization and chunking)."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={
        "help": "Processes for Dataset.map (not used when streaming)."})
    shuffle_buffer_size: int = field(default=10_000, metadata={
        "help": "Streaming only: size of the buffer the train stream is shuffled in."})
    tokenizer_vocab_size: int = field(default=2048, metadata={"help": (
        "Vocabulary of the byte-level BPE tokenizer trained on the train split when no "
        "tokenizer is given.")})

    def __post_init__(self):
        self.data_files = _parse_data_files(self.data_files)
        self.eval_split = self.eval_split or None  # "" from the command line means none
        self.test_split = self.test_split or None
        _check_ranges(self)
        name = self.dataset_name
        if name and name.startswith("builtin:") and name not in BUILTIN_SOURCES:
            raise ValueError(f"dataset_name={name!r} is not a built-in source; choose one of "
                             f"{sorted(BUILTIN_SOURCES)}.")
        if name in LOCAL_BUILDERS and self.data_files is None:
            raise ValueError(f"dataset_name={name!r} is a local file builder and needs "
                             "data_files (a path, glob or JSON mapping of split to paths).")
        if self.data_files is not None:
            if name in BUILTIN_SOURCES:
                raise ValueError(f"data_files cannot be combined with dataset_name={name!r} (a "
                                 "built-in source); drop data_files or set dataset_name to a "
                                 f"builder such as {LOCAL_BUILDERS}.")
            builder = self.builder  # raises when it cannot be told
            if builder in LOCAL_BUILDERS:
                _check_paths_exist(self.data_files)

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
                f"to one of {LOCAL_BUILDERS}.")
        return builders.pop()


def _parse_data_files(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"data_files looks like a JSON object but does not parse ({err}); "
                             "write it as '{\"train\": \"path\", ...}'.") from None
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
            raise FileNotFoundError(f"data_files: {path!r} does not exist (relative to "
                                    f"{os.getcwd()!r}); fix the path or the glob.")


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
        ("preprocessing_num_workers", args.preprocessing_num_workers, 1, ""),
    ]
    for name, value, low, why in checks:
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}{f' ({why})' if why else ''}, got "
                             f"{value}; set --{name} to a larger value.")
    if not 0 <= args.validation_split_percentage < 100:
        raise ValueError("validation_split_percentage must be in [0, 100), got "
                         f"{args.validation_split_percentage}.")


@dataclass
class DatasetBundle:
    """Model-ready splits (None where absent) and, for classification, the label names."""

    train: Any
    eval: Any = None
    test: Any = None
    num_labels: Optional[int] = None
    id2label: Optional[dict[int, str]] = None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_raw_datasets(data_args: DataArguments, seed: int = 42, *, task: str = "causal-lm"):
    """Load the raw splits named by `data_args`.

    Args:
        data_args: the data description.
        seed: seed of the train/validation carve when the source has no eval split.
        task: picks the built-in source when neither dataset_name nor data_files is set.

    Returns:
        `DatasetDict` (or `IterableDatasetDict` when streaming) with "train" and, when
        available, "validation" and "test" (renamed from train_split/eval_split/test_split).
    """
    from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

    name = data_args.dataset_name or (
        DEFAULT_SOURCE[_check_task(task)] if data_args.data_files is None else None)
    if name in BUILTIN_SOURCES:
        raw = _builtin(name, data_args.image_size)
        if data_args.streaming:
            raw = IterableDatasetDict({k: v.to_iterable_dataset() for k, v in raw.items()})
    elif name and os.path.isdir(name) and _is_saved_dataset(name):
        raw = load_from_disk(name)
        if data_args.streaming:
            raw = IterableDatasetDict({k: v.to_iterable_dataset() for k, v in raw.items()})
    else:
        builder, data_files, data_dir = data_args.builder, data_args.data_files, None
        if builder == "imagefolder" and isinstance(data_files, str) and os.path.isdir(data_files):
            data_files, data_dir = None, data_args.data_files
        raw = load_dataset(builder, data_args.dataset_config_name, data_files=data_files,
                           data_dir=data_dir, streaming=data_args.streaming)
    if not isinstance(raw, (DatasetDict, IterableDatasetDict)):  # a saved single Dataset
        raw = DatasetDict({"train": raw})
    return _select_splits(raw, data_args, seed, source=name or data_args.data_files)


def _builtin(name: str, image_size: Optional[int]):
    from distill import corpus

    if name == "builtin:python-docs":
        return corpus.python_docs_corpus()
    if name == "builtin:docstring-topics":
        return corpus.docstring_classification()
    return corpus.digits_images(image_size or 32)


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f))
               for f in ("dataset_dict.json", "state.json"))


def _select_splits(raw, data_args: DataArguments, seed: int, source: Any):
    from datasets import DatasetDict, IterableDatasetDict

    available = list(raw.keys())

    def missing(field_name: str, split: str) -> ValueError:
        return ValueError(f"{field_name}={split!r} is not a split of {source!r}; available "
                          f"splits: {available}. Set --{field_name} to one of them.")

    if data_args.train_split not in raw:
        raise missing("train_split", data_args.train_split)
    out = {"train": raw[data_args.train_split]}
    eval_split, test_split = data_args.eval_split, data_args.test_split
    if eval_split in raw:
        out["validation"] = raw[eval_split]
    elif eval_split is not None and eval_split != "validation":
        raise missing("eval_split", eval_split)
    elif eval_split is not None and data_args.validation_split_percentage > 0:
        out["train"], out["validation"] = _carve_eval(out["train"], data_args, seed)
    if test_split in raw:
        out["test"] = raw[test_split]
    elif test_split is not None and test_split != "test":
        raise missing("test_split", test_split)
    return (IterableDatasetDict if data_args.streaming else DatasetDict)(out)


def _carve_eval(train, data_args: DataArguments, seed: int):
    """Hold out part of train for evaluation (a random part; the first N when streaming)."""
    from datasets import Dataset

    pct = data_args.validation_split_percentage
    if isinstance(train, Dataset):
        if len(train) < 2:
            raise ValueError(f"train_split has {len(train)} example(s), too few to carve a "
                             "validation split; give an eval_split or set "
                             "validation_split_percentage=0.")
        n_eval = min(len(train) - 1, max(1, round(len(train) * pct / 100)))
        parts = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    n_eval = data_args.max_eval_samples
    if n_eval is None:
        splits = getattr(train.info, "splits", None) or {}
        known = splits.get(data_args.train_split)
        n_eval = (max(1, known.num_examples * pct // 100) if known and known.num_examples
                  else _STREAMING_EVAL_FALLBACK)
    logger.info("No %r split: the first %d streamed examples are held out for evaluation.",
                data_args.eval_split, n_eval)
    return train.skip(n_eval), train.take(n_eval)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    return task



# --------------------------------------------------------------------------------------------
# Texts for a tokenizer
# --------------------------------------------------------------------------------------------
def texts_for_tokenizer(data_args: DataArguments, max_chars: int = 20_000_000, *,
                        task: str = "causal-lm") -> Iterator[str]:
    """Yield train-split texts (prompt and pair columns too) until `max_chars` are reached.

    Used to train a BPE tokenizer (`distill.corpus.train_bpe_tokenizer`) when none is given.
    `task` picks the text columns (run_glue's choice for seq-cls) and the built-in source
    when neither dataset_name nor data_files is set. A generator: errors surface on `next`.
    """
    if _check_task(task) == "image-cls":
        raise ValueError("texts_for_tokenizer: image-cls has no text to train a tokenizer on.")
    train = load_raw_datasets(data_args, task=task)["train"]
    columns = _columns(train)
    if task == "causal-lm":
        wanted = {"text_column": data_args.text_column or "text",
                  "prompt_column": data_args.prompt_column}
    else:
        text, pair = _cls_text_columns(train, columns, data_args)
        wanted = {"text_column": text, "text_pair_column": pair}
    text_cols = []
    for field_name, col in wanted.items():
        if col:
            _require_column(columns, col, field_name, "train")
            text_cols.append(col)
    total = 0
    for batch in train.select_columns(text_cols).iter(batch_size=1000):
        for col in text_cols:
            for text in batch[col]:
                if text:
                    yield text
                    total += len(text)
                    if total >= max_chars:
                        return


# --------------------------------------------------------------------------------------------
# Building model-ready datasets
# --------------------------------------------------------------------------------------------
def build_datasets(data_args: DataArguments, task: str, processing_class: Any = None, *,
                   seed: int = 42) -> DatasetBundle:
    """Load, tokenize / transform and check the train, eval and test splits for `task`.

    Args:
        data_args: the data description.
        task: "causal-lm", "seq-cls" or "image-cls".
        processing_class: a tokenizer for the text tasks; for image-cls a
            `BaseImageProcessor` or None (resize to image_size, scale to [-1, 1]).
        seed: seed of the eval carve and of the streaming shuffle buffer.

    Returns:
        A `DatasetBundle`; `num_labels`/`id2label` are set for the classification tasks.
    """
    raw = load_raw_datasets(data_args, seed, task=_check_task(task))
    prepare = {"causal-lm": _prepare_causal_lm, "seq-cls": _prepare_seq_cls,
               "image-cls": _prepare_image_cls}[task]
    splits, num_labels, id2label, transform = prepare(raw, data_args, processing_class)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_test_samples}
    for split, ds in splits.items():
        splits[split] = _finish(ds, split, limits[split], transform, data_args, seed)
    return DatasetBundle(train=splits["train"], eval=splits.get("validation"),
                         test=splits.get("test"), num_labels=num_labels, id2label=id2label)
