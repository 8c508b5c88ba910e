"""Distillation throughput: images per second and where the time goes (teacher vs candidates).

    .venv/bin/python -m benchmarks.distill_throughput            # the figures in docs/scaling.md
    .venv/bin/python -m benchmarks.distill_throughput --quick    # fewer steps and settings

A small demo ResNet teacher (3 stages of 16/32/64 channels, one block each; untrained: speed
does not depend on the weights) on synthetic 32x32 images, distilled with 1, 8, 32 and every
applicable op per block (``distill.max_memory: auto``: one group here), then with every op
under a memory limit that forces about three groups, with and without the feature cache.
Each setting first runs one step to warm up (lazy imports, kernel selection), then
``--steps`` timed steps per group, ``--repeats`` times (the fastest repeat is kept: other work
on the machine only slows runs down); checkpoints are off. Reported: images per second (each
image through the teacher once per group and through every candidate), candidate-images per
second, and the shares of the training time spent in the teacher's forward pass, in the
candidates (forward, backward, optimiser step) and in fetching data.
"""
from __future__ import annotations

import argparse
import random
import tempfile

import torch

import op_zoo
from lana.config import build_config
from lana.data import load_data
from lana.distill.candidates import build_all_candidates
from lana.distill.core import distill_candidates
from lana.distill.distributed import plan_groups
from lana.run.folder import RunFolder
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import build_model


def run_setting(ops: list[str], steps: int, batch: int, distill: dict, groups: int = 1) -> dict:
    """Distil ``ops`` for ``steps`` steps on the demo teacher; return the timing profile."""
    tree = {
        "teacher": {"kwargs": {"num_classes": 10, "in_chans": 1, "widths": [16, 32, 64], "depth": 1}},
        "data": {"kind": "synthetic", "image_size": 32, "val_size": 100, "batch_size": batch},
        "ops": {"include": ops},
        "distill": {"max_steps": steps, "epochs": 100, "checkpoint_every": 10**6, **distill},
    }
    config = build_config(tree)
    splits = load_data(config.data)
    teacher = build_model(config.teacher.model, config.teacher.kwargs).eval()
    specs = discover_blocks(teacher, (1, *splits.input_shape))
    torch.manual_seed(0)
    candidates = build_all_candidates(specs, config.ops)
    if groups > 1:  # a limit that leaves room for about 1/groups of the candidates
        whole = plan_groups(teacher, specs, candidates, batch, 2**60, splits.input_shape)[1]
        base = plan_groups(teacher, specs, {b: {} for b in candidates}, batch, 2**60, splits.input_shape)[1]
        config = build_config({**tree, "distill": {**tree["distill"], "max_memory": int(base + (whole - base) / groups)}})
    profile: dict = {"synchronise": True}  # exact teacher/candidate split on a GPU
    with tempfile.TemporaryDirectory(prefix="lana-bench-") as folder:
        distill_candidates(teacher, specs, candidates, splits, config, RunFolder(folder), profile=profile)
    profile["candidates"] = sum(len(c) - 1 for c in candidates.values())
    profile["blocks"] = len(candidates)
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per group")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 repeat, fewer settings")
    args = parser.parse_args()
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    every = [op.name for op in op_zoo.list_ops()]
    sample = random.Random(0).sample(every, 32)
    settings = [("1 op", ["conv_k3"], {}, 1), ("8 ops", sample[:8], {}, 1), ("32 ops", sample, {}, 1), ("all ops", ["*"], {}, 1),
                ("all ops, memory-limited, features cached", ["*"], {}, 3),
                ("all ops, memory-limited, features recomputed", ["*"], {"feature_cache": "none"}, 3)]
    if args.quick:
        settings = [s for s in settings if s[0] != "32 ops"]
    run_setting(sample[:8], 1, args.batch, {})  # warm-up: lazy imports, kernel selection
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {steps} steps per group, "
          f"fastest of {repeats}\n")
    print("| setting | candidates | groups | images/s | candidate-images/s | teacher | candidates | data |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, ops, distill, groups in settings:
        p = max((run_setting(ops, steps, args.batch, distill, groups) for _ in range(repeats)), key=lambda r: r["images"] / r["wall_s"])
        wall = p["wall_s"]
        rate = p["images"] / wall
        print(f"| {label} | {p['candidates']} ({p['blocks']} blocks) | {p['groups']} | {rate:.0f} "
              f"| {rate * p['candidates'] / p['groups']:.0f} "
              f"| {100 * p['teacher_s'] / wall:.1f} % | {100 * p['candidates_s'] / wall:.1f} % | {100 * p['data_s'] / wall:.1f} % |",
              flush=True)


if __name__ == "__main__":
    main()
