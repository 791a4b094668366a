"""What a model directory may make us load: safetensors weights only, and no custom code unless asked.

`check_model_dir` is called on every local student and teacher directory before any compute. A
directory whose weights exist only as pickles (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``) is refused with
the command that converts it (a pickle can run arbitrary code when loaded, safetensors cannot), and a
directory that ships its own modelling code (``auto_map`` in ``config.json``) is refused unless
``trust_remote_code`` is set. Checkpoint files the Trainer itself writes with `torch.save` (optimizer,
scheduler, RNG state) are read by transformers 5.24 with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os

_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt", "tf_model.h5")


def check_model_dir(path: str, field: str, trust_remote_code: bool = False) -> None:
    """Raise ValueError naming ``field`` when the local model directory ``path`` breaks the rules above."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        return  # a Hub id: from_pretrained(use_safetensors=True) refuses pickles there itself
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        pickled = [n for n in names if n in _PICKLED or n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickled:
            raise ValueError(
                f"{field}={path!r} holds only pickled weights ({', '.join(sorted(pickled))}), which are refused: loading "
                "a pickle can run arbitrary code. If you trust the file, convert it once to safetensors:\n"
                f'  python -c "from transformers import AutoModel as M; m = M.from_pretrained({path!r}, '
                f'use_safetensors=False); m.save_pretrained({path!r})"\n(use the Auto class of its task, e.g. '
                "AutoModelForCausalLM, so the head is kept)."
            )
    config_path = os.path.join(path, "config.json")
    if not trust_remote_code and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{field}={path!r}: config.json does not parse ({e}).") from None
        if config.get("auto_map"):
            raise ValueError(
                f"{field}={path!r} ships its own modelling code (auto_map in config.json: "
                f"{sorted(config['auto_map'])}), which is not run unless you set trust_remote_code: true. Read the "
                "code first."
            )
