"""Data-augmentation distillation: augment training batches on the fly, in the collator.

:class:`AugmentingCollator` wraps the task's collator. In each training batch it picks a fraction
of the examples (``augment_fraction``) and augments them; the batch carries a boolean
``augmented`` row mask. Teacher and student see the *same* augmented input (the batch is augmented
before either model runs: "function matching", Beyer et al. 2022). On augmented rows the loss is
the distillation term alone (their labels may no longer hold), on clean rows the usual
``alpha * KD + (1 - alpha) * CE``; both share the Trainer's denominator (:func:`augmented_kd_loss`),
so accumulation stays exact.

Augmentations (``augmentations``, with their strengths):

* text (causal-lm, seq-cls), on real non-special tokens: ``token_replace`` (each token, with
  probability ``augment_token_prob``, becomes a random non-special token of the vocabulary),
  ``span_mask`` (spans of ``augment_span_length`` tokens, starting with probability
  ``augment_token_prob``, become the mask token, else the unk token), ``token_drop`` (each token
  is deleted with probability ``augment_token_prob``; the row is re-padded).
* images (image-cls), on ``pixel_values``: ``flip`` (horizontal, probability 0.5),
  ``resized_crop`` (a random crop of ``augment_crop_scale``..1 of the area, aspect 3/4..4/3,
  resized back), ``mixup`` and ``cutmix`` with another image of the batch (``Beta(a, a)`` mixing,
  ``a = augment_mix_alpha``).

Seeding: the random draws of an example are a function of the run's seed, the epoch and the
example's features (a hash), never of how many batches were drawn before, of its padding or of the
other examples in its batch (except the partner image of mixup/cutmix). So a run resumed from a
checkpoint sees the same augmented batches as an uninterrupted one, and micro-batching with
gradient accumulation augments exactly like one large batch.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Optional

import numpy as np
import torch
from transformers import TrainerCallback

TEXT_AUGMENTATIONS = ("token_replace", "span_mask", "token_drop")
IMAGE_AUGMENTATIONS = ("flip", "resized_crop", "mixup", "cutmix")
DEFAULT_AUGMENTATIONS = {
    "causal-lm": ("token_replace",),
    "seq-cls": ("token_replace",),
    "image-cls": ("flip", "resized_crop"),
}
AUGMENTED_KEY = "augmented"


def check_augmentations(names, task: Optional[str]) -> tuple[str, ...]:
    """The augmentations to use for ``task`` (its defaults when ``names`` is empty); a clear error for
    an unknown one or one that does not apply to the task."""
    known = TEXT_AUGMENTATIONS + IMAGE_AUGMENTATIONS
    for name in names or ():
        if name not in known:
            raise ValueError(f"augmentations: {name!r} is unknown; choose from {', '.join(known)}.")
    if task is None:
        return tuple(names or ())
    fits = IMAGE_AUGMENTATIONS if task == "image-cls" else TEXT_AUGMENTATIONS
    wrong = [n for n in names or () if n not in fits]
    if wrong:
        raise ValueError(
            f"augmentations {wrong} do not apply to task {task!r}; for it choose from {', '.join(fits)}."
        )
    return tuple(names) if names else DEFAULT_AUGMENTATIONS[task]


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def example_seed(seed: int, epoch: int, example: dict) -> int:
    """The random seed of one example's augmentation: a hash of the run's seed, the epoch and the example's
    features (not of its position, padding or batch), so any batching and any resume draw the same."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8)
    for key in sorted(example):
        digest.update(str(key).encode())
        _feed(digest, example[key])
    return int.from_bytes(digest.digest(), "little")


