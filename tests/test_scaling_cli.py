"""The `scaling` CLI: fit -> predict -> optimal round trip, errors, warnings, plots."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.cli import main
from scaling.laws import get_law

FIXTURE = Path(__file__).parent / "fixtures" / "scaling" / "chinchilla_epoch_svg_extracted.csv"
EPOCH = ["--columns", 'params="Model Size",flops="Training FLOP"', "--drop-highest", "5"]
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_not_blank(png_path):
    import matplotlib.image as mpimg

    img = mpimg.imread(png_path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img[..., :3])) > 0.01


def test_round_trip_fit_predict_optimal(tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    rc, out, err = _run(
        capsys,
        "fit",
        FIXTURE,
        *EPOCH,
        "--law",
        "chinchilla",
        "--out",
        fit_json,
        "--bootstrap",
        "8",
        "--jobs",
        "1",
        "--json",
        "--plot",
        tmp_path / "fit.png",
    )
    assert rc == 0, err
    stdout = json.loads(out)
    fit = json.loads(fit_json.read_text())
    for doc in (stdout, fit):
        assert doc["law"] == "chinchilla" and doc["n_points"] == 240
        assert set(doc["params"]) == {"E", "A", "B", "alpha", "beta"}
        assert doc["objective"] <= 0.0010183 and doc["converged"]
        assert set(doc["ci"]) >= {"E", "A", "B", "alpha", "beta", "a", "b"}
        assert doc["param_count"] == "total"
    assert len(fit["bootstrap"]["samples"]) == 8 and "samples" not in stdout["bootstrap"]
    assert "objective" in err  # human summary on stderr

    rc, out, _ = _run(capsys, "predict", "--fit", fit_json, "--params", 7e10, "--tokens", 1.4e12)
    pred = json.loads(out)
    expected = get_law("chinchilla").predict(fit["params"], 7e10, 1.4e12)
    assert rc == 0 and pred["loss"] == pytest.approx(float(expected))
    assert pred["interval"][0] <= pred["loss"] <= pred["interval"][1]

    rc, out, _ = _run(capsys, "optimal", "--fit", fit_json, "--flops", 5.76e23)
    opt = json.loads(out)
    assert rc == 0 and set(opt) >= {"params", "tokens", "loss", "interval"}
    assert 6 * opt["params"] * opt["tokens"] == pytest.approx(5.76e23)

    rc, out, _ = _run(
        capsys,
        "optimal",
        "--fit",
        fit_json,
        "--flops",
        5.76e23,
        "--cost",
        "6*N*D + 2*NT*D",
        "--teacher-params",
        1e9,
    )
    assert rc == 0 and json.loads(out)["tokens"] < opt["tokens"]

    for stem in ("fit", "fit_residuals", "fit_frontier"):
        _assert_not_blank(tmp_path / f"{stem}.png")
        svg = (tmp_path / f"{stem}.svg").read_text()
        assert svg.count("<path") > 10

    rc, out, _ = _run(capsys, "plot", "--fit", fit_json, "--out", tmp_path / "again" / "f.png")
    assert rc == 0 and len(json.loads(out)["plots"]) == 6


def test_power_law_fit_and_predict(tmp_path, capsys):
    n = np.logspace(6, 9, 8)
    loss = get_law("power").predict({"E": 2.0, "A": 60.0, "alpha": 0.3}, n)
    table = tmp_path / "runs.json"
    table.write_text(json.dumps([{"N": a, "D": 1e9, "L": b} for a, b in zip(n, loss)]))
    fit_json = tmp_path / "fit.json"
    rc, _, err = _run(
        capsys,
        "fit",
        table,
        "--law",
        "power",
        "--columns",
        "params=N,tokens=D,loss=L",
        "--out",
        fit_json,
        "--quiet",
    )
    assert rc == 0, err
    fit = json.loads(fit_json.read_text())
    assert set(fit["params"]) == {"E", "A", "alpha"}
    assert fit["params"]["alpha"] == pytest.approx(0.3, rel=1e-3)
    rc, out, _ = _run(capsys, "predict", "--fit", fit_json, "--params", 1e10)
    assert rc == 0 and "interval" not in json.loads(out)
    rc, _, err = _run(capsys, "optimal", "--fit", fit_json, "--flops", 1e20)
    assert rc == 2 and err.startswith("error:") and "token term" in err


def test_holdout_from_the_cli(tmp_path, capsys):
    rc, out, err = _run(capsys, "fit", FIXTURE, *EPOCH, "--holdout-above", 3e20, "--json")
    assert rc == 0, err
    h = json.loads(out)["holdout"]
    assert h["n_test"] > 0 and h["mape"] < 5
    assert all("error_pct" in p for p in h["points"])
    assert "MAPE" in err


def test_isoflop_cli_warns_and_plots(tmp_path, capsys):
    law = get_law("chinchilla")
    rows = ["params,flops,loss"]
    for c, lo, hi in ((1e18, 7, 9), (1e19, 7.5, 9.5), (1e20, 8, 10), (1e21, 6, 7.5)):
        for n in np.logspace(lo, hi, 7):
            rows.append(f"{n},{c},{float(law.predict(HOFFMANN, n, c / (6 * n)))}")
    table = tmp_path / "iso.csv"
    table.write_text("\n".join(rows) + "\n")
    rc, out, err = _run(capsys, "isoflop", table, "--json", "--plot", tmp_path / "iso.png")
    assert rc == 0
    assert "warning: IsoFLOP budget C = 1e+21 FLOPs excluded" in err
    res = json.loads(out)
    assert len(res["budgets"]) == 3 and "a" in res
    _assert_not_blank(tmp_path / "iso.png")
    assert (tmp_path / "iso.svg").read_text().count("<path") > 10


def test_runs_table_from_a_run_directory(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "trainer_state.json").write_text(
        json.dumps({"global_step": 10, "log_history": [{"step": 10, "eval_loss": 2.5}]})
    )
    (run / "all_results.json").write_text(
        json.dumps({"eval_loss": 2.5, "student_params": 5e4, "train_tokens": 1e6})
    )
    rc, out, _ = _run(capsys, "runs", run, "--out", tmp_path / "t.csv", "--json")
    assert rc == 0 and json.loads(out)[0]["params"] == 5e4
    assert "all_results.train_tokens" in (tmp_path / "t.csv").read_text()


@pytest.mark.parametrize(
    "content,needle",
    [
        ("params,tokens,loss\n1e6,1e9,3\n1e6,nan,2\n", "row 2 (line 3): tokens"),
        ("size,loss\n1,2\n", "missing columns"),
    ],
)
def test_bad_input_exits_2_with_clear_message(tmp_path, content, needle):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "scaling", "fit", str(f)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and needle in proc.stderr and "bad.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_errors_for_missing_fit_and_empty_dir(tmp_path, capsys):
    rc, _, err = _run(capsys, "predict", "--fit", tmp_path / "none.json", "--params", 1)
    assert rc == 2 and "no such fit file" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, "fit", tmp_path / "empty")
    assert rc == 2 and "empty run directory" in err


def test_help_imports_nothing_heavy():
    code = (
        "import sys, scaling.cli\n"
        "heavy = [m for m in ('numpy', 'scipy', 'matplotlib', 'torch', 'transformers') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "scaling.cli.build_parser().format_help()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _sweep(root):
    """Run directories whose eval curves follow a Chinchilla law (tokens from the log)."""
    law = get_law("chinchilla")
    for i, n in enumerate(np.logspace(7, 9, 5)):
        run = root / f"run{i}"
        run.mkdir(parents=True)
        steps = np.arange(1, 41) * 50
        history = [
            {
                "step": int(s),
                "eval_loss": float(law.predict(HOFFMANN, n, s * 2.5e6)),
                "num_input_tokens_seen": int(s * 2.5e6),
            }
            for s in steps
        ]
        (run / "trainer_state.json").write_text(json.dumps({"global_step": 2000, "log_history": history}))
        (run / "all_results.json").write_text(
            json.dumps(
                {
                    "eval_loss": history[-1]["eval_loss"],
                    "student_params": n,
                    "student_non_embedding_params": 0.8 * n,
                    "train_tokens": 5e9,
                }
            )
        )


def test_sweep_of_run_dirs_all_points_bootstrap_by_run_and_envelope(tmp_path, capsys):
    _sweep(tmp_path / "sweep")
    rc, out, err = _run(
        capsys,
        "fit",
        tmp_path / "sweep",
        "--points",
        "all",
        "--bootstrap",
        6,
        "--jobs",
        1,
        "--json",
        "--quiet",
        "--param-count",
        "non_embedding",
    )
    assert rc == 0, err
    fit = json.loads(out)
    assert fit["n_points"] == 200 and fit["param_count"] == "non_embedding"
    assert fit["bootstrap"]["resampled"] == "runs"
    assert fit["params"]["alpha"] == pytest.approx(0.34, rel=1e-3)  # N scale 0.8 -> same alpha
    rc, out, err = _run(
        capsys, "envelope", tmp_path / "sweep", "--points", "all", "--json", "--plot", tmp_path / "env.png"
    )
    assert rc == 0, err
    env = json.loads(out)
    assert 0.2 < env["a"] < 0.8  # 5 sizes only: a coarse envelope
    _assert_not_blank(tmp_path / "env.png")
    rc, _, err = _run(capsys, "envelope", tmp_path / "sweep")  # final points only
    assert rc == 2 and "learning curves" in err
