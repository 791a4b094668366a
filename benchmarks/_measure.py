"""Peak-memory helpers shared by the benchmarks (Linux ``/proc``; no third-party imports).

Each benchmark runs a variant in a fresh process started with :data:`MALLOC_ENV`, so that glibc
serves allocations above 64 KiB with mmap and freed tensors leave the resident set at once. The
variant calls :func:`reset_peak` after building its inputs and reads ``status_kib("VmHWM")`` at
the end: the growth of the peak resident set over the measured work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def run_worker(script: str, index: int, flags: list[str]) -> dict:
    """Run ``script --worker INDEX FLAGS...`` in a fresh process with :data:`MALLOC_ENV` and the repository
    on ``PYTHONPATH``; return the JSON object it prints last. Exits with its stderr if it fails."""
    env = dict(os.environ, **MALLOC_ENV)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, script, "--worker", str(index), *flags],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        sys.exit(f"{os.path.basename(script)} worker {index} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def provenance() -> dict:
    """What wrote a result file: the script (relative to the repository), the command that reruns it from
    the repository root, when (UTC) and the load average at the end. Every ``results/*.json`` carries it."""
    import datetime
    import shlex

    repo = Path(__file__).resolve().parent.parent
    script = os.path.relpath(os.path.abspath(sys.argv[0]), repo)
    return {
        "script": script,
        "command": shlex.join([".venv/bin/python", script, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg": list(os.getloadavg()),
    }


def write_results(stem: str, args, rows: list[dict], table: str) -> None:
    """``results/<stem>.json`` (the arguments, Python and machine, the rows and `provenance`) and
    ``results/<stem>.md``."""
    import platform

    results = Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != "worker"}
    meta.update(python=platform.python_version(), machine=platform.machine())
    (results / f"{stem}.json").write_text(
        json.dumps(dict(provenance=provenance(), config=meta, rows=rows), indent=2)
    )
    (results / f"{stem}.md").write_text(table + "\n")
