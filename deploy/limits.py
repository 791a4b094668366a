"""The limits of `scaledown serve`, enforced however a request is sent.

`Guard` is a plain ASGI middleware around the FastAPI app. For every HTTP request, in order:

1. API key (`Authorization: Bearer`, constant-time compare) on every path but `/health`: 401,
   before a byte of the body is read.
2. Body: read here, whole, before the app sees it, counting the bytes as they stream in: a
   declared Content-Length over the limit, or more bytes than the limit by any framing (chunked,
   or a Content-Length that lies), gets 413. The body must arrive within `read_timeout` seconds
   of the request's headers (a client that trickles it, slowloris-style, gets 408).
3. `request_timeout`: the app must start its answer within this many seconds of the request's
   arrival (queueing included), else 504 and the request's work is cancelled.
4. Metrics: status and latency of every request, and in-flight inference requests.

Headers are bounded by `timed_h11_protocol`: uvicorn's h11 protocol with a timer that closes a
connection whose request headers are not complete within `read_timeout` of their first byte
(or of the connection opening), answering 408.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Optional

INFERENCE_PATHS = ("/v1/classify", "/v1/completions", "/v1/chat/completions")
KNOWN_PATHS = ("/health", "/metrics", "/v1/models") + INFERENCE_PATHS


class _ReadTimeout(Exception):
    pass


class _TooLarge(Exception):
    pass


def json_error(
    status: int, message: str, kind: str = "invalid_request_error", close: bool = False, **headers
):
    """`(status, headers, body)` of an OpenAI-shaped JSON error."""
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.replace("_", "-").lower().encode(), str(v).encode()) for k, v in headers.items()]
    if close:
        head.append((b"connection", b"close"))
    return status, head, body


class Guard:
    """ASGI middleware: auth, body limit and read timeout, request timeout, metrics (see the module).

    Args:
        app: the ASGI app.
        metrics: a `deploy.metrics.ServerMetrics`.
        api_key: the key every path but `/health` needs (None: no auth).
        max_body_bytes: the largest request body.
        read_timeout: seconds for the body to arrive.
        request_timeout: seconds from arrival to the start of the answer.
        batcher: a `deploy.batcher.Batcher`, told of inference requests on their way.
    """

    def __init__(
        self,
        app,
        metrics,
        api_key: Optional[str] = None,
        max_body_bytes: int = 16 * 2**20,
        read_timeout: float = 30.0,
        request_timeout: float = 60.0,
        batcher=None,
    ):
        self.app = app
        self.metrics = metrics
        self.expected = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.batcher = batcher

    def authorized(self, scope) -> bool:
        if self.expected is None or scope["path"] == "/health":
            return True
        value = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)

    async def read_body(self, scope, receive, deadline: float) -> bytes:
        """The whole body, counted as it streams, by `deadline` (loop time)."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise _TooLarge
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _ReadTimeout
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise _ReadTimeout from None
            if message["type"] == "http.disconnect":
                raise ConnectionResetError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        arrived, start = loop.time(), time.perf_counter()
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        state = {"status": 500, "started": False, "blocked": False}

        async def guarded_send(message):
            if state["blocked"]:
                return
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message["status"]
            await send(message)

        async def answer(status, headers, body):
            await guarded_send({"type": "http.response.start", "status": status, "headers": headers})
            await guarded_send({"type": "http.response.body", "body": body})

        inference = path in INFERENCE_PATHS
        if inference:
            self.metrics.enter()
        try:
            if not self.authorized(scope):
                msg = "Missing or wrong API key: send 'Authorization: Bearer <key>'."
                return await answer(
                    *json_error(401, msg, "authentication_error", close=True, www_authenticate="Bearer")
                )
            if inference and self.batcher is not None:
                with self.batcher.expecting():
                    await self.serve(scope, receive, arrived, guarded_send, answer, state)
            else:
                await self.serve(scope, receive, arrived, guarded_send, answer, state)
        finally:
            if inference:
                self.metrics.leave()
            self.metrics.observe(scope["method"], path, state["status"], time.perf_counter() - start)

    async def serve(self, scope, receive, arrived, send, answer, state):
        loop = asyncio.get_running_loop()
        try:
            body = await self.read_body(scope, receive, arrived + self.read_timeout)
        except _TooLarge:
            return await answer(
                *json_error(413, f"The request body is over {self.max_body_bytes} bytes.", close=True)
            )
        except _ReadTimeout:
            msg = f"The request body did not arrive within {self.read_timeout:g} s (--read-timeout)."
            return await answer(*json_error(408, msg, close=True))
        except ConnectionResetError:
            return None
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect

        task = loop.create_task(self.app(scope, replay, send))
        done, _ = await asyncio.wait({task}, timeout=max(0.0, arrived + self.request_timeout - loop.time()))
        if done:
            return task.result()
        if state["started"]:  # a stream has begun: it ends on its own (max_tokens bounds it)
            return await task
        state["blocked"] = True
        task.cancel()
        state["blocked"] = False
        msg = f"No answer within {self.request_timeout:g} s (--request-timeout); retry later."
        await answer(*json_error(504, msg, "timeout_error"))
        state["blocked"] = True  # whatever the cancelled app still sends is dropped
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass


def timed_h11_protocol(read_timeout: float):
    """uvicorn's h11 protocol class, with request headers bounded by `read_timeout` seconds."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(read_timeout, self._headers_too_slow)

        def _disarm(self):
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def data_received(self, data):
            if self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of a request: its headers are due within read_timeout
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self):
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered; the next one's headers are timed after it
            body = json.dumps(
                {
                    "error": {
                        "message": f"The request headers did not arrive within {read_timeout:g} s.",
                        "type": "invalid_request_error",
                    }
                }
            ).encode()
            try:
                head = (
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
                )
                self.transport.write(head + body)
            finally:
                self.transport.close()

    return TimedH11Protocol
