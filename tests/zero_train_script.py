"""Run by tests/test_deepspeed.py and tests/test_multinode.py under a launcher (and once in-process
for the 1-process reference): tests/ddp_train_script.py plus a record of where the teacher ended up.

Usage: python zero_train_script.py OUTPUT_DIR PER_DEVICE_BATCH [extra JSON]

The extra JSON holds DistillationConfig fields (e.g. ``{"deepspeed": "accelerate_configs/zero3.json"}``)
(``ddp_find_unused_parameters`` defaults to false here; ``null`` leaves it to the Trainer), optionally
``untied_student: true`` (a student whose LM head is not tied to its embeddings), and optionally
``teacher_path``: a saved teacher directory, loaded by the trainer itself (so under
ZeRO-3 it must come out of ``from_pretrained`` already partitioned by ``deepspeed.zero.Init``),
optionally ``nan_shard: true``: at the end, rank 1 puts a NaN into its own shard of the embedding
and tries to save a checkpoint; ``placement-<rank>.json`` records the refusal (``nan_save``), and
optionally ``ensemble: true``: two teachers (the usual one and a second), combined by their mean.
With ``attention_weight > 0`` the models use eager attention; with a hidden-state projection, rank 0
also writes it to OUTPUT_DIR/hidden_projection.safetensors.
Each rank writes ``placement-<rank>.json`` into OUTPUT_DIR; rank 0 also ``eval_results.json``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from helpers import lm_dataset, tiny_llama  # noqa: E402

import distill.trainer.distillation_trainer as trainer_module  # noqa: E402
from distill import DistillationConfig, DistillationTrainer  # noqa: E402
from distill.trainer.tasks import CausalLMCollator  # noqa: E402

_AT_LOAD = {}


def _recording_load_teacher(path, task, args):
    """`load_teacher`, noting whether the weights were already ZeRO-3 partitioned when it returned."""
    model, tokenizer = _original_load_teacher(path, task, args)
    params = list(model.parameters())
    _AT_LOAD["partitioned_at_load"] = all(hasattr(p, "ds_id") for p in params)
    _AT_LOAD["local_numel_at_load"] = sum(p.numel() for p in params)
    return model, tokenizer


_original_load_teacher = trainer_module.load_teacher
trainer_module.load_teacher = _recording_load_teacher


def placement(trainer) -> dict:
    """Facts about the placed teacher, for the test to assert on."""
    teacher = trainer.teacher
    module = getattr(teacher, "module", teacher)
    params = list(module.parameters())
    facts = {
        "teacher_type": type(teacher).__name__,
        "module_type": type(module).__name__,
        "teacher_training": bool(teacher.training),
        "module_training": bool(module.training),
        "any_trainable": any(p.requires_grad for p in params),
        "any_grad": any(p.grad is not None for p in params),
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "world_size": trainer.args.world_size,
        **_AT_LOAD,
    }
    if hasattr(teacher, "zero_optimization_stage"):
        facts["teacher_zero_stage"] = teacher.zero_optimization_stage()
        facts["student_zero_stage"] = trainer.model_wrapped.zero_optimization_stage()
        facts["teacher_engine_is_student_engine"] = teacher is trainer.model_wrapped
    if params and hasattr(params[0], "ds_id"):
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        facts["teacher_full_numel"] = sum(p.ds_numel for p in params)
        facts["teacher_local_numel"] = sum(p.ds_tensor.numel() for p in params)
        # Gathered only inside the teacher's forward and released afterwards (tiny "persistent"
        # parameters, below stage3_param_persistence_threshold, stay whole by design).
        sharded = [p for p in params if not p.ds_persist]
        facts["teacher_sharded_params"] = len(sharded)
        facts["teacher_params_released"] = all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE for p in sharded)
    return facts


def nan_save(trainer, out) -> None:
    """Rank 1 poisons one element of its ZeRO-3 shard of the embedding; every rank tries to save a checkpoint
    and records what happened in placement-<rank>.json (``nan_save``)."""
    param = trainer.model.get_input_embeddings().weight
    if trainer.args.process_index == 1:
        with torch.no_grad():
            param.ds_tensor[0] = float("nan")  # element 0 of rank 1's shard is a real weight, not padding
    trainer.state.global_step = 99
    try:
        trainer._save_checkpoint(trainer.model_wrapped, None)
        result = "saved"
    except FloatingPointError as e:
        result = str(e)
    path = os.path.join(out, f"placement-{trainer.args.process_index}.json")
    with open(path) as f:
        facts = json.load(f)
    with open(path, "w") as f:
        json.dump({**facts, "nan_save": result}, f, indent=1)


def main():
    out, batch = sys.argv[1], int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    teacher = extra.pop("teacher_path", None)
    nan_shard = extra.pop("nan_shard", False)
    if extra.pop("ensemble", False):
        teacher = [tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=2)]
    student = tiny_llama(seed=0)
    if extra.pop("untied_student", False):  # an LM head that the forward never touches (kd_fused_lm_head)
        student.config.tie_word_embeddings = False
        student.lm_head.weight = torch.nn.Parameter(student.lm_head.weight.detach().clone())
    extra.setdefault("ddp_find_unused_parameters", False)
    if extra.get("attention_weight", 0) > 0:  # attention transfer needs the probabilities: eager attention
        for model in [student] + (teacher if isinstance(teacher, list) else []):
            model.set_attn_implementation("eager")
    torch.set_num_threads(1)
    args = DistillationConfig(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        per_device_eval_batch_size=4,
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    if teacher is None:
        teacher = tiny_llama(hidden=48, seed=1)
        if args.attention_weight > 0:
            teacher.set_attn_implementation("eager")
    from helpers import word_tokenizer

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(48),
        eval_dataset=lm_dataset(16, seed=1),  # 16 = 2 x 2 x 4: no padded rows
        data_collator=CausalLMCollator(pad_token_id=0),
        processing_class=word_tokenizer() if args.lmbda > 0 else None,  # on-policy steps stop at its eos
    )
    trainer.train()
    trainer.save_metrics("eval", trainer.evaluate())  # the teacher's forward in prediction_step too
    trainer.save_model()
    trainer.save_state()
    projection = getattr(trainer._intermediate, "projection", None)  # hidden_weight > 0, different widths
    if projection is not None and trainer.is_world_process_zero():
        from distill.trainer.intermediate import save_projection

        save_projection(projection.state_dict(), out)
    with open(os.path.join(out, f"placement-{args.process_index}.json"), "w") as f:
        facts = placement(trainer)
        if hasattr(trainer.teacher, "members"):  # several teachers: the facts of each, placed alone
            ensemble = trainer.teacher
            facts["members"] = []
            for member in ensemble.members:
                trainer.teacher = member
                facts["members"].append(placement(trainer))
            trainer.teacher = ensemble
        json.dump(facts, f, indent=1)
    if nan_shard:
        nan_save(trainer, out)
    if torch.distributed.is_initialized():
        from distill.cli import _finish_distributed

        _finish_distributed()


if __name__ == "__main__":
    main()
