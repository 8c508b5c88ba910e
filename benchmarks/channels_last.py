"""Training on a CPU: contiguous (NCHW) against channels_last batches, CPU seconds, interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.channels_last            # all three parts, 3 rounds

Two measurements, each alternating the two layouts round by round (so a drifting machine
moves both alike) and reporting the median CPU seconds of each and their ratio:

- ``blocks``: forward and backward of every trainable candidate of the whole zoo for one
  block at batch 128, as distillation runs them (:mod:`lana.distill.core` now feeds them
  channels_last batches on a CPU): timm ``mobilenetv3_large_100`` at 32x32 (the issue's
  MobileNetV3 case) and the demo ResNet at 28x28;
- ``distill``: the distillation loop itself (:func:`lana.distill.core.distill_candidates`,
  checkpoints off; the candidates' first build outside the timing), with ``CPU_CHANNELS_LAST`` off and on: MobileNetV3's
  whole zoo on three blocks (6 steps) and the demo's 14 ops on its 6 blocks (20 steps);
- ``fit``: five training steps (cross-entropy, forward and backward) of a whole network, as
  :func:`lana.distill.train.fit` runs them (weights and batches channels_last on a CPU):
  the demo ResNet (batch 128), the quality benchmark's ResNet-18-D (batch 64) and
  MobileNetV3 (batch 64).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import op_zoo
from lana.distill.candidates import build_module
from lana.teacher.blocks import discover_blocks
from lana.teacher.demo_net import demo_resnet

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A network and its input shape (one image)."""
    import timm

    if name == "demo":
        return demo_resnet(num_classes=10, in_chans=1), (1, 28, 28)
    if name == "resnet18d":
        return timm.create_model("resnet18d", num_classes=10, in_chans=1, channels=[32, 64, 128, 256], stem_width=16), (1, 28, 28)
    return timm.create_model("mobilenetv3_large_100", num_classes=10), (3, 32, 32)


def interleaved(run, rounds: int) -> dict[str, float]:
    """Median CPU seconds of ``run(layout)`` per layout, the layouts alternating each round."""
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(rounds):
        for name, layout in LAYOUTS.items():
            tick = time.process_time()
            own = run(layout)  # a run may time its own part (a number), else all of it is timed
            seconds[name].append(own if own is not None else time.process_time() - tick)
    return {name: statistics.median(values) for name, values in seconds.items()}


def block_rate(name: str, block: str, rounds: int) -> dict[str, float]:
    """Forward and backward of every trainable zoo candidate of ``block`` (batch 128)."""
    net, shape = model(name)
    spec = {s.name: s for s in discover_blocks(net.eval(), (1, *shape))}[block]
    modules = [m.train() for op in op_zoo.list_ops() if (m := build_module(spec, op.name)) is not None
               and any(p.requires_grad for p in m.parameters())]
    x = torch.randn(128, spec.in_channels, *spec.in_size)
    y = torch.randn(128, spec.out_channels, *spec.out_size)

    def run(layout):
        xx = x.contiguous(memory_format=layout)
        for module in modules:
            (module(xx) - y).square().mean().backward()

    return {"candidates": len(modules), **interleaved(run, rounds)}


def distill_rate(name: str, rounds: int) -> dict[str, float]:
    """CPU seconds of ``distill_candidates`` with channels_last batches off and on."""
    import tempfile

    from lana.config import build_config
    from lana.data import load_data
    from lana.distill import core
    from lana.distill.candidates import build_all_candidates
    from lana.run.folder import RunFolder
    from lana.stages.demo import DEMO_OPS

    net, shape = model(name)
    if name == "demo":
        tree, blocks, steps = {"data": {"kind": "digits", "image_size": 28, "val_size": 200}, "ops": {"include": DEMO_OPS}}, None, 20
    else:
        tree = {"data": {"kind": "synthetic", "channels": 3, "image_size": 32, "val_size": 50, "mean": [0.5] * 3, "std": [0.5] * 3},
                "ops": {"include": ["*"]}}
        blocks, steps = ["blocks.1.0", "blocks.3.0", "blocks.5.0"], 6
    tree["data"]["batch_size"] = 128
    tree["distill"] = {"max_steps": steps, "checkpoint_every": 10**6}
    config = build_config(tree)
    splits = load_data(config.data)
    specs = discover_blocks(net.eval(), (1, *splits.input_shape), blocks)

    def run(layout):
        core.CPU_CHANNELS_LAST = layout is torch.channels_last
        candidates = build_all_candidates(specs, config.ops)
        try:
            with tempfile.TemporaryDirectory() as folder:
                tick = time.process_time()
                core.distill_candidates(net, specs, candidates, splits, config, RunFolder(f"{folder}/run"))
                return time.process_time() - tick
        finally:
            core.CPU_CHANNELS_LAST = True

    count = sum(len(c) for c in build_all_candidates(specs, config.ops).values())
    return {"candidates": count, "steps": steps, **interleaved(run, rounds)}


def fit_rate(name: str, rounds: int) -> dict[str, float]:
    """Five cross-entropy training steps (forward and backward) of the whole network."""
    net, shape = model(name)
    batch = 128 if name == "demo" else 64
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    net.train()

    def run(layout):
        net.to(memory_format=layout)
        xx = x.contiguous(memory_format=layout)
        for _ in range(5):
            nn.functional.cross_entropy(net(xx), y).backward()

    return interleaved(run, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.channels_last", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=["blocks", "distill", "fit", "all"], default="all")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); CPU seconds, median of {args.rounds} interleaved rounds")
    if args.part in ("blocks", "all"):
        print("| model | block | trainable candidates | NCHW s | channels_last s | ratio |\n| --- | --- | --- | --- | --- | --- |")
        for name, block in (("mnv3", "blocks.1.0"), ("mnv3", "blocks.2.1"), ("mnv3", "blocks.5.0"),
                            ("demo", "layers.0"), ("demo", "layers.4")):
            r = block_rate(name, block, args.rounds)
            print(f"| {name} | {block} | {r['candidates']} | {r['nchw']:.2f} | {r['channels_last']:.2f} | "
                  f"{r['nchw'] / r['channels_last']:.2f}x |", flush=True)
    if args.part in ("distill", "all"):
        print("| model | candidates | steps | NCHW s | channels_last s | ratio |\n| --- | --- | --- | --- | --- | --- |")
        for name in ("mnv3", "demo"):
            r = distill_rate(name, args.rounds)
            print(f"| {name} | {r['candidates']} | {r['steps']} | {r['nchw']:.1f} | {r['channels_last']:.1f} | "
                  f"{r['nchw'] / r['channels_last']:.2f}x |", flush=True)
    if args.part in ("fit", "all"):
        print("| model | NCHW s | channels_last s | ratio |\n| --- | --- | --- | --- |")
        for name in ("demo", "resnet18d", "mnv3"):
            r = fit_rate(name, args.rounds)
            print(f"| {name} | {r['nchw']:.3f} | {r['channels_last']:.3f} | {r['nchw'] / r['channels_last']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
