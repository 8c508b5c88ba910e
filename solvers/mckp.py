"""Exact multiple-choice knapsack solver for one upper-limited cost (``--solver mckp``).

No library needed. Proof of optimality, step by step (docs/solvers.md has the long form):

1. Dominated rows are dropped (``_presolve``): each block becomes a *staircase*, cost and
   score both strictly increasing.
2. LP bound: the relaxation over each block's upper convex hull is solved greedily (hull
   increments taken by decreasing score-per-cost). Its value at any remaining budget is an
   upper bound on what the remaining blocks can add (one concave curve per suffix of blocks).
   The hulls and the sorted increments are cached and reused across budgets (a sweep pays
   for them once).
3. Incumbent: the LP solution rounded down (take increments while they fit).
4. Reduced-cost fixing: with the LP multiplier ``lam``, any selection ``x`` within the limit has
   ``score(x) <= L(lam) - sum_b gap_b(x_b)``, where ``gap_b(j) = max_i r_bi - r_bj`` and
   ``r = score - lam * cost``. A row whose gap exceeds ``L(lam) - incumbent`` cannot be in a
   better selection and is dropped.
5. Dynamic program over blocks keeping every Pareto-optimal (cost, score) partial sum that can
   still fit and whose LP bound still reaches the incumbent. Dropping a dominated partial sum
   is exact (IEEE addition is monotone); dropping one whose bound is below the incumbent is
   exact. The best feasible final state, or the incumbent, is therefore optimal.

All feasibility decisions use the same float sums as :meth:`SelectionProblem.totals`.
"""
from __future__ import annotations

import time

import numpy as np

from lana.errors import ConfigError
from solvers._presolve import drop_dominated
from solvers.base import FEASIBLE, INFEASIBLE, OPTIMAL, Backend, RawResult, register_backend
from solvers.problem import SelectionProblem

MAX_FRONT = 50_000
FRONT_TOO_LARGE = "front too large"


