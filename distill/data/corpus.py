"""Offline data sources that are always on disk: CPython's documentation, the standard
library's docstrings, scikit-learn's digits, and a byte-level BPE tokenizer trained on them.

Everything here is deterministic: the same documents land in the same split on every machine
and every run, because splits come from a SHA-256 of each document's id (never from Python's
salted `hash`, import order or a random shuffle).

Extracting the docstrings means importing most of the standard library, which takes seconds
and has side effects (IDLE patches `warnings`, `__phello__` prints, ...). So it runs once in a
child interpreter (`python -I -S`, stdlib only, output silenced) and the result is cached as
JSONL under `$SCALEDOWN_CACHE` (default `~/.cache/scaledown`), keyed by the Python version.

This module imports only the standard library at top level: the child process runs this very
file, and `datasets` / `transformers` are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedTokenizerFast

# Bump when the extraction rules change, so that stale caches are ignored.
CORPUS_FORMAT_VERSION = 3
# The language-modelling corpus keeps docstrings of at least this many characters: shorter
# ones are mostly one-liners ("Return self.") that teach a model little. 200 gives ~0.58M
# tokens (2,048-token BPE) together with the topics.
MIN_DOCSTRING_CHARS = 200
# The classification set keeps shorter ones too (a sentence or two), for ~4x more examples.
MIN_CLASSIFICATION_CHARS = 50
# The cache holds every docstring that either use could want.
_MIN_CACHED_CHARS = min(MIN_DOCSTRING_CHARS, MIN_CLASSIFICATION_CHARS)
# Fractions of documents in train and validation; the rest is test.
SPLIT_FRACTIONS = (0.90, 0.05)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Modules that do something when imported (print, open a browser, start IDLE) or are demos.
_SKIP_MODULES = frozenset({"this", "antigravity", "idlelib.idle", "turtledemo"})
# Any dotted component in here marks a test package or a script entry point.
_SKIP_COMPONENTS = frozenset({"test", "tests", "idle_test", "__main__"})

# docstring_classification: label name -> top-level stdlib packages that feed it.
DOCSTRING_AREAS: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio",),
    "email": ("email",),
    "concurrency": ("multiprocessing", "concurrent", "threading", "queue"),
    "web": ("http", "urllib", "xmlrpc", "wsgiref"),
    "xml": ("xml",),
    "unittest": ("unittest", "doctest"),
}
# Largest class is capped at this multiple of the smallest, so classes stay balanced-ish.
_MAX_CLASS_RATIO = 1.5


# --------------------------------------------------------------------------------------------
# Determinism helpers
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Directory for cached corpora: `$SCALEDOWN_CACHE`, else `~/.cache/scaledown`."""
    root = os.environ.get("SCALEDOWN_CACHE") or os.path.join("~", ".cache", "scaledown")
    return Path(root).expanduser()


