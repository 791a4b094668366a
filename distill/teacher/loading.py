"""The teacher: loading (safetensors only), freezing and tokenizer/vocabulary checks."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or path.count("/") > 1


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
