"""distill.losses against an independent float64 numpy reference, plus properties and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import KD_KINDS, distillation_loss

IGNORE = -100


# ----------------------------------------------------------------------------------------------
# Independent reference: plain numpy, float64, written from the spec (not from distill.losses).
# ----------------------------------------------------------------------------------------------
def _np(x: torch.Tensor) -> np.ndarray:
    # Upcast via float32 first so bf16/fp16 tensors keep exactly the values the model produced.
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return x.to(torch.float64).cpu().numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _kl_rows(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """sum_v p (log p - log q) with the convention 0 * log 0 = 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(-1)


def _skew_kl_rows(x: np.ndarray, y: np.ndarray, a: float) -> np.ndarray:
    """KL(x || a x + (1 - a) y) for probability rows, in probability space (not log space)."""
    m = a * x + (1 - a) * y
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 0, x * np.log(x / m), 0.0)
    return terms.sum(-1)


def ref_divergence(s, t, temperature, kind, beta=0.5, skew_alpha=0.1):
    """Per-row divergence in float64 numpy; s, t: [N, V] numpy arrays."""
    log_ps = _log_softmax(s / temperature)
    log_pt = _log_softmax(t / temperature)
    if kind == "forward_kl":
        return _kl_rows(log_pt, log_ps)
    if kind == "reverse_kl":
        return _kl_rows(log_ps, log_pt)
    if kind == "skew_forward_kl":  # DistiLLM: KL(p || a p + (1 - a) q)
        return _skew_kl_rows(np.exp(log_pt), np.exp(log_ps), skew_alpha)
    if kind == "skew_reverse_kl":  # KL(q || a q + (1 - a) p)
        return _skew_kl_rows(np.exp(log_ps), np.exp(log_pt), skew_alpha)
    assert kind == "jsd"
    # log(b p + (1-b) q) without leaving log space: exp underflows to 0 at log-probs below about -745.
    log_m = np.logaddexp(np.log(beta) + log_pt, np.log1p(-beta) + log_ps)
    return beta * _kl_rows(log_pt, log_m) + (1 - beta) * _kl_rows(log_ps, log_m)


def ref_loss(
    student,
    teacher,
    labels=None,
    *,
    alpha,
    temperature,
    kind="forward_kl",
    beta=0.5,
    num_items_in_batch=None,
    vocab_size=None,
    skew_alpha=0.1,
):
    """Returns (loss, kd_loss, ce_loss, num_valid) as python floats / int."""
    s, t = _np(student), _np(teacher)
    if vocab_size is not None:
        s, t = s[..., :vocab_size], t[..., :vocab_size]
    v = s.shape[-1]
    s, t = s.reshape(-1, v), t.reshape(-1, v)
    if labels is None:
        valid = np.ones(s.shape[0], dtype=bool)
    else:
        lab = labels.reshape(-1).cpu().numpy()
        valid = lab != IGNORE
    n = int(valid.sum())
    denom = float(num_items_in_batch) if num_items_in_batch is not None else max(n, 1)
    div = ref_divergence(s[valid], t[valid], temperature, kind, beta, skew_alpha)
    kd = temperature**2 * div.sum() / denom
    if labels is None:
        ce = 0.0
    else:
        lsm = _log_softmax(s[valid])
        ce = -lsm[np.arange(n), lab[valid]].sum() / denom
    return alpha * kd + (1 - alpha) * ce, kd, ce, n


