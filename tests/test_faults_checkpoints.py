"""Damaged checkpoints are detected before training continues, and a full disk leaves the last one usable."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights

from distill import DistillationConfig, DistillationTrainer
from distill.trainer.checkpoints import (
    COMPLETION_RECORD,
    CorruptCheckpointError,
    check_checkpoint,
    last_complete_checkpoint,
)
from distill.trainer.tasks import CausalLMCollator


def _trainer(out, steps, optim="adamw_torch", **extra):
    torch.set_num_threads(1)
    args = DistillationConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=0.01,
        optim=optim,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        alpha=0.5,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    return DistillationTrainer(
        model=tiny_llama(seed=0),
        teacher_model=tiny_llama(hidden=48, seed=1),
        args=args,
        train_dataset=lm_dataset(48),
        data_collator=CausalLMCollator(pad_token_id=0),
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Weights after 6 uninterrupted steps."""
    trainer = _trainer(str(tmp_path_factory.mktemp("straight")), 6)
    trainer.train()
    return weights(trainer.model)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage(path):
    with open(path, "w") as f:
        f.write('{"global_step": 4, "log_hist')


def _delete(path):
    os.remove(path)


@pytest.mark.parametrize(
    "name, damage",
    [
        ("model.safetensors", _truncate),
        ("optimizer.pt", _delete),
        ("trainer_state.json", _garbage),
        ("scheduler.pt", _truncate),
    ],
)
def test_damaged_checkpoint_is_named_and_skipped(tmp_path, straight, caplog, name, damage):
    out = str(tmp_path / "run")
    _trainer(out, 4).train()
    bad, good = os.path.join(out, "checkpoint-4"), os.path.join(out, "checkpoint-2")
    damage(os.path.join(bad, name))
    with pytest.raises(CorruptCheckpointError) as e:
        check_checkpoint(bad)
    assert e.value.file == os.path.join(bad, name)
    # An explicit choice is refused with the file named, not silently replaced.
    with pytest.raises(CorruptCheckpointError, match=name.replace(".", r"\.")):
        _trainer(out, 6).train(resume_from_checkpoint=bad)
    # By default: a warning naming the skipped checkpoint, and the previous one is resumed exactly.
    with caplog.at_level(logging.WARNING, logger="distill"):
        assert last_complete_checkpoint(out) == good
        trainer = _trainer(out, 6)
        trainer.train(resume_from_checkpoint=True)
    assert any(
        "Skipping checkpoint" in r.message and bad in r.message and name in r.message for r in caplog.records
    )
    assert max_diff(weights(trainer.model), straight) < 1e-6


def test_completion_record_catches_a_changed_size(tmp_path):
    out = str(tmp_path / "run")
    _trainer(out, 2).train()
    checkpoint = os.path.join(out, "checkpoint-2")
    with open(os.path.join(checkpoint, COMPLETION_RECORD)) as f:
        assert "model.safetensors" in json.load(f)["files"]
    with open(os.path.join(checkpoint, "rng_state.pth"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptCheckpointError, match="rng_state.pth"):
        check_checkpoint(checkpoint)


def test_flipped_byte_sends_resume_back_to_the_previous_checkpoint(tmp_path, straight, caplog):
    out = str(tmp_path / "run")
    _trainer(out, 4).train()
    bad, good = os.path.join(out, "checkpoint-4"), os.path.join(out, "checkpoint-2")
    weights_file = os.path.join(bad, "model.safetensors")
    size = os.path.getsize(weights_file)
    with open(weights_file, "r+b") as f:  # one bit of the last weight: same size, header intact
        f.seek(size - 1)
        byte = f.read(1)[0]
        f.seek(size - 1)
        f.write(bytes([byte ^ 0x01]))
    assert os.path.getsize(weights_file) == size
    with pytest.raises(CorruptCheckpointError, match="sha256") as e:
        check_checkpoint(bad)
    assert e.value.file == weights_file
    with caplog.at_level(logging.WARNING, logger="distill"):
        trainer = _trainer(out, 6)
        trainer.train(resume_from_checkpoint=True)
    assert any(
        "Skipping checkpoint" in r.message and weights_file in r.message and "sha256" in r.message
        for r in caplog.records
    )
    assert last_complete_checkpoint(out) == os.path.join(out, "checkpoint-6")
    check_checkpoint(good)
    assert max_diff(weights(trainer.model), straight) < 1e-6


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, straight, monkeypatch):
    out = str(tmp_path / "run")
    original = DistillationTrainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            with open(os.path.join(output_dir, "optimizer.pt"), "wb") as f:
                f.write(b"PK\3\4 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, output_dir)

    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(OSError, match="Out of disk space") as e:
        _trainer(out, 6).train()
    assert e.value.errno == errno.ENOSPC and os.path.join(out, "checkpoint-2") in str(e.value)
    assert sorted(os.listdir(out)) == ["checkpoint-2"]  # no staging, no half checkpoint-4
    check_checkpoint(os.path.join(out, "checkpoint-2"))
    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", original)
    trainer = _trainer(out, 6)
    trainer.train(resume_from_checkpoint=True)
    assert max_diff(weights(trainer.model), straight) < 1e-6


class _RunsCode:
    """A pickle that runs code when unpickled (what a malicious optimizer.pt could hold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_trainer_state_files_are_loaded_without_running_pickled_code(tmp_path):
    out = str(tmp_path / "run")
    _trainer(out, 2).train()
    checkpoint = os.path.join(out, "checkpoint-2")
    marker = str(tmp_path / "code_ran")
    torch.save({"state": _RunsCode(marker)}, os.path.join(checkpoint, "optimizer.pt"))
    os.remove(os.path.join(checkpoint, COMPLETION_RECORD))  # a structurally valid archive, so it gets loaded
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        _trainer(out, 4).train(resume_from_checkpoint=True)
    assert not os.path.exists(marker)
