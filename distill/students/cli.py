"""`distill init-student` and `distill prune`: argument parsing only; the work is in this subpackage."""

from __future__ import annotations

import argparse
import json


def init_student_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="distill init-student",
        description="Write a student made of chosen teacher blocks (DistilBERT style): embeddings, the blocks, the "
        "final norm and the heads are copied; num_hidden_layers, per-layer config lists and KV-cache slots are "
        "renumbered. The output is a save_pretrained directory (safetensors, tokenizer or image processor) that "
        "`distill train --model_name_or_path OUT` trains. Families: Llama-style causal LMs (llama, mistral, qwen2, "
        "qwen3), BERT-style encoders (bert, roberta), ViT.")
    parser.add_argument("--teacher", required=True, help="Teacher model directory (safetensors).")
    parser.add_argument("--layers", required=True,
                        help="Teacher blocks to keep: indices '0,2,4' (one index: '3,'), 'every_other', or a count "
                        "n for n evenly spaced blocks (block i*L//n).")
    parser.add_argument("--output_dir", required=True, help="Where to write the student.")
    parser.add_argument("--task", choices=["causal-lm", "seq-cls", "image-cls"], default=None,
                        help="Load the teacher with this task's auto class (default: the class in its config.json).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a model already in output_dir.")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    from .from_layers import save_student_from_teacher

    record = save_student_from_teacher(args.teacher, args.layers, args.output_dir, task=args.task,
                                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    print(json.dumps(record, indent=2))
