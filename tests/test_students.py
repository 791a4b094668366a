"""Students made from a teacher's layers: exact copies, renumbered configs and caches, saved directories."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import tiny_llama, word_tokenizer
from torch import nn

from distill.students import init_student_from_teacher, resolve_layers, save_student_from_teacher


def tiny(model_type, layers=4, **kw):
    """A tiny randomly initialised model of one supported family, with dropout off."""
    import transformers

    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4)
    if model_type in ("llama", "qwen2", "qwen3"):
        config = transformers.AutoConfig.for_model(
            model_type,
            vocab_size=64,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            **common,
            **kw,
        )
        return transformers.AutoModelForCausalLM.from_config(config)
    if model_type == "bert":
        kw = {"vocab_size": 64, "num_labels": 3, **kw}
        config = transformers.BertConfig(
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **common,
            **kw,
        )
        return transformers.BertForSequenceClassification(config)
    kw = {"num_labels": 5, **kw}
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **common,
        **kw,
    )
    return transformers.ViTForImageClassification(config)


def inputs(model_type, seed=1):
    g = torch.Generator().manual_seed(seed)
    if model_type == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(3, 64, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding on the second row
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def by_hand(teacher, layers):
    """The teacher with its block list swapped for the chosen blocks, by module surgery (no state dicts)."""
    from distill.students.architectures import get_architecture

    model = copy.deepcopy(teacher)
    arch = get_architecture(model.config)
    parent_path, _, name = arch.blocks.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    blocks = getattr(parent, name)
    setattr(parent, name, nn.ModuleList([blocks[i] for i in layers]))
    model.config.num_hidden_layers = len(layers)
    model.config.use_cache = False  # the swapped blocks keep their old KV-cache slots (layer_idx)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    return model


FAMILIES = ["llama", "qwen2", "qwen3", "bert", "vit"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_all_layers_give_the_teachers_logits(model_type):
    teacher = tiny(model_type)
    student = init_student_from_teacher(teacher, [0, 1, 2, 3])
    batch = inputs(model_type)
    assert torch.equal(logits(student, batch), logits(teacher, batch))
    for (name, a), (_, b) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert a.data_ptr() != b.data_ptr(), f"{name} shares storage with the teacher"


@pytest.mark.parametrize("model_type", FAMILIES)
def test_chosen_layers_equal_the_teachers_blocks_run_by_hand(model_type):
    teacher = tiny(model_type)
    student = init_student_from_teacher(teacher, "0,2,3")
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 4
    batch = inputs(model_type)
    expected = logits(by_hand(teacher, [0, 2, 3]), batch)
    torch.testing.assert_close(logits(student, batch), expected, rtol=0, atol=1e-6)
    assert (logits(teacher, batch) - expected).abs().max() > 1e-4  # dropping a block changes the logits


def test_layer_types_and_kv_cache_are_renumbered():
    teacher = tiny("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student = init_student_from_teacher(teacher, [1, 2])
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1]
    # Token-by-token decoding through the KV cache equals one full forward pass.
    ids = inputs("llama")["input_ids"][:1]
    full = logits(student, {"input_ids": ids})
    with torch.no_grad():
        out = student(input_ids=ids[:, :5], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(5, ids.shape[1]):
            out = student(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert len(cache.layers) == 2
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_resolve_layers():
    assert resolve_layers("every_other", 6) == [0, 2, 4]
    assert resolve_layers("3", 6) == [0, 2, 4] == resolve_layers(3, 6)
    assert resolve_layers(4, 12) == [0, 3, 6, 9]
    assert resolve_layers("1,5", 6) == [1, 5] == resolve_layers([1, 5], 6)
    assert resolve_layers("3,", 6) == [3]
    for bad, match in [
        ("0,6", "out of range"),
        ("2,1", "increasing"),
        (0, "between 1"),
        ("x", "every_other"),
        ([], "at least one"),
        ("0,a", "integers"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_layers(bad, 6)


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="gpt2.*Supported: llama: llama"):
        init_student_from_teacher(model, [0])


def test_init_student_command_writes_a_model_directory(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.cli import main

    teacher = tiny_llama(layers=3)
    teacher.save_pretrained(tmp_path / "teacher")
    word_tokenizer().save_pretrained(tmp_path / "teacher")
    out = tmp_path / "student"
    assert (
        main(
            [
                "init-student",
                "--teacher",
                str(tmp_path / "teacher"),
                "--layers",
                "every_other",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "student_init.json").read_text())
    assert record["layers"] == [0, 2] and record["teacher_num_hidden_layers"] == 3
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    batch = {"input_ids": torch.tensor([[1, 5, 9, 11]])}
    torch.testing.assert_close(
        logits(student, batch), logits(by_hand(teacher, [0, 2]), batch), rtol=0, atol=1e-6
    )
    assert AutoTokenizer.from_pretrained(out).get_vocab() == word_tokenizer().get_vocab()
    # A second run does not overwrite silently.
    assert (
        main(
            [
                "init-student",
                "--teacher",
                str(tmp_path / "teacher"),
                "--layers",
                "1",
                "--output_dir",
                str(out),
            ]
        )
        == 2
    )


def test_image_processor_is_copied(tmp_path):
    from transformers import ViTImageProcessor

    teacher = tiny("vit", layers=2)
    teacher.save_pretrained(tmp_path / "t")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "t")
    save_student_from_teacher(str(tmp_path / "t"), "1", str(tmp_path / "s"))
    assert (tmp_path / "s" / "preprocessor_config.json").is_file()


@pytest.fixture(scope="module")
def seq_cls_teacher(tmp_path_factory):
    """An untrained 2-layer BERT for builtin:docstring-topics, saved with a small BPE tokenizer."""
    from distill.data.corpus import docstring_classification, train_bpe_tokenizer

    path = tmp_path_factory.mktemp("teacher") / "seq_cls"
    train = docstring_classification()["train"]
    tokenizer = train_bpe_tokenizer(train.select(range(200))["text"], vocab_size=300)
    names = train.features["label"].names
    model = tiny(
        "bert",
        layers=2,
        vocab_size=len(tokenizer),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


QUICK = [
    "--max_steps",
    "2",
    "--max_eval_samples",
    "16",
    "--max_test_samples",
    "16",
    "--max_train_samples",
    "64",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
    "--max_seq_length",
    "32",
]


def test_recipe_field_builds_the_student_from_teacher_layers(seq_cls_teacher, tmp_path):
    import yaml
    from transformers import AutoModelForSequenceClassification

    from distill.train import main as train_main

    with open("recipes/tiny/seq_cls.yaml") as f:
        recipe = yaml.safe_load(f)
    recipe.pop("model_config")
    recipe.update(
        init_from_teacher_layers=[1], teacher_model_name_or_path=seq_cls_teacher, learning_rate=0.0, alpha=0.0
    )
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "student"
    results = train_main(["--config", str(tmp_path / "r.yaml"), "--output_dir", str(out), *QUICK])
    assert "teacher_params" not in results  # alpha 0: the teacher only gave the weights and was not run
    trained = AutoModelForSequenceClassification.from_pretrained(out)
    expected = init_student_from_teacher(
        AutoModelForSequenceClassification.from_pretrained(seq_cls_teacher), [1]
    )
    assert trained.config.num_hidden_layers == 1
    for key, value in expected.state_dict().items():  # learning rate 0: still the copied teacher block
        assert torch.equal(trained.state_dict()[key], value), key


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--teacher_model_name_or_path", ""], "needs teacher_model_name_or_path"),
        (["--init_from_teacher_layers", "0,7"], "out of range"),
        (["--model_config", '{"model_type": "bert"}'], "one student source"),
    ],
)
def test_recipe_field_errors_before_compute(extra, match, seq_cls_teacher, tmp_path):
    from distill.train import main as train_main

    base = [
        "--task",
        "seq-cls",
        "--alpha",
        "0",
        "--teacher_model_name_or_path",
        seq_cls_teacher,
        "--init_from_teacher_layers",
        "0",
        "--output_dir",
        str(tmp_path / "x"),
        "--report_to",
        "none",
    ]
    with pytest.raises(ValueError, match=match):
        train_main(base + extra)
    assert not (tmp_path / "x").exists()
