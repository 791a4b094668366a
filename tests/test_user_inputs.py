"""Issue 19: a new user's own CSV, model folders and config keys give the right result or a clear error.

Labels follow the teacher's classes; config keys are checked; a teacher must do the run's task; a model
folder no run wrote is never overwritten.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from distill.data import DataArguments, build_datasets  # noqa: E402
from distill.train import main as train_main  # noqa: E402

# The teacher's classes are not in alphabetical order: a sorted numbering would scramble them.
TEACHER_ORDER = ["zeta", "alpha", "mid"]
BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
}
QUICK = ["--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--use_cpu", "true"]


def write_csv(path, labels, n=20):
    """Rows whose text names the class with a word of `helpers.word_tokenizer` (t3 zeta, t4 alpha...)."""
    word = {name: f"t{3 + i}" for i, name in enumerate(["zeta", "alpha", "mid", "omega"])}
    lines = ["text,label"] + [
        f"{word[label]} t{7 + i % 3} {word[label]},{label}" for i in range(n) for label in labels
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def word_tok():
    from helpers import word_tokenizer

    return word_tokenizer()


@pytest.fixture(scope="module")
def named_teacher(tmp_path_factory):
    """A BERT classifier trained on the CSV, then renumbered so that its classes are zeta, alpha, mid."""
    from helpers import word_tokenizer
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("labels")
    csv = write_csv(root / "train.csv", TEACHER_ORDER)
    word_tokenizer().save_pretrained(root / "tokenizer")
    out = str(root / "teacher_sorted")
    train_main(
        [
            "--task", "seq-cls", "--alpha", "0", "--model_config", json.dumps(BERT), "--data_files", csv,
            "--tokenizer_name_or_path", str(root / "tokenizer"), "--max_seq_length", "8", "--max_steps", "20",
            "--learning_rate", "1e-2", "--per_device_train_batch_size", "8", "--eval_strategy", "no",
            "--output_dir", out, *QUICK,
        ]
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(out)
    sorted_names = [model.config.id2label[i] for i in range(3)]
    assert sorted_names == sorted(TEACHER_ORDER)  # trained without a teacher: sorted order
    perm = [sorted_names.index(name) for name in TEACHER_ORDER]
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[perm].clone())
        model.classifier.bias.copy_(model.classifier.bias[perm].clone())
    model.config.id2label = dict(enumerate(TEACHER_ORDER))
    model.config.label2id = {n: i for i, n in enumerate(TEACHER_ORDER)}
    teacher = str(root / "teacher")
    model.save_pretrained(teacher)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(out).save_pretrained(teacher)
    return teacher, csv, root


# ---- 1. labels follow the teacher ------------------------------------------------------------
def test_labels_follow_a_teacher_whose_order_is_not_alphabetical(named_teacher, tmp_path):
    teacher, csv, _ = named_teacher
    results = train_main(
        [
            "--task", "seq-cls", "--teacher_model_name_or_path", teacher, "--alpha", "0.5",
            "--model_config", json.dumps(BERT), "--data_files", csv, "--max_seq_length", "8",
            "--max_steps", "2", "--eval_strategy", "no", "--output_dir", str(tmp_path / "student"), *QUICK,
        ]
    )  # fmt: skip
    # the teacher is right on this data; with labels numbered alphabetically it scored about 0.0
    assert results["eval_teacher_accuracy"] >= 0.9
    with open(tmp_path / "student" / "config.json") as f:
        config = json.load(f)
    assert [config["id2label"][str(i)] for i in range(3)] == TEACHER_ORDER


def test_data_labels_as_names_or_ids_are_mapped_to_the_teacher(word_tok, tmp_path):
    space = dict(enumerate(TEACHER_ORDER))
    names = build_datasets(
        DataArguments(
            data_files=write_csv(tmp_path / "n.csv", ["mid", "alpha", "zeta"], n=3), eval_split=None
        ),
        "seq-cls",
        word_tok,
        label_space=space,
    )
    assert names.id2label == space
    assert names.train["labels"][:3] == [2, 1, 0]  # mid, alpha, zeta in the teacher's numbering
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n" for i in range(6)))
    bundle = build_datasets(
        DataArguments(data_files=str(ids), eval_split=None), "seq-cls", word_tok, label_space=space
    )
    assert bundle.train["labels"] == [0, 1, 2, 0, 1, 2] and bundle.id2label == space


@pytest.mark.parametrize(
    "labels, message",
    [
        (["zeta", "alpha", "omega"], r"'omega'.*not classes of the teacher.*\['zeta', 'alpha', 'mid'\]"),
        (["zeta", "alpha"], r"2 classes.*teacher's 3 classes.*missing.*\['mid'\]"),
    ],
)
def test_unknown_labels_and_other_class_counts_are_refused(word_tok, tmp_path, labels, message):
    args = DataArguments(data_files=write_csv(tmp_path / "d.csv", labels, n=2), eval_split=None)
    with pytest.raises(ValueError, match=message):
        build_datasets(args, "seq-cls", word_tok, label_space=dict(enumerate(TEACHER_ORDER)))


def test_ids_out_of_the_teachers_range_are_refused(word_tok, tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"text": "t5", "label": i}) + "\n" for i in range(6)))
    with pytest.raises(ValueError, match=r"\[3, 4, 5\] are not classes of the teacher"):
        build_datasets(
            DataArguments(data_files=str(path), eval_split=None),
            "seq-cls",
            word_tok,
            label_space=dict(enumerate(TEACHER_ORDER)),
        )


def test_two_class_csv_with_a_three_class_teacher_fails_before_training(named_teacher, tmp_path):
    teacher, _, _ = named_teacher
    csv = write_csv(tmp_path / "two.csv", ["zeta", "alpha"], n=4)
    with pytest.raises(ValueError, match=r"missing from the train/validation data: \['mid'\]"):
        train_main(
            [
                "--task", "seq-cls", "--teacher_model_name_or_path", teacher, "--model_config",
                json.dumps(BERT), "--data_files", csv, "--max_steps", "1", "--output_dir", str(tmp_path / "o"),
                *QUICK,
            ]
        )  # fmt: skip
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_without_a_teacher_class_names_set_the_order(word_tok, tmp_path):
    csv = write_csv(tmp_path / "d.csv", ["mid", "zeta", "alpha"], n=2)
    plain = build_datasets(DataArguments(data_files=csv, eval_split=None), "seq-cls", word_tok)
    assert plain.id2label == {0: "alpha", 1: "mid", 2: "zeta"}  # sorted: does not depend on the seed
    ordered = build_datasets(
        DataArguments(data_files=csv, eval_split=None, class_names=TEACHER_ORDER), "seq-cls", word_tok
    )
    assert ordered.id2label == dict(enumerate(TEACHER_ORDER)) and ordered.train["labels"][:3] == [2, 0, 1]
    with pytest.raises(ValueError, match=r"'mid'.*not classes of the class_names"):
        build_datasets(
            DataArguments(data_files=csv, eval_split=None, class_names=["zeta", "alpha"]), "seq-cls", word_tok
        )


# ---- 3. teacher and student do the same task -------------------------------------------------
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}


def test_a_classifier_teacher_for_a_causal_lm_student_is_refused(named_teacher, tmp_path):
    teacher, _, root = named_teacher
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"BertForSequenceClassification \(seq-cls\).*task is causal-lm"):
        train_main(
            [
                "--task", "causal-lm", "--teacher_model_name_or_path", teacher, "--model_config",
                json.dumps(LLAMA), "--dataset_name", "builtin:python-docs", "--max_steps", "1",
                "--output_dir", str(out), *QUICK,
            ]
        )  # fmt: skip
    assert not out.exists()


def test_a_head_less_teacher_is_refused_but_a_head_less_student_is_not(named_teacher, tmp_path):
    from distill.teacher.loading import check_model_task

    config = {"architectures": ["BertModel"]}
    with pytest.raises(ValueError, match=r"BertModel \(no seq-cls head\).*freshly initialised head"):
        check_model_task(config, "seq-cls", "teacher_model_name_or_path", "x")
    check_model_task(config, "seq-cls", "model_name_or_path", "x", teacher=False)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM \(causal-lm\).*task is seq-cls"):
        check_model_task(
            {"architectures": ["LlamaForCausalLM"]}, "seq-cls", "model_name_or_path", "x", teacher=False
        )


# ---- 2. every config key is checked ------------------------------------------------------------
def test_a_typo_in_model_config_is_refused_before_compute(tmp_path):
    out = tmp_path / "o"
    config = {**LLAMA, "hiden_size": 96}
    with pytest.raises(
        ValueError, match=r"model_config: unknown key\(s\) 'hiden_size' \(did you mean 'hidden_size'\?\)"
    ):
        train_main(
            [
                "--task", "causal-lm", "--alpha", "0", "--model_config", json.dumps(config),
                "--dataset_name", "builtin:python-docs", "--max_steps", "1", "--output_dir", str(out), *QUICK,
            ]
        )  # fmt: skip
    assert not out.exists()


def test_model_config_keys_known_to_the_config_class_pass():
    from distill.students.model_config import check_model_config_keys, parse_model_config

    check_model_config_keys({"model_type": "gpt2", "n_embd": 64, "hidden_size": 64, "num_labels": 3})
    check_model_config_keys(
        {**LLAMA, "rope_theta": 1e4, "tie_word_embeddings": True, "attn_implementation": "eager"}
    )
    with pytest.raises(ValueError, match=r"model_type='lama'.*did you mean 'llama'"):
        check_model_config_keys({"model_type": "lama"})
    # a config.json transformers wrote is taken as it is
    assert parse_model_config({**LLAMA, "transformers_version": "4.0", "old_key": 1})["old_key"] == 1


def test_a_typo_in_the_tune_search_space_model_keys_is_refused():
    from distill.config import DistillationConfig
    from distill.tune.search import parse_search_space

    args = DistillationConfig(output_dir="unused", alpha=0.5, report_to="none")
    with pytest.raises(ValueError, match=r"'hiden_size' is not a field.*did you mean 'model.hidden_size'"):
        parse_search_space({"model.hiden_size": {"choices": [32, 64]}}, args, dict(LLAMA))
    assert parse_search_space({"model.hidden_size": {"choices": [32, 64]}}, args, dict(LLAMA))


@pytest.mark.parametrize(
    "block, message",
    [
        (
            {"ladder": {"base_config": {"model_type": "llama", "tie_word_embedings": True}}},
            "did you mean 'tie_word_embeddings'",
        ),
        ({"train": {"learning_rat": 5e-3}}, r"train.learning_rat \(did you mean 'train.learning_rate'\?\)"),
        ({"data": {"block_sise": 64}}, r"data.block_sise \(did you mean 'data.block_size'\?\)"),
    ],
)
def test_scaledown_run_checks_base_config_and_train_keys(tmp_path, block, message):
    import yaml

    from scaledown.config import load_pipeline_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(block))
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(str(path))


def test_distill_train_does_not_take_an_abbreviated_flag(tmp_path):
    from distill.train import parse_args

    with pytest.raises(ValueError, match=r"'--learning_rat'.*did you mean '--learning_rate'"):
        parse_args(["--task", "causal-lm", "--model_config", json.dumps(LLAMA), "--learning_rat", "5e-3",
                    "--output_dir", str(tmp_path)])  # fmt: skip


# ---- 4. never overwrite a model that no run wrote ----------------------------------------------
def _foreign_model_dir(path):
    """A model folder as `distill prune` leaves it: a model and pruning.json, no run fingerprint."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = {k: v for k, v in BERT.items() if k != "model_type"}
    BertForSequenceClassification(BertConfig(vocab_size=64, num_labels=3, **cfg)).save_pretrained(path)
    (path / "pruning.json").write_text("{}")
    return path


