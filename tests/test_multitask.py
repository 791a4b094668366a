"""Multi-task distillation: recipe checks, the mixed-batch loss against float64 numpy, exactness under
accumulation, per-task metrics and their averages."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import max_diff, weights
from test_losses import _log_softmax, _np

from distill import DistillationConfig
from distill.data import DataArguments
from distill.data.multitask import parse_tasks
from distill.losses import distillation_loss
from distill.teacher.per_task import TaskTeachers, mask_to_tasks
from distill.trainer.multitask import MultiTaskDistillationTrainer

RANGES = [(0, 3), (3, 2)]


# ---- the recipe field ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tasks, match",
    [
        ([{"name": "a", "teachr": "x"}], "unknown field.*'teachr'.*did you mean 'teacher'"),
        ([{"name": "a"}, {"name": "a"}], "used more than once"),
        ([{"name": "a", "weight": -1}, {"name": "b"}], "non-negative"),
        ([{"name": "a", "weight": 0}, {"name": "b", "weight": 0}], "positive sum"),
        ([{"name": "eval loss"}], "must start with a letter"),
        ([{"dataset_name": "builtin:docstring-kind"}], "at least a name"),
        ([], "list of task entries"),
    ],
)
def test_bad_tasks_are_refused_when_parsed(tasks, match):
    with pytest.raises(ValueError, match=match):
        DataArguments(tasks=tasks)


def test_tasks_without_a_teacher_are_refused_when_distilling():
    with pytest.raises(ValueError, match="no teacher"):
        parse_tasks([{"name": "a", "teacher": "t"}, {"name": "b"}])
    assert [
        t.name for t in parse_tasks('[{"name": "a"}, {"name": "b", "weight": 2}]', needs_teacher=False)
    ] == ["a", "b"]


# ---- the loss -----------------------------------------------------------------------------------------
class FixedTeacher(torch.nn.Module):
    """A teacher whose logits are a fixed function of input_ids (so rows can be checked)."""

    def __init__(self, num_labels, seed):
        super().__init__()
        self.table = torch.nn.Parameter(
            torch.randn(50, num_labels, generator=torch.Generator().manual_seed(seed))
        )
        self.config = SimpleNamespace(num_labels=num_labels)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids].sum(1))


def test_mixed_batch_loss_against_float64_reference():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (7, 4), generator=g)
    task_ids = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    local = torch.tensor([2, 1, 0, 0, 1, 1, 2])
    labels = local + torch.tensor([RANGES[k][0] for k in task_ids.tolist()])
    student = torch.randn(7, 5, generator=g, dtype=torch.float64)
    teachers = TaskTeachers([FixedTeacher(3, 1), FixedTeacher(2, 2)], RANGES)
    teachers.task_ids = task_ids
    t_logits = teachers(input_ids=ids).logits.double()
    out = distillation_loss(
        mask_to_tasks(student, task_ids, RANGES),
        t_logits,
        labels,
        alpha=0.6,
        temperature=2.0,
        num_items_in_batch=10,
    )
    # Reference: per task, its own C_k-way distributions; sums over all rows / the batch's item count.
    kd = ce = 0.0
    for r in range(7):
        off, size = RANGES[task_ids[r]]
        s = _np(student[r, off : off + size]) / 2.0
        t = _np(teachers.members[int(task_ids[r])].table[ids[r]].sum(0)) / 2.0
        p, log_p, log_q = np.exp(_log_softmax(t)), _log_softmax(t), _log_softmax(s)
        kd += 4.0 * (p * (log_p - log_q)).sum()
        ce -= _log_softmax(_np(student[r, off : off + size]))[int(local[r])]
    np.testing.assert_allclose(out.kd_loss.item(), kd / 10, rtol=1e-6)
    np.testing.assert_allclose(out.ce_loss.item(), ce / 10, rtol=1e-10)


# ---- in the trainer ---------------------------------------------------------------------------------
def tiny_bert(num_labels, hidden=32, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=32,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def mixed_dataset(n, seed=0, tasks=(0, 1)):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = tasks[i % len(tasks)]
        length = int(torch.randint(3, 10, (1,), generator=g))
        rows.append(
            {
                "input_ids": torch.randint(1, 50, (length,), generator=g).tolist(),
                "task_ids": k,
                "labels": RANGES[k][0] + int(torch.randint(0, RANGES[k][1], (1,), generator=g)),
            }
        )
    return Dataset.from_list(rows)


def collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, : len(f["input_ids"])] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([f["labels"] for f in features]),
        "task_ids": torch.tensor([f["task_ids"] for f in features]),
    }


def make_trainer(tmp_path, student, teachers, **overrides):
    from distill.trainer.tasks import accuracy_metric

    kw = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        per_device_eval_batch_size=4,
    )
    kw.update(overrides)
    return MultiTaskDistillationTrainer(
        model=student,
        teachers=teachers,
        task_names=["topic", "kind"],
        label_ranges=RANGES,
        args=DistillationConfig(**kw),
        train_dataset=mixed_dataset(32),
        data_collator=collate,
        eval_dataset={
            "topic": mixed_dataset(6, seed=1, tasks=(0,)),
            "kind": mixed_dataset(10, seed=2, tasks=(1,)),
        },
        compute_metrics=accuracy_metric(),
    )


def test_gradient_accumulation_is_exact_and_teachers_stay_frozen(tmp_path):
    teachers = [tiny_bert(3, hidden=48, seed=1), tiny_bert(2, hidden=48, seed=2)]
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        student = tiny_bert(5, seed=0)
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            student,
            teachers,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
        )
        trainer.train()
        results.append(
            (weights(student), [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h])
        )
    assert max_diff(results[0][0], results[1][0]) < 1e-5
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in teachers)


def test_per_task_metrics_and_their_averages(tmp_path):
    student = tiny_bert(5, seed=0)
    trainer = make_trainer(
        tmp_path, student, [tiny_bert(3, hidden=48, seed=1), tiny_bert(2, hidden=48, seed=2)]
    )
    metrics = trainer.evaluate()
    for name in ("topic", "kind"):
        for stat in ("loss", "accuracy", "kd_loss", "teacher_loss"):
            assert f"eval_{name}_{stat}" in metrics, (name, stat)
    for stat in ("loss", "accuracy"):
        assert metrics[f"eval_{stat}"] == pytest.approx(
            (metrics[f"eval_topic_{stat}"] + metrics[f"eval_kind_{stat}"]) / 2
        )
    # eval_kind_loss is the cross-entropy over the kind head's 2 classes only, checked by hand.
    data = mixed_dataset(10, seed=2, tasks=(1,))
    batch = collate([data[i] for i in range(10)])
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 3:5]
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"] - 3)
    assert metrics["eval_kind_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert 0.0 <= metrics["eval_kind_accuracy"] <= 1.0


def test_teacher_with_the_wrong_number_of_labels_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has 4 labels but its data has 2"):
        make_trainer(tmp_path, tiny_bert(5), [tiny_bert(3), tiny_bert(4)])
