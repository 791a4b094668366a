"""Dynamic batching for `scaledown serve`: concurrent requests wait in one queue, one worker runs them.

Each request becomes a `Job`. Classification jobs are batchable: the worker takes the oldest job,
then adds the jobs behind it while the batch stays within `max_batch_size` inputs and
`max_batch_tokens` padded tokens (inputs x the longest input), waiting up to `max_wait_ms` for
requests that the server is still receiving (none are waited for when nobody else is sending,
so a lone client pays no delay). The batch runs in one forward pass on a single inference
thread, and its results are split back to the jobs in order. Jobs that carry their own function
(text generation) run alone, in arrival order with the rest.

`submit` raises `QueueFull` when `max_queue` jobs are already waiting (the server answers 503);
a job whose request gave up (timeout, disconnect) while queued is skipped, never run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Set by `Batcher.expecting` for the request being handled (the app runs in a task that copies it).
_ARRIVING: contextvars.ContextVar = contextvars.ContextVar("scaledown_arriving", default=None)


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


@dataclass
class Job:
    """One request's work: `items` (prepared inputs) for the batch function, or its own `fn`."""

    items: list = field(default_factory=list)
    lengths: list = field(default_factory=list)  # tokens per item, for the padded-token budget
    options: Any = None  # per-request options passed to the batch function (e.g. top_k)
    fn: Optional[Callable[[], Any]] = None
    future: Optional[asyncio.Future] = None
    arrived: float = 0.0

    @property
    def longest(self) -> int:
        return max(self.lengths, default=1)


class Batcher:
    """The queue and its worker.

    Args:
        run_batch: `run_batch(jobs) -> [result or exception per job]`, called on the inference thread
            with batchable jobs only.
        max_batch_size: most inputs in one batch.
        max_batch_tokens: most padded tokens (inputs x longest) in one batch; a single job over it
            still runs, alone.
        max_wait_ms: longest wait for more jobs once a batch has started to form.
        max_queue: most jobs waiting; more get `QueueFull`.
        metrics: an object with `observe_batch(size, queue_seconds, run_seconds)` (optional).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], list],
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        metrics=None,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.incoming = 0  # requests being received that will submit a job
        self._queue: collections.deque[Job] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    # ---- the request side -----------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the batch being run)."""
        return len(self._queue)

    @contextlib.contextmanager
    def expecting(self):
        """Mark a request as on its way to `enqueue`, so that a forming batch may wait for it."""
        token = {"counted": True}
        self.incoming += 1
        reset = _ARRIVING.set(token)
        try:
            yield
        finally:
            _ARRIVING.reset(reset)
            if token["counted"]:
                self.incoming -= 1

    def enqueue(
        self, items: list, lengths: list, options: Any = None, fn: Optional[Callable] = None
    ) -> asyncio.Future:
        """Queue one job; its future gets the result (raises `QueueFull` when the queue is full).

        Cancel the future to withdraw the job: the worker skips it.
        """
        token = _ARRIVING.get()
        if token is not None and token["counted"]:
            token["counted"] = False  # this request has arrived: no batch waits for it any more
            self.incoming -= 1
        if self._worker is None:
            self._start()
        if len(self._queue) >= self.max_queue:
            # jobs withdrawn by requests that gave up (timeouts) free their places now, not when the worker
            # reaches them
            live = [j for j in self._queue if not j.future.done()]
            self._queue.clear()
            self._queue.extend(live)
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are queued (--max-queue {self.max_queue}).")
        loop = asyncio.get_running_loop()
        job = Job(list(items), list(lengths), options, fn, loop.create_future(), time.perf_counter())
        self._queue.append(job)
        self._wakeup.set()
        return job.future

    async def submit(
        self, items: list, lengths: list, options: Any = None, fn: Optional[Callable] = None
    ) -> Any:
        """`enqueue` and wait for the result; a request that gives up withdraws its job."""
        future = self.enqueue(items, lengths, options, fn)
        try:
            return await future
        finally:
            future.cancel()

    def _start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    # ---- the worker -----------------------------------------------------------------------
    def _next(self) -> Optional[Job]:
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                return job
        return None

    def _fits(self, batch: list[Job], job: Job) -> bool:
        if job.fn is not None:
            return False
        size = sum(len(j.items) for j in batch) + len(job.items)
        longest = max(max(j.longest for j in batch), job.longest)
        return size <= self.max_batch_size and size * longest <= self.max_batch_tokens

    async def _collect(self, first: Job) -> list[Job]:
        """`first` plus the queued jobs that fit behind it, waiting for arrivals up to max_wait."""
        batch = [first]
        if first.fn is not None:
            return batch
        deadline = time.monotonic() + self.max_wait
        while True:
            while self._queue and self._queue[0].future.done():
                self._queue.popleft()
            if self._queue:
                if not self._fits(batch, self._queue[0]):
                    return batch
                batch.append(self._queue.popleft())
                continue
            remaining = deadline - time.monotonic()
            if self.incoming <= 0 or remaining <= 0:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return batch

    def _run(self, batch: list[Job]) -> list:
        if batch[0].fn is not None:
            try:
                return [batch[0].fn()]
            except Exception as e:  # noqa: BLE001  (handed to the request that owns the job)
                return [e]
        try:
            return self.run_batch(batch)
        except Exception as e:  # noqa: BLE001
            return [e] * len(batch)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._next()
            if first is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect(first)
            batch = [j for j in batch if not j.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            results = await loop.run_in_executor(self._executor, self._run, batch)
            if self.metrics is not None:
                self.metrics.observe_batch(
                    sum(max(1, len(j.items)) for j in batch),
                    [started - j.arrived for j in batch],
                    time.perf_counter() - started,
                )
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
