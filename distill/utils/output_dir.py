"""Output folders: never overwrite a model that no run of the command wrote (issue 19).

`distill train`, `distill init-student`, `distill prune`, `scaledown export` and `scaledown quantize` each
leave a record of their own in the folder they write (`run_fingerprint.json`, `student_init.json`,
`pruning.json`, `export_report.json`, `quantize_report.json`). A folder that holds files but not that
record was written by something else (another command, or the user) and is refused, before any compute;
``--overwrite_output_dir`` (alias ``--overwrite``) is the one way through, the same on every command, and
it first removes the model files and records a command of this project writes there, so that nothing
stale (a ``pruning.json`` beside a retrained model, ONNX beside safetensors) is left behind. Other files
are kept.
"""

from __future__ import annotations

import os
import shutil

OVERWRITE_FLAG = "--overwrite_output_dir"

# What a model folder holds (transformers' save_pretrained, tokenizers, processors, ONNX).
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "training_args.bin",
    }
)
MODEL_SUFFIXES = (".safetensors", ".safetensors.index.json", ".onnx", ".onnx.data", ".model", ".tiktoken")
# The records the project's commands write beside a model.
RECORDS = frozenset(
    {
        "run_fingerprint.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "test_results.json",
        "trainer_state.json",
        "student_init.json",
        "pruning.json",
        "export_report.json",
        "quantize_report.json",
    }
)


def entries(output_dir: str) -> list[str]:
    """The folder's entries, without hidden ones (``.lock`` files, editor state); [] when it does not exist."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if not name.startswith("."))


def _is_model_output(name: str, path: str) -> bool:
    if name.startswith("checkpoint-") and os.path.isdir(path):
        return True
    return name in MODEL_FILES or name in RECORDS or name.endswith(MODEL_SUFFIXES)


def _described(names: list[str]) -> str:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    model = any(n == "config.json" or n.endswith(MODEL_SUFFIXES) for n in names)
    return f"{'a model' if model else 'files'} ({shown})"


def refuse_foreign_output_dir(output_dir: str, record: str, command: str) -> None:
    """Raise when ``output_dir`` holds files and not ``record``, the file that `command` leaves there.

    Raises:
        ValueError: naming what is there and the two ways on (another --output_dir, or
            --overwrite_output_dir).
    """
    names = entries(output_dir)
    if not names or record in names:
        return
    raise ValueError(
        f"output_dir={output_dir!r} already holds {_described(names)} that no `{command}` run wrote (no {record}), "
        f"so it is not overwritten. Choose another --output_dir, or pass {OVERWRITE_FLAG} (alias --overwrite) to "
        "replace the model there."
    )


def clear_model_outputs(output_dir: str) -> list[str]:
    """Remove the model files, checkpoints and records in ``output_dir`` (other files stay); their names."""
    removed = []
    for name in entries(output_dir):
        path = os.path.join(output_dir, name)
        if _is_model_output(name, path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
    return removed
