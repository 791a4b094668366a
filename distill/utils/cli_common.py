"""What every console script of `distill`, `scaledown` and `deploy` shares: ``--version``, ``--debug``,
``--log-level``, and expected errors reported as one line.

- An *expected* error (bad input, a refused configuration, a diverged run, a full disk, no network)
  prints ``error: <one line>`` on stderr and exits with status 2 when the input must change
  (`INPUT_ERRORS`: ``ValueError``, missing files, YAML syntax) or 1 when the run failed
  (`RUN_FAILURES`: non-finite training, ``OSError`` such as a full disk or the Hub out of reach).
  ``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
- ``--log-level debug`` also lets through the third-party messages silenced at import
  (`distill.utils.quiet`).

`scaling` never imports `distill`, so it carries its own few lines of the same pattern.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXIT_FAILED = 1  # the run failed (diverged, disk full, network): rerun once the cause is fixed
EXIT_INPUT = 2  # the command, config or data is wrong: change it
EXIT_INTERRUPTED = 130
DEBUG_HELP = "show the full traceback of an error instead of one line"
LOG_LEVEL_HELP = (
    "log level of scaledown and the libraries it drives (debug also shows third-party messages that are "
    "silenced by default)"
)

# TrainingArguments has its own `--debug OPTION` (e.g. underflow_overflow); a bare --debug is ours.
_TRAINER_DEBUG_VALUES = ("underflow_overflow", "tpu_metrics_debug")


def input_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    yaml = sys.modules.get("yaml")
    if yaml is not None:
        errors.append(yaml.YAMLError)
    return tuple(errors)


RUN_FAILURES: tuple[type[BaseException], ...] = (FloatingPointError, OSError)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scaledown")
    except PackageNotFoundError:
        return "unknown (not installed)"


def version_text(prog: str) -> str:
    return f"{prog} {package_version()}" if prog == "scaledown" else f"{prog} (scaledown) {package_version()}"


def add_common_options(parser, prog: Optional[str] = None) -> None:
    """``--version``, ``--debug`` and ``--log-level`` on an argparse parser; add them to the top-level parser
    and to each sub-command's. Unset flags leave no attribute (`argparse.SUPPRESS`), so a sub-command's
    default never hides ``prog --debug cmd``: read them with ``getattr(args, "debug", False)``."""
    import argparse

    parser.add_argument("--version", action="version", version=version_text(prog or parser.prog.split()[0]))
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    parser.add_argument(
        "--log-level", dest="log_level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help=LOG_LEVEL_HELP
    )


def split_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """Take a bare ``--debug`` out of ``argv`` (``--debug underflow_overflow`` is TrainingArguments')."""
    rest, debug = [], False
    for i, arg in enumerate(argv):
        if arg == "--":
            return debug, rest + argv[i:]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--debug" and not (nxt is not None and nxt.split(" ")[0] in _TRAINER_DEBUG_VALUES):
            debug = True
            continue
        rest.append(arg)
    return debug, rest


def log_level_of(argv: list[str]) -> Optional[str]:
    """The value of ``--log-level`` / ``--log_level`` in ``argv``, if any (the last one wins)."""
    level = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for flag in ("--log-level", "--log_level"):
            if arg == flag and i + 1 < len(argv):
                level = argv[i + 1]
            elif arg.startswith(flag + "="):
                level = arg.split("=", 1)[1]
    return level


def configure_logging(level: Optional[str]) -> None:
    """Apply ``--log-level`` to our loggers and to transformers'; ``debug`` lets the silenced noise through."""
    import logging

    from distill.utils.quiet import show_third_party_noise

    show_third_party_noise(level == "debug")
    if level is None or level == "passive":
        return
    numeric = getattr(logging, level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(numeric)
    for name in ("distill", "scaling", "scaledown", "deploy"):
        logging.getLogger(name).setLevel(numeric)
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity(numeric)


def one_line(error: BaseException) -> str:
    """The error's message on one line; a YAML syntax error as ``FILE, line L, column C: problem``."""
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({error.context})" if error.context else ""
        return f"{where}: YAML syntax error: {error.problem}{context}"
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def exit_code(error: BaseException, extra_input_errors: tuple = ()) -> Optional[int]:
    """The exit status of an expected error, or None for an unexpected one (a bug: keep the traceback)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, input_errors() + tuple(extra_input_errors)):
        return EXIT_INPUT
    if isinstance(error, RUN_FAILURES):
        return EXIT_FAILED
    return None


def run_guarded(body: Callable[[], Optional[int]], *, debug: bool, extra_input_errors: tuple = ()) -> int:
    """Run ``body``; an expected error becomes ``error: <one line>`` on stderr and its exit status.

    With ``debug`` the error propagates (full traceback). In a multi-process run each process reports its
    own error and leaves at once, without the gloo teardown that can abort or wait for the others.
    """
    try:
        return body() or 0
    except (Exception, KeyboardInterrupt) as error:
        code = exit_code(error, extra_input_errors)
        if debug or code is None:
            raise
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else one_line(error)
        print(f"error: {message}", file=sys.stderr, flush=True)
        _leave_distributed(code)
        return code


def _leave_distributed(code: int) -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
