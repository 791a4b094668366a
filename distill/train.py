"""`distill train`: YAML recipe + command line -> dataclasses -> `main()` -> Trainer -> output directory.

`main()` runs in a fixed order, like transformers' `examples/pytorch` scripts, and always ends with
`all_results.json`, `trainer_state.json`, the student's safetensors and a model card on disk.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from distill.students.model_config import parse_model_config  # noqa: F401  (importable from here, as before)
from distill.students.modeling import build_student, parameter_counts

logger = logging.getLogger("distill")


@dataclass
class ModelArguments:
    """Which student to train, and with which tokenizer or image processor."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local directory of a pretrained student."}
    )
    model_config: Optional[str] = field(
        default=None,
        metadata={
            "help": "Build the student from scratch: a mapping (YAML) or JSON string with model_type and "
            'config fields, e.g. \'{"model_type": "llama", "hidden_size": 64}\', or a config.json path. '
            "vocab_size, num_labels and token ids are filled in from the data."
        },
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Tokenizer to use. Default: the student's, else the teacher's, else a byte-level BPE "
            "trained on the training split (tokenizer_vocab_size) and saved with the model."
        },
    )
    image_processor_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Image processor for image-cls. Default: the student's, else the teacher's."},
    )
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "Train from a teacher cache written by `distill cache-teacher` (causal-lm): no teacher model is "
            "loaded. Its tokenizer, data and temperature are checked against this run before training."
        },
    )

    # --- student made from the teacher's layers (distill/students/) ---
    init_from_teacher_layers: Optional[str] = field(
        default=None,
        metadata={
            "help": "Build the student from teacher_model_name_or_path's blocks before training (DistilBERT "
            "style): a list such as [0, 2, 4] (command line: '0,2,4'), 'every_other', or a count n of evenly "
            "spaced blocks. Embeddings, final norm and heads are copied too. Replaces model_name_or_path / "
            "model_config; `distill init-student` writes the same student to a directory. With alpha 0 and no "
            "hidden or attention term the teacher only gives the weights and is not run during training."
        },
    )

    # --- LoRA students (distill/students/lora.py; TRL's ModelConfig names and defaults) ---
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters (peft) on the frozen student instead of all its weights. The saved student "
            "is the merged model (safetensors), with the adapter in output_dir/adapter. Needs `pip install peft`."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA alpha; the adapters' scale is lora_alpha / lora_r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input, in [0, 1)."})
    lora_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules that get adapters, e.g. q_proj v_proj, or all-linear. Default: peft's choice for "
            "the architecture (the attention projections)."
        },
    )
    lora_modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules trained in full beside the adapters (e.g. lm_head), saved merged."},
    )

    def __post_init__(self):
        from distill.students.lora import check_lora_arguments

        check_lora_arguments(self)
        if self.init_from_teacher_layers == "":  # "" from the command line clears a recipe's value
            self.init_from_teacher_layers = None
        if self.model_name_or_path == "":
            self.model_name_or_path = None
        given = [
            name
            for name in ("model_name_or_path", "model_config", "init_from_teacher_layers")
            if getattr(self, name) not in (None, "")
        ]
        if len(given) > 1:
            raise ValueError(
                f"Give one student source: model_name_or_path (a pretrained student), model_config (a student "
                f"built from scratch) or init_from_teacher_layers (teacher blocks), not {' and '.join(given)}."
            )
        if not given:
            raise ValueError("No student: set model_name_or_path, model_config or init_from_teacher_layers.")


def build_parser():
    from transformers import HfArgumentParser

    from .config import DistillationConfig
    from .data import DataArguments

    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationConfig),
        prog="distill train",
        allow_abbrev=False,  # a misspelt --learning_rat must be an error, not --learning_rate
        usage="distill train [--config RECIPE.yaml] [--FIELD VALUE ...]   (every field below; `distill train --help`)",
    )
    parser.add_argument_group("recipe").add_argument(
        "--config",
        metavar="RECIPE.yaml",
        default=None,
        help="YAML recipe whose fields are the defaults; --FIELD VALUE on the command line overrides them.",
    )
    return parser


