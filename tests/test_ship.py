"""The pipeline's `ship` stage on tiny causal LMs (without a whole pipeline run), and its config."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from deploy_models import save_causal_lm


@pytest.mark.slow
def test_ship_stage_table_plot_and_report(tmp_path):
    from scaledown.report import render_ship_section
    from scaledown.ship import ShipConfig, ship_stage

    teacher, student, baseline = (
        save_causal_lm(str(tmp_path / n), seed=s)
        for n, s in (("teacher", 0), ("student", 1), ("baseline", 2))
    )
    root = str(tmp_path / "run")
    os.makedirs(root)
    config = SimpleNamespace(
        ship=ShipConfig(
            enabled=True, latency_samples=2, rounds=1, batch_size=4, max_eval_samples=8, compile_int8=False
        ),
        data={
            "dataset_name": "builtin:python-docs",
            "block_size": 32,
            "packing": True,
            "tokenizer_vocab_size": 1024,
        },
    )
    pipeline = SimpleNamespace(root=root, config=config)
    ship = ship_stage(pipeline, {"dir": teacher}, {"runs": [{"dir": student}]}, {"runs": [{"dir": baseline}]})
    names = [r["variant"] for r in ship["rows"]]
    assert names == [
        "student pytorch-fp32",
        "baseline pytorch-fp32",
        "student pytorch-int8",
        "student onnx-fp32",
        "student onnx-int8",
        "teacher",
    ]
    rows = {r["variant"]: r for r in ship["rows"]}
    assert rows["student onnx-fp32"]["loss"] == pytest.approx(rows["student pytorch-fp32"]["loss"], rel=1e-5)
    assert rows["student onnx-int8"]["disk_bytes"] < rows["student onnx-fp32"]["disk_bytes"]
    assert all(r["tokens"] > 0 and r["perplexity"] > 1 for r in ship["rows"])
    assert os.path.isfile(os.path.join(root, "plots", "quality_latency.png"))
    section = "\n".join(render_ship_section(json.loads(json.dumps(ship))))
    assert "## Shipping" in section and "student onnx-int8" in section and "quality_latency.png" in section
    # the bench's quality is measured on a few examples: the report says so next to the table
    assert "first 8 test examples" in section


def test_ship_config_and_flag(tmp_path):
    from scaledown.cli import build_parser
    from scaledown.config import load_pipeline_config

    assert load_pipeline_config(None).ship.enabled is False
    assert load_pipeline_config(None, overrides={"ship": {"enabled": True}}).ship.enabled is True
    assert build_parser().parse_args(["run", "--ship"]).ship is True
    path = tmp_path / "p.yaml"
    path.write_text("ship: {enable: true}\n")
    with pytest.raises(ValueError, match="ship.enable"):
        load_pipeline_config(str(path))
