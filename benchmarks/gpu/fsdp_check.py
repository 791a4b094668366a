"""DistillationTrainer under accelerate FSDP2, on GPUs: teacher placement, loss curve, saving.

    accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 2 benchmarks/gpu/fsdp_check.py
    accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 1 benchmarks/gpu/fsdp_check.py
    # bf16 smoke run (placement + finite losses, no exact comparison):
    accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 2 benchmarks/gpu/fsdp_check.py --bf16

Run from the repository root. FSDP through accelerate does not shard on CPU (it silently falls back
to DDP), which is why this lives here and not in tests/; tests/test_fsdp2_teacher.py covers the
teacher-sharding code with raw FSDP2 on CPU. Tiny Llama models: well under a minute on one GPU
(budget: 10 minutes). Rank 0 first trains a 1-process reference without FSDP (same script,
`--reference`, with the per-device batch times the process count), then all ranks train under
FSDP2 and rank 0 prints PASS/FAIL lines; the exit status is 1 if any check fails.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

BATCH, STEPS, TOL = 4, 4, 1e-4
_LAUNCH_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def build(out: str, batch: int, bf16: bool = False):
    """Student, teacher and trainer, identical in the reference and the FSDP run."""
    from helpers import lm_dataset, tiny_llama

    from distill import DistillationConfig, DistillationTrainer
    from distill.trainer.tasks import CausalLMCollator

    args = DistillationConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        max_steps=STEPS,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        bf16=bf16,
    )
    teacher = tiny_llama(hidden=64, layers=3, seed=1)
    unsharded_teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    trainer = DistillationTrainer(
        model=tiny_llama(hidden=32, layers=2, seed=0),
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(64),
        eval_dataset=lm_dataset(48, seed=1),  # 48: no padded rows for 1-4 GPUs
        data_collator=CausalLMCollator(pad_token_id=0),
    )
    return trainer, unsharded_teacher


def train_and_record(trainer) -> dict:
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    history = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"log": history, "eval": metrics}


def reference(out: str, batch: int) -> None:
    record = train_and_record(build(out, batch)[0])
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(record, f)


def run_reference(out: str, world: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "TORCHELASTIC_", "FSDP_"))}
    for key in _LAUNCH_VARS:
        env.pop(key, None)
    cmd = [sys.executable, os.path.abspath(__file__), "--reference", out, str(BATCH * world)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300)


class Report:
    def __init__(self, rank: int):
        self.rank, self.failed = rank, False

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        self.failed |= not ok
        if self.rank == 0:
            print(f"{'PASS' if ok else 'FAIL'}: {what}" + (f" ({detail})" if detail else ""), flush=True)


def check_teacher(report: Report, trainer, unsharded, bf16: bool) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    teacher = trainer.teacher
    params = list(teacher.parameters())
    report.check(
        isinstance(teacher, FSDPModule), "teacher is an FSDP2 module (fully_shard)", type(teacher).__name__
    )
    report.check(all(isinstance(p, DTensor) for p in params), "teacher parameters are DTensors")
    report.check(not any(p.requires_grad for p in params), "teacher parameters are frozen")
    report.check(not any(m.training for m in teacher.modules()), "teacher (every submodule) is in eval mode")
    n_blocks = sum(isinstance(m, FSDPModule) for m in teacher.modules())
    report.check(n_blocks == 3 + 1, "each decoder layer and the root are sharded", f"{n_blocks} FSDP modules")
    local = sum(p.to_local().numel() for p in params)
    full = sum(p.numel() for p in params)
    world = trainer.args.world_size
    report.check(
        world == 1 or local < 0.6 * full, "teacher shards hold ~1/world of the weights", f"{local}/{full}"
    )
    ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(0)).to(trainer.args.device)
    with torch.no_grad(), trainer.compute_loss_context_manager():
        sharded = trainer.teacher(input_ids=ids).logits.float()
    with torch.no_grad():
        expected = unsharded.to(trainer.args.device)(input_ids=ids).logits.float()
    diff = (sharded - expected).abs().max().item()
    tol = 5e-2 if bf16 else TOL
    report.check(
        diff < tol, "sharded teacher logits == unsharded teacher logits", f"max diff {diff:.2e} < {tol}"
    )


def check_after_training(report: Report, trainer, record: dict, out: str, bf16: bool) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    student = trainer.model_wrapped
    report.check(isinstance(student, FSDPModule), "student is an FSDP2 module", type(student).__name__)
    report.check(all(isinstance(p, DTensor) for p in student.parameters()), "student parameters are DTensors")
    teacher_params = list(trainer.teacher.parameters())
    report.check(all(p.grad is None for p in teacher_params), "teacher got no gradients")
    report.check(not trainer.teacher.training, "teacher still in eval mode after training and evaluation")
    losses = [h["loss"] for h in record["log"]]
    report.check(
        len(losses) == STEPS and all(math.isfinite(x) for x in losses), "finite training losses", str(losses)
    )
    if bf16 or trainer.args.process_index != 0:
        return
    with open(os.path.join(out, "reference", "reference.json")) as f:
        ref = json.load(f)
    worst = max(
        abs(a[k] - b[k]) for a, b in zip(ref["log"], record["log"]) for k in ("loss", "kd_loss", "ce_loss")
    )
    report.check(
        len(ref["log"]) == len(record["log"]) and worst < TOL,
        "FSDP loss curve (loss, kd_loss, ce_loss) == 1-process reference",
        f"max diff {worst:.2e}",
    )
    keys = ("eval_loss", "eval_kd_loss", "eval_teacher_loss")
    worst = max(abs(ref["eval"][k] - record["eval"][k]) for k in keys)
    report.check(worst < TOL, "FSDP evaluation == reference", f"max diff {worst:.2e}")
    from transformers import LlamaForCausalLM

    try:
        saved = LlamaForCausalLM.from_pretrained(os.path.join(out, "fsdp"), use_safetensors=True).state_dict()
        expected = LlamaForCausalLM.from_pretrained(
            os.path.join(out, "reference"), use_safetensors=True
        ).state_dict()
        worst = max((saved[k] - expected[k]).abs().max().item() for k in expected)
        report.check(
            sorted(saved) == sorted(expected) and worst < TOL,
            "saved FSDP student reloads with from_pretrained and equals the reference",
            f"max diff {worst:.2e}",
        )
    except Exception as e:  # noqa: BLE001 - report, don't crash before the other lines
        report.check(False, "saved FSDP student reloads with from_pretrained", repr(e))


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 comparison with the reference
    torch.backends.cudnn.allow_tf32 = False
    if sys.argv[1:2] == ["--reference"]:
        reference(sys.argv[2], int(sys.argv[3]))
        return 0
    bf16 = "--bf16" in sys.argv[1:]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out = os.environ.get("FSDP_CHECK_DIR", os.path.join(tempfile.gettempdir(), "scaledown_fsdp_check"))
    if not torch.cuda.is_available() and rank == 0:
        print(
            "NOTE: no GPU; accelerate falls back to DDP on CPU, so the FSDP checks below will FAIL.",
            flush=True,
        )
    if rank == 0 and not bf16:  # the other ranks wait in the process-group rendezvous meanwhile
        run_reference(os.path.join(out, "reference"), world)
    trainer, unsharded = build(os.path.join(out, "fsdp"), BATCH, bf16=bf16)
    report = Report(trainer.args.process_index)
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    report.check(
        trainer.is_fsdp_enabled and getattr(plugin, "fsdp_version", 1) == 2,
        "the Trainer runs FSDP2 (accelerate fsdp_version: 2)",
        f"world size {trainer.args.world_size}",
    )
    if trainer.is_fsdp_enabled:
        check_teacher(report, trainer, unsharded, bf16)
    record = train_and_record(trainer)
    check_after_training(report, trainer, record, out, bf16)
    failed = torch.tensor([float(report.failed)], device=trainer.args.device)
    if trainer.args.world_size > 1:
        failed = trainer.accelerator.reduce(failed, reduction="sum")
    code = 1 if failed.item() else 0
    if rank == 0:
        print("RESULT:", "FAIL" if code else "PASS", flush=True)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()  # as distill.cli._finish_distributed, but keeping the exit status
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
