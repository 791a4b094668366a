"""Parameter and FLOP counting from a transformers model config.

Reusable by anything that plans model sizes (e.g. a model ladder): every function takes a
config as a `transformers.PretrainedConfig`, a plain `dict`, or a path to `config.json` (or
to the directory holding it). Nothing is downloaded.

Conventions:

- **total**: every distinct parameter of the model class named in `config.architectures`
  (else the masked-LM class for encoder types such as BERT, else the causal-LM class, else the
  bare model), tied weights counted once.
- **embedding**: token, position and token-type embedding tables (every `nn.Embedding`).
- **output_head**: an *untied* output projection (e.g. `lm_head` when
  `tie_word_embeddings=False`); 0 when tied.
- **non_embedding**: total - embedding - output_head, as in Kaplan et al. (2020), whose N
  excludes vocabulary and position embeddings. An untied head is also a vocabulary matrix,
  so it is excluded too.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_config", "model_shape", "count_parameters", "flops_per_token"]

# model types whose MLP is gated (three d x d_ff matrices instead of two)
GATED_MLP_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "cohere",
    "granite",
    "deepseek_v3",
    "smollm3",
    "glm",
    "helium",
    "exaone4",
}


def load_config(config):
    """Return a `PretrainedConfig` from a config, a dict, or a local path (never the Hub).

    Args:
        config (`PretrainedConfig`, `dict`, `str` or `Path`): the config or where it is.
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json")
        config = json.loads(path.read_text())
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError("a model config needs a 'model_type'")
    cfg = dict(config)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _get(cfg, *names, default=None):
    for name in names:
        value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def model_shape(config) -> dict:
    """Architecture numbers used for FLOP counting, read from the usual config field names.

    Returns:
        `dict` with `d_model, n_layers, n_heads, n_kv_heads, head_dim, d_attn, d_ff, vocab_size,
        gated_mlp, max_positions`.
    """
    if not isinstance(config, dict):
        config = config.to_dict() if hasattr(config, "to_dict") else load_config(config).to_dict()
    d = _get(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _get(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if not (d and layers and heads):
        raise ValueError("config lacks hidden size, layer count or head count")
    kv = _get(config, "num_key_value_heads", "n_kv_heads", default=heads)
    head_dim = _get(config, "head_dim", default=d // heads)
    d_ff = _get(config, "intermediate_size", "n_inner", "ffn_dim", "d_ff", default=4 * d)
    gated = config.get("model_type") in GATED_MLP_TYPES
    return {
        "d_model": int(d),
        "n_layers": int(layers),
        "n_heads": int(heads),
        "n_kv_heads": int(kv),
        "head_dim": int(head_dim),
        "d_attn": int(heads * head_dim),
        "d_ff": int(d_ff),
        "vocab_size": int(_get(config, "vocab_size", default=0)),
        "gated_mlp": bool(gated),
        "max_positions": _get(config, "max_position_embeddings", "n_positions", "n_ctx"),
    }


def _model_class(config):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    for auto in (
        transformers.AutoModelForMaskedLM,
        transformers.AutoModelForCausalLM,
        transformers.AutoModel,
    ):
        if type(config) in auto._model_mapping:
            return auto
    raise ValueError(f"no transformers model class for model_type {config.model_type!r}")


def count_parameters(config) -> dict:
    """Count parameters by building the model on the meta device (no memory used).

    Args:
        config (`PretrainedConfig`, `dict`, `str` or `Path`): the model config.

    Returns:
        `dict` with `total`, `non_embedding`, `embedding` and `output_head` (all `int`), and
        `tied_output` (`bool`).
    """
    import torch

    cfg = load_config(config)
    cls = _model_class(cfg)
    # torch.device("meta") rather than accelerate.init_empty_weights(): under transformers 5
    # the latter leaves tied output heads untied, double counting them.
    with torch.device("meta"):
        model = cls.from_config(cfg) if hasattr(cls, "from_config") else cls._from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    seen = set()
    embedding = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embedding += module.weight.numel()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_w = getattr(head, "weight", None)
    tied = head_w is not None and id(head_w) in seen
    output_head = 0 if head_w is None or tied else head_w.numel()
    return {
        "total": int(total),
        "non_embedding": int(total - embedding - output_head),
        "embedding": int(embedding),
        "output_head": int(output_head),
        "tied_output": tied,
    }


def flops_per_token(
    config, seq_len: int, training: bool = True, method: str = "chinchilla", non_embedding_params=None
) -> float:
    """FLOPs per token of one forward (and backward) pass, attention included.

    `"chinchilla"` follows Hoffmann et al. (2022), appendix F, per token: embeddings
    `2 V d`; per layer the Q/K/V projections `2 d (h + 2 h_kv) d_h`, attention logits
    `2 T h d_h`, softmax `3 h T`, attention over values `2 T h d_h`, output projection
    `2 h d_h d`, MLP `2 k d d_ff` (k = 3 for gated MLPs, 2 otherwise); final logits `2 d V`.
    As in the paper, attention is counted over the full context `T` (no causal halving).

    `"kaplan"` follows Kaplan et al. (2020): forward `2 N + 2 n_layer T d_attn`, with `N` the
    non-embedding parameters (given, or counted analytically from the matrices above).

    Training costs three forward passes (forward + backward).

    Args:
        config (`PretrainedConfig`, `dict`, `str` or `Path`): the model config.
        seq_len (`int`): context length `T` of the training sequences.
        training (`bool`): forward + backward (3x) when `True`, forward only otherwise.
        method (`str`): `"chinchilla"` or `"kaplan"`.
        non_embedding_params (`int`, *optional*): exact N for the Kaplan method.

    Returns:
        `float`: FLOPs per token.
    """
    s = model_shape(config)
    d, h, kv, dh, t = s["d_model"], s["n_heads"], s["n_kv_heads"], s["head_dim"], seq_len
    mlp_mats = 3 if s["gated_mlp"] else 2
    proj = 2 * d * (h + 2 * kv) * dh + 2 * h * dh * d + 2 * mlp_mats * d * s["d_ff"]
    if method == "chinchilla":
        layer = proj + 2 * t * h * dh + 3 * h * t + 2 * t * h * dh
        forward = 2 * s["vocab_size"] * d + s["n_layers"] * layer + 2 * d * s["vocab_size"]
    elif method == "kaplan":
        n = non_embedding_params if non_embedding_params else s["n_layers"] * proj / 2
        forward = 2 * n + 2 * s["n_layers"] * t * s["d_attn"]
    else:
        raise ValueError(f"method must be 'chinchilla' or 'kaplan', got {method!r}")
    return float(3 * forward if training else forward)
