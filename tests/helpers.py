"""Tiny models and data shared by the distillation tests (no Hub, no files)."""

from __future__ import annotations

import importlib.util
import os
import random
import sys

import torch
from datasets import Dataset

VOCAB = 64


def tiny_llama(hidden=32, layers=2, seed=0, vocab=VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def lm_dataset(n=32, seed=0, min_len=5, max_len=20, vocab=VOCAB):
    """Variable-length sequences whose first tokens are a masked prompt (label -100)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(0, length // 2)
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return Dataset.from_list(rows)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def word_tokenizer(vocab=VOCAB, shift=0):
    """A word-level tokenizer over tokens t0..t{vocab-1} (``shift`` permutes the ids: a different tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        models.WordLevel({f"t{(i + shift) % vocab}": i for i in range(vocab)}, unk_token=f"t{shift % vocab}")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    names = [f"t{(i + shift) % vocab}" for i in range(3)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=names[0], bos_token=names[1], eos_token=names[2], unk_token=names[0]
    )


def load_script(name: str):
    """benchmarks/NAME.py as module NAME, registered under its name as `python benchmarks/NAME.py` would be
    importable, so that worker processes (bench_kd_pays' --jobs) can unpickle its functions."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
