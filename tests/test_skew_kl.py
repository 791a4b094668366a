"""Skew KL (DistiLLM): plain, chunked, fused and cached losses against a float64 numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses import assert_matches, make_batch, ref_loss

from distill.config import DistillationConfig
from distill.losses import chunked_distillation_loss, distillation_loss, fused_linear_distillation_loss
from distill.losses.cached import cached_distillation_loss, teacher_topk

SKEW_KINDS = ("skew_forward_kl", "skew_reverse_kl")


@pytest.mark.parametrize("kind", SKEW_KINDS)
@pytest.mark.parametrize("skew_alpha", [0.0, 0.1, 0.5, 0.95])
@pytest.mark.parametrize("nib", [None, 31])
def test_plain_and_chunked_match_numpy_reference(kind, skew_alpha, nib):
    student, teacher, labels = make_batch(seed=3, scale=4.0)
    kw = dict(alpha=0.7, temperature=1.5, kind=kind, skew_alpha=skew_alpha, num_items_in_batch=nib)
    ref = ref_loss(
        student,
        teacher,
        labels,
        alpha=0.7,
        temperature=1.5,
        kind=kind,
        skew_alpha=skew_alpha,
        num_items_in_batch=nib,
    )
    assert_matches(distillation_loss(student, teacher, labels, **kw), ref)
    assert_matches(chunked_distillation_loss(student, teacher, labels, chunk_size=4, **kw), ref)


@pytest.mark.parametrize(
    "kind, plain", [("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")]
)
def test_zero_skew_is_the_plain_kl(kind, plain):
    student, teacher, labels = make_batch(seed=4, student_dtype=torch.float64, teacher_dtype=torch.float64)
    for fn in (distillation_loss, chunked_distillation_loss):
        skew = fn(student, teacher, labels, alpha=1.0, temperature=2.0, kind=kind, skew_alpha=0.0)
        ref = fn(student, teacher, labels, alpha=1.0, temperature=2.0, kind=plain)
        torch.testing.assert_close(skew.kd_loss, ref.kd_loss, rtol=1e-12, atol=1e-12)


class _RecomputedChunkedLoss(torch.autograd.Function):
    """The chunked loss with its precomputed gradient recomputed on every backward, so that
    ``torch.autograd.gradcheck`` (which backpropagates several times) can check it."""

    @staticmethod
    def forward(ctx, student, teacher, labels, kw):
        ctx.save_for_backward(student)
        ctx.teacher, ctx.labels, ctx.kw = teacher, labels, kw
        with torch.no_grad():
            return chunked_distillation_loss(student, teacher, labels, **kw).loss

    @staticmethod
    def backward(ctx, grad_out):
        (student,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = student.detach().requires_grad_()
            loss = chunked_distillation_loss(leaf, ctx.teacher, ctx.labels, **ctx.kw).loss
            (grad,) = torch.autograd.grad(loss, leaf)
        return grad_out * grad, None, None, None


@pytest.mark.parametrize("kind", SKEW_KINDS)
@pytest.mark.parametrize("skew_alpha", [0.0, 0.1, 0.6])
def test_gradcheck_float64(kind, skew_alpha):
    """The hand-derived kernel gradient against numerical differentiation, and the plain loss's autograd."""
    g = torch.Generator().manual_seed(21)
    student = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = 2 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    if kind == "skew_forward_kl" or skew_alpha > 0:
        # A masked teacher token: 0 log 0 = 0 (forward); the skew keeps reverse KL finite (m >= a q > 0).
        teacher[0, 0, 2] = -math.inf
    labels = torch.tensor([[1, -100, 4], [0, 2, 5]])
    kw = dict(
        alpha=0.4, temperature=1.7, kind=kind, skew_alpha=skew_alpha, chunk_size=2, num_items_in_batch=7
    )
    assert torch.autograd.gradcheck(
        lambda s: _RecomputedChunkedLoss.apply(s, teacher, labels, kw),
        (student,),
        eps=1e-6,
        atol=1e-8,
        rtol=1e-6,
    )
    plain = distillation_loss(student, teacher, labels, **{k: v for k, v in kw.items() if k != "chunk_size"})
    (g_plain,) = torch.autograd.grad(plain.loss, student)
    leaf = student.detach().requires_grad_()
    chunked = chunked_distillation_loss(leaf, teacher, labels, **kw)
    chunked.loss.backward()
    torch.testing.assert_close(leaf.grad, g_plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", SKEW_KINDS)
def test_fused_head_and_full_vocab_cache_match_plain(kind):
    g = torch.Generator().manual_seed(5)
    hs, ht, w_s, w_t = (
        torch.randn(2, 5, 6, generator=g),
        torch.randn(2, 5, 8, generator=g),
        torch.randn(13, 6, generator=g),
        torch.randn(13, 8, generator=g),
    )
    labels = torch.randint(0, 13, (2, 5), generator=g)
    labels[0, 1] = -100
    kw = dict(alpha=0.5, temperature=2.0, kind=kind, skew_alpha=0.2)
    ref = distillation_loss(hs @ w_s.T, ht @ w_t.T, labels, **kw)
    fused = fused_linear_distillation_loss(hs, w_s, ht, w_t, labels, chunk_size=3, **kw)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-6)
    ids, logprobs, rest = teacher_topk(ht @ w_t.T, 13, 2.0)
    cached = cached_distillation_loss(hs @ w_s.T, ids, logprobs, rest, labels, **kw)
    torch.testing.assert_close(cached.loss, ref.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SKEW_KINDS)
