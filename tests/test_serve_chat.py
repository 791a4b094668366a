"""POST /v1/chat/completions (and streamed /v1/completions) checked with the `openai` client library
against a local `scaledown serve`, to the same greedy text as `generate` on the rendered chat template."""

from __future__ import annotations

import json

import pytest
from deploy_models import model_dir

from deploy.predictor import InputError, Predictor

KEY = "chat-key-0123456789"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What does the event loop run?"},
]


def chat_model(root) -> str:
    from transformers import AutoTokenizer

    path = model_dir(root, "causal-lm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        tokenizer.chat_template = TEMPLATE
        tokenizer.save_pretrained(path)
    return path


def greedy(path: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def test_no_chat_template_is_a_clear_400(tmp_path):
    predictor = Predictor(model_dir(tmp_path, "causal-lm"))
    with pytest.raises(InputError, match="no chat template") as info:
        predictor.chat_prompt(MESSAGES)
    assert info.value.status == 400


def test_stream_holds_back_a_possible_stop_string():
    from deploy.predictor import TextStream

    class Chars:  # a tokenizer whose token i is chr(i)
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    pieces: list = []
    stream = TextStream(Chars(), ["END"], pieces.append)
    for ch in "abEcdENxEND!":
        if stream.add(ord(ch), eos=None):
            break
    stream.close()
    assert stream.text == "abEcdENx" and "".join(pieces) == "abEcdENx" and stream.finish == "stop"
    assert all("EN" not in piece or piece.endswith("x") for piece in pieces)


@pytest.mark.slow
def test_chat_completions_with_the_openai_client(tmp_path):
    openai = pytest.importorskip("openai", reason="pip install openai (in the test extra)")
    from deploy.loadtest import request, running_server

    path = chat_model(tmp_path)
    expected = greedy(path, 6)
    with running_server(
        path, "--api-key-env", "CHAT_KEY", "--max-new-tokens", "8", env={"CHAT_KEY": KEY}
    ) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        out = client.chat.completions.create(model="student", messages=MESSAGES, max_tokens=6, temperature=0)
        assert out.object == "chat.completion" and out.model == "student"
        assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == expected
        assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 6

        chunks = list(
            client.chat.completions.create(
                model="student", messages=MESSAGES, max_tokens=6, temperature=0, stream=True
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
        assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)

        if len(expected) > 3:  # a stop string cuts the text the same way, streamed or not
            stop = expected[2:4]
            cut = expected[: expected.find(stop)]
            plain = client.chat.completions.create(
                model="s", messages=MESSAGES, max_tokens=6, temperature=0, stop=[stop]
            )
            streamed = client.chat.completions.create(
                model="s", messages=MESSAGES, max_tokens=6, temperature=0, stop=[stop], stream=True
            )
            assert plain.choices[0].message.content == cut
            assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut

        text = client.completions.create(model="s", prompt="The event loop", max_tokens=5, temperature=0)
        pieces = client.completions.create(
            model="s", prompt="The event loop", max_tokens=5, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in pieces) == text.choices[0].text

        with pytest.raises(openai.APIStatusError) as info:  # over --max-new-tokens
            client.chat.completions.create(model="s", messages=MESSAGES, max_tokens=9)
        assert info.value.status_code == 413
        with pytest.raises(openai.UnprocessableEntityError):  # not a role OpenAI knows
            client.chat.completions.create(model="s", messages=[{"role": "robot", "content": "hi"}])
        status, payload = request(url + "/v1/chat/completions", {"messages": []}, key=KEY)
        assert status == 422 and "messages" in payload["error"]["message"]
        # The raw stream is server-sent events ending with [DONE].
        import urllib.request

        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps({"messages": MESSAGES, "max_tokens": 3, "stream": True}).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.read().decode().split("\n") if line]
        assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
