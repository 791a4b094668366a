"""Issue 18: `scaledown bench` compares each quantised variant with fp32 at the same compile setting, so
compiled int8 is set against compiled fp32 (not eager fp32), and a `compiled` column says which rows are."""

from __future__ import annotations

import pytest

from deploy.artifacts import ModelInfo
from deploy.bench import _add_ratios, compile_plan, markdown_table


def info(fmt, precision, path="d"):
    return ModelInfo(path=path, task="seq-cls", format=fmt, precision=precision, config={}, report={})


def test_the_fp32_reference_is_compiled_when_an_int8_variant_is():
    infos = [info("pytorch", "fp32"), info("pytorch", "int8"), info("onnx", "fp32"), info("onnx", "int8")]
    assert compile_plan(infos, compile_int8=True) == [[False, True], [False, True], [False], [False]]
    assert compile_plan(infos, compile_int8=False) == [[False]] * 4
    # nothing compiled, nothing to match: the reference stays eager only
    assert compile_plan([infos[0], infos[2]], compile_int8=True) == [[False], [False]]


def row(variant, compiled, p50, path, accuracy=0.75):
    return {
        "variant": variant,
        "dir": path,
        "compiled": compiled,
        "disk_bytes": 100 if "fp32" in variant else 60,
        "latency_p50_ms": p50,
        "latency_p95_ms": p50 * 1.5,
        "throughput_per_s": 1000 / p50,
        "accuracy": accuracy,
    }


def test_compiled_rows_are_compared_with_the_compiled_reference():
    rows = [
        row("pytorch-fp32", False, 200.0, "/fp32"),
        row("pytorch-fp32+compile", True, 100.0, "/fp32"),
        row("pytorch-int8", False, 250.0, "/int8"),
        row("pytorch-int8+compile", True, 80.0, "/int8"),
        row("onnx-int8", False, 50.0, "/onnx"),
    ]
    _add_ratios(rows)
    by = {r["variant"]: r for r in rows}
    assert by["pytorch-int8+compile"]["ratio_reference"] == "pytorch-fp32+compile"
    assert by["pytorch-int8+compile"]["speedup_batch1"] == pytest.approx(100 / 80)  # not 200 / 80 = 2.5
    assert by["pytorch-int8"]["speedup_batch1"] == pytest.approx(200 / 250)
    assert by["onnx-int8"]["ratio_reference"] == "pytorch-fp32" and by["onnx-int8"]["speedup_batch1"] == 4
    assert by["pytorch-fp32+compile"]["speedup_batch1"] == 1
    result = {
        "reference": "pytorch-fp32",
        "rows": rows,
        "settings": {"batch_size": 32, "threads": 1, "latency_samples": 4, "rounds": 1},
        "machine": {"loadavg_before": [1.0], "loadavg_after": [1.0], "cpu_count": 2},
    }
    table = markdown_table(result)
    assert "| variant | compiled |" in table
    assert "| pytorch-int8+compile | yes |" in table and "| onnx-int8 | no |" in table
    assert "compiled rows against `pytorch-fp32+compile`" in table
