"""Every solver back-end against brute-force enumeration, plus the problem type and the driver.

``SolverContract`` holds the shared tests; each back-end's class subclasses it (PuLP style),
so a new back-end is tested by adding three lines.
"""
from __future__ import annotations

import itertools
import math
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lana.errors import ConfigError, InfeasibleError, SolverUnavailableError, TableError
from solvers import (
    SelectionProblem,
    available_solvers,
    brute_force,
    enumerate_selections,
    min_total,
    registered_backends,
    solve_selection,
    sweep_budgets,
    top_k_selections,
)
from solvers._presolve import drop_dominated

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors], derandomize=True
)
FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors], derandomize=True
)


# -- problems --------------------------------------------------------------------------
@st.composite
def problems(draw, several_limits: bool = True, dyadic: bool = True, wide: bool = False):
    """Small random problems: ties, zero and negative scores, single-candidate blocks,
    budgets around the reachable range (some infeasible), offsets; optionally a params limit
    and a lower bound. ``wide``: 2-4 blocks of 6-14 candidates (the Lagrangian fixing acts)."""
    sizes = draw(st.lists(st.integers(6, 14), min_size=2, max_size=4) if wide else st.lists(st.integers(1, 5), min_size=1, max_size=5))
    n = sum(sizes)
    if dyadic:  # exact in binary: every sum is exact, so ties are real ties
        score = np.array(draw(st.lists(st.integers(-8, 8), min_size=n, max_size=n))) / 4
        latency = np.array(draw(st.lists(st.integers(0, 32), min_size=n, max_size=n))) / 8
    else:
        score = np.array(draw(st.lists(st.floats(-10, 10, allow_subnormal=False), min_size=n, max_size=n)))
        latency = np.array(draw(st.lists(st.floats(0, 5, allow_subnormal=False), min_size=n, max_size=n)))
    params = np.array(draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), dtype=float)
    offset = draw(st.sampled_from([0.5, 0.0, -0.25]))
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]

    def around(values: np.ndarray, base: float = 0.0) -> float:
        low, high = np.minimum.reduceat(values, starts).sum(), np.maximum.reduceat(values, starts).sum()
        share = draw(st.integers(-2, 10)) / 8  # below 0: infeasible on its own
        value = base + low + share * (high - low)
        return value if dyadic else draw(st.sampled_from([value, value * (1 + 1e-12), float(np.nextafter(value, -np.inf))]))

    upper = {"latency_ms": around(latency, offset)} if draw(st.sampled_from([True, True, True, False])) else {}
    lower = {}
    if several_limits and draw(st.booleans()):
        upper["params"] = float(round(around(params)))
    if several_limits and draw(st.booleans()):
        lower["params"] = float(round(around(params) * 0.5))
    return SelectionProblem.from_arrays(sizes, score, {"latency_ms": latency, "params": params},
                                       upper=upper, lower=lower, offsets={"latency_ms": offset})


def random_problem(blocks: int, candidates: int, seed: int, share: float = 0.5) -> SelectionProblem:
    """A larger table-like problem (score falls as latency falls, plus noise)."""
    rng = np.random.default_rng(seed)
    ratio = rng.uniform(0.05, 1.3, size=(blocks, candidates))
    score = -np.clip(1 - ratio, 0, None) ** 1.5 * rng.lognormal(0, 1, size=(blocks, 1)) + rng.normal(0, 0.05, ratio.shape)
    latency = rng.uniform(0.05, 0.5, size=(blocks, 1)) * ratio
    return SelectionProblem.from_arrays([candidates] * blocks, score.ravel(), {"latency_ms": latency.ravel()},
                                       upper={"latency_ms": share * float(latency[:, 0].sum() / ratio[:, 0].mean())})


def collinear_problem(blocks: int = 30, candidates: int = 10) -> SelectionProblem:
    """Score exactly proportional to latency: subset-sum-like, hard for every exact method."""
    rng = np.random.default_rng(0)
    latency = rng.random(blocks * candidates)
    return SelectionProblem.from_arrays([candidates] * blocks, 2 * latency, {"latency_ms": latency},
                                       upper={"latency_ms": blocks * 0.5})


def scale(problem: SelectionProblem) -> float:
    return float(sum(np.abs(problem.score[a:z]).max() for a, z in zip(problem.block_start[:-1], problem.block_start[1:]))) + 1.0


