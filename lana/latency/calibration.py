"""Check the latency model: predicted (fixed part + sum of per-block figures) vs measured.

``lana latency-check --run DIR`` builds N whole networks (random selections spread over the
latency range, plus the solver's picks), measures each end to end in the deployment
runtime (interleaved, so machine drift hits all alike), and reports predicted vs measured:
a CSV, a PNG scatter and the median and worst relative error, next to the noise floor: the
same networks timed again in a second window of their own, each window on the scale of its
own teacher (two halves of one interleaved window share its moment and understate it).
Every group of networks also times the teacher, so predictions are compared at the machine's
speed of that moment. ``--fit`` then chooses a correction ``measured ≈ fixed + scale × sum``
(none, offset, or offset + scale, by nested leave-one-out error;
:mod:`lana.latency.correction`) and writes it back, so that ``lana solve`` adds corrected
figures.
"""
from __future__ import annotations

import copy
import io
import logging
import random

import numpy as np
import pandas as pd
from torch import nn

from lana.config import LatencyConfig
from lana.errors import InfeasibleError
from lana.latency.context import group_noise
from lana.latency.correction import (  # noqa: F401 (choose_correction, fit_correction re-exported)
    Correction,
    choose_correction,
    choose_correction_nested,
    fit_correction,
)
from lana.latency.drift import drift_pct, speed_ratio
from lana.latency.measure import measure_networks
from lana.names import TEACHER_OP
from lana.teacher.blocks import set_submodule
from solvers import SelectionProblem, solve_selection

log = logging.getLogger("lana")


def random_selections(latency: dict[str, dict[str, float]], count: int, seed: int = 0) -> list[dict[str, str]]:
    """``count`` selections whose predicted latencies spread from the fastest to the slowest.

    Network ``i`` aims at rank ``i / (count - 1)`` of each block's candidates ordered by
    latency, with random jitter of a quarter of the ranks, so networks cover the range and
    mix fast and slow blocks.

    Args:
        latency: per block, predicted latency by candidate name.
        count: how many selections.
        seed: random seed.
    """
    rng = random.Random(seed)
    ordered = {b: sorted(c, key=c.get) for b, c in latency.items()}
    selections = []
    for i in range(count):
        aim = i / max(1, count - 1)
        choice = {}
        for block, names in ordered.items():
            top = len(names) - 1
            rank = aim * top + rng.uniform(-0.25, 0.25) * top
            choice[block] = names[min(top, max(0, round(rank)))]
        selections.append(choice)
    return selections


def build_network(teacher: nn.Module, specs, choice: dict[str, str], modules: dict[str, dict[str, nn.Module]]) -> nn.Module:
    """The teacher with each block replaced by its chosen module (weights do not matter for timing)."""
    net = copy.deepcopy(teacher).eval()
    for spec in specs:
        name = choice.get(spec.name, TEACHER_OP)
        if name != TEACHER_OP:
            set_submodule(net, spec.name, copy.deepcopy(modules[spec.name][name]).eval())
    return net


def predict(choice: dict[str, str], latency: dict[str, dict[str, float]], fixed_ms: float) -> float:
    """Predicted whole-network latency: the fixed part plus the chosen per-block figures."""
    return fixed_ms + sum(latency[b][c] for b, c in choice.items())


