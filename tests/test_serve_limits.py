"""`scaledown serve` limits, each tested with a raw socket client: body size however it is framed
(chunked, a Content-Length that lies), slow headers and bodies (408), and the request timeout (504).

The guard runs around a small ASGI app in uvicorn (with the server's h11 protocol) in a thread,
so each limit is checked in well under a second; one test sends the issue's chunked body to the
real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time

import pytest

from deploy.limits import Guard, timed_h11_protocol
from deploy.loadtest import free_port
from deploy.metrics import ServerMetrics

LIMIT = 1000


async def echo_app(scope, receive, send):
    """Answers 200 with the byte count of the body; `/slow` first sleeps 5 s."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(5)
    body = json.dumps({"received": size}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving(app, read_timeout: float = 5.0):
    """Run the ASGI `app` in uvicorn (the server's h11 protocol) in a thread; yields the port."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        http=timed_h11_protocol(read_timeout),
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def guarded_server(read_timeout=0.5, request_timeout=0.5, api_key=None):
    app = Guard(
        echo_app,
        ServerMetrics(),
        api_key=api_key,
        max_body_bytes=LIMIT,
        read_timeout=read_timeout,
        request_timeout=request_timeout,
    )
    return serving(app, read_timeout)


def exchange(
    port: int, parts: list[bytes], pause: float = 0.0, timeout: float = 10.0
) -> tuple[int, dict, float]:
    """Send `parts` (sleeping `pause` between them) on one connection; (status, JSON body, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for part in parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read what it said
            time.sleep(pause)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ]
                if length and len(rest) >= length[0]:
                    break
    elapsed = time.monotonic() - start
    assert data, "the server closed the connection without an answer"
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(rest) if rest.startswith(b"{") else {}, elapsed


def head(path="/echo", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n".encode()
    )


def chunked(body: bytes, size: int = 100) -> list[bytes]:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


def test_body_limit_holds_however_the_body_is_sent():
    small, big = b"x" * (LIMIT - 10), b"x" * (LIMIT * 3)
    with guarded_server(read_timeout=5) as port:
        # Under the limit, both framings are read whole.
        assert exchange(port, [head(extra=f"Content-Length: {len(small)}\r\n") + small])[:2] == (
            200,
            {"received": len(small)},
        )
        assert exchange(port, [head(extra="Transfer-Encoding: chunked\r\n"), *chunked(small)])[:2] == (
            200,
            {"received": len(small)},
        )
        # Declared over the limit: refused before the body is read.
        status, payload, _ = exchange(port, [head(extra=f"Content-Length: {len(big)}\r\n")])
        assert status == 413 and "over 1000 bytes" in payload["error"]["message"]
        # Chunked, no length declared: counted as it streams.
        assert exchange(port, [head(extra="Transfer-Encoding: chunked\r\n"), *chunked(big)])[0] == 413
        # A Content-Length that lies (small) next to a chunked body (which HTTP/1.1 says wins).
        lying = head(extra="Content-Length: 10\r\nTransfer-Encoding: chunked\r\n")
        assert exchange(port, [lying, *chunked(big)])[0] == 413


def test_slow_headers_and_bodies_are_cut_off():
    with guarded_server(read_timeout=0.5, request_timeout=30) as port:
        # Headers trickled a few bytes at a time: 408 and closed, long before they would finish.
        request = head(extra="Content-Length: 2\r\n") + b"{}"
        parts = [request[i : i + 4] for i in range(0, len(request), 4)]
        status, _, elapsed = exchange(port, parts, pause=0.2)
        assert status == 408 and elapsed < 0.2 * len(parts)
        # A connection that never sends a byte is closed too.
        status, _, _ = exchange(port, [])
        assert status == 408
        # Complete headers, then a body that stalls: 408 from the guard.
        status, payload, _ = exchange(port, [head(extra="Content-Length: 100\r\n") + b'{"a":'], pause=0)
        assert status == 408 and "--read-timeout" in payload["error"]["message"]
        # A chunked body trickled past the deadline, each chunk quickly enough on its own.
        status, _, _ = exchange(
            port, [head(extra="Transfer-Encoding: chunked\r\n"), *chunked(b"x" * 40, 4)], pause=0.1
        )
        assert status == 408
        # The server still serves.
        assert exchange(port, [head(extra="Content-Length: 2\r\n") + b"{}"])[0] == 200


def test_request_timeout_answers_504():
    with guarded_server(read_timeout=5, request_timeout=0.3) as port:
        status, payload, elapsed = exchange(port, [head("/slow", "Content-Length: 2\r\n") + b"{}"])
        assert status == 504 and payload["error"]["type"] == "timeout_error" and elapsed < 5
        assert exchange(port, [head(extra="Content-Length: 2\r\n") + b"{}"])[0] == 200


def test_auth_is_checked_before_the_body_is_read():
    with guarded_server(read_timeout=5, api_key="k" * 16) as port:
        status, payload, _ = exchange(port, [head(extra="Content-Length: 100000000\r\n")])
        assert status == 401 and payload["error"]["type"] == "authentication_error"
        good = head(extra=f"Authorization: Bearer {'k' * 16}\r\nContent-Length: 2\r\n") + b"{}"
        assert exchange(port, [good])[0] == 200


@pytest.mark.slow
def test_real_server_refuses_a_chunked_body_over_the_limit(tmp_path):
    """Issue 22: a chunked body over the limit used to be read whole and answered 200."""
    from deploy_models import model_dir

    from deploy.loadtest import running_server

    body = json.dumps({"inputs": ["Parse an XML document. " * 60]}).encode()  # ~1.4 kB, one valid input
    with running_server(model_dir(tmp_path, "seq-cls"), "--max-body-bytes", "1000") as url:
        port = int(url.rsplit(":", 1)[1])
        status, payload, _ = exchange(
            port, [head("/v1/classify", "Transfer-Encoding: chunked\r\n"), *chunked(body)]
        )
        assert status == 413 and "over 1000 bytes" in payload["error"]["message"]
        ok = json.dumps({"inputs": ["Parse an XML document."]}).encode()
        assert (
            exchange(port, [head("/v1/classify", "Transfer-Encoding: chunked\r\n"), *chunked(ok)])[0] == 200
        )
