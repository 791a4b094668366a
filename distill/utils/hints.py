"""Error-message helpers shared by the recipe parsers (`distill train`, `scaledown run`); no heavy imports."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(key: str, known: Iterable[str], prefix: str = "") -> str:
    """``" (did you mean 'prefix.close'?)"`` for the known name closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""
