"""Intermediate-layer distillation in the trainer: hidden states (+ a learned projection) and attention.

`DistillationTrainer` builds one :class:`IntermediateLayerTransfer` when ``hidden_weight > 0`` or
``attention_weight > 0``. It checks the setup before any compute, tells the trainer which extra
outputs to request from both models, and computes the terms of :mod:`distill.losses.hidden`.

**The projection.** When the widths differ, a learned linear map (TinyBERT's ``W_h``, one shared by
all mapped layers, with a bias) takes the student's hidden states to the teacher's width. It is
registered as a submodule of the student (:data:`PROJECTION_NAME`), so that everything the Trainer
does with the student's parameters covers it without special cases: it is in the optimizer (also
DeepSpeed's, which builds its own from the model), its gradients are averaged by DDP like the
student's (it is used after the forward, hence ``ddp_find_unused_parameters=False``), and DeepSpeed
checkpoints hold it. It is listed in the student's ``_keys_to_ignore_on_save``, so
``save_pretrained`` (the final model, ``save_model``, any direct call) never writes it; checkpoints
store it beside the model as :data:`PROJECTION_FILE` and resuming loads it back.

Not supported, refused with the reason: several teachers (whose layers would be matched?); a projection under DeepSpeed ZeRO-3 or FSDP (both shard the
student's parameters outside its forward, where the projection runs); hidden states from a teacher
cache; attention transfer with an attention implementation that returns no probabilities (sdpa,
flash), with attention dropout in the student (transformers returns the probabilities after
dropout), or with different head counts.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

from distill.losses.hidden import (
    attention_kl_loss,
    check_layer_map,
    default_layer_map,
    hidden_state_loss,
    position_weights,
)

PROJECTION_NAME = "distill_hidden_projection"
PROJECTION_FILE = "hidden_projection.safetensors"
_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _shape(model: nn.Module, who: str) -> tuple[int, int, Optional[int]]:
    """(blocks, width, heads) from the model's config, refused when it does not say."""
    config = getattr(_unwrap(model), "config", None)
    layers, width = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not isinstance(layers, int) or not isinstance(width, int):
        raise ValueError(
            f"hidden_weight/attention_weight need per-layer hidden states, but the {who} "
            f"({type(_unwrap(model)).__name__}) has no config.num_hidden_layers / config.hidden_size; "
            "set hidden_weight=0 and attention_weight=0."
        )
    return layers, width, getattr(config, "num_attention_heads", None)


def _attention_dropout(model: nn.Module) -> float:
    """The largest attention-probability dropout in the model's attention modules (what their forward passes to
    the attention function: ``attention_dropout`` in Llama/ViT, ``dropout.p`` in BERT), or from its config."""
    rates = [getattr(model.config, name, 0) or 0 for name in _DROPOUT_FIELDS]
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            for name in ("attention_dropout", "dropout"):
                value = getattr(module, name, 0)
                rates.append(
                    value.p if isinstance(value, nn.Dropout) else value if isinstance(value, float) else 0
                )
    return max(rates)


def _make_projection(student_width: int, teacher_width: int, student: nn.Module, seed: int) -> nn.Linear:
    """nn.Linear's default initialisation, drawn from its own generator so that it does not depend on (or
    move) the global random state."""
    reference = next(_unwrap(student).parameters())
    projection = nn.Linear(student_width, teacher_width, dtype=reference.dtype)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / student_width**0.5
    with torch.no_grad():
        projection.weight.copy_(
            torch.empty_like(projection.weight).uniform_(-bound, bound, generator=generator)
        )
        projection.bias.copy_(torch.empty_like(projection.bias).uniform_(-bound, bound, generator=generator))
    return projection.to(reference.device)


