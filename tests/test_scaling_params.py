"""Parameter and FLOP counting from model configs (meta device, no weights)."""

import json

import pytest

from scaling.params import count_parameters, flops_per_token, load_config, model_shape

LLAMA = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _llama_non_embedding(d=64, ff=128, layers=2, heads=4, kv=2):
    dh = d // heads
    attn = d * heads * dh + 2 * d * kv * dh + heads * dh * d
    return layers * (attn + 3 * d * ff + 2 * d) + d  # + RMSNorm weights, final norm


@pytest.mark.parametrize("tied", [False, True])
def test_llama_counts(tied):
    c = count_parameters({**LLAMA, "tie_word_embeddings": tied})
    assert c["non_embedding"] == _llama_non_embedding()
    assert c["embedding"] == 1000 * 64
    assert c["output_head"] == (0 if tied else 1000 * 64)
    assert c["total"] == c["non_embedding"] + c["embedding"] + c["output_head"]
    assert c["tied_output"] is tied


def test_gpt2_tied_head_counted_once_and_positions_are_embeddings(tmp_path):
    cfg = {
        "model_type": "gpt2",
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "vocab_size": 1000,
        "n_positions": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = count_parameters(tmp_path)  # a directory works too
    assert c["embedding"] == 1000 * 64 + 128 * 64
    assert c["output_head"] == 0 and c["tied_output"]
    assert model_shape(load_config(tmp_path))["d_ff"] == 256  # n_inner None -> 4 d


def test_flops_per_token_by_hand():
    t, d, v, ff, h, kv, dh, layers = 32, 64, 1000, 128, 4, 2, 16, 2
    layer = (
        2 * d * (h + 2 * kv) * dh
        + 2 * t * h * dh
        + 3 * h * t
        + 2 * t * h * dh
        + 2 * h * dh * d
        + 2 * 3 * d * ff
    )
    forward = 2 * v * d + layers * layer + 2 * d * v
    assert flops_per_token(LLAMA, t, training=False) == forward
    assert flops_per_token(LLAMA, t) == 3 * forward


def test_flops_per_token_close_to_6n_for_short_context_and_grows_with_context():
    c = count_parameters(LLAMA)
    short = flops_per_token(LLAMA, 1, method="kaplan", non_embedding_params=c["non_embedding"])
    assert short == pytest.approx(6 * c["non_embedding"] + 6 * 2 * 64, rel=1e-12)
    assert flops_per_token(LLAMA, 2048) > flops_per_token(LLAMA, 128)
    with pytest.raises(ValueError, match="method"):
        flops_per_token(LLAMA, 8, method="nope")


def test_config_without_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type"):
        load_config({"hidden_size": 8})
