"""Cross-tokenizer distillation inside `DistillationTrainer` (`cross_tokenizer_loss: gold | uld`).

`CrossTokenizerTransfer` checks the two tokenizers, builds the vocabulary map (gold), wraps the
collator so that every batch carries the teacher's tokens of the same text and the aligned spans
(`distill.data.cross_tokenizer`), and computes the loss of a batch: the teacher runs on its own tokens,
and `distill.losses.cross_tokenizer.cross_tokenizer_distillation_loss` compares the span predictions.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from distill.data.cross_tokenizer import CrossTokenizerCollator
from distill.losses.cross_tokenizer import (
    SPAN_KEYS,
    build_vocab_map,
    cross_tokenizer_distillation_loss,
    require_offsets,
    select_rows,
)
from distill.teacher.loading import _output_vocab


class CrossTokenizerTransfer:
    """The cross-tokenizer parts of a `DistillationTrainer` (one per trainer)."""

    def __init__(self, args, task, student_tokenizer, teacher_tokenizer, student, teacher):
        if not task.token_level:
            raise ValueError(f"cross_tokenizer_loss applies to causal-lm only, not task {task.name!r}.")
        if args.teacher_tokenizer_name_or_path:
            from transformers import AutoTokenizer

            teacher_tokenizer = AutoTokenizer.from_pretrained(
                args.teacher_tokenizer_name_or_path, trust_remote_code=args.trust_remote_code
            )
        require_offsets(student_tokenizer, "student")
        require_offsets(teacher_tokenizer, "teacher")
        for who, tok, model in (
            ("student", student_tokenizer, student),
            ("teacher", teacher_tokenizer, teacher),
        ):
            rows = _output_vocab(model)
            if rows is not None and rows < len(tok):
                raise ValueError(
                    f"The {who}'s output layer has {rows} rows but its tokenizer has {len(tok)} tokens: "
                    f"the {who} does not fit the tokenizer (teacher_tokenizer_name_or_path / tokenizer_name_or_path)."
                )
        self.kind = args.cross_tokenizer_loss
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.vocab_map = (
            build_vocab_map(student_tokenizer, teacher_tokenizer) if self.kind == "gold" else None
        )
        self._device_map = None

    def wrap_collator(self, kwargs: dict, task) -> dict:
        from distill.trainer.tasks import make_collator

        kwargs = dict(kwargs)
        base = kwargs.get("data_collator") or make_collator(task, self.student_tokenizer)
        if not isinstance(base, CrossTokenizerCollator):
            kwargs["data_collator"] = CrossTokenizerCollator(
                base, self.student_tokenizer, self.teacher_tokenizer
            )
        return kwargs

    def _vocab_map_on(self, device):
        if self.vocab_map is None:
            return None
        if self._device_map is None or self._device_map.matched_teacher.device != torch.device(device):
            self._device_map = self.vocab_map.to(device)
        return self._device_map

    def teacher_logits(self, trainer, inputs: dict[str, Any]) -> torch.Tensor:
        from distill.trainer.numerics import check_teacher_logits

        with torch.no_grad():
            logits = trainer.teacher(
                input_ids=inputs["teacher_input_ids"], attention_mask=inputs["teacher_attention_mask"]
            ).logits
        check_teacher_logits(logits, trainer)
        return logits

    def loss(
        self,
        trainer,
        student_logits: torch.Tensor,
        inputs: dict[str, Any],
        labels: Optional[torch.Tensor],
        alpha: float,
        num_items_in_batch,
        rows: Optional[int] = None,
    ):
        """The loss of a batch from the student's unshifted logits; ``rows``: only the first rows (evaluation)."""
        if "teacher_input_ids" not in inputs:
            raise ValueError(
                "cross_tokenizer_loss: the batch has no teacher_input_ids; the data collator must be a "
                "distill.data.cross_tokenizer.CrossTokenizerCollator (the trainer wraps the one it is given)."
            )
        t_logits = self.teacher_logits(trainer, inputs)
        spans = {k: inputs[k] for k in SPAN_KEYS}
        if rows is not None:
            spans = select_rows(spans, rows)
            student_logits, t_logits = student_logits[:rows], t_logits[:rows]
            labels = labels[:rows] if labels is not None else None
        return cross_tokenizer_distillation_loss(
            student_logits,
            t_logits,
            spans,
            labels,
            kind=self.kind,
            alpha=alpha,
            temperature=trainer.args.temperature,
            vocab_map=self._vocab_map_on(student_logits.device),
            student_vocab_size=len(self.student_tokenizer),
            teacher_vocab_size=len(self.teacher_tokenizer),
            num_items_in_batch=num_items_in_batch,
        )
