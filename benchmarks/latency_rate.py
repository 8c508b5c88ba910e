"""In-context latency profiling: where its time goes, and what timing candidates alone briefly changes.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.latency_rate --per-block 6

The issue-24 case of ``benchmarks/score_rate.py`` (timm ``mobilenetv3_large_100``, 32x32,
``--per-block`` candidates per block + keep-teacher), the default ``LatencyConfig`` (batch
64, eager) with one thread and the process clock (``--clock wall`` for the wall clock). A
profile in context has two passes: every candidate timed alone
(:func:`lana.latency.measure.measure_candidates`; in context only the order of the
first cover round comes from it) and the cover networks timed whole, clocked at the blocks
(:func:`lana.latency.context.measure_in_context`: what the solver adds). Prints the CPU time
of each pass and its calls, the alone pass with the default knobs against
:data:`lana.latency.profiles.ORDERING_KNOBS` (same process, one after the other), the rank
correlation of the two orders within each block, and how far the in-context figures of the
two orders are apart (each order drives one in-context pass; a second pass with the
default order gives the noise of two passes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.score_rate import setting, spearman
from lana.config import LatencyConfig
from lana.latency.context import measure_in_context
from lana.latency.measure import measure_candidates
from lana.latency.profiles import isolated_settings
from lana.teacher.blocks import discover_blocks


def timed(fn):
    """``fn()``'s result and the CPU seconds it took."""
    tick = time.process_time()
    out = fn()
    return out, time.process_time() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-block", type=int, default=6)
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    args = parser.parse_args()
    teacher, candidates, whole = setting(args.per_block)
    specs = discover_blocks(teacher, (1, 3, 32, 32))
    shapes = {s.name: s.in_shape for s in specs}
    # CPU time of one thread: immune to other jobs on a shared machine (wall: --clock wall)
    cfg = LatencyConfig(threads=1, clock=args.clock)
    count = sum(len(c) for c in candidates.values())
    print(f"mobilenetv3_large_100 32x32 batch {cfg.batch_size}: {count} candidates (whole zoo {whole}), "
          f"{torch.get_num_threads()} threads")
    passes = {}
    for name, knobs in (("default knobs", cfg), ("ordering knobs", isolated_settings(cfg, "context"))):
        alone, cpu = timed(lambda knobs=knobs: measure_candidates(candidates, shapes, knobs))
        calls = sum(t.repeats + t.warmup for t in alone.values())
        print(f"alone, {name}: CPU {cpu:.1f} s, {calls} calls ({calls / count:.0f} a candidate), "
              f"{sum(t.tight for t in alone.values())}/{count} tight")
        passes[name] = alone
    rhos = []
    for block, cands in candidates.items():
        names = list(cands)
        rhos.append(spearman([passes["default knobs"][(block, n)].median_ms for n in names],
                             [passes["ordering knobs"][(block, n)].median_ms for n in names]))
    print(f"order within a block, brief against default: Spearman median {statistics.median(rhos):.3f}, min {min(rhos):.3f}")
    figures = {}
    for name, alone in (*passes.items(), ("default knobs, again", passes["default knobs"])):
        order = {b: sorted(c, key=lambda n, b=b: alone[(b, n)].median_ms) for b, c in candidates.items()}
        (context, record), cpu = timed(lambda order=order: measure_in_context(teacher, specs, candidates, (3, 32, 32), cfg,
                                                                               cfg.context_rounds, order=order))
        figures[name] = context
        print(f"in context, ordered by the {name}: CPU {cpu:.1f} s, {record['networks']} networks, "
              f"teacher {record['teacher_latency_ms']:.2f} ms, clocked blocks {record['blocks_sum_ms']:.2f} ms")
    base = figures["default knobs"]
    for other in ("ordering knobs", "default knobs, again"):  # the second: the noise of two in-context passes
        # a gap as a share of the block's own teacher figure: tiny ops' relative noise does not swamp it
        gaps = [abs(figures[other][k].median_ms - base[k].median_ms) / base[(k[0], "teacher")].median_ms for k in base]
        print(f"in-context figures, ordered by the {other} against the default knobs: |gap| / the block's teacher "
              f"median {100 * statistics.median(gaps):.1f} %, 90th percentile {100 * sorted(gaps)[int(0.9 * len(gaps))]:.1f} %, "
              f"the sums over all candidates {sum(figures[other][k].median_ms for k in base) / sum(base[k].median_ms for k in base):.3f}")


if __name__ == "__main__":
    main()
