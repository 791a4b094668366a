"""Offline teacher cache: exact at k = V, trains with no teacher, refuses mismatches, CLI writes it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import VOCAB, lm_dataset, tiny_llama, word_tokenizer

from distill import DistillationConfig, DistillationTrainer
from distill.losses import distillation_loss
from distill.teacher.cache import (
    CACHE_COLUMNS,
    MANIFEST_NAME,
    TeacherCache,
    TeacherCacheCollator,
    build_teacher_cache,
    cached_distillation_loss,
    teacher_topk,
)
from distill.trainer.tasks import CausalLMCollator


@pytest.fixture(scope="module")
def teacher():
    return tiny_llama(hidden=48, seed=1)


def make_cache(tmp_path, teacher, data, k=VOCAB, dtype="float32", temperature=2.0, name="cache"):
    return build_teacher_cache(
        teacher,
        data,
        str(tmp_path / name),
        tokenizer=word_tokenizer(),
        k=k,
        temperature=temperature,
        teacher_name="tiny-teacher",
        value_dtype=dtype,
        batch_size=5,
    )


def batch_of(cache_ds, n, k=VOCAB):
    collate = TeacherCacheCollator(CausalLMCollator(0), k)
    return collate([cache_ds[i] for i in range(n)])


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_full_vocab_cache_equals_online_loss(tmp_path, teacher, kind):
    data = lm_dataset(12, seed=3)
    cache = make_cache(tmp_path, teacher, data)
    ds = cache.attach(data, tokenizer=word_tokenizer(), temperature=2.0)
    batch = batch_of(ds, 12)
    student = tiny_llama(seed=0)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ref = distillation_loss(s, t, labels, alpha=0.5, temperature=2.0, kind=kind)
    got = cached_distillation_loss(
        s, *(batch[c] for c in CACHE_COLUMNS), labels, alpha=0.5, temperature=2.0, kind=kind
    )
    # float32 logits and float32 storage: the only difference is summation order (and the k+1-th bucket,
    # exactly empty at k = V).
    assert got.kd_loss.item() == pytest.approx(ref.kd_loss.item(), rel=1e-5, abs=1e-6)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5, abs=1e-6)
    assert got.num_valid == ref.num_valid
    g_ref = torch.autograd.grad(ref.loss, s, retain_graph=True)[0]
    g_got = torch.autograd.grad(got.loss, s)[0]
    assert torch.isfinite(g_got).all()
    assert (g_ref - g_got).abs().max().item() < 1e-6


class LeftPadCollator:
    """CausalLMCollator's batch with every row's padding moved to the left (as padding_side="left")."""

    def __call__(self, examples):
        batch = CausalLMCollator(0)(examples)
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            for key in batch:
                batch[key][i] = batch[key][i].roll(batch[key].shape[1] - n)
        return batch


def test_left_padding_lines_up_with_the_cache(tmp_path, teacher):
    """Cache rows start at each example's first token, wherever the base collator put the padding."""
    data = lm_dataset(6, seed=4)
    ds = make_cache(tmp_path, teacher, data, k=8).attach(data, tokenizer=word_tokenizer(), temperature=2.0)
    examples = [ds[i] for i in range(6)]
    right = TeacherCacheCollator(CausalLMCollator(0), 8)(examples)
    left = TeacherCacheCollator(LeftPadCollator(), 8)(examples)
    assert not torch.equal(left["input_ids"], right["input_ids"])  # the padding really moved
    embed = torch.randn(VOCAB, VOCAB)  # position-free "student": the same logits for a token anywhere
    losses = []
    for batch in (right, left):
        out = cached_distillation_loss(
            embed[batch["input_ids"]][:, :-1],
            *(batch[c] for c in CACHE_COLUMNS),
            batch["labels"][:, 1:],
            alpha=0.5,
            temperature=2.0,
        )
        losses.append(out)
    assert losses[0].num_valid == losses[1].num_valid
    assert losses[1].loss.item() == pytest.approx(losses[0].loss.item(), rel=1e-6)


