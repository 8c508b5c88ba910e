"""lana against the alternatives at equal measured latency (``benchmarks/quality.py``).

For one teacher: train it (unless its checkpoint exists), run lana's distill stage, then at
each budget (a share of the teacher's *measured* latency) build four students and give
each the same fine-tuning by distillation from the teacher:

1. ``lana``: the solver's selection from the candidates table;
2. ``torch-pruning``: Torch-Pruning's magnitude pruner, pruned until measured latency meets the budget;
3. ``width``: the teacher's family at the widest width multiplier that meets the budget,
   trained from scratch with the teacher's recipe (with distillation) before the same fine-tune;
4. ``random``: uniform random selections from the same candidates table that meet the budget.

Budgets are held as measured shares of the teacher's latency, each network timed
interleaved with the teacher (:func:`lana.baselines.measure_share`), so drift of the
machine between measurements cancels out. lana and random selections are held to them
too: where the assembled network measures above its share (by more than ``tolerance``),
the table budget is scaled by the measured ratio and the selection drawn again, before any
fine-tuning. At the end every network of the teacher is timed again, all interleaved with
the teacher, and those figures are the ones reported.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks.baselines import (
    measure_share,
    prune_sweep,
    random_selection,
    width_sweep,
)
from lana.config import LanaConfig
from lana.data import take_tensors
from lana.distill.candidates import assemble_student
from lana.distill.score import evaluate
from lana.distill.train import TeacherLogits, distil_into
from lana.errors import InfeasibleError
from lana.latency.measure import measure_network, measure_networks
from lana.run.context import Context, prepare
from lana.run.folder import RunFolder, write_json
from lana.selection import LATENCY, build_problem, solve_inputs
from lana.stages.distill import distill_stage
from lana.stages.solve import load_run

log = logging.getLogger("lana")
METHODS = ("lana", "torch-pruning", "width", "random")


def _finetune(ctx: Context, model: nn.Module, targets: TeacherLogits | None, epochs: float | None = None,
              lr: float | None = None, desc: str = "finetune") -> float:
    """The shared fine-tune: distillation from the teacher (``finetune`` settings). Returns seconds."""
    tick = time.time()
    distil_into(model, ctx.teacher, ctx.splits, ctx.config.finetune, ctx.config.data.batch_size, ctx.config.seed,
                desc, epochs, lr, targets)
    return time.time() - tick


def _held_to_budget(ctx: Context, draw: Callable[[float], dict], share: float, table_budget: float, tolerance: float,
                    tries: int = 4) -> tuple[dict, nn.Module, float, float]:
    """Draw a selection for a table budget, assemble it and measure its share of the teacher
    (interleaved); rescale the table budget until the share meets ``share``.

    Returns:
        The choice, the assembled (distilled, not fine-tuned) student, its measured share
        of the teacher's latency and the table budget that produced it.
    """
    got = float("nan")
    for _ in range(tries):
        choice = draw(table_budget)
        student = assemble_student(ctx.teacher, ctx.specs, choice, ctx.run.weights_dir)
        _, got = measure_share(student, ctx.teacher, ctx.input_shape, ctx.config.latency)
        if got <= share * (1 + tolerance):
            return choice, student, got, table_budget
        table_budget *= share / got
        log.info("measured %.3f× > budget %.3f× of the teacher; table budget now %.3f ms", got, share, table_budget)
    raise InfeasibleError(f"no selection measured within {share:.2f}× the teacher's latency in {tries} draws (last {got:.2f}×)")


def _table_problem(inputs, table_budget: float):
    """The selection problem at ``table_budget``, or at the fastest reachable total when that is higher.

    The table's sum is a prediction: where it says the budget cannot be met, the fastest
    selection it knows is still drawn, and the measurement decides.
    """
    problem, limits = build_problem(inputs, f"{table_budget:.6f}ms")
    reachable = float(problem.min_totals()[problem.cost_names.index(LATENCY)])
    if reachable > table_budget:
        log.info("table budget %.3f ms is below the fastest in the table (%.3f ms); drawing at that", table_budget, reachable)
        problem, limits = build_problem(inputs, f"{reachable * (1 + 1e-6):.6f}ms")
    return problem, limits


def _solver_draw(inputs, solver: str) -> Callable[[float], dict]:
    def draw(table_budget: float) -> dict:
        problem, limits = _table_problem(inputs, table_budget)
        return solve_inputs(inputs, problem, limits, solver)["choice"]
    return draw


def _random_draw(inputs, rng: np.random.Generator) -> Callable[[float], dict]:
    def draw(table_budget: float) -> dict:
        problem, _ = _table_problem(inputs, table_budget)
        return random_selection(problem, rng, LATENCY)
    return draw


def compare_teacher(config: LanaConfig, run_dir: str | Path, shares: list[float], n_random: int = 3,
                    methods: tuple[str, ...] = METHODS, tolerance: float = 0.02, solver: str = "auto",
                    train_teacher: Callable[[LanaConfig, RunFolder], float] | None = None,
                    lana_shares: tuple[float, ...] = ()) -> pd.DataFrame:
    """Every method at every budget for one teacher; one row per network (teacher included).

    Args:
        config: the run config (teacher, data, ops, distill, latency, finetune settings).
        run_dir: the teacher's run folder (stages already there are reused).
        shares: budgets as shares of the teacher's measured latency, e.g. ``[0.3, 0.5, 0.7]``.
        n_random: random selections per budget.
        methods: which of :data:`METHODS` to run.
        tolerance: relative slack above the budget accepted for measured latency.
        solver: lana's solver.
        train_teacher: trains and saves the teacher when its checkpoint is missing (seconds).
        lana_shares: extra budgets where only lana runs (to find its fastest student within
            0.5 points of the teacher).

    Returns:
        Columns: method, share (the budget), budget_ms (share × the teacher's final
        figure), latency_ms and latency_share (final interleaved measurement), search_share
        (the share measured when the network was picked), top1, setting, finetune_s, and
        the teacher's row.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    if train_teacher is not None:
        log.info("%s: training the teacher (skipped when %s exists)", config.teacher.model, config.teacher.checkpoint)
        timing["train_teacher_s"] = train_teacher(config, run)
    tick = time.time()
    log.info("%s: distil, score and time every candidate", config.teacher.model)
    distill_stage(config, run)
    timing["distill_score_latency_s"] = time.time() - tick
    ctx = prepare(config, run)
    test_x, test_y = take_tensors(ctx.splits.test, config.data.test_limit)
    inputs = load_run(run.path)
    teacher_ms = measure_network(ctx.teacher, ctx.input_shape, config.latency, rounds=6).median_ms
    table_teacher_ms = inputs.teacher_ms  # the teacher as profiled into the table: table budgets scale from it
    num_classes = int(config.teacher.kwargs.get("num_classes", 10))
    rng = np.random.default_rng(config.seed)
    # The teacher's logits over the train split, computed once for every fine-tune below.
    tick = time.time()
    targets = TeacherLogits.if_it_fits(ctx.teacher, ctx.splits, config.data.batch_size)
    timing["teacher_logits_s"] = time.time() - tick
    rows: list[dict[str, Any]] = []
    models: list[nn.Module] = []
    missed: list[dict[str, Any]] = []  # methods that cannot reach a budget at all

    def add(model: nn.Module, **row: Any) -> None:
        tick = time.time()
        row["top1"] = evaluate(model, test_x, test_y)[1]
        row["eval_s"] = time.time() - tick
        rows.append(row)
        models.append(model)
        log.info("%s", {k: v for k, v in row.items() if k != "setting"})

    sweeps = {}
    log.info("teacher %.2f ms; measuring the baselines' settings against it", teacher_ms)
    if "torch-pruning" in methods:
        sweeps["torch-pruning"] = prune_sweep(ctx.teacher, ctx.input_shape, config.latency, num_classes)
    if "width" in methods:
        sweeps["width"] = width_sweep(config.teacher.model, config.teacher.kwargs, ctx.teacher, ctx.input_shape, config.latency)
    write_json(run.file("baseline_sweeps.json"), {k: v.as_rows() for k, v in sweeps.items()})
    add(ctx.teacher, method="teacher", share=1.0, budget_ms=None, search_share=1.0, setting="", finetune_s=0.0)
    for share in sorted(set(shares) | set(lana_shares)):
        budget_ms = share * teacher_ms
        base = {"share": share, "budget_ms": budget_ms}
        active = methods if share in shares else tuple(m for m in methods if m == "lana")
        log.info("budget %.2f× the teacher (%.2f ms): %s", share, budget_ms, ", ".join(active))
        if "lana" in active:
            try:
                choice, student, got, table_budget = _held_to_budget(ctx, _solver_draw(inputs, solver), share, share * table_teacher_ms, tolerance)
            except InfeasibleError as exc:
                log.warning("lana at %.3f ms: %s", budget_ms, exc)
                missed.append({"method": "lana", "reason": str(exc), **base})
            else:
                seconds = _finetune(ctx, student, targets, desc=f"lana {share:g}")
                add(student, method="lana", search_share=got, setting=_short(choice), finetune_s=seconds,
                    table_budget_ms=table_budget, **base)
        for method, found in sweeps.items():  # torch-pruning, width: the least aggressive setting that meets the budget
            if method not in active:
                continue
            try:
                knob, got = found.pick(share, tolerance)
            except InfeasibleError as exc:
                log.warning("%s at %.3f ms: %s", method, budget_ms, exc)
                missed.append({"method": method, "reason": str(exc), **base})
                continue
            torch.manual_seed(config.seed)
            model = found.build(knob)
            seconds = 0.0
            if method == "width":  # a new network: first trained from scratch with the teacher's recipe
                recipe = config.teacher_training
                seconds += _finetune(ctx, model, targets, recipe.epochs, recipe.lr, desc=f"width {share:g} (from scratch)")
            seconds += _finetune(ctx, model, targets, desc=f"{method} {share:g}")
            setting = f"ratio {knob:.3f}" if method == "torch-pruning" else f"×{knob:.3f}"
            add(model, method=method, search_share=got, setting=setting, finetune_s=seconds, **base)
        if "random" in active:
            for draw_index in range(n_random):
                try:
                    choice, student, got, table_budget = _held_to_budget(ctx, _random_draw(inputs, rng), share, share * table_teacher_ms, tolerance)
                except InfeasibleError as exc:
                    log.warning("random selection at %.3f ms: %s", budget_ms, exc)
                    missed.append({"method": "random", "reason": str(exc), **base})
                    break
                seconds = _finetune(ctx, student, targets, desc=f"random {share:g} #{draw_index + 1}")
                add(student, method="random", search_share=got, setting=_short(choice), finetune_s=seconds, draw=draw_index, **base)

    # The reported latency: every network timed again, interleaved with the teacher.
    final = measure_networks(models, ctx.input_shape, config.latency, time_cap_s=max(10.0, 4 * config.latency.time_cap_s * len(models)))
    frame = pd.DataFrame(rows)
    frame["latency_ms"] = [t["median_ms"] for t in final]
    frame["latency_ci_ms"] = [t["ci_ms"] for t in final]
    teacher_row = frame[frame["method"] == "teacher"].iloc[0]
    frame["speedup"] = teacher_row["latency_ms"] / frame["latency_ms"]
    frame["latency_share"] = frame["latency_ms"] / teacher_row["latency_ms"]
    frame["drop"] = teacher_row["top1"] - frame["top1"]
    if missed:  # budgets a method cannot reach at all: kept as rows without figures
        frame = pd.concat([frame, pd.DataFrame([{**{k: v for k, v in m.items() if k != "reason"}, "setting": "cannot reach: " + m["reason"]} for m in missed])], ignore_index=True)
    frame["budget_ms"] = frame["share"] * teacher_row["latency_ms"]
    frame.loc[frame["method"] == "teacher", "budget_ms"] = None
    frame["teacher"] = config.teacher.model
    frame.to_csv(run.file("quality.csv"), index=False)
    write_json(run.file("quality_timing.json"), timing)
    return frame