def parse_args(argv: list[str]):
    """``--config recipe.yaml`` gives defaults; ``--field value`` overrides; unknown keys are errors."""
    import yaml

    from distill.utils.hints import did_you_mean

    config_path = None
    rest = list(argv)
    for i, arg in enumerate(rest):
        if arg == "--config" or arg.startswith("--config="):
            config_path = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else None)
            del rest[i : i + (1 if "=" in arg else 2)]
            if config_path is None:
                raise ValueError("--config needs a YAML file")
            break
    parser = build_parser()
    known = {action.dest for action in parser._actions} - {"config", "help"}
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"--config {config_path}: no such file")
        with open(config_path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise ValueError(f"{config_path} must hold a mapping of field: value")
        unknown = sorted(set(recipe) - known)
        if unknown:
            hints = [f"{key!r}{did_you_mean(key, known)}" for key in unknown]
            raise ValueError(f"{config_path}: unknown field(s) {', '.join(hints)}")
        parser.set_defaults(**recipe)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if remaining:
        options = {f"--{name}" for name in known}
        hints = [
            f"{arg!r}{did_you_mean(arg.split('=', 1)[0], options)}"
            for arg in remaining
            if arg.startswith("-")
        ]
        raise ValueError(
            f"unknown command-line argument(s) {', '.join(hints or map(repr, remaining))}; "
            "`distill train --help` lists every field."
        )
    return tuple(parsed[:3])  # the namespace left over (--config, already read) is dropped


def _load_processing_class(model_args, data_args, args, task):
    from .students.lora import is_self_teacher
    from .teacher.loading import load_tokenizer_if_present

    teacher = None if is_self_teacher(args.teacher_model_name_or_path) else args.teacher_model_name_or_path
    candidates = [model_args.model_name_or_path, teacher]
    if getattr(args, "cross_tokenizer_loss", None):  # the student keeps (or trains) its own tokenizer
        candidates = [model_args.model_name_or_path]
    if getattr(model_args, "teacher_cache", None):
        candidates.append(os.path.join(os.path.expanduser(model_args.teacher_cache), "tokenizer"))
    if task.name == "image-cls":
        from transformers import AutoImageProcessor

        for name in [model_args.image_processor_name_or_path] + candidates:
            if name and (
                not os.path.isdir(name) or os.path.isfile(os.path.join(name, "preprocessor_config.json"))
            ):
                return AutoImageProcessor.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        return None
    if model_args.tokenizer_name_or_path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            model_args.tokenizer_name_or_path, trust_remote_code=args.trust_remote_code
        )
    for name in candidates:
        if name:
            tokenizer = load_tokenizer_if_present(name, trust_remote_code=args.trust_remote_code)
            if tokenizer is not None:
                return tokenizer
    from .data import texts_for_tokenizer
    from .data.corpus import train_bpe_tokenizer

    logger.info(
        "No tokenizer given: training a %d-token BPE on the training split.", data_args.tokenizer_vocab_size
    )
    return train_bpe_tokenizer(
        texts_for_tokenizer(data_args, task=task.name),
        vocab_size=data_args.tokenizer_vocab_size,
        model_max_length=max(1024, data_args.block_size),
    )


def prepare_data(model_args, data_args, args, task):
    """The tokenizer or image processor and the model-ready splits, checked, with the `TrainingArguments`
    settings the task needs (token counting for text, raw columns kept for images).

    Shared by `distill train` and `distill tune`.
    """
    import datasets

    from .data import build_datasets

    processing_class = _load_processing_class(model_args, data_args, args, task)
    label_space = None
    if task.name != "causal-lm" and args.teacher_model_name_or_path and not model_args.teacher_cache:
        from .teacher.loading import teacher_label_space

        # the teacher's classes, in its order: the data's labels are mapped to them (or refused)
        label_space = teacher_label_space([args.teacher_model_name_or_path, *(args.extra_teachers or [])])
    bundle = build_datasets(data_args, task.name, processing_class, seed=args.seed, label_space=label_space)
    if bundle.train is None:
        raise ValueError(f"train_split={data_args.train_split!r} gave no training data.")
    if isinstance(bundle.train, datasets.IterableDataset) and args.max_steps <= 0:
        raise ValueError(
            "A streamed training set has no length: set max_steps to a positive number of steps."
        )
    if task.name != "image-cls" and args.include_num_input_tokens_seen in ("no", False):
        args.include_num_input_tokens_seen = "non_padding"
    if task.name == "image-cls":
        args.remove_unused_columns = False
    return processing_class, bundle


