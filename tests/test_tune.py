"""`distill tune`: the search space is checked before compute, every trial really trains with its
sampled settings (training fields and architecture), bad trials are pruned, and an interrupted
study continues where it stopped."""

from __future__ import annotations

import json
import os
import random

import pytest
import yaml

from distill.config import DistillationConfig
from distill.tune.search import main as tune_main
from distill.tune.search import parse_search_space

STUDENT = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from helpers import tiny_llama, word_tokenizer

    root = tmp_path_factory.mktemp("tune")
    teacher = str(root / "teacher")
    tiny_llama(hidden=48, layers=1, seed=1).save_pretrained(teacher)
    word_tokenizer().save_pretrained(teacher)
    rng = random.Random(0)
    data = root / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": " ".join(f"t{rng.randrange(3, 64)}" for _ in range(rng.randint(8, 24)))})
            + "\n"
            for _ in range(200)
        )
    )
    recipe = root / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "task": "causal-lm",
                "teacher_model_name_or_path": teacher,
                "alpha": 0.5,
                "temperature": 2.0,
                "model_config": STUDENT,
                "dataset_name": "json",
                "data_files": str(data),
                "block_size": 32,
                "validation_split_percentage": 10,
                "max_eval_samples": 8,
                "max_steps": 4,
                "per_device_train_batch_size": 4,
                "per_device_eval_batch_size": 8,
                "learning_rate": 0.01,
                "logging_steps": 1,
                "seed": 0,
                "report_to": "none",
                "disable_tqdm": True,
            }
        )
    )
    return {"root": root, "recipe": str(recipe)}


def _space(root, space):
    path = root / f"space_{abs(hash(json.dumps(space, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


@pytest.mark.parametrize(
    "space,message",
    [
        ({"alpah": {"low": 0.1, "high": 0.9}}, "not a training field.*did you mean 'alpha'"),
        ({"block_size": {"choices": [16, 32]}}, "not a training field"),
        ({"alpha": {"low": 0.9, "high": 0.1}}, "empty range"),
        ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log: true needs low > 0"),
        ({"lr_scheduler_type": {"choices": []}}, "non-empty list"),
        ({"alpha": {"low": 0.1, "high": 1.5}}, "value 1.5 is refused"),
        ({"alpha": {"low": 0.1, "hi": 0.5}}, "unknown key"),
    ],
)
def test_bad_search_space_is_refused_before_compute(space, message):
    args = DistillationConfig(output_dir="unused", alpha=0.5, report_to="none")
    with pytest.raises(ValueError, match=message):
        parse_search_space(space, args, STUDENT)
    with pytest.raises(ValueError, match="need a student built from model_config"):
        parse_search_space({"model.hidden_size": {"choices": [32]}}, args, None)


class _Record:
    """Trainer callback: the settings each trial really trains with; optionally Ctrl-C in one."""

    def __init__(self, interrupt_at=None):
        from transformers import TrainerCallback

        self.seen, self.interrupt_at, outer = [], interrupt_at, self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                outer.seen.append(
                    {
                        "alpha": args.alpha,
                        "temperature": args.temperature,
                        "learning_rate": args.learning_rate,
                        "model.hidden_size": model.config.hidden_size,
                    }
                )

            def on_step_end(self, args, state, control, **kw):
                if outer.interrupt_at == (len(outer.seen), state.global_step):
                    raise KeyboardInterrupt

        self.callback = CB()


def _matches(seen, params):
    return all(seen[k] == pytest.approx(v) for k, v in params.items())


@pytest.mark.slow
def test_tune_runs_prunes_and_resumes(workspace, tmp_path, capsys):
    out = str(tmp_path / "study")
    space = _space(
        workspace["root"],
        {
            "alpha": {"low": 0.1, "high": 0.9},
            "temperature": {"low": 1.0, "high": 4.0},
            "learning_rate": {"choices": [0.03, 1.0e-7]},
            "model.hidden_size": {"choices": [32, 64]},
        },
    )
    argv = [
        "--config",
        workspace["recipe"],
        "--search-space",
        space,
        "--output_dir",
        out,
        "--pruner",
        "median",
        "--pruner_startup_trials",
        "1",
        "--eval_steps",
        "2",
    ]
    first = _Record(interrupt_at=(2, 1))  # Ctrl-C in the second trial, after its first step
    with pytest.raises(KeyboardInterrupt):
        tune_main(argv + ["--n_trials", "4"], callbacks=[first.callback])
    done = json.load(open(os.path.join(out, "trials.json")))
    assert [t["state"] for t in done["trials"]] == ["COMPLETE", "FAIL"]
    assert done["trials"][1]["interrupted"]
    again = _Record()
    capsys.readouterr()
    summary = tune_main(argv + ["--n_trials", "4"], callbacks=[again.callback])
    trials = summary["trials"]
    told = capsys.readouterr().err  # the end of a study names the best trial and its recipe
    assert f"Best: trial {summary['best']['number']}," in told
    assert f"distill train --config {os.path.join(out, 'best.yaml')}" in told
    assert trials[0] == done["trials"][0]  # finished trials are kept as they were
    rerun = trials[2]
    assert rerun["rerun_of"] == 1 and rerun["params"] == done["trials"][1]["params"]
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len(trials) == 5
    # every trial trained with the settings optuna recorded for it (training fields and architecture)
    for seen, trial in zip(first.seen + again.seen, trials):
        assert _matches(seen, trial["params"]), (seen, trial["params"])
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned and all(t["params"]["learning_rate"] == 1.0e-7 for t in pruned)
    assert all(len(t["intermediate"]) == 1 for t in pruned)  # stopped at the first evaluation
    best = summary["best"]
    assert best["value"] == min(t["value"] for t in trials if t["state"] == "COMPLETE")
    # best.yaml is a ready recipe for distill train
    from distill.train import parse_args

    recipe = yaml.safe_load(open(os.path.join(out, "best.yaml")))
    assert recipe["alpha"] == best["params"]["alpha"]
    assert recipe["model_config"]["hidden_size"] == best["params"]["model.hidden_size"]
    _, _, args = parse_args(["--config", os.path.join(out, "best.yaml")])
    assert args.learning_rate == best["params"]["learning_rate"]
    assert os.path.getsize(os.path.join(out, "objective.png")) > 0
    rows = open(os.path.join(out, "trials.csv")).read().splitlines()
    assert len(rows) == 1 + len(trials) and rows[0].startswith("number,state,value,alpha")
    # a finished study: running it again trains nothing
    third = _Record()
    assert tune_main(argv + ["--n_trials", "4"], callbacks=[third.callback])["trials"] == trials
    assert third.seen == []
    assert "already has 4 finished trial(s) of the 4 asked for; nothing to run" in capsys.readouterr().err
