"""One entry point over every back-end: reductions, exact re-checks, explanations, top-k, sweeps."""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from lana.errors import InfeasibleError, SolverUnavailableError
from solvers._presolve import drop_dominated, drop_unreachable, lagrangian_gaps
from solvers.base import (
    DEFAULT_SOLVER,
    INFEASIBLE,
    OPTIMAL,
    Backend,
    NoSelectionFoundError,
    RawResult,
    available_solvers,
    registered_backends,
)
from solvers.problem import Selection, SelectionProblem, make_selection

AUTO = "auto"
MAX_CUTS = 100


def resolve_solver(name: str) -> Backend:
    """The back-end called ``name``.

    Raises:
        SolverUnavailableError: unknown name, or its library is not installed.
    """
    backends = registered_backends()
    if name not in backends:
        raise SolverUnavailableError(f"unknown solver '{name}'; expected one of: {', '.join(backends)}")
    backend = backends[name]
    if not backend.available():
        raise SolverUnavailableError(
            f"solver '{name}' needs the Python package '{backend.package}', which is not installed; "
            f"run `pip install {backend.package}` or use one of: {', '.join(available_solvers())}"
        )
    return backend


def solve_selection(problem: SelectionProblem, solver: str = DEFAULT_SOLVER, time_limit: float | None = None,
                    prune: bool = True, explain: bool = True) -> Selection:
    """Best selection of one candidate per block under the problem's limits.

    Args:
        problem: the selection problem.
        solver: a back-end name (see :func:`available_solvers`) or ``auto``.
        time_limit: seconds; when it runs out the best selection found so far is returned
            with ``optimal=False`` and its proven ``gap``.
        prune: drop dominated and unreachable rows first (exact; off only to measure it).
        explain: on infeasibility, find the limit to blame and its best reachable value (may
            cost one more solve); off, the InfeasibleError just says so.
    Returns:
        The selection; ``optimal`` is True only when optimality was proven.
    Raises:
        InfeasibleError: no selection meets the limits (the message names the limit and the
            least reachable value of it).
        NoSelectionFoundError: the time limit ran out before any feasible selection was found.
        SolverUnavailableError: unknown solver or missing library.
    """
    started = time.perf_counter()
    backend = resolve_solver(solver)
    work, rows = problem, np.arange(len(problem.score))
    if prune:
        work, rows = drop_dominated(problem)
        if backend.wants_reachability_pruning(work):
            reduced = drop_unreachable(work)
            if reduced is None:
                raise diagnose_infeasible(problem, solver) if explain else InfeasibleError("no selection meets the limits")
            work, rows = reduced[0], rows[reduced[1]]
            raw = _solve_fixed(backend, work, time_limit, started)
        else:
            raw = _solve_checked(backend, work, time_limit, started)
    else:
        raw = _solve_checked(backend, work, time_limit, started)
    if raw.index is None:
        if raw.status == INFEASIBLE:
            raise diagnose_infeasible(problem, solver) if explain else InfeasibleError("no selection meets the limits")
        raise NoSelectionFoundError(
            f"no selection within the limits was found in the {time_limit:g} s time limit; raise --time-limit or drop it"
        )
    return make_selection(problem, rows[raw.index], optimal=raw.status == OPTIMAL, bound=raw.bound,
                          solver=f"{backend.name}:{raw.engine}" if raw.engine else backend.name,
                          seconds=time.perf_counter() - started)


def _solve_checked(backend: Backend, problem: SelectionProblem, time_limit: float | None, started: float) -> RawResult:
    """Solve, then re-check the answer with the exact float sums; cut off answers that break a limit."""
    forbidden: list[np.ndarray] = []
    for _ in range(MAX_CUTS):
        left = None if time_limit is None else max(time_limit - (time.perf_counter() - started), 1e-3)
        raw = backend.solve(problem, left, forbidden)
        if raw.index is None or not problem.violated(problem.totals(raw.index)):
            return raw
        if backend.exact_floats:
            raise RuntimeError(f"{backend.name} returned a selection that breaks a limit")
        forbidden.append(raw.index)  # admitted only by the solver's tolerance: exclude and re-solve
    raise RuntimeError(f"{backend.name} kept returning selections that break a limit")


