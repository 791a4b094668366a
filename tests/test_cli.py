"""`distill train` end to end on every tiny recipe (2 steps), and clear errors before any compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from distill.cli import main as cli_main
from distill.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "recipes", "tiny")
QUICK = [
    "--max_steps",
    "2",
    "--max_eval_samples",
    "16",
    "--max_test_samples",
    "16",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]


def recipe(name):
    return os.path.join(TINY, name)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Each tiny teacher recipe, trained for 2 steps."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for task in ("causal_lm", "seq_cls", "image_cls"):
        path = str(root / task)
        extra = ["--tokenizer_vocab_size", "512"] if task != "image_cls" else []
        train_main(["--config", recipe(f"{task}_teacher.yaml"), "--output_dir", path, *QUICK, *extra])
        out[task] = path
    return out


@pytest.mark.parametrize("task", ["causal_lm", "seq_cls", "image_cls"])
def test_tiny_recipe_trains(task, teachers, tmp_path):
    from transformers import AutoConfig

    out = str(tmp_path / "student")
    results = train_main(
        [
            "--config",
            recipe(f"{task}.yaml"),
            "--teacher_model_name_or_path",
            teachers[task],
            "--output_dir",
            out,
            *QUICK,
        ]
    )
    with open(os.path.join(out, "all_results.json")) as f:
        saved = json.load(f)
    for key in (
        "eval_loss",
        "eval_kd_loss",
        "eval_teacher_loss",
        "test_loss",
        "student_params",
        "teacher_params",
    ):
        assert key in saved, key
    assert saved["teacher_params"] > saved["student_params"]
    if (
        task != "causal_lm"
    ):  # the teacher's accuracy on the same split, as its own run measured it (compute_metrics)
        with open(os.path.join(teachers[task], "all_results.json")) as f:
            assert saved["eval_teacher_accuracy"] == pytest.approx(json.load(f)["eval_accuracy"], abs=1e-9)
        assert "eval_accuracy" in saved
    assert results["eval_loss"] == pytest.approx(saved["eval_loss"])
    with open(os.path.join(out, "trainer_state.json")) as f:
        logs = [h for h in json.load(f)["log_history"] if "loss" in h]
    assert len(logs) == 2 and all("kd_loss" in h and "ce_loss" in h for h in logs)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert not os.path.exists(os.path.join(out, "training_args.bin"))
    card = open(os.path.join(out, "README.md")).read()
    assert "distill" in card.lower() and "temperature" in card
    config = AutoConfig.from_pretrained(out)
    assert config.hidden_size < AutoConfig.from_pretrained(teachers[task]).hidden_size


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, task, two",
    [
        ("seq_cls_augment.yaml", "seq_cls", False),
        ("image_cls_augment.yaml", "image_cls", False),
        ("seq_cls_two_teachers.yaml", "seq_cls", True),
    ],
)
def test_augmentation_and_two_teacher_recipes_train(name, task, two, teachers, tmp_path):
    """The offline recipes of issue 14 (data-augmentation distillation, two teachers), a few steps."""
    out = str(tmp_path / "student")
    extra = ["--extra_teachers", teachers[task]] if two else []
    train_main(
        [
            "--config",
            recipe(name),
            "--teacher_model_name_or_path",
            teachers[task],
            "--output_dir",
            out,
            *QUICK,
            *extra,
        ]
    )
    with open(os.path.join(out, "all_results.json")) as f:
        assert {"eval_loss", "eval_kd_loss", "eval_accuracy"} <= set(json.load(f))
    with open(os.path.join(out, "trainer_state.json")) as f:
        assert len([h for h in json.load(f)["log_history"] if "kd_loss" in h]) == 2


@pytest.mark.slow
def test_multitask_recipe_trains(teachers, tmp_path):
    """recipes/tiny/multitask.yaml: two tasks, each with its own teacher (sharing one tokenizer), one student."""
    kind_teacher = str(tmp_path / "kind_teacher")
    train_main(
        [
            "--config",
            recipe("docstring_kind_teacher.yaml"),
            "--output_dir",
            kind_teacher,
            "--tokenizer_name_or_path",
            teachers["seq_cls"],
            *QUICK,
        ]
    )
    tasks = [
        {"name": "topic", "dataset_name": "builtin:docstring-topics", "teacher": teachers["seq_cls"]},
        {"name": "kind", "dataset_name": "builtin:docstring-kind", "teacher": kind_teacher, "weight": 2.0},
    ]
    out = str(tmp_path / "student")
    train_main(
        [
            "--config",
            recipe("multitask.yaml"),
            "--tasks",
            json.dumps(tasks),
            "--tokenizer_name_or_path",
            teachers["seq_cls"],
            "--output_dir",
            out,
            *QUICK,
        ]
    )
    with open(os.path.join(out, "all_results.json")) as f:
        saved = json.load(f)
    for split in ("eval", "test"):
        for name in ("topic", "kind"):
            assert {f"{split}_{name}_loss", f"{split}_{name}_accuracy", f"{split}_{name}_kd_loss"} <= set(
                saved
            )
        assert saved[f"{split}_accuracy"] == pytest.approx(
            (saved[f"{split}_topic_accuracy"] + saved[f"{split}_kind_accuracy"]) / 2
        )
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["task_label_ranges"] == {"topic": [0, 6], "kind": [6, 3]} and len(config["id2label"]) == 9


@pytest.mark.slow
def test_chat_lora_recipe_trains(teachers, tmp_path):
    """recipes/tiny/chat_lora.yaml: LoRA self-distillation of the tiny teacher on builtin:python-chat."""
    out = tmp_path / "chat_lora"
    results = train_main(
        [
            "--config",
            recipe("chat_lora.yaml"),
            "--model_name_or_path",
            teachers["causal_lm"],
            "--output_dir",
            str(out),
            *QUICK,
        ]
    )
    assert results["teacher_params"] == results["student_params"]  # one model: the base is the teacher
    assert "eval_kd_loss" in results and "eval_teacher_loss" in results
    assert (out / "model.safetensors").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    with open(out / "tokenizer_config.json") as f:
        config = json.load(f)
    assert "chat_template" in config or (out / "chat_template.jinja").is_file()


def test_fused_lm_head_from_the_command_line(teachers, tmp_path):
    """--kd_fused_lm_head true on the tiny recipe logs the losses of the default chunked path."""
    logs = {}
    for flag in ("false", "true"):
        out = str(tmp_path / flag)
        train_main(
            [
                "--config",
                recipe("causal_lm.yaml"),
                "--teacher_model_name_or_path",
                teachers["causal_lm"],
                "--output_dir",
                out,
                *QUICK,
                "--kd_fused_lm_head",
                flag,
            ]
        )
        with open(os.path.join(out, "trainer_state.json")) as f:
            logs[flag] = [h for h in json.load(f)["log_history"] if "loss" in h]
    for a, b in zip(logs["false"], logs["true"], strict=True):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_teacher_dir_reloads_with_tokenizer(teachers):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teachers["causal_lm"])
    model = AutoModelForCausalLM.from_pretrained(teachers["causal_lm"], use_safetensors=True)
    assert model.config.vocab_size == len(tok)


BAD = [
    (["--alpha", "1.5"], "alpha"),
    (["--temperature", "0"], "temperature"),
    (["--kd_kind", "kl_sideways"], "kd_kind"),
    (["--teacher_model_name_or_path", "/nonexistent/teacher"], "teacher_model_name_or_path"),
    (["--label_column", "no_such_label"], "label_column"),
]


@pytest.mark.parametrize("extra,field", BAD, ids=[b[1] for b in BAD])
def test_bad_input_fails_fast_with_named_field(extra, field, teachers, tmp_path, capsys):
    name = "seq_cls.yaml"
    args = [
        "train",
        "--config",
        recipe(name),
        "--teacher_model_name_or_path",
        teachers["seq_cls"],
        "--output_dir",
        str(tmp_path / "out"),
        *QUICK,
    ]
    start = time.time()
    try:
        code = cli_main(args + extra)
    except SystemExit as e:  # argparse `choices` errors exit 2 themselves
        code = e.code
    assert code == 2
    assert field in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "trainer_state.json")
    assert time.time() - start < 60


def test_different_tokenizer_is_refused(teachers, tmp_path, capsys):
    # A student whose tokenizer is trained afresh (different merges) must be refused.
    code = cli_main(
        [
            "train",
            "--config",
            recipe("causal_lm.yaml"),
            "--teacher_model_name_or_path",
            teachers["causal_lm"],
            "--tokenizer_name_or_path",
            teachers["seq_cls"],
            "--output_dir",
            str(tmp_path / "o"),
            *QUICK,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "different tokenizers" in err and "cross_tokenizer_loss" in err  # the error names the way out


def test_tiny_cross_tokenizer_recipe_trains(teachers, tmp_path):
    """recipes/tiny/causal_lm_cross_tokenizer.yaml: the student trains its own BPE, the teacher keeps its own."""
    from transformers import AutoTokenizer

    out = str(tmp_path / "student")
    train_main(
        ["--config", recipe("causal_lm_cross_tokenizer.yaml"), "--teacher_model_name_or_path",
         teachers["causal_lm"], "--tokenizer_vocab_size", "384", "--output_dir", out, *QUICK]
    )  # fmt: skip
    with open(os.path.join(out, "all_results.json")) as f:
        saved = json.load(f)
    assert saved["eval_kd_loss"] > 0 and "eval_teacher_loss" not in saved
    s_tok, t_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(teachers["causal_lm"])
    assert len(s_tok) == 384 and s_tok.get_vocab() != t_tok.get_vocab()
    with open(os.path.join(out, "trainer_state.json")) as f:
        logs = [h for h in json.load(f)["log_history"] if "loss" in h]
    assert len(logs) == 2 and all(h["kd_loss"] > 0 for h in logs)


def test_alpha_below_one_without_labels_is_refused():
    import torch

    from distill.losses import distillation_loss

    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, alpha=0.5, temperature=1.0)


def test_help_is_fast():
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "distill", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout
    assert time.time() - start < 2.0


@pytest.mark.slow
def test_cli_under_accelerate_launch_two_processes(teachers, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m distill train` on CPU: two gloo ranks, exit 0."""
    out = str(tmp_path / "ddp")
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            os.path.join(bindir, "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "29547",
            "-m",
            "distill",
            "train",
            "--config",
            recipe("causal_lm.yaml"),
            "--teacher_model_name_or_path",
            teachers["causal_lm"],
            "--output_dir",
            out,
            *QUICK,
            "--per_device_train_batch_size",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "all_results.json")) as f:
        results = json.load(f)
    assert results["global_batch_size"] == 4  # 2 per device x 2 processes: the ranks really synchronised
    assert "eval_kd_loss" in results
