"""Issue 19 items of `scaling`: non-positive inputs are refused (exit 2), far extrapolation is
said (warning and JSON), a size-only law on several token budgets per size warns, and
`scaling runs` prints a table unless asked for JSON."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from scaling.checks import extrapolation, ignored_tokens, positive
from scaling.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "scaling" / "chinchilla_epoch_svg_extracted.csv"
EPOCH = ["--columns", 'params="Model Size",flops="Training FLOP"', "--drop-highest", "5"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def fit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "fit.json"
    assert main(["fit", str(FIXTURE), *EPOCH, "--out", str(path), "--quiet"]) == 0
    return path


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["predict", "--params", "0", "--tokens", "1e9"], "--params must be a finite number > 0"),
        (["predict", "--params", "1e9", "--tokens", "-1"], "--tokens must be a finite number > 0"),
        (["predict", "--params", "nan", "--tokens", "1e9"], "--params must be a finite number > 0"),
        (["optimal", "--flops", "-5"], "--flops must be a finite number > 0"),
        (["optimal", "--flops", "inf"], "--flops must be a finite number > 0"),
    ],
)
def test_non_positive_inputs_exit_2(fit_path, capsys, argv, needle):
    rc, out, err = _run(capsys, argv[0], "--fit", fit_path, *argv[1:])
    assert rc == 2 and needle in err and out == ""


def test_far_extrapolation_warns_with_its_factor(fit_path, capsys):
    rc, out, err = _run(capsys, "predict", "--fit", fit_path, "--params", "1e13", "--tokens", "1e11")
    reach = json.loads(out)["extrapolation"]
    assert rc == 0 and reach["factor"] == pytest.approx(1e13 / max(reach["params_range"]))
    assert reach["factor"] > 10 and "warning" in reach and "618x" in err
    rc, out, err = _run(capsys, "predict", "--fit", fit_path, "--params", "1e9", "--tokens", "1e11")
    reach = json.loads(out)["extrapolation"]
    assert rc == 0 and reach["factor"] == 1.0 and "warning" not in reach and "extrapolat" not in err


def test_extrapolation_factor_counts_both_sides():
    fit = {"data": {"params": [1e6, 1e8], "tokens": [1e9, 1e10], "used": [True, True]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extrapolation(fit, 5e6, 2e9)["factor"] == 1.0
        assert extrapolation(fit, 2e5, 2e9)["factor"] == pytest.approx(5.0)  # below: 1e6 / 2e5
    with pytest.warns(UserWarning, match="20x"):
        assert extrapolation(fit, 5e6, 2e11)["factor"] == pytest.approx(20.0)


def test_positive_refuses_what_it_should():
    assert positive("x", "3") == 3.0
    for bad in (0, -1, float("nan"), float("inf"), None, "a"):
        with pytest.raises(ValueError, match="x must be a finite number > 0"):
            positive("x", bad)


def test_size_only_law_on_several_budgets_per_size_warns(tmp_path, capsys):
    n = np.repeat([1e6, 2e6, 4e6], 3)
    d = np.tile([1e8, 2e8, 4e8], 3)
    loss = 2 + 30 * n**-0.3 + 40 * d**-0.3
    table = tmp_path / "t.csv"
    table.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss)))
    rc, out, err = _run(capsys, "fit", table, "--law", "power", "--out", tmp_path / "f.json", "--quiet")
    fit = json.loads((tmp_path / "f.json").read_text())
    assert rc == 0 and "no token term" in err and "3 of 3 sizes" in fit["warnings"][0]
    assert ignored_tokens(False, n, d) == [1e6, 2e6, 4e6] and ignored_tokens(True, n, d) == []
    rc, _, err = _run(capsys, "fit", table, "--law", "chinchilla", "--out", tmp_path / "g.json", "--quiet")
    assert rc == 0 and "no token term" not in err
    assert json.loads((tmp_path / "g.json").read_text())["warnings"] == []


def test_runs_prints_a_table_and_json_only_when_asked(capsys):
    rc, out, _ = _run(capsys, "runs", FIXTURE, "--columns", 'params="Model Size",flops="Training FLOP"')
    assert rc == 0 and out.splitlines()[0].split()[:2] == ["run", "step"]
    assert out.rstrip().endswith("245 points from 245 runs")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    rc, out, _ = _run(
        capsys, "runs", FIXTURE, "--columns", 'params="Model Size",flops="Training FLOP"', "--json"
    )
    assert rc == 0 and len(json.loads(out)) == 245
