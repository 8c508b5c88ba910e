"""Swap-one scoring rate: candidates scored per second, and where the time goes.

    nice -n 10 .venv/bin/python -m benchmarks.score_rate                 # the figures in docs/benchmarks.md
    nice -n 10 .venv/bin/python -m benchmarks.score_rate --per-block 6   # fewer candidates
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.score_rate --compare  # plain against fast, one process

The issue-24 case: timm ``mobilenetv3_large_100`` (10 classes, random init: the rate does
not depend on the weights; ``--checkpoint`` and ``--val-dir`` take the trained teacher and
the images of ``benchmarks/mnv3_case.py``, whose KL scores are large enough for comparing
two scorers to mean something) on 32x32 images, every block, ``--per-block`` candidates per
block drawn from the whole zoo with a fixed seed (plus keep-teacher), ``--images`` scoring
images. Prints candidates/s of :func:`lana.distill.score.score_candidates` by wall clock and
by the process's CPU time (run it with ``OMP_NUM_THREADS=1``: one thread's CPU time does not
grow when other jobs share the machine, its wall time does) and, with ``--profile``,
torch's profiler table of the run. With ``--compare`` the plain scorer (``plain=True``: the
whole network for every group of 8 candidates, PyTorch's own kernels: the algorithm of
``07c264c``) and today's (prefix replayed, :mod:`lana.distill.inference`) run alternately,
``--rounds`` times each, in this one process; it prints each one's CPU time and how far
the fast scores are from the plain ones (largest KL difference, relative and absolute, and
the rank correlation of the KL within each block).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from benchmarks.mnv3_case import NORMALISE
from lana.config import OpsConfig, ScoreConfig
from lana.data import take_tensors
from lana.distill.candidates import build_all_candidates
from lana.distill.score import score_candidates
from lana.distill.validation import split_validation
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import build_model


def setting(per_block: int, seed: int = 0, checkpoint: Path | None = None):
    """The teacher (random, or the weights in ``checkpoint``), its candidates (``per_block``
    sampled per block + teacher)."""
    torch.manual_seed(seed)
    teacher = build_model("timm:mobilenetv3_large_100", {"num_classes": 10}).eval()
    if checkpoint is not None:  # benchmarks/mnv3_case.py's OUT/teacher.pt
        stored = torch.load(checkpoint, weights_only=True)
        teacher.load_state_dict(stored.get("state", stored))
    specs = discover_blocks(teacher, (1, 3, 32, 32))
    everything = build_all_candidates(specs, OpsConfig())
    rng = random.Random(seed)
    picked = {}
    for block, cands in everything.items():
        others = sorted(n for n in cands if n != "teacher")
        keep = ["teacher", *rng.sample(others, min(per_block, len(others)))]
        picked[block] = {n: cands[n] for n in keep}
    return teacher, picked, sum(len(c) for c in everything.values())


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = float(rank)
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two lists (ties broken by position)."""
    ra, rb = _ranks(a), _ranks(b)
    mean = (len(a) - 1) / 2
    num = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    den = sum((x - mean) ** 2 for x in ra)
    return num / den if den else 1.0


def agreement(reference: dict, other: dict) -> dict[str, float]:
    """How far ``other``'s scores are from ``reference``'s on the same candidates."""
    keys = [k for k in reference if k[1] != "teacher"]
    diff = [abs(other[k]["kl"] - reference[k]["kl"]) for k in keys]
    rel = [d / max(reference[k]["kl"], 1e-12) for d, k in zip(diff, keys)]
    blocks = sorted({k[0] for k in keys})
    rhos = [spearman([reference[k]["kl"] for k in keys if k[0] == b], [other[k]["kl"] for k in keys if k[0] == b]) for b in blocks]
    hits = max(abs(other[k]["val_acc"] - reference[k]["val_acc"]) for k in keys)
    return {"max_abs_kl": max(diff), "max_rel_kl": max(rel), "min_block_spearman": min(rhos), "max_acc_diff": hits}


def compare(teacher, candidates, images, labels, rounds: int) -> None:
    """Plain and fast scorers alternately in this process: CPU time each, and their agreement."""
    count = sum(len(c) for c in candidates.values())
    cpu: dict[str, list[float]] = {"plain": [], "fast": []}
    scores = {}
    for _ in range(rounds):
        for mode in cpu:
            tick = time.process_time()
            scores[mode], _ = score_candidates(teacher, candidates, images, labels, plain=mode == "plain")
            cpu[mode].append(time.process_time() - tick)
            print(f"{mode}: CPU time {cpu[mode][-1]:.1f} s, {count / cpu[mode][-1]:.2f} candidates per CPU-second", flush=True)
    plain, fast = min(cpu["plain"]), min(cpu["fast"])
    print(f"best of {rounds}: plain {count / plain:.2f}, fast {count / fast:.2f} candidates per CPU-second: {plain / fast:.2f}x")
    print("fast against plain scores:", {k: f"{v:.3g}" for k, v in agreement(scores["plain"], scores["fast"]).items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-block", type=int, default=12)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--checkpoint", type=Path, help="teacher weights (benchmarks/mnv3_case.py's OUT/teacher.pt); default random")
    parser.add_argument("--val-dir", type=Path, help="score on this validation ImageFolder's scoring part (e.g. OUT/data/val)")
    parser.add_argument("--compare", action="store_true", help="plain and fast scorers alternately, with their agreement")
    parser.add_argument("--rounds", type=int, default=1, help="--compare: runs of each scorer")
    args = parser.parse_args()
    teacher, candidates, whole = setting(args.per_block, checkpoint=args.checkpoint)
    if args.val_dir is None:
        images = torch.randn(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        labels = torch.randint(0, 10, (args.images,), generator=torch.Generator().manual_seed(2))
    else:  # the scoring part of a validation ImageFolder, as lana.accelerate takes it
        val = datasets.ImageFolder(str(args.val_dir), transform=transforms.Compose([transforms.ToTensor(), NORMALISE]))
        images, labels = take_tensors(split_validation(val, ScoreConfig(val_images=args.images))[0], None, 500)
    count = sum(len(c) for c in candidates.values())
    print(f"mobilenetv3_large_100 32x32 ({'trained' if args.checkpoint else 'random init'}): {len(candidates)} blocks, "
          f"{count} candidates scored (whole zoo: {whole}), {len(images)} images, {torch.get_num_threads()} threads")
    score_candidates(teacher, {b: dict(list(c.items())[:2]) for b, c in list(candidates.items())[:1]}, images[:8], labels[:8])  # warm-up
    if args.compare:
        compare(teacher, candidates, images, labels, args.rounds)
        return
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