def _short(choice: dict[str, str]) -> str:
    """A selection as text: ``op×count`` over the blocks, in first-seen order."""
    counts: dict[str, int] = {}
    for op in choice.values():
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op}×{n}" if n > 1 else op for op, n in counts.items())


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per teacher, budget and method; random draws become ``random (mean)`` and ``random (best)``."""
    out = []
    for (teacher, share), group in frame[frame["method"] != "teacher"].groupby(["teacher", "share"], sort=True):
        for method in METHODS:
            rows = group[group["method"] == method]
            if rows.empty:
                continue
            reached = rows.dropna(subset=["top1"])
            if reached.empty:
                out.append(_summary_row(teacher, share, method, rows.iloc[0], rows.iloc[0]["setting"]))
            elif method == "random":
                rows = reached
                best = rows.loc[rows["top1"].idxmax()]
                out.append(_summary_row(teacher, share, f"random (mean of {len(rows)})", rows.mean(numeric_only=True), ""))
                out.append(_summary_row(teacher, share, "random (best)", best, best["setting"]))
            else:
                row = rows.iloc[0]
                out.append(_summary_row(teacher, share, method, row, row["setting"]))
    return pd.DataFrame(out)


def _summary_row(teacher: str, share: float, method: str, row, setting: str) -> dict:
    get = lambda key: row[key] if key in row.index else float("nan")  # noqa: E731
    return {"teacher": teacher, "budget": f"{share:g}×", "budget_ms": get("budget_ms"), "method": method,
            "latency_ms": get("latency_ms"), "latency_share": get("latency_share"), "top1": get("top1"),
            "drop": get("drop"), "finetune_s": get("finetune_s"), "setting": setting}


def verdict(frame: pd.DataFrame) -> list[str]:
    """The issue's bar, checked on measured figures: one line per teacher and budget, and the speed-up at ≤ 0.5 points."""
    lines = []
    for teacher, group in frame.groupby("teacher", sort=False):
        for share, at in group[group["method"] != "teacher"].groupby("share"):
            at = at.dropna(subset=["top1"])
            lana = at[at["method"] == "lana"]
            if lana.empty:
                lines.append(f"{teacher} at {share:g}×: lana cannot reach this budget")
                continue
            ours = lana["top1"].iloc[0]
            others = at[at["method"] != "lana"]
            best_other = others.loc[others["top1"].idxmax()] if not others.empty else None
            if best_other is None:
                lines.append(f"{teacher} at {share:g}×: lana {ours:.2f} % ({_below(lana['drop'].iloc[0])}; no other method run)")
                continue
            word = "wins" if ours >= best_other["top1"] else "LOSES"
            lines.append(f"{teacher} at {share:g}×: lana {ours:.2f} % {word} against the best other, "
                         f"{best_other['method']} {best_other['top1']:.2f} % (lana {_below(lana['drop'].iloc[0])})")
        lana = group[(group["method"] == "lana") & (group["drop"] <= 0.5)]
        if lana.empty:
            lines.append(f"{teacher}: no lana student within 0.5 points of the teacher")
        else:
            best = lana.loc[lana["speedup"].idxmax()]
            lines.append(f"{teacher}: fastest lana student within 0.5 points of the teacher: {best['speedup']:.2f}× "
                         f"({best['latency_ms']:.2f} ms, {best['top1']:.2f} %, {_below(best['drop'])})")
    return lines


