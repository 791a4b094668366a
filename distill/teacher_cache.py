"""Moved to `distill.teacher.cache` when `distill/` was regrouped into subpackages; this old name stays importable."""

import sys

from distill.teacher import cache as _moved

sys.modules[__name__] = _moved
