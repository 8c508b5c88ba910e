"""The selection ILP: one neutral problem type and interchangeable back-ends.

>>> problem = SelectionProblem.from_frame(df, upper={"latency_ms": 5.0})
>>> sel = solve_selection(problem, solver="auto")

Back-ends (each in its own file, each saying whether it is ``available()``): ``pulp`` (CBC),
``cpsat`` (OR-Tools CP-SAT), ``scip`` (OR-Tools with SCIP), ``mckp`` (exact dynamic program for
one latency-like limit, numpy only), ``brute`` (enumeration, tiny problems). ``auto`` picks
``mckp`` where it applies and a MIP solver otherwise.
"""
from solvers.base import Backend, NoSelectionFoundError, RawResult, available_solvers, register_backend, registered_backends
from solvers.problem import Selection, SelectionProblem, standard_cost_columns
# importing a back-end registers it; this order is the order users see
from solvers import pulp_cbc as _pulp, ortools_cpsat as _cpsat, ortools_mip as _mip  # noqa: F401
from solvers import mckp as _mckp, auto as _auto, brute as _brute  # noqa: F401
from solvers.brute import enumerate_selections
from solvers.driver import (
    AUTO, LimitReport, best_reachable, brute_force, diagnose_infeasible, min_total, resolve_solver, round_outward,
    solve_selection, sweep_budgets, top_k_selections,
)

__all__ = [
    "AUTO", "Backend", "LimitReport", "NoSelectionFoundError", "RawResult", "Selection", "SelectionProblem",
    "available_solvers", "best_reachable", "brute_force", "diagnose_infeasible", "enumerate_selections", "min_total",
    "register_backend", "registered_backends", "resolve_solver", "round_outward", "solve_selection",
    "standard_cost_columns", "sweep_budgets", "top_k_selections",
]
