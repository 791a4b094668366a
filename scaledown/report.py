"""`summary.json`, `report.md` and `plots/*.png` for one pipeline run."""

from __future__ import annotations

import json
import os

from .files import write_json_atomic
from .provenance import effective_config, render_config_markdown
from .significance import kd_headline, throughput_note


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_history(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "trainer_state.json")) as f:
        return json.load(f)["log_history"]


def plot_learning_curves(teacher: dict, kd: dict, base: dict, path: str) -> str:
    """Held-out cross-entropy against training tokens for teacher, KD students and baselines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = [
        ("teacher", [teacher["dir"]], "black"),
        ("KD student", [r["dir"] for r in kd["runs"]], "tab:blue"),
        ("baseline", [r["dir"] for r in base["runs"]], "tab:orange"),
    ]
    for label, dirs, color in styles:
        for i, run_dir in enumerate(dirs):
            history = _log_history(run_dir)
            evals = [h for h in history if "eval_loss" in h and "num_input_tokens_seen" in h]
            train = [h for h in history if "ce_loss" in h and "num_input_tokens_seen" in h]
            name = label if i == 0 else None
            if evals:
                ax.plot(
                    [h["num_input_tokens_seen"] for h in evals],
                    [h["eval_loss"] for h in evals],
                    "o-",
                    color=color,
                    label=f"{name} (validation)" if name else None,
                    alpha=0.9 - 0.3 * i,
                )
            if train:
                ax.plot(
                    [h["num_input_tokens_seen"] for h in train],
                    [h["ce_loss"] for h in train],
                    "-",
                    color=color,
                    alpha=0.3,
                    lw=1,
                    label=f"{name} (train CE)" if name else None,
                )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eval_curve(run_dir: str) -> dict[int, float]:
    """Held-out loss by training tokens seen, from one run's Trainer log."""
    return {
        int(h["num_input_tokens_seen"]): h["eval_loss"]
        for h in _log_history(run_dir)
        if "eval_loss" in h and "num_input_tokens_seen" in h
    }


def learning_curve_table(teacher: dict, kd: dict, base: dict) -> list[dict]:
    """KD against labels-only at every evaluated budget: mean held-out loss over seeds, the difference, and
    the share of the baseline-to-teacher gap that KD closed there (the report's learning-curve table).

    Only budgets evaluated in every KD and every baseline run are compared, so each row averages the same
    seeds on both sides. The teacher's loss is its final validation loss (it does not change with the
    student's budget).
    """
    kd_curves = [_eval_curve(r["dir"]) for r in kd["runs"]]
    base_curves = [_eval_curve(r["dir"]) for r in base["runs"]]
    teacher_curve = _eval_curve(teacher["dir"])
    teacher_loss = teacher_curve[max(teacher_curve)] if teacher_curve else None
    budgets = set.intersection(*(set(c) for c in kd_curves)) if kd_curves else set()
    rows = []
    for tokens in sorted(budgets):
        # a baseline seed reused from the ladder may have been evaluated on another schedule: only those
        # evaluated at this budget count, and the row says how many did
        base_here = [c[tokens] for c in base_curves if tokens in c]
        if not base_here:
            continue
        kd_loss = sum(c[tokens] for c in kd_curves) / len(kd_curves)
        base_loss = sum(base_here) / len(base_here)
        gap = None if teacher_loss is None else base_loss - teacher_loss
        rows.append(
            {
                "tokens": tokens,
                "kd_loss": kd_loss,
                "baseline_loss": base_loss,
                "kd_minus_baseline": kd_loss - base_loss,
                "gap_closed": (base_loss - kd_loss) / gap if gap and gap > 0 else None,
                "teacher_loss": teacher_loss,
                "kd_seeds": len(kd_curves),
                "baseline_seeds": len(base_here),
            }
        )
    return rows