class _Hull:
    """Budget-independent data for one cost column: staircases, hull increments, suffix bounds."""

    def __init__(self, problem: SelectionProblem, name: str):
        cost, score, starts = problem.cost(name), problem.score, problem.block_start
        self.rows, self.cost, self.score = [], [], []
        inc_block, inc_dc, inc_ds, inc_pos = [], [], [], []
        for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
            order = a + np.lexsort((-score[a:z], cost[a:z]))  # staircase after dominance pruning
            c, s = cost[order], score[order]
            self.rows.append(order)
            self.cost.append(c)
            self.score.append(s)
            hull = [0]
            for j in range(1, len(c)):
                while len(hull) >= 2:
                    h0, h1 = hull[-2], hull[-1]
                    if (c[h1] - c[h0]) * (s[j] - s[h0]) - (s[h1] - s[h0]) * (c[j] - c[h0]) >= 0:
                        hull.pop()  # h1 lies on or below the chord h0 -> j
                    else:
                        break
                hull.append(j)
            h = np.array(hull)
            inc_block.append(np.full(len(h) - 1, b))
            inc_dc.append(np.diff(c[h]))
            inc_ds.append(np.diff(s[h]))
            inc_pos.append(h[1:])
        self.min_cost = np.array([c[0] for c in self.cost])
        self.min_score = np.array([s[0] for s in self.score])
        # suffix sums (index d: blocks d..B-1); used with a slack, never for the final check
        self.suffix_cost = np.concatenate([np.cumsum(self.min_cost[::-1])[::-1], [0.0]])
        self.suffix_score = np.concatenate([np.cumsum(self.min_score[::-1])[::-1], [0.0]])
        block = np.concatenate(inc_block) if inc_block else np.zeros(0, int)
        dc, ds = (np.concatenate(inc_dc), np.concatenate(inc_ds)) if inc_block else (np.zeros(0), np.zeros(0))
        pos = np.concatenate(inc_pos) if inc_block else np.zeros(0, int)
        order = np.lexsort((pos, block, -(ds / dc)))  # decreasing efficiency; a block's own order kept
        self.inc_block, self.inc_dc, self.inc_ds, self.inc_pos = block[order], dc[order], ds[order], pos[order]
        self.inc_eff = self.inc_ds / self.inc_dc
        self.scale_cost = float(sum(np.abs(c).max() for c in self.cost)) + 1.0
        self.scale_score = float(sum(np.abs(s).max() for s in self.score)) + 1.0

    def curve(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints (extra budget, extra score) of the LP value of blocks d.. (concave)."""
        mask = self.inc_block >= d
        return (np.concatenate([[0.0], np.cumsum(self.inc_dc[mask])]),
                np.concatenate([[0.0], np.cumsum(self.inc_ds[mask])]))

    def lp_bound(self, d: int, extra: np.ndarray | float) -> np.ndarray | float:
        """Upper bound on the score of blocks d.. given ``extra`` budget above their cheapest rows."""
        return self.suffix_score[d] + np.interp(extra, *self.curve(d))


class MckpBackend(Backend):
    """Exact DP with LP bounds for problems with at most one (upper) limited cost."""

    name = "mckp"
    package = ""
    exact_floats = True

    def available(self) -> bool:
        """Always available (numpy only)."""
        return True

    @staticmethod
    def applicable(problem: SelectionProblem) -> bool:
        """True when at most one cost is limited and only from above."""
        return not problem.lower and len(problem.upper) <= 1

    def solve(self, problem, time_limit=None, forbidden=()):
        """Solve exactly; stops early with the incumbent and its LP bound when the time limit runs
        out or the Pareto front outgrows ``MAX_FRONT`` states (``auto`` then asks a MIP solver)."""
        if forbidden:
            raise RuntimeError("mckp judges feasibility exactly; it is never asked to exclude selections")
        if not self.applicable(problem):
            raise ConfigError(
                f"solver 'mckp' handles one upper-limited cost, found limits on {', '.join(problem.limited)}; "
                f"use --solver auto (or pulp, cpsat, scip)"
            )
        started = time.perf_counter()
        reduced, kept = drop_dominated(problem)
        if not problem.upper:
            best = [a + int(np.argmax(reduced.score[a:z])) for a, z in zip(reduced.block_start[:-1], reduced.block_start[1:])]
            return RawResult(kept[np.array(best, dtype=np.int64)], OPTIMAL)
        name = next(iter(problem.upper))
        key = ("mckp", name)
        if key not in reduced.cache:
            reduced.cache[key] = _Hull(reduced, name)
        raw = _solve_dp(reduced, reduced.cache[key], name, started, time_limit)
        if raw.index is not None:
            raw.index = kept[raw.index]
        return raw


def _solve_dp(problem: SelectionProblem, hull: _Hull, name: str, started: float, time_limit: float | None) -> RawResult:
    offset = problem.offsets.get(name, 0.0)
    cap_exact = problem.upper_cap(name)
    cap = cap_exact - offset + 1e-12 * (hull.scale_cost + abs(cap_exact))  # permissive, for pruning only
    cheapest = np.array([r[0] for r in hull.rows])
    if not problem.totals(cheapest)[problem.cost_names.index(name)] <= cap_exact:
        return RawResult(None, INFEASIBLE)

    # LP at the root: value, multiplier, and the rounded-down incumbent
    extra = cap - hull.suffix_cost[0]
    root_bound = float(hull.lp_bound(0, max(extra, 0.0)))
    xs = hull.curve(0)[0]
    split = int(np.searchsorted(xs, extra, side="right")) - 1  # increments [0, split) fit entirely
    lam = float(hull.inc_eff[split]) if split < len(hull.inc_eff) else 0.0
    incumbent = _round_down(problem, hull, name, cap_exact, offset, extra)
    z_best = problem.objective(incumbent)
    eps = 1e-9 * (hull.scale_score + lam * (hull.scale_cost + abs(cap)))

    # reduced-cost fixing (step 4)
    reduced_value = [s - lam * c for s, c in zip(hull.score, hull.cost)]
    best_reduced = np.array([r.max() for r in reduced_value])
    slack = lam * cap + best_reduced.sum() - z_best + eps
    allowed = [np.flatnonzero(best_reduced[b] - r <= slack) for b, r in enumerate(reduced_value)]

    # dynamic program over blocks (step 5)
    front_cost, front_score = np.zeros(1), np.zeros(1)
    trail = []
    for b in range(problem.n_blocks):
        if time_limit is not None and time.perf_counter() - started > time_limit:
            return RawResult(incumbent, FEASIBLE, max(root_bound, z_best))
        j = allowed[b]
        new_cost = (front_cost[:, None] + hull.cost[b][j][None, :]).ravel()
        new_score = (front_score[:, None] + hull.score[b][j][None, :]).ravel()
        parent = np.repeat(np.arange(len(front_cost)), len(j))
        pick = np.tile(j, len(front_cost))
        room = cap - new_cost - hull.suffix_cost[b + 1]
        live = room >= 0
        live[live] = new_score[live] + hull.lp_bound(b + 1, room[live]) >= z_best - eps
        new_cost, new_score, parent, pick = new_cost[live], new_score[live], parent[live], pick[live]
        order = np.lexsort((-new_score, new_cost))
        sorted_score = new_score[order]
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(sorted_score)[:-1]])
        order = order[sorted_score > best_before]  # Pareto front: cheaper or strictly better
        if len(order) > MAX_FRONT:  # near-collinear rows: the bound cannot prune (subset-sum-like)
            return RawResult(incumbent, FEASIBLE, max(root_bound, z_best), note=FRONT_TOO_LARGE)
        front_cost, front_score = new_cost[order], new_score[order]
        trail.append((parent[order], pick[order]))
        if len(front_cost) == 0:
            return RawResult(incumbent, OPTIMAL)

    feasible = front_cost + offset <= cap_exact  # the canonical check, same float sums
    if not feasible.any() or front_score[feasible].max() <= z_best:
        return RawResult(incumbent, OPTIMAL)
    state = int(np.flatnonzero(feasible)[np.argmax(front_score[feasible])])
    picks = []
    for parent, pick in reversed(trail):
        picks.append(pick[state])
        state = parent[state]
    index = np.array([hull.rows[b][j] for b, j in enumerate(reversed(picks))], dtype=np.int64)
    return RawResult(index, OPTIMAL)


def _round_down(problem: SelectionProblem, hull: _Hull, name: str, cap_exact: float, offset: float,
                extra: float) -> np.ndarray:
    """A feasible selection near the LP optimum: hull increments taken greedily while they fit."""
    position = np.zeros(problem.n_blocks, dtype=np.int64)
    blocked = np.zeros(problem.n_blocks, dtype=bool)
    left = extra - 1e-9 * hull.scale_cost  # stay clear of the limit; the result is checked below
    for b, dc, pos in zip(hull.inc_block.tolist(), hull.inc_dc.tolist(), hull.inc_pos.tolist()):
        if blocked[b]:
            continue
        if dc <= left:
            position[b] = pos
            left -= dc
        else:
            blocked[b] = True
    index = np.array([hull.rows[b][p] for b, p in enumerate(position)], dtype=np.int64)
    if problem.totals(index)[problem.cost_names.index(name)] <= cap_exact:
        return index
    return np.array([r[0] for r in hull.rows], dtype=np.int64)


MCKP = register_backend(MckpBackend())
