"""`scaling advise`: distil or train from scratch, which student size and how many tokens.

Given a supervised fit (sup.json, an L(N, D) law) and a distillation fit (dfit.json, see
`scaling.distill_fit`), a teacher's cross-entropy `L_T` and a compute budget `C`, compare

- **supervised**: the compute-optimal student of the supervised law, `C = 6 N D`;
- **distillation**: the student `(N_S, D_S)` minimising the distillation law's `L_S` under
  `C = 6 N_S D_S + teacher cost`, where the teacher cost (Busbridge et al. 2025, Eq. 9 with
  `F(N) = 2N`) is, per `--teacher-cost`:
  - `free`: nothing (an existing teacher whose logits cost is amortised elsewhere);
  - `inference`: `2 N_T D_S / K`, the teacher's forward passes over the distillation tokens,
    shared by `K` students that reuse one cached teacher pass (`K = 1`: online teacher);
  - `full`: inference plus the teacher's training `6 N_T D_T / K`.

The verdict is `distill`, `train` or `inconclusive`: inconclusive when both routes have intervals
(bootstrapped fits) and they overlap; `reason` says by how many nats, and `leaning` gives the
route the point estimates favour. `--fit` must be the supervised fit the `--dfit` was made on
(refused otherwise, naming the difference); without it the copy stored in the `--dfit` is used.

With `--target-loss L` it answers the reverse question: the cheapest budget (and student) that
reaches `L` by each route. Intervals are the spread of the fits' bootstrap refits at the
recommended point (none when a fit was not bootstrapped).
"""

from __future__ import annotations

import math

__all__ = [
    "TeacherCost",
    "advise",
    "advise_target",
    "check_same_supervised",
    "format_advice",
    "add_parser",
    "cmd_advise",
]


class TeacherCost:
    """The teacher's FLOPs charged to one student: `rate * D_S + fixed`.

    Args:
        mode (`str`): `"free"`, `"inference"` or `"full"`.
        teacher_params (`float`): N_T (needed unless free).
        teacher_tokens (`float`): D_T, the teacher's training tokens (needed for full).
        students (`int`): K students sharing the teacher's cost.
    """

    def __init__(self, mode="free", teacher_params=None, teacher_tokens=None, students=1):
        if mode not in ("free", "inference", "full"):
            raise ValueError(f"--teacher-cost {mode!r}: choose free, inference or full")
        if students < 1:
            raise ValueError(f"--students must be >= 1, got {students}")
        if mode != "free" and not (teacher_params and teacher_params > 0):
            raise ValueError(
                f"--teacher-cost {mode} needs --teacher-params N_T (the teacher's parameter count)"
            )
        if mode == "full" and not (teacher_tokens and teacher_tokens > 0):
            raise ValueError("--teacher-cost full needs --teacher-tokens D_T (the teacher's training tokens)")
        self.mode, self.students = mode, int(students)
        self.rate = 0.0 if mode == "free" else 2.0 * teacher_params / students
        self.fixed = 6.0 * teacher_params * teacher_tokens / students if mode == "full" else 0.0

    def tokens_for(self, n, flops):
        """Distillation tokens a student of size `n` gets from budget `flops` (<= 0: none)."""
        return (flops - self.fixed) / (6.0 * n + self.rate)

    def describe(self) -> str:
        share = f", shared by {self.students} students" if self.students > 1 else ""
        return {
            "free": "teacher free (existing, amortised)",
            "inference": f"teacher inference 2 N_T D_S{share}",
            "full": f"teacher training 6 N_T D_T plus inference 2 N_T D_S{share}",
        }[self.mode]


def _ranges(dfit):
    d = dfit.get("data") or {}
    return {k: (min(d[k]), max(d[k])) for k in ("params", "tokens", "teacher_loss") if d.get(k)}