def assert_valid(problem: SelectionProblem, selection) -> None:
    """The selection picks one row per block, meets every limit and adds up as it says."""
    index = np.array(selection.index)
    assert len(index) == problem.n_blocks
    assert all(a <= r < z for r, a, z in zip(index, problem.block_start[:-1], problem.block_start[1:]))
    assert problem.violated(problem.totals(index)) == []
    assert selection.objective == problem.objective(index)
    assert list(selection.choice) == list(problem.blocks)
    assert selection.rows == [int(problem.source_rows[r]) for r in index]
    if selection.optimal:
        assert selection.gap == 0.0
    else:
        assert selection.gap is None or selection.gap >= 0


# -- the shared contract ---------------------------------------------------------------
class SolverContract:
    """Tests every back-end must pass. Subclasses set ``solver`` (and ``several_limits``)."""

    solver = ""
    several_limits = True
    rel_tol = 1e-9

    def close(self, a: float, b: float, problem: SelectionProblem) -> bool:
        return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.rel_tol * scale(problem))

    def check_against_brute_force(self, problem: SelectionProblem, prune: bool = True) -> None:
        try:
            best = brute_force(problem)
        except InfeasibleError:
            with pytest.raises(InfeasibleError) as caught:
                solve_selection(problem, self.solver, prune=prune)
            self.check_explanation(problem, caught.value.report)
            return
        selection = solve_selection(problem, self.solver, prune=prune)
        assert_valid(problem, selection)
        assert selection.optimal
        assert self.close(selection.objective, best.objective, problem), (selection, best)

    def check_explanation(self, problem: SelectionProblem, report) -> None:
        """The reported value is the best one of that cost reachable under the other limits."""
        sign = 1.0 if report.kind == "upper" else -1.0
        aux = problem.with_limits(report.held_upper, report.held_lower, score=-sign * problem.cost(report.cost))
        objective, feasible, _ = enumerate_selections(aux)
        assert feasible.any()
        assert self.close(report.reachable, -sign * objective[feasible].max() + problem.offsets.get(report.cost, 0.0), problem)
        limit = problem.upper[report.cost] if report.kind == "upper" else problem.lower[report.cost]
        assert report.limit == limit and (report.reachable - limit) * sign > 0

    @FAST
    @given(data=st.data())
    def test_matches_brute_force(self, data):
        self.check_against_brute_force(data.draw(problems(self.several_limits)))

    @FEW
    @given(data=st.data())
    def test_matches_brute_force_without_pruning(self, data):
        self.check_against_brute_force(data.draw(problems(self.several_limits)), prune=False)

    @FEW
    @given(data=st.data())
    def test_matches_brute_force_with_many_candidates(self, data):
        self.check_against_brute_force(data.draw(problems(self.several_limits, dyadic=data.draw(st.booleans()), wide=True)))

    @FEW
    @given(data=st.data())
    def test_matches_brute_force_on_arbitrary_floats(self, data):
        self.check_against_brute_force(data.draw(problems(self.several_limits, dyadic=False)))

    def test_single_candidate_blocks_and_zero_scores(self):
        problem = SelectionProblem.from_arrays([1, 3, 1], [0.0, 0.0, -1.0, 0.0, 0.0], {"latency_ms": [1.0, 2.0, 1.0, 3.0, 1.0]},
                                               upper={"latency_ms": 5.0})
        selection = solve_selection(problem, self.solver)
        assert selection.objective == 0.0 and selection.totals["latency_ms"] <= 5.0
        assert selection.choice == {"b0": "c0", "b1": "c0", "b2": "c0"}

    def test_infeasible_budget_names_the_least_reachable_value(self):
        problem = SelectionProblem.from_arrays([2, 2], [0.0, -1.0, 0.0, -1.0], {"latency_ms": [2.0, 1.0, 2.0, 1.5]},
                                               upper={"latency_ms": 2.0}, offsets={"latency_ms": 0.25})
        with pytest.raises(InfeasibleError) as caught:
            solve_selection(problem, self.solver)
        assert caught.value.report.reachable == min_total(problem, "latency_ms") == 2.75
        message = str(caught.value)
        assert "latency_ms" in message and "2.75" in message and "\n" not in message

    def test_limits_that_fail_only_together_are_explained(self):
        # fast rows are big, small rows are slow: each limit alone is fine, both together are not
        problem = SelectionProblem.from_arrays([2, 2], [0.0] * 4, {"latency_ms": [1.0, 3.0, 1.0, 3.0], "params": [9.0, 1.0, 9.0, 1.0]},
                                               upper={"latency_ms": 3.0, "params": 5.0})
        if not self.several_limits:
            with pytest.raises(ConfigError):
                solve_selection(problem, self.solver)
            return
        with pytest.raises(InfeasibleError) as caught:
            solve_selection(problem, self.solver)
        report = caught.value.report
        assert (report.cost, report.others, report.reachable) == ("latency_ms", ("params<=5",), 6.0)
        assert "params" in str(caught.value)

    @FEW
    @given(data=st.data())
    def test_top_k_is_distinct_and_matches_enumeration(self, data):
        problem = data.draw(problems(self.several_limits))
        k = data.draw(st.integers(1, 6))
        objective, feasible, _ = enumerate_selections(problem)
        expected = np.sort(objective[feasible])[::-1][:k]
        if len(expected) == 0:
            with pytest.raises(InfeasibleError):
                top_k_selections(problem, k, self.solver)
            return
        found = top_k_selections(problem, k, self.solver)
        assert len(found) == len(expected)
        assert len({s.index for s in found}) == len(found), "two selections are identical"
        for selection, value in zip(found, expected):
            assert_valid(problem, selection)
            assert self.close(selection.objective, value, problem)

    def test_time_limit_returns_a_feasible_selection_with_its_gap(self):
        problem = collinear_problem()
        started = time.perf_counter()
        selection = solve_selection(problem, self.solver, time_limit=0.3)
        assert time.perf_counter() - started < 5.0
        assert_valid(problem, selection)
        # Whether 0.3 s suffices to prove optimality depends on the machine; the contract does
        # not: optimal means bound == objective, otherwise the bound says how far off it may be.
        assert selection.bound is not None and selection.bound >= selection.objective - 1e-9
        if selection.optimal:
            assert selection.bound == selection.objective
        assert selection.gap == pytest.approx(selection.bound - selection.objective, abs=1e-12)

    def test_agrees_with_the_exact_dp_on_a_larger_problem(self):
        problem = random_problem(25, 40, seed=3)
        reference = solve_selection(problem, "mckp")
        selection = solve_selection(problem, self.solver)
        assert_valid(problem, selection)
        assert selection.optimal and reference.optimal
        assert math.isclose(selection.objective, reference.objective, rel_tol=1e-9)


