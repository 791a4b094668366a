"""`DistillationTrainer`: a `transformers.Trainer` whose loss mixes a teacher's soft targets with labels."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import Trainer

from distill.config import DistillationConfig
from distill.data.augment import AUGMENTED_KEY, augmented_kd_loss, augmenting_kwargs
from distill.data.on_policy import check_on_policy, on_policy_batches
from distill.data.transfer import TRANSFER_KEY
from distill.losses.chunked import chunked_distillation_loss, fused_linear_distillation_loss
from distill.losses.fused_head import (
    bypass_head,
    check_head_gives_logits,
    check_head_placement,
    fused_head_problem,
    output_head,
)
from distill.losses.logit import distillation_loss, loss_denominator, student_cross_entropy
from distill.students.lora import AdapterDisabledTeacher, is_self_teacher
from distill.teacher.cache import CACHE_COLUMNS
from distill.teacher.ensemble import build_ensemble
from distill.teacher.loading import check_same_tokenizer, load_teacher
from distill.teacher.placement import place_teacher
from distill.trainer.checkpointing import CheckpointingMixin
from distill.trainer.evaluation import _NOT_MODEL_INPUTS, EvaluationMixin
from distill.trainer.intermediate import IntermediateLayerTransfer
from distill.trainer.numerics import check_teacher_logits, install_nonfinite_guard
from distill.trainer.tasks import TaskSpec, align_logits_and_labels, count_valid, get_task, infer_task


class DistillationTrainer(EvaluationMixin, CheckpointingMixin, Trainer):
    r"""[`~transformers.Trainer`] for knowledge distillation.

    The training loss is ``alpha * T^2 * D(teacher || student) + (1 - alpha) * CE(student, labels)``
    (see [`distill.losses.distillation_loss`]). Both terms are sums over valid positions divided by
    the Trainer's `num_items_in_batch`, so any split into micro-batches, accumulation steps and
    processes gives the same update as one large batch.

    Args:
        model: the student (a `PreTrainedModel` for causal LM, sequence or image classification).
        teacher_model: the teacher, as a model or a Hub id / local directory, or ``"self"`` for a LoRA student
            (a `peft.PeftModel`): its own base model with the adapters disabled, no second copy. Optional when
            ``args.alpha == 0`` (plain supervised training, e.g. a baseline). A list of them: several
            teachers for the same task, combined by [`distill.teacher.ensemble.TeacherEnsemble`]
            (`args.teacher_ensemble`, `args.teacher_weights`).
        args: a [`DistillationConfig`].
        teacher_processing_class: the teacher's tokenizer, when it is not loaded from
            `teacher_model`'s directory; used to refuse a tokenizer that differs from the student's.
        teacher_cache: instead of a teacher, a cache written by `distill cache-teacher` (a directory
            or a [`distill.teacher.cache.TeacherCache`]); causal LM only. Its tokenizer, data,
            temperature and kind are checked against the student's before anything else; its
            top-k columns are added to `train_dataset` and padded by a wrapped collator, and the KD
            term is [`distill.teacher.cache.cached_distillation_loss`]. No teacher model is loaded.
        **kwargs: everything else [`~transformers.Trainer`] accepts (datasets, collator,
            `processing_class`, `compute_metrics`, callbacks, ...).

    The teacher is frozen (`eval()`, `requires_grad_(False)`, run under `torch.no_grad()`), is not
    in the optimizer or in checkpoints, and is placed for the distributed setup: a replica under
    DDP, its own DeepSpeed engine (sharded under ZeRO-3) under DeepSpeed, wrapped like the student
    under FSDP. Logs carry `kd_loss` and `ce_loss` beside `loss`; evaluation reports `eval_loss`
    as the student's plain cross-entropy (so scaling fits stay comparable) plus `eval_kd_loss` and
    `eval_teacher_loss`.
    """

    # compute_loss divides by num_items_in_batch (or by the accumulation steps itself).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: Union[nn.Module, None] = None,
        teacher_model: Union[nn.Module, str, None] = None,
        args: Optional[DistillationConfig] = None,
        teacher_processing_class: Any = None,
        teacher_cache: Any = None,
        **kwargs,
    ):
        if args is None:
            raise ValueError("DistillationTrainer needs args=DistillationConfig(...).")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, not {type(args).__name__}.")
        model_init = kwargs.get("model_init")  # hyperparameter search (distill tune) re-creates the student
        if model is not None and model_init is not None:
            raise ValueError("Give the student as model= or model_init=, not both.")
        if model is None and model_init is not None:
            if args.kd_fused_lm_head or args.hidden_weight > 0 or args.attention_weight > 0:
                raise ValueError(
                    "kd_fused_lm_head and hidden/attention terms hold on to the student's modules: "
                    "they cannot follow model_init's new models (distill tune)."
                )
            model = model_init(None)
        if model is None:
            raise ValueError("DistillationTrainer needs the student as model=... (or model_init=...)")
        task = get_task(args.task) if args.task else infer_task(model)
        if teacher_model is None and teacher_cache is None and args.alpha > 0:
            raise ValueError(
                f"alpha={args.alpha} needs a teacher: pass teacher_model= or set "
                "teacher_model_name_or_path (or set alpha=0 to train on labels alone)."
            )
        if isinstance(teacher_model, (list, tuple)):  # several teachers for the same task
            teacher_model = build_ensemble(
                teacher_model, task, args, model, kwargs.get("processing_class"), teacher_processing_class
            )
        self_teacher = is_self_teacher(teacher_model)
        if self_teacher and model_init is not None:
            raise ValueError(
                "teacher_model_name_or_path: self runs the student's own base model, which model_init's new "
                "models (distill tune) would leave behind: name a separate teacher to tune."
            )
        if self_teacher:  # the LoRA student's base model, adapters disabled (distill.students.lora)
            teacher_model = AdapterDisabledTeacher(model)
        elif isinstance(teacher_model, (str, os.PathLike)):
            teacher_model, loaded_tok = load_teacher(str(teacher_model), task, args)
            teacher_processing_class = teacher_processing_class or loaded_tok
        self.task: TaskSpec = task
        processing_class = kwargs.get("processing_class")
        self.kd_vocab_size = None
        self._xtok = None  # cross-tokenizer distillation (distill.trainer.cross_tokenizer)
        if args.cross_tokenizer_loss and teacher_model is not None and not self_teacher:
            from distill.trainer.cross_tokenizer import CrossTokenizerTransfer

            self._xtok = CrossTokenizerTransfer(
                args, task, processing_class, teacher_processing_class, model, teacher_model
            )
            kwargs = self._xtok.wrap_collator(kwargs, task)
        elif teacher_model is not None and task.token_level and not self_teacher:
            self.kd_vocab_size = check_same_tokenizer(
                processing_class, teacher_processing_class, model, teacher_model
            )
        self.teacher_cache = None
        if teacher_cache is not None:
            kwargs = self._attach_teacher_cache(
                teacher_cache, teacher_model, task, args, processing_class, kwargs
            )
            self.kd_vocab_size = self.teacher_cache.vocab_size
        # Every cross-entropy (training with or without a teacher, evaluation, the teacher's) is taken over the
        # same real vocabulary: a head padded beyond the tokenizer adds rows no label can hit, which would
        # still take probability mass and make eval_loss differ from the training CE.
        self.ce_vocab_size = self.kd_vocab_size or (
            len(processing_class) if task.token_level and hasattr(processing_class, "__len__") else None
        )
        self._check_train_dataset(kwargs.get("train_dataset"), args)
        check_on_policy(
            args, task, has_cache=self.teacher_cache is not None, tokenizer=processing_class
        )  # lmbda > 0
        if args.augment_fraction > 0:  # data-augmentation distillation: augmenting collator
            kwargs = augmenting_kwargs(
                kwargs, task, args, processing_class, has_cache=self.teacher_cache is not None
            )
        # Hidden-state / attention terms: checked, and the projection attached to the student, before the
        # Trainer moves and wraps it.
        self._intermediate = None
        if args.hidden_weight > 0 or args.attention_weight > 0:
            self._intermediate = IntermediateLayerTransfer(
                args, task, model, teacher_model, self.teacher_cache
            )
        super().__init__(model=None if model_init is not None else model, args=args, **kwargs)
        if self._intermediate is not None:
            self._intermediate.check_placement(self)
        # Count valid positions ourselves for every task (shift-aware for causal LMs only).
        self.model_accepts_loss_kwargs = True
        self.teacher = (
            place_teacher(teacher_model, self)
            if teacher_model is not None and not self_teacher
            else teacher_model
        )
        self._check_transfer_rows(kwargs.get("train_dataset"))
        self._heads = self._fused_heads(model) if args.kd_fused_lm_head else None
        self._train_sums = self._zero_sums()
        self._eval_sums = None
        install_nonfinite_guard(self)

    # ---- input checks ------------------------------------------------------------------------

    def _attach_teacher_cache(self, cache, teacher_model, task, args, processing_class, kwargs) -> dict:
        from distill.teacher.cache import TeacherCache, TeacherCacheCollator
        from distill.trainer.tasks import make_collator

        if teacher_model is not None:
            raise ValueError(
                "Give either teacher_model or teacher_cache, not both: a cache replaces the teacher."
            )
        if not task.token_level:
            raise ValueError(f"teacher_cache supports causal-lm only, not task {task.name!r}.")
        if not isinstance(cache, TeacherCache):
            cache = TeacherCache.load(cache)
        kwargs = dict(kwargs)
        kwargs["train_dataset"] = cache.attach(
            kwargs.get("train_dataset"),
            tokenizer=processing_class,
            temperature=args.temperature,
            kind=args.kd_kind,
        )
        base = kwargs.get("data_collator") or make_collator(task, processing_class)
        if not isinstance(base, TeacherCacheCollator):
            kwargs["data_collator"] = TeacherCacheCollator(base, cache.k)
        self.teacher_cache = cache
        return kwargs

    def _fused_heads(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(student head, teacher head) for `kd_fused_lm_head`, after checking that it applies here."""
        problem = fused_head_problem(self, has_teacher=self.teacher is not None and self.args.alpha > 0)
        if problem:
            raise ValueError(problem)
        vocab = self.kd_vocab_size or output_head(model).weight.shape[0]
        # The student may still be on the CPU here (DeepSpeed moves it in train()); the teacher is placed.
        for who, m, device in (("student", model, None), ("teacher", self.teacher, self.args.device)):
            check_head_placement(m, who, device)
            check_head_gives_logits(m, who, vocab)
        return output_head(model), output_head(self.teacher)

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the cache columns: remove_unused_columns would drop them (the model takes no such input).
        super()._set_signature_columns_if_needed()
        if self.teacher_cache is not None:
            self._signature_columns += [c for c in CACHE_COLUMNS if c not in self._signature_columns]
        if TRANSFER_KEY not in self._signature_columns:  # transfer-set rows (distill.data.transfer)
            self._signature_columns.append(TRANSFER_KEY)

    def _check_train_dataset(self, dataset, args: DistillationConfig) -> None:
        """Refuse a dataset without labels before any compute, when the loss needs them."""
        names = getattr(dataset, "column_names", None)
        if names is None or "labels" in names or self.task.token_level:
            return  # causal-LM collators derive labels from input_ids
        if "label" in names:
            return  # transformers' collators rename label -> labels
        if args.alpha < 1.0:
            raise ValueError(
                f"The training dataset has no 'labels' column (columns: {names}), but alpha={args.alpha} "
                "< 1 needs labels for the cross-entropy term: add a labels column or set alpha=1."
            )

    # ---- loss --------------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Valid positions over all micro-batches of one optimizer step (and all processes)."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum(count_valid(self.task, b["labels"]) for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches; on an on-policy step (``lmbda``) the student's continuations instead, with the
        item count taken over the generated tokens."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.lmbda > 0 and batch_samples:
            batch_samples = on_policy_batches(self, batch_samples)
            num_items_in_batch = self._get_num_items_in_batch(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _teacher_outputs(self, inputs: dict[str, Any], fused: bool = False):
        """The teacher's outputs: ``.logits`` are its logits, or with ``fused`` its final hidden states (its head
        bypassed); per-layer hidden states and attentions too when the intermediate terms need them."""
        extra = self._intermediate.model_kwargs() if self._intermediate is not None else {}
        with torch.no_grad(), bypass_head(self._heads[1]) if fused else contextlib.nullcontext():
            outputs = self.teacher(**inputs, **extra)
        check_teacher_logits(outputs.logits, self)
        return outputs

    def _teacher_logits(self, inputs: dict[str, Any], fused: bool = False) -> torch.Tensor:
        return self._teacher_outputs(inputs, fused).logits

    def _online_kd(self, s_logits, t_logits, s_labels, alpha, num_items_in_batch):
        """The KD loss against the online teacher's logits. Token-level logits are large (B x T x V), so
        they are walked in chunks: gradients are computed in the forward pass (none under no_grad) and no
        full-size float32 copies exist; same values as the plain loss to 1e-5."""
        loss_fn, extra = (
            (chunked_distillation_loss, {"chunk_size": self.args.kd_chunk_size})
            if self.task.token_level
            else (distillation_loss, {})
        )
        return loss_fn(
            s_logits,
            t_logits,
            s_labels,
            alpha=alpha,
            temperature=self.args.temperature,
            kind=self.args.kd_kind,
            jsd_beta=self.args.jsd_beta,
            num_items_in_batch=num_items_in_batch,
            vocab_size=self.kd_vocab_size,
            skew_alpha=self.args.skew_alpha,
            **extra,
        )

    def _fused_kd(self, s_hidden, s_labels, t_outputs, num_items_in_batch):
        """The KD loss computed chunk by chunk from both models' hidden states and head weights."""
        t_hidden, _ = align_logits_and_labels(self.task, t_outputs.logits, None)
        s_head, t_head = self._heads
        return fused_linear_distillation_loss(
            s_hidden,
            s_head.weight,
            t_hidden,
            t_head.weight,
            s_labels,
            student_head_bias=getattr(s_head, "bias", None),
            teacher_head_bias=getattr(t_head, "bias", None),
            alpha=self.args.alpha,
            temperature=self.args.temperature,
            kind=self.args.kd_kind,
            jsd_beta=self.args.jsd_beta,
            num_items_in_batch=num_items_in_batch,
            vocab_size=self.kd_vocab_size,
            chunk_size=self.args.kd_chunk_size,
            skew_alpha=self.args.skew_alpha,
        )

    def _cached_kd(self, s_logits, s_labels, cached, num_items_in_batch, **extra):
        from distill.losses.cached import cached_distillation_loss

        ids, logprobs, rest = (cached[c] for c in CACHE_COLUMNS)
        return cached_distillation_loss(
            s_logits,
            ids,
            logprobs,
            rest,
            s_labels,
            alpha=extra.pop("alpha", self.args.alpha),
            temperature=self.args.temperature,
            kind=self.args.kd_kind,
            jsd_beta=self.args.jsd_beta,
            num_items_in_batch=num_items_in_batch,
            vocab_size=self.kd_vocab_size,
            skew_alpha=self.args.skew_alpha,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        cached = {k: inputs[k] for k in CACHE_COLUMNS if k in inputs} or None
        model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        # kd_fused_lm_head in training: the models return hidden states, the loss applies the heads.
        fused = self._heads is not None and torch.is_grad_enabled()
        # Always through the wrapper (DDP/FSDP/DeepSpeed hooks), never `.module`.
        extra = self._intermediate.model_kwargs() if self._intermediate is not None else {}
        with bypass_head(self._heads[0]) if fused else contextlib.nullcontext():
            outputs = model(**model_inputs, **extra)
        student_logits, shifted_labels = align_logits_and_labels(self.task, outputs.logits, labels)
        global_denominator = num_items_in_batch is not None
        if num_items_in_batch is None:
            # No count from the Trainer (evaluation, or no labels): a local mean, scaled for GA below.
            num_items_in_batch = (
                count_valid(self.task, labels) if labels is not None else student_logits[..., 0].numel()
            )
        out = t_outputs = None
        if self._xtok is not None and self.teacher is not None:
            # The teacher reads the same text through its own tokenizer; spans aligned by characters.
            out = self._xtok.loss(self, outputs.logits, inputs, labels, self.args.alpha, num_items_in_batch)
        elif cached is not None and self.teacher is None:
            # Teacher targets from the offline cache: no teacher forward.
            out = self._cached_kd(student_logits, shifted_labels, cached, num_items_in_batch)
        elif fused:
            t_outputs = self._teacher_outputs(model_inputs, fused=True)
            out = self._fused_kd(student_logits, shifted_labels, t_outputs, num_items_in_batch)
        elif self.teacher is not None:
            t_outputs = self._teacher_outputs(model_inputs)
            teacher_logits, _ = align_logits_and_labels(self.task, t_outputs.logits, None)
            kd_only = _kd_only_rows(inputs)
            if kd_only is not None and shifted_labels is not None:  # KD alone on augmented / transfer rows
                out = augmented_kd_loss(
                    lambda lab, a: self._online_kd(
                        student_logits, teacher_logits, lab, a, num_items_in_batch
                    ),
                    shifted_labels,
                    kd_only,
                    self.args.alpha,
                )
            else:
                out = self._online_kd(
                    student_logits, teacher_logits, shifted_labels, self.args.alpha, num_items_in_batch
                )
        if out is not None:
            loss, kd, ce, n_local = out.loss, out.kd_loss.detach(), out.ce_loss.detach(), out.num_valid
        else:
            ce_sum, n_local = student_cross_entropy(self.real_vocab(student_logits), shifted_labels)
            loss = ce_sum / loss_denominator(n_local, num_items_in_batch)
            kd, ce = None, loss.detach()
        layer_terms = (None, None)
        if self._intermediate is not None:
            # Same items and denominator as the logit terms (see distill.losses.hidden).
            layer_terms = self._intermediate.losses(outputs, t_outputs, inputs, num_items_in_batch)
            loss = loss + self._intermediate.weighted(*layer_terms)
        if model.training:
            self._accumulate(kd, ce, num_items_in_batch, n_local, *layer_terms)
            if global_denominator and self.args.average_tokens_across_devices:
                # num_items_in_batch is summed over processes and DDP averages gradients: undo the mean.
                loss = loss * self.accelerator.num_processes
            elif not global_denominator:
                loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def real_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` sliced to the real vocabulary (`ce_vocab_size`), as the training loss sees them."""
        vocab = self.ce_vocab_size
        return logits[..., :vocab] if vocab and vocab < logits.shape[-1] else logits

    def _check_transfer_rows(self, dataset) -> None:
        """Transfer-set rows (distill.data.transfer) have no labels: refuse them without an online teacher."""
        names = getattr(dataset, "column_names", None) or []
        if TRANSFER_KEY in names and self.teacher is None:
            raise ValueError(
                "The training set has transfer-set rows (transfer_split / transfer_dataset_name / "
                "transfer_data_files), which only the teacher can label: set alpha > 0 and "
                "teacher_model_name_or_path (a teacher cache cannot score them), or drop the transfer set."
            )

    # ---- logging -----------------------------------------------------------------------------

    def _zero_sums(self) -> torch.Tensor:
        # [kd raw sum, ce raw sum, valid positions, hidden raw sum, attention raw sum], kept on device to
        # avoid a sync per micro-batch.
        return torch.zeros(5, dtype=torch.float64, device=self.args.device)

    def _accumulate(
        self, kd: Optional[torch.Tensor], ce: torch.Tensor, denom, n_local, hidden=None, attention=None
    ) -> None:
        """Keep token-weighted raw sums, so logged means are exact across GA steps and processes."""
        denom = torch.as_tensor(denom, dtype=torch.float64, device=self._train_sums.device)
        for index, term in ((0, kd), (1, ce), (3, hidden), (4, attention)):
            if term is not None:
                self._train_sums[index] += term.detach().double() * denom
        self._train_sums[2] += torch.as_tensor(n_local, dtype=torch.float64, device=denom.device)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs:  # a training log: every process gets here, so the reduce is safe
            totals = self._train_sums
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            kd, ce, n, hidden, attention = totals.tolist()
            if n > 0:
                if self.teacher is not None or self.teacher_cache is not None:
                    logs["kd_loss"] = round(kd / n, 6)
                logs["ce_loss"] = round(ce / n, 6)
                if self.args.hidden_weight > 0:
                    logs["hidden_loss"] = round(hidden / n, 6)
                if self.args.attention_weight > 0:
                    logs["attention_loss"] = round(attention / n, 6)
            self._train_sums = self._zero_sums()
        super().log(logs, start_time)

    # ---- model card --------------------------------------------------------------------------

    def create_model_card(self, *args, **kwargs) -> None:
        """Write ``README.md`` describing the distillation (teacher, loss, hyper-parameters, results)."""
        from distill.utils.model_card import write_model_card

        if self.is_world_process_zero():
            write_model_card(self, self.args.output_dir, **kwargs)


def _kd_only_rows(inputs: dict[str, Any]) -> Optional[torch.Tensor]:
    """The rows trained on the distillation term alone: augmented rows and transfer-set rows, or None."""
    masks = [inputs[k].bool() for k in (AUGMENTED_KEY, TRANSFER_KEY) if inputs.get(k) is not None]
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[0] | masks[1]


__all__ = ["DistillationTrainer"]