def _distill_best(dfit, teacher_loss, flops, cost, student_params=None):
    """Student (N_S, D_S) with the lowest predicted distillation loss under the budget."""
    import numpy as np
    from scipy.optimize import minimize_scalar

    from .distill_law import predict_distillation

    def loss_at(log_n):
        n = math.exp(log_n)
        d = cost.tokens_for(n, flops)
        return float(predict_distillation(dfit, n, d, teacher_loss)) if d >= 1 else math.inf

    if student_params:
        d = cost.tokens_for(student_params, flops)
        if d < 1:
            return None
        return student_params, d, loss_at(math.log(student_params))
    if flops - cost.fixed <= 0:
        return None
    hi = math.log((flops - cost.fixed) / 6.0)
    xs = np.linspace(math.log(1e2), hi, 400)
    d = cost.tokens_for(np.exp(xs), flops)
    ok = d >= 1
    if not ok.any():
        return None
    losses = np.full(xs.size, np.inf)
    losses[ok] = predict_distillation(dfit, np.exp(xs[ok]), d[ok], np.full(ok.sum(), teacher_loss))
    j = int(np.argmin(losses))
    res = minimize_scalar(
        loss_at,
        bounds=(xs[max(j - 1, 0)], xs[min(j + 1, xs.size - 1)]),
        method="bounded",
        options={"xatol": 1e-8},
    )
    n = math.exp(res.x) if res.fun <= losses[j] else math.exp(xs[j])
    return n, cost.tokens_for(n, flops), loss_at(math.log(n))


def _supervised_best(sup, flops, student_params=None, level=0.95):
    from .optimal import optimal_from_fit, predict_from_fit

    if student_params:
        d = flops / (6.0 * student_params)
        p = predict_from_fit(sup, student_params, d, level)
        return student_params, d, p["loss"], p.get("interval")
    o = optimal_from_fit(sup, flops, None, level)
    return o["params"], o["tokens"], o["loss"], (o.get("interval") or {}).get("loss")


def _sides(interval):
    """An interval's ends with unbounded (None) sides as -inf / +inf."""
    if not interval:
        return -math.inf, math.inf
    lo, hi = interval
    return (-math.inf if lo is None else lo), (math.inf if hi is None else hi)


def _overlap(a, b):
    """How far two intervals overlap, in nats (negative: the gap between them); `None` when
    either is missing. An unbounded side overlaps everything on its side."""
    if not a or not b:
        return None
    lo_a, hi_a = _sides(a)
    lo_b, hi_b = _sides(b)
    return min(hi_a, hi_b) - max(lo_a, lo_b)


def _show(interval):
    return "[" + ", ".join("unbounded" if v is None else f"{v:.4f}" for v in interval) + "]"


def check_same_supervised(sup, dfit) -> None:
    """Refuse a supervised fit other than the one the distillation fit was made on, naming the
    difference (mixing two laws gives advice neither supports)."""
    own = dfit.get("supervised") or {}
    diffs = []
    if sup.get("law") != own.get("law"):
        diffs.append(f"law {sup.get('law')!r} vs {own.get('law')!r}")
    else:
        for k in sorted(set(sup["params"]) | set(own.get("params", {}))):
            a, b = sup["params"].get(k), (own.get("params") or {}).get(k)
            if a is None or b is None or not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0):
                diffs.append(f"{k} {a if a is None else f'{a:.6g}'} vs {b if b is None else f'{b:.6g}'}")
    if diffs:
        raise ValueError(
            "--fit is not the supervised fit the --dfit was made on ("
            + "; ".join(diffs)
            + "): give the same fit, or leave out --fit to use the one stored in the --dfit"
        )


def _check_fits(sup, dfit):
    from .laws import get_law

    if dfit is None:
        raise ValueError(
            "scaling advise needs a distillation fit: --dfit dfit.json, made with "
            "`scaling fit KD_RUNS --law distillation --supervised-fit sup.json` on "
            "students you distilled. The paper's fitted constants are not used."
        )
    if not get_law(sup["law"]).uses_tokens:
        raise ValueError(
            f"--fit is a {sup['law']!r} fit, without a token term: advice on tokens "
            "needs an L(N, D) law (chinchilla_gamma, chinchilla, gadre or kaplan)"
        )


