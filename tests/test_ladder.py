"""The size ladder: shape rule, run plan, skipping finished runs, and its CLI."""

from __future__ import annotations

import json
import os

import pytest

from scaledown.ladder import train_ladder
from scaling.cli import main as scaling_main
from scaling.ladder import LadderSpec, plan_ladder, rung_config
from scaling.params import count_parameters

BASE = {"model_type": "llama", "tie_word_embeddings": True}


def test_shape_rule():
    spec = LadderSpec(base_config=BASE, widths=[64, 128, 256])
    cfg = rung_config(spec, 128, vocab_size=1000)
    assert cfg["num_hidden_layers"] == 4 and cfg["num_attention_heads"] == 4
    assert cfg["intermediate_size"] % 32 == 0 and cfg["intermediate_size"] >= 8 / 3 * 128
    assert cfg["vocab_size"] == 1000 and cfg["tie_word_embeddings"] is True
    gpt2 = rung_config(LadderSpec(base_config={"model_type": "gpt2"}, widths=[64]), 64)
    assert gpt2["n_embd"] == 64 and gpt2["n_layer"] == 2


def test_plan_budgets():
    spec = LadderSpec(base_config=BASE, widths=[64, 96, 128])
    plans = plan_ladder(spec, vocab_size=512, seq_len=128, batch_size=8, tokens=1e5)
    assert [p.steps for p in plans] == [97] * 3 and all(p.tokens == 97 * 8 * 128 for p in plans)
    assert plans[0].non_embedding_params < plans[1].non_embedding_params < plans[2].non_embedding_params
    for p in plans:
        assert p.non_embedding_params == count_parameters(p.config)["non_embedding"]
        assert p.flops > p.flops_6nd > 0
    iso = plan_ladder(spec, vocab_size=512, seq_len=128, batch_size=8, isoflop_budgets=[1e12, 1e13])
    assert len(iso) == 6
    for p in iso:  # D = C / 6N, rounded down to whole steps
        assert p.flops_6nd <= p.budget and p.flops_6nd > 0.9 * p.budget


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"base_config": {"model_type": "nonsense"}, "widths": [64]}, "model_type"),
        ({"base_config": BASE, "widths": [96, 64]}, "increasing"),
        ({"base_config": BASE, "widths": [48]}, "head_dim"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LadderSpec(**kwargs)


def test_budget_too_small():
    spec = LadderSpec(base_config=BASE, widths=[64])
    with pytest.raises(ValueError, match="less than one step"):
        plan_ladder(spec, vocab_size=512, seq_len=128, batch_size=8, tokens=100)


def test_train_skips_finished_runs(tmp_path):
    spec = LadderSpec(base_config=BASE, widths=[64, 96])
    plans = plan_ladder(spec, vocab_size=512, seq_len=128, batch_size=8, tokens=1e4)
    (tmp_path / "w64").mkdir()
    (tmp_path / "w64" / "all_results.json").write_text("{}")
    calls = []
    train_ladder(plans, str(tmp_path), ["--learning_rate", "1e-3"], train_fn=calls.append, log=lambda m: None)
    assert len(calls) == 1
    args = calls[0]
    assert args[args.index("--max_steps") + 1] == str(plans[1].steps)
    assert args[args.index("--lr_scheduler_type") + 1] == "cosine"  # schedule length = the run's horizon
    assert json.loads(args[args.index("--model_config") + 1])["hidden_size"] == 96
    assert os.path.isfile(tmp_path / "w96" / "ladder_plan.json")


def test_cli_plan(capsys):
    assert (
        scaling_main(
            [
                "ladder",
                "--base-config",
                json.dumps(BASE),
                "--widths",
                "64,96",
                "--vocab-size",
                "512",
                "--tokens",
                "1e5",
                "--json",
            ]
        )
        == 0
    )
    plans = json.loads(capsys.readouterr().out)
    assert [p["width"] for p in plans] == [64, 96]
