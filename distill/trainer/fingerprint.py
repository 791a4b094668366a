"""The run fingerprint of `distill train`: refuse to resume, or to redo, a run whose settings changed.

`distill train` writes ``run_fingerprint.json`` into its output directory when training starts and
marks it finished when the run's results are on disk. A later `distill train` into the same
directory compares its own fingerprint with the stored one, before any tokenizer training, data
loading or training:

- different: refused, naming each changed field with its old and new value and the two ways on
  (``--overwrite_output_dir true`` to start afresh, or another ``--output_dir``);
- the same and finished: nothing to do, the stored results are returned (exit 0) and nothing is
  rewritten;
- the same and unfinished: resumed from the last checkpoint, as before.

The fingerprint holds every field of `ModelArguments`, `DataArguments` and `DistillationConfig`
except those in `IGNORED_FIELDS` (fields that cannot change the trained weights or the reported
metrics), the number of processes (it sets the global batch), and content fingerprints of what the
paths point at: the student (when `model_name_or_path` is a local directory), the teacher, the
tokenizer and image processor, the teacher cache, local data files and datasets saved with
``save_to_disk``, and the Python version for the built-in corpora (made from CPython's own docs).

Content fingerprints are cheap: a file up to 64 MiB is hashed whole (SHA-256); a larger one by its
size, its safetensors header (shapes, dtypes, offsets) and 16 blocks of 64 KiB spread evenly over it,
so a retrained or replaced model of any size is told apart without reading gigabytes. Model
directories count only their weight, config and tokenizer files (not logs, results or checkpoints).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import platform
from typing import Any, Optional

from distill.utils.output_dir import clear_model_outputs, refuse_foreign_output_dir
from distill.utils.output_dir import entries as output_dir_entries

logger = logging.getLogger("distill")

FINGERPRINT_NAME = "run_fingerprint.json"
FORMAT_VERSION = 1

# Fields that cannot change the trained weights or the reported metrics, left out of the fingerprint.
IGNORED_FIELDS = frozenset(
    {
        # where things go, and what is printed or logged
        "output_dir",
        "run_name",
        "project",
        "report_to",
        "disable_tqdm",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "logging_nan_inf_filter",
        "skip_memory_metrics",
        "include_num_input_tokens_seen",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        # checkpoint and evaluation cadence (they count when load_best_model_at_end picks the final weights)
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "save_on_each_node",
        "save_only_model",
        "eval_strategy",
        "eval_steps",
        "eval_delay",
        "eval_on_start",
        "do_train",
        "do_eval",
        "do_predict",
        # evaluation batching and gathering (the same metrics)
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "eval_do_concat_batches",
        "eval_use_gather_object",
        # the Hub upload
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_token",
        "hub_private_repo",
        "hub_always_push",
        "hub_revision",
        # how to start: these choose whether and where from to resume, not what the run is
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "restore_callback_states_from_checkpoint",
        # data loading workers and memory housekeeping
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "preprocessing_num_workers",
        "torch_empty_cache_steps",
        "ddp_timeout",
        "ddp_backend",
        "local_rank",
        # performance knobs that compute the same loss (tested to 1e-5)
        "kd_chunk_size",
        "kd_fused_lm_head",
    }
)
_CADENCE = {"save_strategy", "save_steps", "eval_strategy", "eval_steps", "eval_delay", "do_eval"}

FULL_HASH_BYTES = 64 * 2**20
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 16, 64 * 2**10
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json", ".model", ".tiktoken")
_MAX_DIR_FILES = 1000


# ---- content fingerprints -------------------------------------------------------------------


def file_fingerprint(path: str) -> str:
    """SHA-256 of a file up to 64 MiB; above, of its size, safetensors header and 16 sampled blocks."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f"size={size};".encode())
        if path.endswith(".safetensors"):
            header_len = int.from_bytes(f.read(8), "little")
            digest.update(f.read(min(header_len, FULL_HASH_BYTES)))
        block = min(SAMPLE_BLOCK_BYTES, size // SAMPLE_BLOCKS)
        step = (size - block) // (SAMPLE_BLOCKS - 1)
        for i in range(SAMPLE_BLOCKS):
            f.seek(i * step)
            digest.update(f.read(block))
    return "sampled:" + digest.hexdigest()


def _is_model_file(name: str) -> bool:
    return name in _MODEL_FILES or name.endswith(_MODEL_SUFFIXES)


def path_fingerprint(path: Optional[str], model_files_only: bool = False) -> Any:
    """Fingerprint of a local file or directory; ``None`` for what is not on disk (a Hub id)."""
    if not path:
        return None
    path = os.path.expanduser(str(path))
    if os.path.isfile(path):
        return file_fingerprint(path)
    if not os.path.isdir(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not model_files_only and not d.startswith("checkpoint-"))
        for name in sorted(files):
            if (model_files_only and not _is_model_file(name)) or name == FINGERPRINT_NAME:
                continue
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = file_fingerprint(full)
            if len(out) >= _MAX_DIR_FILES:
                return out
    return out


def _data_files_fingerprint(data_files: Any) -> Any:
    if data_files is None:
        return None
    if isinstance(data_files, dict):
        return {split: _data_files_fingerprint(v) for split, v in sorted(data_files.items())}
    patterns = data_files if isinstance(data_files, list) else [data_files]
    out = {}
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True)) or [pattern]:
            out[str(path)] = path_fingerprint(path)
    return out