def _check_before_compute(model_args, data_args, args) -> None:
    """Errors a user can fix, raised before any tokenizer training, data loading or training."""
    from .teacher.loading import _looks_local, check_model_task, read_model_config

    if args.task is None:
        args.task = _infer_task_name(model_args, data_args, args)
    _check_hub_reachable(args)
    if model_args.model_name_or_path:
        student = model_args.model_name_or_path
        check_model_task(read_model_config(student), args.task, "model_name_or_path", student, teacher=False)
    if model_args.teacher_cache and args.cross_tokenizer_loss:
        raise ValueError(
            "teacher_cache holds top-k log-probabilities over the student's tokens; cross_tokenizer_loss needs the "
            "teacher model: drop teacher_cache, or cross_tokenizer_loss."
        )
    if model_args.teacher_cache and args.extra_teachers:
        raise ValueError(
            "teacher_cache replaces the teacher: remove extra_teachers, or train without the cache."
        )
    if model_args.init_from_teacher_layers is not None:
        from .students.from_layers import check_layers_of_teacher_dir

        check_layers_of_teacher_dir(args.teacher_model_name_or_path, model_args.init_from_teacher_layers)
    from .data.transfer import uses_transfer_set

    if model_args.teacher_cache:
        if uses_transfer_set(data_args):
            raise ValueError(
                "teacher_cache holds the teacher's outputs for the training split only; a transfer set needs "
                "an online teacher: drop teacher_cache or the transfer set."
            )
        _check_teacher_cache(model_args.teacher_cache, args)
        return
    teacher = args.teacher_model_name_or_path
    if uses_transfer_set(data_args) and (args.alpha == 0 or not teacher):
        raise ValueError(
            f"a transfer set (transfer_split / transfer_dataset_name / transfer_data_files) is labelled by the "
            f"teacher: set alpha > 0 (now {args.alpha}) and teacher_model_name_or_path, or drop the transfer set."
        )
    from .students.lora import check_self_teacher

    if check_self_teacher(model_args, args):  # teacher_model_name_or_path: self (the LoRA student's base)
        teacher = None
    elif args.alpha > 0 and not teacher:
        raise ValueError(
            f"alpha={args.alpha} needs a teacher: set teacher_model_name_or_path, or alpha: 0 to train "
            "on labels alone."
        )
    for field_name, path in [("teacher_model_name_or_path", teacher)] + [
        ("extra_teachers", t) for t in args.extra_teachers or []
    ]:
        if (
            path
            and _looks_local(path)
            and not os.path.isfile(os.path.join(os.path.expanduser(path), "config.json"))
        ):
            raise FileNotFoundError(
                f"{field_name}: {path!r} is not a model directory (no config.json there). "
                "Train or download the teacher first, or point at a Hub id."
            )
        if path and not _teacher_only_gives_weights(model_args, args):
            check_model_task(read_model_config(path), args.task, field_name, path)
    if model_args.model_config is not None:
        parse_model_config(model_args.model_config)
    from distill.utils.safe_loading import check_model_dir

    for field_name, path in [
        ("model_name_or_path", model_args.model_name_or_path),
        ("teacher_model_name_or_path", teacher),
    ]:
        if path and _looks_local(path):
            check_model_dir(path, field_name, args.trust_remote_code)


