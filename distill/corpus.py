"""Moved to `distill.data.corpus` when `distill/` was regrouped into subpackages; this old name stays importable."""

import sys

from distill.data import corpus as _moved

sys.modules[__name__] = _moved
