"""Per-task preparation for `distill.data`: raw splits in, model-ready splits out.

`distill.data.build_datasets` loads the raw splits and hands them to one of the preparers here:

- `_prepare_causal_lm` / `_causal_lm_fn`: tokenize, append eos (prefix bos), chunk or pack
  into `block_size` blocks, and label prompt tokens `IGNORE_INDEX`.
- `_prepare_seq_cls` (with `_cls_text_columns`, run_glue's choice of text columns): tokenize
  and truncate to `max_seq_length`, map labels to ids (`_label_info`, `_label_ids`).
- `_prepare_image_cls` (with `simple_pixels` / `_processor_pixels`): a lazy pixel transform.

Each preparer returns `(splits, num_labels, id2label, transform)`; `_finish` then applies
max_*_samples and the transform, checks that no split is empty and shuffles a train stream.
The column helpers `_columns` / `_require_column` live here too, so that `distill.data.loading` can
import from this module; this module needs only `distill.data.arguments`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .arguments import DataArguments

# Label value of tokens that take no part in the loss (torch's CrossEntropyLoss ignore_index).
IGNORE_INDEX = -100


# ---- columns -------------------------------------------------------------------------------
def _columns(ds) -> list[str]:
    """Column names, peeking at the first example when a stream does not know them."""
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds.take(1)), None)
    return list(first) if first is not None else []


def _require_column(columns: list[str], name: str, field_name: str, split: str) -> None:
    if name not in columns:
        raise ValueError(
            f"{field_name}={name!r} is not a column of the {split} split; "
            f"available columns: {columns}. Set --{field_name} to one of them."
        )


# ---- finishing a split ---------------------------------------------------------------------
def _finish(
    ds, split: str, limit: Optional[int], transform: Optional[Callable], data_args: DataArguments, seed: int
):
    """Apply max_*_samples and the lazy transform, check for emptiness, shuffle a stream.

    The first example is computed here, so that a broken transform fails before training.
    """
    from datasets import Dataset

    if isinstance(ds, Dataset):
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        if transform is not None:
            ds = ds.with_transform(transform)
        empty = len(ds) == 0 or ds[0] is None
    else:
        if limit is not None:
            ds = ds.take(limit)
        empty = next(iter(ds), None) is None
    if empty:
        raise ValueError(
            f"the {split} split is empty after preprocessing; check dataset_name/data_files, "
            "the text column, block_size (causal-lm drops examples under 2 tokens or without a "
            "trainable label) and max_*_samples."
        )
    if split == "train" and not isinstance(ds, Dataset):
        ds = ds.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    return ds


def _map(ds, fn: Callable, data_args: DataArguments, desc: str):
    """`map(batched=True)` that drops the source columns, for Datasets and streams alike."""
    from datasets import Dataset

    kwargs: dict[str, Any] = {"batched": True, "remove_columns": _columns(ds)}
    if isinstance(ds, Dataset):
        kwargs.update(num_proc=data_args.preprocessing_num_workers, desc=desc)
    return ds.map(fn, **kwargs)


def _require_tokenizer(processing_class: Any, task: str) -> Any:
    if (
        processing_class is None
        or not callable(processing_class)
        or not hasattr(processing_class, "convert_tokens_to_ids")
    ):
        raise ValueError(
            f"task {task!r} needs a tokenizer as processing_class, got "
            f"{type(processing_class).__name__}; pass --tokenizer_name or let the "
            "CLI train one (tokenizer_vocab_size)."
        )
    return processing_class


# ---- causal-lm -----------------------------------------------------------------------------
def _prepare_causal_lm(raw, data_args: DataArguments, tokenizer: Any, label_space=None, require_all=True):
    tokenizer = _require_tokenizer(tokenizer, "causal-lm")
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "causal-lm appends eos to every document, but the tokenizer has no "
            "eos_token; set tokenizer.eos_token (e.g. to its sep token)."
        )
    from .chat import chat_column, chat_lm_fn, prepare_chat_tokenizer

    chat_col = chat_column(raw["train"], _columns(raw["train"]), data_args)
    if chat_col is not None:  # conversational data: a messages column (distill.data.chat)
        if data_args.prompt_column:
            raise ValueError(
                f"prompt_column={data_args.prompt_column!r} does not apply to conversational data "
                f"({chat_col!r}): the chat template marks the assistant's turns; drop prompt_column."
            )
        for split, ds in raw.items():
            _require_column(_columns(ds), chat_col, "text_column", split)
        fn = chat_lm_fn(prepare_chat_tokenizer(tokenizer, data_args), chat_col, data_args)
        return (
            {s: _map(ds, fn, data_args, f"Rendering chats of {s}") for s, ds in raw.items()},
            None,
            None,
            None,
        )
    if data_args.assistant_only_loss:
        raise ValueError(
            "assistant_only_loss: true needs conversational data (a messages column of {role, content} "
            "lists, or text_column naming one); this data is plain text: set assistant_only_loss: false."
        )
    text_col, prompt_col = data_args.text_column or "text", data_args.prompt_column
    for split, ds in raw.items():
        columns = _columns(ds)
        _require_column(columns, text_col, "text_column", split)
        if prompt_col:
            _require_column(columns, prompt_col, "prompt_column", split)
    fn = _causal_lm_fn(tokenizer, text_col, prompt_col, data_args.block_size, data_args.packing)
    splits = {s: _map(ds, fn, data_args, f"Tokenizing {s}") for s, ds in raw.items()}
    return splits, None, None, None


def _causal_lm_fn(
    tokenizer, text_col: str, prompt_col: Optional[str], block_size: int, packing: bool
) -> Callable:
    eos = tokenizer.eos_token_id
    # Tokenizers with a distinct bos (Llama: <s> ... </s>) start every document with it, as
    # their models were trained; GPT-2-style ones (bos == eos) only separate with eos. bos
    # counts as context: label -100.
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and bos != eos else []

    def encode(texts: list) -> list[list[int]]:
        texts = [t or "" for t in texts]
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def fn(batch: dict) -> dict:
        completions = encode(batch[text_col])
        prompts = encode(batch[prompt_col]) if prompt_col else [[] for _ in completions]
        examples = []
        for prompt, completion in zip(prompts, completions):
            ids = prefix + prompt + completion + [eos]
            labels = [IGNORE_INDEX] * (len(prefix) + len(prompt)) + completion + [eos]
            if packing:
                examples.append((ids, labels))
            elif prompt_col:  # truncate: a chunk without its prompt would be a different task
                examples.append((ids[:block_size], labels[:block_size]))
            else:
                examples += [
                    (ids[i : i + block_size], labels[i : i + block_size])
                    for i in range(0, len(ids), block_size)
                ]
        if packing and examples:  # run_clm's group_texts
            all_ids = [t for ids, _ in examples for t in ids]
            all_labels = [t for _, labels in examples for t in labels]
            usable = len(all_ids) // block_size * block_size
            examples = [
                (all_ids[i : i + block_size], all_labels[i : i + block_size])
                for i in range(0, usable, block_size)
            ]
        # Keep examples with at least one token to predict (labels are shifted by one).
        examples = [
            (ids, labels)
            for ids, labels in examples
            if len(ids) >= 2 and any(t != IGNORE_INDEX for t in labels[1:])
        ]
        return {"input_ids": [e[0] for e in examples], "labels": [e[1] for e in examples]}

    return fn


# ---- classification labels ---------------------------------------------------------------
def _is_default_name(name: Any, i: int) -> bool:
    return str(name) == f"LABEL_{i}"


def _data_labels(raw, label_column: str) -> tuple[Any, list]:
    """(feature, the distinct label values of train and validation, in first-seen order)."""
    for split, ds in raw.items():
        _require_column(_columns(ds), label_column, "label_column", split)
    feature = (raw["train"].features or {}).get(label_column)
    values: dict = {}  # an ordered set
    for split in ("train", "validation"):  # the labels a model can learn or be scored on
        if split in raw:
            for batch in raw[split].select_columns([label_column]).iter(batch_size=10_000):
                values.update(dict.fromkeys(batch[label_column]))
    if None in values:
        raise ValueError(
            f"label_column={label_column!r} has missing (None) values; fill or filter them before training."
        )
    return feature, list(values)


def _fmt(values) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:12])
    return f"[{shown}{', ...' if len(values) > 12 else ''}]"


def _map_to_label_space(
    feature, values: list, label_space: dict, label_column: str, who: str, require_all: bool
) -> dict:
    """value -> id in ``label_space`` (the teacher's id2label): names by name, ints as ids; else refused."""
    from datasets import ClassLabel

    n = len(label_space)
    names = [label_space[i] for i in range(n)]
    named = not all(_is_default_name(name, i) for i, name in enumerate(names))
    by_name = {str(name): i for i, name in enumerate(names)}
    if isinstance(feature, ClassLabel):  # raw values are indices into feature.names
        data_names = list(feature.names)
        generic = all(_is_default_name(name, i) for i, name in enumerate(data_names)) or not named
        mapping = {
            i: (i if generic or not named else by_name.get(str(name))) for i, name in enumerate(data_names)
        }
        unknown = [data_names[i] for i, t in mapping.items() if t is None or not 0 <= t < n]
        seen = {t for t in mapping.values() if t is not None}
        count = len(data_names)
    else:  # every name and id of the label space, so that a test split's labels map too
        mapping = {**by_name, **{i: i for i in range(n)}}
        unknown = [
            v for v in values if isinstance(v, bool) or not isinstance(v, (int, str)) or v not in mapping
        ]
        seen = {mapping[v] for v in values if v not in unknown}
        count = len(seen)
    known = f"the {who}'s {n} classes, in its id order, are {_fmt(names)}"
    if unknown:
        raise ValueError(
            f"label_column={label_column!r}: label(s) {_fmt(unknown)} are not classes of the {who}: {known} "
            f"(names, or ids 0..{n - 1}). Relabel the data to these classes, or use a {who} trained on them."
        )
    if require_all and count != n:
        missing = [names[i] for i in range(n) if i not in seen]
        raise ValueError(
            f"label_column={label_column!r}: the data has {count} classes but {known}; missing from the "
            f"train/validation data: {_fmt(missing)}. Distillation needs the same classes in data and {who}."
        )
    return mapping


def _label_info(
    raw,
    label_column: str,
    label_space: Optional[dict] = None,
    class_names: Optional[list] = None,
    who: str = "teacher",
    require_all: bool = True,
):
    """(num_labels, id2label, value->id mapping or None); num_labels=1 means regression.

    With ``label_space`` (the teacher's ``id2label``), the classes and their order are the teacher's and
    the data's labels (names, or ids) are mapped to them; a label the teacher does not know, ids out of
    range or (``require_all``) a different number of classes are refused. Without one, the classes are
    ``class_names`` in that order, else a `ClassLabel`'s names, else ids 0..n-1 as they are, else the
    distinct values of train and validation (for a stream, the whole train stream) in sorted order, which
    does not depend on the seed that carves the validation split.
    """
    from datasets import ClassLabel, Value

    feature, values = _data_labels(raw, label_column)
    is_float = isinstance(feature, Value) and feature.dtype.startswith("float")
    if label_space is not None:
        label_space = {int(k): v for k, v in label_space.items()}
        if is_float:
            if len(label_space) == 1:
                return 1, None, None
            raise ValueError(
                f"label_column={label_column!r} holds floats (regression) but the {who} has "
                f"{len(label_space)} classes {_fmt(label_space.values())}; give class labels, or a regression {who}."
            )
        if class_names is not None and [str(c) for c in class_names] != [
            str(label_space[i]) for i in range(len(label_space))
        ]:
            raise ValueError(
                f"class_names={list(class_names)} differ from the {who}'s classes "
                f"{_fmt(label_space[i] for i in range(len(label_space)))}: the {who} decides the classes and "
                "their order; drop class_names."
            )
        mapping = _map_to_label_space(feature, values, label_space, label_column, who, require_all)
        return len(label_space), dict(label_space), mapping
    if class_names is not None:
        space = {i: str(c) for i, c in enumerate(class_names)}
        if len(set(space.values())) != len(space) or not space:
            raise ValueError(f"class_names={list(class_names)} must be a non-empty list of distinct names.")
        mapping = _map_to_label_space(feature, values, space, label_column, "class_names", require_all=False)
        return len(space), space, mapping
    if isinstance(feature, ClassLabel):
        return feature.num_classes, dict(enumerate(feature.names)), None
    if is_float:
        return 1, None, None  # run_glue's regression convention
    if all(isinstance(v, int) for v in values) and set(values) <= set(range(len(values))):
        return len(values), {i: str(i) for i in range(len(values))}, None
    names = sorted(values, key=lambda v: (str(type(v)), v))
    return len(names), {i: str(v) for i, v in enumerate(names)}, {v: i for i, v in enumerate(names)}


def _label_ids(values: list, mapping: Optional[dict], label_column: str) -> list:
    if mapping is None:
        return list(values)
    unknown = {v for v in values if mapping.get(v) is None}
    if unknown:
        raise ValueError(
            f"label_column={label_column!r}: values {sorted(map(str, unknown))} "
            "are not among the train/validation labels."
        )
    return [mapping[v] for v in values]


# ---- seq-cls -------------------------------------------------------------------------------
def _cls_text_columns(ds, columns: list[str], data_args: DataArguments):
    """(text column, pair column or None), following run_glue's choice of columns."""
    text, pair = data_args.text_column, data_args.text_pair_column
    if text is None:
        for candidate in ("text", "sentence", "sentence1"):
            if candidate in columns:
                text = candidate
                break
        else:
            first = next(iter(ds.take(1)), None) or {}
            strings = [c for c in columns if c != data_args.label_column and isinstance(first.get(c), str)]
            text = strings[0] if strings else "text"
        if pair is None and text == "sentence1" and "sentence2" in columns:
            pair = "sentence2"
    return text, pair


def _prepare_seq_cls(raw, data_args: DataArguments, tokenizer: Any, label_space=None, require_all=True):
    tokenizer = _require_tokenizer(tokenizer, "seq-cls")
    text_col, pair_col = _cls_text_columns(raw["train"], _columns(raw["train"]), data_args)
    for split, ds in raw.items():
        columns = _columns(ds)
        _require_column(columns, text_col, "text_column", split)
        if pair_col:
            _require_column(columns, pair_col, "text_pair_column", split)
    num_labels, id2label, mapping = _label_info(
        raw, data_args.label_column, label_space, data_args.class_names, require_all=require_all
    )
    label_col, max_len = data_args.label_column, data_args.max_seq_length

    def fn(batch: dict) -> dict:
        texts = [t or "" for t in batch[text_col]]
        pairs = [t or "" for t in batch[pair_col]] if pair_col else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_len)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["labels"] = _label_ids(batch[label_col], mapping, label_col)
        return out

    splits = {s: _map(ds, fn, data_args, f"Tokenizing {s}") for s, ds in raw.items()}
    return splits, num_labels, id2label, None


