"""Start `scaledown serve` in a subprocess on a free loopback port, and load it with concurrent clients.

Used by the tests and by `benchmarks/bench_serve_load.py`; standard library only (urllib and
threads), so the client adds no dependency and measures the server, not a client library.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    url: str,
    body: Optional[dict] = None,
    key: Optional[str] = None,
    raw: Optional[bytes] = None,
    timeout: float = 60.0,
) -> tuple[int, dict | str]:
    """One HTTP request; returns (status, parsed JSON or text). POST when a body is given."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@contextlib.contextmanager
def running_server(
    model_dir: str,
    *flags: str,
    env: Optional[dict] = None,
    startup_timeout: float = 180.0,
    log_path: Optional[str] = None,
) -> Iterator[str]:
    """`python -m scaledown serve MODEL_DIR --host 127.0.0.1 --port <free> FLAGS`; yields the base URL.

    Waits for `/health` to answer 200; stops the server (SIGTERM, then SIGKILL) on exit.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "scaledown",
        "serve",
        model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *flags,
    ]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"scaledown serve exited with status {process.returncode} before answering."
                )
            try:
                if request(url + "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"scaledown serve did not answer /health within {startup_timeout:.0f} s.")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()


def load_test(
    url: str, body: dict, requests: int = 200, clients: int = 16, key: Optional[str] = None
) -> dict:
    """`requests` POSTs of `body` from `clients` concurrent threads, each sending its next request as soon
    as the last is answered: status counts and latency percentiles.

    `requests_per_second` counts 200 answers only (a quick 503 is not a served request); every
    status has its own count in `status_counts` ("-1": no answer at all).
    """

    def one(_):
        start = time.perf_counter()
        try:
            status = request(url, body, key=key)[0]
        except OSError:
            status = -1  # connection refused or reset: the server did not answer
        return status, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    statuses = Counter(status for status, _ in results)
    ok = sorted(t for status, t in results if status == 200) or [float("nan")]
    every = sorted(t for _, t in results)

    def pct(values, q):
        return 1e3 * values[min(len(values) - 1, max(0, int(round(q / 100 * len(values))) - 1))]

    return {
        "requests": requests,
        "clients": clients,
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "ok": statuses.get(200, 0),
        "p50_ms_ok": pct(ok, 50),
        "p95_ms_ok": pct(ok, 95),
        "p50_ms_all": pct(every, 50),
        "p95_ms_all": pct(every, 95),
        "mean_ms_all": 1e3 * statistics.fmean(every),
        "wall_seconds": wall,
        "requests_per_second": statuses.get(200, 0) / wall,
    }
