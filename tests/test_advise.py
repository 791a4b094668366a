"""`scaling advise`: the verdict and the student it recommends, checked against a brute-force
search written separately, the teacher-cost models, `--target-loss`, and the refusals."""

import json

import numpy as np
import pytest
from test_distill_law import SUP, TRUE_FULL, _reference_full, _synthetic

from scaling.advise import TeacherCost, advise, advise_target
from scaling.cli import main
from scaling.distill_fit import fit_distillation
from scaling.optimal import compute_optimal


@pytest.fixture(scope="module")
def dfit():
    n, d, lt, loss = _synthetic("full", TRUE_FULL, 0.0)
    pts = [
        {"params": a, "tokens": b, "teacher_loss": c, "loss": e, "run": str(i), "source": str(i)}
        for i, (a, b, c, e) in enumerate(zip(n, d, lt, loss))
    ]
    return fit_distillation(pts, SUP, "full", n_bootstrap=6)


def _brute_force(lt, flops, rate=0.0, fixed=0.0):
    """Best student on a dense grid of N, Eq. 8 evaluated directly (float64)."""
    n = np.logspace(6, 13, 200001)
    d = (flops - fixed) / (6 * n + rate)
    ok = d >= 1
    loss = _reference_full(TRUE_FULL, n[ok], d[ok], np.full(ok.sum(), lt))
    j = int(np.argmin(loss))
    return n[ok][j], loss[j]


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("free", {}),
        ("inference", {"teacher_params": 7e9}),
        ("full", {"teacher_params": 7e9, "teacher_tokens": 2e10, "students": 4}),
    ],
)
def test_best_student_matches_brute_force(dfit, mode, kw):
    cost = TeacherCost(mode, **kw)
    adv = advise(SUP, dfit, 1.7, 1e21, cost)
    n_ref, l_ref = _brute_force(1.7, 1e21, cost.rate, cost.fixed)
    assert adv["distill"]["loss"] == pytest.approx(l_ref, abs=2e-6)
    assert adv["distill"]["params"] == pytest.approx(n_ref, rel=2e-3)
    d = adv["distill"]
    assert 6 * d["params"] * d["tokens"] + d["teacher_flops"] == pytest.approx(1e21, rel=1e-9)
    opt = compute_optimal("chinchilla_gamma", SUP["params"], 1e21)
    assert adv["loss_supervised"] == pytest.approx(opt["loss"], rel=1e-9)
    assert adv["leaning"] == ("distill" if adv["loss_distill"] < adv["loss_supervised"] else "train")
    assert adv["verdict"] == adv["leaning"]  # SUP has no bootstrap: no intervals to overlap
    for key in (
        "student_params",
        "student_tokens",
        "loss_distill",
        "loss_supervised",
        "loss_distill_interval",
        "loss_supervised_interval",
        "verdict",
        "reason",
    ):
        assert key in adv
    lo, hi = adv["loss_distill_interval"]
    assert lo <= hi


def test_teacher_cost_orders_the_losses(dfit):
    loss = {}
    for name, cost in {
        "free": TeacherCost(),
        "inference": TeacherCost("inference", 7e9),
        "full": TeacherCost("full", 7e9, 1e10),
        "inference_shared": TeacherCost("inference", 7e9, students=20),
        "full_shared": TeacherCost("full", 7e9, 1e10, students=20),
    }.items():
        loss[name] = advise(SUP, dfit, 1.7, 1e21, cost)["loss_distill"]
    assert loss["free"] < loss["inference_shared"] < loss["inference"] < loss["full"]
    assert loss["inference_shared"] < loss["full_shared"] < loss["full"]
    # a teacher whose training alone exceeds the budget: train from scratch
    adv = advise(SUP, dfit, 1.7, 1e21, TeacherCost("full", 7e9, 1e12))
    assert adv["verdict"] == "train" and adv["distill"] is None


def test_target_loss_is_the_cheapest_budget(dfit):
    cost = TeacherCost("inference", 7e9)
    adv = advise_target(SUP, dfit, 1.7, 2.0, cost)
    c = adv["flops_distill"]
    assert advise(SUP, dfit, 1.7, c, cost)["loss_distill"] <= 2.0 + 1e-9
    assert advise(SUP, dfit, 1.7, 0.99 * c, cost)["loss_distill"] > 2.0
    c_sup = adv["flops_supervised"]
    assert compute_optimal("chinchilla_gamma", SUP["params"], c_sup)["loss"] == pytest.approx(2.0, abs=1e-9)
    assert adv["verdict"] == ("distill" if c < c_sup else "train")
    below_teacher = advise_target(SUP, dfit, 1.7, 1.65, cost)
    assert below_teacher["verdict"] == "train" and below_teacher["flops_distill"] is None