def _solve_fixed(backend: Backend, problem: SelectionProblem, time_limit: float | None, started: float) -> RawResult:
    """Solve with Lagrangian reduced-cost fixing, exactly.

    Rows whose gap exceeds ``delta`` are left out; a selection using one scores below
    ``L - delta`` (see :func:`lagrangian_gaps`). If the reduced problem's optimum reaches
    ``L - delta`` it is the optimum; otherwise ``delta`` grows to ``L - found`` (that round is
    exact) or, when nothing was found, tenfold until no row is left out.
    """
    fixing = lagrangian_gaps(problem) if len(problem.score) > 2 * problem.n_blocks else None
    if fixing is None:
        return _solve_checked(backend, problem, time_limit, started)
    gaps, bound = fixing
    eps = 1e-9 * (abs(bound) + float(np.abs(problem.score).max()) * problem.n_blocks + 1.0)
    positive = np.sort(gaps[gaps > eps])
    delta = float(positive[min(problem.n_blocks, len(positive)) - 1]) if len(positive) else 0.0
    while True:
        keep = gaps <= delta + eps
        reduced = None if keep.all() else problem.restrict(keep)
        if keep.all():
            return _solve_checked(backend, problem, time_limit, started)
        raw = RawResult(None, INFEASIBLE) if reduced is None else _solve_checked(backend, reduced[0], time_limit, started)
        if raw.index is not None:
            value = reduced[0].objective(raw.index)
            raw.index = reduced[1][raw.index]
            if raw.status != OPTIMAL:  # out of time: rows left out score below bound - delta
                raw.bound = bound if raw.bound is None else min(bound, max(raw.bound, bound - delta))
                return raw
            if value >= bound - delta - eps:
                return raw
            delta = bound - value
        elif raw.status == INFEASIBLE:
            delta = max(10.0 * delta, eps)
        else:
            return raw


def min_total(problem: SelectionProblem, cost: str) -> float:
    """Least reachable total of one cost column (offset included), ignoring every limit."""
    return float(problem.min_totals()[problem.cost_names.index(cost)])


@dataclass
class LimitReport:
    """Why a problem is infeasible: the limit, and the best value of its cost that can be reached."""

    cost: str
    kind: str  # "upper" or "lower"
    limit: float
    reachable: float
    held_upper: dict[str, float] = field(default_factory=dict)  # limits kept while computing ``reachable``
    held_lower: dict[str, float] = field(default_factory=dict)  # (both empty: the limit fails on its own)

    @property
    def others(self) -> tuple[str, ...]:
        """The held limits, written ``cost<=value`` / ``cost>=value``."""
        return (*(f"{k}<={v:.6g}" for k, v in self.held_upper.items()), *(f"{k}>={v:.6g}" for k, v in self.held_lower.items()))

    def message(self) -> str:
        """One line: the limit, what can be reached, and what to do."""
        word, verb = ("least", "raise it to at least") if self.kind == "upper" else ("largest", "lower it to at most")
        side = "below" if self.kind == "upper" else "above"
        fix = f"{verb} {round_outward(self.reachable, self.kind)}"
        if not self.others:
            return f"{self.cost} limit {self.limit:.4g} is {side} the {word} reachable {self.reachable:.6g}; {fix}"
        held = ", ".join(self.others)
        return (f"{self.cost} limit {self.limit:.4g} cannot be met together with {held}: under them the "
                f"{word} reachable {self.cost} is {self.reachable:.6g}; {fix} or loosen {held}")


