"""Two-tokenizer collation for cross-tokenizer distillation (`cross_tokenizer_loss`).

`CrossTokenizerCollator` wraps the student's collator. For every row it recovers the text of the
student's tokens (the student tokenizer's decoding of them), tokenizes that same text with the
teacher's tokenizer, and aligns the two token sequences by the fast tokenizers' character offsets
(`distill.losses.cross_tokenizer.align_spans`). The batch gains the teacher's inputs
(``teacher_input_ids``, ``teacher_attention_mask``, right-padded) and the aligned spans that carry a
loss (the ``xtok_*`` tensors of `distill.losses.cross_tokenizer.span_tensors`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from distill.losses.cross_tokenizer import align_spans, require_offsets, span_tensors


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return 0


def student_text_and_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and each token's ``(start, end)`` character span in it.

    The offsets are the fast tokenizer's own offset mapping when re-tokenizing the text gives back
    ``ids`` (the usual case); otherwise (a block cut out of a longer tokenization can re-tokenize
    differently at its edges) they come from decoding growing prefixes, so that they describe exactly
    these tokens. A token that ends inside a character (a partial UTF-8 byte sequence) gets an empty
    span and joins the next one.
    """
    return student_texts_and_offsets(tokenizer, [ids])[0]


def student_texts_and_offsets(tokenizer, rows: list[list[int]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """`student_text_and_offsets` of every row, decoded and re-tokenized in one batched call each."""
    texts = tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for ids, text, again, offsets in zip(rows, texts, enc["input_ids"], enc["offset_mapping"]):
        if list(again) == list(ids):
            out.append((text, [tuple(o) for o in offsets]))
        else:
            out.append((text, _offsets_by_prefix_decoding(tokenizer, ids, text)))
    return out


def _offsets_by_prefix_decoding(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]]:
    prefixes = tokenizer.batch_decode(
        [ids[:k] for k in range(1, len(ids) + 1)],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    offsets, prev = [], 0
    for prefix in prefixes:
        end = len(prefix) if text.startswith(prefix) else prev
        end = max(prev, min(end, len(text)))
        offsets.append((prev, end))
        prev = end
    return offsets


class CrossTokenizerCollator:
    """Collate with the student's collator, then add the teacher's tokens of the same text and the aligned spans.

    Args:
        base: the student's collator (e.g. `distill.trainer.tasks.CausalLMCollator`); its batch needs
            right-padded ``input_ids``, ``attention_mask`` and ``labels``.
        student_tokenizer / teacher_tokenizer: fast tokenizers (they give character offsets).
        ignore_index: label of tokens without a target.
    """

    def __init__(
        self, base: Callable, student_tokenizer: Any, teacher_tokenizer: Any, ignore_index: int = -100
    ):
        require_offsets(student_tokenizer, "student")
        require_offsets(teacher_tokenizer, "teacher")
        self.base = base
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.ignore_index = ignore_index

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base(examples)
        ids, labels = batch["input_ids"], batch["labels"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        id_rows, label_rows = [], []
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            if n and not bool(mask[r, :n].all()):
                raise ValueError(
                    "cross_tokenizer_loss needs right-padded student batches (padding_side='right')."
                )
            id_rows.append(ids[r, :n].tolist())
            label_rows.append(labels[r, :n].tolist())
        decoded = student_texts_and_offsets(self.student_tokenizer, id_rows)
        texts = [text for text, _ in decoded]
        student_rows = [(x, y, offsets) for x, y, (_, offsets) in zip(id_rows, label_rows, decoded)]
        enc = self.teacher_tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        width = max([len(t) for t in enc["input_ids"]] + [1])
        teacher_ids = torch.full((len(texts), width), _pad_id(self.teacher_tokenizer), dtype=torch.long)
        teacher_mask = torch.zeros((len(texts), width), dtype=torch.long)
        rows = []
        for r, ((row_ids, row_labels, s_offsets), t_ids, t_offsets) in enumerate(
            zip(student_rows, enc["input_ids"], enc["offset_mapping"])
        ):
            teacher_ids[r, : len(t_ids)] = torch.as_tensor(t_ids, dtype=torch.long)
            teacher_mask[r, : len(t_ids)] = 1
            spans = align_spans(s_offsets, [tuple(o) for o in t_offsets])
            rows.append((spans, row_ids, row_labels, list(t_ids)))
        batch["teacher_input_ids"] = teacher_ids
        batch["teacher_attention_mask"] = teacher_mask
        batch.update(span_tensors(rows, self.ignore_index))
        return batch
