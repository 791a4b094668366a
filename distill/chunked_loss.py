"""Moved to `distill.losses.chunked` when `distill/` was regrouped into subpackages; this old name stays importable."""

import sys

from distill.losses import chunked as _moved

sys.modules[__name__] = _moved