# ---- image-cls -----------------------------------------------------------------------------
def _prepare_image_cls(
    raw, data_args: DataArguments, image_processor: Any, label_space=None, require_all=True
):
    from datasets import Dataset

    columns = _columns(raw["train"])
    image_col = data_args.image_column or next((c for c in ("image", "img") if c in columns), "image")
    for split, ds in raw.items():
        _require_column(_columns(ds), image_col, "image_column", split)
    num_labels, id2label, mapping = _label_info(
        raw, data_args.label_column, label_space, data_args.class_names, require_all=require_all
    )
    to_pixels = (
        _processor_pixels(image_processor)
        if image_processor is not None
        else simple_pixels(data_args.image_size or 32)
    )
    label_col = data_args.label_column

    def transform(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch[image_col]]
        return {"pixel_values": to_pixels(images), "labels": _label_ids(batch[label_col], mapping, label_col)}

    if isinstance(raw["train"], Dataset):  # with_transform in _finish: pixels made per batch
        return (
            {s: ds.select_columns([image_col, label_col]) for s, ds in raw.items()},
            num_labels,
            id2label,
            transform,
        )
    splits = {s: _map(ds, transform, data_args, f"Transforming {s}") for s, ds in raw.items()}
    return splits, num_labels, id2label, None


