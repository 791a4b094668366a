"""Scaling laws from training runs: read runs, fit laws robustly, derive compute-optimal sizes.

The package reads only structured output (Trainer output directories, CSV or JSON tables) and
never imports the trainer. Public names are imported lazily, so `import scaling` and
`scaling --help` stay fast:

    from scaling import load_runs, fit_runs, compute_optimal
    runs = load_runs(["runs/sweep"], param_count="total")
    fit = fit_runs(runs, law="chinchilla", n_bootstrap=1000)
    compute_optimal("chinchilla", fit["params"], 1e21)
"""

_EXPORTS = {
    "logs": (
        "ScalingDataError",
        "RunPoint",
        "load_runs",
        "read_table",
        "read_run_dir",
        "to_arrays",
        "write_table",
        "parse_columns",
    ),
    "laws": ("Law", "LAWS", "get_law", "predict"),
    "fit": (
        "fit_arrays",
        "fit_runs",
        "bootstrap",
        "check_fit_data",
        "save_fit",
        "load_fit",
        "robust_loss",
        "objective",
    ),
    "optimal": (
        "IsoFLOPWarning",
        "allocation",
        "compute_optimal",
        "compute_optimal_numeric",
        "parse_cost",
        "isoflop_analysis",
        "envelope_analysis",
        "derived_quantities",
        "predict_from_fit",
        "optimal_from_fit",
    ),
    "params": ("count_parameters", "flops_per_token", "model_shape", "load_config"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'scaling' has no attribute {name!r}")
