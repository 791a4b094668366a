"""Offline teacher cache: run the teacher once, train a whole ladder of students from its top-k.

``distill cache-teacher --config recipe.yaml --cache_dir DIR [--top_k 32] [--cache_dtype float16]``
runs the recipe's teacher over the recipe's tokenized *training* split and writes ``DIR`` as an HF
``datasets`` Arrow dataset (``save_to_disk``) plus ``DIR/teacher_cache.json`` (the manifest) and
``DIR/tokenizer/`` (the tokenizer the cache was made with). ``distill train --config recipe.yaml
--teacher_cache DIR`` then trains with no teacher model loaded.

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

The loss (:func:`cached_distillation_loss`). The teacher's distribution is coarsened to ``k + 1``
buckets: the k cached tokens and one "other" bucket. The student's distribution is coarsened the
same way (its top-k-token log-probs gathered, its "other" bucket a log-sum-exp of its log-probs
outside the teacher's top-k). The divergence (forward KL, reverse KL or JSD) is taken between the
two ``(k+1)``-way distributions, times ``T^2``, with the same denominator and CE term as
:func:`distill.losses.distillation_loss`. With k = V it *is* the online loss (tested to 1e-5 with
float32 storage). With k < V it is an approximation, and never an overestimate: all three kinds
are f-divergences, which cannot grow under coarsening (data-processing inequality). The stored
16-bit log-probs are renormalised over the k + 1 buckets before use.

Measured approximation error (``benchmarks/bench_teacher_cache.py``, results in
``benchmarks/results/teacher_cache.md``): tiny recipe, 2048-token BPE, ~2M-parameter Llama teacher
trained 150 steps on the python-docs corpus, T = 2, forward KL, float16 storage; relative error of
kd_loss vs the online loss over 64 training blocks of 128 tokens (negative = underestimate):

=====================================  ===============  ========  ========  ========  =======
student                                online kd_loss   k = 8     k = 32    k = 128   k = V
=====================================  ===============  ========  ========  ========  =======
at initialisation                      1.3702           -81.5 %   -64.7 %   -42.4 %   -0.00 %
after 60 steps trained from k=32 cache 0.6898           -98.0 %   -94.9 %   -81.9 %   +0.00 %
=====================================  ===============  ========  ========  ========  =======

So on this weak, high-entropy teacher (at T = 2 its mass is spread over hundreds of tokens) the
top-k loss is a strong underestimate: the rest bucket supervises only the *total* tail mass, not
its shape, and a student trained from the cache matches the k + 1 buckets while the tail stays
unsupervised (hence the larger error after training). Prefer large k (or float32 storage and
k = V for small vocabularies) for such teachers; peaked, well-trained teachers or T = 1 should
lose less (not measured here). The throughput cost is small: training from a k = 32 cache ran at 0.98x plain student
training (no KD) in the same benchmark, and the online teacher at 0.49x.

Limitations: causal LM only; forward KL uses a fused kernel with an analytic gradient
(:class:`_CachedForwardKL`, about three ``[N, V]`` float32 tensors, not chunked over positions like
:mod:`distill.chunked_loss`); reverse KL and JSD use plain autograd (several ``[N, V]`` copies).
``distill cache-teacher`` caches the training split only, so evaluation under a cache reports the
student's CE (``eval_kd_loss`` only if an eval set carries cache columns, no ``eval_teacher_loss``);
the training temperature must equal the cached one (the rest bucket cannot be re-tempered); the
model card (distill/model_card.py keys on ``trainer.teacher``) does not yet say the student was
distilled from a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .losses import DistillationLossOutput, _kl_sum, check_kd_kind

CACHE_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_logprob")
MANIFEST_NAME = "teacher_cache.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
VALUE_DTYPES = ("float16", "float32")

__all__ = [
    "CACHE_COLUMNS", "TeacherCache", "TeacherCacheCollator", "build_teacher_cache", "cached_distillation_loss",
    "data_fingerprint", "tokenizer_fingerprint", "teacher_topk",
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
# Teacher side: top-k + rest bucket
# ----------------------------------------------------------------------------------------------
def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float, vocab_size: Optional[int] = None):
    """``(ids int32 [..., k], logprobs float32 [..., k], rest float32 [...])`` of ``log_softmax(z / T)``.

    ``rest`` is the log-sum-exp of the log-probs outside the top-k (``-inf`` when k = V).
    """
    if vocab_size is not None:
        teacher_logits = teacher_logits[..., :vocab_size]
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    k = min(k, log_p.shape[-1])
    values, ids = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return ids.to(torch.int32), values, rest


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------
def _bucket_log_probs(student_logits, ids, temperature):
    """Student log-probs over the teacher's top-k tokens plus one bucket for all other tokens."""
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    top = log_q.gather(-1, ids)
    # The finite fill (not -inf) keeps the gradient of an all-masked row (k = V) finite; that row's
    # bucket then has probability exp(finfo.min) = 0, exactly like the teacher's -inf.
    rest = log_q.scatter(-1, ids, torch.finfo(log_q.dtype).min).logsumexp(-1, keepdim=True)
    return torch.cat([top, rest], dim=-1)


