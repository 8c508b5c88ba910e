"""Solver speed on random problems shaped like lana's candidate tables.

    .venv/bin/python -m benchmarks.solver_bench            # the figures in docs/solvers.md
    .venv/bin/python -m benchmarks.solver_bench --quick    # fewer repeats, no naive models

Models: "pruned" is ``solve_selection`` as lana calls it (dominance pruning, then the exact DP
or Lagrangian-fixed MIP); "naive" hands every row to the solver (``prune=False``); "table"
also builds the problem from a pandas DataFrame, as ``lana solve --table`` does.

Each block has a teacher row (score 0) and candidates whose latency is a random share of the
teacher block's, with a score that drops faster the faster the op (plus noise), as distilled
candidates do. The budget is 50 % of the teacher's summed latency. Timings are wall clock and
include model building and pruning (``solve_selection`` from a built ``SelectionProblem``);
the median over the repeats is printed, each repeat on a fresh random problem.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from solvers import SelectionProblem, solve_selection, sweep_budgets
from solvers.driver import min_total


def random_problem(blocks: int, candidates: int, seed: int, share: float = 0.5) -> SelectionProblem:
    """A table-shaped random problem: row 0 of each block is the teacher (score 0)."""
    rng = np.random.default_rng(seed)
    teacher = rng.uniform(0.05, 0.5, size=blocks)  # ms per block
    sensitivity = rng.lognormal(0.0, 1.0, size=blocks)
    ratio = rng.uniform(0.05, 1.3, size=(blocks, candidates))
    ratio[:, 0] = 1.0
    score = -sensitivity[:, None] * np.clip(1.0 - ratio, 0.0, None) ** 1.5
    score += rng.normal(-0.05, 0.05, size=score.shape) * sensitivity[:, None]  # mostly a loss, a few small gains
    score[:, 0] = 0.0
    latency = teacher[:, None] * ratio
    params = rng.uniform(1e3, 1e5, size=(blocks, candidates)) * ratio
    budget = share * float(teacher.sum())
    return SelectionProblem.from_arrays(
        [candidates] * blocks, score.ravel(), {"latency_ms": latency.ravel(), "params": params.ravel()},
        upper={"latency_ms": budget},
    )


def _time(run, repeats: int) -> tuple[float, bool]:
    walls, proven = [], True
    for seed in range(repeats):
        wall, ok = run(seed)
        walls.append(wall)
        proven &= ok
    return statistics.median(walls), proven


def bench_one(blocks: int, candidates: int, solver: str, prune: bool, repeats: int) -> tuple[float, bool]:
    """Median wall seconds of one solve, and whether every repeat was proven optimal."""
    def run(seed):
        problem = random_problem(blocks, candidates, seed)
        start = time.perf_counter()
        selection = solve_selection(problem, solver, prune=prune)
        return time.perf_counter() - start, selection.optimal
    return _time(run, repeats)


def bench_sweep(blocks: int, candidates: int, solver: str, points: int, repeats: int) -> tuple[float, bool]:
    """Median wall seconds of a whole ``points``-budget sweep from the fastest latency to the teacher's."""
    def run(seed):
        problem = random_problem(blocks, candidates, seed)
        start = time.perf_counter()
        teacher = float(problem.cost("latency_ms")[problem.block_start[:-1]].sum())
        budgets = np.linspace(min_total(problem, "latency_ms"), teacher, points)
        results = sweep_budgets(problem, "latency_ms", list(budgets), solver)
        return time.perf_counter() - start, all(getattr(r, "optimal", False) for r in results)
    return _time(run, repeats)


def bench_multi(blocks: int, candidates: int, solver: str, repeats: int) -> tuple[float, bool]:
    """Latency budget plus a params limit (the MIP path of ``auto``)."""
    def run(seed):
        problem = random_problem(blocks, candidates, seed)
        params = problem.cost("params")
        cap = 0.4 * float(params[problem.block_start[:-1]].sum())
        problem = problem.with_limits(upper={**problem.upper, "params": cap})
        start = time.perf_counter()
        selection = solve_selection(problem, solver)
        return time.perf_counter() - start, selection.optimal
    return _time(run, repeats)


def bench_from_frame(blocks: int, candidates: int, repeats: int) -> tuple[float, bool]:
    """What ``lana solve --table`` pays: a DataFrame to a problem, then ``auto``."""
    def run(seed):
        problem = random_problem(blocks, candidates, seed)
        frame = pd.DataFrame({"block": np.repeat([f"block{b}" for b in range(blocks)], candidates),
                              "candidate": [f"op{j}" for j in range(candidates)] * blocks, "score": problem.score,
                              "latency_ms": problem.cost("latency_ms"), "params": problem.cost("params")})
        start = time.perf_counter()
        built = SelectionProblem.from_frame(frame, upper=problem.upper)
        selection = solve_selection(built, "auto")
        return time.perf_counter() - start, selection.optimal
    return _time(run, repeats)


TARGETS = {("100x500", "1 limit"): 0.5, ("50x200", "1 limit"): 0.1, ("50x200", "50-budget sweep"): 3.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 repeats, skip the naive (unpruned) models")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    rows = []
    for blocks, candidates in ((100, 500), (50, 200)):
        shape = f"{blocks}x{candidates}"
        for solver in ("auto", "pulp", "cpsat", "scip"):
            rows.append((shape, "1 limit", solver, "pruned", *bench_one(blocks, candidates, solver, True, repeats)))
        if not args.quick:
            for solver in ("pulp", "cpsat"):
                rows.append((shape, "1 limit", solver, "naive", *bench_one(blocks, candidates, solver, False, 3)))
    rows.append(("100x500", "1 limit", "auto", "table", *bench_from_frame(100, 500, repeats)))
    for blocks, candidates in ((200, 1000), (400, 500)):  # 10^600 and 10^1080 selections
        rows.append((f"{blocks}x{candidates}", "1 limit", "auto", "pruned", *bench_one(blocks, candidates, "auto", True, repeats)))
    rows.append(("50x200", "50-budget sweep", "auto", "pruned", *bench_sweep(50, 200, "auto", 50, repeats)))
    rows.append(("100x500", "50-budget sweep", "auto", "pruned", *bench_sweep(100, 500, "auto", 50, repeats)))
    for solver in ("auto", "pulp", "cpsat", "scip"):
        rows.append(("100x500", "latency + params", solver, "pruned", *bench_multi(100, 500, solver, repeats)))
    print(f"random problems, median wall seconds over {repeats} repeats (naive: 3); 100x500 = 10^270 selections")
    print(f"{'shape':<9} {'limits':<17} {'solver':<7} {'model':<7} {'median wall s':>13} {'proven optimal':>15} {'target':>9}")
    for shape, limits, solver, model, wall, proven in rows:
        target = TARGETS.get((shape, limits)) if model != "naive" else None
        verdict = "" if target is None else f"{'<=' if wall <= target else '>'} {target:g}"
        print(f"{shape:<9} {limits:<17} {solver:<7} {model:<7} {wall:>13.3f} {str(proven):>15} {verdict:>9}")


if __name__ == "__main__":
    main()
