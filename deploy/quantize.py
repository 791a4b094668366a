"""`scaledown quantize MODEL_DIR --method torchao-int8|onnx-int8 --output_dir OUT`.

- `torchao-int8`: torchao's `quantize_` with `Int8DynamicActivationInt8WeightConfig` (int8
  weights per channel, activations quantised per token at run time) on every `nn.Linear`, applied
  through transformers' `TorchAoConfig` so that `save_pretrained` writes **safetensors**
  (torchao's `Int8Tensor` is flattened into plain tensors plus JSON metadata, and
  `from_pretrained(OUT)` rebuilds it; no pickle is involved). On CPU its int8 matmuls are fast
  only under `torch.compile`; eager mode dequantises and is usually slower than fp32
  (`scaledown bench` measures both).
- `onnx-int8`: ONNX Runtime's dynamic quantisation (`quantize_dynamic`: int8 weights, uint8
  activations quantised per call) of the exported graph. MODEL_DIR is an ONNX directory from
  `scaledown export`, or a PyTorch directory, which is exported first (with its parity check).

Both write `OUT/quantize_report.json`: the largest logit difference to the fp32 model and the
share of inputs whose top-1 class (token, for causal LMs) is unchanged, on real test inputs.
The deprecated `torch.ao.quantization.quantize_dynamic` is not used.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from .artifacts import ONNX_FILE, copy_model_files, describe, disk_bytes, input_names, load_processor

METHODS = ("torchao-int8", "onnx-int8")


def _agreement(info, reference, candidate, batch) -> dict:
    """Max |difference| and top-1 agreement between two logit arrays (valid positions only)."""
    import numpy as np

    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if not np.isfinite(candidate).all():
        raise RuntimeError("The quantised model produced NaN or infinite logits; it is unusable.")
    same = reference.argmax(-1) == candidate.argmax(-1)
    diff = np.abs(reference - candidate)
    if info.task == "causal-lm":
        mask = np.asarray(batch["attention_mask"], dtype=bool)
        same, diff = same[mask], diff[mask]
    return {
        "max_abs_diff": float(diff.max()),
        "top1_agreement": float(same.mean()),
        "compared": int(same.size),
    }


def _compare_runners(info, fp32_runner, int8_runner, batches) -> dict:
    rows = [_agreement(info, fp32_runner.logits(b), int8_runner.logits(b), b) for b in batches]
    compared = sum(r["compared"] for r in rows)
    return {
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "top1_agreement": sum(r["top1_agreement"] * r["compared"] for r in rows) / compared,
        "compared": compared,
    }


def quantize_torchao(model_dir: str, output_dir: str, data=None) -> dict:
    """torchao int8 dynamic-activation / int8-weight model saved as safetensors in `output_dir`."""
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import TorchAoConfig

    from distill.trainer.tasks import get_task

    from .export import parity_batches
    from .runners import TorchRunner, make_runner

    info = describe(model_dir)
    if info.format != "pytorch" or info.precision != "fp32":
        raise ValueError(
            f"--method torchao-int8 takes an fp32 PyTorch model directory; {model_dir!r} is {info.variant}."
        )
    processor = load_processor(model_dir, info.task)
    batches = parity_batches(info, processor, data)
    config = TorchAoConfig(quant_type=Int8DynamicActivationInt8WeightConfig())
    model = (
        get_task(info.task)
        .model_class()
        .from_pretrained(model_dir, use_safetensors=True, quantization_config=config, dtype=torch.float32)
        .eval()
    )
    quantized = sum(
        type(m.weight).__name__ == "Int8Tensor" for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    if quantized == 0:
        raise RuntimeError(f"torchao quantised no nn.Linear layer of {model_dir!r}; nothing to save.")
    model.save_pretrained(output_dir, safe_serialization=True)
    copy_model_files(model_dir, output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    model.config.save_pretrained(output_dir)  # the copy above must not drop quantization_config
    reloaded = describe(output_dir)
    comparison = _compare_runners(
        info, make_runner(info), TorchRunner(model, info.task, input_names(info)), batches
    )
    return _write_report(
        output_dir,
        {
            "method": "torchao-int8",
            "task": info.task,
            "source": os.path.abspath(model_dir),
            "config": "Int8DynamicActivationInt8WeightConfig",
            "quantized_linear_layers": quantized,
            "format": "safetensors (torchao Int8Tensor flattened; reload with from_pretrained)",
            "reloads_as": reloaded.variant,
            **comparison,
            "disk_bytes": disk_bytes(output_dir),
            "source_disk_bytes": disk_bytes(model_dir),
        },
    )


def quantize_onnx(model_dir: str, output_dir: str, data=None, per_channel: bool = True) -> dict:
    """ONNX Runtime dynamic int8 quantisation of an exported graph, into `output_dir/model.onnx`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .export import export, parity_batches
    from .runners import OnnxRunner

    info = describe(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if info.format == "pytorch":
            if info.precision != "fp32":
                raise ValueError(f"--method onnx-int8 needs an fp32 model; {model_dir!r} is {info.variant}.")
            export(model_dir, tmp, data=data)
            source = tmp
            info = describe(tmp)
        elif info.precision != "fp32":
            raise ValueError(f"{model_dir!r} is already quantised ({info.variant}).")
        else:
            source = model_dir
        os.makedirs(output_dir, exist_ok=True)
        target = os.path.join(output_dir, ONNX_FILE)
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(max(level, logging.WARNING))  # ONNX Runtime logs every tensor at INFO on root
        try:
            quantize_dynamic(
                os.path.join(source, ONNX_FILE), target, weight_type=QuantType.QInt8, per_channel=per_channel
            )
        finally:
            root_logger.setLevel(level)
        copy_model_files(source, output_dir)
        processor = load_processor(source, info.task)
        batches = parity_batches(info, processor, data)
        comparison = _compare_runners(info, OnnxRunner(source), OnnxRunner(target), batches)
        source_bytes = disk_bytes(source)
    export_report = {k: info.report.get(k) for k in ("opset", "input_names", "output_names", "dynamic_axes")}
    return _write_report(
        output_dir,
        {
            "method": "onnx-int8",
            "task": info.task,
            "source": os.path.abspath(model_dir),
            "weight_type": "QInt8",
            "activation_type": "QUInt8 (dynamic)",
            "per_channel": per_channel,
            **export_report,
            **comparison,
            "disk_bytes": disk_bytes(output_dir),
            "source_disk_bytes": source_bytes,
        },
    )


def _write_report(output_dir: str, report: dict) -> dict:
    with open(os.path.join(output_dir, "quantize_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def quantize(model_dir: str, method: str, output_dir: str, data=None, overwrite: bool = False) -> dict:
    """Dispatch on `method` (one of `METHODS`).

    An `output_dir` holding files that no quantisation wrote (no `quantize_report.json`) is refused unless
    `overwrite`; an earlier quantisation's model files (or, with `overwrite`, any model files) are removed.
    """
    from distill.utils.output_dir import clear_model_outputs

    from .export import check_output_dir

    if method not in METHODS:
        raise ValueError(f"--method {method!r} is unknown: use one of {', '.join(METHODS)}.")
    if os.path.abspath(model_dir) == os.path.abspath(output_dir):
        raise ValueError("--output_dir must differ from MODEL_DIR: the fp32 model is kept as the reference.")
    check_output_dir(model_dir, output_dir, "quantize_report.json", "scaledown quantize", overwrite)
    clear_model_outputs(output_dir)  # e.g. an onnx-int8 graph beside new torchao weights
    fn = quantize_torchao if method == "torchao-int8" else quantize_onnx
    return fn(model_dir, output_dir, data=data)
