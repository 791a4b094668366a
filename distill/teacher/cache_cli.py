"""`distill cache-teacher`: write a teacher cache (:mod:`distill.teacher.cache`) for a recipe's training split.

:func:`main` is re-exported by :mod:`distill.teacher.cache`, where the cache format is described.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

# ----------------------------------------------------------------------------------------------
# `distill cache-teacher`
# ----------------------------------------------------------------------------------------------
CACHE_USAGE = """usage: distill cache-teacher --config RECIPE --cache_dir DIR [--top_k K] [--cache_dtype float16|float32]
                             [--cache_batch_size N] [any distill train field, e.g. --max_train_samples 512]

Runs the recipe's teacher (teacher_model_name_or_path) once over the recipe's tokenized training
split and writes DIR: an Arrow dataset with the top-K log-probs per token at the recipe's
temperature, one bucket for the remaining mass, a manifest (teacher_cache.json) and the tokenizer.
Then: distill train --config RECIPE --teacher_cache DIR (no teacher is loaded).
"""


CACHE_FLAGS = ("--cache_dir", "--top_k", "--cache_dtype", "--cache_batch_size")


def _pop_option(argv: list[str], name: str, default=None):
    """The value of ``name`` (``--snake_case``, or its ``--kebab-case`` alias), removed from argv."""
    spellings = (name, "--" + name[2:].replace("_", "-"))
    for i, arg in enumerate(argv):
        if arg in spellings or arg.startswith(tuple(s + "=" for s in spellings)):
            if "=" in arg:
                value = arg.split("=", 1)[1]
                del argv[i]
            else:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                value = argv[i + 1]
                del argv[i : i + 2]
            return value
    return default


def main(argv: Optional[list[str]] = None) -> dict:
    """`distill cache-teacher`: write a teacher cache for a recipe's training split."""
    import logging

    # Imported here, not at the top, so that `distill cache-teacher --help` needs no torch.
    from .cache import VALUE_DTYPES, build_teacher_cache

    argv = list(sys.argv[2:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(CACHE_USAGE)
        return {}
    cache_dir = _pop_option(argv, "--cache_dir")
    if not cache_dir:
        raise ValueError("cache-teacher needs --cache_dir DIR (where the cache is written).")
    k = int(_pop_option(argv, "--top_k", "32"))
    value_dtype = _pop_option(argv, "--cache_dtype", "float16")
    batch_size = _pop_option(argv, "--cache_batch_size")
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"cache_dtype={value_dtype!r} is unknown: use one of {', '.join(VALUE_DTYPES)}.")
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
        raise ValueError(f"cache_dir={cache_dir!r} is not empty; choose a new directory or delete it.")

    import transformers

    from distill.trainer.tasks import get_task

    from ..data import build_datasets
    from ..train import _check_before_compute, _load_processing_class, parse_args
    from .loading import check_same_tokenizer, load_teacher

    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.task != "causal-lm":
        raise ValueError(f"cache-teacher supports task causal-lm only (the recipe has task={args.task!r}).")
    if not args.teacher_model_name_or_path:
        raise ValueError(
            "cache-teacher needs teacher_model_name_or_path in the recipe or on the command line."
        )
    args.alpha = max(args.alpha, 1e-6)  # only so that _check_before_compute checks the teacher path
    _check_before_compute(model_args, data_args, args)
    task = get_task(args.task)
    transformers.set_seed(args.seed)
    tokenizer = _load_processing_class(model_args, data_args, args, task)
    bundle = build_datasets(data_args, task.name, tokenizer, seed=args.seed)
    if bundle.train is None or not hasattr(bundle.train, "__len__"):
        raise ValueError("cache-teacher needs a map-style training split (streaming is not supported).")
    teacher, teacher_tok = load_teacher(args.teacher_model_name_or_path, task, args)
    check_same_tokenizer(tokenizer, teacher_tok, teacher, teacher)
    teacher.to(args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cache = build_teacher_cache(
        teacher,
        bundle.train,
        cache_dir,
        tokenizer=tokenizer,
        k=k,
        temperature=args.temperature,
        teacher_name=args.teacher_model_name_or_path,
        value_dtype=value_dtype,
        batch_size=int(batch_size or args.per_device_eval_batch_size),
        pad_token_id=pad if pad is not None else 0,
        device=args.device,
        show_progress=not args.disable_tqdm,
    )
    m = cache.manifest
    print(
        f"wrote teacher cache {cache_dir}: {m['data']['num_examples']} examples, {m['data']['num_tokens']} tokens, "
        f"k={m['k']}, T={m['temperature']}, {m['value_dtype']}"
    )
    return m
