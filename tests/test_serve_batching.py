"""Dynamic batching in `scaledown serve`: the batcher (order, splitting, budgets, queue bound), one bad
input failing only its own request, and the served model under 16 concurrent clients with defaults."""

from __future__ import annotations

import asyncio

import pytest
from deploy_models import model_dir

from deploy.batcher import Batcher, QueueFull
from deploy.predictor import InputError, Predictor


def echo_batches(log: list):
    """A batch function that records each batch's requests and answers each input with (request, i)."""

    def run(jobs):
        log.append([job.options for job in jobs])
        return [[(job.options, i) for i in range(len(job.items))] for job in jobs]

    return run


def test_concurrent_requests_are_batched_in_order_and_split_back():
    log: list = []

    async def main():
        batcher = Batcher(echo_batches(log), max_batch_size=8, max_batch_tokens=10_000, max_wait_ms=50)
        sizes = [1, 3, 2, 1, 4, 1, 2, 1, 1, 3]

        async def client(n, size):
            with batcher.expecting():
                await asyncio.sleep(0.001 * n)
                return await batcher.submit(["x"] * size, [5] * size, options=n)

        out = await asyncio.gather(*(client(n, size) for n, size in enumerate(sizes)))
        batcher.close()
        return sizes, out

    sizes, out = asyncio.run(main())
    for n, (size, result) in enumerate(zip(sizes, out)):
        assert result == [(n, i) for i in range(size)]  # each request gets its own results, in order
    assert [n for batch in log for n in batch] == list(range(10))  # FIFO across batches
    assert len(log) < len(sizes)  # requests were merged
    for batch in log:
        assert sum(sizes[n] for n in batch) <= 8


def test_token_budget_and_jobs_of_their_own():
    log: list = []

    async def main():
        batcher = Batcher(echo_batches(log), max_batch_size=32, max_batch_tokens=100, max_wait_ms=0)
        ran = []
        futures = [
            batcher.enqueue(["a"] * 2, [30, 30], options=0),  # 2 x 30 = 60 padded tokens
            batcher.enqueue(["b"], [40], options=1),  # 3 x 40 = 120 > 100: next batch
            batcher.enqueue(["c"], [10], options=2),  # 2 x 40 = 80: joins 1
            batcher.enqueue([], [], fn=lambda: ran.append("gen") or "generated"),  # alone
            batcher.enqueue(["d"], [500], options=4),  # over the budget by itself: runs alone
        ]
        results = await asyncio.gather(*futures)
        batcher.close()
        return results, ran

    results, ran = asyncio.run(main())
    assert log == [[0], [1, 2], [4]] and ran == ["gen"] and results[3] == "generated"


def test_full_queue_refuses_and_withdrawn_jobs_never_run():
    log: list = []

    async def main():
        gate = asyncio.Event()
        batcher = Batcher(echo_batches(log), max_batch_size=1, max_wait_ms=0, max_queue=2)
        loop = asyncio.get_running_loop()
        blocker = batcher.enqueue(
            [], [], fn=lambda: asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        )
        await asyncio.sleep(0.05)  # the worker is now busy with the blocker
        first = batcher.enqueue(["a"], [1], options="a")
        second = batcher.enqueue(["b"], [1], options="b")
        with pytest.raises(QueueFull, match="--max-queue 2"):
            batcher.enqueue(["c"], [1], options="c")
        assert batcher.depth == 2
        second.cancel()  # its request gave up (timeout, disconnect)
        gate.set()
        await blocker
        assert await first == [("a", 0)]
        await asyncio.sleep(0.05)
        batcher.close()

    asyncio.run(main())
    assert log == [["a"]]


