"""Checkpoints of `DistillationTrainer`: staged and renamed into place, checked before resuming, the
hidden-state projection beside them, and the student saved without pickles."""

from __future__ import annotations

import os
import shutil
from typing import Optional

from transformers.trainer_utils import rotate_checkpoints

from distill.students.lora import is_peft_model, save_merged_student
from distill.trainer.checkpoints import (
    check_finite_weights,
    disk_full_error,
    last_complete_checkpoint,
    resolve_resume,
    write_completion_record,
)
from distill.trainer.intermediate import PROJECTION_NAME, load_projection, save_projection

_STAGING = ".staging"


class CheckpointingMixin:
    """`Trainer` overrides for saving and resuming; mixed into `distill.trainer.distillation_trainer.DistillationTrainer`."""

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return staging if staging else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write each checkpoint into a staging folder, then rename it into place.

        A run killed mid-save leaves no half-written ``checkpoint-N`` behind, so resuming from the
        last checkpoint always finds a complete one.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self._staging_dir = os.path.join(run_dir, _STAGING)
        staged, final = os.path.join(self._staging_dir, name), os.path.join(run_dir, name)
        check_finite_weights(model, self.accelerator if self.args.world_size > 1 else None)
        try:
            super()._save_checkpoint(model, trial)
            projection = self._intermediate.projection if self._intermediate is not None else None
            # not in model.safetensors (see intermediate)
            if projection is not None and self.args.should_save:
                save_projection(projection.state_dict(), staged)
        except OSError as e:  # out of disk: say so; the previous checkpoint was not touched
            shutil.rmtree(os.path.join(run_dir, _STAGING), ignore_errors=True)
            error = disk_full_error(e, final, last_complete_checkpoint(run_dir))
            if error is None:
                raise
            raise error from e
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_completion_record(staged)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(os.path.join(run_dir, _STAGING), ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and best.startswith(os.path.join(run_dir, _STAGING)):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._intermediate is not None and self._intermediate.projection is not None:
            load_projection(self._intermediate.projection, resume_from_checkpoint)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """`Trainer.train`, resuming only from a checkpoint that passes `distill.trainer.checkpoints.check_checkpoint`:
        ``True`` takes the newest complete one (skipping damaged ones with a warning), a path is checked
        and refused with the damaged file named. Staging left by a killed save is removed first."""
        if self.args.should_save:
            shutil.rmtree(os.path.join(self.args.output_dir, _STAGING), ignore_errors=True)
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _issue_warnings_after_load(self, load_result) -> None:
        # The projection is not in model.safetensors by design (it is loaded from its own file): not "missing".
        load_result.missing_keys[:] = [
            k for k in load_result.missing_keys if not k.startswith(PROJECTION_NAME + ".")
        ]
        super()._issue_warnings_after_load(load_result)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        best = self.state.best_model_checkpoint
        if (
            self._intermediate is not None
            and self._intermediate.projection is not None
            and best
            and not self.is_deepspeed_enabled
        ):
            load_projection(self._intermediate.projection, best)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save the student only (safetensors); the arguments as JSON instead of a pickle. A LoRA student's final
        save is the merged model, with its adapter in ``adapter/`` (checkpoints keep the adapter alone)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save and not _internal_call and is_peft_model(self.model):
            save_merged_student(self.model, output_dir, self.processing_class)
        if self.args.should_save:
            pickled = os.path.join(output_dir, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)
            with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())
