"""Exact reductions done before any back-end sees a problem.

Both reductions only drop rows that cannot be in a better selection than one kept, so the
optimum of the reduced problem is an optimum of the original:

* dominance: a row no better in score and no better in every limited cost than another row
  of its block is dropped (ties: the earlier row stays). "Better" in a cost means smaller for
  an upper limit, larger for a lower limit, and equal where a cost has both. Rounding cannot
  break this: ``t + a <= t + b`` whenever ``a <= b`` in IEEE arithmetic, so a dominating row
  completes every partial sum at least as well as the row it replaces.
* reachability: a row that breaks a limit even when every other block takes its extreme
  (cheapest) row is dropped; a small slack keeps rows at the boundary.
"""
from __future__ import annotations

import numpy as np

from solvers.problem import SelectionProblem


def dominance_directions(problem: SelectionProblem) -> dict[str, int]:
    """Per limited cost: +1 smaller is better, -1 larger is better, 0 only equal rows compare."""
    directions = {}
    for name in problem.limited:
        up, low = name in problem.upper, name in problem.lower
        directions[name] = 0 if (up and low) else (1 if up else -1)
    return directions


def drop_dominated(problem: SelectionProblem) -> tuple[SelectionProblem, np.ndarray]:
    """Remove dominated rows; returns the reduced problem and its rows' local indices in ``problem``."""
    key = ("dominated", tuple(sorted(dominance_directions(problem).items())))
    if key not in problem.cache:
        keep = _dominance_mask(problem)
        reduced, rows = problem.restrict(keep)
        problem.cache[key] = (reduced, rows)
    reduced, rows = problem.cache[key]
    # limits may differ from those the cached reduction was made under (same directions)
    return reduced.with_limits(problem.upper, problem.lower), rows


def _dominance_mask(problem: SelectionProblem) -> np.ndarray:
    directions = dominance_directions(problem)
    keep = np.zeros(len(problem.score), dtype=bool)
    starts = problem.block_start
    if len(directions) <= 1:
        # one (or no) limited cost: sort by cost, keep rows that beat every cheaper one
        name, sign = next(iter(directions.items()), (None, 1))
        cost = problem.cost(name) * (sign or 1) if name else np.zeros_like(problem.score)
        for a, b in zip(starts[:-1], starts[1:]):
            c, s = cost[a:b], problem.score[a:b]
            order = np.lexsort((np.arange(b - a), -s, c))
            if sign == 0:  # cost with both limits: only equal costs compare
                first = np.ones(b - a, dtype=bool)
                first[1:] = c[order][1:] != c[order][:-1]
                keep[a + order[first]] = True
                continue
            ss = s[order]
            best_before = np.concatenate([[-np.inf], np.maximum.accumulate(ss)[:-1]])
            keep[a + order[ss > best_before]] = True
        return keep
    signed = [(problem.cost(n) * (sign or 1), sign) for n, sign in directions.items()]
    for a, b in zip(starts[:-1], starts[1:]):
        s = problem.score[a:b]
        no_worse = s[None, :] >= s[:, None]  # [i, j]: j no worse than i
        strictly = s[None, :] > s[:, None]
        for c, sign in signed:
            c = c[a:b]
            if sign == 0:
                no_worse &= c[None, :] == c[:, None]
            else:
                no_worse &= c[None, :] <= c[:, None]
                strictly |= c[None, :] < c[:, None]
        idx = np.arange(b - a)
        dominated = (no_worse & (strictly | (idx[None, :] < idx[:, None]))).any(axis=1)
        keep[a:b] = ~dominated
    return keep


def drop_unreachable(problem: SelectionProblem) -> tuple[SelectionProblem, np.ndarray] | None:
    """Remove rows that break a limit whatever the other blocks choose.

    Returns None when some block has no reachable row (the problem is infeasible).
    """
    keep = np.ones(len(problem.score), dtype=bool)
    block = problem.block_of_rows()
    starts = problem.block_start[:-1]
    for name in problem.limited:
        c = problem.cost(name)
        slack = 1e-9 * (float(np.abs(c).max(initial=0.0)) * problem.n_blocks + 1.0)
        offset = problem.offsets.get(name, 0.0)
        if name in problem.upper:
            least = np.minimum.reduceat(c, starts)
            keep &= c + (least.sum() - least[block]) + offset <= problem.upper_cap(name) + slack
        if name in problem.lower:
            most = np.maximum.reduceat(c, starts)
            keep &= c + (most.sum() - most[block]) + offset >= problem.lower_cap(name) - slack
    if keep.all():
        return problem, np.arange(len(keep))
    return problem.restrict(keep)


def lagrangian_gaps(problem: SelectionProblem) -> tuple[np.ndarray, float] | None:
    """Reduced-cost gaps of every row and the Lagrangian bound ``L`` they refer to.

    With multipliers ``lam >= 0`` on upper limits and ``mu >= 0`` on lower limits, every
    selection ``x`` that meets the limits has ``score(x) <= L - sum_b gap_b(x_b)``, where
    ``r = score - lam.cost_upper + mu.cost_lower``, ``gap_b(j) = max_i r_bi - r_bj`` and
    ``L = sum_b max_i r_bi + lam.(upper - offset) - mu.(lower - offset)``. This holds for any
    non-negative multipliers; the LP relaxation's duals (OR-Tools GLOP) make ``L`` tight.
    Returns None when no LP solver is installed or the LP fails (callers skip the reduction).
    """
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:
        return None
    names = [(name, 1.0) for name in problem.upper] + [(name, -1.0) for name in problem.lower]
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None or not names:
        return None
    x = [lp.NumVar(0.0, 1.0, "") for _ in range(len(problem.score))]
    for a, z in zip(problem.block_start[:-1], problem.block_start[1:]):
        row = lp.Constraint(1.0, 1.0)
        for v in x[a:z]:
            row.SetCoefficient(v, 1.0)
    rows, limits = [], []
    for name, sign in names:
        cap = problem.upper_cap(name) if sign > 0 else problem.lower_cap(name)
        limit = sign * (cap - problem.offsets.get(name, 0.0))
        row = lp.Constraint(-lp.infinity(), limit)
        for v, c in zip(x, (sign * problem.cost(name)).tolist()):
            row.SetCoefficient(v, c)
        rows.append(row)
        limits.append(limit)
    objective = lp.Objective()
    for v, s in zip(x, problem.score.tolist()):
        objective.SetCoefficient(v, s)
    objective.SetMaximization()
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    lam = np.array([max(row.dual_value(), 0.0) for row in rows])
    signed = np.vstack([sign * problem.cost(name) for name, sign in names])
    reduced = problem.score - lam @ signed
    best = np.maximum.reduceat(reduced, problem.block_start[:-1])
    bound = float(best.sum() + lam @ np.array(limits))
    return best[problem.block_of_rows()] - reduced, bound