def simple_pixels(size: int) -> Callable:
    """Resize to size x size, scale to [0, 1], normalize with mean 0.5 / std 0.5 -> [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    def to_pixels(images: list) -> list:
        out = []
        for image in images:
            array = (
                np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
            )
            out.append(torch.from_numpy(((array - 0.5) / 0.5).transpose(2, 0, 1).copy()))
        return out

    return to_pixels


def _processor_pixels(image_processor: Any) -> Callable:
    if not callable(image_processor):
        raise ValueError(
            "image-cls needs an image processor (BaseImageProcessor) or None as "
            f"processing_class, got {type(image_processor).__name__}."
        )

    import torch

    def to_pixels(images: list) -> list:
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return list(pixels.to(dtype=torch.float32))

    return to_pixels


def prepare_split(
    split,
    split_name: str,
    task: str,
    data_args: DataArguments,
    processing_class: Any,
    limit: Optional[int] = None,
    seed: int = 0,
    label_space: Optional[dict] = None,
):
    """One raw split prepared exactly as training prepares it (tokenized, grouped or given its pixel
    transform), for code outside training that must feed the model what training saw (`deploy`).

    ``label_space`` (the model's ``id2label``) numbers the classes as the model does; the split may hold
    fewer of them."""
    from datasets import DatasetDict

    prepare = {"causal-lm": _prepare_causal_lm, "seq-cls": _prepare_seq_cls, "image-cls": _prepare_image_cls}
    splits, _, _, transform = prepare[task](
        DatasetDict({"train": split}), data_args, processing_class, label_space, require_all=False
    )
    return _finish(splits["train"], split_name, limit, transform, data_args, seed)
