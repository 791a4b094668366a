"""distill.data: DataArguments checks, raw loading (local files, streaming) and the three tasks."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distill import data  # noqa: E402
from distill.data import DataArguments, build_datasets, corpus, load_raw_datasets  # noqa: E402

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 12,  # long: several chunks
    "Short document about Python lists.",
    "",  # only eos after tokenization: dropped (fewer than 2 tokens)
    "Dictionaries map keys to values; lookups are fast. " * 3,
]


@pytest.fixture(scope="module", autouse=True)
def offline_cache(tmp_path_factory):
    """Offline, with the corpus and datasets' Arrow caches in temporary directories."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCALEDOWN_CACHE", str(tmp_path_factory.mktemp("scaledown_cache")))
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        datasets.disable_progress_bars()
        yield


@pytest.fixture(scope="module")
def tokenizer():
    texts = data.texts_for_tokenizer(DataArguments(), max_chars=300_000)
    return corpus.train_bpe_tokenizer(texts, vocab_size=512)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- DataArguments ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"block_size": 1}, "block_size"),
        ({"max_seq_length": 0}, "max_seq_length"),
        ({"validation_split_percentage": 100}, "validation_split_percentage"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"dataset_name": "builtin:nope"}, "dataset_name"),
        ({"dataset_name": "builtin:digits", "data_files": "x.json"}, "data_files"),
        ({"data_files": "{not json"}, "data_files"),
        ({"dataset_name": "json"}, "data_files"),
    ],
)
def test_data_arguments_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DataArguments(**kwargs)


def test_data_files_must_exist_and_imply_a_builder(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="data_files") as err:
        DataArguments(dataset_name="json", data_files={"train": missing})
    assert missing in str(err.value)
    with pytest.raises(FileNotFoundError, match="data_files"):
        DataArguments(data_files=str(tmp_path / "*.csv"))
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    with pytest.raises(ValueError, match="dataset_name"):
        DataArguments(data_files=str(odd))
    good = write_jsonl(tmp_path / "a.jsonl", [{"text": "hi"}])
    assert DataArguments(data_files=good).builder == "json"
    parsed = DataArguments(data_files=json.dumps({"train": good, "test": [good]}))
    assert parsed.data_files == {"train": good, "test": [good]}
    # A Hub id with data_files is left to datasets (paths inside the repo).
    hub = DataArguments(dataset_name="org/data", data_files="train/*.parquet")
    assert hub.builder == "org/data"


def test_hf_argument_parser_round_trip(tmp_path):
    from transformers import HfArgumentParser

    good = write_jsonl(tmp_path / "a.jsonl", [{"text": "hi"}])
    parser = HfArgumentParser(DataArguments)
    assert all(f.metadata.get("help") for f in dataclasses.fields(DataArguments))
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--dataset_name",
            "json",
            "--data_files",
            json.dumps({"train": good}),
            "--packing",
            "--block_size",
            "64",
            "--eval_split",
            "",
        ]
    )
    assert args.packing and args.block_size == 64 and args.data_files == {"train": good}
    assert args.eval_split is None
    (from_yaml,) = parser.parse_dict({"data_files": {"train": [good]}, "streaming": True})
    assert from_yaml.data_files == {"train": [good]} and from_yaml.builder == "json"


# ---- raw loading ------------------------------------------------------------------------------
def test_local_text_file_gets_a_carved_validation_split(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"line number {i}" for i in range(100)))
    args = DataArguments(data_files=str(path), validation_split_percentage=10)
    raw = load_raw_datasets(args, seed=1)
    assert set(raw) == {"train", "validation"}
    assert (len(raw["train"]), len(raw["validation"])) == (90, 10)
    assert not set(raw["train"]["text"]) & set(raw["validation"]["text"])
    assert list(load_raw_datasets(args, seed=1)["validation"]["text"]) == list(raw["validation"]["text"])
    no_eval = load_raw_datasets(DataArguments(data_files=str(path), eval_split=""))
    assert set(no_eval) == {"train"} and len(no_eval["train"]) == 100


def test_missing_split_errors_name_the_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "hi"}] * 4)
    with pytest.raises(ValueError, match="train_split='training'.*available splits"):
        load_raw_datasets(DataArguments(data_files=path, train_split="training"))
    with pytest.raises(ValueError, match="eval_split='dev'"):
        load_raw_datasets(DataArguments(data_files=path, eval_split="dev"))
    with pytest.raises(ValueError, match="test_split='heldout'"):
        load_raw_datasets(DataArguments(data_files=path, test_split="heldout"))


