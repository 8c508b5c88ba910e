"""One search for every method: a knob searched on the measured share of the teacher.

Every method of ``benchmarks/quality.py`` (lana's and random's table budget, Torch-Pruning's
ratio, the width multiplier) is held to its budget by :func:`search_band`: the same band
(``budget × [0.97, 1.00]`` of the teacher's latency, by default), the same number of
measurements allowed, each measurement one interleaved run of the network and the teacher
(:func:`measure_share`), so the machine's drift cancels out of the share. The search is a
safeguarded interpolation inside a bracket; a network measured just outside the band is
measured once more (the mean decides), and a bracket closed on two networks either side of
the band is probed around, for every method alike. A method that has other networks to offer
at one knob (lana's other top-k selections) has those measured with the last of the same
number of measurements, at a closed bracket. A method whose
fastest setting measures above the band cannot reach the budget and says so; one that is
not inside the band after the allowed measurements is reported as missing it.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from lana.config import LatencyConfig
from lana.errors import InfeasibleError
from lana.latency.measure import measure_networks

log = logging.getLogger("lana")
BAND = (0.97, 1.00)


class OutOfBand(InfeasibleError):
    """No setting of the knob measured inside the band; ``fastest`` is the lowest share seen."""

    def __init__(self, message: str, fastest: float) -> None:
        super().__init__(message)
        self.fastest = fastest


def measure_share(model: nn.Module, reference: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig,
                  rounds: int = 3) -> tuple[float, float]:
    """``model``'s measured latency (ms) and its share of ``reference``'s, timed interleaved.

    The share comes from one interleaved run of both networks, so drift of the machine
    between measurements (frequency, other jobs) cancels out of it.
    """
    ref, own = measure_networks([reference.eval(), model.eval()], input_shape, cfg, time_cap_s=cfg.time_cap_s * rounds)
    return own["median_ms"], own["median_ms"] / ref["median_ms"]


def median_shares(models: list[nn.Module], reference: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig,
                  rounds: int) -> list[float]:
    """Each model's share of ``reference``'s latency, measured as a search measures it
    (:func:`measure_share`), in ``rounds`` rounds over all the models: the median of each's rounds.

    Round after round rather than model after model, so a slow spell of the machine touches
    one round of many models, not every round of one.
    """
    shares: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for own, model in zip(shares, models):
            own.append(measure_share(model, reference, input_shape, cfg)[1])
    return [statistics.median(own) for own in shares]


@dataclass
class Found:
    """The network a search kept: its knob, its measured share and what the search cost."""

    knob: float
    model: nn.Module
    share: float
    latency_ms: float
    measurements: int
    seconds: float
    extra: dict = field(default_factory=dict)  # what ``build`` returned beside the model (e.g. the selection)


def search_band(build: Callable[[float], nn.Module | tuple[nn.Module, dict]], fast: float, slow: float, budget: float,
                reference: nn.Module, input_shape: tuple[int, ...], cfg: LatencyConfig, band: tuple[float, float] = BAND,
                max_measurements: int = 8, near: float | None = None, probe_step: float = 0.005) -> Found:
    """Search ``knob`` between ``fast`` and ``slow`` until ``build(knob)`` measures inside the band.

    The search keeps a bracket (a knob measured under the band, one above it) and steps by
    safeguarded interpolation of the measured share towards the band's centre (regula falsi,
    with a bisection step whenever the same end moved twice running, and never closer than
    10 % of the bracket to either end). Two things make it robust to a noisy machine:

    - a network measured just outside the band (within ``near`` of it) is measured once
      more and judged by the mean of its two shares;
    - a knob that builds a network already measured (``extra["key"]``, e.g. a table
      method's selection) is not measured again: the bracket moves on that network's mean;
    - once the bracket has closed to ``probe_step`` of the knob's range (on two networks
      either side of the band, as a table method's selections can be), the search probes
      knobs around it instead, alternately above and below, one such step further each
      time: a knob-to-network map that is not monotonic (selections whose measured shares
      scatter around the table's prediction) may have a network inside the band there.
      Knobs that build a network already measured cost no measurement.
    - the alternatives the closed bracket's two networks offer (``extra["alternatives"]``:
      ``(key, make)`` pairs, ``make()`` building another network the method accepts at that
      knob, in its order of preference) get the last measurements, the slower end's first: a
      table method's other top-k selections scatter around the table's prediction as its first
      does, so one of them may measure inside a band its first jumped over. A probe comes
      first while measurements are left beside them: it finds the method's first choice at a
      nearby knob, which the method prefers to its own lesser ones.

    Args:
        build: knob → network (or ``(network, extra)``); the network's latency is assumed to
            fall, not necessarily strictly, from ``slow`` to ``fast``.
        fast: the knob's fastest setting (most pruned, narrowest, smallest table budget).
        slow: the knob's slowest setting considered (about the teacher's latency; taken as
            1× until measured).
        budget: the target, as a share of ``reference``'s latency.
        band: the accepted window, as fractions of ``budget``.
        max_measurements: measurements allowed, the first (at ``fast``) and retakes included.
        near: how far outside the band (as a share) earns a retake; default half the band's
            width (about a measurement's spread: 1-2 % of the share on the 2-core VM).

    Returns:
        The network found, inside the band (``share`` the mean of its measurements).

    Raises:
        OutOfBand: the fastest setting measures above the band ("cannot reach"), or no
            setting measured inside it within ``max_measurements``.
    """
    tick = time.time()
    low, high = budget * band[0], budget * band[1]
    near = (high - low) / 2 if near is None else near
    target = (low + high) / 2
    nets: dict = {}  # key → [model, extra, shares, latencies]
    built_at: dict = {}  # knob → key of the network it built
    pending: list = []  # (knob, key, make): alternatives offered at the closed bracket, not measured yet
    count = 0

    def measure(key, knob: float) -> float:
        nonlocal count
        model, _, shares, times = nets[key]
        ms, share = measure_share(model, reference, input_shape, cfg)
        count += 1
        shares.append(share)
        times.append(ms)
        log.info("search %.3f×: knob %.4g measured %.3f× (mean %.3f× of %d)", budget, knob, share,
                 sum(shares) / len(shares), len(shares))
        return sum(shares) / len(shares)

    def judge(knob: float, built, key=None) -> tuple[float, Found | None]:
        """The mean share of the network ``built`` (measured unless its key was), and the Found when it is inside the band."""
        model, extra = built if isinstance(built, tuple) else (built, {})
        key = extra.get("key", knob) if key is None else key
        built_at.setdefault(knob, key)
        if key not in nets:
            nets[key] = [model, extra, [], []]
            share = measure(key, knob)
            if not low <= share <= high and share - high <= near and low - share <= near and count < max_measurements:
                share = measure(key, knob)  # just outside: once more, judged by the mean
        model, extra, shares, times = nets[key]
        share = sum(shares) / len(shares)
        if low <= share <= high:
            return share, Found(knob, model, share, sum(times) / len(times), count, time.time() - tick, extra)
        return share, None

    def try_knob(knob: float) -> tuple[float, Found | None]:
        return judge(knob, build(knob))

    def offer(knob: float) -> None:
        """Queue the alternatives of the network ``knob`` built (a bracket end: called once for each)."""
        key = built_at.get(knob)
        if key is None:
            return
        pending.extend((knob, alt, make) for alt, make in nets[key][1].get("alternatives", ()) if alt not in nets)

    share, found = try_knob(fast)
    if found:
        return found
    fastest = share
    if fastest > high:
        raise OutOfBand(f"cannot reach: fastest {fastest:.2f}×", fastest)
    # (knob, mean share) of a setting known to be under the band and one above it (``slow`` taken as 1×)
    under, over = (fast, share), (slow, max(1.0, high + near))
    moved: list[str] = []
    builds = probes = 0
    centre, step = None, probe_step * abs(slow - fast)
    while count < max_measurements and builds < 4 * max_measurements:
        builds += 1
        span = over[0] - under[0]
        if centre is not None or abs(span) <= step:
            # the bracket has closed on two networks either side of the band (a table method's
            # selections can jump over it): probe knobs around it, alternately above and below
            if centre is None:
                centre = under[0] + span / 2
                offer(over[0])
                offer(under[0])
            # a probe finds the method's first choice at a nearby knob; the alternatives are its
            # lesser ones at the ends, so they get the last measurements (and builds) only
            pending[:] = [p for p in pending if p[1] not in nets]  # a probe may have built one already
            if pending and len(pending) >= min(max_measurements - count, 4 * max_measurements - builds + 1):
                knob, key, make = pending.pop(0)
                share, found = judge(knob, make(), key)
                if found:
                    return found
                continue
            probes += 1
            knob = min(max(centre + (1 if probes % 2 else -1) * ((probes + 1) // 2) * step, min(fast, slow)), max(fast, slow))
            share, found = try_knob(knob)
            if found:
                return found
            continue
        if len(moved) >= 2 and moved[-1] == moved[-2]:
            t = 0.5  # the same end moved twice: bisect
        else:
            t = min(0.9, max(0.1, (target - under[1]) / max(over[1] - under[1], 1e-9)))
        knob = under[0] + t * span
        share, found = try_knob(knob)
        if found:
            return found
        if share > high:
            over = (knob, share)
            moved.append("over")
        else:
            under = (knob, share)
            moved.append("under")
    means = [sum(n[2]) / len(n[2]) for n in nets.values()]
    nearest = min(means, key=lambda s: abs(s - target))
    # a closed bracket: the share jumps across the band between two settings (a width's rounded channels)
    jump = (f"; it jumps from {under[1]:.3f}× at knob {under[0]:.4g} to {over[1]:.3f}× at {over[0]:.4g}"
            if centre is not None and over[0] != slow else "")
    raise OutOfBand(f"missed the band {low:.3f}–{high:.3f}× in {count} measurements (nearest {nearest:.3f}×){jump}",
                    min(means))
