"""One search for every method: bisection of a knob on the measured share of the teacher.

Every method of ``benchmarks/quality.py`` (lana's and random's table budget, Torch-Pruning's
ratio, the width multiplier) is held to its budget by :func:`search_band`: the same band
(``budget × [0.97, 1.00]`` of the teacher's latency, by default), the same number of
measurements allowed, each measurement one interleaved run of the network and the teacher
(:func:`measure_share`), so the machine's drift cancels out of the share. A method whose
fastest setting measures above the band cannot reach the budget and says so; one that is
not inside the band after the allowed measurements is reported as missing it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

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
                max_measurements: int = 8) -> Found:
    """Bisect ``knob`` between ``fast`` and ``slow`` until ``build(knob)`` measures inside the band.

    Args:
        build: knob → network (or ``(network, extra)``); the network's latency is assumed to
            fall, not necessarily strictly, from ``slow`` to ``fast``.
        fast: the knob's fastest setting (most pruned, narrowest, smallest table budget).
        slow: the knob's slowest setting considered (about the teacher's latency).
        budget: the target, as a share of ``reference``'s latency.
        band: the accepted window, as fractions of ``budget``.
        max_measurements: measurements allowed, the first (at ``fast``) included.

    Returns:
        The network found, inside the band.

    Raises:
        OutOfBand: the fastest setting measures above the band ("cannot reach"), or no
            setting measured inside it within ``max_measurements``.
    """
    tick = time.time()
    low, high = budget * band[0], budget * band[1]
    seen: list[tuple[float, float]] = []

    def try_knob(knob: float) -> Found | None:
        built = build(knob)
        model, extra = built if isinstance(built, tuple) else (built, {})
        ms, share = measure_share(model, reference, input_shape, cfg)
        seen.append((knob, share))
        log.info("search %.3f×: knob %.4g measured %.3f×", budget, knob, share)
        if low <= share <= high:
            return Found(knob, model, share, ms, len(seen), time.time() - tick, extra)
        return None

    found = try_knob(fast)
    if found:
        return found
    fastest = seen[0][1]
    if fastest > high:
        raise OutOfBand(f"cannot reach: fastest {fastest:.2f}×", fastest)
    # Bisection in knob space between a setting known to be under the band and one above it.
    under, over = fast, slow
    while len(seen) < max_measurements:
        knob = (under + over) / 2
        found = try_knob(knob)
        if found:
            return found
        if seen[-1][1] > high:
            over = knob
        else:
            under = knob
    nearest = min(seen, key=lambda ks: abs(ks[1] - (low + high) / 2))[1]
    raise OutOfBand(f"missed the band {low:.3f}–{high:.3f}× in {len(seen)} measurements (nearest {nearest:.3f}×)",
                    min(s for _, s in seen))
