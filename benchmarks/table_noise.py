"""How much of a latency table is noise, and does a longer timing window buy it back?

One seed's candidates of a quality run (``benchmarks.quality --run``) are profiled again as its
distill stage did (:func:`lana.latency.profiles.profile_latency`, the run's latency settings),
``--repeats`` times for each variant of its latency settings (``KEY=VALUE[,KEY=VALUE]`` of
``latency``; ``-`` for the run's own), the variants interleaved (a, b, a, b, ...) so the machine's
drift hits them alike::

    python -m benchmarks.table_noise --run RUN --teacher resnet --seed 0 --variants - time_cap_s=1.2 context_repeats=18

For each variant: the wall time of one profile, and the interquartile spread of the per-candidate
ratio between every two of its tables (:func:`benchmarks.table_agreement.summary`), the median
over the pairs. A table's own noise is about that spread over √2.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from benchmarks.table_agreement import summary
from lana.config import build_config
from lana.errors import ConfigError


def spreads(tables: list[dict]) -> list[float]:
    """The interquartile spread (%) of the per-candidate ratio for every pair of ``tables``."""
    return [summary(a, b)["spread_pct"] for a, b in itertools.combinations(tables, 2)]


def variant(base, text: str):
    """``base`` (a LatencyConfig) with ``KEY=VALUE[,KEY=VALUE]`` applied as ``--set latency.KEY=VALUE``
    overrides are (:func:`lana.config.build_config`: YAML values, validated); ``-``: as it is."""
    if text == "-":
        return base
    overrides = [f"latency.{item}" for item in text.split(",")]
    return build_config({"latency": base.model_dump(mode="json")}, overrides).latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a quality run folder (benchmarks.quality --run)")
    parser.add_argument("--teacher", default="resnet", help="resnet, mobilenet, efficientnet or vit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["-", "time_cap_s=1.2"],
                        help="latency settings to compare: KEY=VALUE[,KEY=VALUE], or - for the run's own")
    parser.add_argument("--repeats", type=int, default=3, help="profiles per variant (at least 2)")
    parser.add_argument("--mode", default="cpu")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2: the spread is between two tables")
    folder = Path(args.run) / args.teacher / f"seed{args.seed}"
    if not folder.is_dir():
        parser.error(f"{folder} is missing: run benchmarks.quality --teachers {args.teacher} first")
    from benchmarks.quality_run import seed_context
    from lana.distill.candidates import build_all_candidates
    from lana.latency.profiles import profile_latency

    ctx = seed_context(args.mode, args.teacher, args.run, args.seed)
    try:
        settings = {v: variant(ctx.config.latency, v) for v in args.variants}
    except ConfigError as exc:
        parser.error(f"--variants: {exc}")
    candidates = build_all_candidates(ctx.specs, ctx.config.ops)
    tables: dict[str, list[dict]] = {v: [] for v in args.variants}
    walls: dict[str, list[float]] = {v: [] for v in args.variants}
    for round_ in range(args.repeats):
        for v, cfg in settings.items():
            tick = time.time()
            tables[v].append(profile_latency(ctx.teacher, ctx.specs, candidates, ctx.input_shape, cfg))
            walls[v].append(time.time() - tick)
            print(f"round {round_ + 1}, {v}: {walls[v][-1]:.0f} s, teacher {tables[v][-1]['teacher_latency_ms']:.2f} ms", flush=True)
    print(f"\n{args.teacher} seed {args.seed}, {len(candidates)} blocks, {args.repeats} profiles per variant, interleaved")
    print("| latency settings | wall per profile (median) | interquartile spread between two tables (median of pairs; each pair) |")
    print("| --- | --- | --- |")
    for v in args.variants:
        pairs = spreads(tables[v])
        label = "the run's own" if v == "-" else v
        each = ", ".join(f"{p:.1f}" for p in pairs)
        print(f"| {label} | {statistics.median(walls[v]):.0f} s | {statistics.median(pairs):.1f} % ({each}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
