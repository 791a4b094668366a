"""Prometheus text-format metrics for the server: requests, latency, the batching queue and its batches.

Written by hand (the exposition format is a few lines of text) so the server needs no client
library; the names follow Prometheus conventions (`_total` counters, `_seconds` histograms).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable, Optional

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative bucket counts, sum and count, keyed by a label value (or "" for none)."""

    def __init__(self, buckets: tuple):
        self.buckets = buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
        self.sum: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def observe(self, value: float, key: str = "") -> None:
        counts = self.counts[key]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self.sum[key] += value
        self.count[key] += 1

    def render(self, name: str, help_text: str, label: Optional[str] = None) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for key in sorted(self.counts):
            tag = f'{label}="{key}",' if label else ""
            plain = f'{{{label}="{key}"}}' if label else ""
            for bound, n in zip(self.buckets, self.counts[key]):
                lines.append(f'{name}_bucket{{{tag}le="{bound}"}} {n}')
            lines.append(f'{name}_bucket{{{tag}le="+Inf"}} {self.count[key]}')
            lines.append(f"{name}_sum{plain} {self.sum[key]:.6f}")
            lines.append(f"{name}_count{plain} {self.count[key]}")
        return lines


class ServerMetrics:
    """Thread-safe counters; `render()` gives the `/metrics` body (text/plain; version=0.0.4).

    Args:
        prefix: the metric name prefix.
        queue_depth: a callable giving the number of requests waiting in the batching queue now.
    """

    def __init__(self, prefix: str = "scaledown", queue_depth: Optional[Callable[[], int]] = None):
        self.prefix = prefix
        self.queue_depth = queue_depth
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.batch_latency = Histogram(LATENCY_BUCKETS)
        self.in_flight = 0
        self.rejected = 0

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            self.latency.observe(seconds, path)

    def observe_batch(self, size: int, queue_seconds: list[float], run_seconds: float) -> None:
        """One batch run: its inputs, each request's wait in the queue, and the run's time."""
        with self._lock:
            self.batch_size.observe(size)
            for seconds in queue_seconds:
                self.queue_wait.observe(seconds)
            self.batch_latency.observe(run_seconds)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reject(self) -> None:
        """Count one request refused with 503 because the queue was full."""
        with self._lock:
            self.rejected += 1

    def render(self) -> str:
        p = self.prefix
        with self._lock:
            lines = [
                f"# HELP {p}_requests_total HTTP requests by method, path and status code.",
                f"# TYPE {p}_requests_total counter",
            ]
            for (method, path, status), n in sorted(self.requests.items()):
                lines.append(f'{p}_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
            lines += self.latency.render(
                f"{p}_request_duration_seconds", "Time from request to response, by path.", "path"
            )
            lines += self.batch_size.render(f"{p}_batch_size", "Inputs per batch run by the model.")
            lines += self.queue_wait.render(
                f"{p}_queue_wait_seconds", "Time a request waited in the batching queue."
            )
            lines += self.batch_latency.render(
                f"{p}_batch_duration_seconds", "Time the model took per batch."
            )
            depth = self.queue_depth() if self.queue_depth else 0
            lines += [
                f"# HELP {p}_queue_depth Requests waiting in the batching queue.",
                f"# TYPE {p}_queue_depth gauge",
                f"{p}_queue_depth {depth}",
                f"# HELP {p}_in_flight_requests Inference requests being processed now.",
                f"# TYPE {p}_in_flight_requests gauge",
                f"{p}_in_flight_requests {self.in_flight}",
                f"# HELP {p}_rejected_requests_total Requests refused with 503 because the queue was full "
                "(--max-queue).",
                f"# TYPE {p}_rejected_requests_total counter",
                f"{p}_rejected_requests_total {self.rejected}",
            ]
        return "\n".join(lines) + "\n"
