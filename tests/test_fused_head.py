"""`kd_fused_lm_head`: the trainer computes logits chunk by chunk from hidden states, trains exactly
like the default chunked loss, never runs an LM head on a whole batch, and refuses setups it cannot serve."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights, word_tokenizer

from distill import DistillationConfig, DistillationTrainer
from distill.losses.fused_head import fused_head_problem
from distill.trainer.tasks import CausalLMCollator, get_task


def _args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
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
        kd_chunk_size=5,
    )
    kwargs.update(overrides)
    return DistillationConfig(**kwargs)


def _train(tmp_path, student, teacher, data, tokenizer=None, **overrides):
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, **overrides),
        train_dataset=data,
        eval_dataset=data.select(range(8)),
        data_collator=CausalLMCollator(pad_token_id=0),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h]


def _untied(model):
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    return model


CASES = {
    "tied": lambda: (tiny_llama(seed=0), tiny_llama(hidden=48, seed=1), None, 64),
    "untied": lambda: (_untied(tiny_llama(seed=0)), tiny_llama(hidden=48, seed=1), None, 64),
    # Padded vocabularies: 60 real tokens, student head 64 rows, teacher head 80 rows.
    "padded": lambda: (tiny_llama(seed=0), tiny_llama(hidden=48, vocab=80, seed=1), word_tokenizer(60), 60),
}


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_training_equals_chunked(tmp_path, case, kind):
    runs = []
    for fused in (False, True):
        student, teacher, tokenizer, vocab = CASES[case]()
        trainer, logs = _train(
            tmp_path / str(fused),
            student,
            teacher,
            lm_dataset(24, vocab=vocab),
            tokenizer,
            kd_kind=kind,
            kd_fused_lm_head=fused,
        )
        runs.append((weights(student), logs, trainer.evaluate()))
    (w0, logs0, eval0), (w1, logs1, eval1) = runs
    assert max_diff(w0, w1) < 1e-5
    assert len(logs0) == len(logs1) == 3
    for a, b in zip(logs0, logs1):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert eval0["eval_loss"] == pytest.approx(eval1["eval_loss"], abs=1e-5)


def test_no_head_runs_on_a_whole_batch_in_training(tmp_path):
    """The heads' outputs in training are hidden states ([B, T, H]), never [B, T, V] logits."""
    student, teacher = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1)
    widths = {"student": [], "teacher": []}
    for who, model in (("student", student), ("teacher", teacher)):
        model.lm_head.register_forward_hook(lambda m, i, out, who=who: widths[who].append(out.shape[-1]))
    trainer, _ = _train(tmp_path, student, teacher, lm_dataset(16), kd_fused_lm_head=True)
    checks = 3  # at start-up check_head_gives_logits runs each model plainly, bypassed, then the head by hand
    assert (
        widths["student"][checks:] == [32] * 6 and widths["teacher"][checks:] == [48] * 6
    )  # 3 steps x 2 micro
    widths["student"].clear()
    trainer.evaluate()  # evaluation keeps the plain loss: real logits
    assert set(widths["student"]) == {64}


def test_logit_post_processing_is_refused(tmp_path):
    """A model whose logits are not head(hidden) (here Gemma-2's soft-capping) would be trained wrongly."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        final_logit_softcapping=0.5,
        pad_token_id=0,
    )
    softcapped = Gemma2ForCausalLM(config)
    with pytest.raises(ValueError, match="teacher.*changes its logits after the LM head"):
        _train(tmp_path, tiny_llama(seed=0), softcapped, lm_dataset(8), kd_fused_lm_head=True, max_steps=1)


def test_setups_without_a_fusable_head_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs an online teacher"):
        _train(
            tmp_path,
            tiny_llama(seed=0),
            tiny_llama(hidden=48, seed=1),
            lm_dataset(8),
            kd_fused_lm_head=True,
            alpha=0.0,
        )
    trainer = SimpleNamespace(
        task=get_task("causal-lm"),
        is_fsdp_enabled=False,
        is_deepspeed_enabled=True,
        accelerator=SimpleNamespace(
            state=SimpleNamespace(
                deepspeed_plugin=SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3}})
            )
        ),
    )
    assert "ZeRO-3" in fused_head_problem(trainer, has_teacher=True)
    trainer.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"] = 2
    assert fused_head_problem(trainer, has_teacher=True) is None
    trainer.is_deepspeed_enabled, trainer.is_fsdp_enabled = False, True
    assert "FSDP" in fused_head_problem(trainer, has_teacher=True)
    trainer.task = get_task("seq-cls")
    assert "causal-lm only" in fused_head_problem(trainer, has_teacher=True)


def test_fused_head_turns_off_ddp_unused_parameter_search(tmp_path):
    assert _args(tmp_path, kd_fused_lm_head=True).ddp_find_unused_parameters is False
    assert _args(tmp_path).ddp_find_unused_parameters is None  # the Trainer's own default otherwise
    with pytest.raises(ValueError, match="ddp_find_unused_parameters=false"):
        _args(tmp_path, kd_fused_lm_head=True, ddp_find_unused_parameters=True)


def test_bypass_restores_an_existing_instance_forward():
    from distill.losses.fused_head import bypass_head

    head = torch.nn.Linear(4, 3)
    hooked = head.forward  # e.g. accelerate's add_hook_to_module sets an instance forward like this
    head.forward = lambda x: hooked(x) * 0
    previous = head.forward
    with bypass_head(head):
        assert head(torch.ones(1, 4)).shape == (1, 4)
    assert head.forward is previous
    plain = torch.nn.Linear(4, 3)
    with bypass_head(plain):
        pass
    assert "forward" not in plain.__dict__


def test_dispatched_head_is_refused(tmp_path):
    """A head under an accelerate hook (device_map / offload) has no weight to read outside the hook."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    teacher = tiny_llama(hidden=48, seed=1)
    add_hook_to_module(teacher.lm_head, AlignDevicesHook(execution_device="cpu"))
    with pytest.raises(ValueError, match="teacher's LM head is dispatched by accelerate"):
        _train(tmp_path, tiny_llama(seed=0), teacher, lm_dataset(8), kd_fused_lm_head=True, max_steps=1)


def test_head_off_the_training_device_is_refused():
    from distill.losses.fused_head import check_head_placement

    model = tiny_llama()
    check_head_placement(model, "teacher", torch.device("cpu", 0))  # "cpu:0" is the CPU
    with pytest.raises(ValueError, match="on cpu, but training runs on cuda:0"):
        check_head_placement(model, "teacher", torch.device("cuda", 0))
