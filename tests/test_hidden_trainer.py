"""Intermediate-layer distillation through DistillationTrainer: exactness, reference, resume, saving, refusals."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from helpers import lm_dataset, max_diff, tiny_llama, weights
from safetensors.torch import load_file
from test_hidden_losses import ref_hidden, ref_weights
from test_tasks import _PadTokenizer, cls_dataset, image_dataset, tiny_bert, tiny_vit
from test_trainer import make_trainer

from distill import DistillationConfig, DistillationTrainer
from distill.trainer.intermediate import PROJECTION_FILE, PROJECTION_NAME
from distill.trainer.tasks import CausalLMCollator, get_task, make_collator


def eager(model):
    model.set_attn_implementation("eager")
    return model


def _logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


def test_gradient_accumulation_is_exact_with_projection_and_attention(tmp_path):
    data = lm_dataset(48)
    teacher = eager(tiny_llama(hidden=48, layers=4, seed=1))
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = eager(tiny_llama(seed=0))
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            student,
            teacher,
            data,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            hidden_weight=2.0,
            attention_weight=1.0,
            hidden_loss="cosine",
            max_steps=2,
        )
        trainer.train()
        assert trainer._intermediate.projection is getattr(
            student, PROJECTION_NAME
        )  # 32 -> 48: trained with it
        results.append((weights(student), _logs(trainer)))
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    assert any(k.startswith(PROJECTION_NAME) for k in results[0][0])
    for a, b in zip(results[0][1], results[1][1]):
        for key in ("loss", "kd_loss", "ce_loss", "hidden_loss", "attention_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
        assert a["loss"] == pytest.approx(
            0.5 * a["kd_loss"] + 0.5 * a["ce_loss"] + 2 * a["hidden_loss"] + a["attention_loss"], rel=1e-3
        )


def test_training_loss_matches_float64_reference(tmp_path):
    """compute_loss = logit loss + hidden_weight * (numpy reference over the default map, shifted items)."""
    from distill.losses import distillation_loss

    student, teacher = tiny_llama(seed=0), tiny_llama(hidden=48, layers=4, seed=1)
    trainer = make_trainer(tmp_path, student, teacher, lm_dataset(8), hidden_weight=0.7, hidden_loss="mse")
    assert trainer._intermediate.layer_map == {1: 2, 2: 4}
    batch = CausalLMCollator(0)([lm_dataset(8)[i] for i in range(8)])
    n = batch["labels"][:, 1:].ne(-100).sum()
    loss = trainer.compute_loss(student, batch, num_items_in_batch=n)
    with torch.no_grad():
        s = student(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        t = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    logit = distillation_loss(
        s.logits[:, :-1].double(),
        t.logits[:, :-1].double(),
        batch["labels"][:, 1:],
        alpha=0.5,
        temperature=2.0,
        num_items_in_batch=n,
    ).loss.item()
    proj = getattr(student, PROJECTION_NAME)
    w = ref_weights(True, batch["labels"].numpy(), None, *batch["labels"].shape)
    hidden = ref_hidden(
        [x.double().numpy() for x in s.hidden_states],
        [x.double().numpy() for x in t.hidden_states],
        {1: 2, 2: 4},
        w,
        "mse",
        (proj.weight.detach().double().numpy(), proj.bias.detach().double().numpy()),
        denom=int(n),
    )
    assert loss.item() == pytest.approx(logit + 0.7 * hidden, rel=1e-5)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_fused_lm_head_gives_the_same_hidden_term(tmp_path):
    batch = CausalLMCollator(0)([lm_dataset(6)[i] for i in range(6)])
    n = batch["labels"][:, 1:].ne(-100).sum()
    losses = []
    for fused in (False, True):
        student, teacher = tiny_llama(seed=0), tiny_llama(hidden=48, seed=1)
        trainer = make_trainer(
            tmp_path / str(fused), student, teacher, lm_dataset(6), hidden_weight=1.0, kd_fused_lm_head=fused
        )
        student.train()
        losses.append(trainer.compute_loss(student, batch, num_items_in_batch=n).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_resume_is_exact_including_projection(tmp_path):
    teacher = tiny_llama(hidden=48, seed=1)
    data = lm_dataset(64)
    common = dict(
        max_steps=8,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        hidden_weight=1.0,
    )
    straight = tiny_llama(seed=0)
    make_trainer(tmp_path / "a", straight, teacher, data, **common).train()
    make_trainer(
        tmp_path / "b", tiny_llama(seed=0), teacher, data, save_strategy="steps", save_steps=4, **common
    ).train()
    ckpt = tmp_path / "b" / "checkpoint-4"
    assert (ckpt / PROJECTION_FILE).is_file()
    assert not any(k.startswith(PROJECTION_NAME) for k in load_file(ckpt / "model.safetensors"))
    resumed = tiny_llama(seed=3)
    trainer = make_trainer(tmp_path / "b", resumed, teacher, data, **common)
    with torch.no_grad():  # everything must come from the checkpoint, the projection too
        getattr(resumed, PROJECTION_NAME).weight.normal_()
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert max_diff(weights(straight), weights(resumed)) < 1e-6


def test_final_model_has_no_projection_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    student = tiny_llama(seed=0)
    args = DistillationConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=30.0,
        optim="sgd",
        report_to="none",
        disable_tqdm=True,
        hidden_weight=1.0,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_llama(hidden=48, seed=1),
        args=args,
        train_dataset=lm_dataset(16),
        eval_dataset=lm_dataset(4, seed=2),
        data_collator=CausalLMCollator(0),
    )
    trainer.train()
    trainer.save_model()
    # load_best_model_at_end brings back the best checkpoint's projection with its student (not the last one).
    assert not trainer.state.best_model_checkpoint.endswith("checkpoint-3")
    best = load_file(os.path.join(trainer.state.best_model_checkpoint, PROJECTION_FILE))
    assert max_diff(best, getattr(student, PROJECTION_NAME).state_dict()) == 0.0
    saved = load_file(tmp_path / "model.safetensors")
    assert not any(PROJECTION_NAME in k for k in saved) and not (tmp_path / PROJECTION_FILE).exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    mine = {k: v for k, v in weights(student).items() if not k.startswith(PROJECTION_NAME)}
    assert set(mine) == set(weights(reloaded)) and max_diff(mine, weights(reloaded)) == 0.0


def _sgd_args(output_dir, batch, accumulation, **kw):
    return DistillationConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        **kw,
    )


def test_seq_cls_exact_with_attention_and_evaluates(tmp_path):
    def bert(**kw):
        model = tiny_bert(**kw)
        return eager(model)

    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = bert(seed=0)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=bert(hidden=48, seed=1),
            args=_sgd_args(
                tmp_path / str(bs),
                bs,
                ga,
                hidden_weight=1.0,
                attention_weight=1.0,
                hidden_layer_map="0:0,2:2",
            ),
            train_dataset=cls_dataset(32),
            data_collator=lambda feats: dict(_PadTokenizer().pad(feats)),
        )
        trainer.train()
        results.append(weights(student))
    assert max_diff(*results) < 1e-5
    metrics = trainer.evaluate(eval_dataset=cls_dataset(6, seed=3))
    assert metrics["eval_hidden_loss"] > 0 and metrics["eval_attention_loss"] > 0
    assert all("hidden_loss" in h and "attention_loss" in h for h in _logs(trainer))


def test_image_cls_exact(tmp_path):
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_vit(seed=0)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=tiny_vit(hidden=48, seed=1),
            args=_sgd_args(tmp_path / str(bs), bs, ga, remove_unused_columns=False, hidden_weight=1.0),
            train_dataset=image_dataset(16),
            data_collator=make_collator(get_task("image-cls")),
        )
        trainer.train()
        results.append(weights(student))
    assert max_diff(*results) < 1e-5
    assert "eval_hidden_loss" in trainer.evaluate(eval_dataset=image_dataset(4))


# ---- refusals, before any compute --------------------------------------------------------------


def test_refusals(tmp_path):
    data = lm_dataset(4)
    teacher = tiny_llama(hidden=48, seed=1)
    with pytest.raises(ValueError, match="past the teacher's last layer"):
        make_trainer(tmp_path, tiny_llama(), teacher, data, hidden_weight=1.0, hidden_layer_map="2:3")
    with pytest.raises(ValueError, match="need an online teacher model: there is no teacher"):
        DistillationTrainer(
            model=tiny_llama(),
            args=DistillationConfig(output_dir=str(tmp_path), alpha=0.0, hidden_weight=1.0, report_to="none"),
            train_dataset=data,
        )
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        make_trainer(tmp_path, tiny_llama(), teacher, data, attention_weight=1.0)
    from transformers import BertConfig, BertForSequenceClassification

    bert_student = eager(
        BertForSequenceClassification(
            BertConfig(
                vocab_size=50,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                attention_probs_dropout_prob=0.1,
            )
        )
    )
    bert_student.config.attention_probs_dropout_prob = 0.0  # too late: the modules were built with 0.1
    with pytest.raises(ValueError, match="dropout 0.1 .*attention_probs_dropout_prob=0"):
        DistillationTrainer(
            model=bert_student,
            teacher_model=eager(tiny_bert(seed=1)),
            args=DistillationConfig(output_dir=str(tmp_path), attention_weight=1.0, report_to="none"),
        )
    from transformers import LlamaConfig, LlamaForCausalLM

    two_heads = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            attn_implementation="eager",
        )
    )
    with pytest.raises(ValueError, match="same number of heads"):
        make_trainer(tmp_path, eager(tiny_llama()), two_heads, data, attention_weight=1.0)


def test_teacher_cache_refused(tmp_path):
    from distill.trainer.intermediate import IntermediateLayerTransfer

    args = DistillationConfig(output_dir=str(tmp_path), hidden_weight=1.0, report_to="none")
    with pytest.raises(ValueError, match="teacher cache holds only"):
        IntermediateLayerTransfer(args, get_task("causal-lm"), tiny_llama(), None, teacher_cache=object())
    from distill.train import _check_teacher_cache  # `distill train`: before the cache is even opened

    with pytest.raises(ValueError, match="teacher_cache does not hold"):
        _check_teacher_cache(str(tmp_path / "no-cache-here"), args)


def test_projection_refused_under_zero3_and_fsdp(tmp_path):
    trainer = make_trainer(
        tmp_path, tiny_llama(), tiny_llama(hidden=48, seed=1), lm_dataset(4), hidden_weight=1.0
    )
    zero3 = SimpleNamespace(
        is_fsdp_enabled=False,
        is_deepspeed_enabled=True,
        accelerator=SimpleNamespace(
            state=SimpleNamespace(
                deepspeed_plugin=SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 3}})
            )
        ),
    )
    with pytest.raises(ValueError, match="ZeRO-3"):
        trainer._intermediate.check_placement(zero3)
    with pytest.raises(ValueError, match="FSDP"):
        trainer._intermediate.check_placement(
            SimpleNamespace(is_fsdp_enabled=True, is_deepspeed_enabled=False)
        )
    # Same widths: no projection, nothing to refuse.
    same = make_trainer(tmp_path, tiny_llama(), tiny_llama(seed=1), lm_dataset(4), hidden_weight=1.0)
    assert same._intermediate.projection is None
    same._intermediate.check_placement(zero3)


class _NoHiddenStates(torch.nn.Module):
    """A causal LM that ignores output_hidden_states (as some custom models do)."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_llama()
        self.config = self.inner.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask).logits)


