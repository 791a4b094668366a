"""What each stage of `scaledown run` depends on, so that a changed setting reruns exactly what it affects.

Each stage's marker (``<run_dir>/stages/<stage>.json``) records the stage's *inputs*: the config
fields it reads and a digest of every earlier stage it consumes (`DEPENDS`): that stage's inputs
and result, so a change anywhere upstream reaches every stage below it. A later
run reuses the stage only when its inputs are unchanged; otherwise it reruns it, and the log says
why (``[distill] distill.alpha 0.5 → 0.9, rerunning``). A rerun stage changes its digest, so the
stages that consume it rerun too, and only those: changing ``distill.alpha`` reruns distillation,
evaluation and the report, not the ladder, the fit or the baseline.

Inside a rerun stage, every `distill train` run still decides for itself with its run fingerprint
(`distill.trainer.fingerprint`): a run whose own settings are unchanged and finished is reused, one whose
settings changed is trained afresh (``--overwrite_output_dir true``), and an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

# The earlier stages whose results each stage consumes.
DEPENDS = {
    "tokenizer": (),
    "ladder": ("tokenizer",),
    "fit": ("ladder",),
    "teacher": ("ladder",),
    "student": ("fit", "teacher"),
    "distill": ("tokenizer", "student", "teacher"),
    "baseline": ("tokenizer", "ladder", "student"),
    "evaluate": ("tokenizer", "teacher", "distill", "baseline"),
    "ship": ("tokenizer", "teacher", "distill", "baseline", "evaluate"),
}
# Data fields that only choose how much is evaluated: not read by tokenizer training.
_EVAL_ONLY_DATA = ("max_eval_samples", "max_test_samples", "preprocessing_num_workers")
_RUN_LADDER_FIELDS = (
    "widths",
    "lr_inverse_width",
    "eval_points",
)  # the learning rate and eval cadence of a run


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _own_fields(config, name: str) -> dict:
    """The config fields stage ``name`` reads, keyed by their dotted path in the pipeline YAML."""
    c = dataclasses.asdict(config)
    data, train, ladder = c["data"], c["train"], c["ladder"]
    run_ladder = {f"ladder.{k}": ladder[k] for k in _RUN_LADDER_FIELDS}
    flat = lambda prefix, block: {f"{prefix}.{k}": v for k, v in block.items()}  # noqa: E731
    fields: dict[str, Any] = {
        "tokenizer": {
            **flat("data", {k: v for k, v in data.items() if k not in _EVAL_ONLY_DATA}),
            "tokenizer": c["tokenizer"],
        },
        "ladder": {**flat("data", data), **flat("train", train), **flat("ladder", ladder), "seed": c["seed"]},
        "fit": {**flat("fit", c["fit"]), "seed": c["seed"]},
        "teacher": {"teacher": c["teacher"], "teacher_files": _teacher_files(c["teacher"])},
        "student": {
            **flat("student", c["student"]),
            "distill.tokens": c["distill"]["tokens"],
            **flat("ladder", ladder),
            **flat("data", data),  # data: pruning calibrates on it
            "train.per_device_train_batch_size": train.get("per_device_train_batch_size"),
        },
        "distill": {
            **flat("distill", c["distill"]),
            **flat("data", data),
            **flat("train", train),
            **run_ladder,
            "seed": c["seed"],
        },
        "baseline": {
            "distill.seeds": c["distill"]["seeds"],
            "distill.tokens": c["distill"]["tokens"],
            **flat("data", data),
            **flat("train", train),
            **run_ladder,
            "seed": c["seed"],
        },
        "evaluate": {**flat("data", data), "seed": c["seed"]},
        "ship": {**flat("ship", c.get("ship") or {}), **flat("data", data), "seed": c["seed"]},
    }.get(name)
    if fields is None:  # a stage this module does not know: everything counts
        fields = {k: v for k, v in c.items() if k != "quick"}
    return json.loads(json.dumps(fields, default=str))


def _teacher_files(teacher):
    if not teacher:
        return None
    from distill.trainer.fingerprint import path_fingerprint

    return path_fingerprint(teacher, model_files_only=True)


def stage_digest(inputs: dict, result: Any) -> str:
    """A hash of what a stage read and what it produced: what its downstream stages consume."""
    return _digest({"inputs": inputs, "result": result})


def stage_inputs(config, name: str, digests: dict[str, str]) -> dict:
    """The inputs of stage ``name``: its own config fields and the digest of each stage it consumes."""
    upstream = DEPENDS.get(name, tuple(digests))
    return {**_own_fields(config, name), **{f"{up} stage": digests.get(up) for up in upstream}}


def changed_inputs(old: dict, new: dict) -> list[str]:
    """Readable changes, ``distill.alpha 0.5 → 0.9`` or ``distill stage changed``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a == b:
            continue
        if key.endswith(" stage"):
            out.append(f"{key} changed")
        elif key == "teacher_files":
            out.append("teacher weights changed")
        else:
            out.append(f"{key} {_short(a)} → {_short(b)}")
    return out


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def train_run(argv: list[str], label: str, log: Callable[[str], None]) -> None:
    """One `distill train` run of the pipeline, decided by its run fingerprint (see the module docstring)."""
    from distill.train import main as train_main
    from distill.train import output_dir_status

    status, changes = output_dir_status(argv)
    if status == "finished":
        log(f"[{label}] finished earlier with the same settings, reused")
        return
    if status == "changed":
        why = (
            ", ".join(f"{name} {_short(old)} → {_short(new)}" for name, old, new in changes[:4])
            or "no run fingerprint"
        )
        log(f"[{label}] settings changed ({why}{', ...' if len(changes) > 4 else ''}): training afresh")
        argv = [*argv, "--overwrite_output_dir", "true"]
    elif status == "resume":
        log(f"[{label}] unfinished with the same settings: resuming")
    train_main(argv)


def effective_config(config) -> dict:
    """The whole pipeline configuration after defaults and ``--quick``, for summary.json and report.md."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def render_config_markdown(config: dict) -> list[str]:
    """The effective configuration as a YAML block for report.md."""
    import yaml

    shown = {k: v for k, v in config.items() if k != "quick"}
    return [
        "## Configuration",
        "",
        "The effective configuration of this run (defaults and `--quick` applied):",
        "",
        "```yaml",
        yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).rstrip(),
        "```",
        "",
    ]
