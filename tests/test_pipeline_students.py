"""`scaledown run` with `student: {from_teacher: layers | prune}`: the student is made from the teacher."""

from __future__ import annotations

import json
import os

import pytest
import torch

from scaledown.config import load_pipeline_config
from scaledown.pipeline import Pipeline

DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "pipeline", "demo.yaml"
)


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    """A 3-block Llama with a small BPE tokenizer of the python-docs corpus, as `distill train` would leave it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.data.corpus import python_docs_corpus, train_bpe_tokenizer

    path = tmp_path_factory.mktemp("teacher") / "t"
    tokenizer = train_bpe_tokenizer(python_docs_corpus()["train"].select(range(200))["text"], vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "all_results.json").write_text(
        json.dumps({"student_params": sum(p.numel() for p in model.parameters())})
    )
    docs = python_docs_corpus()
    for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        rows = docs[split].select(range(40))["text"]
        (path.parent / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t[:2000]}) + "\n" for t in rows)
        )
    return str(path)


def pipeline(tmp_path, teacher, student):
    config = load_pipeline_config(
        DEMO,
        quick=True,
        overrides={
            "output_root": str(tmp_path),
            "teacher": teacher,
            "tokenizer": teacher,
            "student": {"width": None, **student},
            "distill": {"seeds": [0], "tokens": 1024},
            "data": {
                "dataset_name": "json",
                "block_size": 32,
                "max_eval_samples": 8,
                "max_test_samples": 8,
                "data_files": {
                    s: os.path.join(os.path.dirname(teacher), f"{s}.jsonl")
                    for s in ("train", "valid", "test")
                },
                "eval_split": "valid",
            },
            "train": {"per_device_train_batch_size": 4, "logging_steps": 1},
        },
    )
    p = Pipeline(config, log=lambda *_: None)
    p.validate()
    return p


@pytest.mark.slow
def test_from_teacher_layers_trains_kd_and_baseline_from_the_copied_blocks(llama_teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    p = pipeline(tmp_path, llama_teacher, {"from_teacher": "layers", "layers": [0, 2]})
    teacher = {"dir": llama_teacher, "source": "given"}
    student = p.pick_student(None, teacher)
    assert student["dir"].endswith("student_init") and student["steps"] == 1024 // (4 * 32)
    assert json.load(open(os.path.join(student["dir"], "student_init.json")))["layers"] == [0, 2]
    assert (
        student["params"] < json.load(open(os.path.join(llama_teacher, "all_results.json")))["student_params"]
    )
    kd = p.train_students(student, teacher, distill=True)
    base = p.train_students(student, teacher, distill=False)
    for runs, has_kd in ((kd, True), (base, False)):
        run = runs["runs"][0]["dir"]
        state = json.load(open(os.path.join(run, "trainer_state.json")))
        logs = [h for h in state["log_history"] if "loss" in h]
        assert state["global_step"] == student["steps"] and ("kd_loss" in logs[0]) == has_kd
        assert AutoModelForCausalLM.from_pretrained(run).config.num_hidden_layers == 2


def test_from_teacher_prune_writes_the_pruned_student(llama_teacher, tmp_path):
    p = pipeline(
        tmp_path,
        llama_teacher,
        {"from_teacher": "prune", "drop_layers": 1, "mlp_width": 32, "num_samples": 4},
    )
    student = p.pick_student(None, {"dir": llama_teacher, "source": "given"})
    record = json.load(open(os.path.join(student["dir"], "pruning.json")))
    assert record["num_samples"] == 4 and len(record["dropped_layers"]) == 1
    assert student["config"]["num_hidden_layers"] == 2 and student["config"]["intermediate_size"] == 32
    assert "pruned teacher" in student["reason"]


@pytest.mark.parametrize(
    "student, match",
    [
        ({"from_teacher": "layers", "layers": "0,5"}, "out of range"),
        ({"from_teacher": "layers"}, "needs student.layers"),
        ({"from_teacher": "prune", "drop_layers": 3}, "between 0 and 2"),
        ({"from_teacher": "copy"}, "use one of layers, prune"),
        ({"from_teacher": "layers", "layers": 2, "width": 48}, "exactly one of"),
    ],
)
def test_bad_from_teacher_requests_fail_before_training(llama_teacher, tmp_path, student, match):
    with pytest.raises(ValueError, match=match):
        pipeline(tmp_path, llama_teacher, student)
