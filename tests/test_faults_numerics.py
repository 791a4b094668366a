"""Non-finite losses skip the step (weights untouched), stop after max_nonfinite_steps, and a NaN teacher is named."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights

from distill import DistillationConfig, DistillationTrainer
from distill.trainer.checkpoints import check_checkpoint
from distill.trainer.numerics import NonFiniteTrainingError, TeacherNonFiniteError
from distill.trainer.tasks import CausalLMCollator


def _trainer(out, steps=6, batch=4, accumulation=1, **extra):
    torch.set_num_threads(1)
    args = DistillationConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
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


def _poison(monkeypatch, steps, factor=float("nan"), first_micro_batch_only=False):
    """Multiply the student's logits by ``factor`` at these global steps (NaN: what an overflow gives)."""
    original = DistillationTrainer.compute_loss
    seen = set()

    def compute_loss(self, model, inputs, *args, **kwargs):
        step = self.state.global_step
        hit = model.training and step in steps and not (first_micro_batch_only and step in seen)
        seen.add(step)
        if not hit:
            return original(self, model, inputs, *args, **kwargs)
        hook = self.model.register_forward_hook(
            lambda m, a, out: setattr(out, "logits", out.logits * factor) or out
        )
        try:
            return original(self, model, inputs, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(DistillationTrainer, "compute_loss", compute_loss)


@pytest.mark.parametrize("batch, accumulation", [(4, 1), (2, 2)])
def test_nonfinite_steps_are_skipped_exactly(tmp_path, monkeypatch, batch, accumulation):
    # Reference: the same run where those steps have a zero loss, hence no SGD update (no momentum or decay).
    _poison(monkeypatch, {2, 3}, factor=0.0)
    reference = _trainer(str(tmp_path / "ref"), batch=batch, accumulation=accumulation)
    reference.train()
    monkeypatch.undo()
    # NaN in one micro-batch only: the accumulated gradient is NaN, the whole step is skipped.
    _poison(monkeypatch, {2, 3}, first_micro_batch_only=True)
    trainer = _trainer(str(tmp_path / "nan"), batch=batch, accumulation=accumulation)
    trainer.train()
    skipped = [
        h["nonfinite_step_skipped"] for h in trainer.state.log_history if "nonfinite_step_skipped" in h
    ]
    assert skipped == [3, 4] and trainer.state.global_step == 6
    assert max_diff(weights(trainer.model), weights(reference.model)) < 1e-6
    for step in (2, 4, 6):
        check_checkpoint(os.path.join(tmp_path / "nan", f"checkpoint-{step}"))


def test_stops_after_max_nonfinite_steps_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    _poison(monkeypatch, set(range(2, 100)))
    out = str(tmp_path / "run")
    trainer = _trainer(out, steps=10, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteTrainingError, match=r"Stopped at step 5: the last 3 optimizer steps") as e:
        trainer.train()
    assert os.path.join(out, "checkpoint-4") in str(e.value)
    assert not os.path.exists(os.path.join(out, "checkpoint-6"))
    for step in (2, 4):
        state = load_file(os.path.join(out, f"checkpoint-{step}", "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in state.values())


def test_nan_teacher_is_blamed_with_the_batch_index(tmp_path, monkeypatch):
    trainer = _trainer(str(tmp_path / "run"))
    calls = {"n": 0}

    def hook(module, args, out):
        calls["n"] += 1
        if calls["n"] == 3:
            out.logits = out.logits * float("nan")
        return out

    trainer.teacher.register_forward_hook(hook)
    with pytest.raises(TeacherNonFiniteError, match=r"teacher's fault.*") as e:
        trainer.train()
    assert "on its batch 2 (training, training step 2)" in str(e.value)


def test_nonfinite_weights_are_never_saved(tmp_path):
    trainer = _trainer(str(tmp_path / "run"), steps=1)
    trainer.train()
    trainer.state.global_step = 2
    with torch.no_grad():
        trainer.model.model.norm.weight[0] = float("inf")
    with pytest.raises(FloatingPointError, match="model.norm.weight"):
        trainer._save_checkpoint(trainer.model, None)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-1"]


def test_nonfinite_values_in_a_zero3_shard_are_found():
    """What ZeRO-3 leaves between forwards: every parameter empty, its values in this process's `ds_tensor`
    (the last partition padded with whatever `torch.empty` held). The 2-process run is in test_deepspeed."""
    from distill.trainer.checkpoints import check_finite_weights

    model = torch.nn.Linear(4, 3)
    for param in model.parameters():
        values = param.detach().reshape(-1).clone()
        shard = torch.cat([values, torch.full((3,), float("nan"))])  # padding: never looked at
        shard.ds_numel = shard.numel()
        param.ds_tensor, param.ds_numel = shard, values.numel()
        param.data = torch.empty(0)
    check_finite_weights(model)
    with torch.no_grad():
        model.weight.ds_tensor[5] = float("inf")
    with pytest.raises(FloatingPointError, match="parameter 'weight'"):
        check_finite_weights(model)


def test_max_nonfinite_steps_is_checked():
    with pytest.raises(ValueError, match="max_nonfinite_steps=-1"):
        DistillationConfig(output_dir="x", max_nonfinite_steps=-1)
