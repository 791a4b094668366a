"""Peak-memory helpers shared by the benchmarks (Linux ``/proc``; no third-party imports).

Each benchmark runs a variant in a fresh process started with :data:`MALLOC_ENV`, so that glibc
serves allocations above 64 KiB with mmap and freed tensors leave the resident set at once. The
variant calls :func:`reset_peak` after building its inputs and reads ``status_kib("VmHWM")`` at
the end: the growth of the peak resident set over the measured work.
"""

from __future__ import annotations

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
