"""Reading runs: Trainer output directories, CSV / JSON tables, and every bad input."""

import json
import math

import numpy as np
import pytest

from scaling.fit import check_fit_data, fit_runs
from scaling.logs import ScalingDataError, load_runs, read_run_dir, read_table, to_arrays

TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


def make_run(
    root, name="run", evals=((10, 3.0), (20, 2.5)), results=None, config=True, tokens_seen=None, state=True
):
    """Write a fake Trainer output directory; returns its path."""
    path = root / name
    path.mkdir(parents=True)
    if state:
        history = [{"step": 5, "epoch": 0.1, "loss": 3.5}]
        for step, loss in evals:
            entry = {"step": step, "epoch": step / 100, "eval_loss": loss}
            if tokens_seen:
                entry["num_input_tokens_seen"] = tokens_seen * step
            history.append(entry)
        (path / "trainer_state.json").write_text(
            json.dumps(
                {
                    "global_step": evals[-1][0] if evals else 20,
                    "max_steps": 20,
                    "train_batch_size": 4,
                    "log_history": history,
                }
            )
        )
    if results is not None:
        (path / "all_results.json").write_text(json.dumps(results))
    if config:
        (path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return path


OURS = {
    "train_loss": 2.9,
    "eval_loss": 2.4,
    "student_params": 40000,
    "student_non_embedding_params": 24000,
    "train_tokens": 20 * 8 * 64,
    "block_size": 64,
    "global_batch_size": 8,
}


def test_run_dir_with_our_keys(tmp_path):
    run = make_run(tmp_path, results=OURS)
    (p,) = read_run_dir(run)
    assert (p.params, p.tokens, p.loss, p.kind) == (40000, 20 * 8 * 64, 2.4, "final")
    assert p.notes["tokens"] == "all_results.train_tokens"
    assert p.flops_6nd == 6 * 40000 * p.tokens
    assert p.flops > p.flops_6nd * 0.5 and "flops_per_token" in p.notes["flops"]
    (q,) = read_run_dir(run, param_count="non_embedding")
    assert q.params == 24000 and q.params_total == 40000


def test_run_dir_all_eval_points_and_steps_fallback(tmp_path):
    results = {k: v for k, v in OURS.items() if k != "train_tokens"}
    pts = read_run_dir(make_run(tmp_path, results=results), points="all")
    assert [p.loss for p in pts] == [3.0, 2.5]
    assert [p.tokens for p in pts] == [10 * 8 * 64, 20 * 8 * 64]
    assert "steps (10) * global batch (8) * sequence length (64)" in pts[0].notes["tokens"]


def test_run_dir_tokens_seen_and_config_counting(tmp_path):
    # no all_results.json at all: counts from config.json, tokens from the log history
    pts = read_run_dir(make_run(tmp_path, tokens_seen=1000), points="all", seq_len=64)
    assert [p.tokens for p in pts] == [10000, 20000]
    assert pts[0].notes["params"] == "config.json (meta-device count)"
    from scaling.params import count_parameters

    counts = count_parameters(TINY_LLAMA)
    assert pts[0].params == counts["total"]
    assert counts["non_embedding"] == counts["total"] - 2 * 256 * 32  # embeddings + untied head


def test_distillation_run_counts_teacher_forward(tmp_path):
    (p,) = read_run_dir(make_run(tmp_path, results={**OURS, "teacher_params": 1e6}))
    assert p.teacher_flops == 2 * 1e6 * p.tokens
    assert "teacher" in p.notes["flops"]


def test_sweep_folder_reads_every_run(tmp_path):
    for i, n in enumerate((1e4, 2e4, 4e4)):
        make_run(tmp_path / "sweep", f"r{i}", results={**OURS, "student_params": n})
    pts = load_runs([tmp_path / "sweep"], param_count="total")
    assert sorted(p.params for p in pts) == [1e4, 2e4, 4e4]
    assert {p.run for p in pts} == {"r0", "r1", "r2"}


def test_csv_with_column_mapping_and_flops(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("Model Size,Training FLOP,loss\n1e6,6e15,3.0\n2e6,2.4e16,2.8\n")
    pts = read_table(f, 'params="Model Size",flops="Training FLOP"')
    assert pts[0].tokens == pytest.approx(1e9) and pts[1].tokens == pytest.approx(2e9)
    assert pts[0].flops == 6e15


@pytest.mark.parametrize("layout", ["records", "columns", "runs"])
def test_json_tables(tmp_path, layout):
    recs = [{"N": 1e6, "tokens": 1e9, "loss": 3.0}, {"N": 2e6, "tokens": 1e9, "loss": 2.9}]
    obj = {"records": recs, "runs": {"runs": recs}, "columns": {k: [r[k] for r in recs] for k in recs[0]}}[
        layout
    ]
    f = tmp_path / "t.json"
    f.write_text(json.dumps(obj))
    pts = read_table(f, {"params": "N"})
    assert [p.params for p in pts] == [1e6, 2e6]


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad,what", [("nan", "loss"), ("inf", "loss"), ("-1", "loss"), ("0", "loss")])
def test_bad_loss_names_file_and_row(tmp_path, bad, what):
    f = tmp_path / "bad.csv"
    f.write_text(f"params,tokens,loss\n1e6,1e9,3.0\n2e6,1e9,{bad}\n")
    with pytest.raises(ScalingDataError, match=r"bad\.csv: row 2 \(line 3\): loss"):
        read_table(f)


@pytest.mark.parametrize("col", ["params", "tokens"])
@pytest.mark.parametrize("bad", ["nan", "-inf", "-5", "0", "abc", ""])
def test_bad_n_or_d_names_file_and_row(tmp_path, col, bad):
    vals = {"params": "1e6", "tokens": "1e9"}
    vals[col] = bad
    f = tmp_path / "bad.csv"
    f.write_text(f"params,tokens,loss\n{vals['params']},{vals['tokens']},3.0\n")
    with pytest.raises(ScalingDataError, match=rf"bad\.csv: row 1 \(line 2\): .*{col}"):
        read_table(f)


def test_bad_json_record_is_named(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(
        json.dumps(
            [{"params": 1, "tokens": 1, "loss": 1}, {"params": 1, "tokens": None, "loss": float("nan")}]
        )
    )
    with pytest.raises(ScalingDataError, match=r"bad\.json: record 1"):
        read_table(f)


def test_missing_columns(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("size,loss\n1e6,3\n")
    with pytest.raises(ScalingDataError, match=r"t\.csv: missing columns.*params.*tokens or flops"):
        read_table(f)


def test_too_few_points_for_the_law(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "params,tokens,loss\n"
        + "".join(f"{n},{d},3\n" for n, d in [(1e6, 1e9), (2e6, 2e9), (4e6, 1e9), (8e6, 3e9), (1e7, 1e9)])
    )
    with pytest.raises(ScalingDataError, match="needs at least 6 points; got 5"):
        fit_runs(read_table(f), "chinchilla")


def test_single_distinct_n_for_n_d_law(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "params,tokens,loss\n"
        + "".join(f"1e6,{d},{3 - i / 10}\n" for i, d in enumerate([1e9, 2e9, 4e9, 8e9, 16e9, 32e9]))
    )
    with pytest.raises(ScalingDataError, match="single parameter count N"):
        fit_runs(read_table(f), "chinchilla")


def test_check_fit_data_names_the_source():
    with pytest.raises(ScalingDataError, match="runs/x: step 3: loss"):
        check_fit_data("power", [1, 2, 3, 4], None, [1, 2, math.nan, 3], ["a", "b", "runs/x: step 3", "c"])


def test_empty_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScalingDataError, match="empty.*empty run directory"):
        load_runs([tmp_path / "empty"])


def test_run_without_eval_loss(tmp_path):
    run = make_run(tmp_path, evals=(), results={"train_loss": 2.0, "student_params": 10})
    with pytest.raises(ScalingDataError, match="trainer_state.json.*no eval loss"):
        read_run_dir(run)


def test_run_without_token_information(tmp_path):
    run = make_run(tmp_path, results={"eval_loss": 2.0, "student_params": 10})
    with pytest.raises(ScalingDataError, match="token count unknown.*--global-batch"):
        read_run_dir(run)


def test_missing_input_and_unknown_file_type(tmp_path):
    with pytest.raises(ScalingDataError, match="no such file"):
        load_runs([tmp_path / "nope.csv"])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ScalingDataError, match="not a run directory"):
        load_runs([tmp_path / "x.txt"])


def test_to_arrays(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("params,tokens,loss,run\n1e6,1e9,3.0,a\n2e6,1e9,2.9,b\n")
    a = to_arrays(read_table(f))
    np.testing.assert_allclose(a["flops"], [6e15, 1.2e16])
    assert a["run"] == ["a", "b"]


def test_parse_columns_with_and_without_quotes():
    from scaling.logs import parse_columns

    want = {"params": "Model Size", "flops": "Training FLOP"}
    assert parse_columns('params="Model Size",flops="Training FLOP"') == want
    assert parse_columns("params=Model Size, flops=Training FLOP") == want
    with pytest.raises(ScalingDataError, match="unknown names"):
        parse_columns("size=N")
    with pytest.raises(ScalingDataError, match="NAME=COLUMN"):
        parse_columns("params")
