"""A student made of chosen teacher blocks (DistilBERT style), in memory or as a model directory.

The student keeps the teacher's config except the depth: embeddings, the chosen blocks (renumbered
0..n-1), the final norm and every head (LM head, pooler, classifier) are copied from the teacher.
Because the student is built from its own config, each attention module's ``layer_idx`` (its slot
in the KV cache) is its new position, and per-layer config lists such as ``layer_types`` are cut
to the chosen layers.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .architectures import blocks_prefix, get_architecture, get_blocks

# Config fields holding one entry per layer; cut to the chosen layers (others are left alone:
# a list such as eos_token_id may have the length of the layer count by chance).
PER_LAYER_CONFIG_FIELDS = ("layer_types", "no_rope_layers")

LayerSpec = Union[str, int, Sequence[int]]


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Turn a layer choice into increasing teacher block indices.

    Args:
        spec: explicit indices (``[0, 2, 4]`` or ``"0,2,4"``; a single index is ``"3,"`` or ``[3]``),
            ``"every_other"`` (0, 2, 4, ...: DistilBERT's choice), or a count ``n`` (``3`` or ``"3"``)
            for ``n`` evenly spaced blocks, block ``i * num_layers // n`` for ``i < n``.
        num_layers: the teacher's ``num_hidden_layers``.
    """
    where = f"layers={spec!r}"
    if isinstance(spec, str):
        text = spec.strip()
        if text == "every_other":
            return list(range(0, num_layers, 2))
        if "," not in text:
            if not text.isdigit():
                raise ValueError(f"{where}: use indices '0,2,4', 'every_other', or a count such as 3.")
            spec = int(text)
        else:
            try:
                spec = [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"{where}: indices must be integers, e.g. '0,2,4'.") from None
    if isinstance(spec, bool):
        raise ValueError(f"{where}: give indices, 'every_other' or a count.")
    if isinstance(spec, int):
        if not 1 <= spec <= num_layers:
            raise ValueError(f"{where}: a count must be between 1 and the teacher's {num_layers} layers.")
        return [i * num_layers // spec for i in range(spec)]
    layers = [int(i) for i in spec]
    if not layers:
        raise ValueError(f"{where}: choose at least one layer.")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{where}: {bad} out of range; the teacher has layers 0..{num_layers - 1}.")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{where}: indices must be strictly increasing (each block once, in order).")
    return layers


