"""Teacher placement per distributed setup: a device replica (DDP), its own DeepSpeed engine
(ZeRO-3 sharded, else stage 0), or FSDP2 `fully_shard` with the student's settings."""

from __future__ import annotations

import copy
from typing import Any, Optional

from torch import nn

from .ensemble import TeacherGroup
from .loading import freeze


def place_teacher(teacher: nn.Module, trainer) -> nn.Module:
    """Put the frozen teacher where the student's distributed setup needs it.

    - DeepSpeed: its own engine (never the student's), in eval mode. Under ZeRO-3 it is sharded like
      the student and its parameters are gathered layer by layer only inside its forward; under
      ZeRO-0/1/2 it is a stage-0 replica.
    - FSDP: sharded with FSDP2 ``fully_shard`` (per block, then the root) with the student's FSDP
      settings (mesh, resharding, mixed precision, offload), kept in eval mode.
    - DDP / single device: a plain replica on the device; a frozen model is never DDP-wrapped.

    Called from `DistillationTrainer.__init__`, i.e. before the student is prepared in `train()`;
    DeepSpeed and FSDP2 both accept that order.
    """
    freeze(teacher)
    if isinstance(teacher, TeacherGroup):  # several teachers: each placed like a single one
        teacher.members = nn.ModuleList(place_teacher(member, trainer) for member in teacher.members)
        return teacher
    if trainer.is_deepspeed_enabled:
        return _deepspeed_teacher(teacher, trainer)
    if trainer.is_fsdp_enabled:
        # Not moved first: fully_shard moves each block to the mesh's device as it shards it, so the
        # whole teacher never has to fit on one GPU.
        return shard_teacher_fsdp2(teacher, **_fsdp2_settings(trainer))
    return teacher.to(trainer.args.device)


def _hidden_size(config) -> Optional[int]:
    """The width DeepSpeed sizes its buckets by (as transformers' `trainer_config_finalize` does)."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        if getattr(cfg, "hidden_size", None):
            return cfg.hidden_size
        if getattr(cfg, "hidden_sizes", None):
            return max(cfg.hidden_sizes)
    return None


def _find_auto(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [k for key, value in config.items() for k in _find_auto(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if config == "auto" else []


def teacher_deepspeed_config(student_config: dict, teacher: nn.Module, args) -> dict:
    """The DeepSpeed config of the teacher's inference engine, derived from the student's.

    Keeps precision, ZeRO-3 sharding and parameter offload; drops everything that only training needs
    (optimizer, scheduler, clipping, optimizer offload). Every ``"auto"`` is filled here, because the
    Trainer fills the student's hidden-size-based values only later, in `train()`, and from the
    student's width.
    """
    config = copy.deepcopy(student_config)
    for key in ("optimizer", "scheduler", "gradient_clipping", "zero_allow_untested_optimizer"):
        config.pop(key, None)
    zero = config.get("zero_optimization") or {}
    if zero.get("stage", 0) == 3:
        zero = dict(zero)
        zero.pop("offload_optimizer", None)
        hidden = _hidden_size(getattr(teacher, "config", None))
        fills = {  # transformers' values when the width is known, DeepSpeed's defaults otherwise
            "reduce_bucket_size": hidden * hidden if hidden else 500_000_000,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 50_000_000,
            "stage3_param_persistence_threshold": 10 * hidden if hidden else 100_000,
        }
        for key, value in fills.items():
            if zero.get(key) == "auto":
                zero[key] = value
        config["zero_optimization"] = zero
    else:
        config["zero_optimization"] = {"stage": 0}  # a replica: sharding a frozen model saves nothing here
    config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config["train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    precision = {
        "bf16": args.bf16 or args.bf16_full_eval,
        "fp16": args.fp16 or args.fp16_full_eval,
        "amp": False,
    }
    for name, enabled in precision.items():
        if isinstance(config.get(name), dict) and config[name].get("enabled") == "auto":
            config[name]["enabled"] = bool(enabled)
    left = _find_auto(config)
    if left:
        raise ValueError(
            f"The DeepSpeed config still has 'auto' for {', '.join(left)}, which the teacher's engine cannot "
            "fill: replace these with numbers in the DeepSpeed JSON."
        )
    return config


def _deepspeed_teacher(teacher: nn.Module, trainer) -> nn.Module:
    """Wrap the teacher in its own DeepSpeed engine (no optimizer), in eval mode."""
    import deepspeed

    student_config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
    config = teacher_deepspeed_config(student_config, teacher, trainer.args)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    # DeepSpeedEngine.eval() switches only the wrapped module; switch the engine's own flag too.
    nn.Module.train(engine, False)
    return engine


def _fsdp2_settings(trainer) -> dict:
    """The student's FSDP2 settings (from accelerate's plugin) that also suit a frozen teacher."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

    plugin = trainer.accelerator.state.fsdp_plugin
    settings: dict[str, Any] = {}
    if getattr(plugin, "fsdp_version", 2) != 2:  # FSDP1 plugins hold FSDP1 types; use fully_shard's defaults
        return settings
    reshard = getattr(plugin, "reshard_after_forward", None)
    if type(reshard) in (bool, int):
        settings["reshard_after_forward"] = reshard
    if isinstance(getattr(plugin, "mixed_precision_policy", None), MixedPrecisionPolicy):
        settings["mp_policy"] = plugin.mixed_precision_policy
    if isinstance(getattr(plugin, "cpu_offload", None), OffloadPolicy):
        settings["offload_policy"] = plugin.cpu_offload
    mesh = getattr(trainer.accelerator, "torch_device_mesh", None)
    parallelism = getattr(trainer.accelerator, "parallelism_config", None)
    if mesh is not None and parallelism is not None:
        settings["mesh"] = mesh[tuple(parallelism.fsdp_dim_names)]
    return settings


def shard_teacher_fsdp2(teacher: nn.Module, mesh=None, **fully_shard_kwargs) -> nn.Module:
    """Shard a frozen teacher with FSDP2: each repeated block (``_no_split_modules``), then the root.

    Args:
        teacher: the frozen teacher, on any device (typically still on the CPU after loading):
            each ``fully_shard`` call moves the weights it manages to the mesh's device and keeps
            only this rank's shard, so peak device memory is about one block plus the shards.
        mesh: the `DeviceMesh` to shard over; default: all processes (``init_device_mesh`` over the world).
        **fully_shard_kwargs: passed to every ``fully_shard`` call (``reshard_after_forward``, ``mp_policy``,
            ``offload_policy``).

    Returns:
        The same module, now an ``FSDPModule`` whose parameters are ``DTensor`` shards, in eval mode
        and without gradients. Call it like the unsharded model; each block gathers its parameters
        only for its own forward.
    """
    from torch.distributed.fsdp import fully_shard

    freeze(teacher)
    block_names = set(getattr(teacher, "_no_split_modules", None) or [])
    blocks = [m for m in teacher.modules() if m is not teacher and type(m).__name__ in block_names]
    for module in blocks:
        fully_shard(module, mesh=mesh, **fully_shard_kwargs)
    fully_shard(teacher, mesh=mesh, **fully_shard_kwargs)
    return freeze(teacher)
