"""Ship a student: ONNX export with parity, int8 quantisation, a size/latency/quality table, an HTTP server.

Commands live under `scaledown` (`scaledown export|quantize|bench|serve`); see `deploy.cli`.
Modules:

- `deploy.artifacts`: reading a model directory (PyTorch or ONNX), its task, processor, labels,
  and real inputs from the task's data.
- `deploy.export`: `torch.onnx.export(..., dynamo=True)` plus an ONNX Runtime parity check.
- `deploy.quantize`: torchao int8 (dynamic activations, int8 weights) and ONNX Runtime dynamic int8.
- `deploy.runners`: one `runner.logits(inputs)` interface over PyTorch and ONNX Runtime.
- `deploy.bench`: the table of variants (size, latency, throughput, quality).
- `deploy.serve`: the FastAPI app (routes, errors); `deploy.predictor` the model behind it,
  `deploy.batcher` its dynamic batching queue, `deploy.limits` auth, body, read and request-time
  limits, `deploy.openai_api` the completions and chat endpoints, `deploy.metrics` its Prometheus
  text, `deploy.loadtest` a server in a subprocess and a load client.
The pipeline's ship stage (`scaledown run --ship`) lives in `scaledown.ship`; `deploy` never imports `scaledown`.
"""

import distill  # noqa: E402,F401  (its import drops torchao's CUDA-kernel warnings on CPU)
