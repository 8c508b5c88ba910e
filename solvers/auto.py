"""The ``auto`` back-end: the exact DP (``mckp``) where it applies, a MIP solver otherwise.

``mckp`` applies when at most one cost is limited, from above (the usual ``--budget``). With
several limits, or when the DP's Pareto front outgrows its cap on near-collinear data, the
first installed MIP solver of ``MIP_ORDER`` solves the (already pruned) problem.
"""
from __future__ import annotations

import time

from lana.errors import SolverUnavailableError
from solvers.base import OPTIMAL, Backend, RawResult, registered_backends, register_backend
from solvers.mckp import FRONT_TOO_LARGE, MCKP

MIP_ORDER = ("pulp", "cpsat", "scip")


class AutoBackend(Backend):
    """Picks the fastest exact method for the problem at hand."""

    name = "auto"
    package = ""

    def available(self) -> bool:
        """Always available: the DP needs numpy only (several limits need a MIP library)."""
        return True

    def wants_reachability_pruning(self, problem) -> bool:
        """Only the MIP path profits; the DP keeps its per-sweep cache instead."""
        return not MCKP.applicable(problem)

    def solve(self, problem, time_limit=None, forbidden=()):
        """Solve with the DP, or a MIP solver when the DP does not apply or gives up."""
        started = time.perf_counter()
        if not forbidden and MCKP.applicable(problem):
            raw = MCKP.solve(problem, time_limit)
            raw.engine = MCKP.name
            if raw.status == OPTIMAL or raw.note != FRONT_TOO_LARGE:
                return raw
            if time_limit is not None:
                time_limit = max(time_limit - (time.perf_counter() - started), 1e-3)
        else:
            raw = None
        mip = _first_mip()
        fallback = mip.solve(problem, time_limit, forbidden)
        fallback.engine = mip.name
        if raw is None or fallback.status == OPTIMAL:
            return fallback
        # both stopped early: keep the better selection and the tighter proven bound
        best = raw if fallback.index is None or problem.objective(raw.index) >= problem.objective(fallback.index) else fallback
        bounds = [b for b in (raw.bound, fallback.bound) if b is not None]
        return RawResult(best.index, best.status, min(bounds) if bounds else None, engine=best.engine)


def _first_mip() -> Backend:
    backends = registered_backends()
    for name in MIP_ORDER:
        if backends[name].available():
            return backends[name]
    raise SolverUnavailableError("solver 'auto' needs a MIP library for several limits; run `pip install pulp` or `pip install ortools`")


AUTO = register_backend(AutoBackend())
