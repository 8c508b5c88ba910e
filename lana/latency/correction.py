"""Which correction of the latency sum to trust: chosen by leave-one-out error, never worse than none.

The prediction is ``fixed + scale × Σ per-block figures``. Candidate corrections:

- ``none``: the measured fixed part, scale 1 (what profiling gives);
- ``offset``: the fixed part refitted (median of measured − sum), scale 1;
- ``offset+scale``: Theil–Sen slope and median intercept (robust to one bad network).

Each is judged by leave-one-out over *every* checked network, the fastest and the slowest
included: network *i* is predicted by the correction fitted on all the others. A correction
is eligible only if neither its median nor its mean leave-one-out error is above ``none``'s;
the eligible one with the lowest mean wins (the simpler one on a tie), so a fit that does
not earn its place is refused. The mean, not the worst, decides: one network's error
decides the worst, and whether that network is in the fit or held out would flip the choice.

Picking the best of three by their leave-one-out errors flatters the winner, so what
``lana latency-check --fit`` stores is decided by *nested* leave-one-out, as
``benchmarks/latency_error.py`` reports it (:func:`choose_correction_nested`): the choice
and the fit are both made without each held-out network, and a correction is kept only
where that whole procedure beats ``none``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("none", "offset", "offset+scale")


@dataclass
class Correction:
    """``measured ≈ fixed_ms + scale × (sum of per-block figures)``."""

    fixed_ms: float
    scale: float
    networks: int
    kind: str = "offset+scale"

    def as_dict(self) -> dict:
        """JSON-able fields."""
        return {"kind": self.kind, "fixed_ms": self.fixed_ms, "scale": self.scale, "networks": self.networks}


def fit_correction(sums: list[float], measured: list[float], scale_bounds: tuple[float, float] = (0.5, 2.0)) -> Correction:
    """Fit fixed part and scale of the sum on measured networks, robust to an outlier.

    A Theil-Sen slope (median of pairwise slopes, clipped to ``scale_bounds``) and the median
    intercept; with fewer than 3 networks or too little spread of the sums, only the fixed
    part is fitted (scale 1).

    Args:
        sums: per network, the sum of its per-block figures (without any fixed part).
        measured: per network, its measured latency.

    Returns:
        The fitted correction.
    """
    x, y = np.asarray(sums, float), np.asarray(measured, float)
    if len(x) == 0:
        raise ValueError("no measured networks to fit a correction on")
    scale = 1.0
    if len(x) >= 3 and np.ptp(x) > 0.05 * np.mean(x):
        slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x)) if abs(x[j] - x[i]) > 1e-12]
        scale = float(np.clip(np.median(slopes), *scale_bounds))
    return Correction(float(np.median(y - scale * x)), scale, len(x))


def fit_kind(kind: str, sums, measured, measured_fixed_ms: float) -> Correction:
    """The correction ``kind`` fitted on these networks (``none`` ignores them).

    Args:
        kind: one of :data:`KINDS`.
        sums, measured: per network, the raw per-block sum and the measured latency.
        measured_fixed_ms: the fixed part profiling measured (what ``none`` uses).

    Returns:
        The correction.
    """
    x, y = np.asarray(sums, float), np.asarray(measured, float)
    if kind == "none":
        return Correction(float(measured_fixed_ms), 1.0, len(x), "none")
    if kind == "offset":
        return Correction(float(np.median(y - x)), 1.0, len(x), "offset")
    if kind == "offset+scale":
        fitted = fit_correction(x, y)
        return Correction(fitted.fixed_ms, fitted.scale, len(x), "offset+scale")
    raise ValueError(f"unknown correction '{kind}'; expected one of {', '.join(KINDS)}")


def loo_errors(kind: str, sums, measured, measured_fixed_ms: float, judged) -> np.ndarray:
    """Absolute relative error (%) of each judged network, predicted by ``kind`` fitted on all the others.

    Args:
        judged: indices of the networks to predict (e.g. all but the teacher, which is
            always fitted on).

    Returns:
        One error per judged index, in that order.
    """
    x, y = np.asarray(sums, float), np.asarray(measured, float)
    errors = []
    for i in judged:
        rest = np.arange(len(x)) != i
        c = fit_kind(kind, x[rest], y[rest], measured_fixed_ms)
        errors.append(abs(c.fixed_ms + c.scale * x[i] - y[i]) / y[i] * 100)
    return np.asarray(errors)


def choose_correction(sums, measured, measured_fixed_ms: float, judged=None) -> tuple[Correction, dict]:
    """The correction to use, fitted on every network, and why (each kind's leave-one-out errors).

    Args:
        sums, measured: per network, the raw per-block sum and the measured latency.
        measured_fixed_ms: the fixed part profiling measured (what ``none`` uses).
        judged: indices to leave out one at a time (default: all).

    Returns:
        The chosen correction and ``{"kinds": {kind: {median_pct, mean_pct, worst_pct, eligible}},
        "chosen": kind, "why": one line}``.
    """
    judged = list(range(len(sums))) if judged is None else list(judged)
    kinds = {}
    for kind in KINDS:
        err = loo_errors(kind, sums, measured, measured_fixed_ms, judged) if judged else np.zeros(1)
        kinds[kind] = {"median_pct": float(np.median(err)), "mean_pct": float(np.mean(err)), "worst_pct": float(np.max(err))}
    base = kinds["none"]
    for stats in kinds.values():
        stats["eligible"] = stats["median_pct"] <= base["median_pct"] and stats["mean_pct"] <= base["mean_pct"]
    chosen = min((k for k in KINDS if kinds[k]["eligible"]), key=lambda k: (round(kinds[k]["mean_pct"], 9), KINDS.index(k)))
    best = kinds[chosen]
    if chosen == "none":
        why = "no correction beats none on held-out networks (leave-one-out)"
    else:
        why = (f"{chosen}: leave-one-out median {best['median_pct']:.1f} %, mean {best['mean_pct']:.1f} %, worst "
               f"{best['worst_pct']:.1f} % against none's {base['median_pct']:.1f} / {base['mean_pct']:.1f} / {base['worst_pct']:.1f} %")
    return fit_kind(chosen, sums, measured, measured_fixed_ms), {"kinds": kinds, "chosen": chosen, "why": why, "networks": len(judged)}


def nested_loo_errors(sums, measured, measured_fixed_ms: float, judged) -> tuple[np.ndarray, list[str]]:
    """Held-out error of the whole procedure: for each judged network, choose *and* fit without it.

    What a benchmark should report: the choice among corrections is itself made without the
    network it is judged on, so picking the best of three does not flatter the figure.

    Returns:
        Errors (%) per judged index and the kind chosen in each fold.
    """
    x, y = np.asarray(sums, float), np.asarray(measured, float)
    errors, chosen = [], []
    for i in judged:
        keep = [j for j in range(len(x)) if j != i]
        inner = [keep.index(j) for j in judged if j != i]
        c, _ = choose_correction(x[keep], y[keep], measured_fixed_ms, inner)
        errors.append(abs(c.fixed_ms + c.scale * x[i] - y[i]) / y[i] * 100)
        chosen.append(c.kind)
    return np.asarray(errors), chosen


def choose_correction_nested(sums, measured, measured_fixed_ms: float, judged=None) -> tuple[Correction, dict]:
    """The correction to store: :func:`choose_correction`'s pick, kept only where the whole
    procedure (choose, then fit) beats ``none`` on held-out networks by nested leave-one-out.

    Args:
        sums, measured: per network, the raw per-block sum and the measured latency.
        measured_fixed_ms: the fixed part profiling measured (what ``none`` uses).
        judged: indices to leave out one at a time (default: all).

    Returns:
        The correction, fitted on every network, and :func:`choose_correction`'s record plus
        ``nested`` (the procedure's held-out ``median_pct``, ``mean_pct``, ``worst_pct`` and the
        kind chosen per fold) and ``held_out`` (the errors of what is stored, held out).
    """
    judged = list(range(len(sums))) if judged is None else list(judged)
    correction, why = choose_correction(sums, measured, measured_fixed_ms, judged)
    errors, folds = nested_loo_errors(sums, measured, measured_fixed_ms, judged)
    nested = {"median_pct": float(np.median(errors)), "mean_pct": float(np.mean(errors)), "worst_pct": float(np.max(errors)),
              "per_fold": {kind: folds.count(kind) for kind in KINDS if kind in folds}}
    none = why["kinds"]["none"]
    why["nested"] = nested
    if why["chosen"] != "none" and (nested["median_pct"] > none["median_pct"] or nested["mean_pct"] > none["mean_pct"]):
        why["why"] = (f"{why['chosen']} won leave-one-out, but choosing among corrections without each held-out network "
                      f"(nested leave-one-out: median {nested['median_pct']:.1f} %, mean {nested['mean_pct']:.1f} %) does not "
                      f"beat none ({none['median_pct']:.1f} / {none['mean_pct']:.1f} %); none is kept")
        why["chosen"] = "none"
        correction = fit_kind("none", sums, measured, measured_fixed_ms)
    why["held_out"] = nested if why["chosen"] != "none" else {k: none[k] for k in ("median_pct", "mean_pct", "worst_pct")}
    return correction, why