def make_batch(
    b=3,
    t=7,
    v=11,
    *,
    seed=0,
    vs=None,
    vt=None,
    scale=3.0,
    pad_row=True,
    pad_frac=0.3,
    teacher_dtype=torch.float32,
    student_dtype=torch.float32,
    label_vocab=None,
):
    g = torch.Generator().manual_seed(seed)
    vs = vs or v
    vt = vt or v
    student = (scale * torch.randn(b, t, vs, generator=g, dtype=torch.float64)).to(student_dtype)
    teacher = (scale * torch.randn(b, t, vt, generator=g, dtype=torch.float64)).to(teacher_dtype)
    labels = torch.randint(0, label_vocab or min(vs, vt), (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < pad_frac] = IGNORE
    if pad_row and b > 1:
        labels[1] = IGNORE  # a whole padded sequence
    return student, teacher, labels


def assert_matches(out, ref, *, rtol=1e-5, atol=1e-6):
    loss, kd, ce, n = ref
    assert int(out.num_valid) == n
    np.testing.assert_allclose(out.kd_loss.item(), kd, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.ce_loss.item(), ce, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.loss.item(), loss, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# Agreement with the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 40, "tensor"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_reference_with_labels(kind, nib, temperature):
    student, teacher, labels = make_batch(seed=1)
    n_valid = int((labels != IGNORE).sum())
    num_items = torch.tensor(n_valid + 5) if nib == "tensor" else nib
    out = distillation_loss(
        student, teacher, labels, alpha=0.6, temperature=temperature, kind=kind, num_items_in_batch=num_items
    )
    ref = ref_loss(
        student,
        teacher,
        labels,
        alpha=0.6,
        temperature=temperature,
        kind=kind,
        num_items_in_batch=None if num_items is None else int(num_items),
    )
    assert_matches(out, ref)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 50])
def test_matches_reference_without_labels(kind, nib):
    student, teacher, _ = make_batch(seed=2)
    out = distillation_loss(
        student, teacher, None, alpha=1.0, temperature=2.0, kind=kind, num_items_in_batch=nib
    )
    ref = ref_loss(student, teacher, None, alpha=1.0, temperature=2.0, kind=kind, num_items_in_batch=nib)
    assert_matches(out, ref)
    assert int(out.num_valid) == student.shape[0] * student.shape[1]
    assert out.ce_loss.item() == 0.0


@pytest.mark.parametrize("jsd_beta", [0.1, 0.5, 0.9])
def test_jsd_beta_matches_reference(jsd_beta):
    student, teacher, labels = make_batch(seed=3)
    out = distillation_loss(
        student, teacher, labels, alpha=0.7, temperature=1.5, kind="jsd", jsd_beta=jsd_beta
    )
    assert_matches(
        out, ref_loss(student, teacher, labels, alpha=0.7, temperature=1.5, kind="jsd", beta=jsd_beta)
    )


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("teacher_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_teacher_is_upcast(kind, teacher_dtype):
    student, teacher, labels = make_batch(seed=4, teacher_dtype=teacher_dtype)
    out = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind)
    assert out.loss.dtype == torch.float32
    # The reference sees exactly the rounded teacher values, in float64.
    assert_matches(out, ref_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind))


@pytest.mark.parametrize("kind", KD_KINDS)
def test_bf16_student_computed_in_float32(kind):
    student, teacher, labels = make_batch(seed=5, student_dtype=torch.bfloat16, teacher_dtype=torch.bfloat16)
    out = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind)
    assert out.loss.dtype == torch.float32
    assert_matches(out, ref_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind))


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("vs,vt,vocab_size", [(13, 16, 13), (16, 13, 13), (16, 20, 11), (12, 12, 9)])
def test_vocab_padding_is_sliced(kind, vs, vt, vocab_size):
    student, teacher, labels = make_batch(seed=6, vs=vs, vt=vt, label_vocab=vocab_size)
    out = distillation_loss(
        student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind, vocab_size=vocab_size
    )
    assert_matches(
        out, ref_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind, vocab_size=vocab_size)
    )
    # Padding columns must not matter at all (never zero-padded, never seen).
    student2, teacher2 = student.clone(), teacher.clone()
    student2[..., vocab_size:] = 1e4
    teacher2[..., vocab_size:] = -1e4
    out2 = distillation_loss(
        student2, teacher2, labels, alpha=0.5, temperature=2.0, kind=kind, vocab_size=vocab_size
    )
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_float64_stays_float64_and_is_exact():
    student, teacher, labels = make_batch(seed=7, student_dtype=torch.float64, teacher_dtype=torch.float64)
    for kind in KD_KINDS:
        out = distillation_loss(student, teacher, labels, alpha=0.4, temperature=3.0, kind=kind)
        assert out.loss.dtype == torch.float64
        assert_matches(
            out,
            ref_loss(student, teacher, labels, alpha=0.4, temperature=3.0, kind=kind),
            rtol=1e-12,
            atol=1e-12,
        )


