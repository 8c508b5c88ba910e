"""PuLP back-end: the CBC branch-and-cut solver bundled with PuLP (``--solver pulp``)."""
from __future__ import annotations

import functools
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from lana.lazy import lazy_import
from solvers.base import FEASIBLE, INFEASIBLE, NOT_SOLVED, OPTIMAL, Backend, RawResult, mip_constraints, register_backend

pulp = lazy_import("pulp")  # loaded when used; None if PuLP is missing (said only when this back-end is used)

_BEST_POSSIBLE = re.compile(r"best possible (-?[0-9.]+(?:e[-+]?\d+)?)")


@functools.lru_cache(maxsize=1)
def _cbc():
    """A CBC command solver (bundled binary first, then one on PATH), or None."""
    if pulp is None:
        return None
    bundled = pulp.COIN_CMD(path=pulp.PULP_CBC_CMD.pulp_cbc_path, msg=False)
    if bundled.available():
        return pulp.PULP_CBC_CMD.pulp_cbc_path
    return "cbc" if pulp.COIN_CMD(msg=False).available() else None


class PulpBackend(Backend):
    """CBC through PuLP: binary x[block, op], one per block, one row per limit."""

    name = "pulp"
    package = "pulp"

    def available(self) -> bool:
        """True when PuLP imports and a CBC binary runs."""
        return _cbc() is not None

    def solve(self, problem, time_limit=None, forbidden=()):
        """Build and solve the MIP; report CBC's best bound when stopped by the time limit."""
        # data
        constraints = mip_constraints(problem)
        starts = problem.block_start
        # model
        model = pulp.LpProblem("lana_selection", pulp.LpMaximize)
        # variables: x[block, op], op = row position inside its block
        new_var = getattr(model, "add_variable", None) or pulp.LpVariable  # PuLP >= 3 spelling first
        x = [new_var(f"x_{b}_{j}", cat=pulp.LpBinary) for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])) for j in range(z - a)]
        # constraints, each named
        for b, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
            model += pulp.LpAffineExpression([(v, 1.0) for v in x[a:z]]) == 1, f"one_op_{b}"
        for name, sense, coef, rhs in constraints:
            expr = pulp.LpAffineExpression(list(zip(x, coef.tolist())))
            model += (expr <= rhs if sense == "<=" else expr >= rhs), name
        for i, index in enumerate(forbidden):
            model += pulp.LpAffineExpression([(x[r], 1.0) for r in index]) <= problem.n_blocks - 1, f"cut_{i}"
        # objective
        model += pulp.LpAffineExpression(list(zip(x, problem.score.tolist())))
        # solve
        with tempfile.TemporaryDirectory(prefix="lana-cbc-") as tmp:
            log_path = os.path.join(tmp, "cbc.log")
            solver = pulp.COIN_CMD(path=_cbc(), msg=False, timeLimit=time_limit, gapRel=0, gapAbs=0,
                                   logPath=log_path, threads=1)
            model.solve(solver)
            log = Path(log_path).read_text() if os.path.exists(log_path) else ""
        # status check: OPTIMAL vs FEASIBLE said explicitly
        if model.status == pulp.LpStatusInfeasible:
            return RawResult(None, INFEASIBLE)
        if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return RawResult(None, NOT_SOLVED)
        values = np.array([v.varValue or 0.0 for v in x])
        index = np.array([a + int(np.argmax(values[a:z])) for a, z in zip(starts[:-1], starts[1:])], dtype=np.int64)
        if model.sol_status == pulp.LpSolutionOptimal:
            return RawResult(index, OPTIMAL)
        return RawResult(index, FEASIBLE, _best_possible(log))


def _best_possible(log: str) -> float | None:
    """CBC's last proven bound (it minimises the negated score), widened by its print rounding
    (CBC prints 8 significant digits; one more digit of margin is kept)."""
    found = _BEST_POSSIBLE.findall(log)
    if not found:
        return None
    value = -float(found[-1])
    return value + 10.0 ** (math.floor(math.log10(abs(value))) - 6) if value else 1e-9


PULP = register_backend(PulpBackend())