class AugmentingCollator:
    """Wraps a collator; augments a seeded random ``fraction`` of each batch and marks those rows.

    Args:
        base: the task's collator (its output is augmented).
        task: ``causal-lm``, ``seq-cls`` or ``image-cls``.
        augmentations: names from :data:`TEXT_AUGMENTATIONS` / :data:`IMAGE_AUGMENTATIONS`.
        fraction: probability that an example is augmented.
        tokenizer: text tasks: the tokenizer (vocabulary size, special, pad, mask and unk ids).
        token_prob, span_length, crop_scale, mix_alpha: the strengths (see the module docstring).
        seed: the run's seed. ``epoch`` is set by :class:`AugmentEpochCallback`.
    """

    def __init__(
        self,
        base: Callable,
        *,
        task: str,
        augmentations,
        fraction: float,
        tokenizer: Any = None,
        token_prob: float = 0.15,
        span_length: int = 3,
        crop_scale: float = 0.5,
        mix_alpha: float = 1.0,
        seed: int = 0,
    ):
        self.base, self.task, self.fraction, self.seed, self.epoch = base, task, fraction, seed, 0
        self.augmentations = check_augmentations(augmentations, task)
        self.token_prob, self.span_length = token_prob, span_length
        self.crop_scale, self.mix_alpha = crop_scale, mix_alpha
        if task != "image-cls":
            self._init_text(tokenizer)

    def _init_text(self, tokenizer) -> None:
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise ValueError("Text augmentations need the tokenizer (processing_class) for the vocabulary.")
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        self.replacement_ids = torch.tensor(
            [i for i in range(len(tokenizer)) if i not in special], dtype=torch.long
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.left_padded = getattr(tokenizer, "padding_side", "right") == "left"
        self.mask_id = (
            tokenizer.mask_token_id
            if getattr(tokenizer, "mask_token_id", None) is not None
            else getattr(tokenizer, "unk_token_id", None)
        )
        if "span_mask" in self.augmentations and self.mask_id is None:
            raise ValueError(
                "augmentations: span_mask needs a tokenizer with a mask or unk token; use "
                "token_replace or token_drop instead."
            )

    def __call__(self, examples: list) -> dict:
        batch = dict(self.base(examples))
        rngs = [np.random.default_rng(example_seed(self.seed, self.epoch, dict(e))) for e in examples]
        rows = torch.tensor([bool(rng.random() < self.fraction) for rng in rngs], dtype=torch.bool)
        if bool(rows.any()):
            if self.task == "image-cls":
                batch["pixel_values"] = augment_images(batch["pixel_values"], rows, self, rngs)
            else:
                batch = self._augment_text(batch, rows, rngs)
        batch[AUGMENTED_KEY] = rows
        return batch

    # ---- text --------------------------------------------------------------------------------
    def _augment_text(self, batch: dict, rows: torch.Tensor, rngs: list) -> dict:
        """Each augmented row draws over its real tokens only, in order, so padding does not change the draws."""
        ids = batch["input_ids"].clone()
        mask = batch.get("attention_mask", torch.ones_like(ids))
        drop = torch.zeros_like(ids, dtype=torch.bool)
        p = self.token_prob
        for r in rows.nonzero().view(-1).tolist():
            rng, real = rngs[r], mask[r].nonzero().view(-1)
            row = ids[r, real]
            eligible = ~torch.isin(row, self.special_ids)
            if "token_replace" in self.augmentations:
                hit = eligible & torch.from_numpy(rng.random(row.numel()) < p)
                row[hit] = self.replacement_ids[
                    torch.from_numpy(rng.integers(0, len(self.replacement_ids), size=int(hit.sum())))
                ]
            if "span_mask" in self.augmentations:
                starts = eligible & torch.from_numpy(rng.random(row.numel()) < p)
                span = starts.clone()
                for shift in range(1, min(self.span_length, row.numel())):
                    span[shift:] |= starts[:-shift]
                row[span & eligible] = self.mask_id
            if "token_drop" in self.augmentations:
                drop[r, real] = eligible & torch.from_numpy(rng.random(row.numel()) < p)
            ids[r, real] = row
        batch["input_ids"] = ids
        return self._drop_tokens(batch, drop) if bool(drop.any()) else batch

    def _drop_tokens(self, batch: dict, drop: torch.Tensor) -> dict:
        """Delete the ``drop`` positions from every ``[B, L]`` tensor of the batch and re-pad the rows."""
        width = batch["input_ids"].shape[1]
        fill = {"input_ids": self.pad_id, "labels": -100}
        out = dict(batch)
        for key, value in batch.items():
            if not (isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == width):
                continue
            new = torch.full_like(value, fill.get(key, 0))
            for r in range(value.shape[0]):
                kept = value[r][~drop[r]]
                if self.left_padded:
                    new[r, width - kept.numel() :] = kept
                else:
                    new[r, : kept.numel()] = kept
            out[key] = new
        return out


# ---- images ------------------------------------------------------------------------------------
def augment_images(
    pixels: torch.Tensor, rows: torch.Tensor, cfg: AugmentingCollator, rngs: list
) -> torch.Tensor:
    """Augment the ``rows`` of ``pixels`` ``[B, C, H, W]``, row ``r`` with ``rngs[r]``; mixup/cutmix partners
    are clean images of the same batch (so, unlike the other augmentations, they depend on the batching)."""
    import torch.nn.functional as F

    clean = pixels
    out = pixels.clone()
    b, _, h, w = pixels.shape
    for r in rows.nonzero().view(-1).tolist():
        x, rng = out[r], rngs[r]
        if "resized_crop" in cfg.augmentations:
            area = rng.uniform(cfg.crop_scale, 1.0) * h * w
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            ch = int(round(min(h, max(1.0, np.sqrt(area / aspect)))))
            cw = int(round(min(w, max(1.0, np.sqrt(area * aspect)))))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = x[:, top : top + ch, left : left + cw][None]
            x = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        if "flip" in cfg.augmentations and rng.random() < 0.5:
            x = x.flip(-1)
        partner = clean[int(rng.integers(0, b))]
        if "mixup" in cfg.augmentations:
            lam = float(rng.beta(cfg.mix_alpha, cfg.mix_alpha))
            x = lam * x + (1 - lam) * partner
        if "cutmix" in cfg.augmentations:
            lam = float(rng.beta(cfg.mix_alpha, cfg.mix_alpha))
            ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            x = x.clone()
            x[:, top : top + ch, left : left + cw] = partner[:, top : top + ch, left : left + cw]
        out[r] = x
    return out


# ---- the trainer's side ----------------------------------------------------------------------------
def augmented_kd_loss(kd_fn: Callable, labels: torch.Tensor, augmented: torch.Tensor, alpha: float):
    """The loss of a batch with augmented rows: ``kd_fn(labels, alpha)`` on the clean rows plus
    ``kd_fn(labels, 1.0)`` (the distillation term alone) on the augmented rows.

    ``kd_fn(labels, alpha)`` returns a :class:`~distill.losses.DistillationLossOutput` for the given
    labels (``-100`` rows count nowhere) with the batch's shared denominator, so the two parts add up
    to one loss over all rows. Logged ``ce_loss`` covers the clean rows (divided by all rows' count).
    """
    from ..losses.logit import DistillationLossOutput

    rows = augmented.to(labels.device).view(-1, *([1] * (labels.dim() - 1))).expand_as(labels)
    clean = kd_fn(labels.masked_fill(rows, -100), alpha)
    if not bool(rows.any()):
        return clean
    aug = kd_fn(labels.masked_fill(~rows, -100), 1.0)
    return DistillationLossOutput(
        loss=clean.loss + aug.loss,
        kd_loss=clean.kd_loss + aug.kd_loss,
        ce_loss=clean.ce_loss,
        num_valid=clean.num_valid + aug.num_valid,
    )


def augmenting_kwargs(kwargs: dict, task, args, processing_class, *, has_cache: bool) -> dict:
    """The Trainer's keyword arguments with the collator wrapped for ``args.augment_fraction > 0`` and the
    epoch callback added, after the checks that need the task (the trainer's ``__init__`` calls this)."""
    if has_cache:
        raise ValueError(
            "augment_fraction > 0 needs an online teacher: a teacher cache cannot score augmented "
            "inputs. Set augment_fraction: 0 or train without teacher_cache."
        )
    if args.dataloader_persistent_workers:
        raise ValueError(
            "augment_fraction > 0 needs dataloader_persistent_workers=false: persistent workers "
            "would keep an old epoch's augmentation seed."
        )
    check_augmentations(args.augmentations, task.name)
    kwargs = dict(kwargs)
    collator = kwargs.get("data_collator")
    if not isinstance(collator, AugmentingCollator):
        if collator is None:
            from distill.trainer.tasks import make_collator

            collator = make_collator(task, processing_class)
        collator = AugmentingCollator(
            collator,
            task=task.name,
            augmentations=args.augmentations,
            fraction=args.augment_fraction,
            tokenizer=processing_class,
            token_prob=args.augment_token_prob,
            span_length=args.augment_span_length,
            crop_scale=args.augment_crop_scale,
            mix_alpha=args.augment_mix_alpha,
            seed=args.seed,
        )
    kwargs["data_collator"] = collator
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [AugmentEpochCallback(collator)]
    return kwargs


@contextlib.contextmanager
def clean_collator(trainer):
    """Within the block, ``trainer.data_collator`` is the un-augmented one (for evaluation loaders)."""
    collator = trainer.data_collator
    if isinstance(collator, AugmentingCollator):
        trainer.data_collator = collator.base
    try:
        yield
    finally:
        trainer.data_collator = collator


class AugmentEpochCallback(TrainerCallback):
    """Tells the collator the epoch, so that a batch's augmentation depends on the epoch too."""

    def __init__(self, collator: AugmentingCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)
