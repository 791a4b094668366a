"""Loading refuses pickles and custom code by default; Hub tokens never reach logs or files."""

from __future__ import annotations

import json
import os

import fault_harness as h
import pytest
import torch
from helpers import tiny_llama, word_tokenizer

from distill.train import main as train_main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return h.make_workspace(str(tmp_path_factory.mktemp("security")))


def _pickled_model_dir(path):
    model = tiny_llama(hidden=48, layers=1, seed=1)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
    word_tokenizer().save_pretrained(path)
    return str(path)


def test_pickled_teacher_or_student_is_refused_with_how_to_convert(workspace, tmp_path):
    pickled = _pickled_model_dir(tmp_path / "pickled")
    args = h.train_args(workspace, str(tmp_path / "out"))
    i = args.index("--teacher_model_name_or_path")
    as_teacher = args[: i + 1] + [pickled] + args[i + 2 :]
    with pytest.raises(
        ValueError,
        match=r"teacher_model_name_or_path=.*only pickled weights \(pytorch_model\.bin\)"
        r"(.|\n)*save_pretrained",
    ):
        train_main(as_teacher)
    j = args.index("--model_config")
    as_student = args[:j] + ["--model_name_or_path", pickled] + args[j + 2 :]
    with pytest.raises(ValueError, match=r"model_name_or_path=.*only pickled weights"):
        train_main(as_student)
    assert not os.path.exists(tmp_path / "out")  # refused before any compute

    from distill.config import DistillationConfig
    from distill.teacher.loading import load_teacher
    from distill.trainer.tasks import get_task

    with pytest.raises(ValueError, match="only pickled weights"):
        load_teacher(pickled, get_task("causal-lm"), DistillationConfig(output_dir=str(tmp_path / "x")))


def test_model_dir_with_custom_code_is_refused_by_default(workspace, tmp_path):
    custom = tmp_path / "custom"
    tiny_llama(hidden=48, layers=1, seed=1).save_pretrained(custom)
    word_tokenizer().save_pretrained(custom)
    marker = tmp_path / "code_ran"
    (custom / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaForCausalLM as EvilForCausalLM\n"
    )
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config))
    args = h.train_args(workspace, str(tmp_path / "out"))
    i = args.index("--teacher_model_name_or_path")
    with pytest.raises(ValueError, match=r"ships its own modelling code .*trust_remote_code: true"):
        train_main(args[: i + 1] + [str(custom)] + args[i + 2 :])
    assert not marker.exists()


def test_hub_tokens_never_reach_logs_or_files(workspace, tmp_path, monkeypatch, capfd, caplog):
    env_token, arg_token = "hf_EnvSecretTokenForTests123", "hf_ArgSecretTokenForTests456"
    monkeypatch.setenv("HF_TOKEN", env_token)
    out = tmp_path / "out"
    args = h.train_args(workspace, str(out), steps=2, save_steps=1, eval_steps=1)
    with caplog.at_level("DEBUG"):
        train_main(args + ["--hub_token", arg_token])
    seen = capfd.readouterr()
    text = seen.out + seen.err + "\n".join(r.getMessage() for r in caplog.records)
    files = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    assert len(files) > 15 and any(f.endswith("training_args.json") for f in files)
    assert any("checkpoint-2" in f for f in files) and any(f.endswith("README.md") for f in files)
    for token in (env_token, arg_token):
        assert token not in text
        for path in files:
            with open(path, "rb") as f:
                assert token.encode() not in f.read(), path
