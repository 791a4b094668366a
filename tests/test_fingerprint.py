"""`distill train`'s run fingerprint: a changed setting is refused before compute, a finished run is not redone."""

from __future__ import annotations

import json
import os
import random

import pytest

from distill.cli import main as cli_main
from distill.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_RECIPE = os.path.join(ROOT, "recipes", "tiny", "causal_lm_teacher.yaml")
TINY_MODEL = json.dumps(
    {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    }
)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """A few hundred short lines of text as a local json file: fast to tokenize and train a BPE on."""
    rng = random.Random(0)
    words = "model loss teacher student token layer weight data train step scale law fit size".split()
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(path, "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(40))}) + "\n")
    return str(path)


def run_args(out, data_file, *extra):
    return [
        "--config",
        TEACHER_RECIPE,
        "--output_dir",
        str(out),
        "--dataset_name",
        "json",
        "--data_files",
        data_file,
        "--model_config",
        TINY_MODEL,
        "--tokenizer_vocab_size",
        "300",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--save_total_limit",
        "2",
        "--max_eval_samples",
        "8",
        "--max_test_samples",
        "8",
        "--disable_tqdm",
        "true",
        "--warmup_steps",
        "0",
        "--logging_steps",
        "1",
        *extra,
    ]


def snapshot(out) -> dict:
    """Every file under ``out`` with its modification time."""
    return {
        os.path.relpath(os.path.join(r, n), out): os.stat(os.path.join(r, n)).st_mtime_ns
        for r, _, files in os.walk(out)
        for n in files
    }


def fail_if_called(*args, **kwargs):
    raise AssertionError("data was loaded: the check did not come before compute")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("trained") / "run"
    train_main(run_args(out, data_file))
    return out


@pytest.fixture
def finished_run(trained_once, tmp_path):
    """A copy of a finished 2-step run, in the same output_dir path for every test (the path is not fingerprinted)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_once, out)
    return out


def test_changed_settings_are_refused_before_compute(finished_run, data_file, monkeypatch, capsys):
    before = snapshot(finished_run)
    monkeypatch.setattr("distill.data.build_datasets", fail_if_called)
    capsys.readouterr()
    code = cli_main(
        [
            "train",
            *run_args(
                finished_run,
                data_file,
                "--learning_rate",
                "1e-3",
                "--alpha",
                "0.0",
                "--model_config",
                TINY_MODEL.replace('"hidden_size": 32', '"hidden_size": 64'),
            ),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "learning_rate: 0.003 -> 0.001" in err
    assert "model_config.hidden_size: 32 -> 64" in err
    assert "alpha" not in err  # unchanged fields are not listed
    assert "--overwrite_output_dir true" in err and "--output_dir" in err
    assert snapshot(finished_run) == before


def test_finished_run_is_not_trained_again(finished_run, data_file, monkeypatch):
    """transformers 5.24's Trainer takes one more step when resumed at max_steps: checkpoint-2 became checkpoint-3."""
    before = snapshot(finished_run)
    saved = json.loads((finished_run / "all_results.json").read_text())
    monkeypatch.setattr("distill.data.build_datasets", fail_if_called)
    # Fields that cannot change the result do not count (see distill.trainer.fingerprint.IGNORED_FIELDS).
    results = train_main(
        run_args(
            finished_run,
            data_file,
            "--logging_steps",
            "7",
            "--per_device_eval_batch_size",
            "3",
            "--report_to",
            "none",
            "--save_steps",
            "5",
            "--eval_strategy",
            "steps",
        )
    )
    assert results == saved
    assert snapshot(finished_run) == before
    assert not (finished_run / "checkpoint-3").exists()


def test_overwrite_output_dir_starts_afresh(finished_run, data_file):
    (finished_run / "checkpoint-9").mkdir()  # a stale checkpoint that must not be resumed from
    train_main(run_args(finished_run, data_file, "--learning_rate", "1e-3", "--overwrite_output_dir", "true"))
    state = json.loads((finished_run / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [
        1,
        2,
    ]  # trained from step 0, not resumed
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    stored = json.loads((finished_run / "run_fingerprint.json").read_text())
    assert stored["finished"] and stored["fingerprint"]["learning_rate"] == 1e-3


def test_unfinished_run_with_the_same_settings_resumes(finished_run, data_file):
    import shutil

    shutil.rmtree(finished_run / "checkpoint-2")
    (finished_run / "all_results.json").unlink()
    record = json.loads((finished_run / "run_fingerprint.json").read_text())
    (finished_run / "run_fingerprint.json").write_text(json.dumps({**record, "finished": False}))
    train_main(run_args(finished_run, data_file))
    state = json.loads((finished_run / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert json.loads((finished_run / "run_fingerprint.json").read_text())["finished"]
    assert (finished_run / "all_results.json").is_file()


def test_output_dir_without_fingerprint_is_refused(tmp_path, data_file, capsys):
    out = tmp_path / "legacy"
    (out / "checkpoint-5").mkdir(parents=True)
    assert cli_main(["train", *run_args(out, data_file)]) == 2
    assert "without run_fingerprint.json" in capsys.readouterr().err


def test_teacher_content_and_data_content_count(tmp_path, monkeypatch):
    """A retrained teacher (same path, other weights) or edited data file changes the fingerprint."""
    from distill.train import parse_args
    from distill.trainer import fingerprint as fp

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text('{"model_type": "llama"}')
    weights = teacher / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4096], "data_offsets": [0, 16384]}}).encode()
    weights.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16384))
    (teacher / "trainer_state.json").write_text("{}")  # logs and results do not count
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a b c"}\n')
    argv = [
        "--config",
        os.path.join(ROOT, "recipes", "tiny", "causal_lm.yaml"),
        "--output_dir",
        str(tmp_path / "o"),
        "--teacher_model_name_or_path",
        str(teacher),
        "--dataset_name",
        "json",
        "--data_files",
        str(data),
    ]
    first = fp.run_fingerprint(*parse_args(argv))
    (teacher / "trainer_state.json").write_text('{"global_step": 3}')
    assert fp.diff_fingerprints(first, fp.run_fingerprint(*parse_args(argv))) == []
    monkeypatch.setattr(fp, "FULL_HASH_BYTES", 1024)  # the sampled path for large files
    sampled = fp.run_fingerprint(*parse_args(argv))
    assert sampled["teacher_files"]["model.safetensors"].startswith("sampled:")
    weights.write_bytes(
        len(header).to_bytes(8, "little") + header + bytes([1]) * 16384
    )  # retrained: same header
    data.write_text('{"text": "a b d"}\n')
    changed = {name for name, _, _ in fp.diff_fingerprints(sampled, fp.run_fingerprint(*parse_args(argv)))}
    assert changed == {"teacher_files.model.safetensors", f"data_files_content.{data}"}


def test_teacher_cache_run_differs_from_the_online_run(tmp_path):
    """The issue's reproduction: the README's cached run into the online run's output_dir must not "resume" it."""
    from distill.train import parse_args
    from distill.trainer import fingerprint as fp

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "teacher_cache.json").write_text('{"k": 32}')
    argv = [
        "--config",
        os.path.join(ROOT, "recipes", "tiny", "causal_lm.yaml"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    online = fp.run_fingerprint(*parse_args(argv))
    cached = fp.run_fingerprint(*parse_args([*argv, "--teacher_cache", str(cache)]))
    changes = {name: (old, new) for name, old, new in fp.diff_fingerprints(online, cached)}
    assert changes["teacher_cache"] == (None, str(cache))
    assert changes["teacher_cache_files"][1]["teacher_cache.json"]  # its content counts too
