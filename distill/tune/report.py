"""Results of a `distill tune` study: `trials.json`, `trials.csv`, `best.yaml`, `objective.png`."""

from __future__ import annotations

import csv
import json
import os

MODEL_PREFIX = "model."


def _trial_rows(study) -> list[dict]:
    interrupted = set(study.user_attrs.get("interrupted", []))
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "rerun_of": t.user_attrs.get("rerun_of"),
                "interrupted": t.number in interrupted,
                "start": t.datetime_start.isoformat() if t.datetime_start else None,
                "complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    return rows


def _overrides(argv) -> dict:
    """`--key value` / `--key=value` pairs of a command line, values read as YAML scalars."""
    import yaml

    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and arg != "--config" and not arg.startswith("--config="):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value, i = argv[i + 1], i + 1
                else:
                    value = "true"
            out[key] = yaml.safe_load(value)
        elif arg == "--config":
            i += 1
        i += 1
    return out


def write_best_recipe(path, best, config_path, argv, output_dir) -> dict:
    """The recipe (YAML file plus command-line overrides) with the best trial's values."""
    import yaml

    recipe = {}
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    recipe.update(_overrides(argv))
    for key in ("save_strategy", "load_best_model_at_end"):  # forced for the trials only
        recipe.pop(key, None)
    for name, value in best.params.items():
        if name.startswith(MODEL_PREFIX):
            config = recipe.get("model_config")
            config = dict(config) if isinstance(config, dict) else json.loads(config)
            config[name[len(MODEL_PREFIX) :]] = value
            recipe["model_config"] = config
        else:
            recipe[name] = value
    recipe["output_dir"] = os.path.join(output_dir, "best")
    head = (
        f"# distill train --config {path}\n#\n# Best trial ({best.number}) of the study in "
        f"{output_dir}/study.db: eval_loss {best.value:.6g}.\n# Base recipe: {config_path or '-'}; "
        f"searched: {', '.join(sorted(best.params))}.\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def plot_objective(rows, dims, path) -> str:
    """Objective against each hyperparameter (completed trials; pruned ones at their last value)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(dims))
    nrows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, dim in zip(axes.ravel(), dims):
        for state, style in (
            ("COMPLETE", dict(color="C0", marker="o")),
            ("PRUNED", dict(color="0.6", marker="x")),
        ):
            pts = [
                (
                    r["params"][dim.name],
                    r["value"]
                    if r["value"] is not None
                    else (list(r["intermediate"].values()) or [None])[-1],
                )
                for r in rows
                if r["state"] == state and dim.name in r["params"]
            ]
            pts = [(x, y) for x, y in pts if y is not None]
            if not pts:
                continue
            xs = [dim.choices.index(x) if dim.kind == "categorical" else x for x, _ in pts]
            ax.scatter(xs, [y for _, y in pts], label=state.lower(), **style)
        if dim.kind == "categorical":
            ax.set_xticks(range(len(dim.choices)), [str(c) for c in dim.choices])
        elif dim.log:
            ax.set_xscale("log")
        ax.set(xlabel=dim.name, ylabel="eval_loss")
    for ax in axes.ravel()[len(dims) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(study, dims, output_dir, config_path, argv) -> dict:
    """Write every result file of the study; returns the trials.json content."""
    from optuna.trial import TrialState

    rows = _trial_rows(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    summary = {
        "study": study.study_name,
        "storage": os.path.join(output_dir, "study.db"),
        "objective": "eval_loss",
        "direction": "minimize",
        "trials": rows,
        "n_complete": len(complete),
        "n_pruned": sum(r["state"] == "PRUNED" for r in rows),
        "search_space": [{k: v for k, v in vars(d).items() if v is not None} for d in dims],
    }
    if complete:
        best = min(complete, key=lambda t: t.value)
        summary["best"] = {"number": best.number, "value": best.value, "params": dict(best.params)}
        write_best_recipe(os.path.join(output_dir, "best.yaml"), best, config_path, argv, output_dir)
        summary["plot"] = plot_objective(rows, dims, os.path.join(output_dir, "objective.png"))
    with open(os.path.join(output_dir, "trials.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    names = [d.name for d in dims]
    with open(os.path.join(output_dir, "trials.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *names, "rerun_of"])
        for r in rows:
            w.writerow(
                [r["number"], r["state"], r["value"], *[r["params"].get(n) for n in names], r["rerun_of"]]
            )
    return summary
