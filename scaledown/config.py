"""The pipeline's YAML: one mapping per stage, checked field by field before any training."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from distill.utils.hints import did_you_mean
from scaledown.ship import ShipConfig

from .distill_ladder import DistillLadderConfig


@dataclass
class LadderConfig:
    """The size ladder: shapes from one base config, and one budget per rung."""

    base_config: dict = field(default_factory=lambda: {"model_type": "llama", "tie_word_embeddings": True})
    widths: list = field(default_factory=lambda: [64, 96, 128, 160, 192])
    aspect_ratio: float = 32.0
    head_dim: int = 32
    mlp_ratio: float = 8 / 3
    tokens: Optional[float] = None
    flops: Optional[float] = None
    isoflop_budgets: Optional[list] = None
    tokens_per_param: Optional[float] = None
    eval_points: int = 4
    # Adam's best learning rate falls with width (muP's 1/width rule): train.learning_rate is the
    # rate of the smallest rung and each rung of width w uses learning_rate * widths[0] / w.
    lr_inverse_width: bool = True


@dataclass
class FitConfig:
    law: str = "power"
    param_count: str = "non_embedding"
    bootstrap: int = 200
    hold_out_largest: bool = True


@dataclass
class StudentConfig:
    """The student's size: a ladder width, or chosen from the fit by a target loss or a FLOP budget."""

    width: Optional[int] = None
    target_loss: Optional[float] = None
    flops_budget: Optional[float] = None
    # --- student made from the teacher (distill/students/): instead of a size, `from_teacher: layers`
    # copies the teacher blocks `layers` (indices, every_other or a count; DistilBERT), and
    # `from_teacher: prune` prunes the teacher on calibration data from `data` (Minitron):
    # drop_layers blocks, MLP width mlp_width, heads. The baseline starts from the same weights.
    from_teacher: Optional[str] = None
    layers: Any = None
    drop_layers: int = 0
    mlp_width: Optional[int] = None
    heads: Optional[int] = None
    num_samples: int = 64


@dataclass
class DistillStageConfig:
    alpha: float = 0.5
    temperature: float = 1.0
    kd_kind: str = "forward_kl"
    tokens: Optional[float] = None
    seeds: list = field(default_factory=lambda: [0, 1])


@dataclass
class PipelineConfig:
    """Everything `scaledown run` does, as one YAML file (see recipes/pipeline/demo.yaml)."""

    name: str = "demo"
    output_root: str = "runs"
    seed: int = 0
    data: dict = field(
        default_factory=lambda: {
            "dataset_name": "builtin:python-docs",
            "block_size": 128,
            "packing": True,
            "tokenizer_vocab_size": 2048,
        }
    )
    tokenizer: Optional[str] = None
    train: dict = field(default_factory=dict)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    teacher: Optional[str] = None
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)
    # --- distillation ladder (issue 15, scaledown/distill_ladder.py): KD students from several ladder
    # rungs, the distillation law fitted on all but one, the held-out student predicted. Absent: off.
    distill_ladder: Optional[DistillLadderConfig] = None
    # --- ship stage (scaledown/ship.py): export, int8, bench of the student after evaluation
    ship: ShipConfig = field(default_factory=ShipConfig)
    quick: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_root, self.name)


_NESTED = {
    "ladder": LadderConfig,
    "fit": FitConfig,
    "student": StudentConfig,
    "distill": DistillStageConfig,
    "distill_ladder": DistillLadderConfig,
    "ship": ShipConfig,
}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, not {type(values).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            hint = did_you_mean(key, names, prefix=f"{where}.")
            raise ValueError(f"Unknown field {where}.{key}{hint}; known: {', '.join(sorted(names))}.")
    return cls(**values)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("base_config",):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def distill_train_fields() -> frozenset:
    """The field names `distill train` accepts (model, data and `DistillationConfig` fields)."""
    from distill.config import DistillationConfig
    from distill.data import DataArguments
    from distill.train import ModelArguments

    return frozenset(
        f.name for cls in (ModelArguments, DataArguments, DistillationConfig) for f in dataclasses.fields(cls)
    )


def _check_distill_fields(config: PipelineConfig) -> None:
    """The `data:` and `train:` blocks become `distill train` flags: every key must be one of its fields."""
    known = distill_train_fields()
    for block in ("data", "train"):
        values = getattr(config, block)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(
                f"{block} must be a mapping of `distill train` fields, not {type(values).__name__}."
            )
        for key in values:
            if key not in known:
                raise ValueError(
                    f"Unknown field {block}.{key}{did_you_mean(str(key), known, prefix=f'{block}.')}: the {block} "
                    "block holds `distill train` fields (`distill train --help` lists them)."
                )


def load_pipeline_config(
    path: Optional[str] = None, quick: bool = False, overrides: Optional[dict] = None
) -> PipelineConfig:
    """Read a pipeline YAML (or the defaults), apply its ``quick:`` block when asked, and validate."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--config {path}: no such file.")
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping of stage: settings.")
    if quick:
        raw = _merge(raw, raw.get("quick") or {})
    raw = _merge(raw, overrides or {})
    top = {f.name for f in dataclasses.fields(PipelineConfig)}
    values = {}
    for key, value in raw.items():
        if key not in top:
            raise ValueError(f"Unknown field {key!r}{did_you_mean(key, top)}.")
        values[key] = _build(_NESTED[key], value, key) if key in _NESTED else value
    config = PipelineConfig(**values)
    _check_distill_fields(config)
    from distill.students.model_config import check_model_config_keys

    check_model_config_keys(config.ladder.base_config, "ladder.base_config")
    if isinstance(config.data, dict):
        config.data = (
            {**PipelineConfig().data, **config.data}
            if "dataset_name" not in config.data and "data_files" not in config.data
            else dict(config.data)
        )
    return config
