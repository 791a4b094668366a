"""Kill -9 at chosen moments, rerun the same command, and end exactly where a straight run ends.

Each chain SIGKILLs `distill train` inside a training step, inside a checkpoint save (weights
written, optimizer state not yet) and inside an evaluation, rerunning the same command after each
kill, then lets it finish. The final weights must equal an uninterrupted run's to 1e-6, the
samples trained on must be the straight run's, in the same order (none lost, none repeated), and
no partial checkpoint may be left behind or resumed from. tests/fault_inject.py holds the hooks.
"""

from __future__ import annotations

import json
import os

import fault_harness as h
import pytest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return h.make_workspace(str(tmp_path_factory.mktemp("faults")))


def _assert_exact(result, resumed_at):
    order = result["order"]
    assert order["resumed_at"] == resumed_at
    assert order["lost"] == 0 and order["repeated"] == 0 and order["same_order"], order
    assert result["diff"] < 1e-6, result["diff"]
    assert result["partial"] == []
    with open(os.path.join(result["out"], "trainer_state.json")) as f:
        assert json.load(f)["global_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize(
    "optim, faults, resumed_at",
    [
        # step:3 -> resumes from checkpoint-2; save:4 (checkpoint-4 half written) -> from checkpoint-2 again;
        # eval:6 (before checkpoint-6) -> from checkpoint-4; then the run finishes.
        ("sgd", ["step:3", "save:4", "eval:6"], [0, 2, 2, 4]),
        # AdamW: step:3 -> from checkpoint-2; eval:6 -> from checkpoint-4 (the DDP case below kills AdamW in a save).
        ("adamw_torch", ["step:3", "eval:6"], [0, 2, 4]),
    ],
)
def test_kill_then_resume_exactly(workspace, tmp_path, optim, faults, resumed_at):
    _assert_exact(h.kill_chain(workspace, tmp_path, optim, faults), resumed_at)


@pytest.mark.slow
def test_kill_under_two_process_ddp_with_a_nan_step_on_one_rank(workspace, tmp_path):
    # 2 gloo ranks x batch 4; rank 0 alone gets NaN logits at step 3 (global_step 2): both ranks must skip it.
    # Killed inside the save of checkpoint-4, the rerun resumes from checkpoint-2 and ends on the straight weights.
    result = h.kill_chain(
        workspace, tmp_path, "adamw_torch", ["save:4"], ddp=True, FAULT_NAN="2", FAULT_NAN_RANK="0"
    )
    _assert_exact(result, [0, 2])
    assert (
        result["straight_output"].count("non-finite loss or gradient norm; the step is skipped") == 2
    )  # per rank
    with open(os.path.join(result["out"], "trainer_state.json")) as f:
        skipped = [
            h["nonfinite_step_skipped"] for h in json.load(f)["log_history"] if "nonfinite_step_skipped" in h
        ]
    assert skipped == [3]


@pytest.mark.slow
def test_teacher_cache_killed_midway_is_never_used_and_rerun_starts_clean(workspace, tmp_path):
    from distill.teacher.cache import TeacherCache

    cache = str(tmp_path / "cache")
    args = h.train_args(workspace, str(tmp_path / "unused"), eval_steps=None)
    cmd = h.command(
        ["distill", "cache-teacher", *args, "--cache_dir", cache, "--top_k", "8", "--cache_batch_size", "16"]
    )
    h.run_until_fault(cmd, "cache:3", str(tmp_path / "marker"))
    assert not os.path.exists(cache)  # the partial cache is in a staging folder, never at cache_dir
    with pytest.raises(FileNotFoundError):
        TeacherCache.load(cache)  # what `distill train --teacher_cache` does first
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".cache.partial-")]
    assert leftovers
    done = h.run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = TeacherCache.load(cache)
    assert len(loaded.dataset) == loaded.manifest["data"]["num_examples"] > 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".cache.partial-")]  # cleaned up


@pytest.mark.slow
def test_scaledown_run_killed_in_ladder_and_distillation_resumes(workspace, tmp_path):
    from distill.train import main as train_main

    config = h.pipeline_config(workspace, str(tmp_path / "runs"))
    cmd = h.command(["scaledown", "run", "--config", config])
    records, argv_log = tmp_path / "records", str(tmp_path / "argv.jsonl")
    os.makedirs(records)
    faults = [("step:3", "w32"), ("save:4", "kd_seed0")]  # mid-step in the 2nd rung; mid-save in the KD run
    attempts = {}
    for fault, where in faults:
        h.run_until_fault(
            cmd,
            fault,
            str(tmp_path / "marker"),
            FAULT_RECORD_DIR=records,
            FAULT_ARGV=argv_log,
            FAULT_ONLY_IN=where,
        )
        for name in os.listdir(records):
            attempts.setdefault(name[:-6], []).append(h.read_records(str(records / name)))
            os.remove(records / name)
    done = h.run(cmd, FAULT_RECORD_DIR=records, FAULT_ARGV=argv_log)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in os.listdir(records):
        attempts.setdefault(name[:-6], []).append(h.read_records(str(records / name)))
    run = tmp_path / "runs" / "faults"
    assert (run / "summary.json").is_file() and not (run / ".scaledown.lock").exists()
    # w16 finished before the first kill and was never retrained; w32 resumed from checkpoint-2, the KD
    # run (killed inside the save of checkpoint-4) from checkpoint-2; every step trained once, in order.
    assert len(attempts["w16"]) == 1
    assert [a[0]["step"] for a in attempts["w32"]] == [0, 2]
    assert [a[0]["step"] for a in attempts["kd_seed0"] if a] == [0, 2]
    for name in ("w32", "kd_seed0"):
        assert [r["step"] for r in h.effective_records(attempts[name])] == [0, 1, 2, 3]
        # The same arguments, uninterrupted, into another directory: the same weights.
        calls = [json.loads(line) for line in open(argv_log)]
        argv = next(a for a in calls if os.path.basename(a[a.index("--output_dir") + 1]) == name)
        i = argv.index("--output_dir")
        argv[i + 1] = str(tmp_path / f"straight_{name}")
        train_main(argv)
        resumed = str(run / ("ladder/" + name if name.startswith("w") else name))
        assert h.weight_difference(argv[i + 1], resumed) < 1e-6
        assert h.partial_files(resumed) == []
