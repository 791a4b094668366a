"""Where the parts of each supported architecture live: blocks, MLP projections, attention heads.

`init-student` and `prune` work on three families, the ones the trainer's tiny recipes use:

| family | model types | blocks | MLP neurons (rows of / columns of) | heads |
|---|---|---|---|---|
| llama | llama, mistral, qwen2, qwen3 | ``model.layers`` | ``gate_proj``, ``up_proj`` / ``down_proj`` | whole key-value groups |
| bert | bert, roberta | ``<bert>.encoder.layer`` | ``intermediate.dense`` / ``output.dense`` | not supported |
| vit | vit | ``vit.layers`` | ``mlp.fc1`` / ``mlp.fc2`` | yes |

BERT's head size is ``hidden_size / num_attention_heads`` by construction (transformers 5 dropped
``pruned_heads``), so a BERT with fewer heads cannot be written as a config that ``from_pretrained``
reloads; head pruning is refused there rather than saved as a model that would not reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Module paths of one family, relative to ``model.base_model`` (blocks) and to a block (the rest).

    Attributes:
        family: ``llama``, ``bert`` or ``vit``.
        model_types: ``config.model_type`` values of the family.
        blocks: path of the ``nn.ModuleList`` of transformer blocks under ``model.base_model``.
        mlp_in: linears whose output rows are the MLP's intermediate neurons.
        mlp_out: the linear whose input columns are the intermediate neurons.
        attention_q: the query projection (rows grouped by head), or None when heads cannot be pruned.
        attention_kv: key and value projections (rows grouped by key-value head).
        attention_o: the output projection (columns grouped by head).
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    attention_q: Optional[str] = None
    attention_kv: tuple[str, ...] = ()
    attention_o: Optional[str] = None

    @property
    def prunes_heads(self) -> bool:
        return self.attention_q is not None


ARCHITECTURES = (
    Architecture(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3"),
        "layers",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out="mlp.down_proj",
        attention_q="self_attn.q_proj",
        attention_kv=("self_attn.k_proj", "self_attn.v_proj"),
        attention_o="self_attn.o_proj",
    ),
    Architecture(
        "bert", ("bert", "roberta"), "encoder.layer", mlp_in=("intermediate.dense",), mlp_out="output.dense"
    ),
    Architecture(
        "vit",
        ("vit",),
        "layers",
        mlp_in=("mlp.fc1",),
        mlp_out="mlp.fc2",
        attention_q="attention.q_proj",
        attention_kv=("attention.k_proj", "attention.v_proj"),
        attention_o="attention.o_proj",
    ),
)


def supported_model_types() -> list[str]:
    return [t for a in ARCHITECTURES for t in a.model_types]


def get_architecture(config) -> Architecture:
    """The family of a model config, or a ValueError naming the supported model types."""
    model_type = getattr(config, "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    families = "; ".join(f"{a.family}: {', '.join(a.model_types)}" for a in ARCHITECTURES)
    raise ValueError(
        f"model_type={model_type!r} is not supported for students made from a teacher (init-student, prune). "
        f"Supported: {families}."
    )


def blocks_prefix(model: nn.Module, arch: Architecture) -> str:
    """State-dict prefix of the block list, e.g. ``model.layers`` or ``bert.encoder.layer``."""
    base = model.base_model
    blocks = base.get_submodule(arch.blocks)
    for name, module in model.named_modules():
        if module is blocks:
            return name
    raise ValueError(f"{type(model).__name__}: no block list at {arch.blocks!r}.")  # pragma: no cover


def get_blocks(model: nn.Module, arch: Architecture) -> nn.ModuleList:
    blocks = model.base_model.get_submodule(arch.blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != model.config.num_hidden_layers:
        raise ValueError(
            f"{type(model).__name__}: expected {model.config.num_hidden_layers} blocks at {arch.blocks!r}, "
            f"found {type(blocks).__name__}."
        )
    return blocks
