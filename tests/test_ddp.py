"""Two CPU processes (gloo DDP) give the same update as one process with twice the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, "ddp_train_script.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    return env


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return [h for h in json.load(f)["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_ddp_two_processes_match_one(tmp_path, launcher):
    single, double = str(tmp_path / "single"), str(tmp_path / "double")
    subprocess.run([sys.executable, SCRIPT, single, "8"], check=True, env=_env(), timeout=300)
    bindir = os.path.dirname(sys.executable)
    if launcher == "torchrun":
        cmd = [os.path.join(bindir, "torchrun"), "--nproc_per_node", "2", "--master_port", "29531"]
    else:
        cmd = [
            os.path.join(bindir, "accelerate"),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "29532",
        ]
    subprocess.run(cmd + [SCRIPT, double, "4"], check=True, env=_env(), timeout=300)
    a, b = (
        load_file(os.path.join(single, "model.safetensors")),
        load_file(os.path.join(double, "model.safetensors")),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    for x, y in zip(_losses(single), _losses(double)):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-4), key
