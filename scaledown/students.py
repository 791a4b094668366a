"""`student: {from_teacher: layers | prune}`: the pipeline's student made from its teacher (distill.students)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any, Optional

FROM_TEACHER = ("layers", "prune")


def check_student_from_teacher(student, teacher_dir: Optional[str], plans) -> None:
    """Before any training: the request is well formed and fits the teacher.

    The given teacher's config.json is checked exactly; a ladder teacher is not trained yet, so the
    request is checked against the deepest rung (the rung actually picked is checked again when the
    student is made).
    """
    from distill.students import check_prune_request, get_architecture, resolve_layers

    if student.from_teacher not in FROM_TEACHER:
        raise ValueError(
            f"student.from_teacher={student.from_teacher!r}: use one of {', '.join(FROM_TEACHER)}."
        )
    if teacher_dir is not None:
        with open(os.path.join(teacher_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    else:
        config = max((p.config for p in plans or []), key=lambda c: c["num_hidden_layers"])
    config = SimpleNamespace(**{"num_key_value_heads": None, **config})
    get_architecture(config)
    if student.from_teacher == "layers":
        if student.layers is None:
            raise ValueError(
                "student.from_teacher=layers needs student.layers: indices, every_other or a count."
            )
        resolve_layers(student.layers, config.num_hidden_layers)
    else:
        check_prune_request(config, student.drop_layers, student.mlp_width, student.heads)
        if student.num_samples < 1:
            raise ValueError("student.num_samples: give at least one calibration example.")


def student_from_teacher(pipeline, teacher_dir: str) -> dict[str, Any]:
    """Write the student into ``<run_dir>/student_init`` and describe it for the distill and baseline stages."""
    from distill.students import prune_model_dir, save_student_from_teacher

    c = pipeline.config.student
    check_student_from_teacher(c, teacher_dir, None)
    out = os.path.join(pipeline.root, "student_init")
    if c.from_teacher == "layers":
        record = save_student_from_teacher(teacher_dir, c.layers, out, task="causal-lm", overwrite=True)
        reason = f"teacher blocks {record['layers']} of {record['teacher_num_hidden_layers']}"
    else:
        record = prune_model_dir(
            teacher_dir,
            out,
            dict(pipeline.config.data),
            num_samples=c.num_samples,
            drop_layers=c.drop_layers,
            mlp_width=c.mlp_width,
            heads=c.heads,
            task="causal-lm",
            max_length=pipeline.seq_len,
            overwrite=True,
        )
        reason = (
            f"pruned teacher: dropped blocks {record['dropped_layers']}"
            + (f", MLP width {c.mlp_width}" if c.mlp_width else "")
            + (f", {c.heads} heads" if c.heads else "")
        )
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    from scaling.params import count_parameters

    counts = count_parameters(config)
    return {
        "dir": out,
        "width": config["hidden_size"],
        "config": config,
        "params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "reason": reason,
        "from_teacher": c.from_teacher,
    }
