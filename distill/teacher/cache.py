"""Offline teacher cache: run the teacher once, train a whole ladder of students from its top-k.

``distill cache-teacher --config recipe.yaml --cache_dir DIR [--top_k 32] [--cache_dtype float16]``
(:mod:`distill.teacher.cache_cli`) runs the recipe's teacher over the
recipe's tokenized *training* split and writes ``DIR`` as an HF ``datasets`` Arrow dataset
(``save_to_disk``) plus ``DIR/teacher_cache.json`` (the manifest) and ``DIR/tokenizer/`` (the
tokenizer the cache was made with). ``distill train --config recipe.yaml --teacher_cache DIR``
then trains with no teacher model loaded.

What one row holds (causal LM only), for an example of ``L`` tokens:

* ``input_ids``, ``labels``: the tokenized example, as built by :func:`distill.data.build_datasets`.
* ``teacher_topk_ids``: ``[L - 1, k]`` int32, the teacher's k most likely next tokens at each
  *shifted* position ``t`` (logits at ``t`` predict the token at ``t + 1``), most likely first.
  Stored flattened row-major (a flat list of ``(L - 1) * k`` values; ``k`` is in the manifest),
  because Arrow -> numpy of flat lists is ~10x faster than of nested lists, which matters for
  data-loading throughput.
* ``teacher_topk_logprobs``: ``[L - 1, k]`` (flattened likewise) their log-probabilities ``log softmax(z / T)`` at the
  distillation temperature ``T``, stored as IEEE float16 by default (``--cache_dtype float32`` for
  exact storage; bfloat16 is not offered: for log-probabilities in ``[-60, 0]`` float16's 11-bit
  mantissa is 8x finer). Absolute rounding error is at most ``|x| * 2^-11`` (0.004 at x = -8).
* ``teacher_rest_logprob``: ``[L - 1]``, same dtype, ``log(1 - sum_topk p)``, computed as a
  log-sum-exp over the tokens *outside* the top-k (so it does not cancel); ``-inf`` when k = V.

The manifest names the teacher, the tokenizer (name, ``len(tokenizer)`` and a SHA-256 of its sorted
vocabulary), the data (number of examples and tokens, SHA-256 over every example's input_ids and
labels, in order), k, T and the dtypes. :meth:`TeacherCache.attach` refuses a cache whose
tokenizer fingerprint, data fingerprint, temperature or task does not match, naming the field and
the fix. Cache columns are *added to the training dataset* (row i of the cache is row i of the
data, checked by the data fingerprint) and padded by :class:`TeacherCacheCollator`, so they travel
with their example through the Trainer's shuffling.

The loss that trains from these columns is :func:`~distill.losses.cached.cached_distillation_loss`
(re-exported here, like :func:`~distill.losses.cached.teacher_topk`, which computes them): the
divergence between the teacher's and the student's distributions coarsened to ``k + 1`` buckets
(the k cached tokens and one "other" bucket). It is exact at k = V and, for k < V, never an
overestimate; on a weak, high-entropy teacher it is a strong underestimate, so prefer large k there.
:mod:`distill.losses.cached` gives the details and the measured approximation error.

Limitations: causal LM only (the loss's memory use is described in :mod:`distill.losses.cached`).
``distill cache-teacher`` caches the training split only, so evaluation under a cache reports the
student's CE (``eval_kd_loss`` only if an eval set carries cache columns, no ``eval_teacher_loss``);
the training temperature must equal the cached one (the rest bucket cannot be re-tempered); the
model card (distill/utils/model_card.py keys on ``trainer.teacher``) does not yet say the student was
distilled from a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Optional

import torch

from distill.trainer.checkpoints import process_alive

from ..losses.cached import cached_distillation_loss, teacher_topk
from ..losses.divergences import check_kd_kind

CACHE_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_logprob")
logger = logging.getLogger("distill")
MANIFEST_NAME = "teacher_cache.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
VALUE_DTYPES = ("float16", "float32")

__all__ = [
    "CACHE_COLUMNS",
    "TeacherCache",
    "TeacherCacheCollator",
    "build_teacher_cache",
    "cached_distillation_loss",
    "data_fingerprint",
    "tokenizer_fingerprint",
    "teacher_topk",
]


# ----------------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's sorted ``token -> id`` mapping (added tokens included)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def data_fingerprint(dataset) -> dict:
    """SHA-256 over every example's ``input_ids`` and ``labels`` (in order), with counts.

    Row order matters: cache row i must be data row i.
    """
    import numpy as np

    h = hashlib.sha256()
    rows = tokens = 0
    cols = ["input_ids"] + (["labels"] if "labels" in dataset.column_names else [])
    for batch in dataset.select_columns(cols).with_format(None).iter(batch_size=1024):
        for i, ids in enumerate(batch["input_ids"]):
            ids = np.asarray(ids, dtype=np.int64)
            h.update(len(ids).to_bytes(8, "little"))
            h.update(ids.tobytes())
            if "labels" in batch:
                h.update(np.asarray(batch["labels"][i], dtype=np.int64).tobytes())
            rows += 1
            tokens += len(ids)
    return {"sha256": h.hexdigest(), "num_examples": rows, "num_tokens": tokens}


# ----------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------
class TeacherCacheCollator:
    """Wraps a causal-LM collator and pads the cache columns to the batch's shifted width.

    The base collator sees the examples without the cache columns. Cached tensors get width
    ``input_ids.shape[1] - 1`` and each example's rows start at its first token, found from the
    ``attention_mask``, so right and left padding both line up (padding positions have label -100,
    so the values there, id 0 / log-prob 0, are never read). Batches without cache columns (an eval
    set that was not cached) pass through unchanged.
    """

    def __init__(self, base, k: int):
        self.base = base
        self.k = int(k)

    @staticmethod
    def _starts(batch: dict, n: int) -> list[int]:
        """Where each example's first token sits: after its left padding (0 for right padding, and
        when the base collator gives no attention mask)."""
        mask = batch.get("attention_mask")
        if mask is None:
            return [0] * n
        return [int(row.nonzero()[0]) if row.any() else 0 for row in torch.as_tensor(mask).bool()]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import numpy as np

        if not examples or CACHE_COLUMNS[0] not in examples[0]:
            return self.base(examples)
        batch = self.base([{k: v for k, v in e.items() if k not in CACHE_COLUMNS} for e in examples])
        width = batch["input_ids"].shape[1] - 1
        k = self.k
        n = len(examples)
        ids = np.zeros((n, width, k), dtype=np.int32)
        logprobs = np.zeros((n, width, k), dtype=np.float32)
        rest = np.zeros((n, width), dtype=np.float32)
        starts = self._starts(batch, n)
        for i, e in enumerate(examples):
            e_ids = np.asarray(e[CACHE_COLUMNS[0]], dtype=np.int32).reshape(-1, k)
            m = e_ids.shape[0]
            if m:
                a = starts[i]
                if a + m > width:
                    raise ValueError(
                        f"Example {i} of the batch has {m} cached positions but only {width - a} fit after its "
                        "padding: the collator must keep every token of a cached example (no truncation)."
                    )
                ids[i, a : a + m] = e_ids
                logprobs[i, a : a + m] = np.asarray(e[CACHE_COLUMNS[1]], dtype=np.float32).reshape(-1, k)
                rest[i, a : a + m] = np.asarray(e[CACHE_COLUMNS[2]], dtype=np.float32)
        batch.update(
            {
                CACHE_COLUMNS[0]: torch.from_numpy(ids),
                CACHE_COLUMNS[1]: torch.from_numpy(logprobs),
                CACHE_COLUMNS[2]: torch.from_numpy(rest),
            }
        )
        return batch


# ----------------------------------------------------------------------------------------------
# The cache on disk
# ----------------------------------------------------------------------------------------------
@dataclass
class TeacherCache:
    """A cache directory: the Arrow dataset and its manifest."""

    path: str
    manifest: dict
    dataset: Any = None

    @classmethod
    def load(cls, path: str, *, with_data: bool = True) -> "TeacherCache":
        path = os.path.expanduser(str(path))
        manifest_path = os.path.join(path, MANIFEST_NAME)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(
                f"teacher_cache={path!r} is not a teacher cache (no {MANIFEST_NAME} there); write one with "
                "`distill cache-teacher --config <recipe> --cache_dir <dir>`."
            )
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"teacher_cache={path!r} has format_version {manifest.get('format_version')!r}, this version "
                f"reads {FORMAT_VERSION}: rebuild it with `distill cache-teacher`."
            )
        dataset = None
        if with_data:
            from datasets import load_from_disk

            dataset = load_from_disk(path)
        return cls(path=path, manifest=manifest, dataset=dataset)

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.path, TOKENIZER_DIR)

    def check_settings(self, *, temperature: float, task: Optional[str] = "causal-lm") -> None:
        """Refuse a training temperature or task the cache was not made for (no data needed)."""
        if task is not None and task != self.manifest.get("task", "causal-lm"):
            raise ValueError(
                f"teacher_cache={self.path!r} holds {self.manifest.get('task')} targets, not {task}."
            )
        if abs(float(temperature) - self.temperature) > 1e-9:
            raise ValueError(
                f"temperature={temperature} does not match the teacher cache's temperature={self.temperature} "
                f"({self.path}): the cached log-probs and rest bucket are at that temperature. Train with "
                f"--temperature {self.temperature}, or rebuild the cache with `distill cache-teacher --temperature "
                f"{temperature}`."
            )

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            return
        want = self.manifest["tokenizer"]
        got = tokenizer_fingerprint(tokenizer)
        if got != want["fingerprint"] or len(tokenizer) != want["vocab_size"]:
            raise ValueError(
                f"The student's tokenizer ({len(tokenizer)} tokens) does not match teacher_cache {self.path!r} "
                f"(manifest field tokenizer.fingerprint: {want['vocab_size']} tokens of {want.get('name')!r}). "
                f"Use the cache's tokenizer (tokenizer_name_or_path={self.tokenizer_dir}) or rebuild the cache "
                "with the student's tokenizer."
            )

    def check_data(self, dataset) -> None:
        want = self.manifest["data"]
        if (
            dataset is None
            or "input_ids" not in getattr(dataset, "column_names", [])
            or not hasattr(dataset, "__len__")
        ):
            raise ValueError(
                "A teacher cache needs a map-style training dataset with an input_ids column (not a stream), "
                f"to check it against teacher_cache {self.path!r}."
            )
        got = data_fingerprint(dataset)
        if got["sha256"] != want["sha256"]:
            raise ValueError(
                f"The training data does not match teacher_cache {self.path!r} (manifest field data.sha256: "
                f"{want['num_examples']} examples / {want['num_tokens']} tokens cached, the training set has "
                f"{got['num_examples']} / {got['num_tokens']}, or the same counts with different tokens or order). "
                "Train with the recipe's data settings the cache was built from (dataset, block_size, packing, "
                "max_train_samples, seed), or rebuild the cache with `distill cache-teacher` on this recipe."
            )

    def attach(self, train_dataset, *, tokenizer=None, temperature: float, kind: str = "forward_kl"):
        """Verify everything, then return ``train_dataset`` with the cache columns added (numpy format)."""
        from datasets import concatenate_datasets

        check_kd_kind(kind)
        self.check_settings(temperature=temperature)
        self.check_tokenizer(tokenizer)
        self.check_data(train_dataset)
        if self.dataset is None:
            self.dataset = TeacherCache.load(self.path).dataset
        base = train_dataset.remove_columns([c for c in CACHE_COLUMNS if c in train_dataset.column_names])
        joined = concatenate_datasets([base, self.dataset.select_columns(list(CACHE_COLUMNS))], axis=1)
        return joined.with_format("numpy", columns=list(CACHE_COLUMNS), output_all_columns=True)


def _features(base_features, k: int, value_dtype: str):
    from datasets import Features, List, Value

    features = dict(base_features)
    features[CACHE_COLUMNS[0]] = List(Value("int32"))  # [L-1, k] flattened row-major
    features[CACHE_COLUMNS[1]] = List(Value(value_dtype))
    features[CACHE_COLUMNS[2]] = List(Value(value_dtype))
    return Features(features)


def build_teacher_cache(
    teacher,
    dataset,
    output_dir: str,
    *,
    tokenizer,
    k: int,
    temperature: float,
    teacher_name: str,
    value_dtype: str = "float16",
    batch_size: int = 8,
    pad_token_id: int = 0,
    device: Any = None,
    show_progress: bool = True,
) -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` (causal LM: input_ids, labels) and write the cache.

    Rows are written in dataset order through an Arrow writer (never all in memory), then saved
    with ``save_to_disk`` next to the manifest and the tokenizer. ``show_progress``: a progress bar over
    the sequences (`distill cache-teacher` shows it unless the recipe sets ``disable_tqdm``).
    """
    import numpy as np
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    from distill.trainer.tasks import CausalLMCollator

    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"cache_dtype={value_dtype!r} is unknown: use one of {', '.join(VALUE_DTYPES)}.")
    if k < 1:
        raise ValueError(f"top_k={k} must be a positive integer.")
    if os.path.exists(os.path.join(output_dir, MANIFEST_NAME)) or (
        os.path.isdir(output_dir) and os.listdir(output_dir)
    ):
        raise FileExistsError(f"cache_dir={output_dir!r} is not empty; choose a new directory or delete it.")
    vocab_size = len(tokenizer)
    k = min(k, vocab_size)
    np_dtype = np.float16 if value_dtype == "float16" else np.float32
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    teacher.eval()
    collate = CausalLMCollator(pad_token_id)
    cols = [c for c in ("input_ids", "labels") if c in dataset.column_names]
    source = dataset.select_columns(cols).with_format(None)
    features = _features(source.features, k, value_dtype)
    # Everything is written into a staging folder beside output_dir and renamed into place at the end,
    # so a run killed midway leaves no cache (a rerun starts clean), never a partial one.
    final = os.path.abspath(output_dir)
    staging = _fresh_staging(final)
    # The Arrow file is written beside the staging folder (save_to_disk cannot copy a dataset into its own folder).
    tmp_dir = f"{staging}-arrow"
    os.makedirs(tmp_dir)
    tmp = os.path.join(tmp_dir, "cache.arrow")
    writer = ArrowWriter(features=features, path=tmp)
    from tqdm.auto import tqdm

    progress = tqdm(total=len(source), desc="Teacher top-k", unit="seq", disable=not show_progress)
    try:
        for batch in source.iter(batch_size=batch_size):
            progress.update(len(batch["input_ids"]))
            examples = [{c: batch[c][i] for c in cols} for i in range(len(batch["input_ids"]))]
            inputs = collate(examples)
            with torch.no_grad():
                logits = teacher(
                    input_ids=inputs["input_ids"].to(device),
                    attention_mask=inputs["attention_mask"].to(device),
                ).logits[:, :-1]
                ids, values, rest = teacher_topk(logits, k, temperature, vocab_size)
            ids, values, rest = (
                ids.cpu().numpy(),
                values.cpu().numpy().astype(np_dtype),
                rest.cpu().numpy().astype(np_dtype),
            )
            out = {c: batch[c] for c in cols}
            lengths = [len(x) - 1 for x in batch["input_ids"]]
            out[CACHE_COLUMNS[0]] = [ids[i, :n].reshape(-1) for i, n in enumerate(lengths)]
            out[CACHE_COLUMNS[1]] = [values[i, :n].reshape(-1) for i, n in enumerate(lengths)]
            out[CACHE_COLUMNS[2]] = [rest[i, :n] for i, n in enumerate(lengths)]
            writer.write_batch(out)
        writer.finalize()
        progress.close()
    finally:
        writer.close()
    written = Dataset.from_file(tmp)
    written.save_to_disk(staging)
    del written
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tokenizer.save_pretrained(os.path.join(staging, TOKENIZER_DIR))
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": "causal-lm",
        "teacher": teacher_name,
        "tokenizer": {
            "name": getattr(tokenizer, "name_or_path", None) or teacher_name,
            "vocab_size": vocab_size,
            "fingerprint": tokenizer_fingerprint(tokenizer),
        },
        "data": data_fingerprint(dataset),
        "k": k,
        "temperature": float(temperature),
        "value_dtype": value_dtype,
        "index_dtype": "int32",
        "columns": list(CACHE_COLUMNS),
        "layout": "teacher_topk_ids / teacher_topk_logprobs: [L-1, k] flattened row-major; teacher_rest_logprob: [L-1]",
        "positions": "shifted: row t of an example of L tokens is the teacher's prediction of token t+1 (L-1 rows)",
        "rest_bucket": "log(1 - sum of the top-k probabilities), as a log-sum-exp over the other tokens",
    }
    with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    if os.path.isdir(final):
        os.rmdir(final)  # empty (checked above)
    os.replace(staging, final)
    return TeacherCache.load(output_dir)


def _fresh_staging(final: str) -> str:
    """``.<name>.partial-<pid>`` beside ``final``, after removing those of runs that were killed."""
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{name}.partial-"
    for entry in os.listdir(parent):
        pid = entry[len(prefix) :].split("-")[0]
        if entry.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            logger.warning("Removing %s, left by a teacher-cache run that was interrupted.", entry)
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    staging = os.path.join(parent, f"{prefix}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging
