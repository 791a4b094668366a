"""What a model directory holds, and real inputs for it from the task's data.

A *model directory* is what `distill train` (or `save_pretrained`) writes: `config.json`,
safetensors weights and a tokenizer or image processor. An *ONNX directory* is what
`scaledown export` / `scaledown quantize --method onnx-int8` write: `model.onnx`, the same
`config.json` and processor files, and a JSON report. Both are described by `ModelInfo`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".bin")
_AUTO_MAPPINGS = {
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "seq-cls": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "image-cls": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


@dataclass
class ModelInfo:
    """A model directory's kind, task and labels.

    Attributes:
        path: the directory.
        task: `causal-lm`, `seq-cls` or `image-cls`.
        format: `pytorch` (safetensors) or `onnx` (`model.onnx`).
        precision: `fp32` or `int8` (torchao weights, or an ONNX Runtime quantised graph).
        config: the `config.json` contents.
        report: the export/quantise report of an ONNX directory (empty otherwise).
    """

    path: str
    task: str
    format: str
    precision: str
    config: dict
    report: dict = field(default_factory=dict)

    @property
    def id2label(self) -> dict[int, str]:
        labels = self.config.get("id2label") or {}
        return {int(k): str(v) for k, v in labels.items()}

    @property
    def variant(self) -> str:
        """A short name such as `pytorch-fp32` or `onnx-int8`."""
        return f"{self.format}-{self.precision}"


def task_from_architectures(architectures: list[str]) -> Optional[str]:
    """The task of a model class name, through transformers' auto mappings (None if unknown)."""
    from transformers.models.auto import modeling_auto

    for task, mapping_name in _AUTO_MAPPINGS.items():
        mapping = getattr(modeling_auto, mapping_name)
        for value in mapping.values():
            names = value if isinstance(value, (tuple, list)) else (value,)
            if any(arch in names for arch in architectures):
                return task
    return None


def describe(path: str) -> ModelInfo:
    """Read a PyTorch or ONNX model directory; raise a `ValueError` naming what is missing."""
    if not os.path.isdir(path):
        raise ValueError(
            f"MODEL_DIR={path!r} is not a directory: pass a folder written by `distill train`, "
            "`save_pretrained` or `scaledown export`."
        )
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"MODEL_DIR={path!r} has no config.json: pass a folder written by `distill train`, "
            "`save_pretrained` or `scaledown export`."
        )
    with open(config_path) as f:
        config = json.load(f)
    report: dict = {}
    if os.path.isfile(os.path.join(path, ONNX_FILE)):
        fmt = "onnx"
        for name in ("quantize_report.json", "export_report.json"):
            if os.path.isfile(os.path.join(path, name)):
                with open(os.path.join(path, name)) as f:
                    report = json.load(f)
                break
        precision = "int8" if report.get("method") == "onnx-int8" else "fp32"
        task = report.get("task")
    else:
        from distill.utils.safe_loading import check_model_dir

        check_model_dir(path, "MODEL_DIR")  # pickles only, or custom code: refused with the fix
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            raise ValueError(
                f"MODEL_DIR={path!r} has neither safetensors weights nor {ONNX_FILE}; only "
                "safetensors checkpoints are loaded (no pickles)."
            )
        fmt = "pytorch"
        quant = config.get("quantization_config") or {}
        precision = "int8" if quant.get("quant_method") == "torchao" else "fp32"
        task = None
    task = task or task_from_architectures(config.get("architectures") or [])
    if task is None:
        raise ValueError(
            f"Cannot tell the task of {path!r} from config.json's architectures "
            f"{config.get('architectures')}: scaledown ships causal LMs, sequence classifiers "
            "and image classifiers."
        )
    return ModelInfo(path=path, task=task, format=fmt, precision=precision, config=config, report=report)


def disk_bytes(path: str) -> int:
    """Bytes of the weight files in a directory (safetensors, ONNX graph and external data)."""
    return sum(
        os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(WEIGHT_SUFFIXES)
    )


def load_processor(path: str, task: str):
    """The tokenizer (text tasks) or image processor saved in `path`; None for images without one.

    Image classifiers trained on a built-in source have no processor: their pixels are resized
    to `config.image_size` and scaled to [-1, 1] (`distill.data.prep.simple_pixels`).
    """
    if task == "image-cls":
        if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            return None
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path)
    from distill.teacher.loading import load_tokenizer_if_present

    tokenizer = load_tokenizer_if_present(path)
    if tokenizer is None:
        raise ValueError(
            f"{path!r} has no tokenizer files (tokenizer.json / tokenizer_config.json / vocab.txt); "
            "save the tokenizer beside the model (`tokenizer.save_pretrained(MODEL_DIR)`)."
        )
    return tokenizer


