"""OR-Tools linear-solver back-end with SCIP, the MIP solver bundled in the ortools wheel
(``--solver scip``). The relative gap limit is set to 0 (pywraplp's default is 1e-4, which
would stop before optimality is proven)."""
from __future__ import annotations

import numpy as np

from lana.lazy import lazy_import
from solvers.base import FEASIBLE, INFEASIBLE, NOT_SOLVED, OPTIMAL, Backend, RawResult, mip_constraints, register_backend

pywraplp = lazy_import("ortools.linear_solver.pywraplp")  # loaded when used; None if ortools is missing


class ScipBackend(Backend):
    """SCIP through pywraplp: binary x[block, op], one per block, one row per limit."""

    name = "scip"
    package = "ortools"
    engine = "SCIP"

    def available(self) -> bool:
        """True when ortools imports and was built with SCIP."""
        return pywraplp is not None and pywraplp.Solver.CreateSolver(self.engine) is not None

    def solve(self, problem, time_limit=None, forbidden=()):
        """Build and solve the MIP; report SCIP's best bound when stopped by the time limit."""
        # data
        starts = problem.block_start
        constraints = mip_constraints(problem)
        # model
        solver = pywraplp.Solver.CreateSolver(self.engine)
        infinity = solver.infinity()
        # variables: x[block, op], op = row position inside its block
        x = [solver.BoolVar(f"x[{b},{j}]") for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])) for j in range(z - a)]
        # constraints, each named
        for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
            row = solver.Constraint(1.0, 1.0, f"one_op_{b}")
            for v in x[a:z]:
                row.SetCoefficient(v, 1.0)
        for name, sense, coef, rhs in constraints:
            row = solver.Constraint(-infinity, rhs, name) if sense == "<=" else solver.Constraint(rhs, infinity, name)
            for v, c in zip(x, coef.tolist()):
                row.SetCoefficient(v, c)
        for i, index in enumerate(forbidden):
            row = solver.Constraint(-infinity, problem.n_blocks - 1.0, f"cut_{i}")
            for r in index:
                row.SetCoefficient(x[r], 1.0)
        # objective
        objective = solver.Objective()
        for v, s in zip(x, problem.score.tolist()):
            objective.SetCoefficient(v, s)
        objective.SetMaximization()
        # solve
        if time_limit is not None:
            solver.SetTimeLimit(max(1, int(time_limit * 1000)))
        params = pywraplp.MPSolverParameters()
        params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
        status = solver.Solve(params)
        # status check: OPTIMAL vs FEASIBLE said explicitly
        if status == pywraplp.Solver.INFEASIBLE:
            return RawResult(None, INFEASIBLE)
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return RawResult(None, NOT_SOLVED)
        values = np.array([v.solution_value() for v in x])
        index = np.array([a + int(np.argmax(values[a:z])) for a, z in zip(starts[:-1], starts[1:])], dtype=np.int64)
        if status == pywraplp.Solver.OPTIMAL:
            return RawResult(index, OPTIMAL)
        return RawResult(index, FEASIBLE, objective.BestBound())


SCIP = register_backend(ScipBackend())
