"""What a small `distill tune` study costs, end to end, on the tiny causal-LM recipe.

In a scratch directory: the tiny teacher recipe trained for ``--teacher-steps`` steps (`distill train`),
then `distill tune` over the search space of docs/distilling.md (alpha, temperature, log learning
rate, `model.hidden_size` in {64, 96}) with ``--trials`` trials of ``--steps`` steps each, evaluation
every ``--eval-steps``, median pruning. Each command runs as its own process, as a user would type it;
the wall clock and the CPU time of the tune process are recorded, with the trial states from its
``trials.json`` and the load average. Writes ``benchmarks/results/tune.{json,md}``.

Run: ``.venv/bin/python benchmarks/bench_tune.py`` (a few minutes on a loaded 2-core machine, most of it
building the corpus and tokenizer for the teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import write_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = """alpha: {low: 0.1, high: 0.9}
temperature: {low: 1.0, high: 4.0}
learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
model.hidden_size: {choices: [64, 96]}
"""


def run(argv: list[str], cwd: str) -> tuple[float, float]:
    """Run ``python -m distill ARGV`` in ``cwd``; return its wall and CPU seconds (user + system)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "distill", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"distill {' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="training steps per trial")
    parser.add_argument("--eval-steps", type=int, default=2)
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.join(ROOT, "recipes"), os.path.join(tmp, "recipes"))
        with open(os.path.join(tmp, "space.yaml"), "w") as f:
            f.write(SPACE)
        teacher_wall, teacher_cpu = run(
            [
                "train",
                "--config",
                "recipes/tiny/causal_lm_teacher.yaml",
                "--max_steps",
                str(args.teacher_steps),
                "--disable_tqdm",
                "true",
            ],
            tmp,
        )
        tune_argv = [
            "tune",
            "--config",
            "recipes/tiny/causal_lm.yaml",
            "--search_space",
            "space.yaml",
            "--n_trials",
            str(args.trials),
            "--output_dir",
            "runs/tune",
            "--pruner",
            "median",
            "--eval_steps",
            str(args.eval_steps),
            "--max_steps",
            str(args.steps),
            "--disable_tqdm",
            "true",
        ]
        tune_wall, tune_cpu = run(tune_argv, tmp)
        trials = json.load(open(os.path.join(tmp, "runs", "tune", "trials.json")))
    load_after = os.getloadavg()
    states = [t["state"] for t in trials["trials"]]
    row = dict(
        teacher_steps=args.teacher_steps,
        teacher_wall_s=teacher_wall,
        teacher_cpu_s=teacher_cpu,
        tune_command="distill " + " ".join(tune_argv),
        tune_wall_s=tune_wall,
        tune_cpu_s=tune_cpu,
        trial_states=states,
        n_complete=trials["n_complete"],
        n_pruned=trials["n_pruned"],
        best=trials.get("best"),
    )
    cores = len(os.sched_getaffinity(0))
    table = "\n".join(
        [
            "| step | wall s | CPU s | trials |",
            "|---|---:|---:|---|",
            f"| teacher, {args.teacher_steps} steps | {teacher_wall:.1f} | {teacher_cpu:.1f} | |",
            f"| `distill tune`, {args.trials} trials of {args.steps} steps, evaluation every {args.eval_steps} "
            f"| {tune_wall:.1f} | {tune_cpu:.1f} | {', '.join(states)} |",
            "",
            f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {cores} CPUs.",
        ]
    )
    print(table)
    meta = argparse.Namespace(**vars(args), load_before=load_before, load_after=load_after, cores=cores)
    write_results("tune", meta, [row], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
