"""Training and evaluation cross-entropy use one vocabulary: the tokenizer's, even when the heads are padded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import VOCAB, lm_dataset, tiny_llama, word_tokenizer

from distill import DistillationConfig, DistillationTrainer
from distill.trainer.tasks import CausalLMCollator

PAD_ROWS = 8  # head rows beyond the tokenizer: no label is ever one of them


def _reference_ce(model, dataset, vocab) -> float:
    """float64 cross-entropy of ``model`` over ``dataset`` (causal shift), logits sliced to ``vocab``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1, :vocab].double()
            valid = labels != -100
            total += float(F.cross_entropy(logits[valid], labels[valid], reduction="sum"))
            count += int(valid.sum())
    return total / count


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_eval_and_training_cross_entropy_share_the_tokenizer_vocabulary(tmp_path, alpha):
    torch.set_num_threads(1)
    data = lm_dataset(8)
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,  # one batch holds every row: its CE is the eval set's
        per_device_eval_batch_size=8,
        max_steps=1,
        learning_rate=0.0,
        optim="sgd",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        alpha=alpha,
        seed=0,
        disable_tqdm=True,
    )
    student = tiny_llama(seed=0, vocab=VOCAB + PAD_ROWS)
    teacher = tiny_llama(hidden=48, seed=1, vocab=VOCAB + 2 * PAD_ROWS) if alpha > 0 else None
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=word_tokenizer(),
        data_collator=CausalLMCollator(pad_token_id=0),
    )
    trainer.train()
    metrics = trainer.evaluate()
    [train_ce] = [h["ce_loss"] for h in trainer.state.log_history if "ce_loss" in h]
    expected = _reference_ce(trainer.model, data, VOCAB)
    assert (
        abs(expected - _reference_ce(trainer.model, data, VOCAB + PAD_ROWS)) > 1e-3
    )  # the slice matters here
    assert train_ce == pytest.approx(expected, abs=1e-5)
    assert metrics["eval_loss"] == pytest.approx(expected, abs=1e-5)
    if teacher is not None:
        assert metrics["eval_teacher_loss"] == pytest.approx(
            _reference_ce(trainer.teacher, data, VOCAB), abs=1e-5
        )
