"""Structured pruning: scores against float64 references, exactness of what is cut, save/reload, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_students import inputs, logits, seq_cls_teacher, tiny  # noqa: F401  (fixture)

from distill.students import get_architecture, prune_model, score_model


def batches(model_type, n=2):
    return [inputs(model_type, seed=s) for s in range(n)]


def reference_block_influence(model, batch_list):
    """1 - cos(in, out) per block from output_hidden_states, in float64 numpy, padding excluded."""
    totals, count = None, 0.0
    for batch in batch_list:
        with torch.no_grad():
            hs = [h.double().numpy() for h in model(**batch, output_hidden_states=True).hidden_states]
        mask = (
            batch["attention_mask"].double().numpy()
            if "attention_mask" in batch
            else np.ones(hs[0].shape[:2])
        )
        per = []
        for x, y in zip(hs[:-1], hs[1:]):
            cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
            per.append(((1 - cos) * mask).sum())
        totals = np.array(per) if totals is None else totals + per
        count += mask.sum()
    return totals / count


@pytest.mark.parametrize("model_type", ["bert", "vit"])
def test_block_influence_matches_a_float64_reference(model_type):
    # BERT and ViT report every block's raw output as a hidden state (Llama's last one is after the final norm).
    model = tiny(model_type).eval()
    scores = score_model(model, get_architecture(model.config), batches(model_type))
    np.testing.assert_allclose(
        scores["block_influence"], reference_block_influence(model, batches(model_type)), rtol=1e-4, atol=1e-7
    )


def test_neuron_and_head_importance_match_a_float64_reference():
    """ViT block by hand in float64: LN -> attention -> residual -> LN -> fc1 -> gelu."""
    model = tiny("vit").eval()
    batch_list = batches("vit")
    scores = score_model(model, get_architecture(model.config), batch_list)
    ref = model.double()
    neuron_sum, head_sum, tokens = 0, 0, 0
    for batch in batch_list:
        with torch.no_grad():
            h = ref.vit.embeddings(batch["pixel_values"].double())
            block = ref.vit.layers[0]
            x = block.layernorm_before(h)
            attn = block.attention
            q, k, v = (
                p(x).unflatten(-1, (4, 8)).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
            )
            heads = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v  # [B, H, T, d]
            r = h + attn.o_proj(heads.transpose(1, 2).flatten(-2))
            act = block.mlp.activation_fn(block.mlp.fc1(block.layernorm_after(r)))
        neuron_sum = neuron_sum + act.abs().sum((0, 1))
        head_sum = head_sum + heads.norm(dim=-1).sum((0, 2))
        tokens += act.shape[0] * act.shape[1]
    torch.testing.assert_close(scores["neuron_importance"][0], neuron_sum / tokens, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(scores["head_importance"][0], head_sum / tokens, rtol=1e-5, atol=1e-8)


def test_padding_is_excluded_from_scores():
    model = tiny("bert").eval()
    arch = get_architecture(model.config)
    batch = inputs("bert")  # row 1 has 3 padded positions
    padded = score_model(model, arch, [batch])
    rows = [{k: v[i : i + 1, : (6 if i else 9)] for k, v in batch.items()} for i in range(2)]
    unpadded = score_model(model, arch, rows)
    assert padded["num_tokens"] == unpadded["num_tokens"] == 15
    np.testing.assert_allclose(padded["block_influence"], unpadded["block_influence"], rtol=1e-5)
    torch.testing.assert_close(
        padded["neuron_importance"][1], unpadded["neuron_importance"][1], rtol=1e-5, atol=1e-7
    )


def _kill_parts(model, model_type):
    """Make block 1 an identity, and some neurons and one key-value group dead, in every block."""
    arch = get_architecture(model.config)
    blocks = model.base_model.get_submodule(arch.blocks)
    with torch.no_grad():
        block = blocks[1]  # output = input: the attention and MLP outputs are zero
        for name in (
            (arch.attention_o, arch.mlp_out) if arch.attention_o else ("attention.output.dense", arch.mlp_out)
        ):
            block.get_submodule(name).weight.zero_()
            if block.get_submodule(name).bias is not None:
                block.get_submodule(name).bias.zero_()
        for b in blocks:
            for name in arch.mlp_in[-1:]:  # up_proj / intermediate.dense / fc1 rows 0..7: activation 0
                b.get_submodule(name).weight[:8] = 0
                if b.get_submodule(name).bias is not None:
                    b.get_submodule(name).bias[:8] = 0
            if arch.attention_kv:  # value rows of key-value head 0: those heads output 0
                v = b.get_submodule(arch.attention_kv[-1])
                v.weight[:8] = 0
                if v.bias is not None:
                    v.bias[:8] = 0


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "bert", "vit"])
def test_pruning_dead_parts_keeps_the_logits(model_type):
    """What scores 0 (an identity block, dead neurons, a silent head group) is what goes, and nothing changes."""
    model = tiny(model_type).eval()
    if model_type == "bert":  # post-LN: a zeroed block is not an identity, so only width is exact here
        model.config.num_hidden_layers  # noqa: B018
    _kill_parts(model, model_type)
    arch = get_architecture(model.config)
    scores = score_model(model, arch, batches(model_type))
    drop = 0 if model_type == "bert" else 1
    heads = None if model_type == "bert" else (2 if model_type in ("llama", "qwen2") else 3)
    pruned, removed = prune_model(model, scores, drop_layers=drop, mlp_width=40, heads=heads)
    if drop:
        assert scores["block_influence"][1] < 1e-6 and removed["dropped_layers"] == [1]
    assert all(keep == list(range(8, 48)) for keep in removed["kept_neurons"].values())
    assert pruned.config.intermediate_size == 40 and pruned.config.num_hidden_layers == 4 - drop
    if heads:
        group = 2 if model_type in ("llama", "qwen2") else 1
        assert all(h[0] == group for h in removed["kept_heads"].values())  # head group 0 is gone
        assert pruned.config.num_attention_heads == heads
    for batch in batches(model_type):
        torch.testing.assert_close(logits(pruned, batch), logits(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "vit"])
def test_pruned_model_reloads_exactly(model_type, tmp_path):
    import transformers

    model = tiny(model_type).eval()
    scores = score_model(model, get_architecture(model.config), batches(model_type))
    pruned, _ = prune_model(model, scores, drop_layers=2, mlp_width=20, heads=2)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    pruned.save_pretrained(tmp_path)
    reloaded = getattr(transformers, type(pruned).__name__).from_pretrained(tmp_path)
    for batch in batches(model_type):
        assert torch.equal(logits(reloaded, batch), logits(pruned, batch))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(drop_layers=4), "between 0 and 3"),
        (dict(mlp_width=49), "intermediate_size 48"),
        (dict(heads=3), "multiple of 2"),
        (dict(), "Nothing to prune"),
    ],
)
def test_bad_requests_are_refused(kwargs, match):
    from distill.students import check_prune_request

    with pytest.raises(ValueError, match=match):
        check_prune_request(tiny("llama").config, **kwargs)


def test_heads_refused_for_bert():
    from distill.students import check_prune_request

    with pytest.raises(ValueError, match="not supported for bert.*Llama-style models and ViT"):
        check_prune_request(tiny("bert").config, heads=2)


def test_prune_command_on_a_classifier(seq_cls_teacher, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.cli import main

    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--model",
            seq_cls_teacher,
            "--drop-layers",
            "1",
            "--mlp-width",
            "16",
            "--calibration",
            "builtin:docstring-topics",
            "--num-samples",
            "12",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "pruning.json").read_text())
    assert record["num_samples"] == 12 and record["scores"]["num_tokens"] > 12
    assert len(record["scores"]["block_influence"]) == 2 and len(record["kept_layers"]) == 1
    assert record["dropped_layers"] == [int(np.argmin(record["scores"]["block_influence"]))]
    assert record["params_after"] < record["params_before"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 16
    assert sum(p.numel() for p in model.parameters()) == record["params_after"]
    assert AutoTokenizer.from_pretrained(out) is not None
    # Heads on BERT: refused before any calibration compute.
    assert (
        main(
            [
                "prune",
                "--model",
                seq_cls_teacher,
                "--heads",
                "2",
                "--calibration",
                "builtin:docstring-topics",
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()


def test_prune_command_on_a_vit_with_heads(tmp_path):
    """Image calibration (builtin:digits at the model's image size, no image processor) and ViT head pruning."""
    from transformers import ViTForImageClassification

    from distill.cli import main

    tiny("vit", layers=2, num_labels=10).save_pretrained(tmp_path / "vit")
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--model",
                str(tmp_path / "vit"),
                "--drop-layers",
                "1",
                "--heads",
                "2",
                "--calibration",
                "builtin:digits",
                "--num-samples",
                "8",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "pruning.json").read_text())
    assert record["scores"]["num_tokens"] == 8 * 17  # 16 patches + [CLS] per image
    assert len(record["scores"]["head_importance"]["0"]) == 4
    model = ViTForImageClassification.from_pretrained(out)
    assert model.config.num_attention_heads == 2 and model.config.num_hidden_layers == 1
