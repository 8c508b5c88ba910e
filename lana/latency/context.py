"""In-context latency: every candidate timed inside the whole network, clocked at its block's boundaries.

Every candidate is placed in a few "cover" networks (each block cycles through its
candidates) that are timed interleaved in groups, each group with the clocked teacher as its
reference; the fixed part (stem, head, glue) is the whole call minus its clocked blocks.
Single modules and whole networks are timed by :mod:`lana.latency.measure`.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from statistics import median

import torch
from torch import nn

from lana.config import LatencyConfig
from lana.latency import timing_core as core
from lana.latency.checkpoint import PartialTimings
from lana.latency.drift import speed_ratio
from lana.latency.measure import (
    DTYPES,
    Timing,
    _graphs,
    _knobs,
    _measuring,
    example_input,
    prepare_for_timing,
    resolve_device,
)
from lana.names import TEACHER_OP
from lana.progress import bar as progress
from lana.teacher.blocks import set_submodule

log = logging.getLogger("lana")


def _context_knobs(cfg: LatencyConfig, networks: int) -> dict:
    """Sampling of one group of ``networks`` cover networks, or as whole networks (``context_repeats`` None).

    ``context_repeats`` calls each, more while the group's timed calls took less than
    ``context_min_s`` per network (a fast network's few calls are mostly noise), up to
    ``max_repeats`` (8 × ``context_repeats`` by default).
    """
    if cfg.context_repeats is None:
        return _knobs(cfg)
    # no CI target (inf): under heavy load six calls' CI can exceed 100 %, and a finite target
    # would then double the calls the figures were planned for
    return {"warmup": cfg.warmup, "repeats": cfg.context_repeats, "max_repeats": cfg.max_repeats, "ci": math.inf,
            "min_time_s": cfg.context_min_s * networks}



class _Clock:
    """Per-block times of each forward pass: ``perf_counter`` on a CPU, CUDA events on a GPU."""

    def __init__(self, blocks: int, device: torch.device, clock: str = "wall") -> None:
        self.blocks, self.device, self.records, self.gaps = blocks, device, [], []
        self.now = time.perf_counter if clock == "wall" else time.process_time
        self._open: list = []

    def around(self, index: int, inner, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            y = inner(x)
            end.record()
            self._open.append((index, start, end))
            return y
        begin = self.now()
        y = inner(x)
        self._open.append((index, (self.now() - begin) * 1e3))
        return y

    def close(self, whole_ms: float) -> None:
        """End one forward pass (after the step synchronised): store its per-block times and the whole."""
        times = [0.0] * self.blocks
        for index, *clocked in self._open:
            times[index] += clocked[0].elapsed_time(clocked[1]) if len(clocked) == 2 else clocked[0]
        self.records.append(times)
        self.gaps.append(whole_ms - sum(times))  # stem, head, glue: what no block choice changes
        self._open = []


class _Clocked(nn.Module):
    """A block wrapper that clocks its (deployed) inner module."""

    def __init__(self, inner, clock: _Clock, index: int) -> None:
        super().__init__()
        self.inner, self.clock, self.index = inner, clock, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clock.around(self.index, self.inner, x)


def cover_selections(candidates: dict[str, list[str]], rounds: int = 1, seed: int = 0,
                     ranked: bool = False) -> list[dict[str, str]]:
    """Selections in which every candidate of every block appears at least ``rounds`` times.

    With ``ranked``, the first round pairs candidates of similar rank (lists given fastest
    first): fast ops are timed among fast neighbours, slow among slow, as in networks near
    either end of the latency range. Other rounds cycle through a seeded shuffle of each
    block's candidates, so which neighbours a candidate meets is random. Each round has as
    many networks as the largest block has candidates.
    """
    rng = random.Random(seed)
    count = max(len(names) for names in candidates.values())
    selections = []
    for round_ in range(rounds):
        if ranked and round_ == 0:
            selections += [{b: names[round(i * (len(names) - 1) / max(1, count - 1))] for b, names in candidates.items()}
                           for i in range(count)]
            continue
        orders = {b: rng.sample(names, len(names)) for b, names in candidates.items()}
        selections += [{b: order[i % len(order)] for b, order in orders.items()} for i in range(count)]
    return selections


def _clocked_network(teacher: nn.Module, specs, modules: dict[str, nn.Module], example_shapes, cfg, device) -> tuple[nn.Module, _Clock]:
    clock = _Clock(len(specs), device, cfg.clock)
    net = copy.deepcopy(teacher).eval().to(device=device, dtype=DTYPES[cfg.dtype])
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    for index, spec in enumerate(specs):
        example = example_input(example_shapes[spec.name], cfg)
        set_submodule(net, spec.name, _Clocked(prepare_for_timing(modules[spec.name], example, cfg), clock, index))
    return net, clock


@torch.inference_mode()
def measure_in_context(teacher: nn.Module, specs, candidates: dict, input_shape: tuple[int, ...], cfg: LatencyConfig,
                       rounds: int = 1, group: int = 16, order: dict[str, list[str]] | None = None,
                       partial: PartialTimings | None = None) -> tuple[dict[tuple[str, str], Timing], dict]:
    """Time every candidate inside the whole network (clocked at its block's boundaries).

    Networks are timed interleaved in groups; every group also times the clocked teacher,
    the *reference*: each group's figures are scaled by (reference in the first group) /
    (reference in this group), so a machine that slows down between groups (other jobs, a
    resumed run hours later) does not move one group's candidates against another's.

    Args:
        teacher: the teacher network.
        specs: its blocks (:class:`op_zoo.BlockSpec`, in forward order).
        candidates: candidates (or modules) by block and op name; each block has ``teacher``.
        input_shape: ``(C, H, W)`` of one network input.
        cfg: measurement settings.
        rounds: how many cover networks each candidate appears in (at least).
        group: how many networks are timed interleaved at a time (the reference included).
        order: per block, candidate names fastest first (e.g. timed alone): the first round
            then pairs candidates of similar rank (see :func:`cover_selections`).
        partial: where each group's timings are saved as soon as they are taken.

    Returns:
        Timing per (block, op) (median over its networks of its per-network median), and a
        record: ``teacher_latency_ms`` (deployed, unclocked), ``blocks_sum_ms`` (its clocked
        blocks), ``reference_ms`` (clocked teacher, first group), ``fixed_latency_ms`` (per
        call, whole minus clocked blocks, median over all networks, less the block clocks'
        own overhead: in eager on a CPU ``clock_overhead_ms`` (:func:`clock_overhead_ms` per
        block), in other runtimes plus deployed minus clocked teacher, which also adds what
        deploying the whole network changes; ``runtime_adjust_ms`` is what was added).
    """
    device = resolve_device(cfg.device)
    shapes = {s.name: s.in_shape for s in specs}
    partial = partial or PartialTimings(None, "")
    reference = {s.name: TEACHER_OP for s in specs}
    covers = cover_selections(order or {b: list(c) for b, c in candidates.items()}, rounds, ranked=order is not None)
    per_group = max(1, group - 1)
    chunks = [[reference] + covers[i : i + per_group] for i in range(0, len(covers), per_group)]
    example = example_input(input_shape, cfg)
    groups = []
    with _measuring(cfg), progress(total=len(covers), desc="latency (in context)", unit="net") as bar:
        for index, chunk in enumerate(chunks):
            stored = partial.get("context", str(index))
            if stored is None or stored.get("choices") != chunk:
                stored = _time_group(teacher, specs, candidates, chunk, shapes, cfg, device, example, deployed=index == 0)
                partial.put("context", str(index), stored)
                _release(candidates, chunk)
            groups.append(stored)
            bar.update(len(chunk) - 1)
    ref = groups[0]["reference_ms"]
    per_candidate: dict[tuple[str, str], list[float]] = {}
    teacher_sums, gaps = [], []
    for stored in groups:
        factor = 1 / speed_ratio(stored["reference_ms"], ref)  # this window's figures at the first window's speed
        for sel, times, gap in zip(stored["choices"], stored["networks"], stored["gaps"]):
            gaps.append(gap * factor)
            for spec, block_ms in zip(specs, times):
                per_candidate.setdefault((spec.name, sel[spec.name]), []).append(block_ms * factor)
        teacher_sums.append(sum(stored["networks"][0]) * factor)
    timings = {}
    for key, values in per_candidate.items():
        spread = (max(values) - min(values)) if len(values) > 1 else 0.0
        timings[key] = Timing(median(values), spread, len(values))
    # The fixed part, call by call (whole minus its clocked blocks, paired in the same call, so the
    # noise of two separate measurements does not land in it), median over every network. The
    # gap also holds the clocks' own cost (wrapper calls, clock reads), which the deployed network
    # does not pay. In eager on a CPU it is timed on its own (a clocked identity against a plain
    # one, thousands of calls: microseconds, not the noise of two whole-network medians) and taken
    # out per block; other runtimes add the deployed minus the clocked teacher, which takes it out
    # with what deploying the whole network changes against eager glue.
    whole, gap = groups[0]["whole"], median(gaps)
    if cfg.runtime == "eager":
        clocks = clock_overhead_ms(cfg.clock) * len(specs) if device.type == "cpu" else 0.0
        adjust = -clocks
    else:
        adjust, clocks = whole["median_ms"] - ref, None
    references = [g["reference_ms"] for g in groups]
    record = {"teacher_latency_ms": whole["median_ms"], "teacher_latency_iqr_ms": whole["iqr_ms"],
              "teacher_latency_ci_ms": whole["ci_ms"], "blocks_sum_ms": median(teacher_sums),
              "clocked_teacher_ms": ref, "reference_ms": ref, "reference_groups_ms": references,
              "reference_spread_pct": (max(references) / min(references) - 1) * 100,
              "fixed_gap_ms": gap, "runtime_adjust_ms": adjust, "clock_overhead_ms": clocks,
              "fixed_gap_spread_ms": max(gaps) - min(gaps),
              "fixed_latency_ms": gap + adjust, "networks": len(covers) + len(chunks)}
    return timings, record


def clock_overhead_ms(clock: str = "wall", calls: int = 200, rounds: int = 21) -> float:
    """What one block clock adds to a CPU forward pass outside the block's own time, in ms.

    A clocked identity and a plain one are called ``calls`` times each, alternately for
    ``rounds`` rounds; the median of the per-call differences (never below 0).
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    plain, timer = nn.Identity(), _Clock(1, torch.device("cpu"), clock)
    clocked, x = _Clocked(nn.Identity(), timer, 0), torch.zeros(1)
    differences = []
    for _ in range(rounds):
        begin = now()
        for _ in range(calls):
            plain(x)
        middle = now()
        for _ in range(calls):
            clocked(x)
        differences.append(((now() - middle) - (middle - begin)) / calls * 1e3)
        timer._open.clear()
    return max(0.0, median(differences))


def group_noise(results: list[dict]) -> float:
    """The worst relative gap between the two interleaved halves over one group's timings."""
    return max(abs(r["half_a_ms"] - r["half_b_ms"]) / r["median_ms"] for r in results)


def _release(candidates: dict, chunk: list[dict[str, str]]) -> None:
    """Drop the modules of a timed group's candidates (lazily built ones: lana.distill.candidates)."""
    for selection in chunk:
        for block, name in selection.items():
            release = getattr(candidates[block][name], "release", None)
            if release is not None:
                release()


def _time_group(teacher, specs, candidates, chunk, shapes, cfg, device, example, deployed: bool) -> dict:
    """Time one group of clocked networks interleaved (the first is the reference); JSON-able.

    A noisy take (halves more than ``latency.retake_noise`` apart: the machine moved under it)
    is taken again with fresh clocks, up to ``latency.retakes`` times; the calmest one is kept
    and ``takes`` says how many were made.
    """
    takes = []
    for _ in range(1 + cfg.retakes):
        nets = [_clocked_network(teacher, specs, {b: getattr(candidates[b][c], "module", candidates[b][c]) for b, c in sel.items()},
                                 shapes, cfg, device) for sel in chunk]
        steps = [_closing(core.make_step(net, example, clock=cfg.clock), clock) for net, clock in nets]
        if deployed:  # the deployed teacher, unclocked, interleaved with its clocked twin
            steps.append(core.make_step(prepare_for_timing(teacher, example, cfg), example, _graphs(cfg, example), cfg.clock))
        takes.append((nets, core.sample_interleaved(steps, **_context_knobs(cfg, len(steps)), time_cap_s=cfg.time_cap_s * len(steps))))
        if group_noise(takes[-1][1]) <= cfg.retake_noise or len(takes) > cfg.retakes:
            break
        log.info("latency (in context): a group was noisy (halves %.1f %% apart), timing it again", 100 * group_noise(takes[-1][1]))
    nets, results = min(takes, key=lambda take: group_noise(take[1]))
    stored = {"choices": chunk, "reference_ms": results[0]["median_ms"], "networks": [], "gaps": [], "takes": len(takes)}
    if deployed:
        whole = results.pop()
        stored["whole"] = {k: whole[k] for k in ("median_ms", "iqr_ms", "ci_ms")}
    for (_net, clock), result in zip(nets, results):
        records = clock.records[result["warmup"]:]
        stored["gaps"].append(median(clock.gaps[result["warmup"]:]))
        stored["networks"].append([median(r[i] for r in records) for i in range(len(specs))])
    return stored


def _closing(step, clock: _Clock):
    def timed() -> float:
        ms = step()
        clock.close(ms)
        return ms

    return timed
