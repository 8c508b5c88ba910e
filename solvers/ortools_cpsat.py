"""OR-Tools CP-SAT back-end (``--solver cpsat``).

CP-SAT needs integer coefficients. Scores and costs are scaled by a power of two so the
largest one is about 2**40 and rounded. Limits are rounded *outwards* (each rounded term moves
by at most 1/2, so a right-hand side widened by ``B/2 + 1`` keeps every truly feasible
selection): the integer model is a relaxation, and the shared driver re-checks the answer with
the exact float sums (a no-good cut removes the rare answer that only the rounding admitted).
The objective's rounding moves a selection's score by at most ``B/2`` units of ``2**-40``
times the largest score; the reported bound is widened by that much.
"""
from __future__ import annotations

import math
import os

import numpy as np

from lana.lazy import lazy_import
from solvers.base import FEASIBLE, INFEASIBLE, NOT_SOLVED, OPTIMAL, Backend, RawResult, mip_constraints, register_backend

cp_model = lazy_import("ortools.sat.python.cp_model")  # loaded when used; None if ortools is missing

_BITS = 40


def _scale(values: np.ndarray) -> float:
    """The power of two that brings the largest |value| near 2**40."""
    top = float(np.abs(values).max(initial=0.0))
    return 1.0 if top == 0.0 else 2.0 ** (_BITS - math.ceil(math.log2(top)))


class CpSatBackend(Backend):
    """CP-SAT: exactly-one per block, limits as scaled integer rows."""

    name = "cpsat"
    package = "ortools"

    def available(self) -> bool:
        """True when ortools imports."""
        return cp_model is not None

    def solve(self, problem, time_limit=None, forbidden=()):
        """Build and solve the CP-SAT model; report its proven bound when stopped early."""
        # data
        n_blocks, starts = problem.n_blocks, problem.block_start
        score_scale = _scale(problem.score)
        score = np.rint(problem.score * score_scale).astype(np.int64).tolist()
        # model
        model = cp_model.CpModel()
        # variables: x[block, op], op = row position inside its block
        x = [model.new_bool_var(f"x[{b},{j}]") for b, (a, z) in enumerate(zip(starts[:-1], starts[1:]))
             for j in range(z - a)]
        # constraints, each named
        for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
            model.add_exactly_one(x[a:z]).with_name(f"one_op_{b}")
        for name, sense, coef, rhs in mip_constraints(problem):
            scale = _scale(coef)
            ints = np.rint(coef * scale).astype(np.int64)
            reach_low, reach_high = int(ints[ints < 0].sum()), int(ints[ints > 0].sum())
            expr = cp_model.LinearExpr.weighted_sum(x, ints.tolist())
            widen = n_blocks / 2 + 1
            if sense == "<=":
                limit = rhs * scale + widen
                if limit < reach_high:  # otherwise the row can never bind
                    model.add(expr <= math.floor(limit)).with_name(name)
            else:
                limit = rhs * scale - widen
                if limit > reach_low:
                    model.add(expr >= math.ceil(limit)).with_name(name)
        for i, index in enumerate(forbidden):
            model.add(sum(x[r] for r in index) <= n_blocks - 1).with_name(f"cut_{i}")
        # objective
        model.maximize(cp_model.LinearExpr.weighted_sum(x, score))
        # solve
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = max(1, min(8, os.cpu_count() or 1))
        if time_limit is not None:
            solver.parameters.max_time_in_seconds = max(float(time_limit), 1e-3)
        status = solver.solve(model)
        # status check: OPTIMAL vs FEASIBLE said explicitly
        if status == cp_model.INFEASIBLE:
            return RawResult(None, INFEASIBLE)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if status == cp_model.MODEL_INVALID:
                raise RuntimeError(f"CP-SAT rejected the model: {model.validate()}")
            return RawResult(None, NOT_SOLVED)
        values = np.array(solver.response_proto.solution, dtype=np.int64)[: len(x)]
        index = np.array([a + int(np.argmax(values[a:z])) for a, z in zip(starts[:-1], starts[1:])], dtype=np.int64)
        if status == cp_model.OPTIMAL:
            return RawResult(index, OPTIMAL)
        bound = (solver.best_objective_bound + n_blocks / 2) / score_scale
        return RawResult(index, FEASIBLE, bound)


CPSAT = register_backend(CpSatBackend())
