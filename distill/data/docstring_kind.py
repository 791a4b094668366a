"""`builtin:docstring-kind`: which kind of object a standard-library docstring documents.

A second offline text-classification task over the same docstrings as `builtin:docstring-topics`
(which asks *where* in the library a docstring comes from), for multi-task distillation. Labels follow
PEP 8 naming of the documented object's qualified name (``doc_id``):

* ``class``: the last dotted component starts with a capital letter (``email.message.Message``);
* ``method``: the component before it does (``email.message.Message.get_payload``);
* ``function``: otherwise, which covers module-level functions and module docstrings
  (``json.dumps``, ``json``).

The rule is a heuristic (``collections.defaultdict`` is a class named in lower case), deterministic and
documented. Classes are balanced like `docstring-topics` (at most 1.5x the smallest), and documents are
split 80/10/10 by the SHA-256 of their ``doc_id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .corpus import _MAX_CLASS_RATIO, MIN_CLASSIFICATION_CHARS, _split_records, corpus_records, stable_bucket

if TYPE_CHECKING:
    from datasets import DatasetDict

KIND_LABELS = ("class", "method", "function")


def docstring_kind(doc_id: str) -> str:
    """The kind of object a ``docstring:...`` id names, by PEP 8 naming (see the module docstring)."""
    parts = doc_id.removeprefix("docstring:").split(".")
    if parts[-1][:1].isupper():
        return "class"
    if len(parts) > 1 and parts[-2][:1].isupper():
        return "method"
    return "function"


def docstring_kind_classification() -> "DatasetDict":
    """Stdlib docstrings labelled ``class`` / ``method`` / ``function``.

    Returns:
        `DatasetDict` (train/validation/test) with columns `text`, `label` (a `ClassLabel`), `doc_id`.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    by_kind: dict[str, list[dict]] = {k: [] for k in KIND_LABELS}
    for record in corpus_records():
        if record["source"] == "docstring" and len(record["text"]) >= MIN_CLASSIFICATION_CHARS:
            by_kind[docstring_kind(record["doc_id"])].append(record)
    cap = int(min(len(v) for v in by_kind.values()) * _MAX_CLASS_RATIO)
    rows = []
    for label, kind in enumerate(KIND_LABELS):
        kept = sorted(by_kind[kind], key=lambda r: stable_bucket("kind:" + r["doc_id"], 2**62))
        rows += [dict(r, label=label) for r in kept[:cap]]
    rows.sort(key=lambda r: r["doc_id"])
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=list(KIND_LABELS)), "doc_id": Value("string")}
    )
    return DatasetDict(
        {
            split: Dataset.from_dict({k: [r[k] for r in part] for k in features}, features=features)
            for split, part in _split_records(rows, (0.8, 0.1)).items()
        }
    )
