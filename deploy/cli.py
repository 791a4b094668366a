"""`scaledown export|quantize|bench|serve`: the deploy commands, added to the `scaledown` parser.

Only argparse is imported here; every heavy import happens inside `run_command`, so
`scaledown --help` stays instant.
"""

from __future__ import annotations

import argparse
import json

from distill.utils.flags import add_overwrite_flag

COMMANDS = ("export", "quantize", "bench", "serve")
_DATA_HELP = (
    "the task's data for real inputs: a `distill train` recipe YAML (its data fields are read), a "
    "dataset name (e.g. builtin:docstring-topics), or nothing for the task's built-in source"
)


_OVERWRITE_HELP = (
    "replace what is in --output_dir when no earlier run of this command wrote it (its model files and "
    "reports are removed first; alias --overwrite)"
)


def add_deploy_commands(sub) -> None:
    """Add the four deploy subcommands to a `scaledown` subparsers object."""
    export = sub.add_parser(
        "export",
        help="export a model to ONNX and check parity with ONNX Runtime",
        description="Export MODEL_DIR's logits to OUT/model.onnx (torch.onnx dynamo exporter, "
        "dynamic batch and sequence axes), check ONNX Runtime against PyTorch on real test "
        "inputs (an error over atol + rtol * max|logits|) and write OUT/export_report.json.",
    )
    export.add_argument("model_dir")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    export.add_argument(
        "--output_dir", required=True, help="folder for model.onnx, config, processor and report"
    )
    export.add_argument("--data", default=None, help=_DATA_HELP)
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    export.add_argument("--atol", type=float, default=1e-4, help="absolute parity tolerance on logits")
    export.add_argument("--rtol", type=float, default=1e-5, help="tolerance relative to max |logits|")
    add_overwrite_flag(export, _OVERWRITE_HELP)

    quant = sub.add_parser(
        "quantize",
        help="int8 quantisation (torchao or ONNX Runtime)",
        description="torchao-int8: int8 dynamic activations + int8 weights (torchao quantize_), "
        "saved as safetensors. onnx-int8: ONNX Runtime dynamic quantisation of the exported "
        "graph (a PyTorch MODEL_DIR is exported first). Writes OUT/quantize_report.json.",
    )
    quant.add_argument("model_dir")
    quant.add_argument("--method", required=True, choices=["torchao-int8", "onnx-int8"])
    quant.add_argument("--output_dir", required=True)
    quant.add_argument("--data", default=None, help=_DATA_HELP)
    add_overwrite_flag(quant, _OVERWRITE_HELP)

    bench = sub.add_parser(
        "bench",
        help="size, latency, throughput and quality of every variant",
        description="Measure each MODEL_DIR (fp32 student first: the reference for ratios) "
        "interleaved on the same inputs with pinned threads; write --out (JSON) and a .md table.",
    )
    bench.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR")
    bench.add_argument("--data", default=None, help=_DATA_HELP)
    bench.add_argument("--out", default="bench.json", help="JSON output; the Markdown table goes beside it")
    bench.add_argument("--teacher", default=None, help="teacher model directory, measured for reference")
    bench.add_argument(
        "--threads", type=int, default=1, help="threads for PyTorch and ONNX Runtime (default 1)"
    )
    bench.add_argument("--batch_size", type=int, default=32, help="batch for the throughput rounds")
    bench.add_argument("--latency_samples", type=int, default=50, help="batch-1 examples timed per variant")
    bench.add_argument("--rounds", type=int, default=5, help="throughput rounds per variant")
    bench.add_argument(
        "--max_eval_samples", type=int, default=None, help="limit the test split (default: all)"
    )
    bench.add_argument(
        "--no_compile",
        action="store_true",
        help="skip torch.compile (of torchao int8 variants, and of the fp32 reference measured compiled beside them)",
    )

    serve = sub.add_parser(
        "serve",
        help="an HTTP server (FastAPI + uvicorn) for a model",
        description="GET /health, GET /metrics (Prometheus), POST /v1/classify (classifiers, "
        "dynamically batched), POST /v1/completions and /v1/chat/completions (causal LMs, "
        "OpenAI-compatible, stream: true as server-sent events). With --api-key-env every "
        "endpoint but /health needs 'Authorization: Bearer <key>'; without a key only "
        "loopback addresses are served unless --insecure.",
    )
    serve.add_argument("model_dir")
    serve.add_argument(
        "--onnx",
        action="store_true",
        help="run MODEL_DIR's model.onnx with ONNX Runtime "
        "(MODEL_DIR from `scaledown export` or `quantize --method onnx-int8`)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key-env",
        dest="api_key_env",
        default=None,
        help="name of the environment variable holding the API key (the key itself is never a flag)",
    )
    serve.add_argument(
        "--max-batch-size",
        dest="max_batch_size",
        type=int,
        default=32,
        help="most inputs in one batch, and in one request (1 turns batching off)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        dest="max_batch_tokens",
        type=int,
        default=8192,
        help="most padded tokens (inputs x longest input) in one batch",
    )
    serve.add_argument(
        "--max-wait-ms",
        dest="max_wait_ms",
        type=float,
        default=10.0,
        help="longest wait for requests still arriving before a batch runs",
    )
    serve.add_argument(
        "--max-queue",
        dest="max_queue",
        type=int,
        default=256,
        help="most requests waiting; more get 503 with Retry-After",
    )
    serve.add_argument(
        "--max-body-bytes",
        dest="max_body_bytes",
        type=int,
        default=16 * 2**20,
        help="largest request body, counted as it arrives, chunked or not (413 over it)",
    )
    serve.add_argument(
        "--read-timeout",
        dest="read_timeout",
        type=float,
        default=30.0,
        help="seconds for a request's headers, then its body, to arrive (408 after)",
    )
    serve.add_argument(
        "--request-timeout",
        dest="request_timeout",
        type=float,
        default=60.0,
        help="seconds from a request's arrival to the start of its answer (504 after)",
    )
    serve.add_argument(
        "--max-input-chars",
        dest="max_input_chars",
        type=int,
        default=20_000,
        help="characters per text input or prompt",
    )
    serve.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=256,
        help="largest max_tokens a completion may ask for",
    )
    serve.add_argument("--threads", type=int, default=None, help="inference threads (default: the library's)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback host without an API key")
    from distill.utils.cli_common import add_common_options  # argparse only

    for parser in (export, quant, bench, serve):  # --version, --debug, --log-level (also uvicorn's for serve)
        add_common_options(parser, prog="scaledown")
    serve.set_defaults(log_level="info")


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed deploy command. Errors propagate: the `scaledown` entry point reports expected ones
    as one line (`distill.utils.cli_common.run_guarded`)."""
    if args.command == "export":
        from .export import export

        report = export(
            args.model_dir,
            args.output_dir,
            data=args.data,
            opset=args.opset,
            atol=args.atol,
            rtol=args.rtol,
            overwrite=args.overwrite_output_dir,
        )
        print(json.dumps({k: report[k] for k in ("max_abs_diff", "opset", "input_names")}))
    elif args.command == "quantize":
        from .quantize import quantize

        report = quantize(
            args.model_dir, args.method, args.output_dir, data=args.data, overwrite=args.overwrite_output_dir
        )
        print(json.dumps({k: report[k] for k in ("method", "max_abs_diff", "top1_agreement", "disk_bytes")}))
    elif args.command == "bench":
        from .bench import bench, markdown_table, write_bench

        result = bench(
            args.model_dirs,
            data=args.data,
            teacher=args.teacher,
            threads=args.threads,
            batch_size=args.batch_size,
            latency_samples=args.latency_samples,
            rounds=args.rounds,
            max_eval_samples=args.max_eval_samples,
            compile_int8=not args.no_compile,
        )
        write_bench(result, args.out)
        print(markdown_table(result))
    elif args.command == "serve":
        from .serve import main as serve_main

        return serve_main(args)
    return 0