def _below(drop: float) -> str:
    return f"{drop:.2f} points below the teacher" if drop >= 0 else f"{-drop:.2f} points above the teacher"


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Accuracy against measured latency, one panel per teacher, every method and draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(dict.fromkeys(frame["teacher"]))
    fig, axes = plt.subplots(1, len(teachers), figsize=(6 * len(teachers), 4.5), squeeze=False)
    style = {"lana": ("C0", "o", "-"), "torch-pruning": ("C1", "s", "--"), "width": ("C2", "^", "--"), "random": ("C7", "x", "")}
    for ax, teacher in zip(axes[0], teachers):
        group = frame[frame["teacher"] == teacher]
        t = group[group["method"] == "teacher"].iloc[0]
        ax.axhline(t["top1"], color="k", lw=0.8, ls=":")
        ax.plot([t["latency_ms"]], [t["top1"]], "k*", ms=12, label=f"teacher {t['top1']:.2f} %")
        ax.axhline(t["top1"] - 0.5, color="k", lw=0.5, ls="--", alpha=0.4)
        for method, (color, marker, line) in style.items():
            rows = group[group["method"] == method].sort_values("latency_ms")
            if rows.empty:
                continue
            if method == "random":
                ax.plot(rows["latency_ms"], rows["top1"], marker, color=color, ls="", alpha=0.7, label="random selections")
            else:
                ax.plot(rows["latency_ms"], rows["top1"], marker=marker, color=color, ls=line, label=method)
        for share in sorted(group["share"].dropna().unique()):
            if share < 1:
                ax.axvline(share * t["latency_ms"], color="k", lw=0.5, alpha=0.25)
        ax.set_title(teacher)
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
