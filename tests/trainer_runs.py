"""Run directories written the way `distill train` (transformers' Trainer) writes them, without training.

`write_trainer_run` copies the layout of a real `distill train` output (checked against one in
`test_scaling_counted_once.py`): evaluations every `eval_steps` in `trainer_state.json`'s
`log_history`, the train summary, then the final evaluation at the same global step logged
again, and `all_results.json` repeating that final evaluation.
"""

from __future__ import annotations

import json
import math

VOCAB, BLOCK, BATCH = 256, 32, 4


def llama_config(hidden: int, layers: int = 1) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 16),
        "num_key_value_heads": max(1, hidden // 16),
        "head_dim": 16,
        "max_position_embeddings": 64,
        "tie_word_embeddings": True,
    }


def chinchilla_loss(n: float, d: float) -> float:
    """A smooth L(N, D) for synthetic learning curves (N non-embedding parameters)."""
    return 2.0 + 40.0 * n**-0.3 + 60.0 * d**-0.3


def write_trainer_run(
    root, name: str, hidden: int, steps: int = 40, eval_steps: int = 10, loss=chinchilla_loss, layers: int = 1
):
    """Write `root/name` as `distill train` would after `steps` steps; returns the path."""
    from scaling.params import count_parameters

    path = root / name
    path.mkdir(parents=True)
    config = llama_config(hidden, layers)
    counts = count_parameters(config)
    history = []

    def eval_entry(step):
        value = loss(counts["non_embedding"], step * BATCH * BLOCK)
        return {
            "epoch": step / 100,
            "eval_loss": value,
            "eval_perplexity": math.exp(value),
            "eval_runtime": 0.01,
            "eval_samples_per_second": 800.0,
            "eval_steps_per_second": 100.0,
            "num_input_tokens_seen": step * BATCH * BLOCK,
            "step": step,
        }

    for step in range(1, steps + 1):
        if step % 5 == 0:
            history.append(
                {
                    "ce_loss": 5.0,
                    "epoch": step / 100,
                    "grad_norm": 1.0,
                    "learning_rate": 1e-3,
                    "loss": 5.0,
                    "num_input_tokens_seen": step * BATCH * BLOCK,
                    "step": step,
                }
            )
        if step % eval_steps == 0:
            history.append(eval_entry(step))
    history.append(
        {
            "epoch": steps / 100,
            "num_input_tokens_seen": steps * BATCH * BLOCK,
            "step": steps,
            "total_flos": 1.0,
            "train_loss": 5.0,
            "train_runtime": 1.0,
        }
    )
    final = eval_entry(steps)
    history.append(final)  # trainer.evaluate() after training: the same step again
    (path / "trainer_state.json").write_text(
        json.dumps(
            {
                "global_step": steps,
                "max_steps": steps,
                "eval_steps": eval_steps,
                "train_batch_size": BATCH,
                "num_input_tokens_seen": steps * BATCH * BLOCK,
                "log_history": history,
            }
        )
    )
    (path / "all_results.json").write_text(
        json.dumps(
            {
                **{k: v for k, v in final.items() if k != "step"},
                "block_size": BLOCK,
                "global_batch_size": BATCH,
                "student_params": counts["total"],
                "student_non_embedding_params": counts["non_embedding"],
                "train_tokens": steps * BATCH * BLOCK,
                "train_loss": 5.0,
            }
        )
    )
    (path / "config.json").write_text(json.dumps(config))
    return path


def write_ladder(root, widths=(32, 48, 64, 80, 96), **kwargs) -> list:
    """Five rungs of one token budget (like the demo ladder), four evaluations each."""
    return [write_trainer_run(root, f"w{w}", w, **kwargs) for w in widths]
