"""Moved to `distill.losses.cached` when `distill/` was regrouped into subpackages; this old name stays importable."""

import sys

from distill.losses import cached as _moved

sys.modules[__name__] = _moved
