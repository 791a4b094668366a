"""Chunked and fused-linear distillation losses equal the plain distillation_loss (values and grads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import KD_KINDS, distillation_loss
from distill.losses.chunked import chunked_distillation_loss, fused_linear_distillation_loss

IGNORE = -100
TOL = dict(rtol=1e-5, atol=1e-6)


def make_batch(
    b=3,
    t=7,
    vs=11,
    vt=None,
    *,
    seed=0,
    scale=3.0,
    label_vocab=None,
    student_dtype=torch.float32,
    teacher_dtype=torch.float32,
    pad_row=True,
):
    g = torch.Generator().manual_seed(seed)
    vt = vt or vs
    student = (scale * torch.randn(b, t, vs, generator=g)).to(student_dtype)
    teacher = (scale * torch.randn(b, t, vt, generator=g)).to(teacher_dtype)
    labels = torch.randint(0, label_vocab or min(vs, vt), (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = IGNORE
    if pad_row:
        labels[1] = IGNORE  # a whole padded sequence
    return student, teacher, labels


def run(fn, student, *args, **kwargs):
    """Loss output and the gradient w.r.t. ``student`` (a fresh leaf)."""
    leaf = student.detach().clone().requires_grad_()
    out = fn(leaf, *args, **kwargs)
    out.loss.backward()
    return out, leaf.grad


def assert_same(out, ref, *, tol=TOL):
    assert int(out.num_valid) == int(ref.num_valid)
    for name in ("loss", "kd_loss", "ce_loss"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.detach(), b.detach(), **tol, msg=name)


# ----------------------------------------------------------------------------------------------
# chunked_distillation_loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 25])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 1024])
def test_chunked_matches_plain(kind, nib, chunk_size):
    student, teacher, labels = make_batch(seed=1)
    n_valid = int((labels != IGNORE).sum())
    assert n_valid % 4 != 0 or n_valid % 5 != 0  # some chunk sizes leave a ragged last chunk
    kw = dict(alpha=0.6, temperature=2.0, kind=kind, num_items_in_batch=nib)
    ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=chunk_size, **kw)
    assert_same(out, ref)
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_chunked_matches_plain_alpha_temperature(kind, temperature, alpha):
    student, teacher, labels = make_batch(seed=2)
    kw = dict(alpha=alpha, temperature=temperature, kind=kind, jsd_beta=0.3)
    ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=3, **kw)
    assert_same(out, ref)
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 30])
def test_chunked_without_labels(kind, nib):
    student, teacher, _ = make_batch(seed=3)
    kw = dict(alpha=1.0, temperature=2.0, kind=kind, num_items_in_batch=nib)
    ref, g_ref = run(distillation_loss, student, teacher, None, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, None, chunk_size=4, **kw)
    assert_same(out, ref)
    assert out.ce_loss.item() == 0.0
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("vs,vt,vocab_size", [(13, 16, 13), (16, 13, 13), (16, 20, 11)])
def test_chunked_vocab_slicing(kind, vs, vt, vocab_size):
    student, teacher, labels = make_batch(vs=vs, vt=vt, seed=4, label_vocab=vocab_size)
    kw = dict(alpha=0.5, temperature=2.0, kind=kind, vocab_size=vocab_size)
    ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=4, **kw)
    assert_same(out, ref)
    assert g.shape == student.shape
    assert torch.count_nonzero(g[..., vocab_size:]) == 0
    torch.testing.assert_close(g, g_ref, **TOL)


def test_chunked_causal_shift_on_non_contiguous_views():
    """The trainer passes logits[:, :-1] and labels[:, 1:] (non-contiguous views)."""
    student, teacher, labels = make_batch(seed=5, t=9)
    kw = dict(alpha=0.5, temperature=2.0)
    leaf_ref = student.clone().requires_grad_()
    ref = distillation_loss(leaf_ref[:, :-1], teacher[:, :-1], labels[:, 1:], **kw)
    ref.loss.backward()
    leaf = student.clone().requires_grad_()
    out = chunked_distillation_loss(leaf[:, :-1], teacher[:, :-1], labels[:, 1:], chunk_size=4, **kw)
    out.loss.backward()
    assert_same(out, ref)
    torch.testing.assert_close(leaf.grad, leaf_ref.grad, **TOL)


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("nib", [None, 10, 0, torch.tensor(0)], ids=["local", "10", "0", "tensor0"])
def test_chunked_all_ignored_batch(kind, nib):
    student, teacher, labels = make_batch(seed=6)
    labels[:] = IGNORE
    out, g = run(
        chunked_distillation_loss,
        student,
        teacher,
        labels,
        alpha=0.5,
        temperature=2.0,
        kind=kind,
        num_items_in_batch=nib,
        chunk_size=4,
    )
    assert out.loss.item() == 0.0 and out.kd_loss.item() == 0.0 and out.ce_loss.item() == 0.0
    assert int(out.num_valid) == 0
    assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0
    ref, g_ref = run(
        distillation_loss,
        student,
        teacher,
        labels,
        alpha=0.5,
        temperature=2.0,
        kind=kind,
        num_items_in_batch=nib,
    )
    assert_same(out, ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_chunked_bf16_student(kind):
    student, teacher, labels = make_batch(seed=7, student_dtype=torch.bfloat16, teacher_dtype=torch.bfloat16)
    kw = dict(alpha=0.5, temperature=2.0, kind=kind)
    ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=4, **kw)
    assert g.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    # Losses are computed in float32 from the same bf16 values, so they agree tightly.
    assert_same(out, ref)
    # Gradients differ only by bf16 rounding of the final cast.
    torch.testing.assert_close(g.float(), g_ref.float(), rtol=1.6e-2, atol=1e-4)


@pytest.mark.parametrize("teacher_dtype", [torch.bfloat16, torch.float16])
def test_chunked_low_precision_teacher(teacher_dtype):
    student, teacher, labels = make_batch(seed=8, teacher_dtype=teacher_dtype)
    for kind in KD_KINDS:
        kw = dict(alpha=0.5, temperature=2.0, kind=kind)
        ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
        out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=4, **kw)
        assert_same(out, ref)
        torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_chunked_masked_teacher_logits(kind):
    student, teacher, labels = make_batch(seed=9)
    teacher[..., :3] = float("-inf")
    kw = dict(alpha=0.5, temperature=2.0, kind=kind)
    ref, g_ref = run(distillation_loss, student, teacher, labels, **kw)
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=4, **kw)
    assert math.isfinite(out.loss.item())
    assert_same(out, ref)
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_chunked_gradient_matches_finite_differences_float64(kind):
    """Directional derivatives of the float64 loss vs the precomputed analytic gradient."""
    student, teacher, labels = make_batch(
        b=2, t=3, vs=5, seed=10, pad_row=False, student_dtype=torch.float64, teacher_dtype=torch.float64
    )
    kw = dict(alpha=0.3, temperature=1.7, kind=kind, jsd_beta=0.3, chunk_size=2)
    out, g = run(chunked_distillation_loss, student, teacher, labels, **kw)
    assert out.loss.dtype == torch.float64 and g.dtype == torch.float64
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(5):
        d = torch.randn(student.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            up = chunked_distillation_loss(student + eps * d, teacher, labels, **kw).loss
            down = chunked_distillation_loss(student - eps * d, teacher, labels, **kw).loss
        fd = (up - down) / (2 * eps)
        torch.testing.assert_close((g * d).sum(), fd, rtol=1e-6, atol=1e-8)


def test_grad_output_scaling_and_teacher_gets_no_grad():
    student, teacher, labels = make_batch(seed=11)
    teacher = teacher.clone().requires_grad_()
    kw = dict(alpha=0.5, temperature=2.0)
    _, g_ref = run(distillation_loss, student, teacher.detach(), labels, **kw)
    leaf = student.clone().requires_grad_()
    out = chunked_distillation_loss(leaf, teacher, labels, chunk_size=4, **kw)
    assert out.loss.requires_grad and not out.kd_loss.requires_grad and not out.ce_loss.requires_grad
    (3.0 * out.loss).backward()
    torch.testing.assert_close(leaf.grad, 3.0 * g_ref, **TOL)
    assert teacher.grad is None


def test_second_backward_raises():
    student, teacher, labels = make_batch(seed=12)
    leaf = student.clone().requires_grad_()
    out = chunked_distillation_loss(leaf, teacher, labels, alpha=0.5, temperature=2.0)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        out.loss.backward()


def test_no_grad_mode_returns_same_loss_without_graph():
    student, teacher, labels = make_batch(seed=13)
    leaf = student.clone().requires_grad_()
    ref = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    with torch.no_grad():
        out = chunked_distillation_loss(leaf, teacher, labels, alpha=0.5, temperature=2.0, chunk_size=4)
    assert out.loss.grad_fn is None
    assert_same(out, ref)
    out2 = chunked_distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, chunk_size=4)
    assert not out2.loss.requires_grad
    assert_same(out2, ref)


@pytest.mark.parametrize(
    "kwargs,labels_none,match",
    [
        (dict(alpha=0.5, temperature=2.0, kind="kl"), False, "not supported"),
        (dict(alpha=0.5, temperature=0.0), False, "temperature"),
        (dict(alpha=0.5, temperature=float("nan")), False, "temperature"),
        (dict(alpha=1.5, temperature=2.0), False, "alpha"),
        (dict(alpha=0.5, temperature=2.0), True, "labels"),
        (dict(alpha=0.5, temperature=2.0, kind="jsd", jsd_beta=1.0), False, "jsd_beta"),
        (dict(alpha=0.5, temperature=2.0, chunk_size=0), False, "chunk_size"),
    ],
)
def test_chunked_errors(kwargs, labels_none, match):
    student, teacher, labels = make_batch(seed=14)
    with pytest.raises(ValueError, match=match):
        chunked_distillation_loss(student, teacher, None if labels_none else labels, **kwargs)


def test_chunked_vocab_errors():
    student, teacher, labels = make_batch(vs=13, vt=16, seed=15, label_vocab=13)
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    with pytest.raises(ValueError, match="vocab_size=14"):
        chunked_distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0, vocab_size=14)
    with pytest.raises(ValueError, match="align"):
        chunked_distillation_loss(student, teacher[:, :-1], labels, alpha=0.5, temperature=2.0, vocab_size=13)
    with pytest.raises(ValueError, match="leading shape"):
        chunked_distillation_loss(student, teacher, labels[:, :-1], alpha=0.5, temperature=2.0, vocab_size=13)


# ----------------------------------------------------------------------------------------------
# fused_linear_distillation_loss
# ----------------------------------------------------------------------------------------------
def make_heads(b=3, t=7, hs=6, ht=9, vs=11, vt=None, *, seed=0, bias=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    vt = vt or vs
    tensors = dict(
        hs=torch.randn(b, t, hs, generator=g),
        ws=torch.randn(vs, hs, generator=g),
        bs=torch.randn(vs, generator=g) if bias else None,
        ht=torch.randn(b, t, ht, generator=g),
        wt=torch.randn(vt, ht, generator=g),
        bt=torch.randn(vt, generator=g) if bias else None,
    )
    tensors = {k: None if v is None else v.to(dtype) for k, v in tensors.items()}
    labels = torch.randint(0, min(vs, vt), (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = IGNORE
    labels[1] = IGNORE
    return tensors, labels


def fused_vs_plain(x, labels, *, chunk_size=4, **kw):
    leaves = {
        k: None if v is None else v.clone().requires_grad_(k in ("hs", "ws", "bs")) for k, v in x.items()
    }
    ref_leaves = {
        k: None if v is None else v.clone().requires_grad_(k in ("hs", "ws", "bs")) for k, v in x.items()
    }
    out = fused_linear_distillation_loss(
        leaves["hs"],
        leaves["ws"],
        leaves["ht"],
        leaves["wt"],
        labels,
        student_head_bias=leaves["bs"],
        teacher_head_bias=leaves["bt"],
        chunk_size=chunk_size,
        **kw,
    )
    out.loss.backward()
    r = ref_leaves
    ref = distillation_loss(
        F.linear(r["hs"], r["ws"], r["bs"]), F.linear(r["ht"], r["wt"], r["bt"]), labels, **kw
    )
    ref.loss.backward()
    return out, ref, leaves, ref_leaves


@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nib", [None, 25])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_fused_matches_plain(kind, bias, nib, chunk_size):
    x, labels = make_heads(seed=20, bias=bias)
    out, ref, leaves, ref_leaves = fused_vs_plain(
        x, labels, chunk_size=chunk_size, alpha=0.4, temperature=2.0, kind=kind, num_items_in_batch=nib
    )
    assert_same(out, ref)
    for k in ("hs", "ws", "bs"):
        if leaves[k] is not None:
            torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, **TOL, msg=k)
    assert leaves["ht"].grad is None and leaves["wt"].grad is None


@pytest.mark.parametrize("kind", KD_KINDS)
def test_fused_vocab_slicing_and_no_labels(kind):
    x, labels = make_heads(vs=13, vt=16, seed=21)
    labels = labels.clamp(max=10).masked_fill(labels == IGNORE, IGNORE)
    kw = dict(alpha=0.5, temperature=1.5, kind=kind, vocab_size=11)
    # vocab slicing: reference slices the full logits, fused slices the head rows.
    leaves = {k: v.clone().requires_grad_(k in ("hs", "ws", "bs")) for k, v in x.items()}
    out = fused_linear_distillation_loss(
        leaves["hs"],
        leaves["ws"],
        leaves["ht"],
        leaves["wt"],
        labels,
        student_head_bias=leaves["bs"],
        teacher_head_bias=leaves["bt"],
        chunk_size=5,
        **kw,
    )
    out.loss.backward()
    r = {k: v.clone().requires_grad_(k in ("hs", "ws", "bs")) for k, v in x.items()}
    ref = distillation_loss(
        F.linear(r["hs"], r["ws"], r["bs"]), F.linear(r["ht"], r["wt"], r["bt"]), labels, **kw
    )
    ref.loss.backward()
    assert_same(out, ref)
    for k in ("hs", "ws", "bs"):
        torch.testing.assert_close(leaves[k].grad, r[k].grad, **TOL, msg=k)
    assert torch.count_nonzero(leaves["ws"].grad[11:]) == 0
    # labels=None, alpha=1
    out, ref, leaves, ref_leaves = fused_vs_plain(
        x, None, alpha=1.0, temperature=2.0, kind=kind, vocab_size=11
    )
    assert_same(out, ref)
    for k in ("hs", "ws", "bs"):
        torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, **TOL, msg=k)


def test_fused_all_ignored_batch():
    x, labels = make_heads(seed=22)
    labels[:] = IGNORE
    out, ref, leaves, _ = fused_vs_plain(x, labels, alpha=0.5, temperature=2.0, kind="jsd")
    assert out.loss.item() == 0.0 and int(out.num_valid) == 0
    for k in ("hs", "ws", "bs"):
        assert torch.isfinite(leaves[k].grad).all() and torch.count_nonzero(leaves[k].grad) == 0
    assert_same(out, ref)


@pytest.mark.parametrize("kind", KD_KINDS)
def test_fused_bf16(kind):
    x, labels = make_heads(seed=23, dtype=torch.bfloat16)
    out, ref, leaves, ref_leaves = fused_vs_plain(x, labels, alpha=0.5, temperature=2.0, kind=kind)
    assert out.loss.dtype == torch.float32
    # Logits are bf16 matmuls on both paths; chunking may change their rounding slightly.
    assert_same(out, ref, tol=dict(rtol=2e-2, atol=2e-2))
    for k in ("hs", "ws", "bs"):
        assert leaves[k].grad.dtype == torch.bfloat16
        g, g_ref = leaves[k].grad.float(), ref_leaves[k].grad.float()
        scale = g_ref.abs().max()
        assert (g - g_ref).abs().max() <= 2e-2 * scale, k


def test_fused_only_some_student_inputs_require_grad():
    x, labels = make_heads(seed=24)
    hs = x["hs"].clone().requires_grad_()
    ws = x["ws"].clone()  # frozen head (e.g. tied and frozen embeddings)
    out = fused_linear_distillation_loss(
        hs,
        ws,
        x["ht"],
        x["wt"],
        labels,
        alpha=0.5,
        temperature=2.0,
        student_head_bias=x["bs"],
        teacher_head_bias=x["bt"],
    )
    out.loss.backward()
    hs_ref = x["hs"].clone().requires_grad_()
    ref = distillation_loss(
        F.linear(hs_ref, ws, x["bs"]), F.linear(x["ht"], x["wt"], x["bt"]), labels, alpha=0.5, temperature=2.0
    )
    ref.loss.backward()
    torch.testing.assert_close(hs.grad, hs_ref.grad, **TOL)
    assert ws.grad is None


def test_fused_shape_errors():
    x, labels = make_heads(seed=25)
    with pytest.raises(ValueError, match="align"):
        fused_linear_distillation_loss(
            x["hs"], x["ws"], x["ht"][:, :-1], x["wt"], labels, alpha=0.5, temperature=2.0
        )
    with pytest.raises(ValueError, match="head weight"):
        fused_linear_distillation_loss(
            x["hs"], x["ws"].t(), x["ht"], x["wt"], labels, alpha=0.5, temperature=2.0
        )
    x2, labels2 = make_heads(vs=11, vt=12, seed=25)
    with pytest.raises(ValueError, match="vocab_size"):
        fused_linear_distillation_loss(
            x2["hs"], x2["ws"], x2["ht"], x2["wt"], labels2, alpha=0.5, temperature=2.0
        )


def test_single_position_1d_logits():
    student, teacher, labels = make_batch(b=1, t=1, seed=26, pad_row=False)
    labels[:] = 3
    s1, t1, l1 = student[0, 0], teacher[0, 0], labels[0, 0]
    ref, g_ref = run(distillation_loss, s1, t1, l1, alpha=0.5, temperature=2.0)
    out, g = run(chunked_distillation_loss, s1, t1, l1, alpha=0.5, temperature=2.0)
    assert_same(out, ref)
    assert g.shape == s1.shape
    torch.testing.assert_close(g, g_ref, **TOL)


# ----------------------------------------------------------------------------------------------
# The forward-KL fast path against the float64 numpy reference, and the row gather
# ----------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_losses import ref_loss  # noqa: E402  (independent float64 numpy reference)

from distill.losses.chunked import _RowGather, default_chunk_size  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3),
    t=st.integers(1, 6),
    v=st.integers(2, 300),
    scale=st.floats(0.01, 40.0),
    temperature=st.one_of(st.sampled_from([1.0, 2.0]), st.floats(0.1, 10.0)),
    alpha=st.floats(0.0, 1.0),
    masked=st.integers(0, 3),
    chunk_size=st.integers(1, 8),
)
def test_forward_kl_fast_path_matches_float64_reference(
    seed, b, t, v, scale, temperature, alpha, masked, chunk_size
):
    """Values against numpy float64; gradients against float64 autograd of the plain loss.

    Covers the T = 1 and T = 2 shortcuts, logits wide enough to underflow exp, and teacher logits
    of -inf (0 log 0 = 0)."""
    student, teacher, labels = make_batch(b, t, v, seed=seed, scale=scale, pad_row=False)
    masked = min(masked, v - 1)
    if masked:
        teacher[..., :masked] = float("-inf")
    kw = dict(alpha=alpha, temperature=temperature, kind="forward_kl")
    out, g = run(chunked_distillation_loss, student, teacher, labels, chunk_size=chunk_size, **kw)
    loss, kd, ce, n = ref_loss(student, teacher, labels, **kw)
    assert int(out.num_valid) == n
    t2 = temperature**2
    np_tol = dict(rtol=1e-4, atol=1e-5 * max(t2, 1.0) * max(scale, 1.0))
    for got, want in ((out.loss, loss), (out.kd_loss, kd), (out.ce_loss, ce)):
        assert math.isfinite(got.item())
        assert got.item() == pytest.approx(want, **{"rel": np_tol["rtol"], "abs": np_tol["atol"]})
    _, g64 = run(distillation_loss, student.double(), teacher.double(), labels, **kw)
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-6 * max(temperature, 1.0))


@pytest.mark.parametrize(
    "make_view",
    [
        lambda x: x,  # contiguous
        lambda x: x[:, :-1],  # the causal shift
        lambda x: x[:, 1:],  # a storage offset
        lambda x: x[::2, :-1],  # strided batch
        lambda x: x.transpose(0, 1),  # leading dims swapped
        lambda x: x[..., ::2],  # vocabulary not contiguous: advanced-indexing fallback
        lambda x: x[:1].expand(3, -1, -1),  # stride 0
        lambda x: x[0],  # 2-D
    ],
)
def test_row_gather_equals_advanced_indexing(make_view):
    base = torch.randn(4, 6, 10)
    x = make_view(base)
    valid = torch.rand(x.shape[:-1], generator=torch.Generator().manual_seed(0)) < 0.6
    rows = valid.nonzero(as_tuple=True)
    for vocab in (x.shape[-1], x.shape[-1] - 3):
        gather = _RowGather(x, rows, vocab)
        want = x[rows][:, :vocab]
        n = rows[0].numel()
        got = torch.cat([gather.take(i, min(i + 3, n)) for i in range(0, n, 3)]) if n else want
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_default_chunk_size_bounds_the_chunk_by_values_on_cpu():
    assert default_chunk_size(4096) == 256  # 2^20 values
    assert default_chunk_size(152_064) == 8
    assert default_chunk_size(10) == 4096
    assert default_chunk_size(32_000, "meta") == 1024
    assert default_chunk_size(256_000, "meta") == 524
