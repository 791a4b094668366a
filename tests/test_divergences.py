"""The divergence registry: each kind's analytic chunk gradient equals autograd of its one value definition,
and a kind registered in one place works through the plain and the chunked loss alike."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import divergences
from distill.losses.chunked import chunked_distillation_loss
from distill.losses.divergences import DIVERGENCES, Divergence, check_loss_settings
from distill.losses.logit import distillation_loss

SETTINGS = {"jsd_beta": 0.3, "skew_alpha": 0.2}


def _logits(seed: int, rows: int, vocab: int, masked: bool):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    t = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    if masked:  # a masked teacher token: 0 * log 0 must stay 0, in the value and in the gradient
        t[0, 0] = -math.inf
    return s, t


@pytest.mark.parametrize("kind", sorted(DIVERGENCES))
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 5),
    vocab=st.integers(2, 17),
    masked=st.booleans(),
    temperature=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
)
def test_chunk_gradient_is_the_gradient_of_the_value(kind, seed, rows, vocab, masked, temperature):
    div = DIVERGENCES[kind]
    kwargs = div.kwargs(**SETTINGS)
    # KL(q || p) is +inf where the teacher gives a token probability 0: only the kinds that stay finite there
    s, t = _logits(seed, rows, vocab, masked and kind != "reverse_kl")
    z = (s / temperature).requires_grad_(True)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    value = div.value(torch.log_softmax(z, dim=-1), log_p, **kwargs).sum()
    (expected,) = torch.autograd.grad(value, z)
    div_sum, grad = div.chunk(log_p.clone(), torch.log_softmax(z.detach(), dim=-1), True, **kwargs)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(div_sum, value.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def _hellinger_value(log_q, log_p):
    return (torch.exp(0.5 * log_p) - torch.exp(0.5 * log_q)).pow(2).sum(-1)


def _hellinger_chunk(log_p, log_q, want):
    # D = 2 - 2 sum sqrt(pq);  dD/dz = q B - sqrt(pq), B = sum sqrt(pq)
    root = log_p.add_(log_q).mul_(0.5).exp_()
    b = root.sum(-1, keepdim=True)
    div_sum = (2.0 - 2.0 * b).sum()
    return div_sum, (log_q.exp_().mul_(b).sub_(root) if want else None)


def test_a_kind_registered_in_one_place_runs_through_every_path(monkeypatch):
    kind = Divergence("hellinger", "squared Hellinger distance", _hellinger_value, _hellinger_chunk)
    monkeypatch.setitem(divergences.DIVERGENCES, "hellinger", kind)
    s, t = _logits(3, 12, 9, masked=False)
    labels = torch.randint(0, 9, (12,), generator=torch.Generator().manual_seed(0))
    labels[:3] = -100
    plain_s = s.clone().requires_grad_(True)
    plain = distillation_loss(plain_s, t, labels, alpha=0.7, temperature=2.0, kind="hellinger")
    plain.loss.backward()
    chunk_s = s.clone().requires_grad_(True)
    chunked = chunked_distillation_loss(
        chunk_s, t, labels, alpha=0.7, temperature=2.0, kind="hellinger", chunk_size=4
    )
    chunked.loss.backward()
    torch.testing.assert_close(chunked.loss, plain.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunk_s.grad, plain_s.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"kind": "kl"}, "kd_kind"),
        ({"kind": "jsd", "jsd_beta": 1.0}, "jsd_beta"),
        ({"kind": "skew_forward_kl", "skew_alpha": 1.0}, "skew_alpha"),
    ],
)
def test_one_check_names_the_field(kwargs, field):
    args = {
        "alpha": 0.5,
        "temperature": 2.0,
        "kind": "forward_kl",
        "jsd_beta": 0.5,
        "skew_alpha": 0.1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=field):
        check_loss_settings(**args)
    # the config and every loss path refuse it the same way, before any compute
    from distill.config import DistillationConfig

    with pytest.raises(ValueError, match=field):
        DistillationConfig(
            output_dir="unused",
            use_cpu=True,
            alpha=args["alpha"],
            temperature=args["temperature"],
            kd_kind=args["kind"],
            jsd_beta=args["jsd_beta"],
            skew_alpha=args["skew_alpha"],
        )


def test_a_setting_of_another_kind_is_not_checked():
    check_loss_settings(0.5, 2.0, "forward_kl", jsd_beta=7.0, skew_alpha=-1.0)
