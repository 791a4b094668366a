"""`scaledown export MODEL_DIR --format onnx --output_dir OUT`: ONNX export with a parity check.

The graph comes from `torch.onnx.export(..., dynamo=True)` (torch.export, then the ONNX
translator; `optimum` does not install beside transformers 5) with dynamic batch and sequence
dimensions, and returns logits only: `[batch, classes]` for classifiers, `[batch, sequence,
vocab]` for causal LMs (scoring; no KV cache, see the README). Right after the export, ONNX
Runtime runs the graph on real inputs from the task's data at several shapes and the largest
absolute difference to the PyTorch logits must stay within `atol + rtol * max|logits|`
(defaults 1e-4 and 1e-5; padded positions of causal LMs are not compared), else the export
fails. `OUT/export_report.json` records the opset, input names, shapes tested and differences.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from distill.utils.output_dir import clear_model_outputs

from .artifacts import (
    ONNX_FILE,
    ModelInfo,
    copy_model_files,
    describe,
    input_names,
    load_processor,
    load_torch_model,
)
from .runners import logits_module

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5
# torch.export specialises dimensions of size 0/1, so the traced example has batch and length > 1.
_TRACE_BATCH = 2


REPORT_FILE = "export_report.json"


def check_output_dir(model_dir: str, output_dir: str, record: str, command: str, overwrite: bool) -> None:
    """Before any compute: `output_dir` is not the model itself, and holds nothing another command wrote."""
    from distill.utils.output_dir import refuse_foreign_output_dir

    if os.path.abspath(model_dir) == os.path.abspath(output_dir):
        raise ValueError("--output_dir must differ from MODEL_DIR: the source model is kept as it is.")
    if not overwrite:
        refuse_foreign_output_dir(output_dir, record, command)


class ParityError(RuntimeError):
    """The exported graph's logits differ from PyTorch's by more than the tolerance."""


def _trace_inputs(batch: dict, names: list[str]) -> dict:
    """The first `_TRACE_BATCH` rows of a batch, cut to the shortest real length (at least 2)."""
    inputs = {k: batch[k][:_TRACE_BATCH] for k in names}
    if "attention_mask" in inputs:
        length = max(2, int(inputs["attention_mask"].sum(-1).min()))
        inputs = {k: v[:, :length].contiguous() for k, v in inputs.items()}
        inputs["attention_mask"] = inputs["attention_mask"].clone().fill_(1)
    return inputs


def export_onnx_graph(model, info: ModelInfo, sample: dict, path: str, opset: Optional[int] = None) -> int:
    """Write `path` (an ONNX graph of the model's logits) and return its opset."""
    import onnx
    import torch

    names = input_names(info)
    batch_dim = torch.export.Dim("batch")
    dynamic = {}
    for name in names:
        if name == "pixel_values":
            dynamic[name] = {0: batch_dim}
        else:
            dynamic[name] = {0: batch_dim, 1: torch.export.Dim("sequence")}
    if len(dynamic) > 1 and "pixel_values" not in dynamic:  # one shared sequence dim for all text inputs
        seq = dynamic[names[0]][1]
        dynamic = {name: {0: batch_dim, 1: seq} for name in names}
    program = torch.onnx.export(
        logits_module(model, info.task),
        (),
        kwargs=_trace_inputs(sample, names),
        dynamo=True,
        dynamic_shapes={n: dynamic[n] for n in names},
        input_names=names,
        output_names=["logits"],
        opset_version=opset,
        verbose=False,
        report=False,
    )
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
    program.save(path, external_data=large)
    return next(
        o.version
        for o in onnx.load(path, load_external_data=False).opset_import
        if o.domain in ("", "ai.onnx")
    )


def _compare(info: ModelInfo, reference, candidate, attention_mask) -> float:
    import numpy as np

    diff = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64))
    if info.task == "causal-lm" and attention_mask is not None:
        diff = diff[np.asarray(attention_mask, dtype=bool)]
    return float(diff.max()) if diff.size else 0.0


