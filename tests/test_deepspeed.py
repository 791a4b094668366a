"""DeepSpeed ZeRO-2/3 on CPU (gloo): 2 processes train like 1 process with twice the batch, the
teacher is placed right (its own engine: stage 0 under ZeRO-2, sharded under ZeRO-3), and saving
under ZeRO-3 gathers full student weights. Also checks the files in accelerate_configs/.

The first DeepSpeed run on a machine JIT-builds deepspeed_shm_comm (about 20 s, more when busy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from distill.teacher import teacher_deepspeed_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(ROOT, "accelerate_configs")
SCRIPT = os.path.join(HERE, "zero_train_script.py")
BIN = os.path.dirname(sys.executable)
YAMLS = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def _run(cmd, out, timeout=300):
    """Run a launcher; on failure show the tail of its output (rank tracebacks)."""
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), timeout=timeout, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return out


def _losses(out):
    with open(os.path.join(out, "trainer_state.json")) as f:
        return [h for h in json.load(f)["log_history"] if "loss" in h]


def _read(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def assert_same_training(reference, other):
    """Loss curves within 1e-4, same evaluation, same final student weights (reloaded from disk)."""
    from transformers import LlamaForCausalLM

    ref, got = _losses(reference), _losses(other)
    assert len(ref) == len(got) == 3
    for x, y in zip(ref, got):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-4), key
    ref_eval, got_eval = _read(reference, "eval_results.json"), _read(other, "eval_results.json")
    for key in ("eval_loss", "eval_kd_loss", "eval_teacher_loss"):
        assert ref_eval[key] == pytest.approx(got_eval[key], abs=1e-4), key
    a = LlamaForCausalLM.from_pretrained(reference, use_safetensors=True).state_dict()
    b = LlamaForCausalLM.from_pretrained(other, use_safetensors=True).state_dict()
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def assert_frozen_own_engine(facts, teacher_stage, student_stage):
    assert facts["world_size"] == 2
    assert facts["teacher_type"] == facts["student_wrapper"] == "DeepSpeedEngine"
    assert not facts["teacher_engine_is_student_engine"]
    assert facts["module_type"] == "LlamaForCausalLM"
    assert (facts["teacher_zero_stage"], facts["student_zero_stage"]) == (teacher_stage, student_stage)
    assert not facts["module_training"] and not facts["teacher_training"]
    assert not facts["any_trainable"] and not facts["any_grad"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, no DeepSpeed, per-device batch 8."""
    out = str(tmp_path_factory.mktemp("single") / "out")
    return _run([sys.executable, SCRIPT, out, "8"], out)


