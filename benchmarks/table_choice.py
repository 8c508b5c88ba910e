"""lana's selection at one table budget of the quality benchmark, as its pipeline makes it.

The benchmark searches lana's table budget into the band like every method's knob
(:mod:`benchmarks.search`); at each budget lana keeps what :func:`lana.stages.choose.solve_and_choose`
keeps: the solver's ``solve.top_k`` best selections (here inside a window under the budget),
assembled and compared on validation images no swap-one score used (:func:`choice_split`).
"""
from __future__ import annotations

import torch

from lana.data import take_tensors
from lana.distill.validation import validation_counts, validation_order
from lana.errors import InfeasibleError
from lana.run.context import Context
from lana.selection import LATENCY, Limits, build_problem, solve_inputs
from lana.stages.choose import measure_selections, ranked


def solve_in_window(inputs, table_ms: float, low: float, solver: str = "auto", top_k: int = 1) -> list[dict[str, str]]:
    """lana's ``top_k`` best selections at table budget ``table_ms``, best first: the solver's
    best predicted within ``[low × table_ms, table_ms]`` (the window random's draws use), else
    its best under ``table_ms``.

    Without the floor the best selection can jump from one table budget to the next and
    leave the band between them unreachable (seen at 0.3× and 0.5× of ResNet-18-D, 2026-12-05).
    """
    problem, limits = build_problem(inputs, f"{table_ms:.9f}ms")  # 6 decimals could round the fastest knob below reach
    floored = Limits(limits.upper, {LATENCY: low * table_ms}, limits.budget_text)
    try:
        record = solve_inputs(inputs, problem.with_limits(floored.upper, floored.lower), floored, solver, top_k=top_k)
    except InfeasibleError:
        record = solve_inputs(inputs, problem, limits, solver, top_k=top_k)
    return [r["choice"] for r in record.get("top_k") or [record]]


def rank_in_window(ctx: Context, inputs, table_ms: float, low: float, solver: str = "auto",
                   picked: dict | None = None) -> list[dict[str, str]]:
    """lana's ``solve.top_k`` best selections inside the window of :func:`solve_in_window`,
    assembled and compared on the choice images as its pipeline does
    (:func:`lana.stages.choose.solve_and_choose`): best first, the one that keeps the teacher's
    outputs best. ``picked`` remembers each selection's figures across calls (a search's table
    budgets share most of their k selections), so each is assembled and measured once."""
    choices = solve_in_window(inputs, table_ms, low, solver, ctx.config.solve.top_k)
    if len(choices) == 1:
        return choices
    picked = {} if picked is None else picked
    keys = [tuple(sorted(c.items())) for c in choices]
    new = [(key, c) for key, c in zip(keys, choices) if key not in picked]
    if new:
        picked.update(zip((key for key, _ in new), measure_selections(ctx, [{"choice": c} for _, c in new])))
    return [choices[i] for i in ranked([picked[key] for key in keys], ctx.config.score.metric)]


def choose_in_window(ctx: Context, inputs, table_ms: float, low: float, solver: str = "auto",
                     picked: dict | None = None) -> dict[str, str]:
    """lana's selection as its pipeline makes it: the first of :func:`rank_in_window`."""
    return rank_in_window(ctx, inputs, table_ms, low, solver, picked)[0]


def choice_split(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images no swap-one score used (all but the scoring part of
    :func:`lana.distill.validation.split_validation`'s order): choices use these."""
    x, y = take_tensors(ctx.splits.val)
    scored = validation_counts(len(x), ctx.config.score)[0]
    rest = torch.tensor(sorted(validation_order(ctx.splits.val)[scored:]))
    return x[rest], y[rest]
