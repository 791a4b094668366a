"""Evaluation of `DistillationTrainer`: token-weighted student CE, KD, teacher CE and accuracy, and the
hidden / attention terms, summed over real rows only and reduced across processes."""

from __future__ import annotations

import torch

from distill.data.augment import AUGMENTED_KEY, clean_collator
from distill.data.transfer import TRANSFER_KEY
from distill.losses.cross_tokenizer import CROSS_TOKENIZER_KEYS
from distill.losses.logit import student_cross_entropy
from distill.teacher.cache import CACHE_COLUMNS
from distill.trainer.tasks import align_logits_and_labels

_NOT_MODEL_INPUTS = ("labels", AUGMENTED_KEY, TRANSFER_KEY, *CACHE_COLUMNS, *CROSS_TOKENIZER_KEYS)


class EvaluationMixin:
    """`Trainer` overrides for evaluation; mixed into `distill.trainer.distillation_trainer.DistillationTrainer`."""

    def get_eval_dataloader(self, eval_dataset=None):
        with clean_collator(self):  # never augment evaluation batches
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with clean_collator(self):
            return super().get_test_dataloader(test_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Student cross-entropy (token-weighted), KD and teacher CE, accumulated for `evaluation_loop`."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        if labels is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        cached = {k: inputs[k] for k in CACHE_COLUMNS if k in inputs} or None
        model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        extra = self._intermediate.model_kwargs() if self._intermediate is not None else {}
        with torch.no_grad(), self.compute_loss_context_manager():
            s_outputs = model(**model_inputs, **extra)
            logits = s_outputs.logits
            s_logits, s_labels = align_logits_and_labels(self.task, logits, labels)
            s_ce_logits = self.real_vocab(s_logits)  # the training CE's vocabulary, not a padded head's
            # Sum only real rows: accelerate pads the last batch with repeated samples.
            k = self._real_rows(labels.shape[0])
            ce_sum, n = ce_real, n_real = student_cross_entropy(s_ce_logits[:k], s_labels[:k])
            if k < labels.shape[0]:
                ce_pad, n_pad = student_cross_entropy(s_ce_logits[k:], s_labels[k:])
                ce_sum, n = ce_real + ce_pad, n_real + n_pad
            sums = self._eval_sums
            if sums is not None:
                sums["ce"] += float(ce_real)
                sums["n"] += float(n_real)
            if (
                getattr(self, "_xtok", None) is not None and self.teacher is not None
            ):  # teacher on its own tokens: no teacher CE
                out = self._xtok.loss(self, logits, inputs, labels, 1.0, 1, rows=k)
                if sums is not None:
                    sums["kd"] += float(out.kd_loss)
            elif self.teacher is not None:
                t_outputs = self._teacher_outputs(model_inputs)
                t_logits, _ = align_logits_and_labels(self.task, t_outputs.logits, None)
                out = self._online_kd(s_logits[:k], t_logits[:k], s_labels[:k], 1.0, 1)
                t_ce, _ = student_cross_entropy(self.real_vocab(t_logits[:k]), s_labels[:k])
                if sums is not None:
                    sums["kd"] += float(out.kd_loss)
                    sums["teacher_ce"] = sums.get("teacher_ce", 0.0) + float(t_ce)
                    if not self.task.token_level:  # classification: the teacher's accuracy on the same rows
                        labels_k = s_labels[:k]
                        hits = (t_logits[:k].argmax(-1) == labels_k) & (labels_k != -100)
                        sums["teacher_correct"] += float(hits.sum())
                if self._intermediate is not None and sums is not None:  # raw sums over the real rows
                    for name, term in zip(
                        ("hidden", "attention"),
                        self._intermediate.losses(s_outputs, t_outputs, inputs, 1, rows=k),
                    ):
                        if term is not None:
                            sums[name] = sums.get(name, 0.0) + float(term)
            elif cached is not None:
                real = {c: v[:k] for c, v in cached.items()}
                out = self._cached_kd(s_logits[:k], s_labels[:k], real, 1, alpha=1.0)
                if sums is not None:
                    sums["kd"] += float(out.kd_loss)
                    sums["cached_kd"] = True
        loss = (ce_sum / n.clamp(min=1)).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, logits.detach(), labels

    def _real_rows(self, batch_size: int) -> int:
        """Rows of this evaluation batch that are real samples, not the repeats accelerate adds so that
        every process gets a full last batch (`gather_for_metrics` drops the same rows)."""
        state = self.accelerator.gradient_state
        if self.args.world_size > 1 and state.end_of_dataloader and state.remainder > 0:
            return max(0, min(batch_size, state.remainder - self.args.process_index * batch_size))
        return batch_size

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._eval_sums = {"kd": 0.0, "ce": 0.0, "n": 0.0, "teacher_ce": 0.0, "teacher_correct": 0.0}
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            sums = self._eval_sums
            values = torch.tensor(
                [sums["ce"], sums["kd"], sums["teacher_ce"], sums["n"], sums["teacher_correct"]],
                dtype=torch.float64,
                device=self.args.device,
            )
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="sum")
            ce, kd, t_ce, n, t_correct = values.tolist()
            cached_kd = bool(sums.get("cached_kd"))
            layer_sums = self._reduce_layer_sums(sums)
        finally:
            self._eval_sums = None
        if n > 0:
            p = metric_key_prefix
            output.metrics[f"{p}_loss"] = ce / n
            if self.task.token_level:
                output.metrics[f"{p}_perplexity"] = float(torch.tensor(ce / n).exp())
            if self.teacher is not None:
                output.metrics[f"{p}_kd_loss"] = kd / n
                if (
                    getattr(self, "_xtok", None) is None
                ):  # cross-tokenizer: the teacher's CE counts other tokens
                    output.metrics[f"{p}_teacher_loss"] = t_ce / n
                if not self.task.token_level:
                    output.metrics[f"{p}_teacher_accuracy"] = t_correct / n
            elif cached_kd:  # an eval set that carries cache columns: KD from the cache, no teacher CE
                output.metrics[f"{p}_kd_loss"] = kd / n
            for name, total in layer_sums.items():
                output.metrics[f"{p}_{name}_loss"] = total / n
        return output

    def _reduce_layer_sums(self, sums: dict) -> dict[str, float]:
        """The evaluation's hidden / attention raw sums, summed over processes (every process calls this)."""
        if self._intermediate is None:
            return {}
        names = [
            name
            for name, weight in (
                ("hidden", self.args.hidden_weight),
                ("attention", self.args.attention_weight),
            )
            if weight > 0
        ]
        values = torch.tensor(
            [sums.get(name, 0.0) for name in names], dtype=torch.float64, device=self.args.device
        )
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        return dict(zip(names, values.tolist()))
