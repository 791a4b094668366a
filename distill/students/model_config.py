"""A student built from scratch: the `model_config` field (a mapping, a JSON string or a config path)."""

from __future__ import annotations

import json
import os
from typing import Any


def parse_model_config(value: Any) -> dict:
    """A student config given as a mapping, a JSON string, or a path to config.json / a model dir."""
    if isinstance(value, dict):
        config = dict(value)
    elif isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            config = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"model_config is not valid JSON: {e}") from None
    else:
        path = os.path.join(value, "config.json") if os.path.isdir(str(value)) else str(value)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_config={value!r}: no such config file or model directory.")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    if "model_type" not in config:
        raise ValueError("model_config needs a model_type, e.g. llama, gpt2, bert or vit.")
    return config
