"""The interface every solver back-end implements, the registry, and the shared MIP rows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lana.errors import LanaError
from lana.names import DEFAULT_SOLVER  # noqa: F401 (re-exported: the back-ends' default)
from solvers.problem import SelectionProblem

OPTIMAL, FEASIBLE, INFEASIBLE, NOT_SOLVED = "optimal", "feasible", "infeasible", "not_solved"


class NoSelectionFoundError(LanaError):
    """The time limit ran out before any feasible selection was found."""


@dataclass
class RawResult:
    """What a back-end returns: local rows (one per block) or None, a status, a proven bound."""

    index: np.ndarray | None
    status: str
    bound: float | None = None
    engine: str = ""  # the solver that produced it, when a back-end delegates (``auto``)
    note: str = ""  # why a result is not proven optimal, when not the time limit


class Backend:
    """One solver back-end. Subclasses set ``name``/``package`` and implement ``solve``.

    ``exact_floats`` back-ends judge feasibility by the canonical float sum themselves; the
    others (MIP solvers with their own tolerances) are checked afterwards and re-solved with a
    no-good cut when an answer breaks a limit by more than :data:`REL_TOL`.
    """

    name = ""
    package = ""
    exact_floats = False

    def available(self) -> bool:
        """True when the library this back-end needs can be imported."""
        raise NotImplementedError

    def solve(self, problem: SelectionProblem, time_limit: float | None = None,
              forbidden: list[np.ndarray] = ()) -> RawResult:
        """Solve ``problem``; never return a selection listed in ``forbidden``."""
        raise NotImplementedError

    def wants_reachability_pruning(self, problem: SelectionProblem) -> bool:
        """Whether the driver should drop unreachable rows first (MIP models get smaller)."""
        return not self.exact_floats


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a back-end to the registry (names are unique)."""
    if backend.name in _BACKENDS:
        raise ValueError(f"solver back-end '{backend.name}' is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def registered_backends() -> dict[str, Backend]:
    """All registered back-ends by name, available or not."""
    return dict(_BACKENDS)


def available_solvers() -> list[str]:
    """Names of the back-ends whose library is installed."""
    return [name for name, b in _BACKENDS.items() if b.available()]


def mip_constraints(problem: SelectionProblem) -> list[tuple[str, str, np.ndarray, float]]:
    """The limit rows every MIP back-end states: ``(name, sense, coefficients, rhs)``.

    Each row is divided by its largest coefficient (solvers prefer rows of unit scale); the
    right-hand side is the limit with its tolerance, minus the offset. ``sense`` is ``<=``/``>=``.
    """
    rows = []
    for kind, limits, cap, sense in (("max", problem.upper, problem.upper_cap, "<="),
                                     ("min", problem.lower, problem.lower_cap, ">=")):
        for i, name in enumerate(limits):
            coef = problem.cost(name)
            scale = float(np.abs(coef).max()) or 1.0
            rhs = (cap(name) - problem.offsets.get(name, 0.0)) / scale
            rows.append((f"{kind}_{i}_{_safe(name)}", sense, coef / scale, rhs))
    return rows


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
