"""OpenAI-compatible text generation for `scaledown serve`: `/v1/completions` and `/v1/chat/completions`.

Both follow OpenAI's schemas (`prompt` or `messages`, `max_tokens`, `temperature`, `top_p`, `stop`,
`seed`, `stream`), so the `openai` client library works against the server. Chat messages are
rendered with the tokenizer's chat template (a tokenizer without one gets a 400 that says so).
Generation runs on the server's single inference thread through the batching queue, one request
at a time; `stream: true` answers with server-sent events (`data: {chunk}` lines, then
`data: [DONE]`), each chunk carrying the text generated since the last. A client that goes away
or a `--request-timeout` that passes before the answer starts stops its generation.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from the annotations.

import asyncio
import json
import threading
import time
import uuid
from typing import Literal, Optional, Union


def add_openai_routes(app, predictor, batcher, max_batch_size: int, max_new_tokens: int) -> None:
    """Add `POST /v1/completions` and `POST /v1/chat/completions` to the FastAPI `app`."""
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, Field, StrictStr

    from .predictor import InputError

    class Sampling(BaseModel):
        model: Optional[str] = None
        max_tokens: Optional[int] = Field(default=None, ge=1)
        temperature: float = Field(default=1.0, ge=0.0, le=2.0)
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        n: int = Field(default=1, ge=1, le=1)
        stream: bool = False
        stop: Optional[Union[StrictStr, list[StrictStr]]] = None
        seed: Optional[int] = None

    class CompletionRequest(Sampling):
        prompt: Union[StrictStr, list[StrictStr]]

    class Message(BaseModel):
        role: Literal["system", "user", "assistant", "developer", "tool"]
        content: Union[StrictStr, list[dict]]

    class ChatRequest(Sampling):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: Optional[int] = Field(default=None, ge=1)

    def limit_tokens(requested: Optional[int], default: int) -> tuple[int, bool]:
        """The max_tokens to use, and whether the client asked for it."""
        tokens = requested or default
        if tokens > max_new_tokens:
            raise InputError(f"max_tokens={tokens} is over --max-new-tokens {max_new_tokens}.", 413)
        return tokens, requested is not None

    def stop_list(body) -> list[str]:
        return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])

    def generation_job(prompt: str, body, tokens: tuple[int, bool], special_tokens: bool, on_text=None):
        """The function the inference thread runs, and an event that cancels it.

        The prompt is checked here, before it is queued; a default max_tokens shrinks to fit the
        model's context, one the client asked for must fit.
        """
        max_tokens, explicit = tokens
        ids = predictor.encode_prompt(prompt, max_tokens if explicit else 1, special_tokens)
        window = predictor.info.config.get("max_position_embeddings")
        if window and not explicit:
            max_tokens = min(max_tokens, window - int(ids.shape[1]))
        cancel = threading.Event()
        stop = stop_list(body)

        def run():
            return predictor.generate(
                ids, max_tokens, body.temperature, body.top_p, stop, body.seed, on_text, cancel.is_set
            )

        return run, cancel

    async def generate(prompt: str, body, tokens: tuple, special_tokens: bool = True) -> dict:
        run, cancel = generation_job(prompt, body, tokens, special_tokens)
        try:
            return await batcher.submit([], [], fn=run)
        finally:
            cancel.set()

    def stream(prompt: str, body, tokens: tuple, special_tokens: bool, chunk) -> StreamingResponse:
        """Server-sent events: `chunk(text=..)` per piece of text, `chunk(finish=..)` last."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        run, cancel = generation_job(
            prompt,
            body,
            tokens,
            special_tokens,
            lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text),
        )
        future = batcher.enqueue([], [], fn=run)  # QueueFull -> 503 before the stream starts

        async def events():
            try:
                yield f"data: {json.dumps(chunk(first=True))}\n\n"
                while True:
                    getter = asyncio.ensure_future(pieces.get())
                    await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield f"data: {json.dumps(chunk(text=getter.result()))}\n\n"
                        continue
                    getter.cancel()
                    while not pieces.empty():
                        yield f"data: {json.dumps(chunk(text=pieces.get_nowait()))}\n\n"
                    try:
                        result = future.result()
                    except InputError as e:
                        error = {"error": {"message": str(e), "type": "invalid_request_error"}}
                        yield f"data: {json.dumps(error)}\n\n"
                        return
                    yield f"data: {json.dumps(chunk(finish=result['finish_reason']))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
            finally:
                cancel.set()
                future.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise InputError("prompt is an empty list.")
        if len(prompts) > max_batch_size:
            raise InputError(f"prompt has {len(prompts)} items, over --max-batch-size {max_batch_size}.", 413)
        tokens = limit_tokens(body.max_tokens, 16)
        ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model or predictor.name
        if body.stream:
            if len(prompts) > 1:
                raise InputError("stream=true takes one prompt: send a string, not a list.", 400)

            def chunk(text: str = "", finish: Optional[str] = None, first: bool = False) -> dict:
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                return {"id": ident, "object": "text_completion", "created": created, "model": model,
                        "choices": [choice]}  # fmt: skip

            return stream(prompts[0], body, tokens, True, chunk)
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for index, prompt in enumerate(prompts):
            out = await generate(prompt, body, tokens)
            choices.append(
                {"text": out["text"], "index": index, "logprobs": None, "finish_reason": out["finish_reason"]}
            )
            usage = {k: usage[k] + out["usage"][k] for k in usage}
        return {"id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": choices, "usage": usage}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        messages = []
        for i, message in enumerate(body.messages):
            content = message.content
            if not isinstance(content, str):  # OpenAI's content parts: only text parts are served
                if any(
                    part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content
                ):
                    raise InputError(
                        f"messages[{i}].content: only text parts ({{'type': 'text'}}) are served."
                    )
                content = "".join(part["text"] for part in content)
            messages.append({"role": message.role, "content": content})
        prompt = predictor.chat_prompt(messages)
        tokens = limit_tokens(body.max_completion_tokens or body.max_tokens, max_new_tokens)
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model or predictor.name
        # The template writes the special tokens (bos, turn markers) itself: none are added again.
        if body.stream:

            def chunk(text: str = "", finish: Optional[str] = None, first: bool = False) -> dict:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip

            return stream(prompt, body, tokens, False, chunk)
        out = await generate(prompt, body, tokens, special_tokens=False)
        message = {"role": "assistant", "content": out["text"]}
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": out["finish_reason"]}],
                "usage": out["usage"]}  # fmt: skip
