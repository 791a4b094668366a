"""LoRA students through `peft`, saved merged, and self-distillation from the student's own frozen base.

- `lora_config` / `apply_lora`: TRL's `ModelConfig` fields (``use_peft``, ``lora_r``, ``lora_alpha``,
  ``lora_dropout``, ``lora_target_modules``, ``lora_modules_to_save``) -> a `peft.LoraConfig` -> a
  `PeftModel` whose base weights are frozen and whose adapters train.
- `save_merged_student`: the final save of a LoRA student. ``output_dir`` holds the merged model
  (``model.safetensors`` + ``config.json``, loadable with ``AutoModelFor*.from_pretrained`` and nothing
  else) and ``output_dir/adapter/`` the adapter alone (``PeftModel.from_pretrained(base, that_dir)``).
  Checkpoints hold the adapter (the Trainer's own PEFT format), so resuming restores it.
- `AdapterDisabledTeacher`: ``teacher_model_name_or_path: self``. The teacher is the student's base model:
  the same module run with its adapters disabled, in eval mode and without gradients. No second copy of
  the weights exists; the base is frozen, so the teacher does not drift while the adapters train.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

SELF_TEACHER = "self"
ADAPTER_DIR = "adapter"
_PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS"}


def is_self_teacher(name: Any) -> bool:
    """Whether a teacher name asks for self-distillation (``teacher_model_name_or_path: self``)."""
    return isinstance(name, str) and name.strip().lower() == SELF_TEACHER


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a `peft.PeftModel` (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def is_lora_parameter(name: str) -> bool:
    """A LoRA adapter parameter (not part of the merged model): ``...lora_A...``, ``lora_B``, ``lora_embedding_*``,
    ``lora_magnitude_vector``."""
    return ".lora_" in name or name.startswith("lora_")


def check_lora_arguments(model_args) -> None:
    """The LoRA fields' ranges, before any compute."""
    if not model_args.use_peft:
        return
    if model_args.lora_r < 1:
        raise ValueError(
            f"lora_r={model_args.lora_r} must be a positive integer (the adapters' rank, e.g. 16)."
        )
    if not model_args.lora_alpha > 0:
        raise ValueError(
            f"lora_alpha={model_args.lora_alpha} must be > 0 (the scale is lora_alpha / lora_r)."
        )
    if not 0.0 <= model_args.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout={model_args.lora_dropout} must be in [0, 1).")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError(
            "use_peft: true needs the peft package: pip install 'scaledown[peft]' (or pip install peft)."
        ) from None


def check_self_teacher(model_args, args) -> bool:
    """Whether the run self-distils (``teacher_model_name_or_path: self``), refusing what cannot go with it."""
    if not is_self_teacher(args.teacher_model_name_or_path):
        return False
    if not model_args.use_peft:
        raise ValueError(
            "teacher_model_name_or_path: self distils from the student's base model with its LoRA adapters "
            "disabled, so it needs use_peft: true (and a pretrained student, model_name_or_path)."
        )
    if getattr(model_args, "teacher_cache", None):
        raise ValueError("teacher_model_name_or_path: self and teacher_cache exclude each other: drop one.")
    return True


def self_teacher_conflicts(args) -> list[str]:
    """Settings of a `DistillationConfig` that do not work with ``teacher_model_name_or_path: self``."""
    conflicts = []
    if args.extra_teachers:
        conflicts.append("extra_teachers")
    if args.kd_fused_lm_head:
        conflicts.append("kd_fused_lm_head")
    if args.hidden_weight > 0 or args.attention_weight > 0:
        conflicts.append("hidden_weight/attention_weight")
    if getattr(args, "cross_tokenizer_loss", None):  # the base model shares the student's tokenizer
        conflicts.append("cross_tokenizer_loss")
    return conflicts


def lora_config(model_args, task_name: str):
    """The `peft.LoraConfig` for the LoRA fields of `model_args` (TRL's `get_peft_config`)."""
    from peft import LoraConfig

    if task_name not in _PEFT_TASK_TYPES:
        raise ValueError(f"use_peft supports {', '.join(_PEFT_TASK_TYPES)}, not task {task_name!r}.")
    targets = model_args.lora_target_modules
    if isinstance(targets, (list, tuple)) and len(targets) == 1:
        targets = targets[0]  # "all-linear" from the command line arrives as ["all-linear"]
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=model_args.lora_modules_to_save,
        task_type=_PEFT_TASK_TYPES[task_name],
        bias="none",
    )


