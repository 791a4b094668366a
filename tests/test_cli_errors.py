"""Expected errors are one line on stderr with a non-zero exit (tracebacks only under --debug), every console
script has --version, and third-party noise is silenced unless --log-level debug."""

from __future__ import annotations

import json
import logging

import pytest

from distill.cli import main as distill_main


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def broken_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: causal-lm\nmodel_config: {model_type: llama\nalpha: [1\n")
    return str(path)


def test_yaml_syntax_error_is_one_line_with_exit_2(broken_yaml, capsys):
    from scaledown.cli import main as scaledown_main

    assert distill_main(["train", "--config", broken_yaml]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [_one_error_line(err)]
    assert f"{broken_yaml}, line 3, column 6: YAML syntax error" in err
    assert scaledown_main(["run", "--config", broken_yaml]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [_one_error_line(err)] and broken_yaml in err


def test_debug_shows_the_traceback(broken_yaml):
    import yaml

    with pytest.raises(yaml.YAMLError):
        distill_main(["train", "--config", broken_yaml, "--debug"])
    with pytest.raises(yaml.YAMLError):
        distill_main(["--debug", "train", "--config", broken_yaml])


@pytest.mark.parametrize(
    "program, argv",
    [
        ("distill", ["--version"]),
        ("distill", ["train", "--version"]),
        ("scaling", ["--version"]),
        ("scaling", ["fit", "--version"]),
        ("scaledown", ["--version"]),
        ("scaledown", ["run", "--version"]),
        ("scaledown", ["export", "--version"]),
    ],
)
def test_version_prints_the_package_version(program, argv, capsys):
    import importlib

    main = importlib.import_module(f"{program}.cli").main
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's version action
        code = e.code
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(program) and out.endswith(importlib.metadata.version("scaledown"))


TINY_LLAMA = (
    '{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, '
    '"num_attention_heads": 2, "num_key_value_heads": 2}'
)


def test_nan_diverging_run_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"def f{i}(x): return x * {i} + {i % 7}"}) + "\n" for i in range(64))
    )
    argv = [
        "train",
        "--task",
        "causal-lm",
        "--model_config",
        TINY_LLAMA,
        "--data_files",
        str(data),
        "--eval_split",
        "",
        "--tokenizer_vocab_size",
        "300",
        "--block_size",
        "16",
        "--alpha",
        "0",
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "4",
        "--optim",
        "sgd",
        "--learning_rate",
        "1e30",  # the first update blows the weights up; every loss after it is NaN
        "--max_grad_norm",
        "0",
        "--max_nonfinite_steps",
        "2",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    code = distill_main(argv)
    err = capsys.readouterr().err
    assert code == 1
    line = _one_error_line(err)
    assert "Stopped at step" in line and "max_nonfinite_steps=2" in line


def test_push_to_hub_offline_is_refused_before_compute(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["train", "--task", "causal-lm", "--model_config", TINY_LLAMA, "--alpha", "0", "--max_steps", "1"]
    code = distill_main(argv + ["--output_dir", str(tmp_path / "o"), "--push_to_hub", "true"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "push_to_hub" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "o").exists()


def test_third_party_noise_is_silenced_unless_log_level_debug():
    from distill.utils.cli_common import configure_logging
    from distill.utils.quiet import show_third_party_noise, silence_optional_kernel_warnings

    silence_optional_kernel_warnings()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("DeepSpeed", "onnx_ir.passes.common.unused_removal")]
    import transformers

    root = logging.getLogger()
    saved = {
        name: logging.getLogger(name).level for name in ("", "distill", "scaling", "scaledown", "deploy")
    }
    root_handlers, verbosity = list(root.handlers), transformers.utils.logging.get_verbosity()
    for lg in loggers:
        lg.addHandler(handler)
    try:

        def emit_all():
            loggers[0].warning("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
            loggers[0].warning("a real DeepSpeed warning")
            loggers[1].info("Removed 3 unused nodes")
            loggers[1].warning("a real onnx_ir warning")

        emit_all()
        assert records == ["a real DeepSpeed warning", "a real onnx_ir warning"]
        records.clear()
        configure_logging("debug")  # what --log-level debug does
        emit_all()
        assert len(records) == 4
    finally:
        show_third_party_noise(False)
        for lg in loggers:
            lg.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root.handlers[:] = root_handlers  # basicConfig's handler writes to this test's captured stderr
        transformers.utils.logging.set_verbosity(verbosity)
    assert root.level == saved[""]


def test_log_level_flag_reaches_distill_train():
    from distill.cli import _drop_log_level
    from distill.utils.cli_common import log_level_of, split_debug

    argv = ["train", "--config", "r.yaml", "--debug", "--log-level", "debug", "--debug", "underflow_overflow"]
    debug, rest = split_debug(argv)
    assert debug and rest == [
        "train",
        "--config",
        "r.yaml",
        "--log-level",
        "debug",
        "--debug",
        "underflow_overflow",
    ]
    assert log_level_of(rest) == "debug" and log_level_of(["--log_level=info"]) == "info"
    assert _drop_log_level(["prune", "--log-level", "info", "--model", "m"]) == ["prune", "--model", "m"]