class _CachedForwardKL(torch.autograd.Function):
    """Forward KL over the (k+1) buckets plus CE, with the gradient computed analytically in forward.

    With ``z = s / T``, ``q = softmax(z)``, the teacher's bucket probabilities ``p_i`` (top-k) and
    ``p_r`` (rest), and the student's rest mass ``q_r = 1 - sum_topk q`` (summed in float64):
    ``dKL/dz_j = q_j - p_j`` for j in the top-k and ``q_j (1 - p_r / q_r)`` otherwise, i.e. the
    student is pulled towards the teacher's top-k, and the rest mass is matched as a whole while
    its split among the other tokens is left as the student has it. CE adds ``softmax(s) - onehot``.
    A few fused passes over ``[n, V]`` (two softmaxes, two scaled adds), so that training from the
    cache costs little more than plain CE.

    Numerics: log-probs are taken as ``log(max(prob, tiny))`` of the softmax, so a top-k token or
    label to which the student gives less than ~1e-38 (a logit gap above ~87 T) counts as 1e-38; a
    student rest mass below the float32 rounding of the sum (~1e-7) counts as 0 (only when the
    teacher's rest mass is 0 too, e.g. k = V, is this exact; otherwise the term is large and finite).
    """

    @staticmethod
    def forward(ctx, s, ids, log_pt, labels, temperature, alpha, denom, need_grad):
        T = temperature
        tiny = torch.finfo(s.dtype).tiny
        q = torch.softmax(s / T if T != 1.0 else s, dim=-1)
        q_top = q.gather(-1, ids)
        P = None
        ce = s.new_zeros(())
        if labels is not None:
            if T != 1.0:
                P = torch.softmax(s, dim=-1)
            else:
                P = q.clone() if need_grad and alpha != 1.0 else q
            ce = -P.gather(-1, labels[:, None]).clamp_min(tiny).log().sum()
        q_r = (1.0 - q_top.double().sum(-1, keepdim=True)).clamp_min(0.0).to(q.dtype)
        log_q = torch.cat([q_top.clamp_min(tiny).log(), q_r.clamp_min(tiny).log()], dim=-1)
        p = log_pt.exp()
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        kd_sum = (p * torch.where(p > 0, log_pt - log_q, zero)).sum()
        ctx.has_grad = bool(need_grad)
        if need_grad:
            coef = alpha * T / denom
            ratio = torch.where(q_r > 0, p[:, -1:] / q_r.clamp_min(tiny), zero)
            grad = q.mul_((1.0 - ratio) * coef)  # q is consumed: the KD gradient outside the top-k
            grad.scatter_(-1, ids, (q_top - p[:, :-1]) * coef)
            if labels is not None and alpha != 1.0:
                P[torch.arange(P.shape[0], device=P.device), labels] -= 1.0
                grad.add_(P, alpha=(1.0 - alpha) / denom)
            ctx.save_for_backward(grad)
        kd_sum = kd_sum.detach()
        loss = (alpha * T * T * kd_sum + (1.0 - alpha) * ce) / denom
        ctx.mark_non_differentiable(kd_sum, ce)
        return loss, kd_sum, ce

    @staticmethod
    def backward(ctx, grad_loss, _kd, _ce):
        if not ctx.has_grad:
            raise RuntimeError("cached_distillation_loss: no gradient was computed (the input did not require grad).")
        (grad,) = ctx.saved_tensors
        # The graph is backpropagated once (as in distill.chunked_loss): scale the buffer in place.
        return grad.mul_(grad_loss), None, None, None, None, None, None, None


