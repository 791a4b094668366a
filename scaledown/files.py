"""Files the pipeline writes: JSON replaced atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
from typing import Any

from scaling.atomic import write_text_atomic


def write_json_atomic(path: str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=float))
