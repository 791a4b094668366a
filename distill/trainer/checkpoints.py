"""Checkpoints a resumed run can trust.

`DistillationTrainer` writes every checkpoint into a staging folder and renames it into place, so
a run killed mid-save never leaves a half-written ``checkpoint-N``. This module adds what the
rename cannot promise:

- `write_completion_record` lists every file of a finished checkpoint with its size and sha256
  (``checkpoint_complete.json``), written last, before the rename;
- `check_checkpoint` verifies a checkpoint before training continues from it: the record's files,
  sizes and sha256 digests (a flipped byte that keeps the size is caught), the safetensors headers
  against the file sizes, the optimizer / scheduler / RNG archives, and that ``trainer_state.json``
  parses. A problem raises `CorruptCheckpointError`, which names the file;
- `last_complete_checkpoint` picks the newest checkpoint that passes, logging a warning for each
  newer one it skipped, so a damaged last checkpoint falls back to the one before it;
- `disk_full_error` turns ENOSPC while saving into an error that says so and names the previous
  checkpoint, which stays intact;
- `check_finite_weights` refuses to save weights that are NaN or infinite, looking at each process's
  own shard of ZeRO-3 partitioned or DTensor parameters.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import struct
import zipfile
from typing import Optional

logger = logging.getLogger("distill")

COMPLETION_RECORD = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TORCH_ARCHIVES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; ``file`` is the first damaged or missing file."""

    def __init__(self, file: str, reason: str):
        self.file = file
        self.reason = reason
        super().__init__(f"{file}: {reason}")


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_completion_record(checkpoint_dir: str) -> None:
    """List every file of a finished checkpoint with its size and sha256; written last, atomically.

    ``{"files": {name: size}, "sha256": {name: hex}}``: the size map is what older versions wrote and read.
    """
    files, digests = {}, {}
    for root, _, names in os.walk(checkpoint_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, checkpoint_dir)
            if rel == COMPLETION_RECORD:
                continue
            files[rel] = os.path.getsize(path)
            digests[rel] = file_sha256(path)
    target = os.path.join(checkpoint_dir, COMPLETION_RECORD)
    tmp = f"{target}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": files, "sha256": digests}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def check_safetensors(path: str) -> None:
    """The header parses and the file is exactly as long as the header says (catches truncation)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(path, f"safetensors file of {size} bytes has no header (truncated)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CorruptCheckpointError(
                path, f"safetensors header claims {header_len} bytes but the file has {size} (truncated)"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(path, f"safetensors header does not parse ({e})") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        raise CorruptCheckpointError(
            path,
            f"safetensors file has {size} bytes, its header describes {expected} (truncated or overwritten)",
        )


def _check_torch_archive(path: str) -> None:
    """`torch.save` writes a zip archive whose directory sits at the end: a cut file does not open."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                raise CorruptCheckpointError(path, "empty archive")
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptCheckpointError(path, f"not a complete torch.save archive ({e})") from None


def _check_record(checkpoint: str) -> None:
    record_path = os.path.join(checkpoint, COMPLETION_RECORD)
    if not os.path.isfile(record_path):
        return  # written by an older version or another Trainer: the structural checks below still run
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        files, digests = record["files"], record.get("sha256", {})  # no sha256: written by an older version
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(record_path, f"does not parse ({e})") from None
    for name, size in files.items():
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            raise CorruptCheckpointError(path, "missing (listed in checkpoint_complete.json)")
        if os.path.getsize(path) != size:
            raise CorruptCheckpointError(path, f"has {os.path.getsize(path)} bytes, {size} were written")
    for name, expected in digests.items():  # after the size checks: a cut file is named as such
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            raise CorruptCheckpointError(path, "missing (listed in checkpoint_complete.json)")
        if file_sha256(path) != expected:
            raise CorruptCheckpointError(
                path, "its sha256 differs from the one recorded when it was written (bytes changed on disk)"
            )


def check_checkpoint(checkpoint: str, *, need_optimizer: bool = True) -> None:
    """Raise `CorruptCheckpointError` naming the file when ``checkpoint`` cannot be resumed from.

    Args:
        checkpoint: a ``checkpoint-N`` directory written by the Trainer.
        need_optimizer: require ``optimizer.pt`` (resuming without it would restart the optimizer's
            moments silently); False for runs with ``save_only_model``. DeepSpeed checkpoints keep
            their optimizer in ``global_step*`` folders and are not asked for it.
    """
    if not os.path.isdir(checkpoint):
        raise CorruptCheckpointError(checkpoint, "no such checkpoint directory")
    _check_record(checkpoint)
    state = os.path.join(checkpoint, TRAINER_STATE)
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        raise CorruptCheckpointError(state, "missing") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(state, f"does not parse ({e})") from None
    names = os.listdir(checkpoint)
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        raise CorruptCheckpointError(
            os.path.join(checkpoint, "model.safetensors"), "missing (no safetensors weights)"
        )
    for name in weights:
        check_safetensors(os.path.join(checkpoint, name))
    deepspeed = any(n.startswith("global_step") for n in names)
    if need_optimizer and not deepspeed and OPTIMIZER not in names:
        raise CorruptCheckpointError(
            os.path.join(checkpoint, OPTIMIZER), "missing: the optimizer state was not saved"
        )
    for name in names:
        if _TORCH_ARCHIVES.match(name):
            _check_torch_archive(os.path.join(checkpoint, name))


