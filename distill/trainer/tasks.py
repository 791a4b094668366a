"""What differs between tasks: model classes, how logits and labels line up, collators, metrics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from distill.data.arguments import TASKS


@dataclass(frozen=True)
class TaskSpec:
    """How one task plugs into the trainer.

    Attributes:
        name: `causal-lm`, `seq-cls` or `image-cls`.
        auto_class: name of the `transformers` auto class that loads its models.
        token_level: logits are ``[B, T, V]`` and compared position by position after the causal
            shift (logits at t predict the label at t + 1); otherwise logits are ``[B, C]``.
    """

    name: str
    auto_class: str
    token_level: bool

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)


TASK_SPECS = {
    "causal-lm": TaskSpec("causal-lm", "AutoModelForCausalLM", token_level=True),
    "seq-cls": TaskSpec("seq-cls", "AutoModelForSequenceClassification", token_level=False),
    "image-cls": TaskSpec("image-cls", "AutoModelForImageClassification", token_level=False),
}
assert set(TASK_SPECS) == set(TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in TASK_SPECS:
        raise ValueError(f"task={name!r} is unknown: use one of {', '.join(TASK_SPECS)}.")
    return TASK_SPECS[name]


def task_of_class(name: str) -> Optional[str]:
    """The task of a model class name (``LlamaForCausalLM`` -> causal-lm) through transformers' auto mappings."""
    from transformers.models.auto import modeling_auto as ma

    mappings = {
        "causal-lm": ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "seq-cls": ma.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "image-cls": ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    }
    for task, mapping in mappings.items():
        for value in mapping.values():
            names = value if isinstance(value, (tuple, list)) else (value,)
            if name in names:
                return task
    return None


def infer_task(model: torch.nn.Module) -> TaskSpec:
    """Infer the task from a model's class through transformers' auto mappings (a peft model's: its base's)."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel (LoRA students, distill.students.lora)
        model = model.get_base_model()
    name = type(model).__name__
    task = task_of_class(name)
    if task is None:
        raise ValueError(
            f"Cannot infer the task from the student class {name}; set task to one of {', '.join(TASK_SPECS)}."
        )
    return TASK_SPECS[task]


def align_logits_and_labels(
    task: TaskSpec, logits: torch.Tensor, labels: Optional[torch.Tensor]
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Apply the causal shift for token-level tasks: logits at t predict the label at t + 1."""
    if not task.token_level:
        return logits, labels
    logits = logits[:, :-1, :]
    return logits, (labels[:, 1:] if labels is not None else None)


def count_valid(task: TaskSpec, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Number of positions that carry a loss, shift-aware for causal LMs."""
    if task.token_level:
        labels = labels[..., 1:]
    return labels.ne(ignore_index).sum()


class CausalLMCollator:
    """Pads ``input_ids`` with the pad token and ``labels`` with -100 and builds the attention mask.

    Examples carry ``input_ids`` and optionally ``labels`` (with -100 on prompt tokens); without
    ``labels`` every real token is a target.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None, ignore_index: int = -100):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ignore_index = ignore_index

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), self.ignore_index, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (example, n) in enumerate(zip(examples, lengths)):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            input_ids[i, :n] = ids
            attention_mask[i, :n] = 1
            labels[i, :n] = (
                torch.as_tensor(example["labels"], dtype=torch.long) if "labels" in example else ids
            )
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_collator(task: TaskSpec, processing_class=None) -> Callable:
    """The collator for a task: padding for text, stacking for images."""
    if task.name == "causal-lm":
        pad = getattr(processing_class, "pad_token_id", None)
        if pad is None:
            pad = getattr(processing_class, "eos_token_id", None)
        if pad is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token.")
        return CausalLMCollator(pad)
    if task.name == "seq-cls":
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processing_class)
    from transformers import default_data_collator

    return default_data_collator


def accuracy_metric() -> Callable:
    """`compute_metrics` for classification, through the project's offline `evaluate` script."""
    import evaluate

    metric = evaluate.load(os.path.join(os.path.dirname(os.path.dirname(__file__)), "metrics", "accuracy.py"))

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return metric.compute(predictions=logits.argmax(-1), references=labels)

    return compute_metrics