def _check_hub_reachable(args) -> None:
    """push_to_hub offline would fail after training (or, in the Trainer, before it with a traceback)."""
    from huggingface_hub.constants import is_offline_mode

    if getattr(args, "push_to_hub", False) and is_offline_mode():
        raise ValueError(
            "push_to_hub=True needs the Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE=1): unset "
            "HF_HUB_OFFLINE, or drop --push_to_hub (the model is saved in output_dir either way)."
        )


def _infer_task_name(model_args, data_args, args) -> str:
    """The task when `task` is unset: from the student's or teacher's saved class, a teacher cache, or a built-in source."""
    from distill.trainer.tasks import task_of_class

    from .data.arguments import BUILTIN_SOURCES

    for path in (model_args.model_name_or_path, args.teacher_model_name_or_path):
        config = os.path.join(os.path.expanduser(path), "config.json") if path else ""
        if os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                for name in json.load(f).get("architectures") or []:
                    if task_of_class(name):
                        return task_of_class(name)
    if model_args.teacher_cache:
        return "causal-lm"
    if data_args.dataset_name in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[data_args.dataset_name]
    raise ValueError(
        "task is not set and cannot be inferred (no saved student or teacher class, no built-in "
        "source): add `task: causal-lm`, `seq-cls` or `image-cls` to the recipe."
    )


def _teacher_only_gives_weights(model_args, args) -> bool:
    """init_from_teacher_layers with no teacher term in the loss: the teacher is not run during training."""
    return (
        model_args.init_from_teacher_layers is not None
        and args.alpha == 0
        and not args.extra_teachers
        and not getattr(args, "hidden_weight", 0)
        and not getattr(args, "attention_weight", 0)
    )


