"""Moved to `distill.losses.fused_head` when `distill/` was regrouped into subpackages; this old name stays importable."""

import sys

from distill.losses import fused_head as _moved

sys.modules[__name__] = _moved
