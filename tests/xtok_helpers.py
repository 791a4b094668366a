"""Two different fast tokenizers trained on the same synthetic text, and data, for cross-tokenizer tests."""

from __future__ import annotations

import functools
import random

from datasets import Dataset

WORDS = [
    "the", "model", "teacher", "student", "token", "loss", "train", "data", "python", "string",
    "return", "value", "list", "dict", "error", "file", "path", "read", "write", "class",
    "über", "naïve", "café", "(x)", "a+b", "len", "0.5", "ok", "zap", "quorum",
]  # fmt: skip


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "."


@functools.lru_cache(maxsize=None)
def corpus(n: int = 400, seed: int = 0) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(sentence(rng) for _ in range(n))


@functools.lru_cache(maxsize=None)
def bpe(vocab_size: int, seed: int = 0, n: int = 400):
    """A byte-level BPE (distill.data.corpus.train_bpe_tokenizer) of `vocab_size` tokens on `corpus(n, seed)`."""
    from distill.data.corpus import train_bpe_tokenizer

    return train_bpe_tokenizer(list(corpus(n, seed)), vocab_size=vocab_size, model_max_length=256)


def student_tokenizer():
    return bpe(300)


def teacher_tokenizer():  # other text, more merges: tokens on both sides that the other lacks
    return bpe(360, seed=7, n=60)


def text_dataset(tokenizer, n: int = 24, seed: int = 1, prompt_tokens: int = 3) -> Dataset:
    """Sentences tokenized by `tokenizer` (plus eos); the first `prompt_tokens` tokens are a masked prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = tokenizer(sentence(rng), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"input_ids": ids, "labels": [-100] * prompt_tokens + ids[prompt_tokens:]})
    return Dataset.from_list(rows)


def llama_for(tokenizer, hidden=32, seed=0, extra_rows=0):
    from helpers import tiny_llama

    model = tiny_llama(hidden=hidden, seed=seed, vocab=len(tokenizer) + extra_rows)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