def advise(sup, dfit, teacher_loss, flops, cost=None, student_params=None, level=0.95) -> dict:
    """Compare distillation and supervised training for one budget.

    Args:
        sup (`dict`): supervised fit.json. dfit (`dict`): distillation fit (dfit.json).
        teacher_loss (`float`): L_T. flops (`float`): budget C per student.
        cost (`TeacherCost`, *optional*): teacher cost model (default free).
        student_params (`float`, *optional*): fix the student's size; only tokens are chosen.
        level (`float`): interval level.

    Returns:
        `dict` with `student_params, student_tokens, loss_distill, loss_supervised,
        loss_distill_interval, loss_supervised_interval, verdict, reason` and per-route details.
    """
    from .distill_fit import predict_from_dfit

    _check_fits(sup, dfit)
    cost = cost or TeacherCost()
    if not (teacher_loss > 0 and flops > 0):
        raise ValueError("--teacher-loss and --flops must be > 0")
    ns, ds, ls, ls_iv = _supervised_best(sup, flops, student_params, level)
    best = _distill_best(dfit, teacher_loss, flops, cost, student_params)
    out = {
        "flops": float(flops),
        "teacher_loss": float(teacher_loss),
        "teacher_cost": cost.mode,
        "students": cost.students,
        "supervised": {"params": ns, "tokens": ds, "loss": ls, "interval": ls_iv},
        "loss_supervised": ls,
        "loss_supervised_interval": ls_iv,
    }
    if best is None:
        out.update(
            distill=None,
            loss_distill=None,
            loss_distill_interval=None,
            verdict="train",
            leaning="train",
            interval_overlap=None,
            student_params=ns,
            student_tokens=ds,
            reason=f"the teacher's share of the cost ({cost.fixed:.3g} FLOPs, "
            f"{cost.describe()}) leaves no budget for a student: train from scratch",
        )
        return out
    n, d, ld = best
    pred = predict_from_dfit(dfit, n, d, teacher_loss, level)
    iv = pred.get("interval")
    teacher_flops = cost.rate * d + cost.fixed
    out["distill"] = {
        "params": n,
        "tokens": d,
        "loss": ld,
        "interval": iv,
        "teacher_flops": teacher_flops,
        "student_flops": 6.0 * n * d,
        "supervised_loss_same_student": pred["supervised_loss"],
    }
    out.update(loss_distill=ld, loss_distill_interval=iv)
    distil = ld < ls
    out["leaning"] = "distill" if distil else "train"
    out["student_params"], out["student_tokens"] = (n, d) if distil else (ns, ds)
    gap = abs(ls - ld)
    why = (
        f"distillation predicts {ld:.4f} nats (N_S = {n:.3g}, D_S = {d:.3g}) against "
        f"{ls:.4f} for supervised training (N = {ns:.3g}, D = {ds:.3g}) at {flops:.3g} FLOPs "
        f"with {cost.describe()}; {'distillation' if distil else 'training from scratch'} is "
        f"{gap:.4f} nats better by the point estimates"
    )
    overlap = _overlap(iv, ls_iv)
    out["interval_overlap"] = overlap
    if overlap is not None and overlap >= 0:
        out["verdict"] = "inconclusive"
        why += (
            f"; inconclusive: the {level:g} intervals overlap by {overlap:.4f} nats (distillation "
            f"{_show(iv)}, supervised {_show(ls_iv)}), so the fits do not resolve the difference"
        )
    else:
        out["verdict"] = out["leaning"]
        if overlap is not None:
            why += f"; the intervals are {-overlap:.4f} nats apart"
        else:
            why += "; no intervals (bootstrap both fits with --bootstrap N to get them), so the verdict rests on point estimates"
    ranges = _ranges(dfit)
    outside = [
        name
        for name, v, key in (
            ("N_S", n, "params"),
            ("D_S", d, "tokens"),
            ("L_T", teacher_loss, "teacher_loss"),
        )
        if key in ranges and not ranges[key][0] <= v <= ranges[key][1]
    ]
    if outside:
        why += f"; extrapolated beyond the distilled students in {', '.join(outside)}"
    out["extrapolated"] = outside
    out["reason"] = why
    return out