def render_learning_curve(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = [
        "## KD against labels-only, by training budget",
        "",
        "Validation loss, mean over seeds, at each budget both students were evaluated (the curves are in "
        "plots/learning_curves.png). Negative KD - baseline means KD is ahead; the last column is the share of "
        "the baseline-to-teacher gap KD closed at that budget.",
        "",
        "| tokens | KD student | baseline | KD - baseline | gap closed | seeds (KD, baseline) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        closed = "" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%"
        out.append(
            f"| {r['tokens']:,} | {r['kd_loss']:.4f} | {r['baseline_loss']:.4f} | "
            f"{r['kd_minus_baseline']:+.4f} | {closed} | {r['kd_seeds']}, {r['baseline_seeds']} |"
        )
    if rows[0]["teacher_loss"] is not None:
        out.append(f"\nTeacher (final): {rows[0]['teacher_loss']:.4f}.")
    return out + [""]


def plot_fit_with_holdout(fit: dict, path: str) -> str:
    """Loss against non-embedding parameters: the ladder, the fit, and the held-out prediction."""
    import numpy as np

    from scaling.laws import predict

    plt = _plt()
    full = fit["full"]
    data = full["data"]
    n, loss = np.array(data["params"]), np.array(data["loss"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.geomspace(n.min() / 1.5, n.max() * 3, 100)
    tokens = np.full_like(grid, np.median(data["tokens"]))
    ax.plot(
        grid,
        predict(full["law"], full["params"], grid, tokens),
        "-",
        color="tab:blue",
        label="fit on all rungs",
    )
    if "ci" in full and "bootstrap" in full:
        samples = [
            dict(zip(full["bootstrap"]["param_names"], s))
            for s in full["bootstrap"]["samples"]
            if None not in s
        ]
        if samples:
            curves = np.array([predict(full["law"], s, grid, tokens) for s in samples])
            ax.fill_between(
                grid,
                np.percentile(curves, 2.5, 0),
                np.percentile(curves, 97.5, 0),
                color="tab:blue",
                alpha=0.15,
                label="95% bootstrap band",
            )
    ax.plot(n, loss, "o", color="black", label="ladder rungs (validation loss)")
    if "holdout" in fit:
        h = fit["holdout"]
        held = fit["holdout"]["fit"]
        ax.plot(
            grid,
            predict(held["law"], held["params"], grid, tokens),
            "--",
            color="tab:red",
            label="fit without the largest rung",
        )
        ax.plot(
            [h["params"]],
            [h["predicted"]],
            "x",
            color="tab:red",
            ms=10,
            label=f"predicted {h['predicted']:.3f} vs measured {h['actual']:.3f} ({h['error_pct']:+.1f}%)",
        )
    span = loss.max() - loss.min()
    ax.set_ylim(
        loss.min() - 0.6 * span - 0.02, loss.max() + 0.6 * span + 0.02
    )  # keep the band from hiding the data
    ax.set_xscale("log")
    ax.set_xlabel(f"{full.get('param_count', 'total').replace('_', '-')} parameters N")
    ax.set_ylabel("validation loss")
    p = full["params"]
    ax.set_title(
        f"L(N) = {p.get('E', 0):.2f} + {p.get('A', 0):.3g} N^-{p.get('alpha', 0):.3f}"
        if full["law"] == "power"
        else f"{full['law']} fit"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_envelope(fit: dict) -> dict:
    """The minimum-loss envelope of the rungs' learning curves, N counted as the fit counts it
    (what `scaling envelope` gives on the same run directories by default)."""
    import numpy as np

    from scaling.optimal import envelope_analysis

    curves = fit["curves"]
    return envelope_analysis(
        np.array([c["params"] for c in curves], float),
        np.array([c["flops"] for c in curves], float),
        np.array([c["loss"] for c in curves], float),
        [c["run"] for c in curves],
        param_count=fit["full"].get("param_count"),
    )


def plot_frontier(fit: dict, path: str) -> str:
    """Compute-optimal frontier: every rung's learning curve against compute and their lower envelope."""
    plt = _plt()
    curves = fit["curves"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = sorted({c["run"] for c in curves}, key=lambda r: min(c["params"] for c in curves if c["run"] == r))
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(runs):
        pts = sorted((c for c in curves if c["run"] == run), key=lambda c: c["flops"])
        ax.plot(
            [c["flops"] for c in pts],
            [c["loss"] for c in pts],
            "o-",
            ms=3,
            color=cmap(i / max(1, len(runs) - 1)),
            label=f"{os.path.basename(run)} (N={int(pts[0]['params']):,})",
        )
    try:
        env = frontier_envelope(fit)
        pts = env["points"]
        label = (
            f"frontier (N* ∝ C^{env['a']:.2f}, N = {env['param_count'].replace('_', '-')})"
            if "a" in env
            else "frontier"
        )
        ax.plot(
            [p["flops"] for p in pts],
            [p["loss"] for p in pts],
            "-",
            color="tab:red",
            lw=2.5,
            alpha=0.6,
            label=label,
        )
    except Exception as e:  # too few points for an envelope: show the curves alone
        ax.text(0.02, 0.02, f"no envelope: {e}", transform=ax.transAxes, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs, attention included)")
    ax.set_ylabel("validation loss")
    ax.set_title("Compute-optimal frontier (running minimum of loss over compute)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_summary(fit: dict) -> dict:
    """The frontier's exponents and what N counts, for summary.json (the plot's legend in numbers)."""
    try:
        env = frontier_envelope(fit)
    except ValueError as err:  # too few learning curves
        return {"error": str(err)}
    return {k: env[k] for k in ("method", "param_count", "a", "b") if k in env}


def _slim_fit(fit: dict) -> dict:
    out = {k: v for k, v in fit.items() if k not in ("bootstrap", "data")}
    if "bootstrap" in fit:  # the refit counts, without the samples (those stay in fit.json)
        out["bootstrap"] = {k: v for k, v in fit["bootstrap"].items() if k != "samples"}
    return out


def write_report(pipeline, ladder, fit, teacher, student, kd, base, evaluation, seconds) -> dict:
    root = pipeline.root
    plots = os.path.join(root, "plots")
    os.makedirs(plots, exist_ok=True)
    files = [
        plot_fit_with_holdout(fit, os.path.join(plots, "scaling_fit.png")),
        plot_learning_curves(teacher, kd, base, os.path.join(plots, "learning_curves.png")),
        plot_frontier(fit, os.path.join(plots, "frontier.png")),
    ]
    holdout = fit.get("holdout")
    summary = {
        "name": pipeline.config.name,
        "teacher": evaluation["teacher"],
        "student": {**evaluation["student"], "width": student["width"], "reason": student["reason"]},
        "baseline": evaluation["baseline"],
        "fit": _slim_fit(fit["full"]),
        "frontier": frontier_summary(fit),
        "holdout_prediction": holdout
        and {k: holdout[k] for k in ("run", "params", "predicted", "actual", "error_pct")},
        "kd_gain": evaluation["kd_gain"],
        "kd_improvement": evaluation["kd_improvement"],
        "seed_spread": evaluation["seed_spread"],
        "kd_significant": evaluation.get("kd_significant"),
        "kd_verdict": evaluation.get("kd_verdict"),
        "retention": evaluation["retention"],
        "perplexity_retention": evaluation["perplexity_retention"],
        "compression": evaluation["compression"],
        "speedup": evaluation["speedup"],
        "speedup_iqr": evaluation.get("speedup_iqr"),
        "throughput": evaluation.get("throughput"),
        "learning_curve": learning_curve_table(teacher, kd, base),
        "ladder": ladder["runs"],
        "plots": [os.path.relpath(f, root) for f in files],
        "where": where_things_are(pipeline, teacher, kd, base),
        "seconds": sum(pipeline.timings.values()),
        "invocation_seconds": seconds,
        "stage_seconds": pipeline.timings,
        "reused_stages": pipeline.reused,
        "config": effective_config(pipeline.config),  # the full effective configuration (provenance.py)
    }
    write_summary_and_report(root, summary)
    print(render_table(summary), flush=True)
    return summary


def write_summary_and_report(root: str, summary: dict) -> None:
    """(Re)write `summary.json` and `report.md` from the summary; called again after later stages (ship)."""
    write_json_atomic(os.path.join(root, "summary.json"), summary)
    path = os.path.join(root, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(render_markdown(summary))
    os.replace(path + ".tmp", path)


def render_ship_section(ship: dict) -> list[str]:
    """The "Shipping" section: the bench table, why its losses differ from the results table, the plot."""
    from deploy.bench import markdown_table

    limit = ship["settings"].get("max_eval_samples")
    return [
        "## Shipping (ONNX, int8; `scaledown bench`)",
        "",
        markdown_table(ship),
        "",
        (
            f"Quality here is measured on the first {limit} test examples (the bench's quick check that each "
            "variant still works), so its losses differ from the results table above, which uses the whole test "
            "split: compare variants within this table."
            if limit
            else "Quality here is measured on the whole test split."
        ),
        "",
        "![quality against latency](plots/quality_latency.png)",
    ]


def where_things_are(pipeline, teacher: dict, kd: dict, base: dict) -> dict:
    """Paths a user needs next (relative to the working directory they ran from when inside it) and the
    commands to use them."""

    def rel(path: str) -> str:
        short = os.path.relpath(path)
        return os.path.abspath(path) if short.startswith("..") else short

    student = kd["runs"][0]["dir"]
    return {
        "student": rel(student),
        "student_seed": kd["runs"][0].get("seed"),
        "baseline": rel(base["runs"][0]["dir"]),
        "teacher": rel(teacher["dir"]),
        "fit": rel(os.path.join(pipeline.root, "fit.json")),
        "ship_dir": rel(os.path.join(pipeline.root, "ship")),
        "run_command": getattr(pipeline, "run_command", None),
        "report": rel(os.path.join(pipeline.root, "report.md")),
    }


def next_commands(s: dict) -> list[str]:
    w = s["where"]
    ship = s.get("ship")
    served = w["student"]
    if ship:
        onnx = [f for f in ship.get("served_dirs", []) if f.endswith("onnx-int8")]
        served = onnx[0] if onnx else served
    key = "non_embedding_params" if s["fit"].get("param_count") == "non_embedding" else "params"
    largest = max(r[key] for r in s["ladder"])
    return [
        f"scaledown serve {served}   # the student over HTTP (POST /v1/predict, /v1/completions)",
        (
            f"scaledown bench {w['student']} {w['baseline']} --teacher {w['teacher']}   # size, latency, quality"
            if ship
            else f"{w.get('run_command') or 'scaledown run --config CONFIG'} --ship   # ONNX, int8 and the bench table"
        ),
        f"scaling predict --fit {w['fit']} --params {10 * largest:.3g}   # a model 10x the largest rung"
        + (" (non-embedding params)" if key == "non_embedding_params" else ""),
    ]


def render_where(s: dict) -> list[str]:
    w = s.get("where")
    if not w:
        return []
    seed = "" if w.get("student_seed") is None else f" (seed {w['student_seed']})"
    shipped = (
        f"ONNX fp32, ONNX int8 and torchao int8 variants of that student in `{w['ship_dir']}`"
        if s.get("ship")
        else "nothing yet (add `--ship` for ONNX and int8 variants and the bench table)"
    )
    return [
        "## Where things are, and what to run next",
        "",
        f"- **Distilled student:** `{w['student']}`{seed}, a `save_pretrained` folder (safetensors). "
        f"Baseline (same size, labels only): `{w['baseline']}`. Teacher: `{w['teacher']}`.",
        f"- **Shipped:** {shipped}.",
        f"- **Scaling fit:** `{w['fit']}`.",
        "",
        "```bash",
        *next_commands(s),
        "```",
        "",
    ]


def _speed_cell(r: dict) -> str:
    iqr = r.get("tokens_per_second_iqr")
    return f"{r['tokens_per_second']:,.0f}" + (f" ({iqr[0]:,.0f}-{iqr[1]:,.0f})" if iqr else "")


def render_table(s: dict) -> str:
    meta = s.get("throughput")
    speed = (
        f"forward tok/s, median (IQR), batch {meta['batch'][0]}x{meta['batch'][1]}, {meta['threads']} threads"
        if meta
        else "tokens/s"
    )
    lines = [
        f"| model | params | test loss | perplexity | {speed} | disk (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("teacher", "student", "baseline"):
        r = s[name]
        label = {"student": "KD student", "baseline": "baseline student"}.get(name, name)
        lines.append(
            f"| {label} | {r['params']:,} | {r['test_loss']:.4f} | {r['perplexity']:.2f} | "
            f"{_speed_cell(r)} | {r['disk_bytes'] / 1e6:.2f} |"
        )
    return "\n".join(lines)


def render_markdown(s: dict) -> str:
    h = s["holdout_prediction"]
    seeds = lambda r: ", ".join(f"{x['test_loss']:.4f}" for x in r["seeds"])  # noqa: E731
    fit = s["fit"]
    out = [
        f"# scaledown report: {s['name']}",
        "",
        f"Ladder -> scaling fit -> teacher -> distilled student{' -> ship' if s.get('ship') else ''}: "
        f"{s['seconds']:.0f} s of stages"
        + (
            f" ({len(s['reused_stages'])} reused by this invocation, which took {s['invocation_seconds']:.0f} s)."
            if s["reused_stages"]
            else "."
        ),
        "",
        "## Results (held-out test split)",
        "",
        render_table(s),
        "",
        *([throughput_note(s["throughput"]), ""] if s.get("throughput") else []),
        kd_headline(s),
        f"- **Seeds:** KD student {seeds(s['student'])}; baseline {seeds(s['baseline'])}. KD improvement "
        f"{s['kd_improvement']:.4f} vs largest seed spread {s['seed_spread']:.4f}.",
        f"- **Retention:** the student keeps {100 * s['retention']:.1f}% of the teacher's quality (loss ratio), "
        f"{100 * s['perplexity_retention']:.1f}% by perplexity, with {s['compression']:.1f}x fewer parameters "
        f"and {s['speedup']:.1f}x the throughput"
        + (
            f" (IQR {s['speedup_iqr'][0]:.1f}x-{s['speedup_iqr'][1]:.1f}x over rounds)."
            if s.get("speedup_iqr")
            else "."
        ),
        f"- **Student size:** width {s['student']['width']} ({s['student']['reason']}).",
        "",
        *render_where(s),
        *render_learning_curve(s.get("learning_curve") or []),
    ]
    from scaling.intervals import bootstrap_lines, format_interval

    out += [
        "## Scaling fit",
        "",
        f"Law `{fit['law']}`: "
        + ", ".join(f"{k} = {v:.4g} {format_interval(fit, k, 4)}".rstrip() for k, v in fit["params"].items())
        + f"; objective {fit['objective']:.3g} on {fit['n_points']} rungs.",
        "",
    ]
    out += [f"- {line}" for line in bootstrap_lines(fit)] + ([""] if bootstrap_lines(fit) else [])
    if h:
        out += [
            f"Held out the largest rung ({int(h['params']):,} {fit.get('param_count', 'total').replace('_', '-')} "
            f"parameters) and predicted it from the "
            f"smaller ones: predicted {h['predicted']:.4f}, measured {h['actual']:.4f} "
            f"({h['error_pct']:+.2f}%).",
            "",
        ]
    out += ["| rung | params | non-embedding | tokens | FLOPs |", "|---|---|---|---|---|"]
    out += [
        f"| {r['name']} | {r['params']:,} | {r['non_embedding_params']:,} | {r['tokens']:,} | {r['flops']:.3g} |"
        for r in s["ladder"]
    ]
    out += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in s["plots"]]
    out += ["", "## Time per stage", "", "| stage | seconds | |", "|---|---|---|"]
    out += [
        f"| {k} | {v:.1f} | {'reused' if k in s['reused_stages'] else ''} |"
        for k, v in s["stage_seconds"].items()
    ]
    if s.get("ship"):
        out += [""] + render_ship_section(s["ship"])
    if "config" in s:
        out += [""] + render_config_markdown(s["config"])
    return "\n".join(out) + "\n"
