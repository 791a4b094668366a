"""Drop third-party messages that say nothing to a scaledown user, unless ``--log-level debug``.

- torchao (imported by every `import transformers.trainer` once the `deploy` extra is installed, through
  transformers' quantizer registry) warns that its CUDA-only kernels (mxfp8, cutlass) cannot load and
  that Triton is missing; torch warns that torchao registers Enum pytree constants the old way.
- DeepSpeed warns "Setting accelerator to CPU" on every import on a machine without a GPU, and its
  collectives call torch.distributed functions that torch has renamed (a FutureWarning per call site).
- The ONNX exporter's optimizer (onnxscript, onnx_ir) logs each pass at INFO, about a hundred lines
  per export once a command has set the root logger to INFO; the exporter warns that torchvision's
  operators are skipped, and that two dynamic axes share a name.

None of them affects a result. Only those messages (for onnxscript and onnx_ir: their INFO and DEBUG
records) are dropped; every other message of these loggers still shows. `show_third_party_noise`
(called by ``--log-level debug``) lets everything through again.
"""

from __future__ import annotations

import logging
import warnings

# logger name -> parts of the messages dropped from it
_NOISE = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
    "DeepSpeed": ("Setting accelerator to CPU",),
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}
# logger trees whose INFO / DEBUG records are progress chatter: raised to WARNING (children inherit it)
_CHATTY = ("onnxscript", "onnx_ir")
# (category, message regex) of Python warnings dropped
_WARNINGS = (
    (UserWarning, r"# The axis name: .* will not be used"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # DeepSpeed's collectives call torch.distributed functions torch has renamed, each call site warning once
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),
)
_show_all = False


class _DropNoise(logging.Filter):
    def __init__(self, parts: tuple[str, ...]):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        if _show_all:
            return True
        message = record.getMessage()
        return not any(part in message for part in self.parts)


def _install(name: str, noise: _DropNoise) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(noise)


def silence_optional_kernel_warnings() -> None:
    """Install the filters (idempotent); `distill` does it on import."""
    for name, parts in _NOISE.items():
        _install(name, _DropNoise(parts))
    _quiet_chatty(True)
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _quiet_chatty(quiet: bool) -> None:
    for name in _CHATTY:
        logger = logging.getLogger(name)
        if quiet and logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
        elif not quiet and logger.level == logging.WARNING:
            logger.setLevel(logging.NOTSET)


def show_third_party_noise(show: bool = True) -> None:
    """Let the silenced messages through (``--log-level debug``), or silence them again."""
    global _show_all
    _show_all = bool(show)
    _quiet_chatty(not show)
    dropped = {message for _, message in _WARNINGS}
    if show:
        warnings.filters[:] = [f for f in warnings.filters if getattr(f[1], "pattern", None) not in dropped]
    else:
        silence_optional_kernel_warnings()