def _cheapest(loss_at_budget, target, lo):
    """Smallest budget C > lo whose best loss reaches `target` (bisection in log C), or None."""
    hi = max(lo * 10, 1e6)
    for _ in range(40):  # grow until reachable (losses fall with the budget)
        if loss_at_budget(hi) <= target:
            break
        hi *= 1e3
    else:
        return None
    a, b = math.log(max(lo, 1.0)), math.log(hi)
    for _ in range(60):
        mid = 0.5 * (a + b)
        a, b = (a, mid) if loss_at_budget(math.exp(mid)) <= target else (mid, b)
    return math.exp(b)


def advise_target(sup, dfit, teacher_loss, target_loss, cost=None, student_params=None, level=0.95) -> dict:
    """The cheapest way to reach `target_loss`: the smallest budget per route, and which wins.

    Returns:
        `dict` like `advise` plus `target_loss`, `flops_distill`, `flops_supervised` (`None` for
        a route that cannot reach the target, with the reason).
    """
    _check_fits(sup, dfit)
    cost = cost or TeacherCost()
    notes = []
    floor = float(sup["params"].get("E", 0.0))
    if target_loss <= floor:
        c_sup = None
        notes.append(
            f"supervised training cannot reach {target_loss:.4f}: the supervised law's "
            f"irreducible loss is E = {floor:.4f}"
        )
    else:
        c_sup = _cheapest(lambda c: _supervised_best(sup, c, student_params, level)[2], target_loss, 1.0)
    if target_loss <= teacher_loss:
        c_dis = None
        notes.append(
            f"distillation cannot reach {target_loss:.4f}: the law predicts students "
            f"above their teacher's loss L_T = {teacher_loss:.4f}"
        )
    else:

        def dist_loss(c):
            best = _distill_best(dfit, teacher_loss, c, cost, student_params)
            return best[2] if best else math.inf

        c_dis = _cheapest(dist_loss, target_loss, cost.fixed * (1 + 1e-9) + 1.0)
    for name, c in (("supervised training", c_sup), ("distillation", c_dis)):
        if c is None and not any(n.startswith(name) for n in notes):
            notes.append(
                f"{name} does not reach {target_loss:.4f} at any budget"
                + (f" with N = {student_params:.3g}" if student_params else "")
            )
    if c_sup is None and c_dis is None:
        raise ValueError(f"--target-loss {target_loss}: unreachable by either route: " + "; ".join(notes))
    ref = advise(sup, dfit, teacher_loss, c_dis, cost, student_params, level) if c_dis else None
    sup_at = advise(sup, dfit, teacher_loss, c_sup, cost, student_params, level) if c_sup else None
    out = {
        "target_loss": float(target_loss),
        "teacher_loss": float(teacher_loss),
        "teacher_cost": cost.mode,
        "students": cost.students,
        "flops_distill": c_dis,
        "flops_supervised": c_sup,
        "distill": ref["distill"] if ref else None,
        "supervised": sup_at["supervised"] if sup_at else None,
    }
    out["loss_distill"] = ref["loss_distill"] if ref else None
    out["loss_distill_interval"] = ref["loss_distill_interval"] if ref else None
    out["loss_supervised"] = sup_at["loss_supervised"] if sup_at else None
    out["loss_supervised_interval"] = sup_at["loss_supervised_interval"] if sup_at else None
    distil = c_dis is not None and (c_sup is None or c_dis < c_sup)
    out["verdict"] = "distill" if distil else "train"
    route = out["distill"] if distil else out["supervised"]
    out["student_params"], out["student_tokens"] = route["params"], route["tokens"]
    costs = [
        f"distillation {c_dis:.3g} FLOPs" if c_dis else None,
        f"supervised training {c_sup:.3g} FLOPs" if c_sup else None,
    ]
    out["extrapolated"] = ref["extrapolated"] if ref else []
    if out["extrapolated"]:
        notes.append(
            "the distillation route is extrapolated beyond the distilled students in "
            + ", ".join(out["extrapolated"])
        )
    out["reason"] = (
        f"to reach {target_loss:.4f} nats: "
        + ", ".join(c for c in costs if c)
        + f" ({cost.describe()}); {'distil' if distil else 'train from scratch'}"
        + (f" (N = {route['params']:.3g}, D = {route['tokens']:.3g})")
        + ("; " + "; ".join(notes) if notes else "")
    )
    return out