def test_float16_storage_and_topk_are_close_and_never_above_online(tmp_path, teacher):
    data = lm_dataset(8, seed=4)
    student = tiny_llama(seed=0)
    batch = CausalLMCollator(0)([data[i] for i in range(8)])
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ref = distillation_loss(s, t, labels, alpha=1.0, temperature=2.0).kd_loss.item()
    # float16 storage at k = V: |rounding| <= |log p| * 2^-11 per value, ~1e-3 relative on the loss at most.
    ids, lp, rest = teacher_topk(t, VOCAB, 2.0)
    f16 = cached_distillation_loss(
        s, ids, lp.half(), rest.half(), labels, alpha=1.0, temperature=2.0
    ).kd_loss.item()
    assert f16 == pytest.approx(ref, rel=2e-3)
    # k < V: a coarsening, so the KL can only shrink (data-processing inequality), and grows with k.
    previous = 0.0
    for k in (4, 16, 48):
        ids, lp, rest = teacher_topk(t, k, 2.0)
        approx = cached_distillation_loss(s, ids, lp, rest, labels, alpha=1.0, temperature=2.0).kd_loss.item()
        assert previous - 1e-6 <= approx <= ref + 1e-6
        previous = approx


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_fused_forward_kl_matches_autograd(temperature, alpha):
    torch.manual_seed(0)
    s = (3 * torch.randn(3, 9, VOCAB)).requires_grad_(True)
    t = 3 * torch.randn(3, 9, VOCAB)
    labels = torch.randint(0, VOCAB, (3, 9))
    labels[0, :4] = -100
    ids, lp, rest = teacher_topk(t, 8, temperature)
    lp, rest = lp.half(), rest.half()
    outs = [
        cached_distillation_loss(
            s,
            ids,
            lp,
            rest,
            labels,
            alpha=alpha,
            temperature=temperature,
            num_items_in_batch=30,
            fused_off=off,
        )
        for off in (False, True)
    ]
    grads = [torch.autograd.grad(o.loss, s)[0] for o in outs]
    for name in ("loss", "kd_loss", "ce_loss"):
        assert getattr(outs[0], name).item() == pytest.approx(
            getattr(outs[1], name).item(), rel=1e-5, abs=1e-6
        )
    assert (grads[0] - grads[1]).abs().max().item() < 1e-6


@pytest.mark.parametrize("fused_off", [False, True])
def test_step_without_targets_gives_zero_loss(fused_off):
    """num_items_in_batch = 0 (no valid label in a whole optimizer step): loss 0, zero gradient, no error."""
    torch.manual_seed(0)
    s = torch.randn(2, 5, VOCAB, requires_grad=True)
    ids, lp, rest = teacher_topk(torch.randn(2, 5, VOCAB), 8, 2.0)
    labels = torch.full((2, 5), -100)
    out = cached_distillation_loss(
        s, ids, lp, rest, labels, alpha=0.5, temperature=2.0, num_items_in_batch=0, fused_off=fused_off
    )
    assert out.loss.item() == 0.0 and out.kd_loss.item() == 0.0
    (grad,) = torch.autograd.grad(out.loss, s)
    assert torch.count_nonzero(grad) == 0


def test_cache_on_disk_layout_and_manifest(tmp_path, teacher):
    data = lm_dataset(7, seed=2)
    cache = make_cache(tmp_path, teacher, data, k=8, dtype="float16")
    with open(os.path.join(cache.path, MANIFEST_NAME)) as f:
        manifest = json.load(f)
    assert manifest["k"] == 8 and manifest["teacher"] == "tiny-teacher" and manifest["temperature"] == 2.0
    assert manifest["tokenizer"]["vocab_size"] == VOCAB and len(manifest["tokenizer"]["fingerprint"]) == 64
    assert manifest["data"]["num_examples"] == 7
    feats = cache.dataset.features
    assert feats["teacher_topk_ids"].feature.dtype == "int32"
    assert feats["teacher_topk_logprobs"].feature.dtype == "float16"
    assert feats["teacher_rest_logprob"].feature.dtype == "float16"
    row = cache.dataset[3]
    assert len(row["teacher_topk_ids"]) == 8 * (len(data[3]["input_ids"]) - 1)  # [L-1, k] flattened
    assert len(row["teacher_rest_logprob"]) == len(data[3]["input_ids"]) - 1
    assert os.path.isdir(cache.tokenizer_dir)


def test_training_from_cache_without_teacher(tmp_path, teacher):
    data = lm_dataset(24, seed=0)
    cache = make_cache(tmp_path, teacher, data, k=16, dtype="float16")
    student = tiny_llama(seed=0)
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.1,
        optim="sgd",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_cache=cache.path,
        train_dataset=data,
        processing_class=word_tokenizer(),
        data_collator=CausalLMCollator(0),
    )
    assert trainer.teacher is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["kd_loss"] > 0 and "ce_loss" in h for h in logs)
    for h in logs:
        assert h["loss"] == pytest.approx(0.5 * h["kd_loss"] + 0.5 * h["ce_loss"], rel=1e-3, abs=1e-3)
    metrics = trainer.evaluate(eval_dataset=lm_dataset(6, seed=9))
    assert "eval_loss" in metrics and "eval_teacher_loss" not in metrics
    # The model card names the cached teacher and says the targets were top-k.
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "distilled from `tiny-teacher`" in card and "knowledge-distillation" in card
    assert "top-16 log-probabilities" in card and "approximates" in card


