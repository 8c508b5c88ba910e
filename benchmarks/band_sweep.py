"""lana's band search on a real table, with and without its other top-k selections as alternatives.

For one teacher and seed of a quality run (``benchmarks.quality``; the seed's distillation
done), lana's table budget is searched into the band (:func:`benchmarks.search.search_band`,
the benchmark's settings) at every budget of a grid, once offering the other ``solve.top_k``
selections at a closed bracket and once not, the two interleaved per budget so the machine's
drift touches both alike. Prints one row per budget and the misses of each::

    python -m benchmarks.band_sweep --run RUN --teacher mobilenet --seed 0 [--shares 0.28:0.72:0.02]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def grid(text: str) -> list[float]:
    """``"0.3,0.5"`` or ``"start:stop:step"`` (stop included) → budgets."""
    if ":" in text:
        start, stop, step = (float(v) for v in text.split(":"))
        return [round(v, 4) for v in np.arange(start, stop + step / 2, step)]
    return [float(v) for v in text.split(",")]


def sweep(cmp, seed: int, shares: list[float]) -> list[dict]:
    """Both searches at every budget: found share, measurements and the top-k rank kept, or the miss."""
    rows = []
    for share in shares:
        row: dict = {"budget": share}
        for label, offer in (("with", True), ("without", False)):
            tick = time.time()
            found = cmp.lana(share, seed, alternatives=offer)
            row[label] = ({"share": found.share, "measurements": found.measurements, "rank": found.extra.get("rank", 0)}
                          if found else {"note": cmp.rows[-1]["note"]})
            row[label]["seconds"] = time.time() - tick
        rows.append(row)
        print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    cells = []
    for label in ("with", "without"):
        got = row[label]
        cells.append(f"{got['share']:.3f}× in {got['measurements']}" + (f" (top-k #{got['rank'] + 1})" if got["rank"] else "")
                     if "share" in got else "missed" if "missed" in got["note"] else got["note"])
    return f"| {row['budget']:.2f}× | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a quality run folder (benchmarks.quality --run)")
    parser.add_argument("--teacher", default="mobilenet", help="resnet, mobilenet, efficientnet or vit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shares", default="0.28:0.72:0.02", help="budgets: a,b,c or start:stop:step")
    parser.add_argument("--mode", default="cpu")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's location)")
    args = parser.parse_args(argv)
    from benchmarks.compare import Comparison
    from benchmarks.quality import MODES
    from benchmarks.quality_run import seed_context

    folder = Path(args.run) / args.teacher
    if not (folder / f"seed{args.seed}").is_dir():
        parser.error(f"{folder / f'seed{args.seed}'} is missing: run benchmarks.quality --teachers {args.teacher} first")
    ctx = seed_context(args.mode, args.teacher, args.run, args.seed, args.data)
    cmp = Comparison({args.seed: ctx}, 0, MODES[args.mode]["max_measurements"])
    print(f"{args.teacher} seed {args.seed}: lana's band search with and without its other top-k selections")
    print("| budget | with alternatives | without |\n| --- | --- | --- |")
    rows = sweep(cmp, args.seed, grid(args.shares))
    for label in ("with", "without"):
        found = [r[label] for r in rows if "share" in r[label]]
        print(f"{label} alternatives: {len(rows) - len(found)} of {len(rows)} budgets missed; "
              f"{np.mean([f['measurements'] for f in found]):.1f} measurements when found; "
              f"{sum(1 for f in found if f['rank'])} found through an alternative; "
              f"{sum(r[label]['seconds'] for r in rows) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
