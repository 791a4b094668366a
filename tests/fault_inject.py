"""Fault injection for `distill` and `scaledown` runs, used by tests/test_faults*.py and benchmarks/bench_faults.py.

Usage: python tests/fault_inject.py distill train ARGS...   (or: scaledown run ARGS..., distill cache-teacher ARGS...)
and under torchrun the same. It patches `DistillationTrainer` in this process only, from the environment:

- ``FAULT_RECORD=PATH``: append one JSON line per training micro-batch, ``{"step": global_step, "ids": [...]}``,
  where each id is a hash of one row's real (unpadded) tokens (rank R > 0 writes ``PATH.rankR``).
- ``FAULT_AT=KIND:N`` with ``FAULT_MARKER=PATH``: when the run reaches KIND at global step N, write the
  marker file and block forever, so the test can SIGKILL it right there. KIND is ``step`` (inside a
  training step, after the forward, before the backward), ``save`` (inside the checkpoint save, after the
  weights are written and before the optimizer state), ``eval`` (inside an evaluation batch),
  ``cache`` (inside `distill cache-teacher`, after N batches were written).
- ``FAULT_RECORD_DIR=DIR``: the same, into ``DIR/<basename of output_dir>.jsonl`` (one file per training run of
  a pipeline); ``FAULT_ARGV=PATH``: append the arguments of every `distill train` call as one JSON line.
- ``FAULT_ONLY_IN=TEXT``: inject FAULT_AT only into training runs whose output_dir contains TEXT.
- ``FAULT_ENOSPC=N``: the checkpoint save at step N fails with ENOSPC while writing the optimizer state.
- ``FAULT_NAN=S1,S2,...``: the student's logits are NaN at those global steps (a forward hook), on every
  rank or only on rank ``FAULT_NAN_RANK``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _block(kind: str, step: int) -> None:
    """Write the marker (rank 0) and wait to be killed."""
    if _rank() == 0:
        with open(os.environ["FAULT_MARKER"], "w") as f:
            f.write(f"{kind}:{step}\n")
    while True:
        time.sleep(60)


def _fault_at() -> tuple[str, int]:
    spec = os.environ.get("FAULT_AT", "")
    if not spec:
        return "", -1
    kind, step = spec.split(":")
    return kind, int(step)


def row_ids(input_ids, attention_mask=None) -> list[str]:
    """A short hash of each row's real tokens: the identity of a training sample."""
    out = []
    for i, row in enumerate(input_ids.tolist()):
        if attention_mask is not None:
            row = [t for t, m in zip(row, attention_mask[i].tolist()) if m]
        out.append(hashlib.sha1(json.dumps(row).encode()).hexdigest()[:12])
    return out


def _here(trainer) -> bool:
    return os.environ.get("FAULT_ONLY_IN", "") in trainer.args.output_dir


def patch_argv_log() -> None:
    if not os.environ.get("FAULT_ARGV"):
        return
    import distill.train

    original = distill.train.main

    def main(argv=None):
        with open(os.environ["FAULT_ARGV"], "a") as f:
            f.write(json.dumps(list(argv if argv is not None else sys.argv[2:])) + "\n")
        return original(argv)

    distill.train.main = main


def patch_trainer() -> None:
    from distill.trainer import distillation_trainer as trainer_module

    cls = trainer_module.DistillationTrainer
    kind, at = _fault_at()
    record = os.environ.get("FAULT_RECORD")
    if record and _rank() > 0:
        record = f"{record}.rank{_rank()}"
    nan_steps = {int(s) for s in os.environ.get("FAULT_NAN", "").split(",") if s}
    if os.environ.get("FAULT_NAN_RANK", str(_rank())) != str(_rank()):
        nan_steps = set()
    enospc = int(os.environ.get("FAULT_ENOSPC", "-1"))

    original_training_step = cls.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        path = record
        if os.environ.get("FAULT_RECORD_DIR"):
            name = os.path.basename(os.path.normpath(self.args.output_dir))
            path = os.path.join(os.environ["FAULT_RECORD_DIR"], f"{name}.jsonl")
        if path:
            with open(path, "a") as f:
                ids = row_ids(inputs["input_ids"], inputs.get("attention_mask"))
                f.write(json.dumps({"step": self.state.global_step, "ids": ids}) + "\n")
        return original_training_step(self, model, inputs, num_items_in_batch)

    cls.training_step = training_step

    original_compute_loss = cls.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        if nan_steps and model.training and self.state.global_step in nan_steps:
            hook = _nan_hook(self.model)
            try:
                result = original_compute_loss(self, model, inputs, *args, **kwargs)
            finally:
                hook.remove()
        else:
            result = original_compute_loss(self, model, inputs, *args, **kwargs)
        if kind == "step" and model.training and self.state.global_step == at and _here(self):
            _block(kind, at)
        return result

    cls.compute_loss = compute_loss

    original_save_opt = cls._save_optimizer_and_scheduler

    def save_optimizer_and_scheduler(self, output_dir):
        if kind == "save" and self.state.global_step == at and _here(self):
            _block(kind, at)
        if self.state.global_step == enospc:
            with open(os.path.join(output_dir, "optimizer.pt"), "wb") as f:
                f.write(b"PK\x03\x04 partial")  # what a full disk leaves: the start of a file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original_save_opt(self, output_dir)

    cls._save_optimizer_and_scheduler = save_optimizer_and_scheduler

    original_prediction_step = cls.prediction_step

    def prediction_step(self, model, inputs, *args, **kwargs):
        if kind == "eval" and self.state.global_step == at and _here(self):
            _block(kind, at)
        return original_prediction_step(self, model, inputs, *args, **kwargs)

    cls.prediction_step = prediction_step


def _nan_hook(model):
    """A forward hook that makes the model's logits NaN (what an overflow in a layer produces)."""

    def hook(module, args, output):
        output.logits = output.logits * float("nan")
        return output

    return model.register_forward_hook(hook)


def patch_cache_writer() -> None:
    """``FAULT_AT=cache:N``: block after N batches of the teacher cache were written."""
    kind, at = _fault_at()
    if kind != "cache":
        return
    from datasets.arrow_writer import ArrowWriter

    original = ArrowWriter.write_batch
    count = {"n": 0}

    def write_batch(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == at:
            self.stream.flush() if hasattr(self.stream, "flush") else None
            _block(kind, at)
        return result

    ArrowWriter.write_batch = write_batch


def main() -> int:
    program, argv = sys.argv[1], sys.argv[2:]
    patch_trainer()
    patch_cache_writer()
    patch_argv_log()
    if program == "distill":
        from distill.cli import main as cli_main
    elif program == "scaledown":
        from scaledown.cli import main as cli_main
    else:
        raise SystemExit(f"unknown program {program!r}: use distill or scaledown")
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