def test_cache_loss_in_trainer_matches_cached_loss_despite_shuffling(tmp_path, teacher):
    """Rows travel with their examples: the trainer's batch equals a recomputation from the raw data."""
    data = lm_dataset(16, seed=1)
    cache = make_cache(tmp_path, teacher, data, k=VOCAB)
    student = tiny_llama(seed=0)
    args = DistillationConfig(
        output_dir=str(tmp_path / "o"),
        per_device_train_batch_size=4,
        report_to="none",
        alpha=0.7,
        temperature=2.0,
        max_steps=1,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_cache=cache,
        train_dataset=data,
        processing_class=word_tokenizer(),
        data_collator=CausalLMCollator(0),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(CACHE_COLUMNS) <= set(batch)
    student.train()
    loss = trainer.compute_loss(
        student, dict(batch), num_items_in_batch=batch["labels"][:, 1:].ne(-100).sum()
    )
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    ref = distillation_loss(s, t, batch["labels"][:, 1:], alpha=0.7, temperature=2.0)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


def test_mismatches_are_refused(tmp_path, teacher):
    data = lm_dataset(10, seed=0)
    cache = make_cache(tmp_path, teacher, data, k=8)
    with pytest.raises(ValueError, match="tokenizer.fingerprint"):
        cache.attach(data, tokenizer=word_tokenizer(shift=1), temperature=2.0)
    with pytest.raises(ValueError, match="data.sha256"):
        cache.attach(lm_dataset(10, seed=1), tokenizer=word_tokenizer(), temperature=2.0)
    with pytest.raises(ValueError, match="data.sha256"):  # same rows, other order
        cache.attach(data.select(list(reversed(range(10)))), tokenizer=word_tokenizer(), temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        cache.attach(data, tokenizer=word_tokenizer(), temperature=1.0)
    with pytest.raises(FileNotFoundError, match="cache-teacher"):
        TeacherCache.load(str(tmp_path / "nowhere"))
    args = DistillationConfig(output_dir=str(tmp_path / "o"), report_to="none", alpha=0.5, temperature=2.0)
    with pytest.raises(ValueError, match="not both"):
        DistillationTrainer(
            model=tiny_llama(),
            teacher_model=teacher,
            teacher_cache=cache,
            args=args,
            train_dataset=data,
            data_collator=CausalLMCollator(0),
        )


def test_cli_cache_teacher_then_train(tmp_path, capsys):
    """`distill cache-teacher` writes dataset + manifest; `distill train --teacher_cache` uses it, no teacher."""
    from distill.cli import main as cli_main
    from distill.train import main as train_main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = os.path.join(root, "recipes", "tiny")
    quick = [
        "--max_steps",
        "2",
        "--max_eval_samples",
        "8",
        "--max_test_samples",
        "8",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--max_train_samples",
        "24",
    ]
    teacher_dir = str(tmp_path / "teacher")
    train_main(
        [
            "--config",
            os.path.join(tiny, "causal_lm_teacher.yaml"),
            "--output_dir",
            teacher_dir,
            "--tokenizer_vocab_size",
            "300",
            *quick,
        ]
    )
    cache_dir = str(tmp_path / "cache")
    student_args = [
        "--config",
        os.path.join(tiny, "causal_lm.yaml"),
        "--teacher_model_name_or_path",
        teacher_dir,
        "--max_train_samples",
        "24",
    ]
    capsys.readouterr()
    assert cli_main(["cache-teacher", *student_args, "--cache_dir", cache_dir, "--top_k", "8"]) == 0
    assert "Teacher top-k" in capsys.readouterr().err  # a progress bar over the sequences
    manifest = json.load(open(os.path.join(cache_dir, MANIFEST_NAME)))
    assert (
        manifest["k"] == 8 and manifest["teacher"] == teacher_dir and manifest["data"]["num_examples"] == 24
    )
    assert os.path.isfile(os.path.join(cache_dir, "dataset_info.json"))
    out = str(tmp_path / "student")
    results = train_main([*student_args, "--teacher_cache", cache_dir, "--output_dir", out, *quick])
    assert "teacher_params" not in results and "eval_loss" in results
    logs = [h for h in json.load(open(os.path.join(out, "trainer_state.json")))["log_history"] if "loss" in h]
    assert len(logs) == 2 and all("kd_loss" in h for h in logs)
    # Different data (another max_train_samples) or temperature: refused with the field named (in a new
    # output_dir: into `out`, the run fingerprint would refuse the changed settings first).
    out = str(tmp_path / "student2")
    capsys.readouterr()
    assert (
        cli_main(
            [
                "train",
                *student_args,
                "--teacher_cache",
                cache_dir,
                "--output_dir",
                out,
                *quick,
                "--max_train_samples",
                "20",
            ]
        )
        == 2
    )
    assert "data.sha256" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "train",
                *student_args,
                "--teacher_cache",
                cache_dir,
                "--output_dir",
                out,
                *quick,
                "--temperature",
                "1.0",
            ]
        )
        == 2
    )
    assert "temperature" in capsys.readouterr().err
    # A student with another tokenizer is refused too.
    other_tok = str(tmp_path / "other_tok")
    from distill.data.corpus import train_bpe_tokenizer

    train_bpe_tokenizer(["some other text for a different tokenizer"] * 50, vocab_size=280).save_pretrained(
        other_tok
    )
    assert (
        cli_main(
            [
                "train",
                *student_args,
                "--teacher_cache",
                cache_dir,
                "--output_dir",
                out,
                *quick,
                "--tokenizer_name_or_path",
                other_tok,
            ]
        )
        == 2
    )
    assert "tokenizer.fingerprint" in capsys.readouterr().err
