"""Do two seeds' latency tables agree? Same teacher, same candidates, same settings: only the
machine's state while each was measured differs (latency does not depend on the weights)::

    python -m benchmarks.table_agreement --run RUN --teacher resnet [--seeds 0 1]

``RUN`` is a quality run folder (``benchmarks.quality --run``). Prints each seed's teacher
latency and when it was measured, then the spread of the per-candidate ratio (second seed /
first): a table measured on a busy machine is not just slower, it is slower by a different
factor per candidate, and so it ranks selections differently.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def ratios(first: dict, second: dict) -> pd.Series:
    """Per (block, candidate): the second table's median over the first's (candidates in both)."""
    def table(record: dict) -> pd.Series:
        frame = pd.DataFrame(record["candidates"])
        return frame.set_index(["block", "candidate"])["median_ms"]
    a, b = table(first), table(second)
    common = a.index.intersection(b.index)
    return (b[common] / a[common]).rename("ratio")


def summary(first: dict, second: dict) -> dict:
    """The teacher's two latencies and the spread of the per-candidate ratio."""
    r = ratios(first, second)
    return {"candidates": len(r), "teacher_ratio": second["teacher_latency_ms"] / first["teacher_latency_ms"],
            "min": r.min(), "q25": r.quantile(0.25), "median": r.median(), "q75": r.quantile(0.75), "max": r.max(),
            "spread_pct": (r.quantile(0.75) / r.quantile(0.25) - 1) * 100}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a quality run folder (benchmarks.quality --run)")
    parser.add_argument("--teacher", default="resnet", help="resnet, mobilenet, efficientnet or vit")
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    args = parser.parse_args(argv)
    records = []
    for seed in args.seeds:
        path = Path(args.run) / args.teacher / f"seed{seed}" / "latency.json"
        if not path.is_file():
            parser.error(f"{path} is missing: run benchmarks.quality --teachers {args.teacher} first")
        records.append(json.loads(path.read_text()))
    for seed, record in zip(args.seeds, records):
        print(f"seed {seed}: teacher {record['teacher_latency_ms']:.2f} ms, measured at {record.get('measured_at', '?')}")
    s = summary(*records)
    print(f"seed {args.seeds[1]} / seed {args.seeds[0]} over {s['candidates']} candidates: teacher {s['teacher_ratio']:.3f}; "
          f"per candidate min {s['min']:.3f}, quartiles {s['q25']:.3f} / {s['median']:.3f} / {s['q75']:.3f}, "
          f"max {s['max']:.3f} (interquartile spread {s['spread_pct']:.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
