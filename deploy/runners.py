"""One interface over PyTorch and ONNX Runtime: `runner.logits(inputs) -> numpy array`.

Inputs are the dict of tensors that `deploy.artifacts.model_inputs` makes (`labels` ignored), so
the bench, the parity check and the server feed every variant exactly the same arrays.
"""

from __future__ import annotations

import os
from typing import Optional

from .artifacts import ONNX_FILE, ModelInfo, describe, input_names, load_torch_model


def logits_module(model, task: str):
    """A module that calls `model` with keyword inputs and returns only its logits (no KV cache)."""
    import torch

    extra = {"use_cache": False} if task == "causal-lm" else {}

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        # Named arguments (not **inputs): torch.export maps `dynamic_shapes` onto this signature.
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
            given = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
                "pixel_values": pixel_values,
            }
            return self.model(**{k: v for k, v in given.items() if v is not None}, **extra).logits

    return LogitsOnly().eval()


class TorchRunner:
    """A PyTorch model (fp32, or torchao int8) called under `inference_mode`.

    Args:
        model: the model.
        task: its task (causal LMs run without a KV cache).
        names: the input names to pass on.
        compile: wrap the forward in `torch.compile` (torchao's int8 kernels are fast on CPU only
            when compiled; the first calls of each new shape compile).
    """

    def __init__(self, model, task: str, names: list[str], compile: bool = False):
        import torch

        self.names = names
        self.module = logits_module(model, task)
        self.compiled = compile
        if compile:
            self.module = torch.compile(self.module, dynamic=True)

    def logits(self, inputs: dict):
        import torch

        with torch.inference_mode():
            out = self.module(**{k: inputs[k] for k in self.names})
        return out.float().numpy()


class OnnxRunner:
    """An ONNX Runtime CPU session over `model.onnx` (or a path to any `.onnx` file).

    Args:
        path: the ONNX file or a directory holding `model.onnx`.
        threads: intra-op threads (None: ONNX Runtime's default); inter-op is 1.
    """

    def __init__(self, path: str, threads: Optional[int] = None):
        import onnxruntime as ort

        if os.path.isdir(path):
            path = os.path.join(path, ONNX_FILE)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def logits(self, inputs: dict):
        import numpy as np

        feed = {}
        for name in self.names:
            value = inputs[name]
            feed[name] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        return self.session.run(["logits"], feed)[0]


def make_runner(info: ModelInfo, threads: Optional[int] = None, compile: bool = False):
    """The runner for a model directory described by `info`."""
    if info.format == "onnx":
        return OnnxRunner(info.path, threads=threads)
    return TorchRunner(load_torch_model(info.path, info.task), info.task, input_names(info), compile=compile)


def open_runner(path: str, threads: Optional[int] = None, compile: bool = False):
    """`describe` a directory and return `(info, runner)`."""
    info = describe(path)
    return info, make_runner(info, threads=threads, compile=compile)
