"""An unlabelled transfer set: in-domain text the teacher labels during training (seq-cls).

DistilBERT's "task-agnostic then task-specific" recipe and Hinton et al.'s transfer set: a student learns
more from a teacher when the teacher scores many more examples than the labelled set has. With
``transfer_split`` (a split of the training source) or ``transfer_dataset_name`` / ``transfer_data_files``
(another source), those texts are tokenized like the training split, given a placeholder label and a
``transfer`` row flag, and appended to the training split. The trainer's loss on flagged rows is the
distillation term alone (their labels are unknown), on labelled rows the usual
``alpha * KD + (1 - alpha) * CE``; both share one denominator (all rows of the step), as augmented rows do.

Only the text columns of the transfer source are read: a label column there is ignored.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .prep import _cls_text_columns, _columns, _map, _require_column, _require_tokenizer

if TYPE_CHECKING:
    from .arguments import DataArguments

# The boolean row flag of transfer-set examples, a dataset column and a batch key.
TRANSFER_KEY = "transfer"


def uses_transfer_set(data_args: DataArguments) -> bool:
    return bool(data_args.transfer_split or data_args.transfer_dataset_name or data_args.transfer_data_files)


def check_transfer_task(task: str) -> None:
    if task != "seq-cls":
        raise ValueError(
            f"transfer_split / transfer_dataset_name / transfer_data_files support task seq-cls only, not "
            f"{task!r}: for causal-lm every text is already a training example without labels."
        )


def transfer_source_args(data_args: DataArguments) -> DataArguments:
    """`DataArguments` that load the transfer texts as the "train" split (no eval carving, no test)."""
    other_source = bool(data_args.transfer_dataset_name or data_args.transfer_data_files)
    return dataclasses.replace(
        data_args,
        dataset_name=data_args.transfer_dataset_name if other_source else data_args.dataset_name,
        data_files=data_args.transfer_data_files if other_source else data_args.data_files,
        dataset_config_name=None if other_source else data_args.dataset_config_name,
        train_split=data_args.transfer_split or "train",
        eval_split=None,
        test_split=None,
        tasks=None,
        transfer_split=None,
        transfer_dataset_name=None,
        transfer_data_files=None,
        max_transfer_samples=None,
    )


def build_transfer_set(raw, data_args: DataArguments, task: str, tokenizer: Any):
    """The raw transfer texts (loaded with `transfer_source_args`) tokenized like the seq-cls training split,
    with ``labels`` 0 (a placeholder that no loss reads) and ``transfer`` True; at most
    ``max_transfer_samples`` of them."""
    check_transfer_task(task)
    tokenizer = _require_tokenizer(tokenizer, task)
    columns = _columns(raw)
    text_col, pair_col = _cls_text_columns(raw, columns, data_args)
    _require_column(columns, text_col, "text_column", "transfer")
    if pair_col:
        _require_column(columns, pair_col, "text_pair_column", "transfer")
    max_len = data_args.max_seq_length

    def fn(batch: dict) -> dict:
        texts = [t or "" for t in batch[text_col]]
        pairs = [t or "" for t in batch[pair_col]] if pair_col else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_len)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = [0] * len(texts)
        out[TRANSFER_KEY] = [True] * len(texts)
        return out

    transfer = _map(raw, fn, data_args, "Tokenizing the transfer set")
    if data_args.max_transfer_samples is not None:
        transfer = transfer.select(range(min(data_args.max_transfer_samples, len(transfer))))
    if len(transfer) == 0:
        raise ValueError(
            "the transfer set is empty; check transfer_split / transfer_dataset_name / transfer_data_files "
            "and max_transfer_samples."
        )
    return transfer


def append_transfer_set(train, transfer):
    """The labelled training split (flagged ``transfer`` False) followed by the transfer set."""
    from datasets import Value, concatenate_datasets

    train = train.add_column(TRANSFER_KEY, [False] * len(train))
    shared = [c for c in train.column_names if c in transfer.column_names]
    missing = sorted(set(train.column_names) ^ set(transfer.column_names))
    if missing:
        raise ValueError(
            f"the transfer set and the training split tokenize to different columns ({missing}); give both "
            "the same text columns (text_column / text_pair_column)."
        )
    train = train.cast_column("labels", Value("int64"))
    transfer = transfer.cast_column("labels", Value("int64")).select_columns(shared)
    return concatenate_datasets([train.select_columns(shared), transfer])