def test_distill_train_refuses_a_model_folder_no_run_wrote(named_teacher, tmp_path):
    teacher, csv, root = named_teacher
    out = _foreign_model_dir(tmp_path / "pruned")
    before = (out / "model.safetensors").read_bytes()
    argv = [
        "--task", "seq-cls", "--alpha", "0", "--model_config", json.dumps(BERT), "--data_files", csv,
        "--tokenizer_name_or_path", teacher, "--max_seq_length", "8", "--max_steps", "1",
        "--eval_strategy", "no", "--output_dir", str(out), *QUICK,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a model \(config.json, model.safetensors, pruning.json\) that no "
                       r"`distill train` run wrote.*--overwrite_output_dir"):  # fmt: skip
        train_main(argv)
    assert (out / "model.safetensors").read_bytes() == before
    train_main(argv + ["--overwrite"])
    assert not (out / "pruning.json").exists() and (out / "run_fingerprint.json").exists()
    assert train_main(argv) is not None  # its own finished run: reused, not refused


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_export_and_quantize_refuse_a_folder_they_did_not_write(tmp_path, command):
    from deploy.export import export
    from deploy.quantize import quantize

    out = _foreign_model_dir(tmp_path / "someone_elses")
    run = (lambda **kw: export("unused_model", str(out), **kw)) if command == "export" else (
        lambda **kw: quantize("unused_model", "torchao-int8", str(out), **kw)
    )  # fmt: skip
    with pytest.raises(ValueError, match=rf"no `scaledown {command}` run wrote.*--overwrite_output_dir"):
        run()
    assert (out / "pruning.json").exists()
    with pytest.raises(
        (ValueError, FileNotFoundError), match="unused_model"
    ):  # let through: fails on the model
        run(overwrite=True)
