"""Distillation runs to a fitted distillation law (dfit.json), bootstrap intervals, predictions.

Inputs are structured files only:

- **KD run directories** written by `distill train` (a folder of them is searched): the
  student's `eval_loss`, parameter counts and `train_tokens` come from `all_results.json` /
  `trainer_state.json` / `config.json` through `scaling.logs.read_run_dir`; the teacher's
  cross-entropy on the same evaluation data from `all_results.json`'s `eval_teacher_loss`.
  Runs without a teacher (`alpha: 0` baselines) are skipped with a warning.
- **CSV or JSON tables** with the columns `student_params`, `student_tokens`, `teacher_loss`,
  `loss` (optional `run`).

`fit_distillation` returns the self-contained dfit.json dictionary: the supervised fit it
builds on is copied in, so `scaling predict --fit dfit.json` needs no other file.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .distill_law import (
    FORMULA,
    REDUCED_FORMULA,
    DistillationForm,
    check_distillation_data,
    fit_distillation_arrays,
    predict_distillation,
)
from .logs import ScalingDataError

__all__ = [
    "DistillPoint",
    "load_distill_runs",
    "fit_distillation",
    "predict_from_dfit",
    "is_distillation_fit",
    "load_any_fit",
    "cmd_fit_distillation",
]

TABLE_COLUMNS = ("student_params", "student_tokens", "teacher_loss", "loss")


class DistillPoint(dict):
    """One distilled student: `params, tokens, teacher_loss, loss, teacher_params, run, source`."""


def _read_table(path: Path) -> list:
    from .logs import _number, _table_rows

    rows, available = _table_rows(path)
    missing = [c for c in TABLE_COLUMNS if c not in available]
    if missing:
        raise ScalingDataError(
            f"{path}: missing columns {missing}; a distillation table needs "
            f"{list(TABLE_COLUMNS)} (the table has {available})"
        )
    if not rows:
        raise ScalingDataError(f"{path}: the table has no rows")
    out = []
    for label, row in rows:
        where = f"{path}: {label}"
        vals = {c: _number(where, c, row.get(c)) for c in TABLE_COLUMNS}
        out.append(
            DistillPoint(
                params=vals["student_params"],
                tokens=vals["student_tokens"],
                teacher_loss=vals["teacher_loss"],
                loss=vals["loss"],
                teacher_params=float(row.get("teacher_params") or 0.0),
                run=str(row.get("run") or label),
                source=where,
            )
        )
    return out


def _run_dirs(path: Path) -> list:
    if (path / "all_results.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("all_results.json") if "checkpoint-" not in p.parent.name)
    if not found:
        raise ScalingDataError(
            f"{path}: no all_results.json here nor below: not a KD run "
            "directory (train with `distill train`, which writes it)"
        )
    return found


def _read_run(run_dir: Path, param_count: str):
    from .logs import read_run_dir

    results = json.loads((run_dir / "all_results.json").read_text())
    if not results.get("teacher_params"):
        return None
    lt = results.get("eval_teacher_loss")
    if not isinstance(lt, (int, float)):
        raise ScalingDataError(
            f"{run_dir}/all_results.json: no eval_teacher_loss (the teacher's "
            "cross-entropy on the evaluation data); evaluate the run with its "
            "teacher loaded, or give a table with a teacher_loss column"
        )
    pt = read_run_dir(run_dir, "final", param_count)[-1]
    return DistillPoint(
        params=pt.params,
        tokens=pt.tokens,
        teacher_loss=float(lt),
        loss=pt.loss,
        teacher_params=float(results.get("teacher_non_embedding_params") or results["teacher_params"]),
        run=run_dir.name,
        source=str(run_dir),
    )


def load_distill_runs(inputs, param_count: str = "non_embedding") -> list:
    """Read KD run directories (or folders of them) and distillation tables.

    Args:
        inputs (`list`): run directories, folders of runs, CSV or JSON tables.
        param_count (`str`): student N from run directories, `"non_embedding"` (the paper's
            N_S, default) or `"total"`. Tables are taken as given.

    Returns:
        `list[DistillPoint]`.
    """
    out, skipped = [], []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_file():
            out += _read_table(p)
        elif p.is_dir():
            for run in _run_dirs(p):
                pt = _read_run(run, param_count)
                (out.append(pt) if pt is not None else skipped.append(run.name))
        else:
            raise ScalingDataError(f"{p}: no such file or directory")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} runs without a teacher (supervised baselines): "
            f"{', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}",
            stacklevel=2,
        )
    if not out:
        raise ScalingDataError("no distillation runs found in the inputs")
    return out


# ------------------------------------------------------------------------- fitting
# parameters that move together along the law's ridge: one at a bound makes the other an artefact
_COUPLED = {"c1": ("d1",), "d1": ("c1",)}


def _pinned(names, at_bounds) -> list:
    hit = set(at_bounds)
    for k in at_bounds:
        hit |= set(_COUPLED.get(k, ()))
    return [k in hit for k in names]


def _bootstrap(arr, sup_fit, form, n_boot, seed, theta0, kind, delta):
    """Resample students with replacement and refit from the full-data optimum. Refits that failed
    or did not converge are left out; those that ended on an optimiser bound are kept and flagged
    (`scaling.intervals.percentile_intervals` leaves the interval open on their side)."""
    rng = np.random.default_rng(seed)
    names = DistillationForm(form).param_names
    samples, pinned = [], []
    counts = {"n_failed": 0, "n_not_converged": 0, "n_at_bound": 0}
    for _ in range(n_boot):
        idx = rng.integers(0, arr["loss"].size, arr["loss"].size)
        cols = [arr[k][idx] for k in ("params", "tokens", "teacher_loss", "loss")]
        try:
            check_distillation_data(form, *cols)
            res = fit_distillation_arrays(*cols, sup_fit, form, kind, delta, starts=[theta0], top_k=2)
        except ValueError:
            counts["n_failed"] += 1
            continue
        if not res["converged"]:
            counts["n_not_converged"] += 1
            continue
        counts["n_at_bound"] += bool(res["at_bounds"])
        samples.append([res["params"][k] for k in names])
        pinned.append(_pinned(names, res["at_bounds"]))
    return (
        np.array(samples, float).reshape(-1, len(names)),
        np.array(pinned, bool).reshape(-1, len(names)),
        counts,
    )


def fit_distillation(
    points,
    sup_fit: dict,
    form: str = "full",
    loss: str = "huber",
    delta: float = 1e-3,
    n_bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    drop_below_teacher: bool = False,
    profile: bool = False,
) -> dict:
    """Fit the distillation law to distilled students; returns the dfit.json dictionary.

    Args:
        points (`list[DistillPoint]`): from `load_distill_runs`.
        sup_fit (`dict`): the supervised fit (fit.json of an L(N, D) or power law).
        form (`str`): `"full"` (Eq. 8, nine parameters) or `"reduced"` (four).
        loss, delta: robust loss.
        n_bootstrap (`int`), seed (`int`), level (`float`): bootstrap refits and interval level.
        drop_below_teacher (`bool`): leave out students with `L_S <= L_T` (Eq. 8 cannot
            represent them) instead of refusing them; `below_teacher` in the result names them.
        profile (`bool`): profile every parameter (`scaling.distill_profile`): which ones the
            students pin down.
    """
    below = [p for p in points if not p["loss"] > p["teacher_loss"]]
    if below and not drop_below_teacher:
        raise ScalingDataError(
            f"{len(below)} of {len(points)} students end at or below their teacher's loss (L_S <= L_T), which "
            "the distillation law (Eq. 8: L_S = L_T + a positive term) cannot represent: "
            + ", ".join(f"{p['run']} (L_S {p['loss']:.4g} <= L_T {p['teacher_loss']:.4g})" for p in below[:8])
            + (" ..." if len(below) > 8 else "")
            + ". Check those runs, or leave them out with --drop-below-teacher"
        )
    if below:
        warnings.warn(
            f"left out {len(below)} students with L_S <= L_T (--drop-below-teacher): "
            + ", ".join(p["run"] for p in below[:8])
            + (" ..." if len(below) > 8 else ""),
            stacklevel=2,
        )
        points = [p for p in points if p["loss"] > p["teacher_loss"]]
    arr = {k: np.array([p[k] for p in points], float) for k in ("params", "tokens", "teacher_loss", "loss")}
    sources = [p["source"] for p in points]
    check_distillation_data(form, arr["params"], arr["tokens"], arr["teacher_loss"], arr["loss"], sources)
    res = fit_distillation_arrays(
        arr["params"], arr["tokens"], arr["teacher_loss"], arr["loss"], sup_fit, form, loss, delta
    )
    fm = DistillationForm(form)
    out = {
        "version": 1,
        "law": "distillation",
        "form": form,
        "formula": FORMULA if form == "full" else REDUCED_FORMULA,
        "fixed": fm.fixed,
        **res,
        "loss": loss,
        "delta": delta,
        "param_count": sup_fit.get("param_count", "as given"),
        "below_teacher": {
            "policy": "dropped" if below else "none found",
            "runs": [p["run"] for p in below],
            "sources": [p["source"] for p in below],
        },
        "supervised": {k: sup_fit[k] for k in ("law", "params") if k in sup_fit}
        | {"param_count": sup_fit.get("param_count", "total")},
        "data": {
            "params": arr["params"].tolist(),
            "tokens": arr["tokens"].tolist(),
            "teacher_loss": arr["teacher_loss"].tolist(),
            "loss": arr["loss"].tolist(),
            "teacher_params": [p.get("teacher_params", 0.0) for p in points],
            "run": [p["run"] for p in points],
            "source": sources,
            "predicted": predict_distillation(
                {"form": form, "params": res["params"], "supervised": sup_fit},
                arr["params"],
                arr["tokens"],
                arr["teacher_loss"],
            ).tolist(),
        },
    }
    if profile:
        from .distill_profile import profile_distillation

        out["profile"] = profile_distillation(
            arr["params"], arr["tokens"], arr["teacher_loss"], arr["loss"], sup_fit, res, loss, delta
        )
    if n_bootstrap:
        from .intervals import percentile_intervals

        samples, pinned, counts = _bootstrap(
            arr, sup_fit, form, n_bootstrap, seed, np.array(res["internal"]), loss, delta
        )
        if len(samples) < 2:
            raise ScalingDataError(
                f"bootstrap: only {len(samples)} of {n_bootstrap} refits "
                f"converged ({counts}); too few students to resample"
            )
        names = list(fm.param_names)
        result = percentile_intervals(names, samples, [res["params"][k] for k in names], pinned, level)
        out["ci"] = {k: r["interval"] for k, r in result.items()}
        out["ci_status"] = {k: r["status"] for k, r in result.items()}
        out["ci_notes"] = {k: r["note"] for k, r in result.items() if r["note"]}
        out["bootstrap"] = {
            "n": n_bootstrap,
            "seed": seed,
            "level": level,
            "n_converged": len(samples),
            **counts,
            "param_names": names,
            "samples": [[float(v) for v in r] for r in samples],
            "at_bound": [bool(r.any()) for r in pinned],
        }
    return out


def is_distillation_fit(fit: dict) -> bool:
    """Whether a fit dictionary is a distillation fit (dfit.json)."""
    return fit.get("law") == "distillation"


def load_any_fit(path) -> dict:
    """Read a supervised fit.json (checked by `scaling.fit.load_fit`) or a dfit.json."""
    from .fit import load_fit

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return load_fit(path)  # its own clear errors
    if not (isinstance(raw, dict) and is_distillation_fit(raw)):
        return load_fit(path)
    missing = [k for k in ("form", "params", "supervised") if k not in raw]
    if missing or raw.get("form") not in ("full", "reduced"):
        raise ScalingDataError(f"{path}: not a complete distillation fit (missing {missing})")
    need = DistillationForm(raw["form"]).param_names
    if [k for k in need if k not in raw["params"]]:
        raise ScalingDataError(
            f"{path}: distillation parameters missing: {[k for k in need if k not in raw['params']]}"
        )
    return raw


def predict_from_dfit(
    dfit: dict, params, tokens, teacher_loss, level: float = 0.95, warn_extrapolation: bool = False
) -> dict:
    """Predicted student loss, with a bootstrap interval when the fit has samples.

    The interval is the spread of the distillation fit's bootstrap refits at the supervised
    fit's point estimate (the supervised fit's own uncertainty is not propagated).

    Returns:
        `{"loss", "supervised_loss", "interval", "level"}` (interval for bootstrapped fits).
    """
    from .distill_law import supervised_terms

    for name, v in (("--params", params), ("--tokens", tokens), ("--teacher-loss", teacher_loss)):
        if v is None or not math.isfinite(float(v)) or float(v) <= 0:
            raise ValueError(f"{name} must be a finite number > 0 for a distillation fit, got {v!r}")
    loss = float(predict_distillation(dfit, params, tokens, teacher_loss))
    out = {
        "loss": loss,
        "teacher_loss": float(teacher_loss),
        "supervised_loss": float(np.ravel(supervised_terms(dfit["supervised"], params, tokens)["loss"])[0]),
        "param_count": dfit.get("param_count", "as given"),
    }
    if warn_extrapolation:
        from .checks import extrapolation

        reach = extrapolation(dfit, float(params), float(tokens))
        if reach:
            out["extrapolation"] = reach
    boot = dfit.get("bootstrap") or {}
    if boot.get("samples"):
        from .intervals import percentile_intervals

        names = boot["param_names"]
        preds = [
            float(predict_distillation({**dfit, "params": dict(zip(names, r))}, params, tokens, teacher_loss))
            for r in boot["samples"]
        ]
        pinned = boot.get("at_bound") or [False] * len(preds)  # a refit at a bound: an artefact
        res = percentile_intervals(["loss"], np.array(preds)[:, None], [loss], np.array(pinned), level)[
            "loss"
        ]
        out["interval"], out["interval_status"] = res["interval"], res["status"]
        if res["note"]:
            out["interval_note"] = res["note"]
        out["level"] = level
    return out


# ------------------------------------------------------------------------ command line
def cmd_fit_distillation(args) -> dict:
    """`scaling fit RUNS --law distillation --supervised-fit sup.json [--form reduced]`."""
    import sys

    from .fit import load_fit, save_fit

    if not args.supervised_fit:
        raise ScalingDataError(
            "--law distillation needs --supervised-fit sup.json: the "
            "supervised fit that gives L~_S = L(N_S, D_S) (scaling fit "
            "--law chinchilla_gamma on supervised runs)"
        )
    sup = load_fit(args.supervised_fit)
    kind = args.param_count or "non_embedding"
    if sup.get("param_count") not in (None, kind, "mixed") and any(Path(i).is_dir() for i in args.inputs):
        raise ScalingDataError(
            f"{args.supervised_fit} counts N as {sup['param_count']!r} "
            f"but the KD runs are read with --param-count {kind}; use the "
            "same count for both fits"
        )
    points = load_distill_runs(args.inputs, kind)
    dfit = fit_distillation(
        points,
        sup,
        args.form,
        args.loss,
        args.delta,
        args.bootstrap,
        args.seed,
        args.level,
        drop_below_teacher=args.drop_below_teacher,
        profile=args.profile,
    )
    if args.out:
        save_fit(dfit, args.out)
    if not args.quiet:
        from .intervals import format_interval

        lines = [
            f"distillation law ({dfit['form']}) on {dfit['n_points']} students: objective "
            f"{dfit['objective']:.6g}, {'converged' if dfit['converged'] else 'NOT converged'}"
            + (f", at bounds: {dfit['at_bounds']}" if dfit["at_bounds"] else "")
        ]
        for k, v in dfit["params"].items():
            lines.append(f"  {k:>12} = {v:.5g}  {format_interval(dfit, k)}".rstrip())
        prof = dfit.get("profile")
        if prof:
            lines.append(
                "profile: "
                + (
                    "every parameter pinned down"
                    if not prof["undetermined"]
                    else f"not pinned down by these students: {', '.join(prof['undetermined'])}"
                )
            )
        boot = dfit.get("bootstrap")
        if boot:
            lines.append(
                f"bootstrap: {boot['n']} refits, {boot['n_converged']} converged "
                f"({boot['n_at_bound']} at a bound: their side is left open), "
                f"{boot['n_failed']} failed, {boot['n_not_converged']} not converged"
            )
        print("\n".join(lines), file=sys.stderr)
    if args.json:
        print(json.dumps({k: v for k, v in dfit.items() if k not in ("bootstrap", "data")}, indent=1))
    return dfit
