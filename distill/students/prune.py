"""Structured pruning (Minitron / ShortGPT): drop whole blocks, narrow the MLPs, optionally drop heads.

All scores come from one calibration pass over the unpruned model (`calibration.score_model`).
Then the ``drop_layers`` blocks of lowest block influence go; every kept block keeps its
``mlp_width`` intermediate neurons of highest mean |activation| (rows of the up/gate projections
and columns of the down projection, so the kept neurons compute exactly what they did); and with
``heads``, the attention heads of highest mean output norm stay (Llama-style models keep whole
key-value groups, so grouped-query attention stays consistent). The pruned model is rebuilt from
its own config (``num_hidden_layers``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``), so ``from_pretrained`` reloads it exactly.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

from .architectures import Architecture, blocks_prefix, get_architecture
from .calibration import _head_dim, calibration_batches, score_model
from .from_layers import load_model_dir, model_from_state, remap_blocks, save_with_processor, student_config


def check_prune_request(
    config, drop_layers: int = 0, mlp_width: Optional[int] = None, heads: Optional[int] = None
) -> Architecture:
    """Every request a config cannot satisfy, refused before any calibration compute."""
    arch = get_architecture(config)
    layers = config.num_hidden_layers
    if not 0 <= drop_layers < layers:
        raise ValueError(
            f"--drop-layers {drop_layers}: the model has {layers} blocks; drop between 0 and {layers - 1}."
        )
    if mlp_width is not None and not 1 <= mlp_width <= config.intermediate_size:
        raise ValueError(
            f"--mlp-width {mlp_width}: must be between 1 and the model's intermediate_size "
            f"{config.intermediate_size}."
        )
    if heads is not None:
        if not arch.prunes_heads:
            raise ValueError(
                f"--heads: not supported for {config.model_type}: its head size is hidden_size / num_attention_heads, "
                "so a config with fewer heads would not reload. Head pruning works for Llama-style models and ViT."
            )
        total, group = config.num_attention_heads, _group_size(config)
        if not 1 <= heads <= total or heads % group:
            raise ValueError(
                f"--heads {heads}: must be between 1 and {total} and a multiple of {group} (the query "
                "heads per key-value head, which are kept or dropped together)."
            )
    if (
        drop_layers == 0
        and mlp_width in (None, config.intermediate_size)
        and heads in (None, config.num_attention_heads)
    ):
        raise ValueError("Nothing to prune: set --drop-layers, a smaller --mlp-width or fewer --heads.")
    return arch


def _group_size(config) -> int:
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_attention_heads // kv


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in increasing index order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return sorted(order[:k])


def _slice_mlp(state: dict, prefix: str, arch: Architecture, keep: list[int]) -> None:
    index = torch.tensor(keep)
    for name in arch.mlp_in:
        for part in ("weight", "bias"):
            key = f"{prefix}.{name}.{part}"
            if key in state:
                state[key] = state[key].index_select(0, index).clone()
    key = f"{prefix}.{arch.mlp_out}.weight"
    state[key] = state[key].index_select(1, index).clone()


def _slice_heads(
    state: dict, prefix: str, arch: Architecture, keep_groups: list[int], group: int, head_dim: int
) -> None:
    heads = [g * group + j for g in keep_groups for j in range(group)]
    q_rows = torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)])
    kv_rows = torch.tensor([g * head_dim + d for g in keep_groups for d in range(head_dim)])
    for name, rows in [(arch.attention_q, q_rows)] + [(n, kv_rows) for n in arch.attention_kv]:
        for part in ("weight", "bias"):
            key = f"{prefix}.{name}.{part}"
            if key in state:
                state[key] = state[key].index_select(0, rows).clone()
    key = f"{prefix}.{arch.attention_o}.weight"
    state[key] = state[key].index_select(1, q_rows).clone()


def prune_model(
    model: nn.Module,
    scores: dict[str, Any],
    drop_layers: int = 0,
    mlp_width: Optional[int] = None,
    heads: Optional[int] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Apply a pruning to ``model`` given its `score_model` scores.

    Returns:
        ``(pruned_model, removed)``: a new model (the input is untouched) and what was kept and removed
        (teacher block indices, and per kept block the kept neurons and heads).
    """
    config = model.config
    arch = check_prune_request(config, drop_layers, mlp_width, heads)
    influence = torch.tensor(scores["block_influence"])
    kept = _top(influence, config.num_hidden_layers - drop_layers)
    prefix = blocks_prefix(model, arch)
    state = remap_blocks({k: v.detach().clone() for k, v in model.state_dict().items()}, prefix, kept)
    new_config = student_config(config, kept)
    removed: dict[str, Any] = {
        "kept_layers": kept,
        "dropped_layers": [i for i in range(config.num_hidden_layers) if i not in kept],
    }
    if mlp_width is not None and mlp_width < config.intermediate_size:
        removed["kept_neurons"] = {}
        for new, old in enumerate(kept):
            keep = _top(scores["neuron_importance"][old], mlp_width)
            _slice_mlp(state, f"{prefix}.{new}", arch, keep)
            removed["kept_neurons"][str(old)] = keep
        new_config.intermediate_size = mlp_width
    if heads is not None and heads < config.num_attention_heads:
        group, head_dim = _group_size(config), _head_dim(config)
        removed["kept_heads"] = {}
        for new, old in enumerate(kept):
            per_group = torch.as_tensor(scores["head_importance"][old]).reshape(-1, group).sum(-1)
            keep_groups = _top(per_group, heads // group)
            _slice_heads(state, f"{prefix}.{new}", arch, keep_groups, group, head_dim)
            removed["kept_heads"][str(old)] = [g * group + j for g in keep_groups for j in range(group)]
        new_config.head_dim = head_dim
        new_config.num_attention_heads = heads
        if getattr(config, "num_key_value_heads", None) is not None:
            new_config.num_key_value_heads = heads // group
    pruned = model_from_state(type(model), new_config, state, model.dtype)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        pruned.generation_config = model.generation_config
    return pruned, removed


def _as_lists(scores: dict[str, Any]) -> dict[str, Any]:
    def rounded(v):
        return [round(float(x), 7) for x in v]

    out = {
        "block_influence": rounded(scores["block_influence"]),
        "num_tokens": scores["num_tokens"],
        "neuron_importance": {str(i): rounded(v) for i, v in enumerate(scores["neuron_importance"])},
    }
    if scores.get("head_importance") is not None:
        out["head_importance"] = {str(i): rounded(v) for i, v in enumerate(scores["head_importance"])}
    return out


def prune_model_dir(
    model_dir: str,
    output_dir: str,
    calibration: str,
    num_samples: int = 64,
    drop_layers: int = 0,
    mlp_width: Optional[int] = None,
    heads: Optional[int] = None,
    task: Optional[str] = None,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """`distill prune`: score ``model_dir`` on calibration data, prune, and save with ``pruning.json``.

    Returns:
        The record written to ``output_dir/pruning.json``: request, scores, what was kept and removed,
        parameters before and after.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    check_prune_request(config, drop_layers, mlp_width, heads)
    if num_samples < 1:
        raise ValueError(f"--num-samples {num_samples}: give at least one calibration example.")
    if os.path.isfile(os.path.join(output_dir, "config.json")) and not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir!r} already holds a model; choose another or pass --overwrite_output_dir "
            "(alias --overwrite)."
        )
    model = load_model_dir(model_dir, task=task, trust_remote_code=trust_remote_code)
    processing_class = _processing_class(model_dir, trust_remote_code)
    batches = calibration_batches(model, calibration, num_samples, batch_size, processing_class, max_length)
    scores = score_model(model, get_architecture(config), batches)
    pruned, removed = prune_model(model, scores, drop_layers, mlp_width, heads)
    record = {
        "model": os.path.abspath(model_dir),
        "calibration": calibration,
        "num_samples": sum(len(next(iter(b.values()))) for b in batches),
        "request": {"drop_layers": drop_layers, "mlp_width": mlp_width, "heads": heads},
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in pruned.parameters()),
        **removed,
        "scores": _as_lists(scores),
    }
    save_with_processor(
        pruned,
        model_dir,
        output_dir,
        "pruning.json",
        record,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
    )
    return record


def _processing_class(model_dir: str, trust_remote_code: bool):
    from ..teacher.loading import load_tokenizer_if_present

    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return load_tokenizer_if_present(model_dir, trust_remote_code=trust_remote_code)