def cached_distillation_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    rest_logprob: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    alpha: float,
    temperature: float,
    kind: str = "forward_kl",
    jsd_beta: float = 0.5,
    ignore_index: int = -100,
    num_items_in_batch: Optional[int | torch.Tensor] = None,
    vocab_size: Optional[int] = None,
    fused_off: bool = False,
) -> DistillationLossOutput:
    """:func:`distill.losses.distillation_loss` with the teacher given as cached top-k log-probs.

    Args:
        student_logits: ``[..., V]`` student logits, positions already aligned (shifted).
        topk_ids: ``[..., k]`` integer ids of the teacher's top-k tokens at each position.
        topk_logprobs: ``[..., k]`` their log-probabilities at ``temperature`` (any float dtype).
        rest_logprob: ``[...]`` log of the teacher's mass outside the top-k (``-inf`` if none).
        vocab_size: the real vocabulary; student logits are sliced to it (the "other" bucket covers
            real tokens only).
        fused_off: forward KL is computed by a fused kernel with an analytic gradient
            (:class:`_CachedForwardKL`; ``kd_loss`` and ``ce_loss`` are then returned detached, only
            ``loss`` is differentiable, as in :mod:`distill.chunked_loss`); ``True`` uses plain
            autograd instead (the reference the kernel is tested against). reverse_kl and jsd always
            use autograd.
        Other arguments: as in :func:`distill.losses.distillation_loss`.

    The divergence is computed between the ``(k+1)``-way coarsenings of both distributions (see the
    module docstring); exact when k = V.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1].")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be greater than 0.")
    check_kd_kind(kind)
    if labels is None and alpha != 1.0:
        raise ValueError(f"alpha={alpha} < 1 needs labels for the cross-entropy term; pass labels or set alpha=1.")
    if vocab_size is not None:
        student_logits = student_logits[..., :vocab_size]
    lead = student_logits.shape[:-1]
    if topk_ids.shape[:-1] != lead or topk_logprobs.shape != topk_ids.shape or rest_logprob.shape != lead:
        raise ValueError(
            f"Cached teacher tensors (ids {tuple(topk_ids.shape)}, logprobs {tuple(topk_logprobs.shape)}, rest "
            f"{tuple(rest_logprob.shape)}) do not align with the student logits {tuple(student_logits.shape)}."
        )
    vocab = student_logits.shape[-1]
    flat_s = student_logits.reshape(-1, vocab)
    if labels is None:
        valid = torch.ones(flat_s.shape[0], dtype=torch.bool, device=flat_s.device)
        flat_labels = None
    else:
        if labels.shape != lead:
            raise ValueError(f"labels {tuple(labels.shape)} must have the leading shape of the logits {tuple(lead)}.")
        flat_labels = labels.reshape(-1)
        valid = flat_labels != ignore_index
    num_valid = valid.sum()
    denom = num_valid.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    if isinstance(denom, torch.Tensor):
        denom = denom.to(device=flat_s.device)
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s_valid = flat_s[valid].to(dtype)
    k = topk_ids.shape[-1]
    ids = topk_ids.reshape(-1, k)[valid].to(device=flat_s.device, dtype=torch.long)
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(f"Cached token id {int(ids.max())} is outside the student's vocabulary ({vocab}).")
    log_pt = torch.cat(
        [topk_logprobs.reshape(-1, k)[valid].to(flat_s.device, dtype), rest_logprob.reshape(-1, 1)[valid].to(flat_s.device, dtype)],
        dim=-1,
    )
    log_pt = log_pt - log_pt.logsumexp(-1, keepdim=True)  # renormalise 16-bit storage over k + 1 buckets
    if kind == "forward_kl" and not fused_off:
        labels_valid = flat_labels[valid] if flat_labels is not None else None
        need_grad = torch.is_grad_enabled() and s_valid.requires_grad
        loss, kd_sum, ce_sum = _CachedForwardKL.apply(
            s_valid, ids, log_pt, labels_valid, float(temperature), float(alpha), float(denom), need_grad
        )
        return DistillationLossOutput(
            loss=loss, kd_loss=temperature**2 * kd_sum / denom, ce_loss=ce_sum / denom, num_valid=num_valid
        )
    log_ps = _bucket_log_probs(s_valid, ids, temperature)
    if kind == "forward_kl":
        div = _kl_sum(log_pt, log_ps)
    elif kind == "reverse_kl":
        div = _kl_sum(log_ps, log_pt)
    else:
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta={jsd_beta} must be strictly between 0 and 1.")
        beta = torch.tensor(jsd_beta, dtype=dtype, device=log_ps.device)
        log_m = torch.logsumexp(torch.stack([log_pt + torch.log(beta), log_ps + torch.log1p(-beta)]), dim=0)
        div = beta * _kl_sum(log_pt, log_m) + (1 - beta) * _kl_sum(log_ps, log_m)
    kd_loss = temperature**2 * div.sum() / denom
    if flat_labels is not None:
        ce_sum = torch.nn.functional.cross_entropy(s_valid, flat_labels[valid], reduction="sum")
        ce_loss = ce_sum / denom
    else:
        ce_loss = kd_loss.new_zeros(())
    loss = alpha * kd_loss + (1.0 - alpha) * ce_loss
    return DistillationLossOutput(loss=loss, kd_loss=kd_loss, ce_loss=ce_loss, num_valid=num_valid)


# ----------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------
class TeacherCacheCollator:
    """Wraps a causal-LM collator and pads the cache columns to the batch's shifted width.

    The base collator sees the examples without the cache columns. Cached tensors get width
    ``input_ids.shape[1] - 1`` (positions past an example's end are padding: their labels are -100,
    so the values there, id 0 / log-prob 0, are never read). Batches without cache columns (an eval
    set that was not cached) pass through unchanged.
    """

    def __init__(self, base, k: int):
        self.base = base
        self.k = int(k)

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
        for i, e in enumerate(examples):
            e_ids = np.asarray(e[CACHE_COLUMNS[0]], dtype=np.int32).reshape(-1, k)
            m = e_ids.shape[0]
            if m:
                ids[i, :m] = e_ids
                logprobs[i, :m] = np.asarray(e[CACHE_COLUMNS[1]], dtype=np.float32).reshape(-1, k)
                rest[i, :m] = np.asarray(e[CACHE_COLUMNS[2]], dtype=np.float32)
        batch.update({CACHE_COLUMNS[0]: torch.from_numpy(ids), CACHE_COLUMNS[1]: torch.from_numpy(logprobs),
                      CACHE_COLUMNS[2]: torch.from_numpy(rest)})
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
            raise ValueError(f"teacher_cache={self.path!r} holds {self.manifest.get('task')} targets, not {task}.")
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
        if dataset is None or "input_ids" not in getattr(dataset, "column_names", []) or not hasattr(dataset, "__len__"):
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
) -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` (causal LM: input_ids, labels) and write the cache.

    Rows are written in dataset order through an Arrow writer (never all in memory), then saved
    with ``save_to_disk`` next to the manifest and the tokenizer.
    """
    import numpy as np
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    from .tasks import CausalLMCollator

    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"cache_dtype={value_dtype!r} is unknown: use one of {', '.join(VALUE_DTYPES)}.")
    if k < 1:
        raise ValueError(f"top_k={k} must be a positive integer.")
    if os.path.exists(os.path.join(output_dir, MANIFEST_NAME)) or (os.path.isdir(output_dir) and os.listdir(output_dir)):
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
    os.makedirs(output_dir, exist_ok=True)
    # Written beside output_dir (save_to_disk cannot copy a dataset into its own folder), then removed.
    tmp_dir = tempfile.mkdtemp(prefix=".teacher-cache-", dir=os.path.dirname(os.path.abspath(output_dir)))
    tmp = os.path.join(tmp_dir, "cache.arrow")
    writer = ArrowWriter(features=features, path=tmp)
    try:
        for batch in source.iter(batch_size=batch_size):
            examples = [{c: batch[c][i] for c in cols} for i in range(len(batch["input_ids"]))]
            inputs = collate(examples)
            with torch.no_grad():
                logits = teacher(input_ids=inputs["input_ids"].to(device),
                                 attention_mask=inputs["attention_mask"].to(device)).logits[:, :-1]
                ids, values, rest = teacher_topk(logits, k, temperature, vocab_size)
            ids, values, rest = ids.cpu().numpy(), values.cpu().numpy().astype(np_dtype), rest.cpu().numpy().astype(np_dtype)
            out = {c: batch[c] for c in cols}
            lengths = [len(x) - 1 for x in batch["input_ids"]]
            out[CACHE_COLUMNS[0]] = [ids[i, :n].reshape(-1) for i, n in enumerate(lengths)]
            out[CACHE_COLUMNS[1]] = [values[i, :n].reshape(-1) for i, n in enumerate(lengths)]
            out[CACHE_COLUMNS[2]] = [rest[i, :n] for i, n in enumerate(lengths)]
            writer.write_batch(out)
        writer.finalize()
    finally:
        writer.close()
    written = Dataset.from_file(tmp)
    written.save_to_disk(output_dir)
    del written
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tokenizer.save_pretrained(os.path.join(output_dir, TOKENIZER_DIR))
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
    with open(os.path.join(output_dir, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return TeacherCache.load(output_dir)


# ----------------------------------------------------------------------------------------------
# `distill cache-teacher`
# ----------------------------------------------------------------------------------------------
CACHE_USAGE = """usage: distill cache-teacher --config RECIPE --cache_dir DIR [--top_k K] [--cache_dtype float16|float32]
                             [--cache_batch_size N] [any distill train field, e.g. --max_train_samples 512]

Runs the recipe's teacher (teacher_model_name_or_path) once over the recipe's tokenized training
split and writes DIR: an Arrow dataset with the top-K log-probs per token at the recipe's
temperature, one bucket for the remaining mass, a manifest (teacher_cache.json) and the tokenizer.
Then: distill train --config RECIPE --teacher_cache DIR (no teacher is loaded).
"""


def _pop_option(argv: list[str], name: str, default=None):
    for i, arg in enumerate(argv):
        if arg == name or arg.startswith(name + "="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
                del argv[i]
            else:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                value = argv[i + 1]
                del argv[i : i + 2]
            return value
    return default


def main(argv: Optional[list[str]] = None) -> dict:
    """`distill cache-teacher`: write a teacher cache for a recipe's training split."""
    import logging

    argv = list(sys.argv[2:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(CACHE_USAGE)
        return {}
    cache_dir = _pop_option(argv, "--cache_dir")
    if not cache_dir:
        raise ValueError("cache-teacher needs --cache_dir DIR (where the cache is written).")
    k = int(_pop_option(argv, "--top_k", "32"))
    value_dtype = _pop_option(argv, "--cache_dtype", "float16")
    batch_size = _pop_option(argv, "--cache_batch_size")
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"cache_dtype={value_dtype!r} is unknown: use one of {', '.join(VALUE_DTYPES)}.")
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
        raise ValueError(f"cache_dir={cache_dir!r} is not empty; choose a new directory or delete it.")

    import transformers

    from .data import build_datasets
    from .tasks import get_task
    from .teacher import check_same_tokenizer, load_teacher
    from .train import _check_before_compute, _load_processing_class, parse_args

    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.task != "causal-lm":
        raise ValueError(f"cache-teacher supports task causal-lm only (the recipe has task={args.task!r}).")
    if not args.teacher_model_name_or_path:
        raise ValueError("cache-teacher needs teacher_model_name_or_path in the recipe or on the command line.")
    args.alpha = max(args.alpha, 1e-6)  # only so that _check_before_compute checks the teacher path
    _check_before_compute(model_args, data_args, args)
    task = get_task(args.task)
    transformers.set_seed(args.seed)
    tokenizer = _load_processing_class(model_args, data_args, args, task)
    bundle = build_datasets(data_args, task.name, tokenizer, seed=args.seed)
    if bundle.train is None or not hasattr(bundle.train, "__len__"):
        raise ValueError("cache-teacher needs a map-style training split (streaming is not supported).")
    teacher, teacher_tok = load_teacher(args.teacher_model_name_or_path, task, args)
    check_same_tokenizer(tokenizer, teacher_tok, teacher, teacher)
    teacher.to(args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cache = build_teacher_cache(
        teacher, bundle.train, cache_dir, tokenizer=tokenizer, k=k, temperature=args.temperature,
        teacher_name=args.teacher_model_name_or_path, value_dtype=value_dtype,
        batch_size=int(batch_size or args.per_device_eval_batch_size), pad_token_id=pad if pad is not None else 0,
        device=args.device,
    )
    m = cache.manifest
    print(f"wrote teacher cache {cache_dir}: {m['data']['num_examples']} examples, {m['data']['num_tokens']} tokens, "
          f"k={m['k']}, T={m['temperature']}, {m['value_dtype']}")
    return m