def test_ignored_positions_count_nowhere():
    student, teacher, labels = make_batch(seed=8)
    out = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    mask = labels == IGNORE
    student2, teacher2 = student.clone(), teacher.clone()
    student2[mask] = float("nan")  # garbage at ignored positions must not leak
    teacher2[mask] = 1e6
    out2 = distillation_loss(student2, teacher2, labels, alpha=0.5, temperature=2.0)
    assert out2.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert out2.num_valid.item() == (~mask).sum().item()


@pytest.mark.parametrize("kind", KD_KINDS)
def test_gradient_accumulation_invariance(kind):
    """Micro-batches divided by the global count sum to the full-batch loss (and gradient)."""
    student, teacher, labels = make_batch(b=4, seed=9)
    total = int((labels != IGNORE).sum())
    full_s = student.clone().requires_grad_()
    full = distillation_loss(full_s, teacher, labels, alpha=0.5, temperature=2.0, kind=kind)
    full.loss.backward()
    micro_s = student.clone().requires_grad_()
    acc = 0.0
    for i in range(4):
        out = distillation_loss(
            micro_s[i : i + 1],
            teacher[i : i + 1],
            labels[i : i + 1],
            alpha=0.5,
            temperature=2.0,
            kind=kind,
            num_items_in_batch=total,
        )
        out.loss.backward()
        acc += out.loss.item()
    assert acc == pytest.approx(full.loss.item(), rel=1e-5)
    torch.testing.assert_close(micro_s.grad, full_s.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 10, 0, torch.tensor(0)], ids=["local", "10", "0", "tensor0"])
def test_all_ignored_batch_is_zero_not_nan(kind, nib):
    """Also with num_items_in_batch = 0: an optimizer step whose micro-batches hold no targets."""
    student, teacher, labels = make_batch(seed=10)
    labels[:] = IGNORE
    student.requires_grad_()
    out = distillation_loss(
        student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind, num_items_in_batch=nib
    )
    assert out.loss.item() == 0.0 and out.kd_loss.item() == 0.0 and out.ce_loss.item() == 0.0
    assert out.num_valid.item() == 0
    out.loss.backward()
    assert torch.count_nonzero(student.grad) == 0


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_masked_teacher_logits_use_zero_log_zero(kind):
    """A teacher that masks tokens with -inf has p_t = 0 there, and 0 * log 0 = 0 (no NaN)."""
    student, teacher, labels = make_batch(seed=11)
    teacher[..., :3] = float("-inf")
    student.requires_grad_()
    out = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind)
    assert math.isfinite(out.loss.item())
    assert_matches(out, ref_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind))
    out.loss.backward()
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_equal_logits_give_zero_divergence(kind, temperature):
    student, _, labels = make_batch(seed=12, scale=10.0)
    out = distillation_loss(student, student.clone(), labels, alpha=1.0, temperature=temperature, kind=kind)
    assert abs(out.kd_loss.item()) < 1e-6
    out64 = distillation_loss(
        student.double(), student.double(), labels, alpha=1.0, temperature=temperature, kind=kind
    )
    assert abs(out64.kd_loss.item()) < 1e-13


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3),
    t=st.integers(1, 5),
    v=st.integers(2, 40),
    scale=st.floats(0.01, 30.0),
    temperature=st.floats(0.05, 20.0),
    kind=st.sampled_from(KD_KINDS),
    jsd_beta=st.floats(0.01, 0.99),
)
def test_every_kind_is_non_negative_and_matches_reference(seed, b, t, v, scale, temperature, kind, jsd_beta):
    student, teacher, labels = make_batch(b, t, v, seed=seed, scale=scale, pad_row=False)
    out = distillation_loss(
        student, teacher, labels, alpha=1.0, temperature=temperature, kind=kind, jsd_beta=jsd_beta
    )
    ref = ref_loss(student, teacher, labels, alpha=1.0, temperature=temperature, kind=kind, beta=jsd_beta)
    kd = out.kd_loss.item()
    assert math.isfinite(kd)
    # float32 softmax round-off allows a tiny negative value, relative to the size of the terms.
    assert kd >= -1e-5 * temperature**2
    assert ref[1] >= 0.0
    np.testing.assert_allclose(kd, ref[1], rtol=1e-4, atol=1e-5 * temperature**2)
    out64 = distillation_loss(
        student.double(),
        teacher.double(),
        labels,
        alpha=1.0,
        temperature=temperature,
        kind=kind,
        jsd_beta=jsd_beta,
    )
    assert out64.kd_loss.item() >= -1e-12 * temperature**2


