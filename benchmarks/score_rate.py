"""Swap-one scoring rate: candidates scored per second, and where the time goes.

    nice -n 10 .venv/bin/python benchmarks/score_rate.py                 # the figures in docs/benchmarks.md
    nice -n 10 .venv/bin/python benchmarks/score_rate.py --per-block 6   # fewer candidates

The issue-24 case: timm ``mobilenetv3_large_100`` (10 classes, random init: the rate does
not depend on the weights) on 32x32 images, every block, ``--per-block`` candidates per
block drawn from the whole zoo with a fixed seed (plus keep-teacher), ``--images`` scoring
images. Prints candidates/s of :func:`lana.distill.score.score_candidates` by wall clock and
by the process's CPU time (run it with ``OMP_NUM_THREADS=1``: one thread's CPU time does not
grow when other jobs share the machine, its wall time does) and, with ``--profile``,
torch's profiler table of the run.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from lana.config import OpsConfig
from lana.distill.candidates import build_all_candidates
from lana.distill.score import score_candidates
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import build_model


def setting(per_block: int, seed: int = 0):
    """The teacher, its candidates (``per_block`` sampled per block + teacher)."""
    torch.manual_seed(seed)
    teacher = build_model("timm:mobilenetv3_large_100", {"num_classes": 10}).eval()
    specs = discover_blocks(teacher, (1, 3, 32, 32))
    everything = build_all_candidates(specs, OpsConfig())
    rng = random.Random(seed)
    picked = {}
    for block, cands in everything.items():
        others = sorted(n for n in cands if n != "teacher")
        keep = ["teacher", *rng.sample(others, min(per_block, len(others)))]
        picked[block] = {n: cands[n] for n in keep}
    return teacher, picked, sum(len(c) for c in everything.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-block", type=int, default=12)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    teacher, candidates, whole = setting(args.per_block)
    images = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (args.images,), generator=torch.Generator().manual_seed(2))
    count = sum(len(c) for c in candidates.values())
    print(f"mobilenetv3_large_100 32x32: {len(candidates)} blocks, {count} candidates scored "
          f"(whole zoo: {whole}), {args.images} images, {torch.get_num_threads()} threads")
    score_candidates(teacher, {b: dict(list(c.items())[:2]) for b, c in list(candidates.items())[:1]}, images[:8], labels[:8])  # warm-up
    if args.profile:
        with torch.profiler.profile() as prof:
            tick = time.perf_counter()
            score_candidates(teacher, candidates, images, labels)
            seconds = time.perf_counter() - tick
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    else:
        tick, cpu = time.perf_counter(), time.process_time()
        score_candidates(teacher, candidates, images, labels)
        seconds, cpu = time.perf_counter() - tick, time.process_time() - cpu
        print(f"CPU time {cpu:.1f} s: {count / cpu:.2f} candidates per CPU-second")
    print(f"scored {count} candidates in {seconds:.1f} s wall: {count / seconds:.2f} candidates/s")


if __name__ == "__main__":
    main()
