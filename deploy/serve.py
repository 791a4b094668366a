"""`scaledown serve MODEL_DIR [--onnx] --host 127.0.0.1 --port 8000 --api-key-env NAME --max-concurrency N`.

A FastAPI app served by uvicorn:

- `GET /health` (never needs a key): 200 once the model is loaded (it is loaded before binding).
- `GET /metrics`: Prometheus text (requests by path and status, latency histogram, in-flight).
- `POST /v1/classify` (classifiers): `{"inputs": [text or base64 image, ...], "top_k": 1}` ->
  `{"predictions": [[{"label", "score"}, ...], ...]}`, one list per input, best first, all
  inputs of a request in one batch.
- `POST /v1/completions` (causal LMs): OpenAI's completions API, non-streaming; `GET /v1/models`.

Access control: with `--api-key-env NAME` every endpoint but `/health` needs `Authorization:
Bearer <key>`, compared with `hmac.compare_digest` (constant time); anything else gets 401. The
key is read from the environment, never from the command line, and never logged. Without a key
the server refuses a non-loopback `--host` unless `--insecure`.

Errors are JSON (`{"error": {"message", "type"}}`, OpenAI's shape): malformed JSON 400, wrong
types or an empty batch 422, over a limit 413, not an image 415, over `--max-concurrency`
inference requests at once 503 (at once, no queue).
"""

# No `from __future__ import annotations`: FastAPI reads the request models defined in create_app
# from the endpoint annotations, which must be real classes, not strings.

import hmac
import ipaddress
import logging
import os
import sys
import time
import uuid
from typing import Optional, Union

logger = logging.getLogger("scaledown.serve")
INFERENCE_PATHS = ("/v1/classify", "/v1/completions")
KNOWN_PATHS = ("/health", "/metrics", "/v1/models") + INFERENCE_PATHS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: Optional[dict] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def create_app(
    predictor,
    api_key: Optional[str] = None,
    max_concurrency: int = 4,
    max_batch_size: int = 32,
    max_new_tokens: int = 256,
    max_body_bytes: int = 16 * 2**20,
):
    """The FastAPI app around a loaded `deploy.predictor.Predictor`."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from pydantic import BaseModel, Field, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .metrics import ServerMetrics
    from .predictor import InputError

    metrics = ServerMetrics()
    expected = api_key.encode() if api_key else None
    app = FastAPI(title="scaledown serve", docs_url=None, redoc_url=None, openapi_url=None)

    class ClassifyRequest(BaseModel):
        inputs: list[StrictStr] = Field(description="texts, or base64-encoded images")
        top_k: int = Field(default=1, ge=1, le=1000)

    class CompletionRequest(BaseModel):
        prompt: Union[StrictStr, list[StrictStr]]
        model: Optional[str] = None
        max_tokens: int = Field(default=16, ge=1)
        temperature: float = Field(default=1.0, ge=0.0, le=2.0)
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        n: int = Field(default=1, ge=1, le=1)
        stream: bool = False
        stop: Optional[Union[StrictStr, list[StrictStr]]] = None
        seed: Optional[int] = None

    def authorized(request: Request) -> bool:
        if expected is None or request.url.path == "/health":
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Auth, then the concurrency limit on inference paths, then metrics for every request."""
        start, status, entered = time.perf_counter(), 500, False
        try:
            length = request.headers.get("content-length", "0")
            if not length.isdigit() or int(length) > max_body_bytes:
                response = _error(413, f"The request body is over {max_body_bytes} bytes.")
            elif not authorized(request):
                response = _error(
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    "authentication_error",
                    {"WWW-Authenticate": "Bearer"},
                )
            elif request.url.path in INFERENCE_PATHS and not metrics.enter(max_concurrency):
                response = _error(
                    503,
                    f"Server busy: {max_concurrency} requests in flight (--max-concurrency); retry later.",
                    "overloaded_error",
                    {"Retry-After": "1"},
                )
            else:
                entered = request.url.path in INFERENCE_PATHS
                response = await call_next(request)
            status = response.status_code
            return response
        finally:
            if entered:
                metrics.leave()
            path = request.url.path if request.url.path in KNOWN_PATHS else "other"
            metrics.observe(request.method, path, status, time.perf_counter() - start)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "The body is not valid JSON.")
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in errors
        )
        return _error(422, detail or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return _error(exc.status, str(exc))

    @app.get("/health")
    async def health():
        return {"status": "ok", "task": predictor.task, "format": predictor.info.variant}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": predictor.name, "object": "model", "owned_by": "scaledown"}],
        }

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        if not body.inputs:
            raise InputError("inputs is empty: send at least one text or image.")
        if len(body.inputs) > max_batch_size:
            raise InputError(
                f"inputs has {len(body.inputs)} items, over --max-batch-size {max_batch_size}.", 413
            )
        predictions = await run_in_threadpool(predictor.classify, body.inputs, body.top_k)
        return {"predictions": predictions}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        if body.stream:
            raise InputError("stream=true is not supported: send stream=false.", 400)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise InputError("prompt is an empty list.")
        if len(prompts) > max_batch_size:
            raise InputError(f"prompt has {len(prompts)} items, over --max-batch-size {max_batch_size}.", 413)
        if body.max_tokens > max_new_tokens:
            raise InputError(f"max_tokens={body.max_tokens} is over --max-new-tokens {max_new_tokens}.", 413)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for index, prompt in enumerate(prompts):
            out = await run_in_threadpool(
                predictor.complete, prompt, body.max_tokens, body.temperature, body.top_p, stop, body.seed
            )
            choices.append(
                {"text": out["text"], "index": index, "logprobs": None, "finish_reason": out["finish_reason"]}
            )
            usage = {k: usage[k] + out["usage"][k] for k in usage}
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model or predictor.name,
            "choices": choices,
            "usage": usage,
        }

    return app


def main(args) -> int:
    """Check the flags, load the model, then serve (blocking)."""
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            print(
                f"error: --api-key-env {args.api_key_env}: that environment variable is unset or empty.",
                file=sys.stderr,
            )
            return 2
    if api_key is None and not is_loopback(args.host) and not args.insecure:
        print(
            f"error: --host {args.host} is not a loopback address and no API key is configured: set "
            "--api-key-env NAME (and export NAME=<key>), or pass --insecure to serve without access control.",
            file=sys.stderr,
        )
        return 2
    for name in ("max_concurrency", "max_batch_size", "max_input_chars", "max_new_tokens"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1.", file=sys.stderr)
            return 2
    import uvicorn

    from .predictor import Predictor

    try:
        predictor = Predictor(
            args.model_dir, use_onnx=args.onnx, threads=args.threads, max_input_chars=args.max_input_chars
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(
        predictor,
        api_key=api_key,
        max_concurrency=args.max_concurrency,
        max_batch_size=args.max_batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    logger.info(
        "Serving %s (%s, %s) on %s:%d, auth %s",
        args.model_dir,
        predictor.task,
        predictor.info.variant,
        args.host,
        args.port,
        "on" if api_key else "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
