"""Loading and preparing datasets: a `DataArguments` in, tokenized splits out.

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
written by `save_to_disk`, or an offline built-in (`distill.data.corpus`). Every mistake this
module can detect (missing column, missing split, empty result...) is raised before training
starts, with the name of the field to change.

This module holds `DatasetBundle`, `load_raw_datasets` with split selection and eval carving,
`texts_for_tokenizer` and `build_datasets`; the per-task tokenization and transforms, label
mapping and the per-split finishing live in `distill.data.prep`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from .arguments import _STREAMING_EVAL_FALLBACK, BUILTIN_SOURCES, DEFAULT_SOURCE, TASKS, DataArguments
from .chat import chat_column, conversation_texts
from .prep import (
    _cls_text_columns,
    _columns,
    _finish,
    _prepare_causal_lm,
    _prepare_image_cls,
    _prepare_seq_cls,
    _require_column,
)
from .transfer import (
    append_transfer_set,
    build_transfer_set,
    check_transfer_task,
    transfer_source_args,
    uses_transfer_set,
)

logger = logging.getLogger(__name__)


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
        DEFAULT_SOURCE[_check_task(task)] if data_args.data_files is None else None
    )
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
        try:
            raw = load_dataset(
                builder,
                data_args.dataset_config_name,
                data_files=data_files,
                data_dir=data_dir,
                streaming=data_args.streaming,
            )
        except (ConnectionError, TimeoutError) as err:  # the Hub unreachable, or offline mode on
            raise ValueError(_unreachable_hub_message(builder, err)) from None
    if not isinstance(raw, (DatasetDict, IterableDatasetDict)):  # a saved single Dataset
        raw = DatasetDict({"train": raw})
    return _select_splits(raw, data_args, seed, source=name or data_args.data_files)


def _unreachable_hub_message(name: str, err: Exception) -> str:
    """One line that says why a Hub dataset did not load and the ways on (no traceback)."""
    offline = [
        v
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
    ]
    why = (
        f"offline mode is on ({' and '.join(f'{v}=1' for v in offline)}) and it is not in the local cache"
        if offline
        else f"the Hub could not be reached ({type(err).__name__})"
    )
    return (
        f"dataset_name={name!r} is a Hugging Face Hub dataset and {why}: with network access, unset "
        f"HF_DATASETS_OFFLINE/HF_HUB_OFFLINE to download it, or train offline on a built-in source "
        f"({', '.join(sorted(BUILTIN_SOURCES))}) or local files (dataset_name: json + data_files)."
    )


def _builtin(name: str, image_size: Optional[int]):
    from . import corpus

    if name == "builtin:python-docs":
        return corpus.python_docs_corpus()
    if name == "builtin:docstring-topics":
        return corpus.docstring_classification()
    if name == "builtin:python-chat":
        from .chat_corpus import python_chat_corpus

        return python_chat_corpus()
    if name == "builtin:docstring-kind":
        from .docstring_kind import docstring_kind_classification

        return docstring_kind_classification()
    if name == "builtin:docstring-transfer":
        from .docstring_transfer import docstring_transfer

        return docstring_transfer()
    return corpus.digits_images(image_size or 32)


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _select_splits(raw, data_args: DataArguments, seed: int, source: Any):
    from datasets import DatasetDict, IterableDatasetDict

    available = list(raw.keys())

    def missing(field_name: str, split: str) -> ValueError:
        return ValueError(
            f"{field_name}={split!r} is not a split of {source!r}; available "
            f"splits: {available}. Set --{field_name} to one of them."
        )

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
            raise ValueError(
                f"train_split has {len(train)} example(s), too few to carve a "
                "validation split; give an eval_split or set "
                "validation_split_percentage=0."
            )
        n_eval = min(len(train) - 1, max(1, round(len(train) * pct / 100)))
        parts = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    n_eval = data_args.max_eval_samples
    if n_eval is None:
        splits = getattr(train.info, "splits", None) or {}
        known = splits.get(data_args.train_split)
        n_eval = (
            max(1, known.num_examples * pct // 100)
            if known and known.num_examples
            else _STREAMING_EVAL_FALLBACK
        )
    logger.info(
        "No %r split: the first %d streamed examples are held out for evaluation.",
        data_args.eval_split,
        n_eval,
    )
    return train.skip(n_eval), train.take(n_eval)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    return task


# --------------------------------------------------------------------------------------------
# Texts for a tokenizer
# --------------------------------------------------------------------------------------------
def texts_for_tokenizer(
    data_args: DataArguments, max_chars: int = 20_000_000, *, task: str = "causal-lm"
) -> Iterator[str]:
    """Yield train-split texts (prompt and pair columns too) until `max_chars` are reached.

    Used to train a BPE tokenizer (`distill.data.corpus.train_bpe_tokenizer`) when none is given.
    `task` picks the text columns (run_glue's choice for seq-cls) and the built-in source
    when neither dataset_name nor data_files is set. A generator: errors surface on `next`.
    """
    if _check_task(task) == "image-cls":
        raise ValueError("texts_for_tokenizer: image-cls has no text to train a tokenizer on.")
    train = load_raw_datasets(data_args, task=task)["train"]
    columns = _columns(train)
    if task == "causal-lm":
        text = data_args.text_column or chat_column(train, columns, data_args) or "text"
        wanted = {"text_column": text, "prompt_column": data_args.prompt_column}
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
                if isinstance(text, list):  # a conversation (distill.data.chat): its messages' contents
                    text = "\n".join(conversation_texts(text))
                if text:
                    yield text
                    total += len(text)
                    if total >= max_chars:
                        return


# --------------------------------------------------------------------------------------------
# Building model-ready datasets
# --------------------------------------------------------------------------------------------
def build_datasets(
    data_args: DataArguments,
    task: str,
    processing_class: Any = None,
    *,
    seed: int = 42,
    label_space: Optional[dict] = None,
) -> DatasetBundle:
    """Load, tokenize / transform and check the train, eval and test splits for `task`.

    Args:
        data_args: the data description.
        task: "causal-lm", "seq-cls" or "image-cls".
        processing_class: a tokenizer for the text tasks; for image-cls a
            `BaseImageProcessor` or None (resize to image_size, scale to [-1, 1]).
        seed: seed of the eval carve and of the streaming shuffle buffer.
        label_space: classification with a teacher: the teacher's ``id2label``. The classes and their
            order are the teacher's; the data's labels (names or ids) are mapped to them, and labels the
            teacher does not know or a different number of classes are refused.

    Returns:
        A `DatasetBundle`; `num_labels`/`id2label` are set for the classification tasks.
    """
    if uses_transfer_set(data_args):
        check_transfer_task(task)
    raw = load_raw_datasets(data_args, seed, task=_check_task(task))
    prepare = {"causal-lm": _prepare_causal_lm, "seq-cls": _prepare_seq_cls, "image-cls": _prepare_image_cls}[
        task
    ]
    splits, num_labels, id2label, transform = prepare(raw, data_args, processing_class, label_space)
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    for split, ds in splits.items():
        splits[split] = _finish(ds, split, limits[split], transform, data_args, seed)
    if uses_transfer_set(data_args):  # unlabelled rows the teacher labels (distill.data.transfer)
        raw_transfer = load_raw_datasets(transfer_source_args(data_args), seed, task=task)["train"]
        transfer = build_transfer_set(raw_transfer, data_args, task, processing_class)
        splits["train"] = append_transfer_set(splits["train"], transfer)
    return DatasetBundle(
        train=splits["train"],
        eval=splits.get("validation"),
        test=splits.get("test"),
        num_labels=num_labels,
        id2label=id2label,
    )