def _builtin_version(dataset_name: Optional[str]) -> Optional[str]:
    if dataset_name in ("builtin:python-docs", "builtin:docstring-topics", "builtin:docstring-transfer"):
        return f"python {platform.python_version()}"  # the corpus is this Python's documentation
    if dataset_name == "builtin:digits":
        import sklearn

        return f"scikit-learn {sklearn.__version__}"
    return None


# ---- the run fingerprint --------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def run_fingerprint(model_args, data_args, args) -> dict:
    """The settings that determine a `distill train` run's result, as a flat mapping of field -> value."""
    from distill.students.model_config import parse_model_config

    values: dict[str, Any] = {}
    for part in (model_args, data_args):
        values.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part)})
    values.update(args.to_dict())
    ignored = set(IGNORED_FIELDS)
    if getattr(args, "load_best_model_at_end", False):
        ignored -= _CADENCE  # the cadence decides which checkpoint becomes the final model
    fingerprint = {k: v for k, v in values.items() if k not in ignored}
    if model_args.model_config is not None:
        fingerprint["model_config"] = parse_model_config(model_args.model_config)
    for key in (
        "model_name_or_path",
        "teacher_model_name_or_path",
        "tokenizer_name_or_path",
        "image_processor_name_or_path",
        "teacher_cache",
    ):
        if fingerprint.get(key) and os.path.exists(os.path.expanduser(str(fingerprint[key]))):
            fingerprint[key] = os.path.normpath(str(fingerprint[key]))
    fingerprint["world_size"] = args.world_size
    content = {
        "student_files": path_fingerprint(model_args.model_name_or_path, model_files_only=True),
        "teacher_files": path_fingerprint(args.teacher_model_name_or_path, model_files_only=True),
        "extra_teacher_files": [
            path_fingerprint(t, model_files_only=True) for t in getattr(args, "extra_teachers", None) or []
        ]
        or None,
        "tokenizer_files": path_fingerprint(model_args.tokenizer_name_or_path, model_files_only=True),
        "image_processor_files": path_fingerprint(
            model_args.image_processor_name_or_path, model_files_only=True
        ),
        "teacher_cache_files": path_fingerprint(model_args.teacher_cache),
        "data_files_content": _data_files_fingerprint(data_args.data_files),
        "transfer_data_files_content": _data_files_fingerprint(
            getattr(data_args, "transfer_data_files", None)
        ),
        "transfer_dataset_dir_content": path_fingerprint(data_args.transfer_dataset_name)
        if getattr(data_args, "transfer_dataset_name", None)
        and os.path.isdir(os.path.expanduser(data_args.transfer_dataset_name))
        else None,
        "dataset_dir_content": path_fingerprint(data_args.dataset_name)
        if data_args.dataset_name and os.path.isdir(os.path.expanduser(data_args.dataset_name))
        else None,
        "builtin_source": _builtin_version(data_args.dataset_name),
        "transfer_builtin_source": _builtin_version(getattr(data_args, "transfer_dataset_name", None)),
    }
    fingerprint.update({k: v for k, v in content.items() if v is not None})
    return _jsonable(fingerprint)


