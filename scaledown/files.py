"""Files the pipeline writes: JSON replaced atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomic(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=float)
    os.replace(tmp, path)