class TestPulp(SolverContract):
    solver = "pulp"


class TestCpSat(SolverContract):
    solver = "cpsat"


class TestScip(SolverContract):
    solver = "scip"


class TestAuto(SolverContract):
    solver = "auto"


class TestMckp(SolverContract):
    solver = "mckp"
    several_limits = False


class TestBrute(SolverContract):
    solver = "brute"

    def test_time_limit_returns_a_feasible_selection_with_its_gap(self):
        with pytest.raises(ConfigError):  # enumeration refuses large problems instead
            solve_selection(collinear_problem(), self.solver, time_limit=0.3)

    def test_agrees_with_the_exact_dp_on_a_larger_problem(self):
        with pytest.raises(ConfigError, match="at most 2,000,000 selections"):  # too large to enumerate: refused
            solve_selection(random_problem(25, 40, seed=3), self.solver)

    @FEW
    @given(data=st.data())
    def test_matches_brute_force_without_pruning(self, data):
        # brute_force() is this back-end itself: the reference here is a plain walk over every selection
        problem = data.draw(problems(self.several_limits))
        best = naive_optimum(problem)
        if best is None:
            with pytest.raises(InfeasibleError):
                solve_selection(problem, self.solver, prune=False)
            return
        selection = solve_selection(problem, self.solver, prune=False)
        assert_valid(problem, selection)
        assert selection.optimal and self.close(selection.objective, best, problem)


def naive_optimum(problem: SelectionProblem) -> float | None:
    """The best objective over every selection (itertools.product and the problem's own totals and
    limits, no numpy broadcasting); None when no selection is feasible."""
    blocks = [range(a, z) for a, z in zip(problem.block_start[:-1], problem.block_start[1:])]
    values = [problem.objective(np.array(rows)) for rows in itertools.product(*blocks)
              if not problem.violated(problem.totals(np.array(rows)))]
    return max(values, default=None)


# -- the problem type ------------------------------------------------------------------
def test_from_frame_keeps_block_order_drops_nan_rows_and_maps_rows_back():
    df = pd.DataFrame({
        "block": ["z", "z", "a", "a", "z"],
        "candidate": ["teacher", "fast", "teacher", "broken", "skip"],
        "score": [0.0, -0.5, 0.0, float("nan"), -2.0],
        "latency_ms": [2.0, 1.0, 3.0, 0.1, 0.2],
    }, index=[10, 11, 12, 13, 14])
    problem = SelectionProblem.from_frame(df, upper={"latency_ms": 4.5}, offsets={"latency_ms": 0.5})
    assert problem.blocks == ("z", "a")
    assert list(problem.sizes) == [3, 1]
    selection = solve_selection(problem, "auto")
    assert selection.choice == {"z": "fast", "a": "teacher"}
    assert selection.rows == [1, 2]  # positions in df, not its index labels
    assert selection.totals["latency_ms"] == 4.5  # offset included
    assert min_total(problem, "latency_ms") == 0.2 + 3.0 + 0.5


