"""Serving under load: `scaledown serve` on loopback, 200 requests from 16 concurrent clients.

For each served variant (PyTorch fp32 and ONNX int8 of one classifier) and each
`--max-concurrency` (4: more clients than slots, so the server must shed load with quick 503s;
16: every client gets a slot), the server starts in a subprocess on a free port with an API key,
then `deploy.loadtest.load_test` sends --requests POST /v1/classify requests (one docstring each)
from --clients threads. Recorded: the count of each status, p50/p95 latency of the 200s and of
all requests, requests/s, and that /health still answers afterwards.

Default model: the fine-tuned MiniLM of `benchmarks/bench_deploy.py` (run it first), else pass
--model-dir and --onnx-dir. Writes benchmarks/results/serve_load.{json,md}.

    python benchmarks/bench_serve_load.py [--requests 200] [--clients 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    work = os.path.join(ROOT, "runs", "bench_deploy")
    p.add_argument("--model-dir", default=os.path.join(work, "minilm-topics"))
    p.add_argument("--onnx-dir", default=os.path.join(work, "onnx-int8"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--concurrency", default="4,16", help="comma-separated --max-concurrency values")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    from _measure import write_results

    from deploy.loadtest import load_test, request, running_server
    from distill.data.corpus import docstring_classification

    text = docstring_classification()["test"][0]["text"]
    key = "bench-" + os.urandom(8).hex()
    env = {"SCALEDOWN_BENCH_KEY": key}
    rows = []
    for name, path, flags in (("pytorch-fp32", a.model_dir, []), ("onnx-int8", a.onnx_dir, ["--onnx"])):
        for limit in [int(c) for c in a.concurrency.split(",")]:
            load_before = os.getloadavg()[0]
            with running_server(
                path,
                "--api-key-env",
                "SCALEDOWN_BENCH_KEY",
                "--max-concurrency",
                str(limit),
                "--threads",
                str(a.threads),
                *flags,
                env=env,
            ) as url:
                request(url + "/v1/classify", {"inputs": [text]}, key=key)  # warm-up
                result = load_test(url + "/v1/classify", {"inputs": [text]}, a.requests, a.clients, key=key)
                healthy = request(url + "/health")[0] == 200
            rows.append(
                {
                    "variant": name,
                    "max_concurrency": limit,
                    **result,
                    "health_after": healthy,
                    "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()[0],
                }
            )
            print(rows[-1], flush=True)
    lines = [
        "| variant | max concurrency | statuses | p50 ms (200s) | p95 ms (200s) | p50 ms (all) | p95 ms (all) "
        "| requests/s | /health after | load avg |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items())
        lines.append(
            f"| {r['variant']} | {r['max_concurrency']} | {statuses} | {r['p50_ms_ok']:.1f} | "
            f"{r['p95_ms_ok']:.1f} | {r['p50_ms_all']:.1f} | {r['p95_ms_all']:.1f} | "
            f"{r['requests_per_second']:.1f} | {'200' if r['health_after'] else 'FAILED'} | "
            f"{r['loadavg_before']:.1f}-{r['loadavg_after']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    write_results("serve_load", a, rows, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