def test_streaming_local_json_splits(tmp_path):
    rows = [{"text": f"document {i}", "label": i % 2} for i in range(30)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    raw = load_raw_datasets(DataArguments(data_files=path, streaming=True, max_eval_samples=5))
    assert isinstance(raw, datasets.IterableDatasetDict)
    assert isinstance(raw["train"], datasets.IterableDataset)
    assert [r["text"] for r in raw["validation"]] == [f"document {i}" for i in range(5)]
    assert [r["text"] for r in raw["train"]] == [f"document {i}" for i in range(5, 30)]


def test_hub_ids_go_to_load_dataset_with_config_and_streaming(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        rows = {"text": ["a b c", "d e f"]}
        return datasets.IterableDatasetDict({"train": datasets.Dataset.from_dict(rows).to_iterable_dataset()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    args = DataArguments(
        dataset_name="HuggingFaceFW/fineweb-edu",
        dataset_config_name="sample-10BT",
        streaming=True,
        max_eval_samples=1,
    )
    raw = load_raw_datasets(args)
    assert calls[0][:2] == ("HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert calls[0][2]["streaming"] is True
    assert [r["text"] for r in raw["validation"]] == ["a b c"]


# ---- causal-lm --------------------------------------------------------------------------------
def test_causal_lm_builtin_chunks_documents(tokenizer):
    bundle = build_datasets(DataArguments(block_size=64), "causal-lm", tokenizer)
    for ds in (bundle.train, bundle.eval, bundle.test):
        assert isinstance(ds, datasets.Dataset) and ds.column_names == ["input_ids", "labels"]
    lengths = [len(ids) for ids in bundle.train["input_ids"]]
    assert max(lengths) == 64 and min(lengths) >= 2 and len(set(lengths)) > 10
    row = bundle.train[0]
    assert row["labels"] == row["input_ids"] and isinstance(row["input_ids"][0], int)
    assert bundle.num_labels is None and bundle.id2label is None


def test_causal_lm_chunking_is_exact(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in DOCS])
    args = DataArguments(data_files=path, block_size=16, eval_split=None)
    train = build_datasets(args, "causal-lm", tokenizer).train
    eos = tokenizer.eos_token_id
    expected = []
    for text in DOCS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        expected += [ids[i : i + 16] for i in range(0, len(ids), 16) if len(ids[i : i + 16]) >= 2]
    assert list(train["input_ids"]) == expected
    assert sum(ids[-1] == eos for ids in train["input_ids"]) == 3  # one eos per kept document


def test_distinct_bos_starts_each_document_and_is_not_a_target(tokenizer, tmp_path):
    llama_like = copy.deepcopy(tokenizer)
    llama_like.add_special_tokens({"bos_token": "<s>"})
    bos, eos = llama_like.bos_token_id, llama_like.eos_token_id
    assert bos != eos
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one doc"}, {"text": "two docs"}])
    train = build_datasets(DataArguments(data_files=path, eval_split=None), "causal-lm", llama_like).train
    for row, text in zip(train, ("one doc", "two docs")):
        body = llama_like(text, add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == [bos] + body + [eos]
        assert row["labels"] == [-100] + body + [eos]


def test_packing_gives_full_blocks(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in DOCS * 5])
    args = DataArguments(data_files=path, block_size=16, packing=True, eval_split=None)
    train = build_datasets(args, "causal-lm", tokenizer).train
    total = sum(n_tokens(tokenizer, t) + 1 for t in DOCS * 5)
    assert len(train) == total // 16
    assert all(len(ids) == 16 for ids in train["input_ids"])
    flat = [t for ids in train["input_ids"] for t in ids]
    assert flat.count(tokenizer.eos_token_id) >= len(DOCS * 5) - 1  # separators kept

    builtin = build_datasets(DataArguments(block_size=32, packing=True), "causal-lm", tokenizer)
    assert {len(ids) for ids in builtin.train["input_ids"]} == {32}


def test_prompt_tokens_are_masked(tokenizer, tmp_path):
    rows = [
        {"prompt": "Question: what is a list?\nAnswer:", "text": " An ordered sequence."},
        {"prompt": "Translate: chat", "text": " cat"},
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    args = DataArguments(data_files=path, prompt_column="prompt", block_size=64, eval_split=None)
    train = build_datasets(args, "causal-lm", tokenizer).train
    assert len(train) == 2
    for row, example in zip(rows, train):
        n_prompt = n_tokens(tokenizer, row["prompt"])
        labels, ids = example["labels"], example["input_ids"]
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] and -100 not in labels[n_prompt:]
        assert ids[-1] == tokenizer.eos_token_id
    # Truncated to block_size, not chunked: the completion never loses its prompt.
    short = build_datasets(
        DataArguments(data_files=path, prompt_column="prompt", block_size=12, eval_split=None),
        "causal-lm",
        tokenizer,
    ).train
    assert all(len(ids) <= 12 for ids in short["input_ids"]) and len(short) <= 2


def test_causal_lm_streaming_text_file(tokenizer, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(f"streamed line {i} about generators" for i in range(50)))
    args = DataArguments(
        data_files=str(path), streaming=True, max_eval_samples=5, block_size=8, shuffle_buffer_size=16
    )
    bundle = build_datasets(args, "causal-lm", tokenizer, seed=3)
    assert isinstance(bundle.train, datasets.IterableDataset)
    train, evals = list(bundle.train), list(bundle.eval)
    assert set(train[0]) == {"input_ids", "labels"}
    assert all(2 <= len(r["input_ids"]) <= 8 for r in train + evals)
    # The first 5 lines are held out, and max_eval_samples keeps 5 chunks of them.
    assert len(evals) == 5
    eval_text = tokenizer.decode([t for r in evals for t in r["input_ids"]])
    assert eval_text.startswith("streamed line 0 about generators<|endoftext|>streamed line 1")
    unshuffled = [
        r["input_ids"]
        for r in build_datasets(
            DataArguments(
                data_files=str(path), streaming=True, max_eval_samples=5, block_size=8, shuffle_buffer_size=1
            ),
            "causal-lm",
            tokenizer,
        ).train
    ]
    train_text = tokenizer.decode([t for ids in unshuffled for t in ids])
    assert train_text.startswith("streamed line 5 about") and "line 4 about" not in train_text
    assert [r["input_ids"] for r in train] != unshuffled  # shuffled with the buffer
    assert sorted(map(tuple, unshuffled)) == sorted(tuple(r["input_ids"]) for r in train)


def test_max_samples(tokenizer):
    args = DataArguments(block_size=64, max_train_samples=7, max_eval_samples=3, max_test_samples=2)
    bundle = build_datasets(args, "causal-lm", tokenizer)
    assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (7, 3, 2)


# ---- seq-cls ----------------------------------------------------------------------------------
def test_seq_cls_builtin(tokenizer):
    bundle = build_datasets(DataArguments(max_seq_length=32), "seq-cls", tokenizer)
    assert bundle.num_labels == len(corpus.DOCSTRING_AREAS)
    assert list(bundle.id2label.values()) == list(corpus.DOCSTRING_AREAS)
    assert bundle.train.column_names == ["input_ids", "attention_mask", "labels"]
    row = bundle.eval[0]
    assert len(row["input_ids"]) <= 32 and len(row["attention_mask"]) == len(row["input_ids"])
    assert isinstance(row["labels"], int) and 0 <= row["labels"] < bundle.num_labels
    assert max(len(x) for x in bundle.train["input_ids"]) == 32


def test_seq_cls_csv_with_string_labels(tokenizer, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(
        "review,sentiment\n"
        + "".join(
            f'"great product number {i}",pos\nawful thing {i},neg\nit is fine {i},meh\n' for i in range(10)
        )
    )
    args = DataArguments(data_files=str(path), label_column="sentiment")
    bundle = build_datasets(args, "seq-cls", tokenizer)
    assert bundle.num_labels == 3 and bundle.id2label == {0: "meh", 1: "neg", 2: "pos"}
    assert len(bundle.train) + len(bundle.eval) == 30
    assert set(bundle.train["labels"]) <= {0, 1, 2}
    first = tokenizer.decode(bundle.train[0]["input_ids"])
    assert any(w in first for w in ("great", "awful", "fine"))  # first string column is used


def test_seq_cls_sentence_pairs(tokenizer, tmp_path):
    rows = [{"sentence1": f"A cat sat {i}", "sentence2": "on the mat", "label": i % 2} for i in range(6)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    bundle = build_datasets(DataArguments(data_files=path, eval_split=None), "seq-cls", tokenizer)
    expected = tokenizer("A cat sat 0", "on the mat")["input_ids"]
    assert bundle.train[0]["input_ids"] == expected
    assert bundle.num_labels == 2 and bundle.id2label == {0: "0", 1: "1"}


def test_seq_cls_streaming_json(tokenizer, tmp_path):
    rows = [{"text": f"text {i}", "label": ["a", "b"][i % 2]} for i in range(20)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    args = DataArguments(data_files=path, streaming=True, max_eval_samples=4)
    bundle = build_datasets(args, "seq-cls", tokenizer)
    assert bundle.num_labels == 2 and bundle.id2label == {0: "a", 1: "b"}
    assert [r["labels"] for r in bundle.eval] == [0, 1, 0, 1]
    assert len(list(bundle.train)) == 16


# ---- image-cls --------------------------------------------------------------------------------
def test_image_cls_builtin_digits():
    bundle = build_datasets(DataArguments(image_size=16), "image-cls", None)
    assert bundle.num_labels == 10 and bundle.id2label[3] == "3"
    row = bundle.train[0]
    pixels = row["pixel_values"]
    assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.float32
    assert tuple(pixels.shape) == (3, 16, 16) and -1.0 <= pixels.min() <= pixels.max() <= 1.0
    assert isinstance(row["labels"], int)
    loader = torch.utils.data.DataLoader(bundle.eval, batch_size=8)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 3, 16, 16) and batch["labels"].shape == (8,)


def test_image_cls_with_image_processor_and_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments, ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 12, "width": 12})
    bundle = build_datasets(DataArguments(max_eval_samples=20), "image-cls", processor)
    assert tuple(bundle.eval[0]["pixel_values"].shape) == (3, 12, 12)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 12 * 12, 10)

        def forward(self, pixel_values, labels=None):
            logits = self.linear(pixel_values.flatten(1))
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    args = TrainingArguments(
        output_dir=str(tmp_path),
        remove_unused_columns=False,
        per_device_eval_batch_size=8,
        report_to=[],
        use_cpu=True,
    )
    metrics = Trainer(model=Tiny(), args=args, eval_dataset=bundle.eval).evaluate()
    assert metrics["eval_loss"] > 0


def test_imagefolder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 7), (i * 40, 0, 0)).save(tmp_path / "img" / label / f"{i}.png")
    args = DataArguments(
        dataset_name="imagefolder", data_files=str(tmp_path / "img"), image_size=8, eval_split=None
    )
    bundle = build_datasets(args, "image-cls", None)
    assert bundle.id2label == {0: "cat", 1: "dog"} and len(bundle.train) == 6
    assert tuple(bundle.train[5]["pixel_values"].shape) == (3, 8, 8)


def test_image_cls_streaming():
    bundle = build_datasets(DataArguments(streaming=True, image_size=8), "image-cls", None)
    row = next(iter(bundle.eval))
    assert tuple(torch.as_tensor(row["pixel_values"]).shape) == (3, 8, 8)
    assert bundle.num_labels == 10


# ---- errors before training -------------------------------------------------------------------
def test_missing_columns_are_named(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": "some words here", "y": 1}] * 6)
    with pytest.raises(ValueError, match=r"text_column='text'.*\['body', 'y'\]"):
        build_datasets(DataArguments(data_files=path), "causal-lm", tokenizer)
    with pytest.raises(ValueError, match=r"label_column='label'.*available columns"):
        build_datasets(DataArguments(data_files=path), "seq-cls", tokenizer)
    with pytest.raises(ValueError, match="prompt_column='question'"):
        build_datasets(
            DataArguments(data_files=path, text_column="body", prompt_column="question"),
            "causal-lm",
            tokenizer,
        )
    with pytest.raises(ValueError, match=r"text_column='nope'.*\['body', 'y'\]"):
        build_datasets(
            DataArguments(data_files=path, text_column="nope", streaming=True), "causal-lm", tokenizer
        )
    with pytest.raises(ValueError, match=r"image_column='image'.*\['body', 'y'\]"):
        build_datasets(DataArguments(data_files=path, label_column="y"), "image-cls", None)


def test_empty_after_filtering(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}] * 5)
    with pytest.raises(ValueError, match="train split is empty"):
        build_datasets(DataArguments(data_files=path, eval_split=None), "causal-lm", tokenizer)
    with pytest.raises(ValueError, match="train split is empty"):
        build_datasets(
            DataArguments(data_files=path, eval_split=None, streaming=True), "causal-lm", tokenizer
        )


def test_wrong_processing_class_or_task(tokenizer):
    with pytest.raises(ValueError, match="processing_class"):
        build_datasets(DataArguments(), "causal-lm", None)
    with pytest.raises(ValueError, match="task"):
        build_datasets(DataArguments(), "translation", tokenizer)
    with pytest.raises(ValueError, match="image-cls"):
        next(data.texts_for_tokenizer(DataArguments(), task="image-cls"))


def test_texts_for_tokenizer_stops_at_max_chars():
    texts = list(data.texts_for_tokenizer(DataArguments(), max_chars=10_000))
    assert 10_000 <= sum(map(len, texts)) < 10_000 + max(map(len, texts)) + 1
    cls_texts = next(data.texts_for_tokenizer(DataArguments(), task="seq-cls"))
    assert isinstance(cls_texts, str)