def student_config(teacher_config, layers: Sequence[int]):
    """The teacher's config with ``num_hidden_layers`` and per-layer lists cut to ``layers``."""
    config = copy.deepcopy(teacher_config)
    total = teacher_config.num_hidden_layers
    for name in PER_LAYER_CONFIG_FIELDS:
        value = getattr(teacher_config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            setattr(config, name, [value[i] for i in layers])
    config.num_hidden_layers = len(layers)
    return config


def remap_blocks(
    state: dict[str, torch.Tensor], prefix: str, layers: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Keep the blocks ``layers`` of a state dict, renumbered 0..n-1; every other entry unchanged."""
    new_index = {old: new for new, old in enumerate(layers)}
    head = prefix + "."
    out = {}
    for key, value in state.items():
        if key.startswith(head):
            index, rest = key[len(head) :].split(".", 1)
            if int(index) in new_index:
                out[f"{head}{new_index[int(index)]}.{rest}"] = value
        else:
            out[key] = value
    return out


def model_from_state(model_class, config, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Build ``model_class(config)`` and load ``state`` into it; every weight must be covered (strict)."""
    model = model_class(config).to(dtype)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(  # a bug in the mapping, never a user error: refuse rather than leave random weights
            f"{model_class.__name__}: weights not covered {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )
    return model.eval()


def init_student_from_teacher(teacher: nn.Module, layers: LayerSpec) -> nn.Module:
    """A copy of ``teacher`` with only the chosen blocks (embeddings, final norm and heads copied too).

    Args:
        teacher: a `PreTrainedModel` of a supported family (see `distill.students.architectures`).
        layers: see `resolve_layers`.

    Returns:
        A new model of the teacher's class, in eval mode, sharing no storage with the teacher.
    """
    arch = get_architecture(teacher.config)
    get_blocks(teacher, arch)  # the block list is where the family says
    chosen = resolve_layers(layers, teacher.config.num_hidden_layers)
    state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    state = remap_blocks(state, blocks_prefix(teacher, arch), chosen)
    student = model_from_state(type(teacher), student_config(teacher.config, chosen), state, teacher.dtype)
    if getattr(teacher, "generation_config", None) is not None and teacher.can_generate():
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def load_model_dir(path: str, task: Optional[str] = None, trust_remote_code: bool = False) -> nn.Module:
    """Load a model directory with its task's auto class, else the class named in ``config.architectures``."""
    import transformers

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path!r} is not a model directory (no config.json there).")
    if task is not None:
        from distill.trainer.tasks import get_task

        model_class = get_task(task).model_class()
    else:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ValueError(
                f"{path}: config.json names no known architecture; pass task (causal-lm, seq-cls, image-cls)."
            )
    return model_class.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)


def save_with_processor(
    model: nn.Module,
    source_dir: str,
    output_dir: str,
    record_name: str,
    record: dict,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> None:
    """``save_pretrained`` (safetensors) plus the source's tokenizer or image processor and a JSON record."""
    from ..teacher.loading import load_tokenizer_if_present

    if os.path.isfile(os.path.join(output_dir, "config.json")) and not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir!r} already holds a model; choose another or pass --overwrite_output_dir "
            "(alias --overwrite)."
        )
    if overwrite:  # nothing stale beside the new model (a pruning.json, a run fingerprint, ONNX files)
        from distill.utils.output_dir import clear_model_outputs

        clear_model_outputs(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    if os.path.isfile(os.path.join(source_dir, "preprocessor_config.json")):
        from transformers import AutoImageProcessor

        AutoImageProcessor.from_pretrained(source_dir, trust_remote_code=trust_remote_code).save_pretrained(
            output_dir
        )
    tokenizer = load_tokenizer_if_present(source_dir, trust_remote_code=trust_remote_code)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    with open(os.path.join(output_dir, record_name), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def save_student_from_teacher(
    teacher_dir: str,
    layers: LayerSpec,
    output_dir: str,
    task: Optional[str] = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """`distill init-student`: write a student of chosen teacher blocks as a ``save_pretrained`` directory.

    Returns:
        The record also written to ``output_dir/student_init.json`` (teacher, layers, parameters).
    """
    teacher = load_model_dir(teacher_dir, task=task, trust_remote_code=trust_remote_code)
    chosen = resolve_layers(layers, teacher.config.num_hidden_layers)
    student = init_student_from_teacher(teacher, chosen)
    record = {
        "teacher": os.path.abspath(teacher_dir),
        "teacher_class": type(teacher).__name__,
        "teacher_num_hidden_layers": teacher.config.num_hidden_layers,
        "layers": chosen,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
    }
    save_with_processor(
        student,
        teacher_dir,
        output_dir,
        "student_init.json",
        record,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
    )
    return record


def _teacher_config_dict(teacher_dir: Optional[str]) -> dict:
    if not teacher_dir:
        raise ValueError(
            "init_from_teacher_layers needs teacher_model_name_or_path: the teacher whose blocks "
            "make the student."
        )
    path = os.path.join(os.path.expanduser(teacher_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"init_from_teacher_layers: teacher_model_name_or_path={teacher_dir!r} is not a "
            "local model directory (no config.json there)."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_layers_of_teacher_dir(teacher_dir: Optional[str], layers: LayerSpec) -> list[int]:
    """Before any compute: the teacher is a local model of a supported family and ``layers`` fit it."""
    from types import SimpleNamespace

    config = _teacher_config_dict(teacher_dir)
    get_architecture(SimpleNamespace(model_type=config.get("model_type")))
    return resolve_layers(layers, int(config["num_hidden_layers"]))


def student_from_teacher_dir(
    teacher_dir: str,
    layers: LayerSpec,
    model_class,
    num_labels: Optional[int] = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """`distill train` with ``init_from_teacher_layers``: load the teacher with the task's class, keep ``layers``."""
    teacher = model_class.from_pretrained(
        os.path.expanduser(teacher_dir), use_safetensors=True, trust_remote_code=trust_remote_code
    )
    teacher_labels = getattr(teacher.config, "num_labels", None)
    if num_labels is not None and teacher_labels != num_labels:
        raise ValueError(
            f"init_from_teacher_layers: the teacher classifies {teacher_labels} labels but the data has "
            f"{num_labels}; a student copied from it needs the teacher's labels."
        )
    student = init_student_from_teacher(teacher, layers)
    del teacher
    return student.train()