def measure_selections(teacher: nn.Module, specs, modules: dict, selections: list[dict[str, str]],
                       input_shape: tuple[int, ...], cfg: LatencyConfig, group: int = 12, second_window: bool = False) -> list[dict]:
    """Measure each selection's whole network end to end, interleaved in groups of ``group``.

    A group whose noise (:func:`group_noise`) is above ``latency.retake_noise`` was timed while
    the machine moved under it (a shared host): it is timed again, up to ``latency.retakes``
    more times, and the take with the lowest noise is kept (each result says how many takes
    its group needed in ``takes``). With ``second_window``, the kept group is then timed once
    more in a window of its own (same networks, so compiled runtimes compile once), and each
    result carries that figure as ``second_window_ms``.
    """
    results = []
    for first in range(0, len(selections), group):
        chunk = selections[first : first + group]
        nets = [build_network(teacher, specs, choice, modules) for choice in chunk]
        takes = []
        for _ in range(1 + cfg.retakes):
            takes.append(measure_networks(nets, input_shape, cfg, time_cap_s=cfg.time_cap_s * 2 * len(nets)))
            if group_noise(takes[-1]) <= cfg.retake_noise:
                break
            log.info("latency check: group %d noisy (halves %.1f %% apart), timing it again", first // group, 100 * group_noise(takes[-1]))
        best = min(takes, key=group_noise)
        again = measure_networks(nets, input_shape, cfg, time_cap_s=cfg.time_cap_s * 2 * len(nets)) if second_window else best
        results.extend({**r, "takes": len(takes), "second_window_ms": a["median_ms"]} for r, a in zip(best, again))
        del nets
    return results


def error_summary(frame: pd.DataFrame) -> dict:
    """Median and worst absolute relative error (%) of ``predicted_ms`` vs ``measured_ms``, and the noise floor."""
    error = (frame["predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"] * 100
    if "noise_pct" in frame.columns:  # the same network in a second window (check_latency)
        noise = frame["noise_pct"]
    else:  # a frame with one window only: the gap between its interleaved halves
        noise = (frame["half_a_ms"] - frame["half_b_ms"]).abs() / frame["measured_ms"] * 100
    return {"networks": len(frame), "median_error_pct": float(error.median()), "worst_error_pct": float(error.max()),
            "median_noise_pct": float(noise.median()), "worst_noise_pct": float(noise.max()),
            "mean_ratio_predicted_over_measured": float((frame["predicted_ms"] / frame["measured_ms"]).mean())}


def check_frame(selections: list[dict[str, str]], kinds: list[str], measured: list[dict],
                latency: dict[str, dict[str, float]], fixed_ms: float) -> pd.DataFrame:
    """One row per network: kind, predicted and measured latency, error, noise halves, choice."""
    import json

    rows = []
    for index, (choice, kind, result) in enumerate(zip(selections, kinds, measured)):
        block_sum = sum(latency[b][c] for b, c in choice.items())
        rows.append({"network": index, "kind": kind, "blocks_sum_ms": block_sum, "predicted_ms": fixed_ms + block_sum,
                     "measured_ms": result["median_ms"], "measured_ci_ms": result["ci_ms"], "half_a_ms": result["half_a_ms"],
                     "half_b_ms": result["half_b_ms"], "takes": result.get("takes", 1),
                     "changed_blocks": sum(c != TEACHER_OP for c in choice.values()),
                     "choice": json.dumps(choice)})
    frame = pd.DataFrame(rows)
    frame["error_pct"] = (frame["predicted_ms"] - frame["measured_ms"]) / frame["measured_ms"] * 100
    return frame


def scatter_png(frame: pd.DataFrame, title: str) -> bytes:
    """PNG bytes: measured vs predicted latency per network, with the diagonal and ±5 % / ±10 % bands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low = 0.9 * min(frame["predicted_ms"].min(), frame["measured_ms"].min())
    high = 1.1 * max(frame["predicted_ms"].max(), frame["measured_ms"].max())
    line = np.array([low, high])
    ax.plot(line, line, "k-", lw=1, label="predicted = measured")
    for share, style in ((0.05, "--"), (0.10, ":")):
        ax.plot(line, line * (1 + share), "grey", ls=style, lw=0.8, label=f"±{share:.0%}")
        ax.plot(line, line * (1 - share), "grey", ls=style, lw=0.8)
    for kind, marker in (("random", "o"), ("solver", "*"), ("teacher", "s")):
        part = frame[frame["kind"] == kind]
        if len(part):
            ax.errorbar(part["predicted_ms"], part["measured_ms"], yerr=part["measured_ci_ms"], fmt=marker, ms=6, label=kind)
    if "corrected_ms" in frame:
        ax.plot(frame["corrected_ms"], frame["measured_ms"], "o", mfc="none", color="tab:red", label="after the fitted correction")
    summary = error_summary(frame)
    ax.set_title(f"{title}\nmedian error {summary['median_error_pct']:.1f} %, worst {summary['worst_error_pct']:.1f} % "
                 f"(noise {summary['median_noise_pct']:.1f} %)", fontsize=9)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms)")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def spread_indices(values: list[float], count: int) -> list[int]:
    """Indices of ``count`` values spread evenly over their sorted order (for fitting on a few)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    if count >= len(order):
        return order
    return sorted({order[int(round(i))] for i in np.linspace(0, len(order) - 1, count)})


def check_latency(teacher: nn.Module, specs, modules: dict, record: dict, input_shape: tuple[int, ...], cfg: LatencyConfig,
                  selections: list[dict[str, str]], kinds: list[str], fit: bool = False, group: int = 8) -> dict:
    """Measure ``selections`` end to end and compare them with the profile's predictions.

    Every group of ``group`` networks also times the teacher, the reference: each network's
    prediction is converted to its group's machine speed (× teacher now / teacher at
    profiling), so drift of the machine since profiling is reported, not counted as error.
    With ``fit``, a correction is chosen among none, offset and offset + scale by nested
    leave-one-out error over every network (see :mod:`lana.latency.correction`). Every
    group of networks is timed twice, in two windows; the second gives the noise floor.

    Args:
        teacher, specs: the teacher and its blocks.
        modules: candidate modules by block and op name.
        record: the latency profile (``latency.json`` or one of its ``profiles``).
        input_shape: ``(C, H, W)`` of one network input.
        cfg: the profile's measurement settings.
        selections, kinds: the networks to measure and what each is (``random``, ``solver``).
        fit: choose and fit a correction (judged by nested leave-one-out).

    Returns:
        ``frame`` (one row per network, one teacher row), ``summary`` (errors of the stored
        model, ``choice`` with each correction's leave-one-out errors, noise floor, reference
        drift) and ``correction`` (None without ``fit``).
    """
    raw = {b: {} for b in modules}
    for r in record["candidates"]:
        raw.setdefault(r["block"], {})[r["candidate"]] = r["median_ms"]
    scale = (record.get("calibration") or {}).get("scale", 1.0)
    used = {b: {c: v * scale for c, v in d.items()} for b, d in raw.items()}
    teacher_choice = {s.name: TEACHER_OP for s in specs}
    ordered, labels, groups = [], [], []
    per_group = max(1, group - 1)
    for index, first in enumerate(range(0, len(selections), per_group)):
        chunk = selections[first : first + per_group]
        ordered += [teacher_choice] + chunk
        labels += ["teacher"] + kinds[first : first + per_group]
        groups += [index] * (len(chunk) + 1)
    measured = measure_selections(teacher, specs, modules, ordered, input_shape, cfg, group=per_group + 1, second_window=True)
    frame = check_frame(ordered, labels, measured, used, record["fixed_latency_ms"])
    frame["group"] = groups
    frame["second_window_ms"] = [r["second_window_ms"] for r in measured]
    frame["raw_sum_ms"] = [sum(raw[b][c] for b, c in choice.items()) for choice in ordered]
    profiled = record["teacher_latency_ms"]
    frame["reference_ms"] = frame.groupby("group")["measured_ms"].transform(lambda m: m.iloc[0])  # the teacher, same window
    speed = frame["reference_ms"].map(lambda now: speed_ratio(now, profiled))  # this window's speed against profiling's
    frame["predicted_profiled_ms"] = frame["predicted_ms"]
    frame["predicted_ms"] = frame["predicted_profiled_ms"] * speed
    frame["error_pct"] = (frame["predicted_ms"] - frame["measured_ms"]) / frame["measured_ms"] * 100
    frame["measured_profiled_ms"] = frame["measured_ms"] / speed  # what it would have measured at profiling's speed
    # the noise floor: each window put on its own teacher's scale, how far the two disagree
    second_reference = frame.groupby("group")["second_window_ms"].transform(lambda m: m.iloc[0])
    frame["noise_pct"] = ((frame["measured_ms"] / frame["reference_ms"]) / (frame["second_window_ms"] / second_reference) - 1).abs() * 100
    teachers = frame[frame["kind"] == "teacher"]
    # one teacher row stands for the teacher (the median of its measurements); errors are over the others
    keep = frame[frame["kind"] != "teacher"].index.tolist() + [int(teachers.index[len(teachers) // 2])]
    judged = frame.loc[sorted(keep)].reset_index(drop=True)
    networks = judged[judged["kind"] != "teacher"]
    drift = drift_pct(speed_ratio(float(teachers["measured_ms"].median()), profiled))
    summary = {"before": error_summary(networks), "teacher_profiled_ms": profiled,
               "teacher_measured_ms": float(teachers["measured_ms"].median()), "teacher_drift_pct": drift,
               "reference_drift_pct": drift, "reference_groups_ms": teachers["measured_ms"].tolist(),
               "group_takes": teachers["takes"].astype(int).tolist()}
    correction = None
    if fit:
        rows = networks.index.tolist()
        correction, choice = choose_correction_nested(judged["raw_sum_ms"].tolist(), judged["measured_profiled_ms"].tolist(),
                                                      record["measured_fixed_latency_ms"], rows)
        judged["corrected_ms"] = (correction.fixed_ms + correction.scale * judged["raw_sum_ms"]) * speed.loc[sorted(keep)].values
        summary["choice"] = choice
        summary["after"] = error_summary(networks.assign(predicted_ms=judged.loc[rows, "corrected_ms"]))
        summary["after"].update({"median_error_pct": choice["held_out"]["median_pct"],
                                 "worst_error_pct": choice["held_out"]["worst_pct"], "leave_one_out": "nested"})
        summary["correction"] = correction.as_dict()
    return {"frame": judged, "summary": summary, "correction": correction}


def mixed_selections(latency: dict[str, dict[str, float]], count: int, seed: int = 0) -> list[dict[str, str]]:
    """``count`` networks: half spread over the latency range by rank, half uniformly random mixes."""
    rng = random.Random(seed + 1)
    spread = random_selections(latency, count - count // 2, seed)
    mixes = [{b: rng.choice(sorted(c)) for b, c in latency.items()} for _ in range(count // 2)]
    return spread + mixes


def solver_selections(record: dict, table: pd.DataFrame, column: str, shares: list[float]) -> list[dict[str, str]]:
    """The solver's picks at budgets that are ``shares`` of the teacher's latency (infeasible ones skipped)."""

    frame = table[table["score"].notna()] if "score" in table.columns else table.assign(score=0.0)
    problem = SelectionProblem.from_frame(frame, offsets={column: record["fixed_latency_ms"]}, costs=[column])
    picks = []
    for share in shares:
        try:
            picks.append(solve_selection(problem.with_limits({column: share * record["teacher_latency_ms"]}), "auto").choice)
        except InfeasibleError:
            continue
    return picks