def apply_lora(model: nn.Module, model_args, task_name: str) -> nn.Module:
    """`model` wrapped as a `PeftModel` with trainable LoRA adapters (base weights frozen)."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(model_args, task_name))
    except ValueError as err:  # e.g. target modules not found in the model
        raise ValueError(
            f"use_peft: {err} Set lora_target_modules to module names of this model (or 'all-linear')."
        ) from None


class AdapterDisabledTeacher:
    """The teacher of ``teacher_model_name_or_path: self``: the LoRA student's base model.

    Calling it runs the student's own module with its adapters disabled, in eval mode, under
    ``torch.no_grad()``, and restores the student's training mode afterwards. It holds no weights of
    its own and is never placed, wrapped, frozen or saved: the student's base weights are frozen by peft.
    """

    def __init__(self, peft_model: nn.Module):
        if not is_peft_model(peft_model):
            raise ValueError(
                "teacher_model_name_or_path: self distils from the student's base model, so the student must be a "
                "LoRA model: set use_peft: true (or pass a peft.PeftModel as the student)."
            )
        self.peft_model = peft_model

    @property
    def module(self) -> nn.Module:
        """The base model (with the adapter layers in it): its config names the teacher in model cards."""
        return self.peft_model.get_base_model()

    @property
    def config(self):
        return self.module.config

    def parameters(self):
        """The base model's parameters (the adapters are not the teacher's)."""
        return (p for name, p in self.module.named_parameters() if not is_lora_parameter(name))

    def eval(self) -> "AdapterDisabledTeacher":
        return self

    def __call__(self, **inputs):
        model = self.peft_model
        was_training = model.training
        model.train(False)
        try:
            with torch.no_grad(), model.disable_adapter():
                return model(**inputs)
        finally:
            model.train(was_training)


def _merged_key(key: str) -> Optional[str]:
    """A base-model state-dict key after merging (None: not part of the merged model)."""
    if is_lora_parameter(key) or ".original_module." in key:
        return None
    key = key.replace(".base_layer.", ".")
    if ".modules_to_save." in key:  # ModulesToSaveWrapper: the trained copy replaces the original
        head, _, rest = key.partition(".modules_to_save.")
        key = head + "." + rest.split(".", 1)[1]
    return key


def merged_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The merged weights (W + scale * B A) under the base model's own key names, without changing the model.

    Only the adapted layers' base weights are copied (to restore them bit for bit after peft's in-place
    merge), so no second copy of the model is made.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    originals = [m.get_base_layer().weight.detach().clone() for m in layers]
    peft_model.merge_adapter()
    try:
        state = {}
        for key, value in peft_model.get_base_model().state_dict().items():
            new = _merged_key(key)
            if new is not None:
                # merged weights are cloned: the live ones are restored below
                state[new] = value.detach().clone() if ".base_layer." in key else value.detach()
    finally:
        peft_model.unmerge_adapter()
        with torch.no_grad():
            for layer, weight in zip(layers, originals):
                layer.get_base_layer().weight.copy_(weight)
    return state


def save_merged_student(peft_model: nn.Module, output_dir: str, processing_class: Any = None) -> None:
    """Write the merged student to ``output_dir`` (safetensors) and its adapter to ``output_dir/adapter``.

    The adapter files the Trainer wrote at the top of ``output_dir`` are removed (the adapter is saved in
    ``adapter/`` instead): with an ``adapter_config.json`` beside the merged weights, transformers would load
    the directory as an adapter.
    """
    adapter_dir = os.path.join(output_dir, ADAPTER_DIR)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    for name in ("adapter_model.safetensors", "adapter_config.json", "adapter_model.bin"):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    base = peft_model.get_base_model()
    base.save_pretrained(output_dir, state_dict=merged_state_dict(peft_model), safe_serialization=True)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
