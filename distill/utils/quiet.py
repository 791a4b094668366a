"""Drop two import-time warnings that say nothing to a scaledown user.

With the `deploy` extra installed, every `import transformers.trainer` imports torchao (through
transformers' quantizer registry), which warns that its CUDA-only kernels (mxfp8, cutlass) cannot
load on this machine, and torch warns that torchao registers Enum pytree constants the old way.
Neither affects a result. Only those messages are filtered; every other warning of both loggers
still shows.
"""

from __future__ import annotations

import logging

_NOISE = ("Failed to load ", "is an Enum subclass and is now natively supported by torch.compile")


class _DropOptionalKernelNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _NOISE)


def silence_optional_kernel_warnings() -> None:
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropOptionalKernelNoise) for f in logger.filters):
            logger.addFilter(_DropOptionalKernelNoise())
