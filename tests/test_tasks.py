"""Sequence and image classification through DistillationTrainer; tokenizer and vocabulary checks."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import max_diff, tiny_llama, weights

from distill import DistillationConfig, DistillationTrainer
from distill.teacher import check_same_tokenizer
from distill.trainer.tasks import get_task, infer_task, make_collator


def tiny_bert(hidden=32, seed=0, num_labels=3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=32,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def tiny_vit(hidden=32, seed=0, num_labels=4):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    return ViTForImageClassification(
        ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=1,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.1,
        optim="sgd",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        alpha=0.5,
    )
    base.update(kw)
    return DistillationConfig(**base)


def cls_dataset(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_list(
        [
            {
                "input_ids": torch.randint(
                    1, 50, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g
                ).tolist(),
                "label": int(torch.randint(0, 3, (1,), generator=g)),
            }
            for _ in range(n)
        ]
    )


def image_dataset(n=16):
    g = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(n, 1, 16, 16, generator=g).numpy(),
            "labels": torch.randint(0, 4, (n,), generator=g).tolist(),
        }
    ).with_format("torch")


class _PadTokenizer:
    pad_token_id = 0

    def pad(self, features, **kwargs):
        from transformers.tokenization_utils_base import BatchEncoding

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        key = "label" if "label" in features[0] else "labels"
        out["labels"] = torch.tensor([f[key] for f in features])
        return BatchEncoding(out)


def test_infer_task():
    assert infer_task(tiny_llama()).name == "causal-lm"
    assert infer_task(tiny_bert()).name == "seq-cls"
    assert infer_task(tiny_vit()).name == "image-cls"


def test_sequence_classification_distills(tmp_path):
    student, teacher = tiny_bert(seed=0), tiny_bert(hidden=48, seed=1)
    before_t = weights(teacher)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args(tmp_path),
        train_dataset=cls_dataset(),
        data_collator=lambda feats: dict(_PadTokenizer().pad(feats)),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("kd_loss" in h and "ce_loss" in h for h in logs)
    assert max_diff(before_t, weights(teacher)) == 0.0
    metrics = trainer.evaluate(eval_dataset=cls_dataset(8, seed=3))
    assert "eval_kd_loss" in metrics and "eval_perplexity" not in metrics


def test_image_classification_distills(tmp_path):
    student, teacher = tiny_vit(seed=0), tiny_vit(hidden=48, seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args(tmp_path, remove_unused_columns=False),
        train_dataset=image_dataset(),
        data_collator=make_collator(get_task("image-cls")),
    )
    trainer.train()
    assert [h for h in trainer.state.log_history if "kd_loss" in h]


def test_classification_gradient_accumulation_is_exact(tmp_path):
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_bert(seed=0)
        DistillationTrainer(
            model=student,
            teacher_model=tiny_bert(hidden=48, seed=1),
            args=args(tmp_path / str(bs), per_device_train_batch_size=bs, gradient_accumulation_steps=ga),
            train_dataset=cls_dataset(32),
            data_collator=lambda feats: dict(_PadTokenizer().pad(feats)),
        ).train()
        results.append(weights(student))
    assert max_diff(*results) < 1e-5


def test_missing_labels_refused_before_training(tmp_path):
    data = Dataset.from_list([{"input_ids": [1, 2, 3]}] * 4)
    with pytest.raises(ValueError, match="no 'labels' column"):
        DistillationTrainer(
            model=tiny_bert(), teacher_model=tiny_bert(seed=1), args=args(tmp_path), train_dataset=data
        )


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_different_tokenizer_refused():
    a = _Tok({f"t{i}": i for i in range(64)})
    b = _Tok({**{f"t{i}": i for i in range(64)}, "t3": 5, "t5": 3})
    with pytest.raises(ValueError, match="different tokenizers"):
        check_same_tokenizer(a, b, tiny_llama(), tiny_llama())


def test_padded_vocabularies_are_sliced(tmp_path):
    tok = _Tok({f"t{i}": i for i in range(60)})
    student, teacher = tiny_llama(vocab=64), tiny_llama(hidden=48, vocab=80, seed=1)
    assert check_same_tokenizer(tok, tok, student, teacher) == 60
    with pytest.raises(ValueError, match="differ"):
        check_same_tokenizer(None, None, student, teacher)
    with pytest.raises(ValueError, match="rows"):
        check_same_tokenizer(_Tok({f"t{i}": i for i in range(70)}), None, student, teacher)