def _check_teacher_cache(path: str, args) -> None:
    """The cache exists and fits the run's task, temperature and teacher (tokenizer and data: in the trainer)."""
    from .teacher.cache import TeacherCache

    if args.hidden_weight > 0 or args.attention_weight > 0:
        raise ValueError(
            "hidden_weight/attention_weight > 0 need the teacher's hidden states, which teacher_cache does not hold "
            "(only top-k log-probabilities): drop teacher_cache and set teacher_model_name_or_path."
        )
    cache = TeacherCache.load(path, with_data=False)
    cache.check_settings(temperature=args.temperature, task=args.task)
    teacher = args.teacher_model_name_or_path
    cached = cache.manifest.get("teacher")
    if (
        teacher
        and cached
        and os.path.normpath(os.path.expanduser(teacher)) != os.path.normpath(os.path.expanduser(cached))
    ):
        raise ValueError(
            f"teacher_model_name_or_path={teacher!r} differs from the teacher of teacher_cache {path!r} (manifest "
            f"field teacher: {cached!r}). Drop one of them, or rebuild the cache with this teacher."
        )


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    """Run one distillation (or, with alpha=0, plain training) and return the final metrics."""
    import datasets
    import transformers

    from distill.trainer.checkpoints import last_complete_checkpoint
    from distill.trainer.distillation_trainer import DistillationTrainer
    from distill.trainer.tasks import accuracy_metric, get_task, make_collator

    model_args, data_args, args = parse_args(sys.argv[2:] if argv is None else argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity(args.get_process_log_level())
    datasets.utils.logging.set_verbosity(args.get_process_log_level())
    if data_args.tasks is not None:  # multi-task distillation: one student, a teacher per task
        from distill.trainer.multitask import multitask_main

        return multitask_main(model_args, data_args, args)
    _check_before_compute(model_args, data_args, args)
    from distill.trainer.fingerprint import prepare_output_dir

    output_state = prepare_output_dir(model_args, data_args, args)  # refuses changed settings, before compute
    if output_state.action == "finished":
        logger.info(
            "%s already holds a finished run with these settings (%s): nothing to do. "
            "--overwrite_output_dir true trains it again.",
            args.output_dir,
            "run_fingerprint.json",
        )
        return output_state.results
    task = get_task(args.task)
    transformers.set_seed(args.seed)

    processing_class, bundle = prepare_data(model_args, data_args, args, task)
    student = build_student(model_args, data_args, args, task, processing_class, bundle)

    use_cache = bool(model_args.teacher_cache)
    if use_cache:
        logger.info("Training from teacher cache %s: no teacher model is loaded.", model_args.teacher_cache)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=None
        if use_cache or _teacher_only_gives_weights(model_args, args)
        else (
            [args.teacher_model_name_or_path, *args.extra_teachers]
            if args.extra_teachers
            else args.teacher_model_name_or_path
            if args.alpha > 0 or args.teacher_model_name_or_path
            else None
        ),
        teacher_cache=model_args.teacher_cache if use_cache else None,
        args=args,
        train_dataset=bundle.train,
        eval_dataset=bundle.eval,
        processing_class=processing_class,
        data_collator=make_collator(task, processing_class),
        compute_metrics=None if task.token_level else accuracy_metric(),
    )
    resume = args.resume_from_checkpoint
    if trainer.is_world_process_zero():
        output_state.write(finished=False)
    if resume is None and output_state.action == "resume":
        resume = last_complete_checkpoint(args.output_dir, need_optimizer=not args.save_only_model)
        if resume:
            logger.info("Resuming from %s (pass --resume_from_checkpoint to choose another).", resume)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()

    total, non_embedding = parameter_counts(trainer.model)
    metrics = dict(train_result.metrics)
    metrics.update(
        student_params=total,
        student_non_embedding_params=non_embedding,
        train_tokens=int(trainer.state.num_input_tokens_seen or 0),
        global_batch_size=args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
    )
    if task.token_level:
        metrics["block_size"] = data_args.block_size
    if trainer.teacher is not None:
        teacher = getattr(trainer.teacher, "module", trainer.teacher)
        metrics["teacher_params"] = parameter_counts(teacher)[0]
        # the teacher's N for scaling laws (issue 15: scaling fit --law distillation, advise)
        metrics["teacher_non_embedding_params"] = parameter_counts(teacher)[1]
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    results = dict(metrics)
    for split, dataset in (("eval", bundle.eval), ("test", bundle.test)):
        if dataset is not None:
            split_metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=split)
            trainer.log_metrics(split, split_metrics)
            trainer.save_metrics(split, split_metrics)
            results.update(split_metrics)
    trainer.save_state()
    trainer.create_model_card(dataset=data_args.dataset_name)
    if trainer.is_world_process_zero():
        output_state.write(finished=True)
    if args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name)
    if trainer.is_world_process_zero():
        _print_summary(results)
    return results


def format_summary(results: dict) -> str:
    """The results table printed after training: loss, and accuracy for classification, of student and teacher."""

    def fmt(key: str) -> str:
        value = results.get(key)
        return "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.4f}")

    metrics = ["loss"] + (["accuracy"] if any(k.endswith("_accuracy") for k in results) else [])
    columns = [f"{split}_{m}" for m in metrics for split in ("eval", "test")]
    rows = [("student", "student_params", columns)]
    if "teacher_params" in results:
        rows.append(("teacher", "teacher_params", [c.replace("_", "_teacher_", 1) for c in columns]))
    lines = [
        "== distill: results ==",
        f"{'model':<8} {'params':>12} " + " ".join(f"{c:>13}" for c in columns),
    ]
    for name, params, keys in rows:
        lines.append(f"{name:<8} {fmt(params):>12} " + " ".join(f"{fmt(k):>13}" for k in keys))
    return "\n".join(lines)


def _print_summary(results: dict) -> None:
    print("\n" + format_summary(results), flush=True)


def output_dir_status(argv: list[str]) -> tuple[str, list]:
    """`compare_output_dir` for the `distill train` command line ``argv``, without running anything."""
    from distill.trainer.fingerprint import compare_output_dir, run_fingerprint

    model_args, data_args, args = parse_args(argv)
    if getattr(args, "overwrite_output_dir", False):
        return "fresh", []
    status, changes, _ = compare_output_dir(args.output_dir, run_fingerprint(model_args, data_args, args))
    return status, changes
