"""Model card and Hub upload, offline: a recording fake `HfApi`; TensorBoard event files that read back."""

from __future__ import annotations

import fnmatch
import json
import os
from types import SimpleNamespace

import pytest
from deploy_models import model_dir

TOKEN = "hf_FAKEtoken0123456789abcdefghijklmnop"
STUDENT = json.dumps(
    {
        "model_type": "bert",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 256,
    }
)
QUICK = [
    "--max_steps",
    "2",
    "--max_train_samples",
    "32",
    "--max_eval_samples",
    "16",
    "--max_test_samples",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]


class RecordingHfApi:
    """Stands in for `HfApi`: records create_repo and the files upload_folder would send."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = {}
        for base, _, names in os.walk(folder_path):
            for name in names:
                rel = os.path.relpath(os.path.join(base, name), folder_path)
                if not any(
                    fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split(os.sep)[0], p)
                    for p in ignore_patterns or []
                ):
                    with open(os.path.join(base, name), "rb") as f:
                        files[rel] = f.read()
        self.uploads.append({"repo_id": repo_id, "files": files, "kwargs": kwargs})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")


@pytest.mark.slow
def test_push_to_hub_uploads_safetensors_and_a_full_card(tmp_path, monkeypatch):
    import transformers.trainer
    from huggingface_hub import ModelCard

    from distill.train import main as train_main

    api = RecordingHfApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    # the suite runs offline (HF_HUB_OFFLINE=1), which distill train refuses for push_to_hub before any
    # compute; the Hub is faked here, so the check is told it is online
    monkeypatch.setattr("huggingface_hub.constants.is_offline_mode", lambda: False)
    teacher = model_dir(tmp_path, "seq-cls")
    out = str(tmp_path / "student")
    os.makedirs(out)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write("| variant | p50 ms |\n|---|---:|\n| onnx-int8 | 1.0 |\n")
    with open(os.path.join(out, "fit.json"), "w") as f:
        json.dump(
            {
                "law": "power",
                "formula": "L(N) = E + A * N^-alpha",
                "params": {"E": 1.5, "A": 3.0, "alpha": 0.3},
                "n_points": 5,
            },
            f,
        )
    train_main(
        [
            "--task",
            "seq-cls",
            "--teacher_model_name_or_path",
            teacher,
            "--model_config",
            STUDENT,
            "--dataset_name",
            "builtin:docstring-topics",
            "--alpha",
            "0.5",
            "--temperature",
            "2.0",
            "--output_dir",
            out,
            "--overwrite_output_dir",  # the folder holds the pipeline's bench.md / fit.json for the card, kept
            "true",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "someone/tiny-student",
            "--hub_token",
            TOKEN,
            "--report_to",
            "none",
            *QUICK,
        ]
    )
    assert api.repos == ["someone/tiny-student"] and api.uploads
    files = api.uploads[-1]["files"]
    assert "model.safetensors" in files and "README.md" in files and "config.json" in files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    card = ModelCard.load(os.path.join(out, "README.md"))
    assert card.data.pipeline_tag == "text-classification" and "knowledge-distillation" in card.data.tags
    assert card.data.base_model is None  # a local teacher is not a Hub id
    metrics = {(r.dataset_split, r.metric_type, r.metric_name) for r in card.data.eval_results}
    assert ("test", "accuracy", "test accuracy") in metrics and ("validation", "loss", "eval loss") in metrics
    assert "model-index" in card.content
    for text in (
        "| alpha | 0.5 |",
        "| temperature | 2.0 |",
        "Retention against the teacher",
        "## Scaling fit",
        "alpha = 0.3",
        "## Deployment",
        "onnx-int8",
    ):
        assert text in card.text, text


def test_card_base_model_and_datasets_are_hub_ids_only():
    from distill.utils.model_card import _is_hub_id

    assert _is_hub_id("sentence-transformers/all-MiniLM-L6-v2") and _is_hub_id("gpt2")
    for name in ("builtin:python-docs", "/tmp/teacher", "./runs/teacher", "a/b/c", "", None):
        assert not _is_hub_id(name)


@pytest.mark.slow
def test_tensorboard_event_files_read_back(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.train import main as train_main

    logdir = str(tmp_path / "tb")
    monkeypatch.setenv(
        "TENSORBOARD_LOGGING_DIR", logdir
    )  # transformers 5 dropped TrainingArguments.logging_dir
    train_main(
        [
            "--task",
            "seq-cls",
            "--alpha",
            "0",
            "--model_config",
            STUDENT,
            "--tokenizer_name_or_path",
            model_dir(tmp_path, "seq-cls"),
            "--dataset_name",
            "builtin:docstring-topics",
            "--output_dir",
            str(tmp_path / "run"),
            "--report_to",
            "tensorboard",
            *QUICK,
        ]
    )
    event_dirs = {
        base for base, _, names in os.walk(logdir) if any(n.startswith("events.out.tfevents") for n in names)
    }
    assert event_dirs
    scalars = set()
    for directory in event_dirs:
        events = EventAccumulator(directory)
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
    assert "train/loss" in scalars and "train/learning_rate" in scalars