@pytest.mark.parametrize("kind", KD_KINDS)
def test_gradcheck_float64(kind):
    g = torch.Generator().manual_seed(13)
    student = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, IGNORE, 4], [0, 2, IGNORE]])

    def fn(s, t):
        out = distillation_loss(s, t, labels, alpha=0.3, temperature=2.0, kind=kind, jsd_beta=0.3)
        return out.loss, out.kd_loss, out.ce_loss

    assert torch.autograd.gradcheck(fn, (student, teacher), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_analytic_gradient_of_forward_kl_and_ce(kind):
    """d(T^2 KL)/dz = T (softmax(z/T) - p_t) for forward KL; d CE/dz = softmax(z) - onehot."""
    student, teacher, labels = make_batch(seed=14, student_dtype=torch.float64, teacher_dtype=torch.float64)
    student.requires_grad_()
    temperature = 3.0
    out = distillation_loss(student, teacher, labels, alpha=0.0, temperature=temperature, kind=kind)
    out.loss.backward()
    valid = labels != IGNORE
    n = valid.sum()
    expected = torch.softmax(student.detach(), -1)
    expected[valid] -= F.one_hot(labels[valid], student.shape[-1]).double()
    expected[~valid] = 0
    torch.testing.assert_close(student.grad, expected / n)
    if kind == "forward_kl":
        student.grad = None
        out = distillation_loss(student, teacher, labels, alpha=1.0, temperature=temperature)
        out.loss.backward()
        expected = temperature * (
            torch.softmax(student.detach() / temperature, -1) - torch.softmax(teacher / temperature, -1)
        )
        expected[~valid] = 0
        torch.testing.assert_close(student.grad, expected / n)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_t_squared_scaling(kind, temperature):
    student, teacher, labels = make_batch(seed=15)
    out = distillation_loss(student, teacher, labels, alpha=1.0, temperature=temperature, kind=kind)
    valid = (labels != IGNORE).reshape(-1).numpy()
    v = student.shape[-1]
    raw = ref_divergence(
        _np(student).reshape(-1, v)[valid], _np(teacher).reshape(-1, v)[valid], temperature, kind
    ).mean()
    np.testing.assert_allclose(out.kd_loss.item() / temperature**2, raw, rtol=1e-5)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_alpha_extremes(kind):
    student, teacher, labels = make_batch(seed=16)
    s1 = student.clone().requires_grad_()
    out1 = distillation_loss(s1, teacher, labels, alpha=1.0, temperature=2.0, kind=kind)
    assert out1.loss.item() == pytest.approx(out1.kd_loss.item(), rel=1e-7)
    assert out1.ce_loss.item() > 0  # still reported for logging
    out1.loss.backward()
    s_kd = student.clone().requires_grad_()
    distillation_loss(s_kd, teacher, labels, alpha=1.0, temperature=2.0, kind=kind).kd_loss.backward()
    torch.testing.assert_close(s1.grad, s_kd.grad)

    s0 = student.clone().requires_grad_()
    out0 = distillation_loss(s0, teacher, labels, alpha=0.0, temperature=2.0, kind=kind)
    ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    assert out0.loss.item() == pytest.approx(ce.item(), rel=1e-6)
    assert out0.ce_loss.item() == pytest.approx(ce.item(), rel=1e-6)
    out0.loss.backward()
    s_ce = student.clone().requires_grad_()
    F.cross_entropy(s_ce.reshape(-1, s_ce.shape[-1]), labels.reshape(-1), ignore_index=IGNORE).backward()
    torch.testing.assert_close(s0.grad, s_ce.grad)


def test_teacher_receives_no_gradient_when_detached():
    student, teacher, labels = make_batch(seed=17)
    student.requires_grad_()
    distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0).loss.backward()
    assert teacher.grad is None and student.grad is not None


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_vocab_mismatch_without_vocab_size_raises():
    student, teacher, labels = make_batch(seed=18, vs=13, vt=16, label_vocab=13)
    with pytest.raises(ValueError, match="vocab_size"):
        distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)


