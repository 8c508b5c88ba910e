"""One device as a proxy for another ("latency monotonicity", as in OneProxy / HELP).

Given candidate latencies on a *proxy* (e.g. this CPU) and on a *target* (e.g. the GPU the
network ships on), this module says how far the proxy can be trusted:

- rank agreement: Spearman's rho of candidate latencies within each block (what the solver
  trades off) and over all rows;
- a correction: from a few candidates also measured on the target, one factor per op
  family (median ratio target / proxy; families without samples take the overall one);
- the decision test: selections made on the (corrected) proxy at several budgets, judged
  on the target: does each stay on the target's Pareto front (no selection with at most
  its target latency scores better)?

When to trust a proxy (docs/latency.md): per-block rho ≥ 0.9 in every block that matters and
all proxy selections on the target's front (score gap ≈ 0); below that, measure on the
target (``lana profile --bundle``) instead.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lana.errors import InfeasibleError, TableError
from solvers import SelectionProblem, solve_selection


def _spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties averaged, as scipy's ``spearmanr``)."""
    return float(a.rank().corr(b.rank()))


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    if name not in table.columns:
        latency = [c for c in table.columns if str(c).startswith("latency_ms")]
        raise TableError(f"no column '{name}' in the table; latency columns are {', '.join(latency) or 'none'}")
    return table[name].astype(float)


def rank_correlation(table: pd.DataFrame, proxy: str, target: str) -> dict:
    """Spearman rank correlation of ``proxy`` vs ``target`` latencies, per block and overall.

    Returns:
        ``{"overall": rho, "per_block": {block: rho}, "median_block": rho, "worst_block": (block, rho)}``;
        blocks with fewer than 3 candidates or constant latencies are left out.
    """
    x, y = _column(table, proxy), _column(table, target)
    per_block = {}
    for block, rows in table.groupby("block", sort=False):
        a, b = x[rows.index], y[rows.index]
        if len(rows) >= 3 and a.nunique() > 1 and b.nunique() > 1:
            per_block[str(block)] = _spearman(a, b)
    overall = _spearman(x, y)
    worst = min(per_block.items(), key=lambda kv: kv[1]) if per_block else (None, math.nan)
    return {"overall": overall, "per_block": per_block,
            "median_block": float(np.median(list(per_block.values()))) if per_block else math.nan, "worst_block": worst}


def fit_family_correction(table: pd.DataFrame, proxy: str, target: str, samples: pd.Index) -> dict[str, float]:
    """Per op family, the median ratio target / proxy over the sampled rows (``"*"``: all samples).

    Args:
        table: rows with ``family`` and both latency columns (target known at least on ``samples``).
        samples: the rows measured on the target.
    """
    rows = table.loc[samples]
    ratio = _column(rows, target) / _column(rows, proxy)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.empty:
        raise TableError("no usable target samples (need rows with positive proxy and target latencies)")
    factors = {"*": float(np.exp(np.log(ratio).median()))}
    for family, values in ratio.groupby(rows.loc[ratio.index, "family"]):
        factors[str(family)] = float(np.exp(np.log(values).median()))
    return factors


def apply_family_correction(table: pd.DataFrame, proxy: str, factors: dict[str, float]) -> pd.Series:
    """The proxy column scaled by its family's factor (the overall one for unsampled families)."""
    scale = table["family"].astype(str).map(factors).fillna(factors["*"])
    return _column(table, proxy) * scale


def _solve(table: pd.DataFrame, column: str, budget: float):

    problem = SelectionProblem.from_frame(table, costs=[column], upper={column: budget})
    return solve_selection(problem, "auto")


def pareto_check(table: pd.DataFrame, proxy: str, target: str, shares: list[float], tolerance: float = 1e-6) -> pd.DataFrame:
    """Solve on the proxy at budgets, then judge each selection on the target.

    For a budget that is ``share`` of the teacher's summed proxy latency, the selection's
    target latency ``T`` and score ``S`` are compared with the best score reachable on the
    target within ``T``: the selection is on the target's Pareto front when none is better.

    Returns:
        One row per share: budget, proxy and target latency, score, best target score within
        ``T``, the gap and ``on_front``.
    """

    frame = table[table["score"].notna()].reset_index(drop=True)
    teacher = frame[frame["candidate"] == "teacher"]
    reference = float(_column(teacher, proxy).sum()) if len(teacher) == frame["block"].nunique() else float(
        frame.groupby("block")[proxy].max().sum())
    rows = []
    for share in shares:
        try:
            picked = _solve(frame, proxy, share * reference)
        except InfeasibleError:
            continue
        chosen = frame.loc[picked.rows] if len(picked.rows) else frame.iloc[:0]
        target_ms = float(_column(chosen, target).sum())
        best = _solve(frame, target, target_ms * (1 + 1e-9))
        gap = best.objective - picked.objective
        rows.append({"share": share, "proxy_budget_ms": share * reference, "proxy_ms": float(_column(chosen, proxy).sum()),
                     "target_ms": target_ms, "score": picked.objective, "best_target_score": best.objective,
                     "score_gap": gap, "on_front": gap <= tolerance * max(1.0, abs(best.objective))})
    return pd.DataFrame(rows)


def proxy_report(table: pd.DataFrame, proxy: str, target: str, samples: int = 0, seed: int = 0,
                 shares: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """Rank agreement, and (with ``samples``) a per-family correction fitted on that many target rows.

    The Pareto test runs on the raw proxy and, with a correction, on the corrected proxy.

    Returns:
        ``{"rank": ..., "pareto_raw": DataFrame, "correction": factors or None, "pareto_corrected": ...,
        "corrected_error_pct": {"median", "worst"} on rows not sampled}``.
    """
    if "block" not in table.columns:
        raise TableError("the table has no 'block' column: the proxy report compares latencies within each block "
                         "(a lana candidates table has one)")
    rows = table[np.isfinite(_column(table, proxy)) & np.isfinite(_column(table, target))].reset_index(drop=True)
    report: dict = {"proxy": proxy, "target": target, "rows": len(rows), "rank": rank_correlation(rows, proxy, target),
                    "pareto_raw": pareto_check(rows, proxy, target, list(shares)) if "score" in rows else None,
                    "correction": None}
    if samples:
        if "family" not in rows.columns:
            raise TableError("a per-family correction needs a 'family' column in the table")
        picked = rows.sample(n=min(samples, len(rows)), random_state=seed).index
        factors = fit_family_correction(rows, proxy, target, picked)
        corrected = rows.assign(latency_ms_corrected=apply_family_correction(rows, proxy, factors))
        rest = corrected.drop(index=picked)
        error = ((rest["latency_ms_corrected"] - _column(rest, target)).abs() / _column(rest, target) * 100)
        report.update({"correction": factors, "samples": len(picked),
                       "corrected_error_pct": {"median": float(error.median()), "worst": float(error.max())} if len(rest) else None,
                       "pareto_corrected": pareto_check(corrected, "latency_ms_corrected", target, list(shares))
                       if "score" in rows else None})
    return report