def stable_bucket(key: str, buckets: int = 10_000) -> int:
    """A bucket in `[0, buckets)` from SHA-256 of `key`: identical on every machine and run."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % buckets


def split_of(doc_id: str, fractions: tuple[float, float] = SPLIT_FRACTIONS) -> str:
    """Split ("train", "validation" or "test") that document `doc_id` belongs to."""
    u = stable_bucket(doc_id) / 10_000
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


# --------------------------------------------------------------------------------------------
# Extraction (runs in a child interpreter; see `_extract_to`)
# --------------------------------------------------------------------------------------------
def _skip(module_name: str) -> bool:
    parts = module_name.split(".")
    return (
        parts[0].startswith("_")
        or module_name in _SKIP_MODULES
        or parts[0] in _SKIP_MODULES
        or any(p in _SKIP_COMPONENTS for p in parts)
    )


def _stdlib_module_names() -> list[str]:
    """All importable stdlib modules and submodules (skipping tests/side effects), sorted."""
    import importlib
    import pkgutil

    names: list[str] = []
    pending = sorted(n for n in sys.stdlib_module_names if not _skip(n))
    while pending:
        name = pending.pop(0)
        try:
            module = importlib.import_module(name)
        except BaseException:  # ImportError, SystemExit (tkinter missing), anything else
            continue
        names.append(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
            child = f"{name}.{info.name}"
            if not _skip(child):
                pending.append(child)
    return sorted(names)


def _member_docs(owner_name: str, namespace: dict) -> Iterable[tuple[str, object]]:
    """(qualified name, object) for the functions, classes and descriptors in `namespace`."""
    import inspect

    for attr, value in sorted(namespace.items()):
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isroutine(value) or inspect.isclass(value) or isinstance(value, property):
            yield f"{owner_name}.{attr}", value


def _module_docstrings(name: str, module) -> Iterable[tuple[str, str]]:
    """(doc_id, raw docstring) for a module, its classes, functions and methods."""
    import inspect

    yield name, module.__doc__
    for qualname, obj in _member_docs(name, vars(module)):
        if getattr(obj, "__module__", None) != name:  # re-exported from elsewhere
            continue
        yield qualname, obj.__doc__
        if inspect.isclass(obj):
            for member_name, member in _member_docs(qualname, dict(vars(obj))):
                if not inspect.isclass(member):  # nested classes are rare; skip them
                    yield member_name, member.__doc__


def _extract_records() -> list[dict[str, str]]:
    """Topics, then stdlib docstrings, deduplicated by text, as {doc_id, source, text} dicts.

    Both parts are sorted by doc_id, and of identical texts the first doc_id is kept.
    """
    import inspect
    import warnings
    from pydoc_data.topics import topics

    records, seen = [], set()
    for key, text in sorted(topics.items()):
        if text.strip() not in seen:  # "else" and "if" share one text
            seen.add(text.strip())
            records.append({"doc_id": f"topics:{key}", "source": "topics", "text": text.strip()})
    warnings.simplefilter("ignore")
    candidates: dict[str, str] = {}
    for name in _stdlib_module_names():
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            for doc_id, doc in _module_docstrings(name, module):
                if isinstance(doc, str):
                    candidates.setdefault(f"docstring:{doc_id}", inspect.cleandoc(doc))
        except BaseException:
            continue
    for doc_id, text in sorted(candidates.items()):
        if len(text) >= _MIN_CACHED_CHARS and text not in seen:
            seen.add(text)
            records.append({"doc_id": doc_id, "source": "docstring", "text": text})
    return records


def _extract_to(path: str) -> None:
    """Child-process entry point: write the records to `path` as JSONL."""
    real_stdout = sys.stdout
    sys.stdout = sys.stderr = open(os.devnull, "w")  # modules that print on import
    try:
        records = _extract_records()
    finally:
        sys.stdout = real_stdout
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def corpus_cache_path() -> Path:
    """Cache file of the docs corpus for this interpreter (the docstrings differ by version)."""
    tag = f"{platform.python_implementation().lower()}{platform.python_version()}"
    return cache_dir() / f"python-docs-{tag}-v{CORPUS_FORMAT_VERSION}.jsonl"


@functools.lru_cache(maxsize=1)
def _corpus_records(path: str) -> tuple[dict[str, str], ...]:
    if not os.path.exists(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        os.close(fd)
        try:
            # -I: ignore PYTHON* env and the cwd; -S: no site-packages (e.g. setuptools'
            # distutils shim), so the corpus holds the standard library only.
            proc = subprocess.run(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), "--extract", tmp],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                tail = proc.stderr.decode(errors="replace")[-2000:]
                raise RuntimeError(f"extracting the stdlib docstrings failed:\n{tail}")
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; let other users share the cache
            os.replace(tmp, path)  # atomic: readers never see a half-written file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def corpus_records() -> tuple[dict[str, str], ...]:
    """All documents of the docs corpus ({doc_id, source, text}), extracting them if needed."""
    return _corpus_records(str(corpus_cache_path()))


# --------------------------------------------------------------------------------------------
# Public datasets
# --------------------------------------------------------------------------------------------
def _split_records(
    records: Iterable[dict], fractions: tuple[float, float] = SPLIT_FRACTIONS
) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for record in records:
        splits[split_of(record["doc_id"], fractions)].append(record)
    return splits


def python_docs_corpus() -> "DatasetDict":
    """CPython's documentation topics and stdlib docstrings, split 90/5/5 by document.

    Returns:
        `DatasetDict` with splits `train`, `validation`, `test` and columns `text`,
        `source` ("topics" or "docstring") and `doc_id` (e.g. "topics:assert",
        "docstring:email.message.Message.get_payload").
    """
    from datasets import Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "source": Value("string"), "doc_id": Value("string")})
    splits = _split_records(
        r for r in corpus_records() if r["source"] == "topics" or len(r["text"]) >= MIN_DOCSTRING_CHARS
    )
    return DatasetDict(
        {
            split: Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
            for split, rows in splits.items()
        }
    )


def _area_of(doc_id: str) -> str | None:
    top = doc_id.removeprefix("docstring:").split(".")[0]
    return next((area for area, tops in DOCSTRING_AREAS.items() if top in tops), None)


def docstring_classification() -> "DatasetDict":
    """Stdlib docstrings labelled with the area of the library they come from.

    Labels are the keys of `DOCSTRING_AREAS` (a `ClassLabel`). No class has more than
    `_MAX_CLASS_RATIO` times the documents of the smallest one; which documents are kept and
    which split (80/10/10, so that evaluation has ~130 documents) they land in both follow
    the SHA-256 of `doc_id`. Docstrings of `MIN_CLASSIFICATION_CHARS` or more are used.

    Returns:
        `DatasetDict` (train/validation/test) with columns `text`, `label`, `doc_id`.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    names = list(DOCSTRING_AREAS)
    by_area: dict[str, list[dict]] = {n: [] for n in names}
    for record in corpus_records():
        if record["source"] != "docstring" or len(record["text"]) < MIN_CLASSIFICATION_CHARS:
            continue
        area = _area_of(record["doc_id"])
        if area is not None:
            by_area[area].append(record)
    cap = int(min(len(v) for v in by_area.values()) * _MAX_CLASS_RATIO)
    rows = []
    for label, area in enumerate(names):
        kept = sorted(by_area[area], key=lambda r: stable_bucket("cls:" + r["doc_id"], 2**62))
        rows += [dict(r, label=label) for r in kept[:cap]]
    rows.sort(key=lambda r: r["doc_id"])
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=names), "doc_id": Value("string")}
    )
    return DatasetDict(
        {
            split: Dataset.from_dict({k: [r[k] for r in part] for k in features}, features=features)
            for split, part in _split_records(rows, (0.8, 0.1)).items()
        }
    )


