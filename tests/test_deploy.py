"""`scaledown export|quantize|bench` on tiny models of the three tasks, with independent checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from deploy_models import model_dir

from scaledown.cli import main as scaledown

pytestmark = pytest.mark.slow
TASKS = ("seq-cls", "causal-lm", "image-cls")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def exported(root):
    """Each task's tiny model exported through the command line."""
    out = {}
    for task in TASKS:
        path = str(root / f"{task}-onnx")
        assert scaledown(["export", model_dir(root, task), "--format", "onnx", "--output_dir", path]) == 0
        out[task] = path
    return out


def _report(path, name="export_report.json"):
    with open(os.path.join(path, name)) as f:
        return json.load(f)


@pytest.mark.parametrize("task", TASKS)
def test_export_report_and_dynamic_axes(task, root, exported):
    from deploy.artifacts import describe, load_torch_model
    from deploy.runners import OnnxRunner

    report = _report(exported[task])
    assert report["task"] == task and report["opset"] >= 18 and report["max_abs_diff"] <= report["atol"]
    batches = [s.get("pixel_values", s.get("input_ids"))[0] for s in report["shapes_tested"]]
    assert 1 in batches and 8 in batches
    if task != "image-cls":
        assert {"input_ids", "attention_mask"} <= set(report["input_names"])
        assert len({s["input_ids"][1] for s in report["shapes_tested"]}) >= 2  # several sequence lengths
    # Independent check at a batch size and length the export never saw, padding included.
    model = load_torch_model(model_dir(root, task), task)
    generator = torch.Generator().manual_seed(1)
    if task == "image-cls":
        inputs = {"pixel_values": torch.randn(5, 3, 16, 16, generator=generator)}
    else:
        ids = torch.randint(3, model.config.vocab_size, (5, 11), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in report["input_names"]:
            inputs["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        reference = model(**inputs).logits.numpy()
    got = OnnxRunner(exported[task]).logits(inputs)
    if task == "causal-lm":
        keep = inputs["attention_mask"].numpy().astype(bool)
        reference, got = reference[keep], got[keep]
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)
    assert describe(exported[task]).variant == "onnx-fp32"


def test_parity_failure_is_an_error(root, exported):
    """A graph checked against a different model's logits fails loudly."""
    from deploy_models import save_seq_cls

    from deploy.artifacts import describe, load_processor, load_torch_model
    from deploy.export import ParityError, check_parity, parity_batches

    other = save_seq_cls(str(root / "other-seq-cls"), seed=7)
    info = describe(other)
    batches = parity_batches(info, load_processor(other, "seq-cls"), None, sizes=(2,))
    model = load_torch_model(other, "seq-cls")
    with pytest.raises(ParityError, match="differ from PyTorch"):
        check_parity(model, info, os.path.join(exported["seq-cls"], "model.onnx"), batches, 1e-4, 1e-5)


def test_bad_directories_are_refused_before_work(root, tmp_path, capsys):
    assert scaledown(["export", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"]})
    )
    assert (
        scaledown(
            [
                "quantize",
                str(tmp_path / "empty"),
                "--method",
                "torchao-int8",
                "--output_dir",
                str(tmp_path / "q"),
            ]
        )
        == 2
    )
    assert "no pickles" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scaledown(
            ["quantize", model_dir(root, "seq-cls"), "--method", "int4", "--output_dir", str(tmp_path / "q")]
        )
    assert scaledown(["bench", model_dir(root, "seq-cls"), model_dir(root, "image-cls")]) == 2
    assert "one task" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quantized(root, exported):
    out = {}
    for method, source in (("torchao-int8", model_dir(root, "seq-cls")), ("onnx-int8", exported["seq-cls"])):
        path = str(root / f"seq-cls-{method}")
        assert scaledown(["quantize", source, "--method", method, "--output_dir", path]) == 0
        out[method] = path
    return out


def test_torchao_int8_saves_safetensors_that_reload(root, quantized):
    from transformers import AutoModelForSequenceClassification

    path = quantized["torchao-int8"]
    assert not [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert "model.safetensors" in os.listdir(path)
    report = _report(path, "quantize_report.json")
    assert report["quantized_linear_layers"] == 8 and report["reloads_as"] == "pytorch-int8"
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
    assert type(model.bert.encoder.layer[0].attention.self.query.weight).__name__ == "Int8Tensor"
    fp32 = AutoModelForSequenceClassification.from_pretrained(model_dir(root, "seq-cls")).eval()
    ids = torch.randint(3, 200, (4, 9))
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, fp32(input_ids=ids).logits
    # int8 rounding changes the logits a little, not a lot (they are O(0.1) here).
    assert 0 < (got - want).abs().max() < 0.02


def test_onnx_int8_graph_is_quantised(exported, quantized):
    import onnx

    path = quantized["onnx-int8"]
    ops = {node.op_type for node in onnx.load(os.path.join(path, "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops
    report = _report(path, "quantize_report.json")
    assert report["disk_bytes"] < report["source_disk_bytes"] and report["top1_agreement"] >= 0.9
    assert report["input_names"] == _report(exported["seq-cls"])["input_names"]


def test_bench_classifier_table(root, exported, quantized, tmp_path):
    """Every variant measured; accuracy matches an independent PyTorch evaluation of the same examples."""
    from deploy.artifacts import describe, eval_examples, load_processor, load_torch_model, model_inputs

    out = str(tmp_path / "bench.json")
    student = model_dir(root, "seq-cls")
    assert (
        scaledown(
            [
                "bench",
                student,
                quantized["torchao-int8"],
                exported["seq-cls"],
                quantized["onnx-int8"],
                "--teacher",
                student,
                "--out",
                out,
                "--batch_size",
                "4",
                "--latency_samples",
                "3",
                "--rounds",
                "2",
                "--max_eval_samples",
                "12",
                "--no_compile",
            ]
        )
        == 0
    )
    result = json.load(open(out))
    names = [r["variant"] for r in result["rows"]]
    # torch.compile of the int8 model (row pytorch-int8+compile) is left to benchmarks/bench_deploy.py: slow here.
    assert names == ["pytorch-fp32", "pytorch-int8", "onnx-fp32", "onnx-int8", "teacher"]
    ref = result["rows"][0]
    assert ref["size_ratio"] == 1 and ref["speedup_batch1"] == 1 and result["settings"]["threads"] == 1
    for row in result["rows"]:
        assert row["examples"] == 12 and row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
    info = describe(student)
    processor = load_processor(student, "seq-cls")
    examples = eval_examples(info, processor, None, limit=12)
    batch = model_inputs(info, processor, [examples[i] for i in range(12)])
    with torch.no_grad():
        logits = load_torch_model(student, "seq-cls")(
            **{k: v for k, v in batch.items() if k != "labels"}
        ).logits
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert ref["accuracy"] == pytest.approx(accuracy)
    assert result["rows"][2]["accuracy"] == pytest.approx(accuracy)  # ONNX fp32 agrees
    assert os.path.isfile(str(tmp_path / "bench.md")) and "onnx-int8" in open(tmp_path / "bench.md").read()


def test_bench_causal_lm_loss_matches_torch_cross_entropy(root, exported, tmp_path):
    from deploy.bench import bench

    student = model_dir(root, "causal-lm")
    result = bench(
        [student, exported["causal-lm"]], batch_size=4, latency_samples=2, rounds=1, max_eval_samples=6
    )
    from deploy.artifacts import describe, eval_examples, load_processor, load_torch_model, model_inputs

    info = describe(student)
    processor = load_processor(student, "causal-lm")
    examples = eval_examples(info, processor, None, limit=6)
    rows = [examples[i] for i in range(len(examples))]
    model = load_torch_model(student, "causal-lm")
    total = count = 0.0
    for i in range(0, len(rows), 4):
        batch = model_inputs(info, processor, rows[i : i + 4])
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.double()
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        ).item()
        count += int((labels != -100).sum())
    torch_row, onnx_row = result["rows"]
    assert torch_row["loss"] == pytest.approx(total / count, rel=1e-6)
    assert onnx_row["loss"] == pytest.approx(total / count, rel=1e-5)
    assert torch_row["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-6)
