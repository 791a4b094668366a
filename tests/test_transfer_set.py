"""The unlabelled transfer set (distill.data.transfer): loading and flagging, the KD-only loss on its rows,
and the checks of the recipe fields."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from distill import DistillationConfig, DistillationTrainer
from distill.data import DataArguments, build_datasets
from distill.data.transfer import TRANSFER_KEY
from distill.losses import distillation_loss
from distill.train import main as train_main

TEXTS = ["alpha beta gamma", "beta beta delta", "gamma alpha", "delta delta alpha beta", "beta gamma"]


def word_tok():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {
        w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "alpha", "beta", "gamma", "delta"])
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def bert(seed, num_labels=3):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


@pytest.fixture
def files(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    train = write("train.jsonl", [{"text": t, "label": i % 3} for i, t in enumerate(TEXTS)])
    val = write("val.jsonl", [{"text": t, "label": i % 3} for i, t in enumerate(TEXTS[:3])])
    extra = write("extra.jsonl", [{"text": t} for t in TEXTS[::-1] * 2])
    return {"train": train, "validation": val, "extra": extra}


def test_transfer_split_rows_are_appended_flagged_and_capped(files):
    args = DataArguments(
        dataset_name="json",
        data_files={k: files[k] for k in ("train", "validation", "extra")},
        transfer_split="extra",
        max_transfer_samples=7,
        max_seq_length=8,
    )
    bundle = build_datasets(args, "seq-cls", word_tok())
    assert len(bundle.train) == len(TEXTS) + 7
    assert bundle.train[TRANSFER_KEY] == [False] * len(TEXTS) + [True] * 7
    assert bundle.train["labels"][: len(TEXTS)] == [i % 3 for i in range(len(TEXTS))]
    assert TRANSFER_KEY not in bundle.eval.column_names
    # from other files, without a label column: the same rows
    other = DataArguments(
        dataset_name="json",
        data_files={k: files[k] for k in ("train", "validation")},
        transfer_data_files=files["extra"],
        max_seq_length=8,
    )
    assert other.transfer_dataset_name == "json"
    rows = build_datasets(other, "seq-cls", word_tok()).train
    assert sum(rows[TRANSFER_KEY]) == 2 * len(TEXTS)
    assert rows["input_ids"][len(TEXTS)] == word_tok()(TEXTS[-1])["input_ids"]


def _loss(inputs, teacher, student, alpha=0.5, temperature=2.0):
    args = DistillationConfig(
        output_dir="/tmp/unused-transfer",
        alpha=alpha,
        temperature=temperature,
        task="seq-cls",
        report_to="none",
        use_cpu=True,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    student.train()
    return trainer.compute_loss(student, dict(inputs), num_items_in_batch=torch.tensor(len(inputs["labels"])))


def test_transfer_rows_get_the_distillation_term_alone():
    teacher, student = bert(0).eval(), bert(1)
    ids = torch.tensor([[2, 4, 5, 3], [2, 6, 3, 0], [2, 7, 7, 3], [2, 5, 6, 3]])
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": torch.tensor([0, 2, 1, 0]),
        TRANSFER_KEY: torch.tensor([False, True, False, True]),
    }
    loss = _loss(batch, teacher, student)
    # float64 reference: alpha KD + (1 - alpha) CE on labelled rows, KD alone on transfer rows, / all rows
    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=batch["attention_mask"]).logits.double()
        t = teacher(input_ids=ids, attention_mask=batch["attention_mask"]).logits.double()
    kd = 4.0 * torch.nn.functional.kl_div(
        torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1), log_target=True, reduction="none"
    ).sum(-1)
    ce = torch.nn.functional.cross_entropy(s, batch["labels"], reduction="none")
    flag = batch[TRANSFER_KEY]
    ref = (torch.where(flag, kd, 0.5 * kd + 0.5 * ce)).sum() / 4
    assert abs(float(loss) - float(ref)) < 1e-5
    # the placeholder labels of transfer rows are never read; labelled rows' labels are
    relabelled = dict(batch, labels=torch.tensor([0, 0, 1, 2]))
    assert abs(float(_loss(relabelled, teacher, student)) - float(loss)) < 1e-6
    changed = dict(batch, labels=torch.tensor([1, 2, 1, 0]))
    assert abs(float(_loss(changed, teacher, student)) - float(loss)) > 1e-4
    # the same as distillation_loss over the labelled rows plus alpha=1 over the transfer rows
    keep = ~flag
    a = distillation_loss(
        s[keep], t[keep], batch["labels"][keep], alpha=0.5, temperature=2.0, num_items_in_batch=4
    )
    b = distillation_loss(s[flag], t[flag], None, alpha=1.0, temperature=2.0, num_items_in_batch=4)
    assert abs(float(a.loss + b.loss) - float(ref)) < 1e-9


def test_transfer_set_end_to_end_and_checks(tmp_path, files):
    teacher_dir = tmp_path / "teacher"
    bert(0).save_pretrained(teacher_dir)
    word_tok().save_pretrained(teacher_dir)
    common = [
        "--task",
        "seq-cls",
        "--dataset_name",
        "json",
        "--data_files",
        json.dumps({k: files[k] for k in ("train", "validation")}),
        "--transfer_data_files",
        files["extra"],
        "--max_seq_length",
        "8",
        "--teacher_model_name_or_path",
        str(teacher_dir),
        "--model_name_or_path",
        str(teacher_dir),
        "--per_device_train_batch_size",
        "5",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
    ]
    out = tmp_path / "student"
    results = train_main([*common, "--alpha", "0.5", "--max_steps", "3", "--output_dir", str(out)])
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("kd_loss" in h for h in logs) and "eval_accuracy" in results
    with pytest.raises(ValueError, match="alpha > 0"):
        train_main([*common, "--alpha", "0", "--max_steps", "1", "--output_dir", str(tmp_path / "a0")])
    with pytest.raises(ValueError, match="max_transfer_samples"):
        DataArguments(dataset_name="builtin:docstring-topics", max_transfer_samples=3)
    with pytest.raises(ValueError, match="streaming"):
        DataArguments(dataset_name="builtin:docstring-topics", transfer_split="train", streaming=True)
    with pytest.raises(FileNotFoundError, match="transfer_data_files"):
        DataArguments(
            dataset_name="builtin:docstring-topics", transfer_data_files=str(tmp_path / "nope.jsonl")
        )
    with pytest.raises(ValueError, match="seq-cls only"):
        build_datasets(
            DataArguments(dataset_name="builtin:python-docs", transfer_split="train"), "causal-lm", word_tok()
        )


def test_builtin_docstring_transfer_is_unlabelled_and_outside_every_labelled_split():
    from distill.data.corpus import docstring_classification
    from distill.data.docstring_transfer import TRANSFER_DOCS, docstring_transfer

    transfer = docstring_transfer()["train"]
    assert transfer.column_names == ["text", "doc_id"] and 1000 < len(transfer) <= TRANSFER_DOCS
    labelled = {i for split in docstring_classification().values() for i in split["doc_id"]}
    assert not labelled & set(transfer["doc_id"])
    assert list(docstring_transfer()["train"]["doc_id"]) == list(transfer["doc_id"])  # deterministic
