"""Peak memory and time of the distillation loss, forward + backward: naive vs chunked vs fused.

Every variant runs in a fresh subprocess, so that one variant's allocator state cannot hide or
inflate another's. Memory is measured as the growth of the resident set over the run:

* After the inputs are built (and a tiny warm-up has loaded the kernels), the worker writes ``5``
  to ``/proc/self/clear_refs``, which resets the kernel's peak-RSS counter (``VmHWM``) to the
  current RSS. After forward + backward, ``VmHWM - VmRSS_before`` is the peak growth. (Where
  clear_refs is not writable, it falls back to the ``ru_maxrss`` delta, which is only exact if no
  earlier peak exceeded the starting RSS; the method used is recorded in the JSON.)
* glibc is told to serve every allocation above 64 KiB with mmap (``MALLOC_MMAP_THRESHOLD_``),
  so freed tensors leave the resident set at once and RSS follows live tensor memory.

The gradients produced by backward (e.g. ``student_logits.grad``) are part of the measured
peak, for every variant. The inputs themselves (logits, or hidden states and head weights) are
not. The "naive + LM head" and "fused" rows start from hidden states, so their logits count as
loss memory; compare each with the naive row of its own kind.

Usage::

    python benchmarks/bench_loss_memory.py            # B=4, T=1024, V=32000, H=1024
    python benchmarks/bench_loss_memory.py --B 2 --T 512 --V 8000   # quicker

Writes ``benchmarks/results/loss_memory.json`` and ``loss_memory.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import reset_peak, run_worker, status_kib, write_results  # noqa: E402

# (name, family, chunk_size): family "logits" starts from logits, "hidden" from hidden states.
VARIANTS = [
    ("naive", "logits", None),
    ("chunked", "logits", "auto"),  # the trainer's default: distill.losses.chunked.default_chunk_size
    ("chunked", "logits", 1024),
    ("chunked", "logits", 256),
    ("naive + LM head", "hidden", None),
    ("fused", "hidden", 1024),
]


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    from distill.losses import distillation_loss
    from distill.losses.chunked import chunked_distillation_loss, fused_linear_distillation_loss

    name, family, chunk = VARIANTS[args.worker]
    B, T, V, H = args.B, args.T, args.V, args.H
    kw = dict(alpha=0.5, temperature=2.0, kind=args.kind)
    dtype = getattr(torch, args.dtype)

    def inputs(b, t, v, h):
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, v, (b, t), generator=g)
        labels[torch.rand(b, t, generator=g) < 0.1] = -100  # ~10% prompt/padding positions
        if family == "logits":
            s = torch.randn(b, t, v, generator=g, dtype=dtype).requires_grad_()
            te = torch.randn(b, t, v, generator=g, dtype=dtype)
            return dict(s=s, t=te, labels=labels)
        return dict(
            hs=torch.randn(b, t, h, generator=g, dtype=dtype).requires_grad_(),
            ws=(0.05 * torch.randn(v, h, generator=g, dtype=dtype)).requires_grad_(),
            ht=torch.randn(b, t, h, generator=g, dtype=dtype),
            wt=0.05 * torch.randn(v, h, generator=g, dtype=dtype),
            labels=labels,
        )

    def step(x):
        if name == "naive":
            out = distillation_loss(x["s"], x["t"], x["labels"], **kw)
        elif name == "chunked":
            out = chunked_distillation_loss(
                x["s"], x["t"], x["labels"], chunk_size=None if chunk == "auto" else chunk, **kw
            )
        elif name == "naive + LM head":
            with torch.no_grad():
                t_logits = F.linear(x["ht"], x["wt"])
            out = distillation_loss(F.linear(x["hs"], x["ws"]), t_logits, x["labels"], **kw)
        else:
            out = fused_linear_distillation_loss(
                x["hs"], x["ws"], x["ht"], x["wt"], x["labels"], chunk_size=chunk, **kw
            )
        out.loss.backward()
        return out.loss.item()

    def clear_grads(x):
        for v in x.values():
            if isinstance(v, torch.Tensor):
                v.grad = None

    step(inputs(2, 8, 64, 16))  # load kernels and lazy state outside the measurement
    x = inputs(B, T, V, H)
    clear_grads(x)

    rss_before = status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    exact = reset_peak()
    t0 = time.perf_counter()
    loss = step(x)
    first_s = time.perf_counter() - t0
    if exact:
        peak_kib = status_kib("VmHWM") - rss_before
        method = "VmHWM after clear_refs"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(rss_before, maxrss_before)
        method = "ru_maxrss delta"
    times = [first_s]
    for _ in range(args.repeats - 1):
        clear_grads(x)
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    return dict(
        variant=name,
        family=family,
        chunk_size=chunk,
        peak_mib=peak_kib / 1024,
        time_s=min(times),
        loss=loss,
        method=method,
        threads=torch.get_num_threads(),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--V", type=int, default=32000)
    p.add_argument("--H", type=int, default=1024)
    p.add_argument("--kind", default="forward_kl")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker is not None:
        print(json.dumps(worker(args)))
        return

    flags = [f"--{k}={getattr(args, k)}" for k in ("B", "T", "V", "H", "kind", "dtype", "repeats")]
    rows = [run_worker(__file__, i, flags) for i in range(len(VARIANTS))]

    base = {r["family"]: r for r in rows if r["chunk_size"] is None}
    for r in rows:
        b = base[r["family"]]
        r["mem_ratio"] = r["peak_mib"] / b["peak_mib"]
        r["time_ratio"] = r["time_s"] / b["time_s"]

    bt = args.B * args.T
    one_copy = bt * args.V * (4 if args.dtype == "float32" else 2) / 2**20
    header = (
        f"B*T={bt} (B={args.B}, T={args.T}), V={args.V}, H={args.H}, {args.dtype} inputs, "
        f"kind={args.kind}, alpha=0.5, T_kd=2; one [B*T, V] {args.dtype} tensor = {one_copy:.0f} MiB. "
        f"Peak = RSS growth during forward+backward ({rows[0]['method']}), fresh process per variant, "
        f"{rows[0]['threads']} CPU threads; time = best of {args.repeats}."
    )
    lines = [
        header,
        "",
        "| variant | input | chunk | peak MiB | vs naive | time s | vs naive | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    from distill.losses.chunked import default_chunk_size

    for r in rows:
        chunk = r["chunk_size"] or "-"
        if chunk == "auto":
            chunk = f"auto ({default_chunk_size(args.V)})"
        lines.append(
            f"| {r['variant']} | {r['family']} | {chunk} | {r['peak_mib']:.0f} | "
            f"{r['mem_ratio']:.2f}x | {r['time_s']:.2f} | {r['time_ratio']:.2f}x | {r['loss']:.6f} |"
        )
    table = "\n".join(lines)
    write_results("loss_memory", args, rows, table)
    print(table)


if __name__ == "__main__":
    main()