def test_gradient_accumulation_invariance(kind):
    """Summed micro-batch losses over the global count equal the whole batch's loss, and its gradient."""
    student, teacher, labels = make_batch(b=4, t=5, seed=6)
    n = int((labels != -100).sum())
    kw = dict(alpha=0.5, temperature=2.0, kind=kind, skew_alpha=0.1, chunk_size=3)
    leaf = student.clone().requires_grad_()
    chunked_distillation_loss(leaf, teacher, labels, **kw).loss.backward()
    parts = student.clone().requires_grad_()
    for i in range(0, 4, 2):
        chunked_distillation_loss(
            parts[i : i + 2], teacher[i : i + 2], labels[i : i + 2], num_items_in_batch=n, **kw
        ).loss.backward()
    torch.testing.assert_close(parts.grad, leaf.grad, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    v=st.integers(2, 30),
    scale=st.floats(0.01, 30.0),
    temperature=st.floats(0.1, 10.0),
    kind=st.sampled_from(SKEW_KINDS),
    skew_alpha=st.floats(0.01, 0.99),
)
def test_skew_kl_is_bounded_and_decreases_with_the_skew(seed, v, scale, temperature, kind, skew_alpha):
    """0 <= KL(x || a x + (1-a) y) <= -log a (as m >= a x), it decreases in a, and chunked = plain."""
    student, teacher, labels = make_batch(
        2,
        4,
        v,
        seed=seed,
        scale=scale,
        pad_row=False,
        student_dtype=torch.float64,
        teacher_dtype=torch.float64,
    )
    kw = dict(alpha=1.0, temperature=temperature, kind=kind)
    n = int((labels != -100).sum())
    kd = distillation_loss(student, teacher, labels, skew_alpha=skew_alpha, **kw).kd_loss.item()
    bound = temperature**2 * -math.log(skew_alpha) * n / max(n, 1)
    assert -1e-12 <= kd <= bound * (1 + 1e-9) + 1e-12
    more_skew = distillation_loss(student, teacher, labels, skew_alpha=min(0.999, skew_alpha + 0.1), **kw)
    assert more_skew.kd_loss.item() <= kd + 1e-9 * max(1.0, kd)
    chunked = chunked_distillation_loss(student, teacher, labels, skew_alpha=skew_alpha, chunk_size=3, **kw)
    np.testing.assert_allclose(chunked.kd_loss.item(), kd, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("skew_alpha", [-0.1, 1.0, 1.5])
def test_bad_skew_alpha_is_refused_everywhere(skew_alpha):
    student, teacher, labels = make_batch(seed=7)
    for fn in (distillation_loss, chunked_distillation_loss):
        with pytest.raises(ValueError, match="skew_alpha"):
            fn(
                student,
                teacher,
                labels,
                alpha=0.5,
                temperature=2.0,
                kind="skew_forward_kl",
                skew_alpha=skew_alpha,
            )
    with pytest.raises(ValueError, match="skew_alpha"):
        DistillationConfig(
            output_dir="unused", kd_kind="skew_reverse_kl", skew_alpha=skew_alpha, report_to="none"
        )
    # Only the kind that uses it checks it.
    distillation_loss(
        student, teacher, labels, alpha=0.5, temperature=2.0, kind="forward_kl", skew_alpha=skew_alpha
    )


# ----------------------------------------------------------------------------------------------
# In the trainer (causal LM: the chunked loss)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SKEW_KINDS)
def test_trainer_gradient_accumulation_is_exact(tmp_path, kind):
    from helpers import lm_dataset, max_diff, tiny_llama, weights
    from test_trainer import make_trainer

    data = lm_dataset(32)
    teacher = tiny_llama(hidden=48, seed=1)
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_llama(seed=0)
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            student,
            teacher,
            data,
            max_steps=2,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            kd_kind=kind,
        )
        trainer.train()
        results.append(
            (weights(student), [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h])
        )
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-4)


def test_trainer_evaluates_the_skew_kl_it_was_given(tmp_path):
    """eval_kd_loss is T^2 * the token mean of KL(p || a p + (1-a) q), the float64 numpy reference."""
    from helpers import lm_dataset, tiny_llama
    from test_trainer import make_trainer

    from distill.trainer.tasks import CausalLMCollator

    data = lm_dataset(12, seed=3)
    student, teacher = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1)
    trainer = make_trainer(
        tmp_path,
        student,
        teacher,
        data,
        kd_kind="skew_forward_kl",
        skew_alpha=0.3,
        temperature=1.5,
        per_device_eval_batch_size=4,
    )
    metrics = trainer.evaluate(eval_dataset=data)
    batch = CausalLMCollator(pad_token_id=0)([data[i] for i in range(len(data))])
    with torch.no_grad():
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        s, t = student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1]
    ref = ref_loss(
        s, t, batch["labels"][:, 1:], alpha=1.0, temperature=1.5, kind="skew_forward_kl", skew_alpha=0.3
    )
    np.testing.assert_allclose(metrics["eval_kd_loss"], ref[1], rtol=1e-4)
