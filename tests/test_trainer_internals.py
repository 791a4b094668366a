"""A guard on the private `transformers.Trainer` methods that scaledown's trainers override.

Private methods can change in any minor release. `pyproject.toml` pins transformers to the minor range we
test; this test makes a move outside it fail loudly instead of training silently without our override:
every overridden private method must still exist on `transformers.Trainer`, with the same parameters,
and every private method we define that shadows one of Trainer's must be listed here on purpose.
"""

import inspect

import pytest
import transformers

from distill.trainer.checkpointing import CheckpointingMixin
from distill.trainer.distillation_trainer import DistillationTrainer
from distill.trainer.evaluation import EvaluationMixin
from distill.trainer.multitask import MultiTaskDistillationTrainer

# name -> why we override it (no public hook does the same job)
OVERRIDDEN = {
    "_get_output_dir": "checkpoints are written into a staging folder and renamed into place (atomic save)",
    "_save_checkpoint": "the atomic save itself, plus the finite-weights check and completeness marker",
    "_load_from_checkpoint": "resume only from a checkpoint that passes check_checkpoint",
    "_issue_warnings_after_load": "the hidden-state projection is not in model.safetensors: no false warning",
    "_load_best_model": "load_best_model_at_end through the same checked loading",
    "_set_signature_columns_if_needed": "keep the teacher-cache and task-id columns the loss needs",
    "_get_num_items_in_batch": "count valid positions per task (token-level or per example) for the denominator",
}
OURS = (CheckpointingMixin, EvaluationMixin, DistillationTrainer, MultiTaskDistillationTrainer)


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_private_method_exists_with_our_signature(name):
    base = getattr(transformers.Trainer, name, None)
    assert base is not None, (
        f"transformers {transformers.__version__} has no Trainer.{name}: our override "
        f"({OVERRIDDEN[name]}) would never run. Adapt distill/trainer/ before moving the transformers pin."
    )
    for cls in OURS:
        if name in vars(cls):
            ours = vars(cls)[name]
            assert _params(ours) == _params(base), (
                f"Trainer.{name} is now {inspect.signature(base)} in transformers {transformers.__version__}; "
                f"{cls.__name__}.{name} expects {inspect.signature(ours)}"
            )


def test_every_private_override_is_listed():
    shadowing = {
        name
        for cls in OURS
        for name, value in vars(cls).items()
        if name.startswith("_")
        and not name.startswith("__")
        and callable(value)
        and hasattr(transformers.Trainer, name)
    }
    assert shadowing == set(OVERRIDDEN), (
        "private Trainer methods overridden but not listed (or listed but no longer overridden): "
        f"{sorted(shadowing ^ set(OVERRIDDEN))}"
    )


def test_installed_transformers_is_inside_the_pinned_range():
    import pathlib
    import re

    from packaging.version import Version

    text = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    low, high = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', text).groups()
    assert Version(low) <= Version(transformers.__version__) < Version(high)
