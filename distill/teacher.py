"""The teacher: loading (safetensors only), tokenizer checks, and placement per distributed setup."""

from __future__ import annotations

import copy
import os
from typing import Any, Optional

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or path.count("/") > 1


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never trains, and dropout never fires in it."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_teacher(path: str, task, args) -> tuple[nn.Module, Any]:
    """Load a frozen teacher from a Hub id or local directory, from safetensors only.

    Returns:
        ``(model, tokenizer_or_None)``: the tokenizer saved beside the teacher, if any, so that a
        student with a different tokenizer can be refused.
    """
    if _looks_local(path):
        path = os.path.expanduser(path)
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"teacher_model_name_or_path={path!r} is not a model directory (no config.json there). "
                "Point it at a directory written by save_pretrained / `distill train`, or at a Hub id."
            )
    dtype = _DTYPES.get(args.teacher_dtype, "auto")
    model = task.model_class().from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=args.trust_remote_code
    )
    tokenizer = None
    if task.name != "image-cls":
        tokenizer = load_tokenizer_if_present(path, trust_remote_code=args.trust_remote_code)
    return freeze(model), tokenizer


def load_tokenizer_if_present(path: str, trust_remote_code: bool = False):
    """The tokenizer saved in a directory or Hub repo, or None when there is none."""
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not any(
        os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    ):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def _output_vocab(model: nn.Module) -> Optional[int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None and head.weight.dim() == 2:
        rows = head.weight.shape[0]
        if rows > 0:  # ZeRO-3 partitioned weights have shape (0,)
            return rows
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, student: nn.Module, teacher: nn.Module) -> Optional[int]:
    """Refuse different tokenizers; return the vocabulary size both logit tensors are sliced to.

    Teacher and student may pad their vocabularies differently (e.g. 151936 vs 152064 rows); what
    must agree is the token-to-id mapping. Returns ``len(tokenizer)`` when a tokenizer is known,
    otherwise None when both heads have the same size.
    """
    if student_tokenizer is not None and teacher_tokenizer is not None:
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            differing = len(set(s_vocab.items()) ^ set(t_vocab.items()))
            raise ValueError(
                "Teacher and student use different tokenizers "
                f"({len(t_vocab)} vs {len(s_vocab)} tokens, {differing} differing entries). Token-level "
                "distillation compares distributions over the same token ids: use the teacher's tokenizer "
                "for the student (tokenizer_name_or_path=<teacher>)."
            )
    tokenizer = student_tokenizer or teacher_tokenizer
    s_rows, t_rows = _output_vocab(student), _output_vocab(teacher)
    if tokenizer is not None:
        size = len(tokenizer)
        for who, rows in (("student", s_rows), ("teacher", t_rows)):
            if rows is not None and rows < size:
                raise ValueError(
                    f"The {who}'s output layer has {rows} rows but the tokenizer has {size} tokens; "
                    f"resize the {who}'s embeddings (model.resize_token_embeddings(len(tokenizer)))."
                )
        return size
    if s_rows is not None and t_rows is not None and s_rows != t_rows:
        raise ValueError(
            f"Student and teacher vocabularies differ ({s_rows} vs {t_rows} rows) and no tokenizer was "
            "given: pass processing_class=tokenizer so both can be sliced to the real vocabulary."
        )
    return None


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
    config["train_batch_size"] = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    precision = {"bf16": args.bf16 or args.bf16_full_eval, "fp16": args.fp16 or args.fp16_full_eval, "amp": False}
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