def format_advice(adv: dict) -> str:
    """A readable answer."""

    def route(name, r, flops=None):
        if not r:
            return f"  {name:<12} not possible"
        iv = r.get("interval")
        band = ("  [" + ", ".join("unbounded" if v is None else f"{v:.4f}" for v in iv) + "]") if iv else ""
        cost = f", {flops:.3g} FLOPs" if flops else ""
        return f"  {name:<12} N = {r['params']:.3g}, D = {r['tokens']:.3g}{cost}: loss {r['loss']:.4f}{band}"

    head = (
        f"target loss {adv['target_loss']:.4f}"
        if "target_loss" in adv
        else f"budget {adv['flops']:.3g} FLOPs per student"
    )
    lines = [
        f"{head}, teacher loss {adv['teacher_loss']:.4f}, teacher cost: {adv['teacher_cost']}",
        route("distill", adv.get("distill"), adv.get("flops_distill")),
        route("supervised", adv.get("supervised"), adv.get("flops_supervised")),
        f"verdict: {adv['verdict'].upper()} - {adv['reason']}",
    ]
    return "\n".join(lines)


def add_parser(sub):
    """The `scaling advise` sub-command (no heavy imports here: `--help` stays instant)."""
    p = sub.add_parser(
        "advise",
        help="distil or train from scratch: student size, tokens, predicted losses, verdict",
        description="Compare distillation (distillation law, dfit.json) with "
        "supervised training (fit.json) under one budget, or find the cheapest "
        "way to a target loss.",
    )
    p.add_argument(
        "--fit",
        help="supervised fit.json (an L(N, D) law); must be the one the --dfit was made on (default: "
        "the copy stored in the --dfit; give it for its bootstrap intervals)",
    )
    p.add_argument("--dfit", help="distillation fit (scaling fit --law distillation)")
    p.add_argument("--teacher-loss", type=float, required=True, help="teacher cross-entropy L_T")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--flops", type=float, help="compute budget C per student (FLOPs)")
    goal.add_argument("--target-loss", type=float, help="the loss to reach as cheaply as possible")
    p.add_argument(
        "--teacher-cost",
        choices=("free", "inference", "full"),
        default="free",
        help="free: existing teacher; inference: 2 N_T FLOPs per distillation token; "
        "full: teacher training 6 N_T D_T too (shared across --students)",
    )
    p.add_argument("--teacher-params", type=float, help="N_T, for --teacher-cost inference/full")
    p.add_argument("--teacher-tokens", type=float, help="D_T, for --teacher-cost full")
    p.add_argument("--students", type=int, default=1, help="K students sharing the teacher cost")
    p.add_argument("--student-params", type=float, help="fix the student's size N_S")
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--json", action="store_true", help="print the JSON object")
    p.add_argument("--out", help="also write the JSON object to this file")
    return p


def cmd_advise(args):
    """Run `scaling advise`."""
    import json

    from .distill_fit import is_distillation_fit, load_any_fit
    from .fit import load_fit

    dfit = load_any_fit(args.dfit) if args.dfit else None
    if dfit is not None and not is_distillation_fit(dfit):
        raise ValueError(f"--dfit {args.dfit} is a {dfit['law']!r} fit, not a distillation fit")
    if args.fit is None and dfit is None:
        raise ValueError(
            "scaling advise needs --dfit dfit.json (a distillation fit; --fit alone is not enough)"
        )
    sup = load_fit(args.fit) if args.fit else dfit["supervised"]
    if dfit is not None and args.fit:
        _check_fits(sup, dfit)  # the law's own shortcomings first, then the mismatch
        check_same_supervised(sup, dfit)
    cost = TeacherCost(args.teacher_cost, args.teacher_params, args.teacher_tokens, args.students)
    if args.target_loss is not None:
        adv = advise_target(
            sup, dfit, args.teacher_loss, args.target_loss, cost, args.student_params, args.level
        )
    else:
        adv = advise(sup, dfit, args.teacher_loss, args.flops, cost, args.student_params, args.level)
    text = json.dumps(adv, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text if args.json else format_advice(adv))
