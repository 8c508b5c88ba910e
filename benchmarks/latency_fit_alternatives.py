"""Corrections that were tried and not adopted, judged on saved ``latency_error.py`` runs.

    .venv/bin/python -m benchmarks.latency_error --save /tmp/lat_run1      # once per run
    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.latency_fit_alternatives /tmp/lat_run*

For every family CSV in every folder, prints held-out error (median / worst over the
networks other than the teacher) of:

- ``current``: what ``latency_error.py`` prints as "in context + fit" (the correction chosen
  and fitted by :mod:`lana.latency.correction` without the judged network: nested LOO);
- ``relative``: the same choice among none / offset / offset + scale, with each fitted to
  the *relative* error (L1 weighted by 1 / measured) instead of milliseconds;
- ``per-op``: an additive term per op type (ms per block using it), ridge-regularised,
  fitted without the judged network (leave-one-out);

and the spread of the residual (measured − summed, ms) with its correlation between runs on
the networks they share, which is what limits every additive model.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import QuantileRegressor, Ridge

from lana.latency import correction


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _fit_relative(kind: str, sums, measured, measured_fixed_ms: float) -> correction.Correction:
    """``correction.fit_kind`` with each fit minimising the relative error (L1, weights 1 / measured)."""
    x, y = np.asarray(sums, float), np.asarray(measured, float)
    if kind == "none":
        return correction.Correction(float(measured_fixed_ms), 1.0, len(x), "none")
    scale = 1.0
    if kind == "offset+scale" and len(x) >= 3 and np.ptp(x) > 0.05 * np.mean(x):
        model = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(x[:, None], y, sample_weight=1 / y)
        scale = float(np.clip(model.coef_[0], 0.5, 2.0))
    return correction.Correction(_weighted_median(y - scale * x, 1 / y), scale, len(x), kind)


@contextmanager
def _fits(fit):
    saved, correction.fit_kind = correction.fit_kind, fit
    try:
        yield
    finally:
        correction.fit_kind = saved


def _per_op_errors(frame: pd.DataFrame, judged: list[int], alpha: float) -> np.ndarray:
    choices = [json.loads(c) for c in frame["choice"]]
    ops = sorted({op for c in choices for op in c.values()})
    counts = np.array([[sum(op == o for o in c.values()) for op in ops] for c in choices], float)
    x, y = frame["raw_sum_ms"].to_numpy(), frame["measured_profiled_ms"].to_numpy()
    errors = []
    for i in judged:
        rest = np.arange(len(x)) != i
        model = Ridge(alpha=alpha).fit(counts[rest], (y - x)[rest])
        errors.append(abs(x[i] + model.predict(counts[i : i + 1])[0] - y[i]) / y[i] * 100)
    return np.asarray(errors)


def judge(frame: pd.DataFrame, alpha: float) -> dict[str, np.ndarray]:
    """Held-out errors (%) of each correction on one saved family CSV."""
    x, y = frame["raw_sum_ms"].tolist(), frame["measured_profiled_ms"].tolist()
    fixed = float((frame["predicted_profiled_ms"] - frame["raw_sum_ms"]).median())  # the measured fixed part
    judged = frame.index[frame["kind"] != "teacher"].tolist()
    current, _ = correction.nested_loo_errors(x, y, fixed, judged)
    with _fits(_fit_relative):
        relative, _ = correction.nested_loo_errors(x, y, fixed, judged)
    return {"current": current, "relative": relative, "per-op": _per_op_errors(frame, judged, alpha)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders written by latency_error.py --save")
    parser.add_argument("--alpha", type=float, default=10.0, help="ridge strength of the per-op terms")
    args = parser.parse_args()
    residuals: dict[str, dict[str, pd.Series]] = {}
    for folder in args.folders:
        for path in sorted(folder.glob("*.csv")):
            frame = pd.read_csv(path)
            errors = judge(frame, args.alpha)
            figures = "   ".join(f"{k} {np.median(e):4.1f} / {e.max():4.1f} %" for k, e in errors.items())
            residual = (frame["measured_profiled_ms"] - frame["raw_sum_ms"]).set_axis(frame["choice"])
            residuals.setdefault(path.stem, {})[folder.name] = residual
            print(f"{folder.name:<12} {path.stem:<14} {figures}   residual sd {residual.std():.2f} ms")
    for family, runs in residuals.items():
        names = list(runs)
        pairs = [runs[a].corr(runs[b]) for i, a in enumerate(names) for b in names[i + 1:]
                 if len(runs[a].index.intersection(runs[b].index)) >= 5]
        if pairs:
            print(f"{family}: residual correlation between runs {min(pairs):+.2f} .. {max(pairs):+.2f} ({len(pairs)} pairs)")


if __name__ == "__main__":
    main()
