"""Tiny saved model directories for the deploy tests: one per task, with tokenizer or labels."""

from __future__ import annotations

import os

import torch

_TEXTS = [
    "def f(x): return x + 1",
    "The event loop runs asynchronous tasks and callbacks.",
    "Parse an XML document into a tree.",
    "Send an email message over SMTP.",
    "Run the unit tests and report failures.",
] * 20


def tiny_tokenizer(vocab_size: int = 300):
    from distill.data.corpus import train_bpe_tokenizer

    return train_bpe_tokenizer(_TEXTS, vocab_size=vocab_size, model_max_length=512)


def save_seq_cls(path: str, seed: int = 0) -> str:
    """A 1-layer BERT classifier over the docstring topics' six labels."""
    from transformers import BertConfig, BertForSequenceClassification

    from distill.data.corpus import docstring_classification

    labels = docstring_classification()["train"].features["label"].names
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_causal_lm(path: str, seed: int = 0) -> str:
    """A 1-layer Llama with a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_image_cls(path: str, seed: int = 0) -> str:
    """A 1-layer ViT over 16x16 RGB digits (no image processor: pixels scaled to [-1, 1])."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )
    ViTForImageClassification(config).save_pretrained(path)
    return path


SAVERS = {"seq-cls": save_seq_cls, "causal-lm": save_causal_lm, "image-cls": save_image_cls}


def model_dir(root, task: str) -> str:
    path = os.path.join(str(root), task)
    if not os.path.isdir(path):
        SAVERS[task](path)
    return path
