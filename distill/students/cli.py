"""`distill init-student` and `distill prune`: argument parsing only; the work is in this subpackage."""

from __future__ import annotations

import argparse
import json

from distill.utils.flags import add_overwrite_flag, both_spellings


def _add_loading_options(parser, who: str) -> None:
    """The options both commands share: how to load the model directory, and whether to replace output."""
    parser.add_argument(
        "--task",
        choices=["causal-lm", "seq-cls", "image-cls"],
        default=None,
        help=f"Load the {who} with this task's auto class (default: the class in its config.json).",
    )
    add_overwrite_flag(parser, "Replace a model already in output_dir (alias --overwrite).", dest="overwrite")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help=f"Allow custom modelling code in the {who} directory (off by default).",
    )


def build_init_student_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill init-student",
        description="Write a student made of chosen teacher blocks (DistilBERT style): embeddings, the blocks, the "
        "final norm and the heads are copied; num_hidden_layers, per-layer config lists and KV-cache slots are "
        "renumbered. The output is a save_pretrained directory (safetensors, tokenizer or image processor) that "
        "`distill train --model_name_or_path OUT` trains. Families: Llama-style causal LMs (llama, mistral, qwen2, "
        "qwen3), BERT-style encoders (bert, roberta), ViT.",
    )
    parser.add_argument("--teacher", required=True, help="Teacher model directory (safetensors).")
    parser.add_argument(
        "--layers",
        required=True,
        help="Teacher blocks to keep: indices '0,2,4' (one index: '3,'), 'every_other', or a count "
        "n for n evenly spaced blocks (block i*L//n).",
    )
    parser.add_argument("--output_dir", required=True, help="Where to write the student.")
    _add_loading_options(parser, "teacher")
    return both_spellings(parser)


def init_student_main(argv: list[str]) -> None:
    args = build_init_student_parser().parse_args(argv)
    from .from_layers import save_student_from_teacher

    record = save_student_from_teacher(
        args.teacher,
        args.layers,
        args.output_dir,
        task=args.task,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    print(json.dumps(record, indent=2))


def build_prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill prune",
        description="Structured pruning (Minitron / ShortGPT) scored on calibration data: drop the K blocks of lowest "
        "block influence (1 - cos(input, output hidden states)), keep the W MLP neurons of highest mean |activation| "
        "per block, optionally keep the H heads of highest mean output norm (Llama-style: whole key-value groups; "
        "ViT; not BERT). Writes a save_pretrained directory and OUT/pruning.json (scores, kept and removed parts). "
        "Then distill it from the unpruned model: `distill train --model_name_or_path OUT "
        "--teacher_model_name_or_path MODEL ...`.",
    )
    parser.add_argument("--model", required=True, help="Model directory to prune (safetensors).")
    parser.add_argument(
        "--drop-layers",
        "--drop_layers",
        dest="drop_layers",
        type=int,
        default=0,
        help="Blocks to remove (default 0).",
    )
    parser.add_argument(
        "--mlp-width",
        "--mlp_width",
        dest="mlp_width",
        type=int,
        default=None,
        help="MLP intermediate size to keep in every block (default: unchanged).",
    )
    parser.add_argument(
        "--heads", type=int, default=None, help="Attention heads to keep per block (default: all)."
    )
    parser.add_argument(
        "--calibration",
        required=True,
        help="A distill train recipe (its data fields are used), a dataset name such as "
        "builtin:docstring-topics, or a local data file.",
    )
    parser.add_argument(
        "--num-samples",
        "--num_samples",
        dest="num_samples",
        type=int,
        default=64,
        help="Calibration examples (default 64).",
    )
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument(
        "--max-length",
        "--max_length",
        dest="max_length",
        type=int,
        default=None,
        help="Tokens per calibration text (default: 128, capped at max_position_embeddings).",
    )
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True)
    _add_loading_options(parser, "model")
    return both_spellings(parser)


def prune_main(argv: list[str]) -> None:
    args = build_prune_parser().parse_args(argv)
    from .prune import prune_model_dir

    record = prune_model_dir(
        args.model,
        args.output_dir,
        args.calibration,
        num_samples=args.num_samples,
        drop_layers=args.drop_layers,
        mlp_width=args.mlp_width,
        heads=args.heads,
        task=args.task,
        batch_size=args.batch_size,
        max_length=args.max_length,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    summary = {k: record[k] for k in ("params_before", "params_after", "kept_layers", "dropped_layers")}
    summary["block_influence"] = record["scores"]["block_influence"]
    print(json.dumps(summary, indent=2))