@pytest.mark.slow
def test_zero2_two_processes_match_one(tmp_path, reference):
    """torchrun + TrainingArguments(deepspeed=zero2.json); teacher passed as a model."""
    out = str(tmp_path / "zero2")
    extra = json.dumps({"deepspeed": os.path.join(CONFIGS, "zero2.json")})
    cmd = [
        os.path.join(BIN, "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29551",
        SCRIPT,
        out,
        "4",
        extra,
    ]
    _run(cmd, out)
    assert_same_training(reference, out)
    for rank in (0, 1):
        assert_frozen_own_engine(_read(out, f"placement-{rank}.json"), teacher_stage=0, student_stage=2)


@pytest.mark.slow
def test_zero2_fused_lm_head_matches_one(tmp_path, reference):
    """kd_fused_lm_head under ZeRO-2: the fused loss's head gradient reaches DeepSpeed's reducer."""
    out = str(tmp_path / "zero2_fused")
    extra = json.dumps({"deepspeed": os.path.join(CONFIGS, "zero2.json"), "kd_fused_lm_head": True})
    cmd = [
        os.path.join(BIN, "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29553",
        SCRIPT,
        out,
        "4",
        extra,
    ]
    _run(cmd, out)
    assert_same_training(reference, out)


@pytest.mark.slow
def test_zero3_two_processes_match_one(tmp_path, reference):
    """accelerate launch --config_file zero3.yaml, 2 x 2 micro-batches x 2 accumulation steps; the
    teacher is loaded by the trainer from a directory, so zero.Init must partition it at load."""
    sys.path.insert(0, HERE)
    from helpers import tiny_llama

    teacher_dir = str(tmp_path / "teacher")
    tiny_llama(hidden=48, seed=1).save_pretrained(teacher_dir)  # the reference's teacher, on disk
    out = str(tmp_path / "zero3")
    extra = json.dumps({"teacher_path": teacher_dir, "gradient_accumulation_steps": 2, "nan_shard": True})
    cmd = [
        os.path.join(BIN, "accelerate"),
        "launch",
        "--config_file",
        os.path.join(CONFIGS, "zero3.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "29552",
        SCRIPT,
        out,
        "2",
        extra,
    ]
    _run(cmd, out)
    # stage3_gather_16bit_weights_on_model_save: a full model.safetensors that from_pretrained reloads.
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert_same_training(reference, out)
    for rank in (0, 1):
        facts = _read(out, f"placement-{rank}.json")
        assert_frozen_own_engine(facts, teacher_stage=3, student_stage=3)
        assert facts["partitioned_at_load"] and facts["local_numel_at_load"] == 0
        assert facts["teacher_local_numel"] * 2 == facts["teacher_full_numel"]
        assert facts["teacher_sharded_params"] > 0 and facts["teacher_params_released"]
    # After training, rank 1 put a NaN into its own shard of the embedding: both ranks refuse to save (the
    # parameters themselves are empty under ZeRO-3, so only the shards show it), rank 1 names the parameter.
    refusals = [_read(out, f"placement-{rank}.json")["nan_save"] for rank in (0, 1)]
    assert all(r.startswith("Refusing to save a checkpoint") for r in refusals), refusals
    assert "another process" in refusals[0] and "embed_tokens.weight" in refusals[1]
    assert not os.path.exists(os.path.join(out, "checkpoint-99"))


# ---- the configuration files (fast) ----------------------------------------------------------


def _split(path):
    with open(path) as f:
        text = f.read()
    head, marker, block = text.partition("# ---- distributed block")
    return text, head, marker, block


@pytest.mark.parametrize("name", YAMLS)
def test_accelerate_config_parses_and_starts_with_its_command(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = os.path.join(CONFIGS, name)
    text, head, marker, _ = _split(path)
    assert text.startswith("# ") and f"accelerate launch --config_file accelerate_configs/{name}" in head
    assert marker, "the distributed block is marked"
    config = ClusterConfig.from_yaml_file(path)
    assert "num_processes" not in yaml.safe_load(text), "the process count belongs on the command line"
    if config.distributed_type.value == "DEEPSPEED":
        assert "mixed_precision" not in yaml.safe_load(text)  # accelerate refuses it with a config file
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        assert os.path.isfile(os.path.join(ROOT, ds_file))
    if name == "cpu_ddp.yaml":  # MULTI_CPU would not fan out without mpirun
        assert config.distributed_type.value == "MULTI_GPU" and config.use_cpu
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2


def test_accelerate_configs_differ_only_in_the_distributed_block():
    heads = {name: _split(os.path.join(CONFIGS, name)) for name in YAMLS}
    shared = {
        "\n".join(ln for ln in head.splitlines() if not ln.startswith("#"))
        for _, head, _, _ in heads.values()
    }
    assert len(shared) == 1, shared
    assert {"ddp.yaml", "cpu_ddp.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml", "multi_node.yaml"} <= set(
        YAMLS
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_uses_auto_where_the_trainer_fills(stage):
    with open(os.path.join(CONFIGS, f"zero{stage}.json")) as f:
        config = json.load(f)
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    assert config["zero_optimization"]["stage"] == stage
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_teacher_deepspeed_config_fills_every_auto():
    from types import SimpleNamespace

    from transformers import LlamaConfig

    args = SimpleNamespace(
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        world_size=8,
        bf16=True,
        bf16_full_eval=False,
        fp16=False,
        fp16_full_eval=False,
    )
    teacher = SimpleNamespace(config=LlamaConfig(hidden_size=64))
    with open(os.path.join(CONFIGS, "zero3.json")) as f:
        student = json.load(f)
    student["optimizer"] = {"type": "AdamW", "params": {"lr": "auto"}}
    student["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    config = teacher_deepspeed_config(student, teacher, args)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and "offload_optimizer" not in zero
    assert zero["reduce_bucket_size"] == 64 * 64 and zero["stage3_param_persistence_threshold"] == 640
    assert "optimizer" not in config and "gradient_clipping" not in config
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["train_batch_size"],
    ) == (4, 2, 64)
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert student["zero_optimization"]["reduce_bucket_size"] == "auto", "the student's config is untouched"

    with open(os.path.join(CONFIGS, "zero2.json")) as f:
        assert teacher_deepspeed_config(json.load(f), teacher, args)["zero_optimization"] == {"stage": 0}
    with pytest.raises(ValueError, match="sub_group_size"):
        teacher_deepspeed_config(
            {**student, "zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, teacher, args
        )