class IntermediateLayerTransfer:
    """The hidden-state and attention terms of one trainer. See the module docstring.

    Args:
        trainer: the `DistillationTrainer` being built (before ``Trainer.__init__``: the student is not
            wrapped yet); its ``args``, ``task`` and the teacher model are read.
        student: the student model.
        teacher: the teacher model (unplaced), or None.
    """

    def __init__(
        self, args, task, student: nn.Module, teacher: Optional[nn.Module], teacher_cache: Any = None
    ):
        self.args, self.task = args, task
        if teacher is None:
            why = (
                "a teacher cache holds only the teacher's top-k log-probabilities, no hidden states or attentions"
                if teacher_cache is not None
                else "there is no teacher"
            )
            raise ValueError(
                f"hidden_weight/attention_weight > 0 need an online teacher model: {why}; "
                "set both to 0 or pass teacher_model."
            )
        from distill.teacher.ensemble import TeacherGroup

        if isinstance(teacher, TeacherGroup):  # an ensemble (extra_teachers) or one teacher per task
            raise ValueError(
                "hidden_weight/attention_weight > 0 match one teacher's layers, but several teachers "
                "(extra_teachers, or one per task) are given: use one teacher, or set both weights to 0."
            )
        (s_layers, s_width, s_heads), (t_layers, t_width, t_heads) = (
            _shape(student, "student"),
            _shape(teacher, "teacher"),
        )
        self.layer_map = args.hidden_layer_map or default_layer_map(s_layers, t_layers)
        check_layer_map(self.layer_map, s_layers, t_layers)
        self.num_states = (s_layers + 1, t_layers + 1)
        if args.attention_weight > 0:
            self._check_attention(student, teacher, s_heads, t_heads)
        self.projection = None
        if args.hidden_weight > 0 and s_width != t_width:
            self.projection = _make_projection(s_width, t_width, student, args.seed)
            attach_projection(student, self.projection)

    def _check_attention(self, student, teacher, s_heads, t_heads) -> None:
        if s_heads != t_heads:
            raise ValueError(
                f"attention_weight > 0 (MiniLM attention KL) compares attention distributions head by head, but the "
                f"student has {s_heads} heads and the teacher {t_heads}; use models with the same number of heads "
                "or set attention_weight=0."
            )
        for who, model in (("student", student), ("teacher", teacher)):
            config = _unwrap(model).config
            implementation = getattr(config, "_attn_implementation", None)
            if implementation != "eager":
                raise ValueError(
                    f"attention_weight > 0 needs the attention probabilities, which only attn_implementation='eager' "
                    f"returns, but the {who} uses {implementation!r} (sdpa returns none); load it with "
                    "attn_implementation='eager' (or call model.set_attn_implementation('eager'))."
                )
        dropout = _attention_dropout(_unwrap(student))
        if dropout:
            field = next(
                (n for n in _DROPOUT_FIELDS if hasattr(_unwrap(student).config, n)), "attention dropout"
            )
            raise ValueError(
                f"attention_weight > 0: the student's attention has dropout {dropout} ({field}), and transformers "
                "returns the attention probabilities after dropout, which would be compared instead of the "
                f"distribution; build the student with {field}=0 in its config."
            )

    def check_placement(self, trainer) -> None:
        """Refuse a projection where the student's parameters are sharded outside its forward."""
        if self.projection is None:
            return
        stage = 0
        if trainer.is_deepspeed_enabled:
            plugin = trainer.accelerator.state.deepspeed_plugin
            stage = (plugin.deepspeed_config.get("zero_optimization") or {}).get("stage", 0)
        if trainer.is_fsdp_enabled or stage == 3:
            setup = "FSDP" if trainer.is_fsdp_enabled else "DeepSpeed ZeRO-3"
            raise ValueError(
                f"hidden_weight > 0 with different widths needs a learned projection, which runs after the student's "
                f"forward, where {setup} has resharded the student's parameters; use DDP or ZeRO-2, or a student as "
                "wide as the teacher (no projection)."
            )

    # ---- the forward side ----------------------------------------------------------------------

    def model_kwargs(self) -> dict[str, bool]:
        """Extra arguments for both models' forward."""
        kwargs = {"output_hidden_states": True}
        if self.args.attention_weight > 0:
            kwargs["output_attentions"] = True
        return kwargs

    def _states(self, outputs, who: str, key: str, count: int):
        states = getattr(outputs, key, None)
        if states is None or len(states) != count - (key == "attentions"):
            raise ValueError(
                f"The {who} ({self.task.name}) returned no {key} for {key == 'attentions' and 'its blocks' or 'its layers'} "
                f"(got {None if states is None else len(states)}); it cannot be used with "
                f"{'attention_weight' if key == 'attentions' else 'hidden_weight'} > 0."
            )
        return states

    def losses(self, s_out, t_out, inputs: dict, num_items_in_batch=None, rows: Optional[int] = None):
        """``(hidden_loss or None, attention_loss or None)`` for one batch (the first ``rows`` rows)."""
        s_hidden = self._states(s_out, "student", "hidden_states", self.num_states[0])
        t_hidden = self._states(t_out, "teacher", "hidden_states", self.num_states[1])
        batch, length = s_hidden[0].shape[:2]
        k = batch if rows is None else rows
        cut = (lambda states: [x[:k] for x in states]) if k < batch else (lambda states: states)
        labels, mask = inputs.get("labels"), inputs.get("attention_mask")
        weights = position_weights(
            self.task.token_level,
            None if labels is None else labels[:k],
            None if mask is None else mask[:k],
            k,
            length,
            device=s_hidden[0].device,
        )
        hidden = attention = None
        if self.args.hidden_weight > 0:
            hidden, _ = hidden_state_loss(
                cut(s_hidden),
                cut(t_hidden),
                self.layer_map,
                weights,
                kind=self.args.hidden_loss,
                projection=self.projection,
                num_items_in_batch=num_items_in_batch,
            )
        if self.args.attention_weight > 0:
            s_att = self._states(s_out, "student", "attentions", self.num_states[0])
            t_att = self._states(t_out, "teacher", "attentions", self.num_states[1])
            attention, _ = attention_kl_loss(
                cut(s_att), cut(t_att), self.layer_map, weights, num_items_in_batch=num_items_in_batch
            )
        return hidden, attention

    def weighted(self, hidden, attention) -> torch.Tensor:
        """``hidden_weight * hidden + attention_weight * attention`` (either may be None)."""
        total = 0.0
        if hidden is not None:
            total = total + self.args.hidden_weight * hidden
        if attention is not None:
            total = total + self.args.attention_weight * attention
        return total


