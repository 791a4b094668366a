"""The model behind `scaledown serve`: raw inputs (texts, base64 images, prompts) in, predictions out.

`Predictor.classify` batches a request's inputs into one forward pass and returns the top-k
labels with softmax scores; `Predictor.complete` continues a prompt (PyTorch: `generate` with its
KV cache; ONNX: a greedy or sampled loop over the exported logits, without a cache). Every
problem with an input raises `InputError` (the server answers 4xx), never a bare exception.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Optional

from .artifacts import describe, input_names, load_processor
from .runners import make_runner


class InputError(ValueError):
    """A request input the model cannot take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode_image(value: str, index: int):
    """A PIL RGB image from base64 (optionally a `data:image/...;base64,` URL)."""
    from PIL import Image, UnidentifiedImageError

    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            f"inputs[{index}] is not valid base64; send each image as base64-encoded PNG/JPEG bytes."
        ) from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputError(
            f"inputs[{index}] is not an image (PNG, JPEG, ... bytes in base64).", status=415
        ) from None
    return image.convert("RGB")


class Predictor:
    """A loaded model directory (PyTorch or ONNX) with its processor and labels.

    Args:
        model_dir: the directory.
        use_onnx: serve `model.onnx` with ONNX Runtime (the directory must come from `scaledown
            export` or `scaledown quantize --method onnx-int8`).
        threads: inference threads (None: the library default).
        max_input_chars: the longest text input or prompt accepted.
    """

    def __init__(
        self,
        model_dir: str,
        use_onnx: bool = False,
        threads: Optional[int] = None,
        max_input_chars: int = 20_000,
    ):
        self.info = describe(model_dir)
        if use_onnx and self.info.format != "onnx":
            raise ValueError(
                f"--onnx given but {model_dir!r} has no model.onnx: run `scaledown export` first."
            )
        if not use_onnx and self.info.format == "onnx":
            raise ValueError(f"{model_dir!r} holds an ONNX graph: add --onnx to serve it with ONNX Runtime.")
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.task = self.info.task
        self.processor = load_processor(model_dir, self.task)
        self.runner = make_runner(self.info, threads=threads)
        self.labels = self.info.id2label
        self.max_input_chars = max_input_chars
        self.name = self.info.config.get("_name_or_path") or model_dir
        self._pixels = None
        if self.task == "image-cls" and self.processor is None:
            from distill.data.prep import simple_pixels

            size = self.info.config.get("image_size", 32)
            self._pixels = simple_pixels(size if isinstance(size, int) else size[0])

    # ---- classification -------------------------------------------------------------------
    def _text_batch(self, texts: list[str]) -> dict:
        import torch

        for i, text in enumerate(texts):
            if len(text) > self.max_input_chars:
                raise InputError(
                    f"inputs[{i}] has {len(text)} characters, over --max-input-chars {self.max_input_chars}.",
                    status=413,
                )
        limit = self.info.config.get("max_position_embeddings", 512)
        batch = dict(
            self.processor(
                texts, padding=True, truncation=True, max_length=min(limit, 512), return_tensors="pt"
            )
        )
        if "token_type_ids" in input_names(self.info) and "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return batch

    def _image_batch(self, values: list[str]) -> dict:
        import torch

        images = [decode_image(v, i) for i, v in enumerate(values)]
        if self._pixels is not None:
            return {"pixel_values": torch.stack(self._pixels(images))}
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"].float()}

    def classify(self, inputs: list[str], top_k: int) -> list[list[dict]]:
        """Top-k `{"label", "score"}` per input, best first, from one batched forward pass."""
        import numpy as np

        if self.task == "causal-lm":
            raise InputError("This model is a causal LM: use POST /v1/completions.", status=400)
        batch = self._image_batch(inputs) if self.task == "image-cls" else self._text_batch(inputs)
        logits = np.asarray(self.runner.logits(batch), dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        k = min(top_k, probs.shape[-1])
        out = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            out.append(
                [{"label": self.labels.get(int(i), str(int(i))), "score": float(row[i])} for i in best]
            )
        return out

    # ---- completion -----------------------------------------------------------------------
    def complete(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: Optional[int],
    ) -> dict:
        """Continue `prompt`; returns text, finish reason and token counts (OpenAI's `usage`)."""
        import torch

        if self.task != "causal-lm":
            raise InputError("This model is a classifier: use POST /v1/classify.", status=400)
        if len(prompt) > self.max_input_chars:
            raise InputError(
                f"prompt has {len(prompt)} characters, over --max-input-chars {self.max_input_chars}.",
                status=413,
            )
        ids = self.processor(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            bos = self.processor.bos_token_id
            if bos is None:
                raise InputError("prompt is empty and the tokenizer has no bos token to start from.")
            ids = torch.tensor([[bos]])
        window = self.info.config.get("max_position_embeddings")
        if window and ids.shape[1] + max_tokens > window:
            raise InputError(
                f"prompt ({ids.shape[1]} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                f"context of {window} tokens.",
                status=413,
            )
        new = self._generate(ids, max_tokens, temperature, top_p, seed)
        text = self.processor.decode(new, skip_special_tokens=True)
        eos = self.processor.eos_token_id
        finish = "stop" if (new and new[-1] == eos) or len(new) < max_tokens else "length"
        for s in stop:
            cut = text.find(s) if s else -1
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return {
            "text": text,
            "finish_reason": finish,
            "usage": {
                "prompt_tokens": int(ids.shape[1]),
                "completion_tokens": len(new),
                "total_tokens": int(ids.shape[1]) + len(new),
            },
        }

    def _generate(
        self, ids, max_tokens: int, temperature: float, top_p: float, seed: Optional[int]
    ) -> list[int]:
        """New token ids (ending with eos when the model stopped)."""
        import torch

        eos = self.processor.eos_token_id
        if self.info.format == "pytorch":
            model = self.runner.module.model
            with torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)  # generate samples from the global generator
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p if temperature > 0 else None,
                    pad_token_id=eos,
                )
            new = out[0, ids.shape[1] :].tolist()
            return new[: new.index(eos) + 1] if eos in new else new
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        new: list[int] = []
        for _ in range(max_tokens):  # ONNX: no KV cache, the whole sequence each step
            logits = torch.from_numpy(
                self.runner.logits({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            )
            token = _sample(logits[0, -1].double(), temperature, top_p, generator)
            new.append(token)
            if token == eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        return new


def _sample(logits, temperature: float, top_p: float, generator) -> int:
    """Greedy at temperature 0, else nucleus sampling at `temperature` and `top_p`."""
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    ordered, index = probs.sort(descending=True)
    keep = ordered.cumsum(-1) - ordered < top_p
    ordered = ordered * keep
    choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(index[choice])
