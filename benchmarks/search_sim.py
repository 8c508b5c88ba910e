"""How often the band search misses, on a simulated table method (no network is built or timed).

A table method's knob (its table budget) maps to selections piecewise: every ``--segment``
of the knob (as a share of the teacher) builds another selection, and a selection's
measured share scatters around the table's prediction (``--selection-sd``, relative); every
measurement adds its own noise (``--measurement-sd``). With ``alternatives`` each knob also
offers that many other selections (lana's other top-k), each with its own scatter.
:func:`benchmarks.search.search_band` runs on that map with its measurements replaced, so its miss rate and the measurements it
spends can be compared between settings (or, with another checkout first on ``PYTHONPATH``,
between versions of the search) in a minute::

    python -m benchmarks.search_sim [--trials 2000] [--budget 0.5]
"""
from __future__ import annotations

import argparse
from unittest import mock

import numpy as np

from benchmarks import search
from lana.errors import InfeasibleError


def miss_rate(trials: int, max_measurements: int, selection_sd: float, measurement_sd: float, segment: float,
              budget: float = 0.5, seed: int = 0, alternatives: int = 0) -> tuple[float, float]:
    """Share of searches that end outside the band, and the mean measurements of those that do not."""
    rng = np.random.default_rng(seed)
    misses, spent = 0, []
    fast, slow = 0.05, 1.0  # knob = predicted share; the fastest selection measures 0.05×
    for _ in range(trials):
        scatter: dict = {}

        def build(knob: float, scatter: dict = scatter, alt: int = 0):
            key = (int(knob / segment), alt)
            scatter.setdefault(key, rng.normal(0.0, selection_sd))
            true = 0.05 if knob <= fast else 0.9 * knob * (1 + scatter[key])  # the table over-predicts by about 10 %
            others = [((key[0], j), lambda knob=knob, j=j: build(knob, alt=j)) for j in range(1, alternatives + 1)]
            return true, {"key": key, "alternatives": [] if alt or knob <= fast else others}

        def measure(model, reference, shape, cfg, rounds=3):
            share = model * (1 + rng.normal(0.0, measurement_sd))
            return share, share

        with mock.patch.object(search, "measure_share", measure):
            try:
                spent.append(search.search_band(build, fast, slow, budget, None, None, None,
                                                max_measurements=max_measurements).measurements)
            except InfeasibleError:
                misses += 1
    return misses / trials, float(np.mean(spent)) if spent else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--measurement-sd", type=float, default=0.012, help="one measurement's relative noise")
    args = parser.parse_args(argv)
    print(f"band {search.BAND}, budget {args.budget}×, measurement noise {args.measurement_sd:.1%}, {args.trials} searches each")
    print("| selections every | selection scatter | max measurements | alternatives per knob | missed | measurements when found |")
    print("| --- | --- | --- | --- | --- | --- |")
    for segment in (0.003, 0.01):
        for sd in (0.02, 0.03, 0.05):
            for most, alternatives in ((12, 0), (12, 2), (16, 2)):
                rate, used = miss_rate(args.trials, most, sd, args.measurement_sd, segment, args.budget, alternatives=alternatives)
                print(f"| {segment:.1%} of the teacher | {sd:.0%} | {most} | {alternatives} | {rate:.1%} | {used:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
