"""The fault matrix: kill -9, damaged checkpoints, NaN steps and a full disk, each followed by a rerun.

    python benchmarks/bench_faults.py                # the whole matrix (about 15 minutes on a loaded 2-core machine)
    python benchmarks/bench_faults.py --quick        # one optimizer, single process only

Every case runs the short `distill train` of tests/fault_harness.py (tiny Llama student and teacher,
6 steps, checkpoints every 2, evaluation every 3) through tests/fault_inject.py, injects the fault,
reruns the same command until it finishes, and compares with an uninterrupted run of the same
command: the largest weight difference, the training samples lost or repeated (sample hashes
recorded per micro-batch), and the files left corrupt or partial (staging folders, temporary
files, checkpoints failing `distill.trainer.checkpoints.check_checkpoint`).

- kill points x {single process, 2-process gloo DDP} x {SGD, AdamW}: SIGKILL inside a training
  step (step 3), inside the save of checkpoint-4 (weights written, optimizer state not), inside
  the evaluation at step 6 (before checkpoint-6);
- corruption (single, SGD): a run killed before checkpoint-6, then checkpoint-4 damaged (safetensors
  cut in half, optimizer.pt deleted, trainer_state.json cut); the rerun must skip it and resume from
  checkpoint-2;
- NaN: the student's logits NaN at step 3 on one rank (DDP) or the only rank, with a kill in the save
  of checkpoint-4; and NaN from step 3 on with max_nonfinite_steps=3, which must stop with an error
  and leave finite checkpoints;
- disk full: ENOSPC while writing checkpoint-4's optimizer state; the run must fail saying so, keep
  checkpoint-2 intact, and a rerun must resume from it.

Writes results/faults.json and results/faults.md; the load average is recorded with each row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

import fault_harness as h  # noqa: E402
from _measure import write_results  # noqa: E402

KILLS = {"step": ["step:3"], "save": ["save:4"], "eval": ["eval:6"]}
RESUMED_FROM = {"step": 2, "save": 2, "eval": 4}


def _row(case, mode, optim, faults, resumed, result=None, **extra):
    order = (result or {}).get("order", {})
    return {
        "case": case,
        "mode": mode,
        "optimizer": optim,
        "faults": faults,
        "resumed": int(bool(resumed)),
        "max_weight_diff": (result or {}).get("diff"),
        "lost": order.get("lost", 0),
        "repeated": order.get("repeated", 0),
        "corrupt_files": len((result or {}).get("partial", [])),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **extra,
    }


def kill_cases(ws, root, modes, optims):
    rows = []
    for mode in modes:
        for optim in optims:
            base = os.path.join(root, f"{mode}-{optim}")
            os.makedirs(base)
            straight = h.straight_run(ws, base, optim, ddp=mode == "ddp")
            for kind, faults in KILLS.items():
                case_root = os.path.join(base, kind)
                os.makedirs(case_root)
                start = time.time()
                result = h.kill_chain(ws, case_root, optim, faults, ddp=mode == "ddp", straight=straight)
                resumed = result["order"]["resumed_at"][-1] == RESUMED_FROM[kind]
                rows.append(
                    _row(
                        f"kill in {kind}",
                        mode,
                        optim,
                        len(faults),
                        resumed,
                        result,
                        seconds=round(time.time() - start, 1),
                    )
                )
                print(rows[-1], flush=True)
    return rows


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "safetensors cut short": ("model.safetensors", _truncate),
    "optimizer.pt missing": ("optimizer.pt", os.remove),
    "trainer_state.json cut": ("trainer_state.json", _truncate),
}


def corruption_cases(ws, root):
    rows = []
    base = os.path.join(root, "corrupt")
    os.makedirs(base)
    straight, straight_record, _ = h.straight_run(ws, base, "sgd")
    for case, (name, damage) in DAMAGE.items():
        case_root = os.path.join(base, name)
        out = os.path.join(case_root, "resumed")
        cmd = h.command(["distill", "train", *h.train_args(ws, out, "sgd")])
        first = os.path.join(case_root, "first.jsonl")
        h.run_until_fault(cmd, "eval:6", os.path.join(case_root, "marker"), FAULT_RECORD=first)
        damage(os.path.join(out, "checkpoint-4", name))
        final = os.path.join(case_root, "final.jsonl")
        done = h.run(cmd, FAULT_RECORD=final)
        warned = "Skipping checkpoint" in done.stderr and name in done.stderr
        attempts = [h.read_records(first), h.read_records(final)]
        result = {
            "order": h.data_order_errors(straight_record, attempts),
            "diff": h.weight_difference(straight, out) if done.returncode == 0 else None,
            "partial": h.partial_files(out),
        }
        ok = done.returncode == 0 and warned and result["order"]["resumed_at"][-1] == 2
        rows.append(_row(f"corrupt: {case}", "single", "sgd", 2, ok, result))
        print(rows[-1], flush=True)
    return rows


def nan_cases(ws, root, modes):
    rows = []
    for mode in modes:
        case_root = os.path.join(root, f"nan-{mode}")
        os.makedirs(case_root)
        nan = {"FAULT_NAN": "2", "FAULT_NAN_RANK": "0"}
        result = h.kill_chain(ws, case_root, "adamw_torch", ["save:4"], ddp=mode == "ddp", **nan)
        skipped = result["straight_output"].count("the step is skipped")
        ok = result["order"]["resumed_at"][-1] == 2 and skipped == (2 if mode == "ddp" else 1)
        rows.append(
            _row("NaN at step 3 + kill in save", mode, "adamw_torch", 2, ok, result, skipped_per_rank=skipped)
        )
        print(rows[-1], flush=True)
    case_root = os.path.join(root, "nan-stop")
    out = os.path.join(case_root, "out")
    done = h.run(
        h.command(
            ["distill", "train", *h.train_args(ws, out, "sgd", steps=10), "--max_nonfinite_steps", "3"]
        ),
        FAULT_NAN=",".join(map(str, range(2, 10))),
    )
    stopped = done.returncode != 0 and "Stopped at step 5: the last 3 optimizer steps" in done.stderr
    rows.append(
        _row(
            "NaN from step 3 on, max_nonfinite_steps=3",
            "single",
            "sgd",
            1,
            False,
            {"partial": h.partial_files(out)},
            stopped_with_error=stopped,
            finite_checkpoints=_all_finite(out),
        )
    )
    print(rows[-1], flush=True)
    return rows


def _all_finite(out):
    import torch
    from safetensors.torch import load_file

    from distill.trainer.checkpoints import sorted_checkpoints

    checkpoints = sorted_checkpoints(out)
    return bool(checkpoints) and all(
        torch.isfinite(t).all()
        for c in checkpoints
        for t in load_file(os.path.join(c, "model.safetensors")).values()
    )


def disk_full_case(ws, root):
    case_root = os.path.join(root, "disk-full")
    os.makedirs(case_root)
    straight, straight_record, _ = h.straight_run(ws, case_root, "adamw_torch")
    out = os.path.join(case_root, "resumed")
    cmd = h.command(["distill", "train", *h.train_args(ws, out, "adamw_torch")])
    first, final = os.path.join(case_root, "first.jsonl"), os.path.join(case_root, "final.jsonl")
    failed = h.run(cmd, FAULT_ENOSPC="4", FAULT_RECORD=first)
    said_so = (
        failed.returncode != 0
        and "Out of disk space" in failed.stderr
        and "checkpoint-2 is intact" in failed.stderr
    )
    done = h.run(cmd, FAULT_RECORD=final)
    result = {
        "order": h.data_order_errors(straight_record, [h.read_records(first), h.read_records(final)]),
        "diff": h.weight_difference(straight, out),
        "partial": h.partial_files(out),
    }
    row = _row(
        "disk full while saving",
        "single",
        "adamw_torch",
        1,
        done.returncode == 0 and result["order"]["resumed_at"][-1] == 2,
        result,
        error_said_so=said_so,
    )
    print(row, flush=True)
    return [row]


def table(rows) -> str:
    lines = [
        "| case | mode | optimizer | faults injected | resumed | max weight diff | lost | repeated | corrupt files |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = "-" if r["max_weight_diff"] is None else f"{r['max_weight_diff']:.1e}"
        resumed = "yes" if r["resumed"] else ("stopped with error" if r.get("stopped_with_error") else "NO")
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['optimizer']} | {r['faults']} | {resumed} | {diff} | "
            f"{r['lost']} | {r['repeated']} | {r['corrupt_files']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SGD and AdamW single-process kills only")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-faults-")
    ws = h.make_workspace(os.path.join(root, "ws"))
    start = time.time()
    modes = ["single"] if args.quick else ["single", "ddp"]
    rows = kill_cases(ws, root, modes, ["sgd", "adamw_torch"])
    if not args.quick:
        rows += corruption_cases(ws, root) + nan_cases(ws, root, modes) + disk_full_case(ws, root)
    text = table(rows)
    print(text)
    print(f"{len(rows)} cases in {time.time() - start:.0f} s, load average {os.getloadavg()}")
    write_results("faults", args, rows, text)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