def diff_fingerprints(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` for every field that differs, descending into mappings (``model_config.hidden_size``)."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += diff_fingerprints(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def _short(value: Any, width: int = 70) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- the output directory -------------------------------------------------------------------

_RESULT_FILES = (
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "test_results.json",
    "trainer_state.json",
    FINGERPRINT_NAME,
)


def _earlier_outputs(output_dir: str) -> list[str]:
    """What an earlier run left in ``output_dir``: checkpoints and result files."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(
        name
        for name in os.listdir(output_dir)
        if (name.startswith("checkpoint-") and os.path.isdir(os.path.join(output_dir, name)))
        or name in _RESULT_FILES[:-1]
    )


def _write_json_atomic(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_fingerprint(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, FINGERPRINT_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass
class OutputDirState:
    """What `distill train` does with its output directory: ``fresh``, ``resume`` or ``finished``."""

    output_dir: str
    fingerprint: dict
    action: str
    results: Optional[dict] = None

    def write(self, finished: bool = False) -> None:
        """Record the fingerprint (when training starts) or mark the run finished (when its results are saved)."""
        record = {
            "format_version": FORMAT_VERSION,
            "finished": finished,
            "fingerprint": self.fingerprint,
            "ignored_fields": sorted(IGNORED_FIELDS),
        }
        _write_json_atomic(os.path.join(self.output_dir, FINGERPRINT_NAME), record)


def compare_output_dir(output_dir: str, fingerprint: dict) -> tuple[str, list, Optional[dict]]:
    """``(status, changes, stored)`` of ``output_dir`` against ``fingerprint``, touching nothing.

    status is ``fresh`` (nothing of an earlier run there), ``finished`` or ``resume`` (the same
    settings), or ``changed`` (other settings, or an earlier run without a fingerprint: changes empty).
    """
    stored = read_fingerprint(output_dir)
    if stored is None and [n for n in output_dir_entries(output_dir) if n != FINGERPRINT_NAME]:
        return "changed", [], None  # an earlier run without a fingerprint, or a model no run wrote
    if not _earlier_outputs(output_dir):
        return "fresh", [], None
    changes = diff_fingerprints(stored.get("fingerprint", {}), fingerprint)
    if changes:
        return "changed", changes, stored
    return ("finished" if stored.get("finished") else "resume"), [], stored


def prepare_output_dir(model_args, data_args, args) -> OutputDirState:
    """Compare this run's fingerprint with the one in ``args.output_dir``, before any compute.

    Raises:
        ValueError: the directory holds an earlier run with other settings (each changed field is
            named with its old and new value), or one without a fingerprint; nothing is touched.
    """
    output_dir = args.output_dir
    fingerprint = run_fingerprint(model_args, data_args, args)
    if getattr(args, "overwrite_output_dir", False):
        if args.process_index == 0:
            removed = clear_model_outputs(output_dir)  # checkpoints, results, model files, pruning.json...
            if removed:
                logger.info("overwrite_output_dir: deleted %s in %s", ", ".join(removed), output_dir)
        return OutputDirState(output_dir, fingerprint, "fresh")
    status, changes, stored = compare_output_dir(output_dir, fingerprint)
    ways_on = (
        "Start afresh there with --overwrite_output_dir true (this deletes its checkpoints, results and model), "
        "or choose another --output_dir."
    )
    if status == "changed" and stored is None and not _earlier_outputs(output_dir):
        refuse_foreign_output_dir(output_dir, FINGERPRINT_NAME, "distill train")
    if status == "changed" and stored is None:
        raise ValueError(
            f"output_dir={output_dir!r} holds an earlier run ({', '.join(_earlier_outputs(output_dir))}) without "
            f"{FINGERPRINT_NAME}, so whether it had these settings is unknown and it is not resumed. {ways_on}"
        )
    if status == "changed":
        lines = "\n".join(f"  {name}: {_short(old)} -> {_short(new)}" for name, old, new in changes)
        raise ValueError(
            f"output_dir={output_dir!r} holds a run with different settings ({FINGERPRINT_NAME}), so it is not "
            f"resumed; changed field(s), earlier -> now:\n{lines}\n{ways_on}"
        )
    results = None
    if status == "finished" and os.path.isfile(os.path.join(output_dir, "all_results.json")):
        with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as f:
            results = json.load(f)
    return OutputDirState(output_dir, fingerprint, status, results or ({} if status == "finished" else None))