def round_outward(value: float, kind: str, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, rounded up for upper limits (down for lower)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    unit = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    rounded = (math.ceil if kind == "upper" else math.floor)(value / unit - 1e-9 * (1 if kind == "upper" else -1)) * unit
    return f"{rounded:.{digits}g}"


def diagnose_infeasible(problem: SelectionProblem, solver: str = AUTO) -> InfeasibleError:
    """The error for an infeasible problem, naming one limit that cannot be met and the best reachable value.

    A limit that fails on its own is named first; otherwise the first limit is reported with
    the best value of its cost reachable under all the other limits (an exact solve).
    """
    least, most = problem.min_totals(), problem.max_totals()
    report = None
    for k, name in enumerate(problem.cost_names):
        if name in problem.upper and not least[k] <= problem.upper_cap(name):
            report = LimitReport(name, "upper", problem.upper[name], float(least[k]))
        elif name in problem.lower and not most[k] >= problem.lower_cap(name):
            report = LimitReport(name, "lower", problem.lower[name], float(most[k]))
        if report:
            break
    if report is None:
        name = problem.limited[0]
        kind = "upper" if name in problem.upper else "lower"
        limit = problem.upper[name] if kind == "upper" else problem.lower[name]
        report = LimitReport(name, kind, limit, *best_reachable(problem, name, kind, solver))
    error = InfeasibleError(report.message())
    error.report = report
    return error


def best_reachable(problem: SelectionProblem, cost: str, kind: str = "upper",
                   solver: str = AUTO) -> tuple[float, dict[str, float], dict[str, float]]:
    """Least (``kind="upper"``) or largest (``"lower"``) reachable total of ``cost`` under the
    problem's other limits, by an exact solve that optimises that cost.

    Returns:
        The total (offset included) and the upper and lower limits that were held.
    Raises:
        InfeasibleError: the other limits cannot be met together (explained in turn).
    """
    upper = {k: v for k, v in problem.upper.items() if not (k == cost and kind == "upper")}
    lower = {k: v for k, v in problem.lower.items() if not (k == cost and kind == "lower")}
    if not upper and not lower:
        totals = problem.min_totals() if kind == "upper" else problem.max_totals()
        return float(totals[problem.cost_names.index(cost)]), upper, lower
    sign = -1.0 if kind == "upper" else 1.0
    best = solve_selection(problem.with_limits(upper, lower, score=sign * problem.cost(cost)), solver)
    return best.totals[cost], upper, lower


def top_k_selections(problem: SelectionProblem, k: int, solver: str = DEFAULT_SOLVER,
                     time_limit: float | None = None) -> list[Selection]:
    """The ``k`` best distinct selections, best first (fewer if fewer exist).

    Lawler-Murty partitioning: after a selection is taken, the rest of its sub-space is split
    into disjoint sub-spaces (block 1 differs; block 1 same and block 2 differs; ...), each a
    smaller problem any back-end solves. Sub-spaces are disjoint, so no two answers are equal;
    each sub-space is solved only when its parent's value (an upper bound) tops the queue.
    With a ``time_limit`` (per solve) the order holds only among selections proven optimal.
    """
    first = solve_selection(problem, solver, time_limit)
    counter = 0
    queue = [(-first.objective, counter, np.ones(len(problem.score), dtype=bool), first, np.array(first.index))]
    found: list[Selection] = []
    starts = problem.block_start
    while queue and len(found) < k:
        key, _, allowed, selection, index = heapq.heappop(queue)
        if selection is None:  # solve a sub-space whose parent's value was only its bound
            sub = problem.restrict(allowed)
            if sub is None:
                continue
            try:
                selection = solve_selection(sub[0], solver, time_limit, explain=False)
            except (InfeasibleError, NoSelectionFoundError):  # the latter only under a time limit
                continue
            index = sub[1][np.array(selection.index)]
            selection = replace(selection, index=tuple(int(i) for i in index))
            counter += 1
            heapq.heappush(queue, (-selection.objective, counter, allowed, selection, index))
            continue
        found.append(selection)
        fixed = allowed.copy()
        for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
            if fixed[a:z].sum() <= 1:
                continue
            child = fixed.copy()
            child[index[b]] = False
            counter += 1
            heapq.heappush(queue, (key, counter, child, None, None))
            fixed[a:z] = False
            fixed[index[b]] = True
    return found


def sweep_budgets(problem: SelectionProblem, cost: str, budgets: list[float], solver: str = DEFAULT_SOLVER,
                  time_limit: float | None = None) -> list[Selection | InfeasibleError]:
    """Solve for each budget on ``cost``; infeasible budgets give their InfeasibleError in place.

    Dominance pruning and the exact DP's hulls depend only on the rows, so they are computed
    once for the whole sweep (the problems share one cache).
    """
    out: list[Selection | InfeasibleError] = []
    for budget in budgets:
        try:
            out.append(solve_selection(problem.with_limits(upper={**problem.upper, cost: float(budget)}), solver, time_limit))
        except InfeasibleError as error:
            out.append(error)
    return out


def brute_force(problem: SelectionProblem) -> Selection:
    """The optimum by enumerating every selection (tiny problems only; no pruning)."""
    return solve_selection(problem, "brute", prune=False)
