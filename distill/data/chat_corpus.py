"""`builtin:python-chat`: question/answer conversations about the standard library, made offline from its docstrings.

Each conversation asks what a documented object does and answers with the first paragraph of its
docstring (whitespace collapsed, cut at a sentence end near `MAX_ANSWER_CHARS`). Which question is asked,
whether a system message comes first, and whether a class or method gets a second turn ("Which module
defines it?", answered from its qualified name) all follow the SHA-256 of ``doc_id``, as does the split
(90/5/5), so the set is the same on every machine. Multi-turn and system messages are there so that
assistant-only masking has more than one turn and more than one role to skip.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .corpus import MIN_CLASSIFICATION_CHARS, _split_records, corpus_records, stable_bucket
from .docstring_kind import docstring_kind

if TYPE_CHECKING:
    from datasets import DatasetDict

MAX_ANSWER_CHARS = 400
MIN_ANSWER_CHARS = 40
SYSTEM_PROMPT = "You are a concise assistant for the Python standard library."
QUESTIONS = (
    "What does `{name}` do?",
    "Explain the {kind} `{name}`.",
    "In the Python standard library, what is `{name}` for?",
)


def _answer(docstring: str) -> str:
    """The first paragraph of a docstring, on one line, cut at a sentence end when it is long."""
    first = " ".join(docstring.strip().split("\n\n", 1)[0].split())
    if len(first) <= MAX_ANSWER_CHARS:
        return first
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", first[: MAX_ANSWER_CHARS + 1])]
    return first[: ends[-1]] if ends else first[:MAX_ANSWER_CHARS].rstrip() + "..."


def _module_of(name: str) -> str:
    """The module part of a class or method's qualified name (the components before the first capitalised one)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part[:1].isupper():
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def conversation_for(doc_id: str, docstring: str) -> list[dict[str, str]]:
    """The conversation made from one docstring record (deterministic in ``doc_id``)."""
    name = doc_id.removeprefix("docstring:")
    kind = docstring_kind(doc_id)
    pick = stable_bucket("chat:" + doc_id, 3 * 3 * 2)
    messages = []
    if pick % 3 == 0:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    question = QUESTIONS[(pick // 3) % 3].format(name=name, kind=kind)
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": _answer(docstring)}]
    module = _module_of(name)
    if kind in ("class", "method") and module and pick // 9 == 1:
        messages += [
            {"role": "user", "content": "Which module defines it?"},
            {"role": "assistant", "content": f"It is defined in the `{module}` module."},
        ]
    return messages


def python_chat_corpus() -> "DatasetDict":
    """Conversations about standard-library objects, split 90/5/5 by ``doc_id``.

    Returns:
        `DatasetDict` with splits `train`, `validation`, `test` and columns `messages` (a list of
        ``{"role", "content"}``: optionally a system message, then user and assistant turns) and `doc_id`.
    """
    from datasets import Dataset, DatasetDict

    rows = []
    for record in corpus_records():
        if record["source"] != "docstring" or len(record["text"]) < MIN_CLASSIFICATION_CHARS:
            continue
        if len(_answer(record["text"])) < MIN_ANSWER_CHARS:
            continue
        rows.append(
            {"doc_id": record["doc_id"], "messages": conversation_for(record["doc_id"], record["text"])}
        )
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"messages": [r["messages"] for r in part], "doc_id": [r["doc_id"] for r in part]}
            )
            for split, part in _split_records(rows).items()
        }
    )
