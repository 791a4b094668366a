"""Calibration data and the importance scores that structured pruning ranks by (ShortGPT / Minitron).

Scores are means over the valid (unpadded) positions of the calibration batches:

- **block influence** of block i: ``1 - cos(x_i, y_i)`` between the block's input and output hidden
  states at each position (ShortGPT's BI, Minitron's depth score); a block that barely changes
  the residual stream scores near 0;
- **neuron importance**: mean ``|a|`` of each MLP intermediate activation ``a`` (the input of the
  down projection, i.e. after the activation function and, for Llama, the gate);
- **head importance** (where heads can be pruned): mean L2 norm of each head's attention output
  (the input of the output projection, per head).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import torch
from torch import nn

from .architectures import Architecture, get_blocks

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def calibration_data_args(source: str, num_samples: int, task: str, max_length: Optional[int] = None):
    """`DataArguments` for a calibration source: a `distill train` recipe (its data fields) or a data source.

    Args:
        source: a recipe YAML; a mapping of `DataArguments` fields; a dataset name (``builtin:docstring-topics``, a Hub id, a
            ``save_to_disk`` folder); or a local data file (json/jsonl/txt/csv/parquet).
        num_samples: training examples to take.
        task: the model's task; a recipe with another task is refused.
        max_length: tokens per text example (``max_seq_length`` / ``block_size``); default: the
            recipe's, else 128.
    """
    import dataclasses

    import yaml

    from ..data import DataArguments

    fields = {f.name for f in dataclasses.fields(DataArguments)}
    limits = {
        "max_train_samples": num_samples,
        "eval_split": None,
        "test_split": None,
        "validation_split_percentage": 0,
    }
    if max_length is not None:
        limits.update(max_seq_length=max_length, block_size=max_length)
    if isinstance(source, dict):  # DataArguments fields, e.g. a pipeline's data block
        return DataArguments(**{**{k: v for k, v in source.items() if k in fields}, **limits})
    if source.endswith((".yaml", ".yml")):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"--calibration {source}: no such recipe file.")
        with open(source, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
        if recipe.get("task", task) != task:
            raise ValueError(
                f"--calibration {source}: the recipe's task is {recipe['task']!r} but the model is {task!r}."
            )
        return DataArguments(**{**{k: v for k, v in recipe.items() if k in fields}, **limits})
    if os.path.isfile(source):
        return DataArguments(data_files=source, **limits)
    return DataArguments(dataset_name=source, **limits)


def calibration_batches(
    model: nn.Module,
    source: str,
    num_samples: int,
    batch_size: int = 8,
    processing_class: Any = None,
    max_length: Optional[int] = None,
) -> list[dict[str, torch.Tensor]]:
    """The first ``num_samples`` training examples of ``source``, prepared for ``model`` and collated.

    Text is cut to ``max_length`` tokens (default: the recipe's length, else 128), never beyond the
    model's ``max_position_embeddings``.
    """
    from distill.trainer.tasks import infer_task, make_collator

    from ..data import build_datasets

    task = infer_task(model)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and task.name != "image-cls":
        max_length = min(max_length or 128, positions)
    data_args = calibration_data_args(source, num_samples, task.name, max_length)
    if task.name == "image-cls" and processing_class is None and data_args.image_size is None:
        data_args.image_size = getattr(model.config, "image_size", None)  # the model's input size, not 32
    bundle = build_datasets(data_args, task.name, processing_class, seed=0)
    rows = (
        list(bundle.train.take(num_samples))
        if hasattr(bundle.train, "take") and not hasattr(bundle.train, "__len__")
        else [bundle.train[i] for i in range(min(num_samples, len(bundle.train)))]
    )
    if not rows:
        raise ValueError(f"--calibration {source}: no training examples.")
    collate = make_collator(task, processing_class)
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        batches.append({k: v for k, v in batch.items() if k in MODEL_INPUTS})
    return batches


def _token_mask(batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """[B, T] float mask of the positions that count (all for images, whose sequence has no padding)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != hidden.shape[:2]:
        return torch.ones(hidden.shape[:2], dtype=torch.float64, device=hidden.device)
    return mask.to(torch.float64)


class _Scores:
    """Running sums of the three scores, filled by forward hooks."""

    def __init__(self, num_layers: int):
        self.influence = [0.0] * num_layers
        self.neurons: list[Optional[torch.Tensor]] = [None] * num_layers
        self.heads: list[Optional[torch.Tensor]] = [None] * num_layers
        self.tokens = 0.0
        self.mask: Optional[dict] = None
        self.inputs: dict[int, torch.Tensor] = {}

    @staticmethod
    def _add(total: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
        return value if total is None else total + value


def score_model(
    model: nn.Module, arch: Architecture, batches: Iterable[dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """Block influence, neuron importance and (if supported) head importance of every block.

    Returns:
        ``{"block_influence": [L], "neuron_importance": [L][I], "head_importance": [L][H] or None,
        "num_tokens": n}``, as float64 tensors / floats.
    """
    blocks = get_blocks(model, arch)
    s = _Scores(len(blocks))
    head_dim = _head_dim(model.config)
    handles = []

    def block_in(i):
        def hook(module, args, kwargs):
            s.inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def block_out(i):
        def hook(module, args, kwargs, output):
            y = (output[0] if isinstance(output, tuple) else output).detach().double()
            x = s.inputs.pop(i).double()
            mask = _token_mask(s.mask, y)
            s.influence[i] += float(((1 - nn.functional.cosine_similarity(x, y, dim=-1)) * mask).sum())
            if i == 0:
                s.tokens += float(mask.sum())

        return hook

    def neurons(i):
        def hook(module, args):
            a = args[0].detach().double()
            mask = _token_mask(s.mask, a)
            s.neurons[i] = s._add(s.neurons[i], (a.abs() * mask[..., None]).sum((0, 1)))

        return hook

    def heads(i):
        def hook(module, args):
            a = args[0].detach().double()
            norms = a.unflatten(-1, (-1, head_dim)).norm(dim=-1)  # [B, T, H]
            mask = _token_mask(s.mask, a)
            s.heads[i] = s._add(s.heads[i], (norms * mask[..., None]).sum((0, 1)))

        return hook

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_in(i), with_kwargs=True))
        handles.append(block.register_forward_hook(block_out(i), with_kwargs=True))
        handles.append(block.get_submodule(arch.mlp_out).register_forward_pre_hook(neurons(i)))
        if arch.prunes_heads:
            handles.append(block.get_submodule(arch.attention_o).register_forward_pre_hook(heads(i)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                s.mask = batch
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if s.tokens == 0:
        raise ValueError("The calibration data has no valid tokens.")
    return {
        "block_influence": [v / s.tokens for v in s.influence],
        "neuron_importance": [n / s.tokens for n in s.neurons],
        "head_importance": [h / s.tokens for h in s.heads] if arch.prunes_heads else None,
        "num_tokens": int(s.tokens),
    }


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
