"""Training runs to a table of (N, D, C, loss) points.

Inputs are structured files only, never the trainer itself:

- **Trainer output directories** (`trainer_state.json`, `all_results.json`, `config.json`), or
  a folder of such directories (a sweep);
- **CSV or JSON tables** with columns `params`, `tokens` and/or `flops`, `loss`, renamed with
  a mapping such as `{"params": "Model Size", "flops": "Training FLOP"}`.

Every point records where each number came from (`notes`), so a fit can be audited.

FLOP columns of a point (all in FLOPs, for the whole run up to that point):

- `flops_6nd`: 6 * N * D with the chosen parameter count (the C of C = 6ND laws);
- `teacher_flops`: 2 * N_teacher * D, the teacher's forward passes in a distillation run;
- `flops`: the best estimate of total compute: the student's attention-aware count
  (`scaling.params.flops_per_token`) when `config.json` and the sequence length are known,
  else 6 * N_total * D, plus `teacher_flops`. A table's own `flops` column is used as given.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_path, write_text_atomic

__all__ = [
    "RUN_PARAM_COUNT",
    "ScalingDataError",
    "RunPoint",
    "parse_columns",
    "read_table",
    "read_run_dir",
    "load_runs",
    "param_count_of",
    "to_arrays",
    "write_table",
]

CANONICAL = ("params", "tokens", "loss", "flops", "run", "step")
RUN_FILES = ("trainer_state.json", "all_results.json")
RUN_PARAM_COUNT = "non_embedding"  # N of run directories unless asked otherwise (load_runs)


class ScalingDataError(ValueError):
    """Input data that cannot be used, with the file and row at fault in the message."""


@dataclass
class RunPoint:
    """One (N, D, loss) observation.

    Args:
        params (`float`): parameter count used for fitting (kind given by `param_count`).
        tokens (`float`): training tokens seen by the student up to this point.
        loss (`float`): evaluation loss (nats).
        flops (`float`): best estimate of the total training compute (see module doc).
        flops_6nd (`float`): 6 * params * tokens.
        source (`str`): file and row / step this point came from.
        run (`str`): run name (directory name, or the table's `run` column).
        param_count (`str`): `"total"` or `"non_embedding"`.
        params_total, params_non_embedding (`float`, *optional*): both counts when known.
        teacher_params (`float`): teacher size for distillation runs, else 0.
        teacher_flops (`float`): 2 * teacher_params * tokens.
        step (`int`, *optional*): optimizer step.
        kind (`str`): `"final"`, `"eval"` or `"table"`.
        notes (`dict`): the source of `params`, `tokens` and `flops`.
    """

    params: float
    tokens: float
    loss: float
    flops: float
    flops_6nd: float
    source: str
    run: str = ""
    param_count: str = "total"
    params_total: float | None = None
    params_non_embedding: float | None = None
    teacher_params: float = 0.0
    teacher_flops: float = 0.0
    step: int | None = None
    kind: str = "table"
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_positive(where: str, **values):
    for name, v in values.items():
        if (
            v is None
            or not isinstance(v, (int, float))
            or isinstance(v, bool)
            or not math.isfinite(v)
            or v <= 0
        ):
            raise ScalingDataError(f"{where}: {name} must be a finite number > 0, got {v!r}")


# ---------------------------------------------------------------------------- tables
def parse_columns(spec) -> dict:
    """Parse a column mapping such as `params="Model Size",flops="Training FLOP"`.

    Args:
        spec (`str`, `dict` or `None`): the mapping, canonical name to column name.

    Returns:
        `dict[str, str]`.
    """
    if not spec:
        return {}
    if isinstance(spec, dict):
        mapping = dict(spec)
    else:
        mapping = {}
        for part in next(csv.reader([spec], skipinitialspace=True)):
            if "=" not in part:
                raise ScalingDataError(f"--columns: expected NAME=COLUMN, got {part!r}")
            key, col = part.split("=", 1)
            mapping[key.strip()] = col.strip().strip('"').strip("'")
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise ScalingDataError(f"--columns: unknown names {unknown}; known: {list(CANONICAL)}")
    return mapping


def _table_rows(path: Path):
    """Rows of a CSV or JSON table as (label, dict) pairs, and the available columns."""
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ScalingDataError(f"{path}: not valid JSON ({err})") from None
        if isinstance(obj, dict) and "runs" in obj:
            obj = obj["runs"]
        if isinstance(obj, dict):  # columns of equal length
            lengths = {len(v) for v in obj.values() if isinstance(v, list)}
            if len(lengths) != 1:
                raise ScalingDataError(
                    f"{path}: a JSON table must be a list of records or a "
                    "mapping of equal-length column lists"
                )
            obj = [dict(zip(obj, vals)) for vals in zip(*obj.values())]
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise ScalingDataError(f"{path}: a JSON table must be a list of records")
        cols = sorted({k for r in obj for k in r})
        return [(f"record {i}", r) for i, r in enumerate(obj)], cols
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [(f"row {i} (line {i + 1})", r) for i, r in enumerate(reader, start=1)]
        return rows, list(reader.fieldnames or [])


def _number(where, name, raw):
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ScalingDataError(f"{where}: {name} is empty")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ScalingDataError(f"{where}: {name} is not a number: {raw!r}") from None


def read_table(path, columns=None, param_count: str = "total") -> list:
    """Read a CSV or JSON table of runs.

    Columns (after renaming with `columns`): `params` and `loss` are required, plus `tokens`
    or `flops`. With `flops` only, tokens = flops / (6 * params). Optional: `run`, `step`.

    Args:
        path (`str` or `Path`): the table.
        columns (`str` or `dict`, *optional*): mapping canonical name -> column name.
        param_count (`str`): what the `params` column counts (recorded on every point).

    Returns:
        `list[RunPoint]`.

    Raises:
        `ScalingDataError`: missing columns, empty table, or a bad value (file and row named).
    """
    path = Path(path)
    mapping = parse_columns(columns)
    rows, available = _table_rows(path)
    col = {k: mapping.get(k, k) for k in CANONICAL}
    missing = [f"{k} (column {col[k]!r})" for k in ("params", "loss") if col[k] not in available]
    if col["tokens"] not in available and col["flops"] not in available:
        missing.append(f"tokens or flops (columns {col['tokens']!r} / {col['flops']!r})")
    if missing:
        raise ScalingDataError(
            f"{path}: missing columns {missing}; the table has {available}. "
            'Rename with --columns, e.g. params="Model Size"'
        )
    if not rows:
        raise ScalingDataError(f"{path}: the table has no rows")
    points = []
    for label, row in rows:
        where = f"{path}: {label}"
        n = _number(where, "params", row.get(col["params"]))
        loss = _number(where, "loss", row.get(col["loss"]))
        has_tokens = row.get(col["tokens"]) not in (None, "")
        has_flops = row.get(col["flops"]) not in (None, "")
        if has_tokens:
            tokens = _number(where, "tokens", row[col["tokens"]])
            note = f"column {col['tokens']!r}"
        elif has_flops:
            c = _number(where, "flops", row[col["flops"]])
            _check_positive(where, flops=c, params=n)
            tokens, note = c / (6.0 * n), f"flops / (6 * params), column {col['flops']!r}"
        else:
            raise ScalingDataError(f"{where}: neither tokens nor flops is given")
        _check_positive(where, params=n, tokens=tokens, loss=loss)
        flops = _number(where, "flops", row[col["flops"]]) if has_flops else 6.0 * n * tokens
        _check_positive(where, flops=flops)
        step = row.get(col["step"])
        points.append(
            RunPoint(
                params=n,
                tokens=tokens,
                loss=loss,
                flops=flops,
                flops_6nd=6.0 * n * tokens,
                source=where,
                run=str(row.get(col["run"], "") or ""),
                param_count=param_count,
                step=int(float(step)) if step not in (None, "") else None,
                kind="table",
                notes={
                    "params": f"column {col['params']!r}",
                    "tokens": note,
                    "flops": f"column {col['flops']!r}" if has_flops else "6 * params * tokens",
                },
            )
        )
    return points


# ------------------------------------------------------------------ run directories
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ScalingDataError(f"{path}: not valid JSON ({err})") from None


def _state_file(run_dir: Path):
    state = run_dir / "trainer_state.json"
    if state.is_file():
        return state
    ckpts = sorted(
        run_dir.glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1,
    )
    return ckpts[-1] if ckpts else None


def _param_counts(run_dir: Path, results: dict):
    """(total, non_embedding, notes) from all_results.json, else config.json."""
    total = results.get("student_params") or None
    non_emb = results.get("student_non_embedding_params") or None
    notes = {
        "total": "all_results.student_params" if total else None,
        "non_embedding": "all_results.student_non_embedding_params" if non_emb else None,
    }
    config = run_dir / "config.json"
    if (total is None or non_emb is None) and config.is_file():
        from .params import count_parameters

        counts = count_parameters(config)
        if total is None:
            total, notes["total"] = counts["total"], "config.json (meta-device count)"
        if non_emb is None:
            non_emb, notes["non_embedding"] = counts["non_embedding"], "config.json (meta-device count)"
    return total, non_emb, notes


def _tokens_at(step, entry, results, state, final, seq_len, global_batch):
    """Tokens seen at `step`, and a sentence saying how it was obtained."""
    seen = entry.get("num_input_tokens_seen") if entry else None
    train_tokens = results.get("train_tokens")
    gstep = state.get("global_step") or results.get("global_step")
    if final and train_tokens:
        return float(train_tokens), "all_results.train_tokens"
    if seen:
        return float(seen), "trainer_state log_history num_input_tokens_seen"
    if final and state.get("num_input_tokens_seen"):
        return float(state["num_input_tokens_seen"]), "trainer_state.num_input_tokens_seen"
    if train_tokens and gstep and step:
        return float(train_tokens) * step / gstep, "all_results.train_tokens * step / global_step"
    batch = global_batch or results.get("global_batch_size")
    seq = seq_len or results.get("block_size")
    if batch and seq and step:
        return float(step * batch * seq), (
            f"steps ({step}) * global batch ({batch}) * sequence length ({seq})"
        )
    return None, (
        "no num_input_tokens_seen, no all_results.train_tokens, and the global batch "
        "size or sequence length is unknown (pass --global-batch and --seq-len)"
    )


def _unique_evals(history: list, where) -> list:
    """The evaluations of a log history, one per optimizer step.

    The Trainer logs an evaluation at every `eval_steps`, and `distill train` (like the
    `run_*.py` examples) evaluates once more after training, at the same global step: the
    final evaluation appears twice (and once more in `all_results.json`). Each step is kept
    once, with its last evaluation (the one `all_results.json` reports); two evaluations of
    one step that disagree are reported with a warning.
    """
    import warnings

    by_step = {}
    for entry in history:
        if not isinstance(entry.get("eval_loss"), (int, float)):
            continue
        step = entry.get("step")
        if step is None:  # no step to match on: keep it as it is
            by_step[("entry", len(by_step))] = entry
            continue
        earlier = by_step.pop(step, None)
        if earlier is not None and not math.isclose(earlier["eval_loss"], entry["eval_loss"], rel_tol=1e-6):
            warnings.warn(
                f"{where}: step {step} was evaluated twice with different losses "
                f"({earlier['eval_loss']:.6g}, then {entry['eval_loss']:.6g}); "
                "keeping the last",
                stacklevel=3,
            )
        by_step[step] = entry
    return list(by_step.values())


def read_run_dir(
    path, points: str = "final", param_count: str = "total", seq_len=None, global_batch=None, _seen=None
) -> list:
    """Read one Trainer output directory (or a folder of them).

    Args:
        path (`str` or `Path`): the output directory.
        points (`str`): `"final"` (one point per run) or `"all"` (every evaluation point).
        param_count (`str`): `"total"` or `"non_embedding"`, the N used for fitting; `None`:
            non-embedding where it is known (`config.json` or `all_results.json`), else total
            with a warning (each point records which).
        seq_len (`int`, *optional*): sequence length when `all_results.json` lacks `block_size`.
        global_batch (`int`, *optional*): global batch when `all_results.json` lacks it.

    Every evaluation is counted once: one point per (run, step), and a run directory reached
    twice (given twice, or inside a sweep folder also given) is read once.

    Returns:
        `list[RunPoint]`.

    Raises:
        `ScalingDataError`: empty directory, no eval loss, parameter or token count unknown.
    """
    path = Path(path)
    if points not in ("final", "all"):
        raise ValueError(f"points must be 'final' or 'all', got {points!r}")
    if param_count not in ("total", "non_embedding", None):
        raise ValueError(f"param_count must be 'total' or 'non_embedding', got {param_count!r}")
    state_path = _state_file(path)
    results_path = path / "all_results.json"
    if state_path is None and not results_path.is_file():
        children = sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and (any((p / f).is_file() for f in RUN_FILES) or _state_file(p))
        )
        if not children:
            raise ScalingDataError(
                f"{path}: empty run directory: no trainer_state.json or "
                "all_results.json here nor in any subdirectory"
            )
        return [
            pt for c in children for pt in read_run_dir(c, points, param_count, seq_len, global_batch, _seen)
        ]
    if _seen is not None:
        if path.resolve() in _seen:
            import warnings

            warnings.warn(f"{path}: this run directory was given more than once; counted once", stacklevel=2)
            return []
        _seen.add(path.resolve())
    state = _read_json(state_path) if state_path else {}
    results = _read_json(results_path) if results_path.is_file() else {}
    history = state.get("log_history") or []
    evals = _unique_evals(history, state_path)
    gstep = state.get("global_step") or results.get("global_step")
    if points == "all" and evals:
        chosen = [(e.get("step"), e, e["eval_loss"], "eval") for e in evals]
    elif results.get("eval_loss") is not None:
        chosen = [(gstep, None, results["eval_loss"], "final")]
    elif evals:
        chosen = [(evals[-1].get("step"), evals[-1], evals[-1]["eval_loss"], "final")]
    else:
        where = " or ".join(str(p) for p in (state_path, results_path) if p and p.exists())
        raise ScalingDataError(
            f"{where}: run has no eval loss (no 'eval_loss' in all_results."
            "json nor in trainer_state.json log_history); evaluate the run"
        )
    total, non_emb, pnotes = _param_counts(path, results)
    if param_count is None:  # the default: non-embedding where it is known, said where not
        param_count = RUN_PARAM_COUNT if non_emb else "total"
        if not non_emb:
            import warnings

            warnings.warn(
                f"{path}: the non-embedding parameter count is unknown (no config.json, "
                "no all_results.json student_non_embedding_params); N counts total "
                "parameters for this run",
                stacklevel=2,
            )
    n = total if param_count == "total" else non_emb
    if not n:
        raise ScalingDataError(
            f"{path}: {param_count} parameter count unknown: no "
            "all_results.json student_params and no config.json"
        )
    teacher = float(results.get("teacher_params") or 0.0)
    seq = seq_len or results.get("block_size")
    fpt, fnote = None, "6 * params_total * tokens"
    if (path / "config.json").is_file() and seq:
        from .params import flops_per_token

        fpt = flops_per_token(path / "config.json", int(seq), training=True)
        fnote = f"flops_per_token(config.json, seq_len={int(seq)}) * tokens"
    out = []
    for step, entry, loss, kind in chosen:
        where = f"{state_path or results_path}" + (f": step {step}" if step is not None else "")
        at_end = step is None or gstep is None or step == gstep
        tokens, tnote = _tokens_at(step, entry, results, state, at_end, seq_len, global_batch)
        if tokens is None:
            raise ScalingDataError(f"{where}: token count unknown: {tnote}")
        _check_positive(where, loss=float(loss), params=float(n), tokens=tokens)
        student = fpt * tokens if fpt else 6.0 * float(total or n) * tokens
        out.append(
            RunPoint(
                params=float(n),
                tokens=tokens,
                loss=float(loss),
                flops=student + 2.0 * teacher * tokens,
                flops_6nd=6.0 * n * tokens,
                source=where,
                run=path.name,
                param_count=param_count,
                params_total=total,
                params_non_embedding=non_emb,
                teacher_params=teacher,
                teacher_flops=2.0 * teacher * tokens,
                step=step,
                kind=kind,
                notes={
                    "params": pnotes[param_count],
                    "tokens": tnote,
                    "flops": fnote + (" + 2 * teacher_params * tokens" if teacher else ""),
                },
            )
        )
    return out


# -------------------------------------------------------------------------- loading
def load_runs(
    inputs, columns=None, points="final", param_count=None, seq_len=None, global_batch=None
) -> list:
    """Read every input (run directory, sweep folder, CSV or JSON table) into one list.

    Args:
        inputs (`list[str | Path]`): the inputs.
        columns (`str` or `dict`, *optional*): column mapping for tables.
        param_count (`str`, *optional*): N of run directories, `"total"` or
            `"non_embedding"`; default `RUN_PARAM_COUNT` (non-embedding, as `scaledown run`
            fits, so the command line and the pipeline agree on the same runs) where it is
            known, else total with a warning. A table's
            `params` column is taken as given and recorded as `param_count` (default
            `"total"`, what published tables such as Chinchilla's count).
        points, seq_len, global_batch: see `read_run_dir`.

    Returns:
        `list[RunPoint]`.
    """
    out, seen = [], set()
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_dir():
            out += read_run_dir(p, points, param_count, seq_len, global_batch, seen)
        elif p.is_file():
            if p.suffix.lower() not in (".csv", ".json", ".tsv"):
                raise ScalingDataError(f"{p}: not a run directory, .csv or .json table")
            out += read_table(p, columns, param_count or "total")
        else:
            raise ScalingDataError(f"{p}: no such file or directory")
    if not out:
        raise ScalingDataError("no runs found in the inputs")
    return out


def param_count_of(points) -> str:
    """What the points' N counts: `"total"`, `"non_embedding"`, or `"mixed"`."""
    kinds = {p.param_count for p in points}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def to_arrays(points) -> dict:
    """Columns of a list of `RunPoint` as numpy arrays (`params, tokens, loss, flops, ...`)."""
    import numpy as np

    keys = ("params", "tokens", "loss", "flops", "flops_6nd", "teacher_flops")
    arrays = {k: np.array([getattr(p, k) for p in points], dtype=float) for k in keys}
    arrays["run"] = [p.run or p.source for p in points]
    arrays["source"] = [p.source for p in points]
    return arrays


def write_table(points, path):
    """Write points to CSV (or JSON when `path` ends in `.json`)."""
    path = Path(path)
    rows = [p.to_dict() for p in points]
    if path.suffix.lower() == ".json":
        write_text_atomic(path, json.dumps(rows, indent=2))
        return
    for r in rows:
        r["notes"] = "; ".join(f"{k}: {v}" for k, v in r["notes"].items())
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
