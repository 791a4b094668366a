"""distill.losses.hidden against an independent float64 numpy reference, plus properties, maps and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import DistillationConfig
from distill.losses import attention_kl_loss, hidden_state_loss, position_weights
from distill.losses.hidden import check_layer_map, default_layer_map, parse_layer_map

IGNORE = -100


# ----------------------------------------------------------------------------------------------
# Independent reference: numpy, float64, written from the definitions in the docs.
# ----------------------------------------------------------------------------------------------
def ref_weights(token_level, labels, mask, batch, length):
    """Causal LM: 1 where the next token is a label. Classification: 1/len over attended tokens of labelled examples."""
    w = np.zeros((batch, length))
    for b in range(batch):
        if token_level:
            for t in range(length - 1):
                w[b, t] = float(labels[b, t + 1] != IGNORE)
        else:
            if labels is not None and labels[b] == IGNORE:
                continue
            tokens = [t for t in range(length) if mask is None or mask[b, t]]
            for t in tokens:
                w[b, t] = 1.0 / len(tokens)
    return w


def ref_hidden(s_states, t_states, layer_map, w, kind, proj=None, denom=None):
    total = 0.0
    for si, ti in layer_map.items():
        s = s_states[si] @ proj[0].T + proj[1] if proj is not None else s_states[si]
        t = t_states[ti]
        if kind == "mse":
            d = ((s - t) ** 2).mean(-1)
        else:
            d = 1 - (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
        total += (w * d).sum()
    return total / len(layer_map) / (w.sum() if denom is None else denom)


def ref_attention(s_att, t_att, layer_map, w, denom=None):
    pairs = [(s, t) for s, t in layer_map.items() if s > 0 and t > 0]
    total = 0.0
    for si, ti in pairs:
        s, t = s_att[si - 1], t_att[ti - 1]
        B, H, T, _ = s.shape
        for b in range(B):
            for q in range(T):
                if w[b, q] == 0:
                    continue
                kl = 0.0
                for h in range(H):
                    for k in range(T):
                        if t[b, h, q, k] > 0:
                            kl += t[b, h, q, k] * (np.log(t[b, h, q, k]) - np.log(s[b, h, q, k]))
                total += w[b, q] * kl / H
    return total / len(pairs) / (w.sum() if denom is None else denom)


def _states(g, layers, batch, length, width):
    return [torch.randn(batch, length, width, generator=g) for _ in range(layers + 1)]


def _attentions(g, layers, batch, heads, length, mask):
    """Softmax over keys with masked keys at exactly 0 (as eager attention gives)."""
    out = []
    for _ in range(layers):
        scores = torch.randn(batch, heads, length, length, generator=g) * 2
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        out.append(scores.softmax(-1))
    return out


# ----------------------------------------------------------------------------------------------
# Against the reference
# ----------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    token_level=st.booleans(),
    kind=st.sampled_from(["mse", "cosine"]),
    project=st.booleans(),
    batch=st.integers(1, 3),
    length=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    with_denom=st.booleans(),
)
def test_hidden_state_loss_matches_reference(token_level, kind, project, batch, length, seed, with_denom):
    g = torch.Generator().manual_seed(seed)
    s_layers, t_layers, s_width = 2, 4, 6
    t_width = 10 if project else s_width
    s_states = _states(g, s_layers, batch, length, s_width)
    t_states = _states(g, t_layers, batch, length, t_width)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    if token_level:
        labels = torch.randint(0, 9, (batch, length), generator=g)
        labels[torch.rand(batch, length, generator=g) < 0.3] = IGNORE
        labels[mask == 0] = IGNORE
    else:
        labels = torch.randint(0, 3, (batch,), generator=g)
        labels[torch.rand(batch, generator=g) < 0.3] = IGNORE
    layer_map = {0: 0, 1: 2, 2: 4}
    proj = torch.nn.Linear(s_width, t_width) if project else None
    denom = 7 if with_denom else None
    w = position_weights(token_level, labels, mask, batch, length)
    ref_w = ref_weights(token_level, labels.numpy(), mask.numpy(), batch, length)
    np.testing.assert_allclose(w.double().numpy(), ref_w, rtol=1e-6, atol=1e-7)
    loss, n = hidden_state_loss(
        s_states, t_states, layer_map, w, kind=kind, projection=proj, num_items_in_batch=denom
    )
    np_proj = (
        (proj.weight.detach().double().numpy(), proj.bias.detach().double().numpy()) if project else None
    )
    expected = ref_hidden(
        [x.double().numpy() for x in s_states],
        [x.double().numpy() for x in t_states],
        layer_map,
        ref_w,
        kind,
        np_proj,
        denom=denom if denom else max(ref_w.sum(), 1),
    )
    assert n.item() == pytest.approx(ref_w.sum())
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    token_level=st.booleans(), batch=st.integers(1, 3), length=st.integers(2, 5), seed=st.integers(0, 10_000)
)
def test_attention_kl_matches_reference(token_level, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    s_att, t_att = _attentions(g, 2, batch, 3, length, mask), _attentions(g, 4, batch, 3, length, mask)
    labels = (
        torch.where(mask.bool(), torch.randint(0, 9, (batch, length), generator=g), IGNORE)
        if token_level
        else torch.randint(0, 3, (batch,), generator=g)
    )
    layer_map = {0: 0, 1: 3, 2: 4}  # the embedding pair has no attention and is skipped
    w = position_weights(token_level, labels, mask, batch, length)
    loss, _ = attention_kl_loss(s_att, t_att, layer_map, w)
    ref_w = ref_weights(token_level, labels.numpy(), mask.numpy(), batch, length)
    expected = ref_attention(
        [a.double().numpy() for a in s_att],
        [a.double().numpy() for a in t_att],
        layer_map,
        ref_w,
        denom=max(ref_w.sum(), 1),
    )
    assert np.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(split=st.integers(1, 3), kind=st.sampled_from(["mse", "cosine"]), seed=st.integers(0, 10_000))
def test_split_batch_sums_to_whole(split, kind, seed):
    """With a shared num_items_in_batch, the parts of a batch add up to the whole batch (GA / DDP exactness)."""
    g = torch.Generator().manual_seed(seed)
    batch, length = 4, 5
    s_states, t_states = _states(g, 2, batch, length, 4), _states(g, 2, batch, length, 4)
    labels = torch.randint(0, 9, (batch, length), generator=g)
    labels[torch.rand(batch, length, generator=g) < 0.4] = IGNORE
    mask = torch.ones(batch, length, dtype=torch.long)
    s_att, t_att = _attentions(g, 2, batch, 2, length, mask), _attentions(g, 2, batch, 2, length, mask)
    w = position_weights(True, labels, None, batch, length)
    n = int(w.sum())
    whole_h, _ = hidden_state_loss(s_states, t_states, {1: 1, 2: 2}, w, kind=kind, num_items_in_batch=n)
    whole_a, _ = attention_kl_loss(s_att, t_att, {1: 1, 2: 2}, w, num_items_in_batch=n)
    parts_h = parts_a = 0.0
    for a, b in ((0, split), (split, batch)):
        wp = position_weights(True, labels[a:b], None, b - a, length)
        parts_h += hidden_state_loss(
            [x[a:b] for x in s_states],
            [x[a:b] for x in t_states],
            {1: 1, 2: 2},
            wp,
            kind=kind,
            num_items_in_batch=n,
        )[0].item()
        parts_a += attention_kl_loss(
            [x[a:b] for x in s_att], [x[a:b] for x in t_att], {1: 1, 2: 2}, wp, num_items_in_batch=n
        )[0].item()
    assert parts_h == pytest.approx(whole_h.item(), rel=1e-5, abs=1e-7)
    assert parts_a == pytest.approx(whole_a.item(), rel=1e-5, abs=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["mse", "cosine"]))
def test_identical_states_give_zero_and_padding_cannot_leak(seed, kind):
    g = torch.Generator().manual_seed(seed)
    states = _states(g, 2, 2, 5, 4)
    teacher = [x.clone() for x in states]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for x in teacher:
        x[0, 3:] = float("nan")  # padded positions of the teacher: must not reach the loss
    w = position_weights(False, torch.tensor([0, 1]), mask, 2, 5)
    loss, _ = hidden_state_loss(states, teacher, {1: 1, 2: 2}, w, kind=kind)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    att = _attentions(g, 2, 2, 2, 5, mask)
    a_loss, _ = attention_kl_loss(att, [a.clone() for a in att], {1: 1, 2: 2}, w)
    assert a_loss.item() == pytest.approx(0.0, abs=1e-7)


def test_no_valid_items_give_zero_not_nan():
    states = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(2)]
    w = position_weights(True, torch.full((2, 3), IGNORE), None, 2, 3)
    loss, n = hidden_state_loss(states, [s.detach() + 1 for s in states], {1: 1}, w)
    loss.backward()
    assert n.item() == 0 and loss.item() == 0.0 and torch.isfinite(states[1].grad).all()


# ----------------------------------------------------------------------------------------------
# Maps and configuration
# ----------------------------------------------------------------------------------------------
def test_default_layer_map_is_evenly_spaced():
    assert default_layer_map(3, 6) == {1: 2, 2: 4, 3: 6}
    assert default_layer_map(2, 12) == {1: 6, 2: 12}
    assert default_layer_map(4, 6) == {1: 1, 2: 3, 3: 4, 4: 6}
    assert default_layer_map(2, 2) == {1: 1, 2: 2}


def test_parse_layer_map_forms():
    assert parse_layer_map("1:2, 2:4") == {1: 2, 2: 4}
    assert parse_layer_map('{"2": 4, "0": 0}') == {0: 0, 2: 4}
    assert parse_layer_map({1: "3"}) == {1: 3}
    assert parse_layer_map(None) is None
    for bad in ("1-2", {}, {1: -1}, {"a": 1}):
        with pytest.raises(ValueError, match="hidden_layer_map"):
            parse_layer_map(bad)


def test_layer_map_past_the_last_layer_is_refused():
    check_layer_map({1: 2, 2: 4}, 2, 4)
    with pytest.raises(ValueError, match="past the teacher's last layer"):
        check_layer_map({1: 2, 2: 5}, 2, 4)
    with pytest.raises(ValueError, match="past the student's last layer"):
        check_layer_map({3: 4}, 2, 4)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_weight", -1.0, "hidden_weight=-1.0"),
        ("attention_weight", float("nan"), "attention_weight=nan"),
        ("hidden_loss", "l1", "hidden_loss='l1'"),
        ("hidden_layer_map", "1-2", "hidden_layer_map"),
    ],
)
def test_config_fields_are_validated(tmp_path, field, value, message):
    kwargs = {"hidden_weight": 1.0, field: value} if field != "hidden_weight" else {field: value}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        DistillationConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_config_map_without_weight_and_unused_parameter_search_refused(tmp_path):
    with pytest.raises(ValueError, match="hidden_layer_map is set but hidden_weight"):
        DistillationConfig(output_dir=str(tmp_path), report_to="none", hidden_layer_map="1:2")
    with pytest.raises(ValueError, match="ddp_find_unused_parameters=false"):
        DistillationConfig(
            output_dir=str(tmp_path), report_to="none", hidden_weight=1.0, ddp_find_unused_parameters=True
        )
    args = DistillationConfig(
        output_dir=str(tmp_path), report_to="none", hidden_weight=0.5, hidden_layer_map="1:2"
    )
    assert args.hidden_layer_map == {1: 2} and args.ddp_find_unused_parameters is False
