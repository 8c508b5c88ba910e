"""A quality run's networks timed again two ways: the final pass's round-robin and pairwise.

The quality benchmark's searches time each network interleaved with the teacher alone; its
final pass times every network of a teacher in one round-robin with the teacher. On the
2-core VM the two disagreed by up to 40 % for the same network (docs/benchmarks.md, "The
final run on converged teachers"). This script repeats both on a finished run folder, so
the spread of each protocol can be seen on a quiet machine:

    OMP_NUM_THREADS=1 python -m benchmarks.retime --run /work/qrun-82aee40/mobilenet --rounds 3

It prints, for each network of the run's long fine-tune (``--files``), its share of the
teacher's latency in each round of each protocol.
"""
from __future__ import annotations

import argparse
import statistics
from fnmatch import fnmatch
from pathlib import Path

import torch

from lana.config import load_config
from lana.latency.measure import measure_networks
from lana.teacher.load import load_teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="one teacher's folder of a quality run (RUN/<teacher>)")
    parser.add_argument("--files", default="long_*.pt", help="which saved units' networks to report (glob, among --all)")
    parser.add_argument("--all", default="*_*.pt", help="the networks of the round-robin (glob; the final pass: every unit)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    run = Path(args.run)
    config = load_config(run / "seed0" / "config.yaml")
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    latency, size = config.latency, config.data.image_size
    shape = (int(config.teacher.kwargs.get("in_chans", 3)), size, size)

    everyone, chosen = [], []  # (name, network): the round-robin's, and the ones reported
    for path in sorted(run.glob(args.all)):
        saved = torch.load(path, weights_only=False)  # the benchmark's own files: whole modules
        rows = [r for r in saved["rows"] if "val_top1" in r]
        these = [(f"{path.stem} {r['method']} seed {r['seed']}", m.eval()) for r, m in zip(rows, saved["models"])]
        everyone += these
        chosen += these if fnmatch(path.name, args.files) else []
    names = {name for name, _ in chosen}
    pair, robin = {n: [] for n in names}, {n: [] for n in names}
    for _ in range(args.rounds):
        for name, model in chosen:
            t = measure_networks([teacher, model], shape, latency, time_cap_s=4 * latency.time_cap_s)
            pair[name].append(t[1]["median_ms"] / t[0]["median_ms"])
        models = [teacher] + [m for _, m in everyone]
        t = measure_networks(models, shape, latency, time_cap_s=max(10.0, 2 * latency.time_cap_s * len(models)))
        for (name, _), timing in zip(everyone, t[1:]):
            if name in robin:
                robin[name].append(timing["median_ms"] / t[0]["median_ms"])
    print(f"{len(everyone)} networks in the round-robin; shares of the teacher's latency per round")
    print("| network | pairwise | round-robin | median pairwise / round-robin |")
    print("| --- | --- | --- | --- |")
    for name in sorted(names):
        p, r = pair[name], robin[name]
        print(f"| {name} | {', '.join(f'{x:.3f}' for x in p)} | {', '.join(f'{x:.3f}' for x in r)} | "
              f"{statistics.median(p):.3f} / {statistics.median(r):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