def sorted_checkpoints(output_dir: str) -> list[str]:
    """``checkpoint-N`` directories of ``output_dir``, newest (highest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    ]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str, *, need_optimizer: bool = True) -> Optional[str]:
    """The newest checkpoint of ``output_dir`` that passes `check_checkpoint`, or None.

    Each newer checkpoint that fails is skipped with a warning naming it and the damaged file.
    """
    for checkpoint in sorted_checkpoints(output_dir):
        try:
            check_checkpoint(checkpoint, need_optimizer=need_optimizer)
            return checkpoint
        except CorruptCheckpointError as e:
            logger.warning(
                "Skipping checkpoint %s, which cannot be resumed from: %s. Falling back to the previous "
                "complete checkpoint.",
                checkpoint,
                e,
            )
    return None


def disk_full_error(error: OSError, checkpoint: str, previous: Optional[str]) -> Optional[OSError]:
    """For ENOSPC / EDQUOT while writing ``checkpoint``: an error that says so and what is still usable."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    kept = (
        f"The previous checkpoint {previous} is intact: free some space and rerun the same command to resume "
        "from it."
        if previous
        else "There is no earlier checkpoint; free some space and rerun."
    )
    return OSError(
        error.errno,
        f"Out of disk space while writing {checkpoint} ({error}). Nothing partial was left "
        f"in place of it. {kept}",
    )


def _zero3_shard(param):
    """This process's own elements of a ZeRO-3 partitioned parameter, without the padding of the last
    partition (allocated with `torch.empty`, so it may hold anything); None when swapped out to NVMe."""
    import torch.distributed as dist

    shard = param.ds_tensor
    if getattr(getattr(shard, "status", None), "name", "AVAILABLE") != "AVAILABLE":
        return None
    size = shard.ds_numel if hasattr(shard, "ds_numel") else shard.numel()
    group = getattr(param, "ds_process_group", None)
    rank = dist.get_rank(group=group) if dist.is_available() and dist.is_initialized() else 0
    valid = max(0, min(size, param.ds_numel - size * rank))
    return shard.narrow(0, 0, valid)


def local_weight_shards(model) -> list:
    """``(name, tensor)`` for every parameter's values held by this process: the whole tensor, a DTensor's
    local shard (FSDP2), or a ZeRO-3 parameter's partition (`ds_tensor`: the parameter itself is empty
    between forwards, so looking at it checks nothing)."""
    shards = []
    for name, param in model.named_parameters():
        if hasattr(param, "ds_tensor"):
            tensor = _zero3_shard(param)
        elif hasattr(param, "to_local"):
            tensor = param.to_local()
        else:
            tensor = param
        if tensor is not None and tensor.numel():
            shards.append((name, tensor.detach()))
    return shards


def check_finite_weights(model, accelerator=None) -> None:
    """Raise FloatingPointError naming the first parameter that holds NaN or infinity.

    Every process checks the values it holds (see `local_weight_shards`), one sync per device; with
    ``accelerator`` (several processes, e.g. sharded parameters) the verdict is reduced so that every
    rank raises together instead of one hanging.
    """
    import torch

    named = local_weight_shards(model)
    by_device = {}  # one sync per device (ZeRO-3 may keep shards on the CPU, the rest on the GPU)
    for _, p in named:
        by_device.setdefault(p.device, []).append(torch.isfinite(p).all())
    bad = torch.tensor([float(any(not bool(torch.stack(f).all()) for f in by_device.values()))])
    if accelerator is not None:
        bad = accelerator.reduce(bad.to(accelerator.device), reduction="sum")
    if not bool(bad.sum() > 0):
        return
    culprit = next((name for name, p in named if not bool(torch.isfinite(p).all())), None)
    where = f"parameter {culprit!r}" if culprit else "a parameter shard on another process"
    raise FloatingPointError(
        f"Refusing to save a checkpoint: {where} holds NaN or infinite values. The last complete checkpoint is "
        "left as it was."
    )


def resolve_resume(resume_from_checkpoint, args):
    """What `Trainer.train` should resume from: ``True`` -> the newest complete checkpoint of
    ``args.output_dir`` (an error when there is none, as in transformers), a path -> that path once
    it passes `check_checkpoint`, anything else unchanged."""
    need_optimizer = not getattr(args, "save_only_model", False)
    if resume_from_checkpoint is True:
        found = last_complete_checkpoint(args.output_dir, need_optimizer=need_optimizer)
        if found is None:
            raise ValueError(f"No complete checkpoint to resume from in output_dir={args.output_dir!r}.")
        return found
    if isinstance(resume_from_checkpoint, (str, os.PathLike)) and resume_from_checkpoint:
        check_checkpoint(str(resume_from_checkpoint), need_optimizer=need_optimizer)
    return resume_from_checkpoint


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (to tell a stale lock or staging folder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
