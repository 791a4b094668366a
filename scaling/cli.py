"""`scaling` command line: fit, predict, optimal, isoflop, envelope, plot, runs.

Examples:

    scaling fit runs/sweep/ --law chinchilla --out fit.json --plot fit.png --bootstrap 1000
    scaling fit data.csv --columns params="Model Size",flops="Training FLOP" --out fit.json
    scaling predict --fit fit.json --params 1e9 --tokens 2e10
    scaling optimal --fit fit.json --flops 1e21

Data errors print `error: ...` (one line) and exit with status 2; `--debug` shows the traceback
instead, `--version` prints the version, `--log-level` sets the log level. `scaling` never imports
`distill`, so these few lines repeat the pattern of `distill.utils.cli_common`. Heavy libraries are
imported inside the sub-commands so that `scaling --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LAW_CHOICES = ("chinchilla", "power", "kaplan", "chinchilla_gamma", "gadre", "auto", "distillation")
LAW_HELP = (
    "chinchilla: E + A/N^alpha + B/D^beta (default); power: E + A N^-alpha (N only); kaplan: "
    "[(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D; chinchilla_gamma: E + (A/N^alpha + B/D^beta)^gamma; "
    "gadre: E + (a M^eta + b M^-eta) C^-eta with C = 6ND, M = D/N (Gadre et al. 2024, for over-trained "
    "ladders: Chinchilla with alpha = beta, 4 parameters); auto: choose among gadre, chinchilla, "
    "chinchilla_gamma and kaplan by holding out the largest models; distillation: Busbridge et al. 2025 "
    "(needs --supervised-fit)"
)


def _add_inputs(p):
    p.add_argument("inputs", nargs="+", help="run directories (or folders of them), CSV or JSON")
    p.add_argument(
        "--columns",
        help='column mapping, e.g. params="Model Size",flops="Training '
        'FLOP" (names: params, tokens, loss, flops, run, step)',
    )
    p.add_argument(
        "--points",
        choices=("final", "all"),
        default="final",
        help="one point per run, or every evaluation point (default: final)",
    )
    p.add_argument(
        "--param-count",
        choices=("total", "non_embedding"),
        help="N of run directories: non_embedding (default, as `scaledown run` "
        "counts) or total; a table's params column is taken as given",
    )
    p.add_argument("--seq-len", type=int, help="sequence length when all_results.json lacks it")
    p.add_argument("--global-batch", type=int, help="global batch size when not recorded")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--out", help="write the result as JSON to this file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaling",
        description="Fit scaling laws to training runs and derive compute-optimal model sizes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a law to runs (writes fit.json)")
    _add_inputs(p)
    p.add_argument("--law", choices=LAW_CHOICES, default="chinchilla", help=LAW_HELP)
    p.add_argument(
        "--method",
        choices=("vp", "grid"),
        default="vp",
        help="vp: variable projection + L-BFGS (fast); grid: Chinchilla start grid",
    )
    p.add_argument("--loss", choices=("huber", "squared", "cauchy"), default="huber")
    p.add_argument("--delta", type=float, default=1e-3, help="robust-loss scale (default 1e-3)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap refits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, help="bootstrap worker processes (default: all cores)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument(
        "--holdout-above",
        type=float,
        metavar="FLOPS",
        help="fit on runs with compute <= FLOPS, report errors on the rest",
    )
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        metavar="C",
        help="budgets for the derived optimum (default: max data compute x1, 10, 100)",
    )
    p.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        metavar="K",
        help="drop the K highest-loss points (Epoch's replication drops 5)",
    )
    p.add_argument("--plot", help="figure path, e.g. fit.png (PNG and SVG, plus _residuals and _frontier)")
    p.add_argument("--quiet", action="store_true", help="no summary or progress on stderr")
    # distillation law (issue 15): scaling.distill_fit
    p.add_argument(
        "--supervised-fit", help="--law distillation: the supervised fit.json giving L~_S = L(N_S, D_S)"
    )
    p.add_argument(
        "--form",
        choices=("full", "reduced"),
        default="full",
        help="--law distillation: full Eq. 8 (9 parameters) or reduced (4: f1 = 1, "
        "student term from the supervised fit)",
    )

    p.add_argument(
        "--drop-below-teacher",
        action="store_true",
        help="--law distillation: leave out students with L_S <= L_T (named in the fit JSON) instead of "
        "refusing them; Eq. 8 cannot represent a student below its teacher",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="--law distillation: profile every parameter and report those the students do not pin down",
    )

    p = sub.add_parser("predict", help="predicted loss from a fit")
    p.add_argument("--fit", required=True)
    p.add_argument("--params", type=float, required=True, help="parameter count N")
    p.add_argument("--tokens", type=float, help="training tokens D (L(N, D) laws)")
    p.add_argument("--teacher-loss", type=float, help="teacher cross-entropy L_T (distillation fits)")
    p.add_argument("--level", type=float, default=0.95)

    p = sub.add_parser("optimal", help="compute-optimal N*, D*, L* for a budget")
    p.add_argument("--fit", required=True)
    p.add_argument("--flops", type=float, required=True, help="compute budget C in FLOPs")
    p.add_argument(
        "--cost",
        help="cost expression in N, D, NT (default: C = 6*N*D), e.g. '6*N*D + 2*NT*D' for distillation",
    )
    p.add_argument("--teacher-params", type=float, default=0.0, help="NT in --cost")
    p.add_argument("--level", type=float, default=0.95)

    from .advise import add_parser as add_advise_parser  # issue 15

    add_advise_parser(sub)

    p = sub.add_parser("isoflop", help="Approach 2: IsoFLOP parabolas")
    _add_inputs(p)
    p.add_argument("--tolerance", type=float, default=0.05, help="budget grouping (dex)")
    p.add_argument("--min-sizes", type=int, default=3, help="min distinct N per budget")
    p.add_argument("--plot", help="figure path (PNG and SVG)")

    p = sub.add_parser("envelope", help="Approach 1: minimum-loss envelope of learning curves")
    _add_inputs(p)
    p.add_argument("--plot", help="figure path (PNG and SVG)")

    p = sub.add_parser("plot", help="redraw the figures of a fit.json")
    p.add_argument("--fit", required=True)
    p.add_argument("--out", required=True, help="figure path, e.g. fit.png")

    p = sub.add_parser(
        "runs", help="read runs and print them as a table (--json: every field as JSON; --out: write a file)"
    )
    _add_inputs(p)

    p = sub.add_parser(
        "ladder",
        help="plan a ladder of model sizes from one base config",
        description="Sizes by width with a stated shape rule (depth = width / aspect ratio, "
        "fixed head size, MLP = ratio x width). Prints the run plan; `scaledown ladder` takes the "
        "same arguments and trains each rung.",
    )
    add_ladder_arguments(p)
    for p in (parser, *sub.choices.values()):
        _add_common_options(p)
    return both_spellings(parser)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scaledown")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_common_options(p) -> None:
    """--version, --debug, --log-level (as `distill.utils.cli_common.add_common_options`)."""
    p.add_argument("--version", action="version", version=f"scaling (scaledown) {_version()}")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    p.add_argument(
        "--log-level",
        dest="log_level",
        choices=("debug", "info", "warning", "error", "critical"),
        default=argparse.SUPPRESS,
        help="log level of the scaling logger",
    )


def both_spellings(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every long option in ``--snake_case`` (listed first) and ``--kebab-case``, as on every command of the
    project; a copy of `distill.utils.flags.both_spellings`, as `scaling` imports nothing from `distill`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                both_spellings(sub)
            continue
        for option in [o for o in action.option_strings if o.startswith("--")]:
            body = option[2:]
            alias = "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))
            if alias not in parser._option_string_actions:
                action.option_strings.insert(0 if "_" in alias else len(action.option_strings), alias)
                parser._option_string_actions[alias] = action
    return parser


def add_ladder_arguments(p) -> None:
    """The ladder-planning arguments, shared by `scaling ladder` (plan) and `scaledown ladder` (plan and train)."""
    p.add_argument(
        "--base-config",
        required=True,
        help='JSON mapping with model_type, e.g. \'{"model_type": "llama"}\', or a config.json path',
    )
    p.add_argument("--widths", required=True, help="comma-separated hidden sizes, e.g. 64,96,128")
    p.add_argument("--aspect-ratio", type=float, default=32.0)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--mlp-ratio", type=float, default=8 / 3)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=float, help="the same token budget for every rung")
    budget.add_argument("--flops", type=float, help="one compute budget: D = C / 6N")
    budget.add_argument("--isoflop", help="comma-separated compute budgets: every budget x every size")
    budget.add_argument("--tokens-per-param", type=float, help="D = ratio x N (e.g. 20)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _load(args):
    from .logs import load_runs

    return load_runs(
        args.inputs, args.columns, args.points, args.param_count, args.seq_len, args.global_batch
    )


def _emit(args, result, summary=None):
    if getattr(args, "out", None):
        from .atomic import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(summary if summary is not None else result, indent=1))


def _summary_text(fit) -> str:
    from .intervals import bootstrap_lines, format_interval

    lines = [
        f"{fit['law']} fit on {fit['n_points']} points (N = {fit['param_count']}, "
        f"{fit['loss']} delta={fit['delta']:g}, {fit['method']}): objective "
        f"{fit['objective']:.8g}, {'converged' if fit['converged'] else 'NOT converged'} "
        f"({fit['seconds']:.2f} s)"
    ]
    for k, v in list(fit["params"].items()) + list(fit["derived"].items()):
        lines.append(f"  {k:>24} = {v:.5g}  {format_interval(fit, k)}".rstrip())
    lines += [f"  {line}" for line in bootstrap_lines(fit)]
    sel = fit.get("selection")
    if sel:
        lines.append(
            f"  --law auto chose {sel['chosen']} by {sel['method']}, held out by "
            + ("model size" if sel.get("fold_kind", "compute") == "models" else "compute")
            + " ("
            + ", ".join(
                f"{k}: MAPE {v['mape']:.2f}%" if v else f"{k}: failed" for k, v in sel["scores"].items()
            )
            + f"); extrapolation band +-{sel['band_pct']:.2f}% (its worst validation error)"
        )
    if "holdout" in fit:
        h = fit["holdout"]
        lines.append(
            f"  holdout above {h['threshold_flops']:.3g} FLOPs: {h['n_test']} runs, MAPE {h['mape']:.2f}%"
        )
        for r in h["points"]:
            lines.append(
                f"    N={r['params']:.3g} D={r['tokens']:.3g} loss={r['loss']:.4f} "
                f"predicted={r['predicted']:.4f} ({r['error_pct']:+.2f}%)"
                + (f" band [{r['band'][0]:.4f}, {r['band'][1]:.4f}]" if "band" in r else "")
            )
    return "\n".join(lines)


def cmd_fit(args):
    from .fit import fit_runs, save_fit

    if args.law == "distillation":
        from .distill_fit import cmd_fit_distillation

        return cmd_fit_distillation(args)
    points = _load(args)
    options = dict(
        method=args.method,
        loss=args.loss,
        delta=args.delta,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        jobs=args.jobs,
        holdout_above=args.holdout_above,
        budgets=args.budgets,
        drop_highest=args.drop_highest,
        level=args.level,
        progress=not args.quiet,
    )
    if args.law == "auto":
        from .autolaw import fit_auto

        fit = fit_auto(points, **options)
    else:
        fit = fit_runs(points, args.law, **options)
    if args.out:
        save_fit(fit, args.out)
    if args.plot:
        from .plot import plot_all

        fit["plots"] = plot_all(fit, args.plot)
    if not args.quiet:
        print(_summary_text(fit), file=sys.stderr)
    if args.json:
        slim = {k: v for k, v in fit.items() if k not in ("data", "bootstrap", "internal")}
        if "bootstrap" in fit:
            slim["bootstrap"] = {k: v for k, v in fit["bootstrap"].items() if k != "samples"}
        print(json.dumps(slim, indent=1))


def cmd_predict(args):
    from .distill_fit import is_distillation_fit, load_any_fit, predict_from_dfit
    from .optimal import predict_from_fit

    fit = load_any_fit(args.fit)
    if is_distillation_fit(fit):
        print(
            json.dumps(predict_from_dfit(fit, args.params, args.tokens, args.teacher_loss, args.level, True))
        )
        return
    print(json.dumps(predict_from_fit(fit, args.params, args.tokens, args.level)))


def cmd_optimal(args):
    from .fit import load_fit
    from .optimal import optimal_from_fit, parse_cost

    cost = parse_cost(args.cost, args.teacher_params) if args.cost else None
    print(json.dumps(optimal_from_fit(load_fit(args.fit), args.flops, cost, args.level)))


def cmd_isoflop(args):
    from .logs import param_count_of, to_arrays
    from .optimal import isoflop_analysis

    points = _load(args)
    a = to_arrays(points)
    iso = isoflop_analysis(a["params"], a["loss"], a["flops"], args.tolerance, args.min_sizes)
    iso["param_count"] = param_count_of(points)
    if args.plot:
        from .plot import plot_isoflop

        iso["plots"] = plot_isoflop(iso, args.plot)
    _emit(args, iso)
    if not args.json:
        for b in iso["budgets"]:
            print(
                f"C = {b['flops']:.3g}: N* = {b['params_opt']:.3g}, D* = {b['tokens_opt']:.3g}"
                f", L* = {b['loss_opt']:.4f}",
                file=sys.stderr,
            )
        if "a" in iso:
            print(
                f"N* ∝ C^{iso['a']:.4f}, D* ∝ C^{iso['b']:.4f} (N = {iso['param_count']} parameters)",
                file=sys.stderr,
            )


def cmd_envelope(args):
    from .logs import param_count_of, to_arrays
    from .optimal import envelope_analysis

    points = _load(args)
    a = to_arrays(points)
    env = envelope_analysis(a["params"], a["flops"], a["loss"], a["run"], param_count=param_count_of(points))
    if args.plot:
        from .plot import plot_envelope

        env["plots"] = plot_envelope(env, args.plot)
    _emit(args, env)
    if not args.json and "a" in env:
        print(
            f"N* ∝ C^{env['a']:.4f}, D* ∝ C^{env['b']:.4f} (N = {env['param_count']} parameters)",
            file=sys.stderr,
        )


def cmd_plot(args):
    from .fit import load_fit
    from .plot import plot_all

    files = plot_all(load_fit(args.fit), args.out)
    print(json.dumps({"plots": files}))


def cmd_runs(args):
    from .logs import write_table

    points = _load(args)
    if args.out:
        write_table(points, args.out)
    if args.json:
        print(json.dumps([p.to_dict() for p in points], indent=1))
    elif not args.out:
        print(format_runs(points))


def format_runs(points) -> str:
    """The runs as a readable table (one line per point; `--json` gives every field)."""
    head = f"{'run':<24} {'step':>7} {'params':>10} {'tokens':>10} {'flops':>10} {'loss':>8}  N counted"
    lines = [head, "-" * len(head)]
    for p in points:
        step = "" if p.step is None else str(p.step)
        name = p.run or p.source.rsplit(": ", 1)[-1]
        lines.append(
            f"{name[-24:]:<24} {step:>7} {p.params:>10.4g} {p.tokens:>10.4g} "
            f"{p.flops:>10.4g} {p.loss:>8.4f}  {p.param_count}"
        )
    lines.append(f"{len(points)} points from {len({p.run or p.source for p in points})} runs")
    return "\n".join(lines)


def ladder_plans_from_args(args) -> list:
    """The run plans of a parsed `ladder` command line (see :func:`add_ladder_arguments`)."""
    from .ladder import LadderSpec, plan_ladder

    base = args.base_config
    if base.lstrip().startswith("{"):
        base = json.loads(base)
    else:
        path = Path(base) / "config.json" if Path(base).is_dir() else Path(base)
        base = json.loads(path.read_text())
    spec = LadderSpec(
        base_config=base,
        widths=[int(w) for w in args.widths.split(",")],
        aspect_ratio=args.aspect_ratio,
        head_dim=args.head_dim,
        mlp_ratio=args.mlp_ratio,
    )
    return plan_ladder(
        spec,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        tokens=args.tokens,
        flops=args.flops,
        tokens_per_param=args.tokens_per_param,
        isoflop_budgets=[float(x) for x in args.isoflop.split(",")] if args.isoflop else None,
    )


def print_ladder_plan(plans, as_json: bool = False) -> None:
    from dataclasses import asdict

    from .ladder import format_plan

    print(json.dumps([asdict(p) for p in plans], indent=1) if as_json else format_plan(plans))


def cmd_ladder(args):
    print_ladder_plan(ladder_plans_from_args(args), as_json=args.json)


def cmd_advise(args):
    from .advise import cmd_advise as run

    run(args)


COMMANDS = {
    "advise": cmd_advise,
    "ladder": cmd_ladder,
    "fit": cmd_fit,
    "predict": cmd_predict,
    "optimal": cmd_optimal,
    "isoflop": cmd_isoflop,
    "envelope": cmd_envelope,
    "plot": cmd_plot,
    "runs": cmd_runs,
}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of the `scaling` console script; returns the exit status."""
    import warnings

    args = build_parser().parse_args(argv)
    if getattr(args, "log_level", None):
        import logging

        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("scaling").setLevel(args.log_level.upper())
    old = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as err:  # ScalingDataError is a ValueError
        if getattr(args, "debug", False):
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
