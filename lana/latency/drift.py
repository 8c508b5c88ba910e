"""The machine's drift: one reference network timed at two moments says how much slower (or
faster) the machine runs now, and converts every other figure taken at either moment.

The one place the formula lives: the in-context profiler puts each group on the first
group's scale, ``lana latency-check`` puts predictions on the scale of each checked window,
``lana solve`` puts the table on the scale of ``RUN/reference.json``, and the budget check
after export compares a prediction with a measurement through it. Torch-free.
"""
from __future__ import annotations


def speed_ratio(reference_now_ms: float, reference_then_ms: float) -> float:
    """How much slower the machine times the reference now than then (``now / then``; 1 = no drift).

    A figure timed *then* is multiplied by it to read at today's speed, and a figure timed
    *now* divided by it to read at the speed of then.

    Args:
        reference_now_ms: the reference (the teacher) timed now.
        reference_then_ms: the same reference, timed at the other moment (e.g. profiling).

    Returns:
        The factor; 1.0 where either figure is missing or not positive (nothing to convert with).
    """
    if not reference_now_ms or not reference_then_ms or reference_now_ms <= 0 or reference_then_ms <= 0:
        return 1.0
    return float(reference_now_ms) / float(reference_then_ms)


def drift_pct(speed: float) -> float:
    """The drift as a percentage (``+10`` = the machine is 10 % slower)."""
    return (speed - 1.0) * 100.0


def convert(ms: float, from_speed: float, to_speed: float) -> float:
    """A figure read at one speed (a :func:`speed_ratio` against a common moment) read at another."""
    return ms * to_speed / from_speed
