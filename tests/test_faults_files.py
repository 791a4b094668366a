"""One scaledown run per output directory (stale locks taken over), and output files never half-written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from scaledown.lock import LOCK_NAME, RunDirLocked, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "pipeline", "demo.yaml")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir, **owner):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_NAME), "w") as f:
        json.dump(owner, f)


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunLock(run_dir, log=lambda s: None):
        with open(os.path.join(run_dir, LOCK_NAME)) as f:
            owner = json.load(f)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunDirLocked, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(run_dir).acquire()
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))  # released
    RunLock(run_dir).acquire()


@pytest.mark.parametrize("owner, why", [("dead", "no longer running"), ("garbage", "does not name an owner")])
def test_stale_lock_is_taken_over(tmp_path, owner, why):
    run_dir = str(tmp_path / "run")
    if owner == "dead":
        _write_lock(run_dir, pid=_dead_pid(), host=socket.gethostname())
    else:
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, LOCK_NAME), "w") as f:
            f.write('{"pid": 12')
    messages = []
    with RunLock(run_dir, log=messages.append):
        with open(os.path.join(run_dir, LOCK_NAME)) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert len(messages) == 1 and "stale lock" in messages[0] and why in messages[0]


_RACER = """
import sys, time
from scaledown.lock import RunDirLocked, RunLock
import distill.trainer.checkpoints  # imported before the start line, not inside the race

run_dir, start, slow = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
check = RunLock._stale_reason


def slow_check(self, holder):  # both racers look at the stale lock before either replaces it
    reason = check(self, holder)
    time.sleep(slow)
    return reason


RunLock._stale_reason = slow_check
time.sleep(max(0.0, start - time.time()))
try:
    with RunLock(run_dir, log=lambda s: None):
        print("ran", flush=True)
        time.sleep(2 * slow)
except RunDirLocked:
    print("refused", flush=True)
"""


@pytest.mark.slow
def test_two_runs_racing_for_a_stale_lock_exactly_one_runs(tmp_path):
    import time

    run_dir = str(tmp_path / "run")
    _write_lock(run_dir, pid=_dead_pid(), host=socket.gethostname())
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = str(time.time() + 4.0)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, run_dir, start, "1.0"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["ran", "refused"]
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))  # the winner released it


def test_lock_from_another_host_is_refused_with_the_fix(tmp_path):
    run_dir = str(tmp_path / "run")
    _write_lock(run_dir, pid=1, host="elsewhere")
    with pytest.raises(RunDirLocked, match=r"host elsewhere.*remove .*\.scaledown\.lock"):
        RunLock(run_dir).acquire()


def test_scaledown_run_refuses_a_locked_directory_before_any_work(tmp_path, capsys):
    from scaledown.cli import main as scaledown_main

    run_dir = str(tmp_path / "demo-quick")
    _write_lock(run_dir, pid=os.getppid(), host=socket.gethostname())
    assert scaledown_main(["run", "--quick", "--config", DEMO, "--output-root", str(tmp_path)]) == 2
    assert "is in use by another scaledown run" in capsys.readouterr().err
    assert os.listdir(run_dir) == [LOCK_NAME]


def test_scaling_outputs_are_never_half_written(tmp_path, monkeypatch):
    import argparse

    import matplotlib.figure

    from scaling.cli import _emit
    from scaling.plot import save_figure

    out = tmp_path / "fit.json"
    out.write_text('{"old": true}')
    with pytest.raises(TypeError):  # json fails halfway through the document
        _emit(argparse.Namespace(out=str(out), json=False), {"law": "power", "bad": object()})
    assert json.loads(out.read_text()) == {"old": True}

    fig = matplotlib.figure.Figure()
    fig.add_subplot().plot([1, 2], [3, 4])
    png = tmp_path / "fit.png"
    png.write_bytes(b"old")

    def dies_midway(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, png)
    assert png.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "fit.png"]  # no temporary files left
