"""The model behind `scaledown serve`: raw inputs (texts, base64 images, prompts) in, predictions out.

Classification runs in two steps, so that the server can batch requests: `Predictor.prepare`
checks and encodes one request's inputs (every problem raises `InputError`, which the server
answers with a 4xx, before the input joins a batch), and `Predictor.classify_prepared` runs
several requests' inputs in one padded forward pass and splits the top-k labels back. If a
batch fails, each request runs alone, and the one the runner rejects gets a 422 with the reason.

`Predictor.complete` continues a prompt (PyTorch: `generate` with its KV cache; ONNX: a greedy or
sampled loop over the exported logits, without a cache), handing text on as it is generated for
streaming; `Predictor.chat_prompt` renders chat messages with the tokenizer's chat template.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Callable, Optional

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
    def prepare(self, inputs: list[str]) -> tuple[list, list[int]]:
        """Check and encode one request's inputs, each on its own: `(items, tokens per item)`.

        Every problem raises `InputError` here, before the input joins a batch, so that one bad
        input fails only its own request.
        """
        if self.task == "causal-lm":
            raise InputError("This model is a causal LM: use POST /v1/completions.", status=400)
        for i, value in enumerate(inputs):
            if not value.strip():
                raise InputError(f"inputs[{i}] is empty: send a non-empty text or base64 image.")
        if self.task == "image-cls":
            items = [self._image_tensor(decode_image(v, i)) for i, v in enumerate(inputs)]
            return items, [1] * len(items)
        for i, text in enumerate(inputs):
            if len(text) > self.max_input_chars:
                raise InputError(
                    f"inputs[{i}] has {len(text)} characters, over --max-input-chars {self.max_input_chars}.",
                    status=413,
                )
        limit = min(self.info.config.get("max_position_embeddings", 512), 512)
        encoded = self.processor(list(inputs), truncation=True, max_length=limit)
        items = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(inputs))]
        for i, item in enumerate(items):
            if not item["input_ids"]:
                raise InputError(f"inputs[{i}] has no tokens for this tokenizer: send some text.")
        return items, [len(item["input_ids"]) for item in items]

    def _image_tensor(self, image):
        if self._pixels is not None:
            return self._pixels([image])[0]
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0].float()

    def _collate(self, items: list) -> dict:
        import torch

        if self.task == "image-cls":
            return {"pixel_values": torch.stack(items)}
        batch = dict(self.processor.pad(list(items), padding=True, return_tensors="pt"))
        if "token_type_ids" in input_names(self.info) and "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return batch

    def _top_k(self, items: list, top_ks: list[int]) -> list[list[dict]]:
        import numpy as np

        logits = np.asarray(self.runner.logits(self._collate(items)), dtype=np.float64)
        if not np.isfinite(logits).all():
            raise InputError("The model gave non-finite scores for this input.")
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = []
        for row, top_k in zip(probs, top_ks):
            best = np.argsort(-row, kind="stable")[: min(top_k, probs.shape[-1])]
            out.append(
                [{"label": self.labels.get(int(i), str(int(i))), "score": float(row[i])} for i in best]
            )
        return out

    def classify_prepared(self, requests: list[tuple[list, int]]) -> list:
        """One forward pass over several requests' prepared items; a result list per request.

        `requests` holds `(items, top_k)` pairs. If the batch fails, each request runs alone, so
        that an input the runner rejects fails only its own request (with an `InputError`).
        """
        items = [item for request_items, _ in requests for item in request_items]
        top_ks = [k for request_items, k in requests for _ in request_items]
        try:
            flat = self._top_k(items, top_ks)
        except Exception:  # noqa: BLE001  (retried request by request below)
            if len(requests) == 1:
                return [self._alone(*requests[0])]
            return [self._alone(request_items, k) for request_items, k in requests]
        out, start = [], 0
        for request_items, _ in requests:
            out.append(flat[start : start + len(request_items)])
            start += len(request_items)
        return out

    def _alone(self, items: list, top_k: int):
        try:
            return self._top_k(items, [top_k] * len(items))
        except InputError as e:
            return e
        except Exception as e:  # noqa: BLE001  (the runner rejected this input: the client hears why)
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            return InputError(f"The model could not run on this input: {reason}")

    def classify(self, inputs: list[str], top_k: int) -> list[list[dict]]:
        """Top-k `{"label", "score"}` per input, best first, from one batched forward pass."""
        items, _ = self.prepare(inputs)
        [result] = self.classify_prepared([(items, top_k)])
        if isinstance(result, Exception):
            raise result
        return result

    # ---- completion -----------------------------------------------------------------------
    def encode_prompt(self, prompt: str, max_tokens: int, special_tokens: bool = True):
        """The prompt's token ids (1, T), checked against --max-input-chars and the context window."""
        import torch

        if self.task != "causal-lm":
            raise InputError("This model is a classifier: use POST /v1/classify.", status=400)
        if len(prompt) > self.max_input_chars:
            raise InputError(
                f"prompt has {len(prompt)} characters, over --max-input-chars {self.max_input_chars}.",
                status=413,
            )
        ids = self.processor(prompt, return_tensors="pt", add_special_tokens=special_tokens)["input_ids"]
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
        return ids

    def chat_prompt(self, messages: list[dict]) -> str:
        """`messages` rendered with the tokenizer's chat template, ending with the assistant's turn."""
        if self.task != "causal-lm":
            raise InputError("This model is a classifier: use POST /v1/classify.", status=400)
        if not getattr(self.processor, "chat_template", None):
            raise InputError(
                "This model's tokenizer has no chat template: add `chat_template` to its "
                "tokenizer_config.json (or chat_template.jinja), or use POST /v1/completions.",
                status=400,
            )
        try:
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001  (templates raise their own errors for unsupported roles)
            raise InputError(f"The chat template could not render these messages: {e}") from None

    def complete(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: Optional[int],
        on_text: Optional[Callable[[str], None]] = None,
        cancelled: Optional[Callable[[], bool]] = None,
        special_tokens: bool = True,
    ) -> dict:
        """Continue `prompt`; returns text, finish reason and token counts (OpenAI's `usage`).

        `on_text(delta)` receives the text as it is generated (held back while it may be the start
        of a stop string); `cancelled()` returning True ends generation early.
        """
        ids = self.encode_prompt(prompt, max_tokens, special_tokens)
        return self.generate(ids, max_tokens, temperature, top_p, stop, seed, on_text, cancelled)

    def generate(self, ids, max_tokens, temperature, top_p, stop, seed, on_text=None, cancelled=None) -> dict:
        """Generate from prompt ids (1, T) (see `complete`)."""
        stream = TextStream(self.processor, [s for s in stop if s], on_text)
        self._generate(ids, max_tokens, temperature, top_p, seed, stream, cancelled or (lambda: False))
        stream.close()
        if stream.finish is None:
            stream.finish = "length" if len(stream.ids) >= max_tokens else "stop"
        return {
            "text": stream.text,
            "finish_reason": stream.finish,
            "usage": {
                "prompt_tokens": int(ids.shape[1]),
                "completion_tokens": len(stream.ids),
                "total_tokens": int(ids.shape[1]) + len(stream.ids),
            },
        }

    def _generate(self, ids, max_tokens, temperature, top_p, seed, stream: TextStream, cancelled) -> None:
        """Feed new token ids to `stream` until it stops, `max_tokens`, eos or `cancelled()`."""
        import torch

        eos = self.processor.eos_token_id
        if self.info.format == "pytorch":
            from transformers import StoppingCriteria, StoppingCriteriaList
            from transformers.generation.streamers import BaseStreamer

            class Feed(BaseStreamer):
                prompt_seen = False

                def put(self, value):
                    if not self.prompt_seen:  # generate() first puts the prompt
                        self.prompt_seen = True
                        return
                    for token in value.reshape(-1).tolist():
                        stream.add(token, eos)

                def end(self):
                    pass

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    done = stream.finish is not None or cancelled()
                    return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

            model = self.runner.module.model
            with torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)  # generate samples from the global generator
                model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p if temperature > 0 else None,
                    pad_token_id=eos,
                    streamer=Feed(),
                    stopping_criteria=StoppingCriteriaList([Stop()]),
                )
            return
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for _ in range(max_tokens):  # ONNX: no KV cache, the whole sequence each step
            if cancelled():
                return
            logits = torch.from_numpy(
                self.runner.logits({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            )
            token = _sample(logits[0, -1].double(), temperature, top_p, generator)
            if stream.add(token, eos):
                return
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)


class TextStream:
    """Token ids in, text out: decodes as tokens arrive, cuts at stop strings, and hands new text on.

    Text that could be the start of a stop string, or an incomplete UTF-8 character, is held back
    until it is certain; `finish` becomes "stop" at eos or a stop string.
    """

    def __init__(self, tokenizer, stop: list[str], on_text: Optional[Callable[[str], None]] = None):
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish: Optional[str] = None

    def add(self, token: int, eos: Optional[int]) -> bool:
        """Take one token; True once generation should stop."""
        if self.finish is not None:
            return True
        self.ids.append(token)
        if token == eos:
            self.finish = "stop"
            return True
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [self.text.find(s) for s in self.stop if s in self.text]
        if cuts:
            self.text, self.finish = self.text[: min(cuts)], "stop"
            return True
        hold = max((len(s) - 1 for s in self.stop), default=0)
        safe = len(self.text) - hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        self._send(safe)
        return False

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            if self.on_text is not None:
                self.on_text(self.text[self.sent : upto])
            self.sent = upto

    def close(self) -> None:
        """Hand on whatever was held back."""
        self._send(len(self.text))


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
