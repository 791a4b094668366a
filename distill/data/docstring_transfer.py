"""`builtin:docstring-transfer`: unlabelled standard-library docstrings, a transfer set for `builtin:docstring-topics`.

The docstrings (of `MIN_CLASSIFICATION_CHARS` or more) that `builtin:docstring-topics` does not label: those of
its six areas that its class balancing leaves out, and those of the rest of the library, at most
`TRANSFER_DOCS` of them chosen by the SHA-256 of their ``doc_id``. None is in any docstring-topics split, so a
student distilled on them with ``transfer_split`` never sees an evaluation or test text. One split, ``train``,
with columns ``text`` and ``doc_id`` (no labels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .corpus import MIN_CLASSIFICATION_CHARS, corpus_records, docstring_classification, stable_bucket

if TYPE_CHECKING:
    from datasets import DatasetDict

TRANSFER_DOCS = 3000


def docstring_transfer() -> "DatasetDict":
    """Unlabelled stdlib docstrings outside every `builtin:docstring-topics` split (see the module docstring)."""
    from datasets import Dataset, DatasetDict, Features, Value

    labelled = {i for split in docstring_classification().values() for i in split["doc_id"]}
    rows = [
        r
        for r in corpus_records()
        if r["source"] == "docstring"
        and len(r["text"]) >= MIN_CLASSIFICATION_CHARS
        and r["doc_id"] not in labelled
    ]
    rows = sorted(rows, key=lambda r: stable_bucket("transfer:" + r["doc_id"], 2**62))[:TRANSFER_DOCS]
    rows.sort(key=lambda r: r["doc_id"])
    features = Features({"text": Value("string"), "doc_id": Value("string")})
    return DatasetDict(
        {"train": Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)}
    )
