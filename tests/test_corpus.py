"""Offline sources of distill.data.corpus: the docs corpus, its classification set, digits, BPE."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections  # noqa: E402
from pydoc_data.topics import topics  # noqa: E402

import pytest  # noqa: E402

from distill.data import corpus  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache dir for this module, so the first call runs a cold extraction."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("scaledown_cache")
        mp.setenv("SCALEDOWN_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def docs(cache):
    return corpus.python_docs_corpus()


def _doc_ids(ds):
    return {split: list(part["doc_id"]) for split, part in ds.items()}


def test_cache_file_is_written_atomically(cache, docs):
    files = sorted(p.name for p in cache.iterdir())
    assert files == [corpus.corpus_cache_path().name]
    assert "cpython" in files[0] or "python" in files[0]


def test_splits_are_disjoint_and_cover_every_document(docs):
    ids = _doc_ids(docs)
    assert set(ids) == {"train", "validation", "test"}
    sets = [set(v) for v in ids.values()]
    assert sum(map(len, sets)) == len(set().union(*sets)), "a document is in two splits"
    assert all(len(v) == len(set(v)) for v in ids.values())
    for split, part in ids.items():
        assert all(corpus.split_of(doc_id) == split for doc_id in part)
    assert docs["train"].column_names == ["text", "source", "doc_id"]


def test_extraction_is_deterministic(docs, tmp_path, monkeypatch):
    """A second cold extraction (new cache dir, new child process) gives the same corpus."""
    monkeypatch.setenv("SCALEDOWN_CACHE", str(tmp_path))
    again = corpus.python_docs_corpus()
    for split in docs:
        assert list(again[split]["doc_id"]) == list(docs[split]["doc_id"])
        assert list(again[split]["text"]) == list(docs[split]["text"])


def test_warm_call_reads_the_cache_without_importing_the_stdlib(docs, monkeypatch):
    corpus._corpus_records.cache_clear()

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the cached corpus should have been read")

    monkeypatch.setattr(corpus.subprocess, "run", no_subprocess)
    assert _doc_ids(corpus.python_docs_corpus()) == _doc_ids(docs)


def test_split_of_is_stable_and_roughly_90_5_5():
    # Regression guard: SHA-256 based, so these never change between runs or machines.
    assert corpus.stable_bucket("scaledown") == 9633
    held_out = {
        k: corpus.split_of(f"topics:{k}") for k in topics if corpus.split_of(f"topics:{k}") != "train"
    }
    assert held_out == {
        "attribute-access": "test",
        "binary": "validation",
        "bitwise": "validation",
        "conversions": "validation",
        "objects": "test",
        "types": "validation",
    }
    counts = collections.Counter(corpus.split_of(f"doc{i}") for i in range(20_000))
    assert 0.88 < counts["train"] / 20_000 < 0.92
    assert 0.04 < counts["validation"] / 20_000 < 0.06


def test_corpus_content_and_size(docs):
    rows = [r for part in docs.values() for r in part]
    by_source = collections.Counter(r["source"] for r in rows)
    assert by_source["topics"] == len({t.strip() for t in topics.values()})  # "if" == "else"
    assert set(by_source) == {"topics", "docstring"}
    assert 1_500 < by_source["docstring"] < 6_000
    chars = sum(len(r["text"]) for r in rows)
    assert 1_400_000 < chars < 3_000_000  # ~0.5-0.6M tokens with a 2,048-token BPE
    docstrings = [r for r in rows if r["source"] == "docstring"]
    assert min(len(r["text"]) for r in docstrings) >= corpus.MIN_DOCSTRING_CHARS
    assert len({r["text"] for r in rows}) == len(rows), "duplicate documents"
    for r in docstrings:
        parts = r["doc_id"].removeprefix("docstring:").split(".")
        assert not {"test", "tests", "idle_test", "__main__"} & set(parts), r["doc_id"]
        assert parts[0] not in ("this", "antigravity") and not parts[0].startswith("_")
    assert "docstring:email.message.Message.get_payload" in {r["doc_id"] for r in rows}
    assert 2_000 < len(docs["train"]) and 60 < len(docs["validation"]) < 250


def test_docstring_classification(docs):
    cls = corpus.docstring_classification()
    names = cls["train"].features["label"].names
    assert names == list(corpus.DOCSTRING_AREAS)
    counts = collections.Counter(label for part in cls.values() for label in part["label"])
    assert len(counts) == len(names) and min(counts.values()) >= 100
    assert max(counts.values()) <= corpus._MAX_CLASS_RATIO * min(counts.values()) + 1
    for split, part in cls.items():
        assert len(set(part["label"])) == len(names), f"{split} misses a class"
        for doc_id, label in zip(part["doc_id"], part["label"]):
            top = doc_id.removeprefix("docstring:").split(".")[0]
            assert top in corpus.DOCSTRING_AREAS[names[label]]
    ids = [set(part["doc_id"]) for part in cls.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert list(corpus.docstring_classification()["test"]["doc_id"]) == list(cls["test"]["doc_id"])


def test_digits_images():
    digits = corpus.digits_images(image_size=16)
    assert sum(len(p) for p in digits.values()) == 1797
    assert 1300 < len(digits["train"]) < 1560 and len(digits["validation"]) > 120
    example = digits["validation"][0]
    assert example["image"].size == (16, 16) and example["image"].mode == "L"
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    assert set(digits["test"]["label"]) == set(range(10))
    assert list(corpus.digits_images(16)["test"]["label"]) == list(digits["test"]["label"])


def test_bpe_tokenizer_round_trip(docs, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = corpus.train_bpe_tokenizer(docs["train"]["text"], vocab_size=512, model_max_length=256)
    assert len(tokenizer) == 512
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert (tokenizer.pad_token, tokenizer.unk_token) == ("<pad>", "<unk>")
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id != tokenizer.eos_token_id
    text = "def f(x):\n    return x ** 2  # naïve, ünïcode ✓\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.eos_token_id not in ids  # nothing is added automatically
    assert tokenizer.decode(ids) == text  # byte-level: lossless
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (loaded.eos_token_id, loaded.bos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
    )
    assert loaded.padding_side == "right" and loaded.model_max_length == 256
    batch = loaded(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0][-1] == loaded.pad_token_id


def test_bpe_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        corpus.train_bpe_tokenizer(["abc"], vocab_size=100)
