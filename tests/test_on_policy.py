"""On-policy distillation (GKD): the student's continuations replace the step's batches, the loss is the
divergence on the generated tokens alone, exact under accumulation, seeded for resume, and bad fields fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights, word_tokenizer

from distill import DistillationConfig, DistillationTrainer
from distill.data.on_policy import generate_continuations, split_prompts, step_is_on_policy
from distill.losses import distillation_loss
from distill.trainer.tasks import CausalLMCollator


def make_trainer(tmp_path, student, teacher, data, **overrides):
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
        lmbda=1.0,
        max_new_tokens=6,
        generation_temperature=0.0,
    )
    kw.update(overrides)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**kw),
        train_dataset=data,
        processing_class=word_tokenizer(),
        data_collator=CausalLMCollator(pad_token_id=0),
    )


def test_prompts_are_the_masked_label_part():
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [9, 10, 11, -100, -100]])
    mask = (ids != 0).long()
    prompts = split_prompts(ids, labels, mask)
    assert prompts[0].tolist() == [5, 6] and prompts[1].tolist() == [9]  # no prompt: the first token


def test_generated_batch_holds_the_prompt_and_the_students_greedy_continuation(tmp_path):
    student, teacher, data = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1), lm_dataset(4, seed=2)
    trainer = make_trainer(tmp_path, student, teacher, data)
    batch = CausalLMCollator(0)([data[i] for i in range(4)])
    out = generate_continuations(trainer, batch, seed=0)
    assert out["augmented"].all()  # KD alone on every generated row
    for r, prompt in enumerate(split_prompts(batch["input_ids"], batch["labels"], batch["attention_mask"])):
        n = int(out["attention_mask"][r].sum())
        row, lab = out["input_ids"][r, :n], out["labels"][r, :n]
        assert row[: prompt.numel()].tolist() == prompt.tolist()
        assert (lab[: prompt.numel()] == -100).all() and torch.equal(
            lab[prompt.numel() :], row[prompt.numel() :]
        )
        expect = student.generate(
            prompt[None], max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=2
        )[0]
        cont = expect[prompt.numel() :]
        stop = (cont == 2).nonzero()
        cont = cont[: int(stop[0]) + 1] if stop.numel() else cont
        assert row[prompt.numel() :].tolist() == cont.tolist()
        assert (out["labels"][r, n:] == -100).all()


def test_on_policy_loss_is_the_divergence_on_generated_tokens_only(tmp_path):
    student, teacher, data = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1), lm_dataset(4, seed=3)
    trainer = make_trainer(tmp_path, student, teacher, data, kd_kind="reverse_kl")
    gen = generate_continuations(trainer, CausalLMCollator(0)([data[i] for i in range(4)]), seed=0)
    n = int((gen["labels"][:, 1:] != -100).sum())
    student.train()
    loss = trainer.compute_loss(student, dict(gen), num_items_in_batch=torch.tensor(n))
    inputs = {k: gen[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s, t = student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1]
    ref = distillation_loss(
        s.double(),
        t.double(),
        gen["labels"][:, 1:],
        alpha=1.0,
        temperature=2.0,
        kind="reverse_kl",
        num_items_in_batch=n,
    )
    np.testing.assert_allclose(
        loss.item(), ref.loss.item(), rtol=1e-4, atol=1e-7
    )  # no CE: alpha does not apply


def test_gradient_accumulation_is_exact_on_policy(tmp_path):
    data, teacher = lm_dataset(16, seed=4), tiny_llama(hidden=48, seed=1)
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
        trainer.train()
        results.append(
            (weights(student), [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h])
        )
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    off = tiny_llama(seed=0)
    make_trainer(tmp_path / "off", off, teacher, data, lmbda=0.0).train()
    assert max_diff(weights(off), results[0][0]) > 1e-4  # the on-policy batches did change training


def test_the_on_policy_decision_is_seeded_by_step():
    decisions = [step_is_on_policy(0, step, 0.5) for step in range(200)]
    assert decisions == [step_is_on_policy(0, step, 0.5) for step in range(200)]
    assert 70 < sum(decisions) < 130
    assert not any(step_is_on_policy(0, s, 0.0) for s in range(50)) and all(
        step_is_on_policy(0, s, 1.0) for s in range(50)
    )


def test_resumed_run_matches_a_straight_one_with_sampling(tmp_path):
    teacher, data = tiny_llama(hidden=48, seed=1), lm_dataset(24, seed=5)
    common = dict(
        max_steps=6,
        per_device_train_batch_size=4,
        lmbda=0.5,
        generation_temperature=1.0,
        optim="adamw_torch",
        learning_rate=1e-2,
    )
    straight = tiny_llama(seed=0)
    make_trainer(tmp_path / "a", straight, teacher, data, **common).train()
    make_trainer(
        tmp_path / "b", tiny_llama(seed=0), teacher, data, save_strategy="steps", save_steps=3, **common
    ).train()
    resumed = tiny_llama(seed=3)
    make_trainer(tmp_path / "b", resumed, teacher, data, **common).train(
        resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3")
    )
    assert max_diff(weights(straight), weights(resumed)) < 1e-6


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(lmbda=1.5), "lmbda"),
        (dict(lmbda=-0.1), "lmbda"),
        (dict(lmbda=0.5, task="seq-cls"), "causal-lm only"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(generation_temperature=-1.0), "generation_temperature"),
        (dict(lmbda=0.5, alpha=0.0), "needs a teacher"),
    ],
)
def test_bad_on_policy_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(output_dir="unused", report_to="none", **fields)


def test_on_policy_on_a_classification_task_is_refused(tmp_path):
    from test_tasks import args, cls_dataset, tiny_bert

    with pytest.raises(ValueError, match="causal-lm only"):
        DistillationTrainer(
            model=tiny_bert(),
            teacher_model=tiny_bert(seed=1),
            args=args(tmp_path, lmbda=0.5),
            train_dataset=cls_dataset(),
        )
