"""The FSDP2 teacher on CPU: raw ``fully_shard`` over a 2-process gloo mesh, launched with torchrun.

FSDP through accelerate/the Trainer does not shard on CPU (it falls back to DDP), so this checks the
teacher-wrapping code itself; benchmarks/gpu/fsdp_check.py checks the accelerate path on GPUs.
Run as a script (by the test, under torchrun), each rank writes ``fsdp2-<rank>.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(out_dir: str) -> None:
    import copy
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    sys.path.insert(0, HERE)
    from helpers import VOCAB, tiny_llama

    from distill.teacher import place_teacher, shard_teacher_fsdp2

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own batch, as in data parallelism
    batches = [torch.randint(3, VOCAB, (3, 11), generator=gen) for _ in range(2)]

    def logits(model, ids):
        with torch.no_grad():
            return model(input_ids=ids).logits

    full = tiny_llama(hidden=48, layers=3, seed=1).eval()
    reference = [logits(full, ids) for ids in batches]
    facts = {}
    # 1) What the trainer does under FSDP (place_teacher, default mesh = the whole world),
    # 2) shard_teacher_fsdp2 on an explicit CPU mesh.
    fake_trainer = SimpleNamespace(
        is_deepspeed_enabled=False,
        is_fsdp_enabled=True,
        args=SimpleNamespace(device=torch.device("cpu")),
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace())),
    )
    for name, make in (
        ("place_teacher", lambda m: place_teacher(m, fake_trainer)),
        ("explicit_mesh", lambda m: shard_teacher_fsdp2(m, mesh=mesh)),
    ):
        teacher = copy.deepcopy(full).train().requires_grad_(True)  # placement must freeze it
        teacher = make(teacher)
        params = list(teacher.parameters())
        diffs = [(logits(teacher, ids) - ref).abs().max().item() for ids, ref in zip(batches, reference)]
        facts[name] = {
            "max_logit_diff": max(diffs),
            "all_dtensor": all(isinstance(p, DTensor) for p in params),
            # after each forward the parameters are sharded again
            "sharded_after_forward": all(p.to_local().numel() < p.numel() for p in params if p.numel() >= 2),
            "any_trainable": any(p.requires_grad for p in params),
            "any_training_module": any(m.training for m in teacher.modules()),
            "fsdp_blocks": sum(isinstance(m, FSDPModule) for m in teacher.modules()),
            "local_numel": sum(p.to_local().numel() for p in params),
            "full_numel": sum(p.numel() for p in params),
        }
    with open(os.path.join(out_dir, f"fsdp2-{rank}.json"), "w") as f:
        json.dump(facts, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


@pytest.mark.slow
def test_fsdp2_sharded_teacher_matches_unsharded(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29541", __file__, str(tmp_path)],
        check=True,
        env=env,
        timeout=300,
    )
    for rank in (0, 1):
        with open(tmp_path / f"fsdp2-{rank}.json") as f:
            facts = json.load(f)
        for name, got in facts.items():
            assert got["max_logit_diff"] < 1e-5, (rank, name, got)
            assert got["all_dtensor"], (rank, name)
            assert got["sharded_after_forward"], (rank, name)
            assert not got["any_trainable"], (rank, name)
            assert not got["any_training_module"], (rank, name)
            assert got["fsdp_blocks"] == 3 + 1, (rank, name)  # every decoder layer, then the root
            assert got["local_numel"] < 0.6 * got["full_numel"], (rank, name)


if __name__ == "__main__":
    _worker(sys.argv[1])
