"""Several teachers for one task: the combined soft target against float64 numpy, placement, exactness, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights
from test_losses import _kl_rows, _log_softmax, _np, make_batch

from distill import DistillationConfig, DistillationTrainer
from distill.losses import chunked_distillation_loss, distillation_loss
from distill.teacher.ensemble import TeacherEnsemble, combine_teacher_logits
from distill.trainer.tasks import CausalLMCollator


def ref_mixture_kd(student, teachers, w, labels, temperature, kind):
    """T^2 * mean over valid positions of D(sum_k w_k p_k, q), in float64 numpy probability space."""
    v = student.shape[-1]
    valid = (labels.reshape(-1) != -100).numpy()
    log_q = _log_softmax(_np(student).reshape(-1, v)[valid] / temperature)
    p = sum(
        wk * np.exp(_log_softmax(_np(t).reshape(-1, v)[valid] / temperature)) for wk, t in zip(w, teachers)
    )
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    div = _kl_rows(log_p, log_q) if kind == "forward_kl" else _kl_rows(log_q, log_p)
    return temperature**2 * div.sum() / max(valid.sum(), 1)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("w", [(0.5, 0.5), (0.2, 0.8), (1.0, 0.0), (0.1, 0.3, 0.6)])
def test_weighted_mean_matches_float64_reference(kind, w):
    student, t0, labels = make_batch(seed=1, scale=3.0)
    teachers = [t0] + [make_batch(seed=10 + k, scale=2.0 + k)[1] for k in range(len(w) - 1)]
    combined = combine_teacher_logits(teachers, w, temperature=1.7)
    ref = ref_mixture_kd(student, teachers, w, labels, 1.7, kind)
    for fn in (distillation_loss, chunked_distillation_loss):
        out = fn(student, combined, labels, alpha=1.0, temperature=1.7, kind=kind)
        np.testing.assert_allclose(out.kd_loss.item(), ref, rtol=1e-5)


def test_one_teacher_with_all_the_weight_is_that_teacher():
    _, t0, _ = make_batch(seed=2)
    t1 = make_batch(seed=3)[1]
    combined = combine_teacher_logits([t0.double(), t1.double()], [0.0, 1.0], temperature=2.0)
    torch.testing.assert_close(torch.log_softmax(combined / 2, -1), torch.log_softmax(t1.double() / 2, -1))


def test_most_confident_picks_per_position():
    g = torch.Generator().manual_seed(4)
    teachers = [torch.randn(3, 5, 7, generator=g, dtype=torch.float64) * s for s in (1.0, 3.0, 2.0)]
    combined = combine_teacher_logits(teachers, [1 / 3] * 3, temperature=2.0, mode="most_confident")
    top = np.stack([np.exp(_log_softmax(_np(t))).max(-1) for t in teachers])  # [K, 3, 5]
    best = top.argmax(0)
    expect = np.take_along_axis(np.stack([_np(t) for t in teachers]), best[None, ..., None], 0)[0]
    np.testing.assert_array_equal(_np(combined), expect)
    assert len(set(best.ravel().tolist())) > 1  # the test does exercise a per-position choice


def test_padded_vocabularies_are_sliced_before_mixing():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 9, generator=g), torch.randn(2, 12, generator=g)
    combined = combine_teacher_logits([a, b], [0.5, 0.5], temperature=1.0, vocab_size=9)
    p = 0.5 * torch.softmax(a, -1) + 0.5 * torch.softmax(b[:, :9], -1)
    torch.testing.assert_close(torch.softmax(combined, -1), p)
    with pytest.raises(ValueError, match="different widths"):
        combine_teacher_logits([a, b], [0.5, 0.5], temperature=1.0)


def make_trainer(tmp_path, student, teachers, data, **overrides):
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
    )
    kw.update(overrides)
    return DistillationTrainer(
        model=student,
        teacher_model=teachers,
        args=DistillationConfig(**kw),
        train_dataset=data,
        data_collator=CausalLMCollator(pad_token_id=0),
    )


@pytest.mark.parametrize("mode", ["mean", "most_confident"])
def test_trainer_gradient_accumulation_is_exact_and_teachers_stay_frozen(tmp_path, mode):
    data = lm_dataset(32)
    teachers = [tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=2)]
    before = [weights(t) for t in teachers]
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_llama(seed=0)
        extra = {"teacher_weights": [0.3, 0.7]} if mode == "mean" else {}
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            student,
            teachers,
            data,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            teacher_ensemble=mode,
            **extra,
        )
        trainer.train()
        assert isinstance(trainer.teacher, TeacherEnsemble) and not trainer.teacher.training
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert not optimized & {id(p) for p in trainer.teacher.parameters()}
        results.append(
            (weights(student), [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h])
        )
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-4)
    for t, w in zip(teachers, before):
        assert not t.training and max_diff(w, weights(t)) == 0.0
        assert not any(p.requires_grad for p in t.parameters())


def test_trainer_kd_is_against_the_weighted_mixture(tmp_path):
    data = lm_dataset(8, seed=5)
    student, teachers = tiny_llama(seed=0), [tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=2)]
    trainer = make_trainer(tmp_path, student, teachers, data, teacher_weights=[1.0, 3.0], temperature=1.5)
    metrics = trainer.evaluate(eval_dataset=data)
    batch = CausalLMCollator(pad_token_id=0)([data[i] for i in range(len(data))])
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        s = student(**inputs).logits[:, :-1]
        ts = [t(**inputs).logits[:, :-1] for t in teachers]
    ref = ref_mixture_kd(s, ts, [0.25, 0.75], batch["labels"][:, 1:], 1.5, "forward_kl")
    np.testing.assert_allclose(metrics["eval_kd_loss"], ref, rtol=1e-4)


@pytest.mark.parametrize(
    "fields, match",
    [
        (
            dict(teacher_model_name_or_path="a", extra_teachers=["b"], teacher_weights=[1.0]),
            "one weight per teacher",
        ),
        (
            dict(teacher_model_name_or_path="a", extra_teachers=["b"], teacher_weights=[1.0, -1.0]),
            "non-negative",
        ),
        (
            dict(teacher_model_name_or_path="a", extra_teachers=["b"], teacher_weights=[0.0, 0.0]),
            "positive sum",
        ),
        (dict(extra_teachers=["b"]), "needs teacher_model_name_or_path"),
        (
            dict(teacher_model_name_or_path="a", extra_teachers=["b"], teacher_ensemble="vote"),
            "teacher_ensemble",
        ),
        (
            dict(
                teacher_model_name_or_path="a",
                extra_teachers=["b"],
                teacher_ensemble="most_confident",
                teacher_weights=[1.0, 2.0],
            ),
            "mean' only",
        ),
        (
            dict(
                teacher_model_name_or_path="a",
                extra_teachers=["b"],
                kd_fused_lm_head=True,
                ddp_find_unused_parameters=False,
            ),
            "one teacher only",
        ),
    ],
)
def test_bad_multi_teacher_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(output_dir="unused", report_to="none", **fields)


def test_trainer_refuses_a_weight_count_that_does_not_match_the_teachers(tmp_path):
    with pytest.raises(ValueError, match="one weight per teacher"):
        make_trainer(
            tmp_path,
            tiny_llama(seed=0),
            [tiny_llama(seed=1), tiny_llama(seed=2)],
            lm_dataset(8),
            teacher_weights=[1.0, 2.0, 3.0],
        )


def test_recipe_fields_parse_and_missing_extra_teacher_is_refused_before_compute(tmp_path):
    from distill.train import main, parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "task: causal-lm\nmodel_config: {model_type: llama}\nteacher_model_name_or_path: a\n"
        "extra_teachers: [b, c]\nteacher_weights: [1, 1, 2]\n"
    )
    _, _, args = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])
    assert args.extra_teachers == ["b", "c"] and args.teacher_weights == [1, 1, 2]
    _, _, args = parse_args(
        ["--config", str(recipe), "--output_dir", str(tmp_path), "--teacher_weights", "1", "2", "3"]
    )
    assert args.teacher_weights == [1.0, 2.0, 3.0]
    good = tmp_path / "teacher"
    tiny_llama().save_pretrained(good)
    with pytest.raises(FileNotFoundError, match="extra_teachers"):
        main(
            [
                "--config",
                str(recipe),
                "--output_dir",
                str(tmp_path / "out"),
                "--teacher_model_name_or_path",
                str(good),
                "--extra_teachers",
                str(tmp_path / "missing"),
                "--teacher_weights",
                "1",
                "1",
            ]
        )


@pytest.mark.slow
def test_zero3_two_teachers_in_sharded_engines_and_on_policy_generation(tmp_path):
    """torchrun, 2 processes under ZeRO-3, against one process without DeepSpeed, in one launch (DeepSpeed start-up
    is the cost): two teachers, each in its own sharded engine, and every step on-policy (greedy), so the student
    generates with synced_gpus on its sharded parameters (tests/test_on_policy.py has the single-process checks)."""
    import json
    import os
    import sys

    from test_deepspeed import (
        BIN,
        CONFIGS,
        SCRIPT,
        _read,
        _run,
        assert_frozen_own_engine,
        assert_same_training,
    )

    extra = {"ensemble": True, "lmbda": 1.0, "generation_temperature": 0.0, "max_new_tokens": 5}
    reference = str(tmp_path / "single")
    _run([sys.executable, SCRIPT, reference, "8", json.dumps(extra)], reference)
    out = str(tmp_path / "zero3")
    extra["deepspeed"] = os.path.join(CONFIGS, "zero3.json")
    _run(
        [
            os.path.join(BIN, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29561",
            SCRIPT,
            out,
            "4",
            json.dumps(extra),
        ],
        out,
    )
    assert_same_training(reference, out)
    for rank in (0, 1):
        facts = _read(out, f"placement-{rank}.json")
        assert facts["teacher_type"] == "TeacherEnsemble" and len(facts["members"]) == 2
        engines = set()
        for member in facts["members"]:
            assert_frozen_own_engine(member, teacher_stage=3, student_stage=3)
            assert member["teacher_local_numel"] * 2 == member["teacher_full_numel"]
            engines.add(member["teacher_full_numel"])
        assert len(engines) == 2  # two different teachers, not one engine twice
