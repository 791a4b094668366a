"""The student model of a `distill train` run: how it is built, and its parameter counts.

Shared by `distill.train`, multi-task runs (`distill.trainer.multitask`) and `distill tune`'s `model_init`.
"""

from __future__ import annotations

from typing import Any

from distill.students.model_config import parse_model_config


def build_student(model_args, data_args, args, task, tokenizer, bundle):
    """The student: copied from teacher layers, loaded from `model_name_or_path`, or built from `model_config`;
    with ``use_peft``, wrapped with LoRA adapters (`distill.students.lora`)."""
    student = _build_student(model_args, data_args, args, task, tokenizer, bundle)
    if getattr(model_args, "use_peft", False):
        from distill.students.lora import apply_lora

        student = apply_lora(student, model_args, task.name)
    return student


def _build_student(model_args, data_args, args, task, tokenizer, bundle):
    from transformers import AutoConfig

    extra: dict[str, Any] = {}
    if bundle.num_labels is not None:
        extra = {"num_labels": bundle.num_labels}
        if bundle.id2label:
            extra["id2label"] = {int(k): v for k, v in bundle.id2label.items()}
            extra["label2id"] = {v: int(k) for k, v in bundle.id2label.items()}
    if args.attention_weight > 0:  # attention transfer needs the probabilities, which only eager returns
        extra["attn_implementation"] = "eager"
    model_class = task.model_class()
    if model_args.init_from_teacher_layers is not None:
        from distill.students.from_layers import student_from_teacher_dir

        student = student_from_teacher_dir(
            args.teacher_model_name_or_path,
            model_args.init_from_teacher_layers,
            model_class,
            bundle.num_labels,
            args.trust_remote_code,
        )
        if args.attention_weight > 0:
            student.set_attn_implementation("eager")
        return student
    if model_args.model_name_or_path:
        return model_class.from_pretrained(
            model_args.model_name_or_path,
            use_safetensors=True,
            trust_remote_code=args.trust_remote_code,
            **extra,
        )
    config = parse_model_config(model_args.model_config)
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        config["vocab_size"] = len(tokenizer)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                config[name] = value
    if task.name == "causal-lm":
        config.setdefault("max_position_embeddings", max(512, data_args.block_size))
    config.update(extra)
    model_type = config.pop("model_type")
    attn = (
        {"attn_implementation": config.pop("attn_implementation")} if "attn_implementation" in config else {}
    )
    return model_class.from_config(AutoConfig.for_model(model_type, **config), **attn)


def parameter_counts(model) -> tuple[int, int]:
    """``(total, non_embedding)`` parameters of the student (ZeRO-3 aware), without a hidden-state projection."""
    import torch

    from distill.students.lora import is_lora_parameter
    from distill.trainer.intermediate import PROJECTION_NAME

    def numel(p):  # ZeRO-3 partitions parameters: ds_numel is the full size
        return getattr(p, "ds_numel", p.numel())

    # Without a hidden-state projection, which is not saved with the model, and without LoRA adapters,
    # which are merged into the saved model (distill/students/lora.py).
    total = sum(
        numel(p)
        for name, p in model.named_parameters()
        if not name.startswith(PROJECTION_NAME + ".") and not is_lora_parameter(name)
    )
    embedding = sum(numel(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return total, total - embedding
