"""DistillationTrainer: exact gradient accumulation, frozen teacher, logging, resume, checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights

from distill import DistillationConfig, DistillationTrainer
from distill.trainer.tasks import CausalLMCollator


def make_trainer(tmp_path, student, teacher, dataset, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=3,
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
    )
    kwargs.update(overrides)
    args = DistillationConfig(**kwargs)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        data_collator=CausalLMCollator(pad_token_id=0),
    )


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_gradient_accumulation_is_exact(tmp_path, kind):
    data = lm_dataset(48)
    teacher = tiny_llama(hidden=48, seed=1)
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
            kd_kind=kind,
        )
        trainer.train()
        results.append((weights(student), [h for h in trainer.state.log_history if "loss" in h]))
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    for a, b in zip(results[0][1], results[1][1]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["kd_loss"] == pytest.approx(b["kd_loss"], abs=1e-4)
        assert a["ce_loss"] == pytest.approx(b["ce_loss"], abs=1e-4)


def test_teacher_frozen_and_not_in_optimizer(tmp_path):
    teacher = tiny_llama(hidden=48, seed=1)
    before = weights(teacher)
    student = tiny_llama(seed=0)
    trainer = make_trainer(tmp_path, student, teacher, lm_dataset(16), optim="adamw_torch")
    trainer.train()
    assert max_diff(before, weights(teacher)) == 0.0
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all("kd_loss" in h and "ce_loss" in h for h in logs)
    # The logged loss is the mix of its parts.
    for h in logs:
        assert h["loss"] == pytest.approx(0.5 * h["kd_loss"] + 0.5 * h["ce_loss"], rel=1e-3, abs=1e-3)


def test_evaluation_reports_plain_cross_entropy(tmp_path):
    teacher = tiny_llama(hidden=48, seed=1)
    student = tiny_llama(seed=0)
    eval_data = lm_dataset(12, seed=5)
    trainer = make_trainer(
        tmp_path, student, teacher, lm_dataset(16), alpha=0.9, per_device_eval_batch_size=5
    )
    metrics = trainer.evaluate(eval_dataset=eval_data)
    # Reference: token-weighted CE of the student over all valid shifted positions, in float64.
    collator = CausalLMCollator(0)
    batch = collator([eval_data[i] for i in range(len(eval_data))])
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="mean"
    )
    assert metrics["eval_loss"] == pytest.approx(ce.item(), rel=1e-5)
    # KD term and teacher CE against float64 references (evaluation walks the logits in chunks).
    from distill.losses import distillation_loss

    with torch.no_grad():
        t_logits = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.double()
    kd = distillation_loss(logits[:, :-1], t_logits[:, :-1], labels, alpha=1.0, temperature=2.0)
    t_ce = torch.nn.functional.cross_entropy(
        t_logits[:, :-1].reshape(-1, t_logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="mean",
    )
    assert metrics["eval_kd_loss"] == pytest.approx(kd.kd_loss.item(), rel=1e-5)
    assert metrics["eval_teacher_loss"] == pytest.approx(t_ce.item(), rel=1e-5)


def test_plain_training_without_teacher(tmp_path):
    student = tiny_llama(seed=0)
    trainer = make_trainer(tmp_path, student, None, lm_dataset(16), alpha=0.0)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("kd_loss" not in h for h in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["ce_loss"], rel=1e-4)


def test_alpha_without_teacher_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        make_trainer(tmp_path, tiny_llama(), None, lm_dataset(4), alpha=0.5)


def test_resume_matches_straight_run(tmp_path):
    teacher = tiny_llama(hidden=48, seed=1)
    data = lm_dataset(96)
    common = dict(
        max_steps=10,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=1e-2,
        lr_scheduler_type="linear",
    )
    straight = tiny_llama(seed=0)
    make_trainer(tmp_path / "a", straight, teacher, data, **common).train()
    first = tiny_llama(seed=0)
    make_trainer(tmp_path / "b", first, teacher, data, save_strategy="steps", save_steps=5, **common).train()
    ckpt = tmp_path / "b" / "checkpoint-5"
    assert ckpt.is_dir() and not (tmp_path / "b" / ".staging").exists()
    assert not any("teacher" in f for f in os.listdir(ckpt))
    resumed = tiny_llama(seed=3)  # different init: everything must come from the checkpoint
    make_trainer(tmp_path / "b", resumed, teacher, data, **common).train(resume_from_checkpoint=str(ckpt))
    assert max_diff(weights(straight), weights(resumed)) < 1e-6


def test_checkpoint_reloads_as_student(tmp_path):
    from transformers import AutoModelForCausalLM

    student = tiny_llama(seed=0)
    trainer = make_trainer(tmp_path, student, tiny_llama(hidden=48, seed=1), lm_dataset(16))
    trainer.train()
    trainer.save_model()
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert max_diff(weights(student), weights(reloaded)) == 0.0
    assert reloaded.config.hidden_size == 32  # the student, not the teacher


def test_training_loss_is_chunked_and_equal_to_plain(tmp_path):
    from unittest import mock

    from distill.losses import distillation_loss
    from distill.trainer import distillation_trainer as trainer_module

    student, teacher = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1)
    trainer = make_trainer(tmp_path, student, teacher, lm_dataset(8), kd_chunk_size=7)
    batch = CausalLMCollator(0)([lm_dataset(8)[i] for i in range(8)])
    n = batch["labels"][:, 1:].ne(-100).sum()
    student.train()
    spy = mock.Mock(wraps=trainer_module.chunked_distillation_loss)
    with mock.patch.object(trainer_module, "chunked_distillation_loss", spy):
        loss = trainer.compute_loss(student, batch, num_items_in_batch=n)
    assert spy.call_args.kwargs["chunk_size"] == 7
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = distillation_loss(
        s[:, :-1].double(),
        t[:, :-1].double(),
        batch["labels"][:, 1:],
        alpha=0.5,
        temperature=2.0,
        num_items_in_batch=n,
    )
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
