"""The pipeline's distillation ladder: a small grid of KD students, the distillation law fitted on
all but one of them, and the held-out student predicted.

Students are ladder widths, distilled from several ladder rungs as teachers, each on the ladder's
token budget with the ladder's learning rate, schedule and seed, so every student's supervised
baseline is the ladder rung of its width (already trained). The supervised law is the
pipeline's own fit (`fit.json`), which gives `L~_S`; with one token budget the `reduced` form is
the one that can be identified (see `scaling.distill_law`). Results: `distill_ladder.json`,
`plots/distill_ladder.png` and a section of `report.md`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional


@dataclass
class DistillLadderConfig:
    """`distill_ladder:` block of a pipeline YAML (absent: no distillation ladder)."""

    teachers: Optional[list] = None  # ladder widths used as teachers (default: the three largest)
    students: Optional[list] = None  # student widths (default: the two smallest ladder widths)
    form: str = "reduced"  # distillation-law form: reduced (one token budget) or full
    bootstrap: int = 100  # bootstrap refits of the distillation law
    enabled: bool = True


def plan_grid(config: DistillLadderConfig, widths: list) -> list[tuple[int, int]]:
    """(teacher width, student width) pairs, student smaller than teacher; checked before compute."""
    widths = sorted(widths)
    teachers = sorted(config.teachers or widths[-3:])
    students = sorted(config.students or widths[:2])
    for name, chosen in (("teachers", teachers), ("students", students)):
        missing = [w for w in chosen if w not in widths]
        if missing:
            raise ValueError(
                f"distill_ladder.{name}: {missing} are not ladder widths {widths}; teachers are "
                "ladder rungs and every student's baseline is the ladder rung of its width."
            )
    if config.form not in ("reduced", "full"):
        raise ValueError(f"distill_ladder.form={config.form!r}: use reduced or full.")
    pairs = [(t, s) for t in teachers for s in students if s < t]
    need = 6 if config.form == "reduced" else 11  # parameters + 1 to fit, plus one held out
    if len(pairs) < need or len({t for t, _ in pairs}) < 2 or len({s for _, s in pairs}) < 2:
        raise ValueError(
            f"distill_ladder: {len(pairs)} (teacher, student) pairs with the student smaller than "
            f"its teacher; the {config.form} form needs {need} (one is held out), from at least 2 "
            "teachers and 2 student widths. Add teachers or students."
        )
    if config.form == "full":
        raise ValueError(
            "distill_ladder.form=full needs several token budgets, but the ladder trains one: use reduced."
        )
    return pairs


def train_grid(pipe, ladder: dict, pairs) -> list[dict]:
    """Train every KD student of the grid (skipping finished ones); returns their run records."""
    from .provenance import (
        train_run,
    )  # a finished run with the same settings is reused, a changed one retrained

    rungs = {r["width"]: r for r in ladder["runs"]}
    c = pipe.config
    out = []
    for teacher_width, width in pairs:
        teacher, rung = rungs[teacher_width], rungs[width]
        run_dir = os.path.join(pipe.root, "distill_ladder", f"T{teacher_width}_S{width}")
        out.append(
            {
                "teacher_width": teacher_width,
                "width": width,
                "dir": run_dir,
                "teacher_dir": teacher["dir"],
                "baseline_dir": rung["dir"],
            }
        )
        every = str(max(1, math.ceil(rung["steps"] / max(1, c.ladder.eval_points))))
        plan = next(p for p in pipe.plans if p.width == width)
        train_run(
            pipe.train_args()
            + [
                "--task",
                "causal-lm",
                "--model_config",
                json.dumps(plan.config),
                "--max_steps",
                str(rung["steps"]),
                "--lr_scheduler_type",
                "cosine",
                "--output_dir",
                run_dir,
                "--eval_steps",
                every,
                "--save_steps",
                every,
                *pipe.lr_args(width),
                "--teacher_model_name_or_path",
                teacher["dir"],
                "--alpha",
                str(c.distill.alpha),
                "--temperature",
                str(c.distill.temperature),
                "--kd_kind",
                c.distill.kd_kind,
            ],
            f"distill ladder {os.path.basename(run_dir)}",
            pipe.log,
        )
    return out


def _results(run_dir):
    with open(os.path.join(run_dir, "all_results.json")) as f:
        return json.load(f)


def fit_and_predict(pipe, runs: list[dict], config: DistillLadderConfig, fit: dict) -> dict:
    """Fit the law on all students but the largest one of the strongest teacher; predict that one."""
    from scaling.distill_fit import load_distill_runs, predict_from_dfit

    points = load_distill_runs([r["dir"] for r in runs], param_count=pipe.config.fit.param_count)
    for p, r in zip(points, runs):
        p.update(
            teacher_width=r["teacher_width"],
            width=r["width"],
            baseline_loss=_results(r["baseline_dir"])["eval_loss"],
        )
    held = max(range(len(points)), key=lambda i: (points[i]["width"], -points[i]["teacher_loss"]))
    train = [p for i, p in enumerate(points) if i != held]
    sup = fit["full"]
    dfit, note_held = _fit(train, sup, config, pipe.config.seed)
    h = points[held]
    pred = predict_from_dfit(dfit, h["params"], h["tokens"], h["teacher_loss"])
    error = 100.0 * (pred["loss"] - h["loss"]) / h["loss"]
    full, note = _fit(points, sup, config, pipe.config.seed)
    path = os.path.join(pipe.root, "dfit.json")
    from scaling.fit import save_fit

    save_fit(full, path)
    pipe.log(
        f"[distill ladder] held-out student T{h['teacher_width']}_S{h['width']}: predicted {pred['loss']:.4f}, "
        f"measured {h['loss']:.4f} ({error:+.2f}%)"
    )
    best_teacher = _best_teacher(full, points)
    # naive predictions of the same student, to judge the law's error against
    same_width = [p["loss"] for i, p in enumerate(points) if i != held and p["width"] == h["width"]]
    naive = {
        "supervised_law": pred["supervised_loss"],
        "mean_of_same_width": float(sum(same_width) / len(same_width)) if same_width else None,
    }
    naive_err = {
        k: (100.0 * (v - h["loss"]) / h["loss"] if v is not None else None) for k, v in naive.items()
    }
    spread = 100.0 * (max(p["loss"] for p in points) - min(p["loss"] for p in points)) / h["loss"]
    return {
        "form": config.form,
        "dfit": path,
        "params": full["params"],
        "ci": full.get("ci", {}),
        "at_bounds": full["at_bounds"],
        "bootstrap_note": "; ".join(
            f"{who}: {n}"
            for who, n in (("fit without the held-out student", note_held), ("fit on all students", note))
            if n
        ),
        "students": [
            {
                k: p[k]
                for k in (
                    "teacher_width",
                    "width",
                    "params",
                    "tokens",
                    "teacher_loss",
                    "loss",
                    "baseline_loss",
                )
            }
            | {"run": os.path.basename(r["dir"])}
            for p, r in zip(points, runs)
        ],
        "holdout": {
            "run": os.path.basename(runs[held]["dir"]),
            "teacher_width": h["teacher_width"],
            "width": h["width"],
            "predicted": pred["loss"],
            "interval": pred.get("interval"),
            "actual": h["loss"],
            "error_pct": error,
            "naive_error_pct": naive_err,
            "loss_spread_pct": spread,
        },
        "advice": best_teacher,
    }


def _fit(points, sup, config, seed):
    """The distillation fit with bootstrap intervals, or without them (and why) when too few students
    survive resampling."""
    from scaling.distill_fit import fit_distillation
    from scaling.logs import ScalingDataError

    # students that end at or below their teacher cannot be represented by Eq. 8: after hours of
    # training, leave them out (named in the fit's `below_teacher`) rather than fail the run
    try:
        fit = fit_distillation(
            points, sup, config.form, n_bootstrap=config.bootstrap, seed=seed, drop_below_teacher=True
        )
        return fit, None
    except ScalingDataError as err:
        if not config.bootstrap or "bootstrap" not in str(err):
            raise
        return fit_distillation(points, sup, config.form, drop_below_teacher=True), f"no intervals: {err}"


def _best_teacher(dfit, points) -> list[dict]:
    """Per student width: the teacher loss the fitted law prefers, and distil-or-not with the best
    available teacher (point estimates; supervised = the supervised fit at the same N, D)."""
    import numpy as np

    from scaling.distill_law import predict_distillation, supervised_terms

    out = []
    lts = sorted({p["teacher_loss"] for p in points})
    grid = np.linspace(min(lts) * 0.9, max(lts) * 1.1, 121)
    for width in sorted({p["width"] for p in points}):
        p = next(q for q in points if q["width"] == width)
        preds = predict_distillation(
            dfit, np.full(grid.size, p["params"]), np.full(grid.size, p["tokens"]), grid
        )
        j = int(np.argmin(preds))
        available = [(q["teacher_width"], q["teacher_loss"]) for q in points if q["width"] == width]
        at = predict_distillation(
            dfit,
            np.full(len(available), p["params"]),
            np.full(len(available), p["tokens"]),
            np.array([a[1] for a in available]),
        )
        i = int(np.argmin(at))
        sup = float(supervised_terms(dfit["supervised"], p["params"], p["tokens"])["loss"][0])
        out.append(
            {
                "width": width,
                "best_teacher_loss": float(grid[j]),
                "best_loss": float(preds[j]),
                "interior_optimum": 0 < j < grid.size - 1,
                "best_available_teacher_width": available[i][0],
                "loss_distill": float(at[i]),
                "loss_supervised": sup,
                "verdict": "distill" if at[i] < sup else "supervised",
            }
        )
    return out


def plot(result: dict, dfit_path: str, path: str) -> str:
    """Student loss against teacher loss, one colour per student size: measured and fitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from scaling.distill_fit import load_any_fit
    from scaling.distill_law import predict_distillation

    dfit = load_any_fit(dfit_path)
    students = result["students"]
    lts = [s["teacher_loss"] for s in students]
    grid = np.linspace(min(lts) * 0.95, max(lts) * 1.05, 80)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, width in enumerate(sorted({s["width"] for s in students})):
        mine = [s for s in students if s["width"] == width]
        color = f"C{i}"
        ax.plot(
            grid,
            predict_distillation(dfit, mine[0]["params"], mine[0]["tokens"], grid),
            "-",
            color=color,
            label=f"law, width {width} ({mine[0]['params']:.3g} params)",
        )
        ax.scatter([s["teacher_loss"] for s in mine], [s["loss"] for s in mine], color=color, zorder=3)
        ax.axhline(mine[0]["baseline_loss"], color=color, ls=":", lw=1)
    h = result["holdout"]
    held = next(s for s in students if s["run"] == h["run"])
    ax.scatter(
        [held["teacher_loss"]],
        [h["actual"]],
        marker="s",
        s=80,
        facecolors="none",
        edgecolors="k",
        label=f"held out ({h['error_pct']:+.2f}%)",
        zorder=4,
    )
    ax.plot(grid, grid, color="0.6", lw=1, ls="--", label="student = teacher")
    ax.set(
        xlabel="teacher cross-entropy L_T",
        ylabel="student cross-entropy L_S",
        title=f"Distillation law ({result['form']}); dotted: supervised baselines",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(result: dict) -> str:
    """The report.md section."""
    h = result["holdout"]
    lines = [
        "",
        "## Distillation ladder",
        "",
        f"Distillation law ({result['form']} form) fitted on {len(result['students']) - 1} students, "
        f"the {h['run']} student held out: predicted {h['predicted']:.4f}, measured {h['actual']:.4f} "
        f"(**{h['error_pct']:+.2f}%**). For scale: the students' losses span {h['loss_spread_pct']:.2f}% "
        "of it; predicting the supervised law's loss for that student errs by "
        f"{h['naive_error_pct']['supervised_law']:+.2f}%"
        + (
            f", the mean of the other students of its width by {h['naive_error_pct']['mean_of_same_width']:+.2f}%"
            if h["naive_error_pct"]["mean_of_same_width"] is not None
            else ""
        )
        + ".",
        "",
        *(
            [
                f"Warning: the fit ends at optimiser bounds in {', '.join(result['at_bounds'])}: these students do "
                "not determine those parameters (more teachers, or better-trained ones, would).",
                "",
            ]
            if result["at_bounds"]
            else []
        ),
        *([f"{result['bootstrap_note']}", ""] if result.get("bootstrap_note") else []),
        "| run | teacher width | student width | teacher loss | KD loss | supervised (ladder rung) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["students"]:
        lines.append(
            f"| {s['run']} | {s['teacher_width']} | {s['width']} | {s['teacher_loss']:.4f} | "
            f"{s['loss']:.4f} | {s['baseline_loss']:.4f} |"
        )
    lines += [
        "",
        "| student width | best available teacher | predicted KD | predicted supervised | verdict |",
        "|---:|---:|---:|---:|---|",
    ]
    for a in result["advice"]:
        lines.append(
            f"| {a['width']} | {a['best_available_teacher_width']} | {a['loss_distill']:.4f} | "
            f"{a['loss_supervised']:.4f} | {a['verdict']} |"
        )
    lines += ["", f"![distillation ladder]({result['plot']})", ""]
    return "\n".join(lines)


def run_stage(pipe, ladder: dict, fit: dict) -> dict:
    """Train the grid, fit, predict the held-out student, plot; the pipeline stage's result."""
    config = pipe.config.distill_ladder
    pairs = plan_grid(config, [r["width"] for r in ladder["runs"]])
    runs = train_grid(pipe, ladder, pairs)
    result = fit_and_predict(pipe, runs, config, fit)
    result["plot"] = os.path.relpath(
        plot(result, result["dfit"], os.path.join(pipe.root, "plots", "distill_ladder.png")), pipe.root
    )
    return result


def append_to_report(pipe, result: dict, summary: dict) -> None:
    """Add the section to report.md and the result to summary.json."""
    from .files import write_json_atomic

    summary["distill_ladder"] = result
    write_json_atomic(os.path.join(pipe.root, "summary.json"), summary)
    with open(os.path.join(pipe.root, "report.md"), "a", encoding="utf-8") as f:
        f.write(markdown(result))
