"""A ladder of model sizes from one base config and its run plan (`scaledown ladder` trains it).

Shape rule (stated, so a ladder can be reproduced): for a width ``d``

- depth ``n_layers = max(1, round(d / aspect_ratio))`` (depth grows with width, OLMo/Chinchilla style),
- heads ``n_heads = max(1, d // head_dim)`` with a fixed head size,
- MLP ``d_ff = mlp_ratio * d`` rounded up to a multiple of 32 (8/3 for gated MLPs keeps the
  parameter count of a 4x plain MLP).

Each rung's budget is given as tokens, as FLOPs (``D = C / 6N``), or as an IsoFLOP grid (every
budget x every size). Training is not done here (`scaling` only plans and fits): `scaledown.ladder`
trains each rung with `distill train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .params import count_parameters, flops_per_token

KNOWN_FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox", "olmo")


@dataclass
class LadderSpec:
    """How to grow a family of sizes from one base config.

    Args:
        base_config: a transformers config mapping with ``model_type`` (e.g. llama). Width,
            depth, heads and MLP size are overwritten per rung; everything else is shared.
        widths: hidden sizes of the rungs, smallest first.
        aspect_ratio: width / depth.
        head_dim: attention head size, fixed across rungs.
        mlp_ratio: MLP width / hidden size.
    """

    base_config: dict
    widths: Sequence[int]
    aspect_ratio: float = 32.0
    head_dim: int = 32
    mlp_ratio: float = 8 / 3

    def __post_init__(self):
        family = self.base_config.get("model_type") if isinstance(self.base_config, dict) else None
        if family not in KNOWN_FAMILIES:
            raise ValueError(
                f"ladder.base_config.model_type={family!r} is not a supported model family; use one of "
                f"{', '.join(KNOWN_FAMILIES)}."
            )
        if not self.widths or any(int(w) <= 0 for w in self.widths):
            raise ValueError("ladder.widths must be a non-empty list of positive hidden sizes.")
        if list(self.widths) != sorted(set(int(w) for w in self.widths)):
            raise ValueError("ladder.widths must be distinct and increasing.")
        for w in self.widths:
            if int(w) % self.head_dim:
                raise ValueError(f"ladder.widths: {w} is not a multiple of head_dim={self.head_dim}.")
        if self.aspect_ratio <= 0 or self.mlp_ratio <= 0:
            raise ValueError("ladder.aspect_ratio and ladder.mlp_ratio must be positive.")


_FIELD_NAMES = {
    "gpt2": {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
    },
}


def rung_config(spec: LadderSpec, width: int, vocab_size: Optional[int] = None) -> dict:
    """The full config mapping of the rung of the given width."""
    depth = max(1, round(width / spec.aspect_ratio))
    heads = max(1, width // spec.head_dim)
    d_ff = int(math.ceil(spec.mlp_ratio * width / 32) * 32)
    config = dict(spec.base_config)
    shape = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": d_ff,
    }
    if "num_key_value_heads" in config or config["model_type"] in ("llama", "mistral", "qwen2", "olmo"):
        shape["num_key_value_heads"] = heads
    names = _FIELD_NAMES.get(config["model_type"], {})
    for key, value in shape.items():
        config[names.get(key, key)] = value
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    return config


@dataclass
class RunPlan:
    """One training run of the ladder: a size and a token budget."""

    name: str
    width: int
    config: dict
    params: int
    non_embedding_params: int
    tokens: int
    steps: int
    flops_6nd: float
    flops: float
    budget: Optional[float] = None
    extra: dict = field(default_factory=dict)


def plan_ladder(
    spec: LadderSpec,
    *,
    vocab_size: int,
    seq_len: int,
    batch_size: int,
    tokens: Optional[float] = None,
    flops: Optional[float] = None,
    isoflop_budgets: Optional[Sequence[float]] = None,
    tokens_per_param: Optional[float] = None,
) -> list[RunPlan]:
    """Plan every run before any training: sizes, tokens, steps and FLOPs.

    Exactly one budget: ``tokens`` (the same D for every size), ``flops`` (one compute budget,
    ``D = C / 6N``), ``isoflop_budgets`` (each budget x each size) or ``tokens_per_param``.
    N is the non-embedding parameter count, as in the fit. A run is at least one step.
    """
    given = [x is not None for x in (tokens, flops, isoflop_budgets, tokens_per_param)]
    if sum(given) != 1:
        raise ValueError("Give exactly one budget: tokens, flops, isoflop_budgets or tokens_per_param.")
    tokens_per_step = batch_size * seq_len
    plans = []
    budgets = list(isoflop_budgets) if isoflop_budgets is not None else [flops]
    for budget in budgets:
        for width in spec.widths:
            config = rung_config(spec, int(width), vocab_size)
            counts = count_parameters(config)
            n = counts["non_embedding"]
            if tokens is not None:
                d = float(tokens)
            elif tokens_per_param is not None:
                d = tokens_per_param * n
            else:
                d = budget / (6 * n)
            steps = int(d // tokens_per_step)
            if steps < 1:
                raise ValueError(
                    f"The budget gives width {width} only {d:.0f} tokens, less than one step of "
                    f"{tokens_per_step} tokens (batch_size x seq_len): raise the budget or lower the batch."
                )
            d_real = steps * tokens_per_step
            name = f"w{width}" if budget is None else f"w{width}_C{budget:.2e}"
            plans.append(
                RunPlan(
                    name=name,
                    width=int(width),
                    config=config,
                    params=counts["total"],
                    non_embedding_params=n,
                    tokens=d_real,
                    steps=steps,
                    flops_6nd=6.0 * n * d_real,
                    flops=flops_per_token(config, seq_len) * d_real,
                    budget=budget,
                )
            )
    return plans


def format_plan(plans: Sequence[RunPlan]) -> str:
    """The run plan as a Markdown table."""
    lines = [
        "| run | width | layers | params | non-embedding | tokens | steps | FLOPs (6ND) | FLOPs (exact) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        layers = p.config.get("num_hidden_layers", p.config.get("n_layer"))
        lines.append(
            f"| {p.name} | {p.width} | {layers} | {p.params:,} | {p.non_embedding_params:,} | "
            f"{p.tokens:,} | {p.steps} | {p.flops_6nd:.3g} | {p.flops:.3g} |"
        )
    return "\n".join(lines)