def test_one_bad_input_fails_only_its_request(tmp_path):
    """A batch the runner rejects is rerun request by request: only the bad one gets a 422, with the reason."""
    predictor = Predictor(model_dir(tmp_path, "seq-cls"))
    real = predictor.runner

    class PickyRunner:
        def logits(self, batch):
            if batch["input_ids"].shape[1] > 12:
                raise RuntimeError("Got invalid dimensions for input: input_ids\nmore detail")
            return real.logits(batch)

    predictor.runner = PickyRunner()
    good, _ = predictor.prepare(["Send an email."])
    bad, _ = predictor.prepare(["Parse an XML document into a tree and run the unit tests " * 3])
    also_good, _ = predictor.prepare(["Run the unit tests."])
    out = predictor.classify_prepared([(good, 2), (bad, 1), (also_good, 1)])
    assert len(out[0]) == 1 and len(out[0][0]) == 2 and len(out[2][0]) == 1
    assert isinstance(out[1], InputError) and out[1].status == 422
    assert str(out[1]) == "The model could not run on this input: Got invalid dimensions for input: input_ids"


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_inputs_are_refused_before_batching(tmp_path, value):
    predictor = Predictor(model_dir(tmp_path, "seq-cls"))
    with pytest.raises(InputError, match=r"inputs\[1\] is empty") as info:
        predictor.prepare(["fine", value])
    assert info.value.status == 422


@pytest.mark.slow
def test_onnx_server_with_defaults_serves_16_clients_and_never_500s(tmp_path):
    """Issue 22: with defaults, 16 concurrent clients sending one-text requests are all served (they used to get 503s).
    Issue 19: an empty string sent to `--onnx` got a 500 and an ONNX Runtime traceback."""
    from deploy.loadtest import load_test, request, running_server
    from scaledown.cli import main as scaledown

    onnx_dir = str(tmp_path / "onnx")
    assert scaledown(["export", model_dir(tmp_path, "seq-cls"), "--output_dir", onnx_dir]) == 0
    with running_server(onnx_dir, "--onnx") as url:
        status, payload = request(url + "/v1/classify", {"inputs": [""]})
        assert status == 422 and "inputs[0] is empty" in payload["error"]["message"]
        status, payload = request(url + "/v1/classify", {"inputs": ["Send an email.", " "]})
        assert status == 422 and "inputs[1]" in payload["error"]["message"]
        result = load_test(url + "/v1/classify", {"inputs": ["Send an email."]}, requests=160, clients=16)
        assert result["status_counts"] == {"200": 160}
        status, text = request(url + "/metrics")
        assert 'status="500"' not in text


class GatedPredictor:
    """A stand-in classifier whose batches wait for `gate`: lets a test fill the queue on purpose."""

    task, name = "seq-cls", "gated"

    class info:
        variant = "pytorch-fp32"

    def __init__(self):
        import threading

        self.gate, self.started, self.ran = threading.Event(), threading.Event(), []

    def prepare(self, inputs):
        return list(inputs), [1] * len(inputs)

    def classify_prepared(self, requests):
        self.ran.append([item for items, _ in requests for item in items])
        self.started.set()
        self.gate.wait(30)
        return [[[{"label": item, "score": 1.0}] for item in items] for items, _ in requests]


def test_http_503_only_when_the_queue_is_full_and_a_timed_out_request_is_withdrawn():
    import json
    import threading
    import time

    from test_serve_limits import exchange, head, serving

    from deploy.serve import create_app

    predictor = GatedPredictor()
    app = create_app(predictor, max_batch_size=1, max_queue=1, max_wait_ms=0, request_timeout=2)

    def post(port, text):
        body = json.dumps({"inputs": [text]}).encode()
        return exchange(port, [head("/v1/classify", f"Content-Length: {len(body)}\r\n") + body])

    with serving(app) as port:
        answers = {}

        def send(text):
            thread = threading.Thread(target=lambda: answers.setdefault(text, post(port, text)))
            thread.start()
            return thread

        running = send("running")
        assert predictor.started.wait(10)  # the worker holds "running"
        queued = send("queued")
        time.sleep(0.3)  # "queued" waits behind it: the queue (--max-queue 1) is full
        status, payload, _ = post(port, "refused")
        assert status == 503 and payload["error"]["type"] == "overloaded_error"
        running.join(10), queued.join(10)  # --request-timeout passes for both: 504
        assert answers["running"][0] == 504 and answers["queued"][0] == 504
        # the worker still holds "running" and the withdrawn "queued" has not been reached: its place is free
        # all the same, so "after" is queued, not refused
        after = send("after")
        time.sleep(0.3)
        predictor.gate.set()
        after.join(10)
        status, payload, _ = answers["after"]
        assert status == 200 and payload["predictions"] == [[{"label": "after", "score": 1.0}]]
    assert predictor.ran == [["running"], ["after"]]  # the withdrawn request never ran
