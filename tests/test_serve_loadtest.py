"""The load-test client counts only 200 answers as served requests (issue 18: 503s used to count)."""

from __future__ import annotations

import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.loadtest import load_test


class HalfBusy(BaseHTTPRequestHandler):
    """Answers 200, 503, 200, 503, ... (a quick refusal, like an overloaded server)."""

    counter = itertools.count()
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            status = 200 if next(self.counter) % 2 == 0 else 503
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def half_busy_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HalfBusy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_requests_per_second_counts_200_answers_only(half_busy_url):
    result = load_test(half_busy_url, {"inputs": ["x"]}, requests=40, clients=4)
    assert result["status_counts"] == {"200": 20, "503": 20} and result["ok"] == 20
    assert result["requests_per_second"] == pytest.approx(20 / result["wall_seconds"])