def test_model_without_hidden_states_refused(tmp_path):
    trainer = make_trainer(
        tmp_path, _NoHiddenStates(), tiny_llama(seed=1), lm_dataset(4), hidden_weight=1.0, task="causal-lm"
    )
    batch = CausalLMCollator(0)([lm_dataset(4)[i] for i in range(4)])
    with pytest.raises(ValueError, match="student .* returned no hidden_states"):
        trainer.compute_loss(trainer.model, batch)


# ---- 2 processes (gloo) = 1 process with twice the batch, projection included ------------------

_DISTRIBUTED_EXTRA = {"hidden_weight": 1.0, "attention_weight": 0.5}


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    import json
    import sys

    from test_deepspeed import SCRIPT, _run

    out = str(tmp_path_factory.mktemp("hidden_single") / "out")
    return _run([sys.executable, SCRIPT, out, "8", json.dumps(_DISTRIBUTED_EXTRA)], out)


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["ddp", "zero2"])
def test_two_processes_match_one_with_projection(tmp_path, one_process_reference, setup):
    """DDP averages the projection's gradients like the student's; under ZeRO-2 DeepSpeed's optimizer holds it."""
    import json

    from test_deepspeed import BIN, CONFIGS, SCRIPT, _losses, _read, _run, assert_same_training

    extra = dict(
        _DISTRIBUTED_EXTRA, **({"deepspeed": os.path.join(CONFIGS, "zero2.json")} if setup == "zero2" else {})
    )
    out = str(tmp_path / setup)
    port = {"ddp": "29537", "zero2": "29538"}[setup]
    _run(
        [
            os.path.join(BIN, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            SCRIPT,
            out,
            "4",
            json.dumps(extra),
        ],
        out,
    )
    assert_same_training(one_process_reference, out)
    a, b = (
        load_file(os.path.join(one_process_reference, PROJECTION_FILE)),
        load_file(os.path.join(out, PROJECTION_FILE)),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert not any(PROJECTION_NAME in k for k in load_file(os.path.join(out, "model.safetensors")))
    for x, y in zip(_losses(one_process_reference), _losses(out)):
        for key in ("hidden_loss", "attention_loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-4), key
    ref_eval, got_eval = _read(one_process_reference, "eval_results.json"), _read(out, "eval_results.json")
    for key in ("eval_hidden_loss", "eval_attention_loss"):
        assert ref_eval[key] == pytest.approx(got_eval[key], abs=1e-5), key


def test_several_teachers_refused(tmp_path):
    from distill.teacher.per_task import TaskTeachers
    from distill.trainer.intermediate import IntermediateLayerTransfer

    with pytest.raises(ValueError, match="several teachers"):
        make_trainer(
            tmp_path, tiny_llama(), [tiny_llama(seed=1), tiny_llama(seed=2)], lm_dataset(4), hidden_weight=1.0
        )
    args = DistillationConfig(output_dir=str(tmp_path), hidden_weight=1.0, report_to="none")
    per_task = TaskTeachers([tiny_bert(seed=1), tiny_bert(seed=2)], [(0, 3), (3, 3)])
    with pytest.raises(ValueError, match="one per task"):
        IntermediateLayerTransfer(args, get_task("seq-cls"), tiny_bert(num_labels=6), per_task)