def test_refusals(tmp_path, capsys, dfit):
    sup, df = tmp_path / "sup.json", tmp_path / "dfit.json"
    sup.write_text(json.dumps(SUP))
    df.write_text(json.dumps(dfit))
    base = ["advise", "--fit", str(sup), "--teacher-loss", "1.7", "--flops", "1e21"]
    assert main(base) == 2
    assert "needs a distillation fit: --dfit" in capsys.readouterr().err
    assert main(base + ["--dfit", str(df), "--teacher-cost", "full", "--teacher-params", "7e9"]) == 2
    assert "--teacher-tokens" in capsys.readouterr().err
    assert main(base + ["--dfit", str(df), "--teacher-cost", "inference"]) == 2
    assert "--teacher-params" in capsys.readouterr().err
    power = tmp_path / "power.json"
    power.write_text(json.dumps({"law": "power", "params": {"E": 1.5, "A": 100.0, "alpha": 0.3}}))
    assert (
        main(["advise", "--fit", str(power), "--dfit", str(df), "--teacher-loss", "1.7", "--flops", "1e21"])
        == 2
    )
    assert "token term" in capsys.readouterr().err
    out = tmp_path / "adv.json"
    assert main(base + ["--dfit", str(df), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["verdict"] in ("distill", "train")


def test_a_supervised_fit_other_than_the_dfits_is_refused(tmp_path, capsys, dfit):
    other = {**SUP, "params": {**SUP["params"], "E": 1.30}}
    sup, own, df = tmp_path / "other.json", tmp_path / "sup.json", tmp_path / "dfit.json"
    sup.write_text(json.dumps(other))
    own.write_text(json.dumps(SUP))
    df.write_text(json.dumps(dfit))
    tail = ["--dfit", str(df), "--teacher-loss", "1.7", "--flops", "1e21", "--json"]
    assert main(["advise", "--fit", str(sup), *tail]) == 2
    err = capsys.readouterr().err
    assert "not the supervised fit the --dfit was made on" in err and "E 1.3 vs 1.22" in err
    chinchilla = tmp_path / "chin.json"
    chinchilla.write_text(
        json.dumps(
            {
                "law": "chinchilla",
                "params": {k: SUP["params"][k] for k in "EABalphabeta" if k in SUP["params"]}
                | {"alpha": 0.4, "beta": 0.4},
            }
        )
    )
    assert main(["advise", "--fit", str(chinchilla), *tail]) == 2
    assert "law 'chinchilla' vs 'chinchilla_gamma'" in capsys.readouterr().err
    assert main(["advise", *tail]) == 0  # --dfit alone: its own supervised fit
    alone = json.loads(capsys.readouterr().out)
    assert main(["advise", "--fit", str(own), *tail]) == 0
    assert json.loads(capsys.readouterr().out)["loss_supervised"] == alone["loss_supervised"]


def _with_spread(fit, scale):
    """A supervised fit whose bootstrap refits spread E by +-scale (an interval on its loss)."""
    names = list(fit["params"])
    rows = [
        [fit["params"][k] + (e if k == "E" else 0.0) for k in names] for e in np.linspace(-scale, scale, 21)
    ]
    return {**fit, "bootstrap": {"param_names": names, "samples": rows}}


def test_verdict_is_inconclusive_when_the_intervals_overlap(dfit):
    wide = advise(_with_spread(SUP, 0.5), dfit, 1.7, 1e21)
    lo_d, hi_d = wide["loss_distill_interval"]
    lo_s, hi_s = wide["loss_supervised_interval"]
    assert wide["verdict"] == "inconclusive" and wide["leaning"] in ("distill", "train")
    assert wide["interval_overlap"] == pytest.approx(min(hi_d, hi_s) - max(lo_d, lo_s))
    assert f"overlap by {wide['interval_overlap']:.4f} nats" in wide["reason"]
    narrow = advise(_with_spread(SUP, 1e-6), dfit, 1.7, 1e21)
    assert narrow["interval_overlap"] < 0 and narrow["verdict"] == narrow["leaning"] != "inconclusive"
    assert "nats apart" in narrow["reason"]