def test_vocab_size_larger_than_logits_raises():
    student, teacher, labels = make_batch(seed=18, vs=13, vt=16, label_vocab=13)
    with pytest.raises(ValueError, match="vocab_size=14"):
        distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, vocab_size=14)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.999])
def test_alpha_below_one_without_labels_raises(alpha):
    student, teacher, _ = make_batch(seed=19)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(student, teacher, None, alpha=alpha, temperature=2.0)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_out_of_range_raises(alpha):
    student, teacher, labels = make_batch(seed=19)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, labels, alpha=alpha, temperature=2.0)


@pytest.mark.parametrize("kind", ["kl", "forward", "JSD", ""])
def test_bad_kind_raises(kind):
    student, teacher, labels = make_batch(seed=20)
    with pytest.raises(ValueError, match="not supported"):
        distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind=kind)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(temperature):
    student, teacher, labels = make_batch(seed=21)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, labels, alpha=0.5, temperature=temperature)


@pytest.mark.parametrize("jsd_beta", [0.0, 1.0, 1.5])
def test_bad_jsd_beta_raises(jsd_beta):
    student, teacher, labels = make_batch(seed=22)
    with pytest.raises(ValueError, match="jsd_beta"):
        distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, kind="jsd", jsd_beta=jsd_beta)


def test_misaligned_shapes_raise():
    student, teacher, labels = make_batch(seed=23)
    with pytest.raises(ValueError, match="align"):
        distillation_loss(student, teacher[:, :-1], labels, alpha=0.5, temperature=2.0)
    with pytest.raises(ValueError, match="leading shape"):
        distillation_loss(student, teacher, labels[:, :-1], alpha=0.5, temperature=2.0)


@pytest.mark.parametrize("chunk_values", [1, 7 * 13, 2**22])
def test_student_cross_entropy_matches_float64_on_a_shifted_view(chunk_values):
    """Chunked gathering from a strided view (the causal shift) gives the float64 reference sum and gradient."""
    import torch.nn.functional as F

    from distill.losses import student_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(3, 9, 13, requires_grad=True)
    labels = torch.randint(0, 13, (3, 9))
    labels[0, :4] = IGNORE
    view, shifted = logits[:, :-1], labels[:, 1:]
    total, count = student_cross_entropy(view, shifted, chunk_values=chunk_values)
    valid = shifted != IGNORE
    ref = F.cross_entropy(view.double()[valid], shifted[valid], reduction="sum")
    assert int(count) == int(valid.sum())
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(total, logits)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad.float(), rtol=1e-5, atol=1e-6)