@pytest.mark.parametrize("frame, fragment", [
    (pd.DataFrame({"block": ["a"], "candidate": ["t"], "score": [float("nan")], "latency_ms": [1.0]}), "block 'a' has no candidate"),
    (pd.DataFrame({"block": ["a", "a"], "candidate": ["t", "t"], "score": [0.0, 1.0], "latency_ms": [1.0, 1.0]}), "appears 2 times"),
    (pd.DataFrame({"block": ["a"], "candidate": ["t"], "score": [0.0]}), "lacks column(s) 'latency_ms'"),
    (pd.DataFrame({"block": ["a"], "candidate": ["t"], "score": ["high"], "latency_ms": [1.0]}), "must be numeric"),
])
def test_bad_tables_are_one_line_table_errors(frame, fragment):
    with pytest.raises(TableError) as caught:
        SelectionProblem.from_frame(frame, upper={"latency_ms": 1.0})
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_and_missing_solvers_say_what_to_do(monkeypatch):
    problem = random_problem(3, 4, seed=0)
    with pytest.raises(SolverUnavailableError, match="unknown solver 'gurobi'; expected one of: pulp, cpsat, scip"):
        solve_selection(problem, "gurobi")
    monkeypatch.setattr(type(registered_backends()["cpsat"]), "available", lambda self: False)
    with pytest.raises(SolverUnavailableError, match=r"pip install ortools"):
        solve_selection(problem, "cpsat")
    assert "cpsat" not in available_solvers()


@FAST
@given(problem=problems())
def test_dominance_pruning_keeps_the_optimum(problem):
    reduced, rows = drop_dominated(problem)
    assert set(problem.candidates[rows]) <= set(problem.candidates)
    objective, feasible, _ = enumerate_selections(problem)
    objective_r, feasible_r, _ = enumerate_selections(reduced)
    assert feasible.any() == feasible_r.any()
    if feasible.any():
        assert objective[feasible].max() == objective_r[feasible_r].max()


def test_sweep_is_monotone_and_equals_single_solves():
    problem = random_problem(20, 30, seed=1)
    fastest = min_total(problem, "latency_ms")
    budgets = list(np.linspace(fastest * 0.9, fastest * 3, 8))
    results = sweep_budgets(problem, "latency_ms", budgets, "auto")
    assert isinstance(results[0], InfeasibleError)
    values = [r.objective for r in results[1:]]
    assert values == sorted(values)
    for budget, result in zip(budgets[1:], results[1:]):
        single = solve_selection(problem.with_limits(upper={"latency_ms": budget}), "cpsat")
        assert math.isclose(result.objective, single.objective, rel_tol=1e-9, abs_tol=1e-12)
        assert result.totals["latency_ms"] <= budget * (1 + 1e-9)


def test_exact_dp_gives_up_on_collinear_data_and_auto_falls_back():
    problem = collinear_problem(20, 10)
    alone = solve_selection(problem, "mckp", time_limit=5)
    assert not alone.optimal and alone.gap is not None
    routed = solve_selection(problem, "auto", time_limit=1.0)
    assert routed.solver.startswith("auto:") and routed.solver != "auto:mckp"


def test_out_of_time_is_reported_as_not_optimal_with_its_gap(monkeypatch):
    """The running-out-of-time path, made certain by a clock that jumps a second per reading."""
    ticks = iter(range(10**6))
    monkeypatch.setattr("solvers.mckp.time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    problem = random_problem(25, 40, seed=3)
    selection = solve_selection(problem, "mckp", time_limit=0.3)
    exact = solve_selection(problem, "cpsat")
    assert_valid(problem, selection)
    assert not selection.optimal and exact.optimal
    assert selection.objective < exact.objective <= selection.bound + 1e-9  # incumbent, optimum, bound
    assert selection.gap == pytest.approx(selection.bound - selection.objective, abs=1e-12) and selection.gap > 0


def test_large_search_space_is_solved_exactly_and_fast():
    problem = random_problem(100, 500, seed=7)
    assert problem.search_space() > 250  # 500**100 selections
    selection = solve_selection(problem, "auto")
    assert selection.optimal and selection.solver == "auto:mckp"
    assert selection.seconds < 2.0  # 0.02 s typical; generous for a loaded machine
