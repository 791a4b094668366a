"""Data-augmentation distillation: the augmenting collator, the KD-only loss on augmented rows, exactness
under accumulation, resume, and the checks of the recipe fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights, word_tokenizer
from test_losses import ref_loss

from distill import DistillationConfig, DistillationTrainer
from distill.data.augment import AugmentingCollator, augmented_kd_loss, check_augmentations
from distill.losses import distillation_loss
from distill.trainer.tasks import CausalLMCollator


def text_collator(augmentations, fraction=1.0, token_prob=0.3, seed=0, **kw):
    return AugmentingCollator(
        CausalLMCollator(pad_token_id=0),
        task="causal-lm",
        augmentations=augmentations,
        fraction=fraction,
        tokenizer=word_tokenizer(),
        token_prob=token_prob,
        seed=seed,
        **kw,
    )


def examples(n=6, seed=0):
    data = lm_dataset(n, seed=seed)
    return [data[i] for i in range(n)]


# ---- the collator --------------------------------------------------------------------------------
def test_token_replace_touches_only_real_non_special_tokens_of_augmented_rows():
    ex = examples(40)
    for e in ex[::3]:
        e["input_ids"][0] = 1  # a bos (special) token, never replaced
    clean = CausalLMCollator(pad_token_id=0)(ex)
    out = text_collator(["token_replace"], fraction=0.5)(ex)
    rows = out["augmented"]
    assert 5 < int(rows.sum()) < 35
    changed = out["input_ids"] != clean["input_ids"]
    assert not changed[~rows].any()  # clean rows untouched
    assert not changed[clean["attention_mask"] == 0].any()  # padding untouched
    assert not changed[clean["input_ids"] == 1].any()  # special tokens untouched
    assert changed[rows].float().mean() > 0.1
    assert (out["input_ids"][changed] > 2).all()  # replacements are non-special vocabulary tokens
    assert torch.equal(out["labels"], clean["labels"]) and torch.equal(
        out["attention_mask"], clean["attention_mask"]
    )


def test_span_mask_and_token_drop():
    ex = examples(8)
    clean = CausalLMCollator(pad_token_id=0)(ex)
    masked = text_collator(["span_mask"], span_length=3)(ex)
    hit = masked["input_ids"] != clean["input_ids"]
    assert hit.any() and (masked["input_ids"][hit] == 0).all()  # word_tokenizer: unk is t0 (no mask token)
    dropped = text_collator(["token_drop"])(ex)
    lengths, new_lengths = clean["attention_mask"].sum(1), dropped["attention_mask"].sum(1)
    assert (new_lengths <= lengths).all() and (new_lengths < lengths).any()
    for r in range(len(ex)):  # the kept tokens, in order, re-padded on the right
        n = int(new_lengths[r])
        kept = dropped["input_ids"][r, :n].tolist()
        it = iter(clean["input_ids"][r, : int(lengths[r])].tolist())
        assert all(tok in it for tok in kept)
        assert (dropped["labels"][r, n:] == -100).all() and (dropped["input_ids"][r, n:] == 0).all()


def test_augmentation_depends_on_the_example_not_the_batch_and_changes_with_the_epoch():
    ex = examples(8)
    whole = text_collator(["token_replace", "token_drop"])(ex)
    halves = [text_collator(["token_replace", "token_drop"])(part) for part in (ex[:3], ex[3:])]
    for r in range(8):
        part, i = (halves[0], r) if r < 3 else (halves[1], r - 3)
        n = int(whole["attention_mask"][r].sum())
        assert n == int(part["attention_mask"][i].sum())
        assert torch.equal(whole["input_ids"][r, :n], part["input_ids"][i, :n])
    later = text_collator(["token_replace", "token_drop"])
    later.epoch = 1
    assert not torch.equal(later(ex)["input_ids"], whole["input_ids"])


def test_image_augmentations():
    g = torch.Generator().manual_seed(0)
    feats = [{"pixel_values": torch.randn(1, 8, 8, generator=g), "labels": i % 3} for i in range(6)]
    from transformers import default_data_collator

    clean = default_data_collator(feats)["pixel_values"]
    for names in (["flip"], ["resized_crop"], ["mixup"], ["cutmix"], ["flip", "resized_crop", "mixup"]):
        out = AugmentingCollator(
            default_data_collator, task="image-cls", augmentations=names, fraction=1.0, crop_scale=0.3
        )(feats)
        assert out["pixel_values"].shape == clean.shape and out["augmented"].all()
        assert not torch.equal(out["pixel_values"], clean), names
    flipped = AugmentingCollator(
        default_data_collator, task="image-cls", augmentations=["flip"], fraction=1.0
    )(feats)
    for r in range(6):  # each row is either itself or its mirror image
        x = flipped["pixel_values"][r]
        assert torch.equal(x, clean[r]) or torch.equal(x, clean[r].flip(-1))


@pytest.mark.parametrize(
    "names, task", [(["mixup"], "seq-cls"), (["token_drop"], "image-cls"), (["blur"], None)]
)
def test_augmentation_that_does_not_apply_is_refused(names, task):
    with pytest.raises(ValueError, match="do not apply|unknown"):
        check_augmentations(names, task)
    with pytest.raises(ValueError, match="augmentations"):
        DistillationConfig(
            output_dir="unused", report_to="none", task=task, augment_fraction=0.5, augmentations=names
        )


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("augment_fraction", 1.5, "augment_fraction"),
        ("augment_fraction", -0.1, "augment_fraction"),
        ("augment_token_prob", 2.0, "augment_token_prob"),
        ("augment_span_length", 0, "augment_span_length"),
        ("augment_crop_scale", 0.0, "augment_crop_scale"),
        ("augment_mix_alpha", 0.0, "augment_mix_alpha"),
    ],
)
def test_bad_strengths_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(output_dir="unused", report_to="none", **{field: value})


def test_augmentation_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationConfig(output_dir="unused", report_to="none", alpha=0.0, augment_fraction=0.5)


# ---- the loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["forward_kl", "skew_reverse_kl"])
def test_kd_alone_on_augmented_rows_against_float64_reference(kind):
    g = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(5, 6, 9, generator=g, dtype=torch.float64),
        torch.randn(5, 6, 9, generator=g, dtype=torch.float64),
    )
    labels = torch.randint(0, 9, (5, 6), generator=g)
    labels[1, :2] = -100
    aug = torch.tensor([True, False, True, False, False])
    n = int((labels != -100).sum())
    out = augmented_kd_loss(
        lambda lab, a: distillation_loss(
            s, t, lab, alpha=a, temperature=2.0, kind=kind, num_items_in_batch=n
        ),
        labels,
        aug,
        0.3,
    )
    clean = ref_loss(
        s[~aug], t[~aug], labels[~aug], alpha=0.3, temperature=2.0, kind=kind, num_items_in_batch=n
    )
    augm = ref_loss(s[aug], t[aug], labels[aug], alpha=1.0, temperature=2.0, kind=kind, num_items_in_batch=n)
    np.testing.assert_allclose(out.loss.item(), clean[0] + augm[0], rtol=1e-10)
    np.testing.assert_allclose(out.kd_loss.item(), clean[1] + augm[1], rtol=1e-10)
    np.testing.assert_allclose(out.ce_loss.item(), clean[2], rtol=1e-10)
    assert int(out.num_valid) == n


# ---- in the trainer ----------------------------------------------------------------------------------
def make_trainer(tmp_path, student, teacher, data, collator=None, **overrides):
    kw = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        augment_fraction=0.5,
        augmentations=["token_replace", "token_drop"],
        augment_token_prob=0.2,
    )
    kw.update(overrides)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**kw),
        train_dataset=data,
        processing_class=word_tokenizer(),
        data_collator=collator or CausalLMCollator(0),
    )


def test_trainer_gradient_accumulation_is_exact_with_augmentation(tmp_path):
    data, teacher = lm_dataset(32), tiny_llama(hidden=48, seed=1)
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_llama(seed=0)
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            student,
            teacher,
            data,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
        )
        assert isinstance(trainer.data_collator, AugmentingCollator)
        trainer.train()
        results.append(
            (weights(student), [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h])
        )
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-4)
    plain = tiny_llama(seed=0)
    make_trainer(tmp_path / "plain", plain, teacher, data, augment_fraction=0.0).train()
    assert max_diff(weights(plain), results[0][0]) > 1e-4  # augmentation did change the training


class RecordingCollator(AugmentingCollator):
    """Remembers every augmented batch by (epoch, clean batch)."""

    def __call__(self, examples):
        out = super().__call__(examples)
        key = (self.epoch, tuple(tuple(e["input_ids"]) for e in examples))
        self.seen[key] = out["input_ids"].clone()
        return out


def recording(seen):
    c = RecordingCollator(
        CausalLMCollator(0),
        task="causal-lm",
        augmentations=["token_replace"],
        fraction=0.5,
        tokenizer=word_tokenizer(),
        token_prob=0.3,
        seed=0,
    )
    c.seen = seen
    return c


def test_resumed_run_sees_the_same_augmented_batches(tmp_path):
    teacher, data = tiny_llama(hidden=48, seed=1), lm_dataset(24)
    common = dict(
        max_steps=10,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        augmentations=["token_replace"],
    )  # 6 steps an epoch
    straight, straight_seen = tiny_llama(seed=0), {}
    make_trainer(tmp_path / "a", straight, teacher, data, recording(straight_seen), **common).train()
    make_trainer(
        tmp_path / "b",
        tiny_llama(seed=0),
        teacher,
        data,
        recording({}),
        save_strategy="steps",
        save_steps=8,
        **common,
    ).train()
    resumed, resumed_seen = tiny_llama(seed=3), {}
    make_trainer(tmp_path / "b", resumed, teacher, data, recording(resumed_seen), **common).train(
        resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-8")
    )
    assert max_diff(weights(straight), weights(resumed)) < 1e-6
    after = [k for k in resumed_seen if k[0] == 1]  # the resumed epoch (steps 9 and 10)
    assert after and all(torch.equal(resumed_seen[k], straight_seen[k]) for k in after)
    assert {k[0] for k in straight_seen} == {0, 1}
