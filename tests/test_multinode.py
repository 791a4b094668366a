"""Simulated multi-node DDP: two `accelerate launch` commands with accelerate_configs/multi_node.yaml,
machine ranks 0 and 1 on loopback (one CPU process each), train together like one process with
twice the batch. Also: accelerate_configs/cpu_ddp.yaml really starts 2 processes, and the DDP
teacher is a plain replica, never DDP-wrapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_deepspeed import CONFIGS, ROOT, SCRIPT, _env, _read, _run, assert_same_training

PORT = "29561"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, per-device batch 8."""
    out = str(tmp_path_factory.mktemp("single") / "out")
    return _run([sys.executable, SCRIPT, out, "8"], out)


def assert_ddp_placement(out):
    for rank in (0, 1):
        facts = _read(out, f"placement-{rank}.json")
        assert facts["world_size"] == 2
        assert facts["student_wrapper"] == "DistributedDataParallel"
        assert facts["teacher_type"] == "LlamaForCausalLM", "the teacher is a replica, never DDP-wrapped"
        assert not facts["teacher_training"] and not facts["any_trainable"] and not facts["any_grad"]


@pytest.mark.slow
def test_cpu_ddp_config_starts_two_processes(tmp_path, reference):
    out = str(tmp_path / "cpu_ddp")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    _run(
        [
            accelerate,
            "launch",
            "--config_file",
            os.path.join(CONFIGS, "cpu_ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29562",
            SCRIPT,
            out,
            "4",
        ],
        out,
    )
    assert_same_training(reference, out)
    assert_ddp_placement(out)


@pytest.mark.slow
def test_two_machines_on_loopback_match_one_process(tmp_path, reference):
    out = str(tmp_path / "two_nodes")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    nodes = []
    for machine_rank in (0, 1):
        cmd = [
            accelerate,
            "launch",
            "--config_file",
            os.path.join(CONFIGS, "multi_node.yaml"),
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            str(machine_rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            PORT,
            SCRIPT,
            out,
            "4",
        ]
        log = open(tmp_path / f"node{machine_rank}.log", "w")
        nodes.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=300) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = "".join((tmp_path / f"node{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [0, 0], logs
    assert_same_training(reference, out)
    assert_ddp_placement(out)
    with open(os.path.join(out, "trainer_state.json")) as f:
        assert json.load(f)["global_step"] == 3


@pytest.mark.slow
def test_fused_lm_head_under_ddp_matches_one_process(tmp_path):
    """kd_fused_lm_head under 2-process DDP with an untied LM head and the Trainer's default
    ddp_find_unused_parameters: the head's gradient, produced by the fused loss after the forward,
    is all-reduced like every other (reference: 1 process, twice the batch, unfused)."""
    untied = {"untied_student": True, "ddp_find_unused_parameters": None}
    single = _run(
        [sys.executable, SCRIPT, str(tmp_path / "single"), "8", json.dumps(untied)], str(tmp_path / "single")
    )
    out = str(tmp_path / "fused_ddp")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    _run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29563",
            SCRIPT,
            out,
            "4",
            json.dumps({**untied, "kd_fused_lm_head": True}),
        ],
        out,
    )
    assert_same_training(single, out)
    assert_ddp_placement(out)
