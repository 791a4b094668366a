"""The teacher: loading (safetensors only), freezing and tokenizer/vocabulary checks."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or path.count("/") > 1


def read_model_config(path: str) -> Optional[dict]:
    """A model's config.json as a mapping (no weights read), or None when it cannot be read (a Hub id offline)."""
    import json

    local = os.path.expanduser(path)
    if os.path.isdir(local):
        config_file = os.path.join(local, "config.json")
        if not os.path.isfile(config_file):
            return None
        with open(config_file, encoding="utf-8") as f:
            return json.load(f)
    try:
        from transformers import PretrainedConfig

        return PretrainedConfig.get_config_dict(path)[0]
    except (OSError, ValueError):
        return None


def check_model_task(
    config: Optional[dict], task: str, field_name: str, path: str, teacher: bool = True
) -> None:
    """Refuse a model whose saved class (config.json ``architectures``) does another task than ``task``.

    A teacher must have the task's head: loading, say, a sequence classifier as a causal LM, or a
    head-less ``BertModel`` as a classifier, gives a freshly initialised head, and distilling from it
    distils noise. A student may be head-less (its new head is trained), but not built for another task.
    """
    from distill.trainer.tasks import task_of_class

    architectures = (config or {}).get("architectures") or []
    if not architectures:
        return
    tasks = {name: task_of_class(name) for name in architectures}
    if task in tasks.values():
        return
    if not teacher and all(t is None for t in tasks.values()):
        return
    described = ", ".join(f"{name} ({t or 'no ' + task + ' head'})" for name, t in tasks.items())
    fix = (
        f"use a {task} teacher, or set task to {next(t for t in tasks.values() if t)}"
        if any(tasks.values())
        else f"use a teacher trained for {task} (one with its head)"
    )
    raise ValueError(
        f"{field_name}={path!r} is a {described} model, but this run's task is {task}: loading it for {task} "
        f"would give it a freshly initialised head. Teacher and student must do the same task: {fix}."
        if teacher
        else f"{field_name}={path!r} is a {described} model, but this run's task is {task}: a student for "
        f"{task} cannot start from it. Use a {task} or head-less model, or set task to match it."
    )


def label_space_of(config: Optional[dict]) -> Optional[dict[int, str]]:
    """The classes of a classifier's config (``id2label``, else ``num_labels`` generic names), by id."""
    if not config:
        return None
    id2label = config.get("id2label")
    if id2label:
        return {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    n = int(config.get("num_labels", 2))
    return {i: f"LABEL_{i}" for i in range(n)}


def teacher_label_space(paths: list[str]) -> Optional[dict[int, str]]:
    """The teachers' shared classes (``id2label``), before any weights are loaded; teachers that disagree
    are refused. None when no teacher's config can be read."""
    spaces = [(path, label_space_of(read_model_config(path))) for path in paths if path]
    spaces = [(path, space) for path, space in spaces if space is not None]
    if not spaces:
        return None
    first_path, first = spaces[0]
    for path, space in spaces[1:]:
        if space != first:
            raise ValueError(
                f"The teachers {first_path!r} and {path!r} have different classes ({list(first.values())} vs "
                f"{list(space.values())}, in id order): an ensemble must share one label space."
            )
    return first


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never trains, and dropout never fires in it."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher(path: str, task, args) -> tuple[nn.Module, Any]:
    """Load a frozen teacher from a Hub id or local directory, from safetensors only.

    Returns:
        ``(model, tokenizer_or_None)``: the tokenizer saved beside the teacher, if any, so that a
        student with a different tokenizer can be refused.
    """
    if _looks_local(path):
        path = os.path.expanduser(path)
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"teacher_model_name_or_path={path!r} is not a model directory (no config.json there). "
                "Point it at a directory written by save_pretrained / `distill train`, or at a Hub id."
            )
        from distill.utils.safe_loading import check_model_dir

        check_model_dir(path, "teacher_model_name_or_path", args.trust_remote_code)
    check_model_task(read_model_config(path), task.name, "teacher_model_name_or_path", path)
    dtype = _DTYPES.get(args.teacher_dtype, "auto")
    # Attention transfer needs the attention probabilities, which only the eager implementation returns.
    attn = {"attn_implementation": "eager"} if getattr(args, "attention_weight", 0) > 0 else {}
    model = task.model_class().from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=args.trust_remote_code, **attn
    )
    tokenizer = None
    if task.name != "image-cls":
        tokenizer = load_tokenizer_if_present(path, trust_remote_code=args.trust_remote_code)
    return freeze(model), tokenizer


def load_tokenizer_if_present(path: str, trust_remote_code: bool = False):
    """The tokenizer saved in a directory or Hub repo, or None when there is none."""
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not any(
        os.path.exists(os.path.join(path, f))
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    ):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def _output_vocab(model: nn.Module) -> Optional[int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None and head.weight.dim() == 2:
        rows = head.weight.shape[0]
        if rows > 0:  # ZeRO-3 partitioned weights have shape (0,)
            return rows
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_same_tokenizer(
    student_tokenizer, teacher_tokenizer, student: nn.Module, teacher: nn.Module
) -> Optional[int]:
    """Refuse different tokenizers; return the vocabulary size both logit tensors are sliced to.

    Teacher and student may pad their vocabularies differently (e.g. 151936 vs 152064 rows); what
    must agree is the token-to-id mapping. Returns ``len(tokenizer)`` when a tokenizer is known,
    otherwise None when both heads have the same size.
    """
    if student_tokenizer is not None and teacher_tokenizer is not None:
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            differing = len(set(s_vocab.items()) ^ set(t_vocab.items()))
            raise ValueError(
                "Teacher and student use different tokenizers "
                f"({len(t_vocab)} vs {len(s_vocab)} tokens, {differing} differing entries). Token-level "
                "distillation compares distributions over the same token ids: use the teacher's tokenizer "
                "for the student (tokenizer_name_or_path=<teacher>), or set cross_tokenizer_loss (gold or uld) "
                "to distil across tokenizers."
            )
    tokenizer = student_tokenizer or teacher_tokenizer
    s_rows, t_rows = _output_vocab(student), _output_vocab(teacher)
    if tokenizer is not None:
        size = len(tokenizer)
        for who, rows in (("student", s_rows), ("teacher", t_rows)):
            if rows is not None and rows < size:
                raise ValueError(
                    f"The {who}'s output layer has {rows} rows but the tokenizer has {size} tokens; "
                    f"resize the {who}'s embeddings (model.resize_token_embeddings(len(tokenizer)))."
                )
        return size
    if s_rows is not None and t_rows is not None and s_rows != t_rows:
        raise ValueError(
            f"Student and teacher vocabularies differ ({s_rows} vs {t_rows} rows) and no tokenizer was "
            "given: pass processing_class=tokenizer so both can be sliced to the real vocabulary."
        )
    return None