def parity_batches(info: ModelInfo, processor, data, sizes=(1, 3, 8)) -> list[dict]:
    """Batches of real test inputs at several batch sizes, plus (for text) one cut to ragged lengths.

    The ragged batch has padding and short sequences, so the dynamic sequence axis and the
    attention mask are exercised, not only the full-length rows of the data.
    """
    from .artifacts import eval_examples, model_inputs

    examples = eval_examples(info, processor, data, limit=sum(sizes))
    rows = [examples[i] for i in range(len(examples))]
    batches, start = [], 0
    for size in sizes:
        if start + size <= len(rows):
            batches.append(model_inputs(info, processor, rows[start : start + size]))
        start += size
    if not batches:
        batches.append(model_inputs(info, processor, rows))
    if info.task != "image-cls":
        lengths = (5, 17, 40)
        ragged = [
            {k: (v[:n] if isinstance(v, list) else v) for k, v in row.items()}
            for row, n in zip(rows * 3, lengths)
        ]
        batches.append(model_inputs(info, processor, ragged))
    return batches


def check_parity(
    model, info: ModelInfo, onnx_path: str, batches: list[dict], atol: float, rtol: float
) -> dict:
    """Run PyTorch and ONNX Runtime on the same batches; raise `ParityError` over the tolerance."""
    import torch

    from .runners import OnnxRunner

    session = OnnxRunner(onnx_path)
    names = input_names(info)
    shapes = []
    for batch in batches:
        inputs = {k: batch[k] for k in names}
        with torch.inference_mode():
            reference = logits_module(model, info.task)(**inputs).float().numpy()
        candidate = session.logits(inputs)
        diff = _compare(info, reference, candidate, batch.get("attention_mask"))
        allowed = atol + rtol * float(abs(reference).max())
        shapes.append(
            {k: list(v.shape) for k, v in inputs.items()} | {"max_abs_diff": diff, "tolerance": allowed}
        )
        if not diff <= allowed:  # also catches NaN
            raise ParityError(
                f"ONNX Runtime's logits differ from PyTorch's by {diff:.3g} (> tolerance {allowed:.3g}) "
                f"on inputs of shape {shapes[-1]}; the export of {info.path!r} is wrong."
            )
    return {"max_abs_diff": max(s["max_abs_diff"] for s in shapes), "shapes_tested": shapes}


def export(
    model_dir: str,
    output_dir: str,
    *,
    data=None,
    opset: Optional[int] = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    overwrite: bool = False,
) -> dict:
    """Export a PyTorch model directory to `output_dir/model.onnx`, check parity, write the report.

    An `output_dir` holding files that no export wrote (no `export_report.json`) is refused unless
    `overwrite`; an earlier export's model files (or, with `overwrite`, any model files) are removed first.

    Returns:
        The report written to `output_dir/export_report.json`.
    """
    import onnxruntime
    import torch

    check_output_dir(model_dir, output_dir, REPORT_FILE, "scaledown export", overwrite)
    info = describe(model_dir)
    if info.format != "pytorch":
        raise ValueError(
            f"{model_dir!r} is already an ONNX directory; export takes a PyTorch model directory."
        )
    if info.precision != "fp32":
        raise ValueError(
            f"{model_dir!r} holds torchao int8 weights, which the ONNX exporter cannot translate; "
            "export the fp32 model, then `scaledown quantize OUT --method onnx-int8`."
        )
    processor = load_processor(model_dir, info.task)
    batches = parity_batches(info, processor, data)
    model = load_torch_model(model_dir, info.task)
    clear_model_outputs(output_dir)  # nothing stale beside the new graph (safetensors, an older report)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ONNX_FILE)
    start = time.perf_counter()
    opset_used = export_onnx_graph(model, info, batches[-1], path, opset)
    seconds = time.perf_counter() - start
    parity = check_parity(model, info, path, batches, atol, rtol)
    copy_model_files(model_dir, output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)
    report = {
        "format": "onnx",
        "method": "export",
        "task": info.task,
        "source": os.path.abspath(model_dir),
        "onnx_file": ONNX_FILE,
        "opset": opset_used,
        "input_names": input_names(info),
        "output_names": ["logits"],
        "dynamic_axes": {
            n: (["batch"] if n == "pixel_values" else ["batch", "sequence"]) for n in input_names(info)
        },
        **parity,
        "atol": atol,
        "rtol": rtol,
        "export_seconds": round(seconds, 2),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "kv_cache": False,
        "data": data if isinstance(data, (str, type(None))) else dict(data),
    }
    with open(os.path.join(output_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report
