"""Kill-and-resume harness shared by tests/test_faults_kill.py and benchmarks/bench_faults.py.

`make_workspace` writes a tiny teacher and a JSON-lines corpus; `train_command` is the `distill train`
command line of a short run on them (through tests/fault_inject.py); `run_until_fault` starts a
command in its own process group, waits until tests/fault_inject.py says the fault point is reached
and SIGKILLs the whole group there; `compare_runs` measures what a resumed run lost against a
straight one: weight difference, samples lost or repeated, and partial files left behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INJECT = os.path.join(HERE, "fault_inject.py")
STUDENT = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}


def env(**extra) -> dict:
    out = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    for key in (
        "FAULT_AT",
        "FAULT_MARKER",
        "FAULT_RECORD",
        "FAULT_NAN",
        "FAULT_NAN_RANK",
        "FAULT_ENOSPC",
        "FAULT_RECORD_DIR",
        "FAULT_ARGV",
        "FAULT_ONLY_IN",
    ):
        out.pop(key, None)
    out.update({k: str(v) for k, v in extra.items()})
    return out


def make_workspace(root: str) -> dict:
    """A tiny teacher (Llama, hidden 48, word-level tokenizer) and a 240-line corpus, under ``root``."""
    sys.path.insert(0, HERE)
    from helpers import tiny_llama, word_tokenizer

    os.makedirs(root, exist_ok=True)
    teacher = os.path.join(root, "teacher")
    if not os.path.isfile(os.path.join(teacher, "config.json")):
        tiny_llama(hidden=48, layers=1, seed=1).save_pretrained(teacher)
        word_tokenizer().save_pretrained(teacher)
    data = os.path.join(root, "train.jsonl")
    rng = random.Random(0)
    with open(data, "w") as f:
        for _ in range(240):
            f.write(
                json.dumps({"text": " ".join(f"t{rng.randrange(3, 64)}" for _ in range(rng.randint(8, 24)))})
                + "\n"
            )
    return {"teacher": teacher, "data": data, "root": root}


def train_args(
    ws: dict,
    out: str,
    optim: str = "sgd",
    steps: int = 6,
    save_steps: int = 2,
    eval_steps: Optional[int] = 3,
    extra: tuple = (),
) -> list[str]:
    """`distill train` arguments of a short KD run on the workspace (deterministic, one thread)."""
    args = [
        "--task",
        "causal-lm",
        "--teacher_model_name_or_path",
        ws["teacher"],
        "--alpha",
        "0.5",
        "--model_config",
        json.dumps(STUDENT),
        "--dataset_name",
        "json",
        "--data_files",
        ws["data"],
        "--block_size",
        "32",
        "--validation_split_percentage",
        "10",
        "--max_eval_samples",
        "8",
        "--output_dir",
        out,
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "0.05" if optim == "sgd" else "0.005",
        "--optim",
        optim,
        "--lr_scheduler_type",
        "linear",
        "--warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(save_steps),
        "--seed",
        "0",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
        "--ddp_find_unused_parameters",
        "false",
        "--max_test_samples",
        "8",
    ]
    if eval_steps:
        args += ["--eval_strategy", "steps", "--eval_steps", str(eval_steps)]
    return args + list(extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(program: list[str], ddp: bool = False) -> list[str]:
    """``python tests/fault_inject.py PROGRAM...``, or the same under a 2-process torchrun."""
    if ddp:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        return [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), INJECT, *program]
    return [sys.executable, INJECT, *program]


def run(cmd: list[str], timeout: float = 300, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(**env_extra), timeout=timeout, capture_output=True, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, as a dying machine would.

    Its process group is not enough: torchrun starts each worker in a session of its own, so
    `killpg` of the launcher left both DDP ranks blocked at the fault point, for ever.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def run_until_fault(cmd: list[str], fault: str, marker: str, timeout: float = 300, **env_extra) -> float:
    """Start ``cmd`` with ``FAULT_AT=fault``; SIGKILL its process group once it blocks there. Returns seconds."""
    if os.path.exists(marker):
        os.remove(marker)
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        env=env(FAULT_AT=fault, FAULT_MARKER=marker, **env_extra),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(
                    f"{fault}: the run ended (rc {proc.returncode}) before the fault point:\n"
                    + proc.stdout.read()[-3000:]
                )
            if time.time() - start > timeout:
                raise AssertionError(f"{fault}: fault point not reached in {timeout} s")
            time.sleep(0.1)
        time.sleep(0.2)
    finally:
        kill_tree(proc.pid)
        proc.wait()
        proc.stdout.close()
    return time.time() - start


def straight_run(ws: dict, root: str, optim: str, ddp: bool = False, **faults) -> tuple[str, list[dict], str]:
    """An uninterrupted run: (output dir, its records, its output)."""
    out = os.path.join(root, "straight")
    record = os.path.join(root, "straight.jsonl")
    done = run(
        command(["distill", "train", *train_args(ws, out, optim)], ddp=ddp), FAULT_RECORD=record, **faults
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, read_records(record, ddp), done.stdout + done.stderr


def kill_chain(
    ws: dict, root, optim: str, faults: list[str], ddp: bool = False, straight=None, **always
) -> dict:
    """Kill `distill train` at each fault in turn (rerunning the same command after each), let the last
    rerun finish, and compare with a straight run (made here unless ``straight`` is given).

    ``always``: fault_inject variables every attempt gets (e.g. FAULT_NAN). Returns the data-order
    comparison, the weight difference, the partial files left and the straight run's output.
    """
    root = str(root)
    straight, straight_record, output = straight or straight_run(ws, root, optim, ddp, **always)
    out = os.path.join(root, "resumed")
    cmd = command(["distill", "train", *train_args(ws, out, optim)], ddp=ddp)
    attempts = []
    for i, fault in enumerate(faults):
        record = os.path.join(root, f"attempt{i}.jsonl")
        run_until_fault(cmd, fault, os.path.join(root, "marker"), FAULT_RECORD=record, **always)
        attempts.append(read_records(record, ddp))
        kind, step = fault.split(":")
        if kind == "save":  # killed inside the save: checkpoint-N must not exist, only its staging
            assert not os.path.exists(os.path.join(out, f"checkpoint-{step}"))
    record = os.path.join(root, "final.jsonl")
    done = run(cmd, FAULT_RECORD=record, **always)
    assert done.returncode == 0, done.stderr[-3000:]
    attempts.append(read_records(record, ddp))
    return {
        "order": data_order_errors(straight_record, attempts),
        "diff": weight_difference(straight, out),
        "partial": partial_files(out),
        "out": out,
        "straight_output": output,
    }


def read_records(path: str, ddp: bool = False) -> list[dict]:
    """The micro-batches recorded by tests/fault_inject.py; under DDP rank 1's rows follow rank 0's per step."""
    paths = [path, f"{path}.rank1"] if ddp else [path]
    by_rank = []
    for p in paths:
        if os.path.isfile(p):
            with open(p) as f:
                by_rank.append([json.loads(line) for line in f if line.strip()])
    if len(by_rank) <= 1:
        return by_rank[0] if by_rank else []
    return [{"step": a["step"], "ids": a["ids"] + b["ids"]} for a, b in zip(*by_rank)]


def effective_records(attempts: list[list[dict]]) -> list[dict]:
    """The micro-batches whose updates the final weights hold: each attempt resumed at the step of its
    first record, undoing what earlier attempts trained at or after that step."""
    effective: list[dict] = []
    for records in attempts:
        if records:
            effective = [r for r in effective if r["step"] < records[0]["step"]] + records
    return effective


def data_order_errors(straight: list[dict], attempts: list[list[dict]]) -> dict:
    """Samples lost and repeated by a chain of killed attempts and reruns, against a straight run.

    Each attempt resumed at the step of its first record, so the batches an earlier attempt trained
    at or after that step were undone; what remains, attempt after attempt, is what the final
    weights saw. Compared as (step, sample) pairs with the straight run's sequence.
    """
    effective = effective_records(attempts)
    want = [(r["step"], i) for r in straight for i in r["ids"]]
    got = [(r["step"], i) for r in effective for i in r["ids"]]
    lost = len(set(want) - set(got))
    repeated = len(got) - len(set(got)) + len(set(got) - set(want))
    return {
        "lost": lost,
        "repeated": repeated,
        "same_order": want == got,
        "resumed_at": [records[0]["step"] if records else None for records in attempts],
    }


def weight_difference(a_dir: str, b_dir: str) -> float:
    from safetensors.torch import load_file

    a = load_file(os.path.join(a_dir, "model.safetensors"))
    b = load_file(os.path.join(b_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def partial_files(out: str) -> list[str]:
    """Anything a killed save could leave: staging folders, temporary files, checkpoints that fail the check."""
    from distill.trainer.checkpoints import CorruptCheckpointError, check_checkpoint, sorted_checkpoints

    found = []
    for root, dirs, files in os.walk(out):
        found += [os.path.join(root, d) for d in dirs if d == ".staging" or d.startswith(".tmp")]
        found += [os.path.join(root, f) for f in files if ".tmp" in f]
    for checkpoint in sorted_checkpoints(out):
        try:
            check_checkpoint(checkpoint)
        except CorruptCheckpointError as e:
            found.append(str(e))
    return found


def pipeline_config(ws: dict, output_root: str) -> str:
    """A `scaledown run` YAML on the workspace: 4 rungs of 4 steps, a power fit, one KD student and baseline."""
    import yaml

    config = {
        "name": "faults",
        "output_root": output_root,
        "seed": 0,
        "tokenizer": ws["teacher"],
        "data": {
            "dataset_name": "json",
            "data_files": ws["data"],
            "block_size": 32,
            "packing": True,
            "validation_split_percentage": 10,
            "max_eval_samples": 8,
            "max_test_samples": 8,
        },
        "train": {
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 8,
            "learning_rate": 0.01,
            "logging_steps": 1,
            "optim": "adamw_torch",
            "dataloader_num_workers": 0,
        },
        "ladder": {
            "base_config": {
                "model_type": "llama",
                "tie_word_embeddings": True,
                "max_position_embeddings": 64,
            },
            "widths": [16, 32, 48, 64],
            "aspect_ratio": 32,
            "head_dim": 16,
            "tokens": 512,
            "eval_points": 2,
        },
        "fit": {"law": "power", "bootstrap": 0, "hold_out_largest": False},
        "student": {"width": 32},
        "distill": {"alpha": 0.5, "temperature": 1.0, "seeds": [0]},
    }
    path = os.path.join(ws["root"], "pipeline.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path
