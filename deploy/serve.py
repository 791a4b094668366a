"""`scaledown serve MODEL_DIR [--onnx] --host 127.0.0.1 --port 8000 --api-key-env NAME`.

A FastAPI app served by uvicorn:

- `GET /health` (never needs a key): 200 once the model is loaded (it is loaded before binding).
- `GET /metrics`: Prometheus text (requests by path and status, latency, queue depth, batch sizes,
  queue wait and batch time histograms, in-flight requests).
- `POST /v1/classify` (classifiers): `{"inputs": [text or base64 image, ...], "top_k": 1}` ->
  `{"predictions": [[{"label", "score"}, ...], ...]}`, one list per input, best first.
- `POST /v1/completions` and `POST /v1/chat/completions` (causal LMs): OpenAI's APIs, with
  `stream: true` as server-sent events (`deploy.openai_api`); `GET /v1/models`.

Dynamic batching (`deploy.batcher`): concurrent requests wait in one queue of at most
`--max-queue` requests; classification requests are merged into batches of up to
`--max-batch-size` inputs and `--max-batch-tokens` padded tokens, waiting at most `--max-wait-ms`
for requests still arriving; generation requests run one at a time. 503 (with Retry-After) only
when the queue is full.

Limits (`deploy.limits`): the body is counted as it streams (413 over `--max-body-bytes`,
chunked or not), headers and body must arrive within `--read-timeout` (408), and an answer must
start within `--request-timeout` of arrival (504). Access control: with `--api-key-env NAME`
every endpoint but `/health` needs `Authorization: Bearer <key>`; without a key the server
refuses a non-loopback `--host` unless `--insecure`.

Errors are JSON (`{"error": {"message", "type"}}`, OpenAI's shape): malformed JSON 400, wrong
types, an empty input or one the model cannot run 422, over a limit 413, not an image 415. Client
input never gets a 500.
"""

# No `from __future__ import annotations`: FastAPI reads the request models defined in create_app
# from the endpoint annotations, which must be real classes, not strings.

import ipaddress
import logging
import os
import sys
from typing import Optional

logger = logging.getLogger("scaledown.serve")


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
    max_batch_size: int = 32,
    max_batch_tokens: int = 8192,
    max_wait_ms: float = 10.0,
    max_queue: int = 256,
    max_new_tokens: int = 256,
    max_body_bytes: int = 16 * 2**20,
    read_timeout: float = 30.0,
    request_timeout: float = 60.0,
):
    """The ASGI app (FastAPI routes inside `deploy.limits.Guard`) around a loaded `Predictor`."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse
    from pydantic import BaseModel, Field, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .batcher import Batcher, QueueFull
    from .limits import Guard
    from .metrics import ServerMetrics
    from .openai_api import add_openai_routes
    from .predictor import InputError

    def run_batch(jobs):
        return predictor.classify_prepared([(job.items, job.options) for job in jobs])

    batcher = Batcher(run_batch, max_batch_size, max_batch_tokens, max_wait_ms, max_queue)
    metrics = ServerMetrics(queue_depth=lambda: batcher.depth)
    batcher.metrics = metrics
    app = FastAPI(title="scaledown serve", docs_url=None, redoc_url=None, openapi_url=None)

    class ClassifyRequest(BaseModel):
        inputs: list[StrictStr] = Field(description="texts, or base64-encoded images")
        top_k: int = Field(default=1, ge=1, le=1000)

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

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        metrics.reject()
        return _error(503, f"Server busy: {exc} Retry later.", "overloaded_error", {"Retry-After": "1"})

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
        if predictor.task == "image-cls" or sum(map(len, body.inputs)) > 10_000:
            # Decoding images or tokenising long texts takes a while: off the event loop.
            items, lengths = await run_in_threadpool(predictor.prepare, body.inputs)
        else:
            items, lengths = predictor.prepare(body.inputs)
        return {"predictions": await batcher.submit(items, lengths, body.top_k)}

    add_openai_routes(app, predictor, batcher, max_batch_size, max_new_tokens)
    return Guard(
        app,
        metrics,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        read_timeout=read_timeout,
        request_timeout=request_timeout,
        batcher=batcher,
    )


def check_args(args) -> Optional[str]:
    """The first problem with the serve flags, as an error line (None when they are fine)."""
    for name in (
        "max_batch_size",
        "max_batch_tokens",
        "max_queue",
        "max_input_chars",
        "max_new_tokens",
        "max_body_bytes",
    ):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1."
    for name in ("read_timeout", "request_timeout"):
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be above 0 seconds."
    if args.max_wait_ms < 0:
        return "--max-wait-ms must be 0 or more."
    return None


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
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    from .limits import timed_h11_protocol
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
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_new_tokens=args.max_new_tokens,
        max_body_bytes=args.max_body_bytes,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
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
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=timed_h11_protocol(args.read_timeout),
    )
    return 0