def digits_images(image_size: int = 32) -> "DatasetDict":
    """scikit-learn's 1,797 8x8 handwritten digits as grayscale PIL images, split 80/10/10.

    Args:
        image_size: side of the (bilinearly upsampled) square images.

    Returns:
        `DatasetDict` (train/validation/test) with columns `image` (PIL "L") and `label`
        (`ClassLabel` "0".."9").
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    splits = {name: {"image": [], "label": []} for name in ("train", "validation", "test")}
    for i, (image, label) in enumerate(_digits_pil(image_size)):
        part = splits[split_of(f"digits:{i}", (0.8, 0.1))]
        part["image"].append(image)
        part["label"].append(label)
    return DatasetDict({k: Dataset.from_dict(v, features=features) for k, v in splits.items()})


@functools.lru_cache(maxsize=4)
def _digits_pil(image_size: int) -> tuple:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return tuple(
        (Image.fromarray(p, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR), int(t))
        for p, t in zip(pixels, digits.target)
    )


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 1024
) -> "PreTrainedTokenizerFast":
    """Train a GPT-2-style byte-level BPE tokenizer on `texts`.

    Args:
        texts: training text, e.g. `distill.data.texts_for_tokenizer(data_args)`.
        vocab_size: size of the vocabulary, the three special tokens included.
        model_max_length: longest sequence the tokenizer claims to support.

    Returns:
        A `PreTrainedTokenizerFast` with `<|endoftext|>` as bos and eos, `<pad>`, `<unk>`,
        right padding and no automatically added special tokens. Save it with
        `save_pretrained(dir)`; `AutoTokenizer.from_pretrained(dir)` loads it back.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN]
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size must be >= {256 + len(specials)} (256 bytes + special tokens), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


if __name__ == "__main__":  # child process of `_corpus_records`
    if len(sys.argv) != 3 or sys.argv[1] != "--extract":
        sys.exit("usage: python corpus.py --extract OUT.jsonl")
    _extract_to(sys.argv[2])