# ---- the projection in the student, in checkpoints, never in the saved model --------------------


def attach_projection(student: nn.Module, projection: nn.Module) -> None:
    """Register the projection as a submodule of the student and keep it out of ``save_pretrained``."""
    student.add_module(PROJECTION_NAME, projection)
    keys = {f"{PROJECTION_NAME}.{name}" for name, _ in projection.named_parameters()}
    ignored = getattr(student, "_keys_to_ignore_on_save", None)
    student._keys_to_ignore_on_save = set(ignored or ()) | keys


def save_projection(projection_state: dict, output_dir: str) -> None:
    from safetensors.torch import save_file

    if projection_state:
        tensors = {k: v.detach().cpu().contiguous() for k, v in projection_state.items()}
        save_file(tensors, os.path.join(output_dir, PROJECTION_FILE), metadata={"format": "pt"})


def load_projection(projection: nn.Module, checkpoint_dir: str) -> None:
    """Load the projection saved beside a checkpoint; a checkpoint without one is refused."""
    from safetensors.torch import load_file

    path = os.path.join(checkpoint_dir, PROJECTION_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"Resuming from {checkpoint_dir}, which has no {PROJECTION_FILE}: it was not written by a run with "
            "hidden_weight > 0 and a projection, so resuming would restart the projection from scratch. Resume "
            "with the checkpoint's own settings, or start a new run."
        )
    state = load_file(path, device="cpu")
    projection.load_state_dict(state)


def parameter_count(model: nn.Module) -> int:
    """The student's parameters without the projection (which is not part of the saved model)."""
    prefix = PROJECTION_NAME + "."
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(prefix))


def intermediate_description(trainer) -> str:
    """One Markdown sentence for the model card: the intermediate-layer terms and their settings."""
    args, transfer = trainer.args, getattr(trainer, "_intermediate", None)
    layer_map = transfer.layer_map if transfer is not None else args.hidden_layer_map
    parts = []
    if args.hidden_weight > 0:
        projection = (
            " through a learned projection (not part of this model)"
            if getattr(transfer, "projection", None) is not None
            else ""
        )
        parts.append(f"`{args.hidden_weight} * {args.hidden_loss}` between hidden states{projection}")
    if args.attention_weight > 0:
        parts.append(
            f"`{args.attention_weight} * KL(teacher || student)` between attention distributions (MiniLM)"
        )
    return (
        "Intermediate layers: " + " and ".join(parts) + f", student layer -> teacher layer {layer_map} "
        "(indices of `hidden_states`: 0 = embeddings), added to the loss above."
    )
