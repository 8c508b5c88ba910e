"""Brute-force enumeration (``--solver brute``): the reference every back-end is tested against.

Every selection is enumerated with numpy broadcasting; totals are summed in block order from
``0.0`` with the offset last, exactly as :meth:`SelectionProblem.totals` does.
"""
from __future__ import annotations

import numpy as np

from lana.errors import ConfigError
from solvers.base import INFEASIBLE, OPTIMAL, Backend, RawResult, register_backend
from solvers.problem import SelectionProblem

MAX_SELECTIONS = 2_000_000


def enumerate_selections(problem: SelectionProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All selections: (objective, feasible, local rows per selection), flattened.

    Raises:
        ConfigError: more than 2,000,000 selections.
    """
    count = float(np.prod(problem.sizes.astype(float)))
    if count > MAX_SELECTIONS:
        raise ConfigError(f"brute force enumerates at most {MAX_SELECTIONS:,} selections, this problem has {count:.3g}; "
                          f"use --solver auto")
    starts = problem.block_start
    score = np.zeros(())
    totals = [np.zeros(()) for _ in problem.cost_names]
    for a, z in zip(starts[:-1], starts[1:]):
        score = score[..., None] + problem.score[a:z]
        totals = [t[..., None] + problem.costs[k, a:z] for k, t in enumerate(totals)]
    feasible = np.ones(score.shape, dtype=bool)
    for k, name in enumerate(problem.cost_names):
        total = totals[k] + problem.offsets.get(name, 0.0)
        if name in problem.upper:
            feasible &= total <= problem.upper_cap(name)
        if name in problem.lower:
            feasible &= total >= problem.lower_cap(name)
    positions = np.indices(score.shape).reshape(problem.n_blocks, -1).T + starts[:-1]
    return score.ravel(), feasible.ravel(), positions


class BruteForceBackend(Backend):
    """Enumerates every selection; for tiny problems and tests."""

    name = "brute"
    package = ""
    exact_floats = True

    def available(self) -> bool:
        """Always available (numpy only)."""
        return True

    def solve(self, problem, time_limit=None, forbidden=()):
        """The best feasible selection (the first one among ties)."""
        objective, feasible, positions = enumerate_selections(problem)
        if not feasible.any():
            return RawResult(None, INFEASIBLE)
        best = np.flatnonzero(feasible)[np.argmax(objective[feasible])]
        return RawResult(positions[best], OPTIMAL)


BRUTE = register_backend(BruteForceBackend())