def load_torch_model(path: str, task: str):
    """The PyTorch model of a directory, from safetensors only, in eval mode."""
    from distill.trainer.tasks import get_task

    model = get_task(task).model_class().from_pretrained(path, use_safetensors=True)
    return model.eval()


def copy_model_files(source: str, dest: str) -> None:
    """Copy config.json and the processor files (not the weights) from `source` to `dest`."""
    import shutil

    os.makedirs(dest, exist_ok=True)
    skip = WEIGHT_SUFFIXES + ("_report.json", "all_results.json", "trainer_state.json", "README.md")
    for name in os.listdir(source):
        full = os.path.join(source, name)
        if (
            os.path.isfile(full)
            and name.endswith((".json", ".txt", ".model", ".jinja"))
            and not name.endswith(skip)
        ):
            shutil.copy2(full, os.path.join(dest, name))


# --------------------------------------------------------------------------------------------
# Real inputs from the task's data
# --------------------------------------------------------------------------------------------
def data_arguments(data, task: str, config: dict, **overrides):
    """`DataArguments` from a recipe YAML (its data fields), a dataset name, or the task's built-in.

    Args:
        data: a `distill train` recipe (`.yaml`/`.yml`; only `DataArguments` fields are read), a
            mapping of `DataArguments` fields (e.g. a pipeline's `data:` block), a dataset name (`builtin:docstring-topics`, a Hub id, `json`...), or None for the
            task's built-in offline source.
        task: the model's task.
        config: the model's config (image size for image classifiers).
        overrides: further `DataArguments` fields (e.g. `max_test_samples`).
    """
    import dataclasses

    import yaml

    from distill.data import DEFAULT_SOURCE, DataArguments

    fields = {f.name for f in dataclasses.fields(DataArguments)}
    values: dict[str, Any] = {}
    if isinstance(data, dict):
        values = {k: v for k, v in data.items() if k in fields}
    elif data and data.endswith((".yaml", ".yml")):
        if not os.path.isfile(data):
            raise ValueError(f"--data {data!r}: no such recipe file.")
        with open(data) as f:
            recipe = yaml.safe_load(f) or {}
        values = {k: v for k, v in recipe.items() if k in fields}
        recipe_task = recipe.get("task")
        if recipe_task and recipe_task != task:
            raise ValueError(f"--data {data!r} is a {recipe_task} recipe but the model is a {task} model.")
    elif data:
        values["dataset_name"] = data
    else:
        values["dataset_name"] = DEFAULT_SOURCE[task]
    if task == "image-cls" and "image_size" not in values and config.get("image_size"):
        size = config["image_size"]
        values["image_size"] = size if isinstance(size, int) else size[0]
    values.update(overrides)
    return DataArguments(**values)


def eval_examples(info: ModelInfo, processor, data=None, limit: Optional[int] = None, seed: int = 0):
    """The test split (else the validation split) of the task's data, as model-ready examples.

    Only that split is prepared (tokenized or transformed), and only its first `limit` raw rows,
    with `distill.data`'s own per-task preparation, so the inputs are those training saw.
    """
    from datasets import Dataset

    from distill.data import load_raw_datasets
    from distill.data.prep import prepare_split

    data_args = data_arguments(data, info.task, info.config)
    raw = load_raw_datasets(data_args, seed, task=info.task)
    name = "test" if "test" in raw else "validation" if "validation" in raw else None
    if name is None:
        raise ValueError(
            f"The data {data_args.dataset_name!r} has neither a test nor a validation split to "
            "measure on; set test_split / eval_split in the recipe."
        )
    split = raw[name]
    if limit is not None and isinstance(split, Dataset):
        split = split.select(range(min(limit, len(split))))
    from distill.teacher.loading import label_space_of

    # the model's classes, in its id order: the data's labels are numbered as the model numbers them
    label_space = label_space_of(info.config) if info.task != "causal-lm" else None
    return prepare_split(
        split, name, info.task, data_args, processor, limit=limit, seed=seed, label_space=label_space
    )


def model_inputs(info: ModelInfo, processor, rows: list[dict]) -> dict:
    """Collate examples (dicts from `eval_examples`) into the model's input tensors, plus `labels`."""
    from distill.trainer.tasks import get_task, make_collator

    batch = make_collator(get_task(info.task), processor)(rows)
    names = input_names(info)
    if "token_type_ids" in names and "token_type_ids" not in batch:
        import torch

        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return {k: v for k, v in batch.items() if k in names + ["labels"]}


def input_names(info: ModelInfo) -> list[str]:
    """The model inputs scaledown exports and feeds, in order."""
    if info.report.get("input_names"):
        return list(info.report["input_names"])
    if info.task == "image-cls":
        return ["pixel_values"]
    names = ["input_ids", "attention_mask"]
    if info.task == "seq-cls" and info.config.get("type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names
