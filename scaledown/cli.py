"""`scaledown run`: the whole story in one command. Imports stay inside `main` so `--help` is instant."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CONFIG = os.path.join("recipes", "pipeline", "demo.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaledown",
        description="Size ladder -> scaling fit -> teacher -> distilled student -> evaluation report, "
        "offline on a CPU. A second run reuses every stage whose inputs are unchanged and reruns the rest.",
    )
    from distill.utils.cli_common import add_common_options  # argparse only

    add_common_options(parser, prog="scaledown")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the pipeline",
        description="Run the pipeline of a YAML config: ladder, "
        "fit (largest rung held out and predicted), teacher, student size, distillation, baseline, "
        "evaluation and report in <output_root>/<name>/ (summary.json, report.md, plots/).",
    )
    run.add_argument(
        "--config",
        default=None,
        help=f"pipeline YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)",
    )
    run.add_argument("--quick", action="store_true", help="apply the config's `quick:` block: a CI-sized run")
    run.add_argument("--name", default=None, help="run name: outputs go to <output_root>/<name>")
    run.add_argument("--output-root", default=None, help="parent folder of runs (default: runs)")
    run.add_argument(
        "--ship",
        action="store_true",
        help="add the ship stage (ONNX export, int8, bench table) "
        "after evaluation, as the config's `ship: {enabled: true}` does",
    )
    add_common_options(run, prog="scaledown")
    from scaling.cli import add_ladder_arguments  # argparse only

    ladder = sub.add_parser(
        "ladder",
        help="plan and train a ladder of model sizes",
        description="The plan of `scaling ladder` (same arguments), then each rung trained "
        "with `distill train` (alpha 0) into OUT/<rung>. A finished rung with the same "
        "settings is reused, a broken one resumes. Arguments after `--` go to `distill train`.",
    )
    add_ladder_arguments(ladder)
    ladder.add_argument("--out", default="runs/ladder", help="parent folder of the rung directories")
    ladder.add_argument(
        "distill_args", nargs="*", help="after `--`: extra `distill train` arguments (data, lr...)"
    )
    add_common_options(ladder, prog="scaledown")
    from deploy.cli import add_deploy_commands  # export / quantize / bench / serve (argparse only)

    add_deploy_commands(sub)
    from distill.utils.flags import both_spellings  # --snake_case, and --kebab-case as its alias

    return both_spellings(parser)


def main(argv: list[str] | None = None) -> int:
    from distill.utils.cli_common import configure_logging, run_guarded

    from .lock import RunDirLocked

    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", None))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_guarded(
        lambda: _run_command(args), debug=getattr(args, "debug", False), extra_input_errors=(RunDirLocked,)
    )


def _run_command(args) -> int:
    if args.command == "ladder":
        from .ladder import cmd_ladder

        cmd_ladder(args)
        return 0
    if args.command != "run":
        from deploy.cli import run_command

        return run_command(args)
    from .config import load_pipeline_config
    from .lock import RunLock
    from .pipeline import Pipeline

    config_path = args.config or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    overrides = {k: v for k, v in (("name", args.name), ("output_root", args.output_root)) if v is not None}
    if args.ship:
        overrides["ship"] = {"enabled": True}
    config = load_pipeline_config(config_path, quick=args.quick, overrides=overrides)
    with RunLock(config.run_dir):
        pipeline = Pipeline(config)
        # the command that reruns this pipeline, for the report's "what to run next"
        pipeline.run_command = " ".join(
            ["scaledown run"]
            + (["--config", config_path] if config_path else [])
            + (["--quick"] if args.quick else [])
            + (["--name", args.name] if args.name else [])
            + (["--output-root", args.output_root] if args.output_root else [])
        )
        pipeline.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
