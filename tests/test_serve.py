"""`scaledown serve` in a subprocess on a free loopback port: auth, bad inputs, load, completions, images."""

from __future__ import annotations

import base64
import io
import json

import pytest
from deploy_models import model_dir

from deploy.loadtest import load_test, request, running_server
from scaledown.cli import main as scaledown

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def classifier(root):
    log = str(root / "seq-cls.log")
    with running_server(
        model_dir(root, "seq-cls"),
        "--api-key-env",
        "SCALEDOWN_TEST_KEY",
        "--max-batch-size",
        "8",
        "--max-input-chars",
        "2000",
        env={"SCALEDOWN_TEST_KEY": KEY},
        log_path=log,
    ) as url:
        yield url, log


def test_auth(classifier):
    url, log = classifier
    assert request(url + "/health")[0] == 200  # no key needed
    body = {"inputs": ["Parse an XML document."]}
    for key in (None, "wrong", KEY[:-1], KEY + "x"):
        status, payload = request(url + "/v1/classify", body, key=key)
        assert status == 401 and payload["error"]["type"] == "authentication_error"
    assert request(url + "/metrics")[0] == 401
    status, payload = request(url + "/v1/classify", body, key=KEY)
    assert status == 200
    [[best]] = payload["predictions"]
    assert (
        best["label"] in {"asyncio", "email", "concurrency", "web", "xml", "unittest"}
        and 0 < best["score"] <= 1
    )


def test_classify_top_k_is_sorted_and_batched(classifier):
    url, _ = classifier
    status, payload = request(
        url + "/v1/classify", {"inputs": ["a", "Send an email.", "b c"], "top_k": 3}, key=KEY
    )
    assert status == 200 and len(payload["predictions"]) == 3
    for ranked in payload["predictions"]:
        scores = [p["score"] for p in ranked]
        assert len(ranked) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-9
    # One input alone gets the same scores as inside a padded batch.
    alone = request(url + "/v1/classify", {"inputs": ["a"], "top_k": 3}, key=KEY)[1]["predictions"][0]
    assert [p["label"] for p in alone] == [p["label"] for p in payload["predictions"][0]]
    assert alone[0]["score"] == pytest.approx(payload["predictions"][0][0]["score"], abs=1e-5)


@pytest.mark.parametrize(
    "body, raw, status",
    [
        (None, b"{not json", 400),
        ({"inputs": [1, 2]}, None, 422),
        ({"inputs": "text"}, None, 422),
        ({"inputs": []}, None, 422),
        ({"inputs": ["x"], "top_k": 0}, None, 422),
        ({"texts": ["x"]}, None, 422),
        ({"inputs": ["x"] * 9}, None, 413),
        ({"inputs": ["x" * 2001]}, None, 413),
        ({"prompt": "x"}, "completions", 400),
    ],
)
def test_bad_inputs_get_json_4xx(classifier, body, raw, status):
    url, _ = classifier
    path = "/v1/completions" if raw == "completions" else "/v1/classify"
    got, payload = request(url + path, body, key=KEY, raw=raw if isinstance(raw, bytes) else None)
    assert got == status and isinstance(payload, dict) and payload["error"]["message"]


def test_oversized_body_is_refused_unread(classifier):
    """A Content-Length over the limit gets 413 before the body is read (none is sent here)."""
    import http.client
    from urllib.parse import urlsplit

    url, _ = classifier
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.putrequest("POST", "/v1/classify")
    for name, value in (
        ("Content-Type", "application/json"),
        ("Content-Length", str(16 * 2**20 + 1)),
        ("Authorization", f"Bearer {KEY}"),
    ):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "over" in payload["error"]["message"]


def test_load_is_queued_and_batched_then_health_and_metrics(classifier, root):
    """16 clients at once: every request is served (queued and batched, none refused with 503)."""
    url, log = classifier
    result = load_test(
        url + "/v1/classify", {"inputs": ["Run the unit tests."] * 4}, requests=200, clients=16, key=KEY
    )
    assert result["status_counts"] == {"200": 200}
    assert request(url + "/health")[0] == 200
    status, text = request(url + "/metrics", key=KEY)
    assert status == 200
    assert 'scaledown_requests_total{method="POST",path="/v1/classify",status="200"}' in text
    assert "scaledown_request_duration_seconds_bucket" in text and "scaledown_in_flight_requests 0" in text
    assert "scaledown_queue_depth 0" in text and "scaledown_queue_wait_seconds_count" in text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    served = values['scaledown_requests_total{method="POST",path="/v1/classify",status="200"}']
    assert served >= 200
    # Batches formed: fewer batches than requests, holding at least every input sent.
    batches, inputs = values["scaledown_batch_size_count"], values["scaledown_batch_size_sum"]
    assert inputs >= 4 * 200 and batches < served
    with open(log) as f:
        assert KEY not in f.read()  # the key never reaches the log


def test_refuses_public_bind_without_key(root, capsys, monkeypatch):
    path = model_dir(root, "seq-cls")
    assert scaledown(["serve", path, "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
    monkeypatch.delenv("SCALEDOWN_UNSET_KEY", raising=False)
    assert scaledown(["serve", path, "--api-key-env", "SCALEDOWN_UNSET_KEY"]) == 2
    assert "unset or empty" in capsys.readouterr().err


def test_completions_openai_shape(root):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(root, "causal-lm")
    with running_server(path, "--max-new-tokens", "8") as url:
        body = {"prompt": "The event loop", "max_tokens": 5, "temperature": 0}
        status, out = request(url + "/v1/completions", body)
        assert status == 200 and out["object"] == "text_completion"
        [choice] = out["choices"]
        assert out["usage"]["completion_tokens"] <= 5 and choice["finish_reason"] in ("length", "stop")
        assert request(url + "/v1/completions", {**body, "max_tokens": 9})[0] == 413
        assert request(url + "/v1/completions", {**body, "prompt": ["a", "b"], "stream": True})[0] == 400
        assert request(url + "/v1/classify", {"inputs": ["x"]})[0] == 400
        assert request(url + "/health")[0] == 200
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer("The event loop", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
    assert choice["text"] == expected
    # The ONNX graph has no KV cache: the server recomputes the sequence per token, to the same greedy text.
    onnx_dir = str(root / "causal-lm-onnx")
    assert scaledown(["export", path, "--output_dir", onnx_dir]) == 0
    with running_server(onnx_dir, "--onnx", "--max-new-tokens", "8") as url:
        status, out = request(url + "/v1/completions", body)
        assert status == 200 and out["choices"][0]["text"] == expected


def test_onnx_int8_image_classifier(root, tmp_path):
    from PIL import Image

    path = model_dir(root, "image-cls")
    onnx_dir, int8_dir = str(tmp_path / "onnx"), str(tmp_path / "onnx-int8")
    assert scaledown(["export", path, "--output_dir", onnx_dir]) == 0
    assert scaledown(["quantize", onnx_dir, "--method", "onnx-int8", "--output_dir", int8_dir]) == 0
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    with running_server(int8_dir, "--onnx") as url:
        status, out = request(
            url + "/v1/classify", {"inputs": [image, "data:image/png;base64," + image], "top_k": 2}
        )
        assert status == 200 and out["predictions"][0] == out["predictions"][1]
        assert (
            request(url + "/v1/classify", {"inputs": [base64.b64encode(b"not an image").decode()]})[0] == 415
        )
        assert request(url + "/v1/classify", {"inputs": ["%%%"]})[0] == 422
        assert request(url + "/health")[1]["format"] == "onnx-int8"
