"""Run by tests/test_ddp.py under torchrun / accelerate launch (and once in-process for reference).

Usage: python ddp_train_script.py OUTPUT_DIR PER_DEVICE_BATCH [extra DistillationConfig JSON]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from helpers import lm_dataset, tiny_llama  # noqa: E402

from distill import DistillationConfig, DistillationTrainer  # noqa: E402
from distill.trainer.tasks import CausalLMCollator  # noqa: E402


def main():
    out, batch = sys.argv[1], int(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
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
        report_to="none",
        alpha=0.5,
        temperature=2.0,
        seed=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        **extra,
    )
    if args.cross_tokenizer_loss:  # a teacher with another tokenizer (tests/test_cross_tokenizer.py)
        from xtok_helpers import llama_for, student_tokenizer, teacher_tokenizer, text_dataset

        s_tok, t_tok = student_tokenizer(), teacher_tokenizer()
        models = dict(model=llama_for(s_tok, seed=0), teacher_model=llama_for(t_tok, hidden=48, seed=1))
        data = dict(
            train_dataset=text_dataset(s_tok, 48),
            processing_class=s_tok,
            teacher_processing_class=t_tok,
            data_collator=CausalLMCollator(pad_token_id=s_tok.pad_token_id),
        )
    else:
        models = dict(model=tiny_llama(seed=0), teacher_model=tiny_llama(hidden=48, seed=1))
        data = dict(train_dataset=lm_dataset(48), data_collator=CausalLMCollator(pad_token_id=0))
    trainer = DistillationTrainer(args=args, **models, **data)
    trainer.train()
    trainer.save_model()
    trainer.save_state()
    if torch.distributed.is_initialized():
        from distill.cli import _finish_distributed

        _finish_distributed()


if __name__ == "__main__":
    main()
