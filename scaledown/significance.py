"""Figures said no more strongly than their noise allows: the KD verdict and the throughput note.

The KD gain (the fraction of the baseline-to-teacher gap that distillation closed) is a ratio
of two small differences, so it swings wildly when the improvement is within seed noise (a
`--quick` run reported "closed 111% of the gap" for an improvement of 0.017 with a seed spread
of 0.020). The rule here, stated in the report: the improvement (mean baseline test loss minus
mean KD test loss) is called significant only when it exceeds the seed spread (the larger of
the two arms' max - min test loss over seeds), which needs at least two seeds per arm.
"""

from __future__ import annotations

__all__ = ["kd_verdict", "kd_headline", "throughput_note"]


def kd_verdict(improvement: float, spread: float, n_seeds: int) -> dict:
    """Whether a KD improvement stands out of the seed noise.

    Args:
        improvement (`float`): mean baseline test loss minus mean KD test loss (> 0: KD helped).
        spread (`float`): the larger of the two arms' max - min test loss over seeds.
        n_seeds (`int`): seeds of the arm with fewer seeds.

    Returns:
        `{"kd_significant": True | False | None, "kd_verdict": str}`, the verdict one of
        `"better beyond seed noise"`, `"worse beyond seed noise"`, `"within seed noise"`,
        `"one seed: noise unknown"` (`kd_significant` None).
    """
    if n_seeds < 2:
        return {"kd_significant": None, "kd_verdict": "one seed: noise unknown"}
    if abs(improvement) <= spread:
        return {"kd_significant": False, "kd_verdict": "within seed noise"}
    return {
        "kd_significant": True,
        "kd_verdict": "better beyond seed noise" if improvement > 0 else "worse beyond seed noise",
    }


def kd_headline(s: dict) -> str:
    """The report's KD line, whose first words carry the verdict."""
    losses = (
        f"test loss {s['baseline']['test_loss']:.4f} -> {s['student']['test_loss']:.4f}; teacher "
        f"{s['teacher']['test_loss']:.4f}"
    )
    n = min(len(s["student"].get("seeds", [])), len(s["baseline"].get("seeds", []))) or 1
    noise = f"the seed spread {s['seed_spread']:.4f} ({n} seed{'s' if n > 1 else ''} per arm)"
    verdict = s.get("kd_verdict") or kd_verdict(s["kd_improvement"], s["seed_spread"], n)["kd_verdict"]
    gap = f"{100 * s['kd_gain']:.1f}% of the baseline-to-teacher gap"
    if verdict == "better beyond seed noise":
        return (
            f"- **KD gain:** distillation closed {gap} ({losses}); the improvement "
            f"{s['kd_improvement']:.4f} exceeds {noise}."
        )
    if verdict == "worse beyond seed noise":
        return (
            f"- **KD gain: none, distillation did worse** than the baseline by {-s['kd_improvement']:.4f}, "
            f"beyond {noise} ({losses})."
        )
    if verdict == "within seed noise":
        return (
            f"- **KD gain: within seed noise.** The improvement {s['kd_improvement']:.4f} is not larger "
            f"than {noise}, so this run does not show that distillation helped (nominally {gap}; "
            f"{losses}). More seeds or more training would tell."
        )
    return (
        f"- **KD gain: untested against noise** (one seed per arm; list more in `distill.seeds`): "
        f"nominally {gap} ({losses})."
    )


def throughput_note(meta: dict) -> str:
    """One sentence saying what the throughput column measures and how noisy it was."""
    b, t = meta["batch"]
    load = meta.get("loadavg")
    return (
        f"Throughput: forward passes in inference mode (no KV cache) of one batch of {b} x {t} = "
        f"{b * t:,} tokens on {meta['threads']} CPU thread{'s' if meta['threads'] != 1 else ''} "
        f"({meta['device']}), after {meta['warmup_rounds']} warm-up rounds; median and "
        f"interquartile range of {meta['rounds']} rounds, the models interleaved in rotating order"
        + (f"; load average {load[0]:.1f} when measured" if load else "")
        + "."
    )
