"""Prometheus text-format metrics for the server: request counts, a latency histogram, in-flight requests.

Written by hand (the exposition format is a few lines of text) so the server needs no client
library; the names follow Prometheus conventions (`_total` counters, `_seconds` histograms).
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """Thread-safe counters; `render()` gives the `/metrics` body (text/plain; version=0.0.4)."""

    def __init__(self, prefix: str = "scaledown"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.bucket_counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.rejected = 0

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            counts = self.bucket_counts[path]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self.latency_sum[path] += seconds
            self.latency_count[path] += 1

    def enter(self, limit: int) -> bool:
        """Count one more in-flight inference if under `limit`; False (and count a rejection) otherwise."""
        with self._lock:
            if self.in_flight >= limit:
                self.rejected += 1
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def render(self) -> str:
        p = self.prefix
        with self._lock:
            lines = [
                f"# HELP {p}_requests_total HTTP requests by method, path and status code.",
                f"# TYPE {p}_requests_total counter",
            ]
            for (method, path, status), n in sorted(self.requests.items()):
                lines.append(f'{p}_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
            lines += [
                f"# HELP {p}_request_duration_seconds Time from request to response, by path.",
                f"# TYPE {p}_request_duration_seconds histogram",
            ]
            for path in sorted(self.bucket_counts):
                for bound, n in zip(LATENCY_BUCKETS, self.bucket_counts[path]):
                    lines.append(f'{p}_request_duration_seconds_bucket{{path="{path}",le="{bound}"}} {n}')
                lines.append(
                    f'{p}_request_duration_seconds_bucket{{path="{path}",le="+Inf"}} '
                    f"{self.latency_count[path]}"
                )
                lines.append(
                    f'{p}_request_duration_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6f}'
                )
                lines.append(
                    f'{p}_request_duration_seconds_count{{path="{path}"}} {self.latency_count[path]}'
                )
            lines += [
                f"# HELP {p}_in_flight_requests Inference requests being processed now.",
                f"# TYPE {p}_in_flight_requests gauge",
                f"{p}_in_flight_requests {self.in_flight}",
                f"# HELP {p}_rejected_requests_total Requests refused with 503 over --max-concurrency.",
                f"# TYPE {p}_rejected_requests_total counter",
                f"{p}_rejected_requests_total {self.rejected}",
            ]
        return "\n".join(lines) + "\n"
