"""Candidates per block with the full op zoo, for every teacher family lana finds blocks in.

For each model: build it (random weights, nothing downloaded), find its blocks at the given
input size, and build every op of the zoo for every block (an op declines blocks whose
shapes it cannot reproduce). Prints a Markdown table: blocks, then min / median / max
candidates per block (``teacher`` included), over all blocks and over the shape-changing
(strided or channel-changing) blocks alone.

    .venv/bin/python -m benchmarks.zoo_counts                      # all families, 224×224
    .venv/bin/python -m benchmarks.zoo_counts --models timm:resnet18 --size 160 --jobs 2

Only shapes matter, so weights are random; low-rank ops run one SVD per conv, which makes
the widest models take a minute or two each on one CPU thread.
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

# (family, model): one line of the table each.
MODELS = [
    ("ResNet basic", "timm:resnet18"),
    ("ResNet basic", "torchvision:resnet18"),
    ("ResNet bottleneck", "timm:resnet50"),
    ("ResNet bottleneck", "torchvision:resnet50"),
    ("MobileNetV2", "timm:mobilenetv2_100"),
    ("MobileNetV2", "torchvision:mobilenet_v2"),
    ("MobileNetV3", "timm:mobilenetv3_large_100"),
    ("MobileNetV3", "torchvision:mobilenet_v3_small"),
    *[("EfficientNet", f"timm:efficientnet_b{b}") for b in range(8)],
    *[("EfficientNet", f"torchvision:efficientnet_b{b}") for b in (0, 3, 7)],
    ("EfficientNetV2", "timm:tf_efficientnetv2_b0"),
    ("EfficientNetV2", "torchvision:efficientnet_v2_s"),
    ("RegNet", "timm:regnetx_002"),
    ("RegNet", "torchvision:regnet_x_400mf"),
]


def selected_ops(include: list[str], exclude: list[str]) -> list:
    """The ``OpDef``s the patterns select (``teacher`` aside: every block has it)."""
    import op_zoo

    names = {d.name for pattern in include for d in op_zoo.list_ops(pattern)}
    names -= {d.name for pattern in exclude for d in op_zoo.list_ops(pattern)}
    return [op_zoo.get_op(n) for n in sorted(names - {"teacher"})]


def count_model(model: str, size: int, include: list[str], exclude: list[str]) -> dict:
    """Blocks of ``model`` at ``size``×``size`` and how many candidates each gets."""
    import torch

    from lana.teacher.blocks import discover_blocks
    from lana.teacher.load import load_teacher

    torch.set_num_threads(1)
    begin = time.time()
    specs = discover_blocks(load_teacher(model, "random", {"num_classes": 1000}), (1, 3, size, size))
    ops = selected_ops(include, exclude)
    counts, changing = [], []
    with torch.no_grad():
        for spec in specs:
            # What op_zoo.build_candidates keeps, one op at a time: a wide block's full set of
            # candidates at once can take gigabytes.
            n = 1 + sum(op.build(spec) is not None for op in ops)
            counts.append(n)
            if not spec.same_shape:
                changing.append(n)
    return {"model": model, "blocks": len(specs), "counts": counts, "changing": changing, "seconds": time.time() - begin}


def _spread(values: list[int]) -> str:
    if not values:
        return "–"
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="models to count (default: one line per family member listed in this file)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--include", nargs="*", default=["*"], help="op name patterns (default: the whole zoo)")
    parser.add_argument("--exclude", nargs="*", default=[], help="op name patterns to leave out")
    parser.add_argument("--jobs", type=int, default=1, help="models counted in parallel processes")
    args = parser.parse_args()

    import op_zoo

    family = dict((m, f) for f, m in MODELS)
    models = args.models or [m for _, m in MODELS]
    ops = selected_ops(args.include, args.exclude)
    print(f"{len(ops) + 1} ops of {len(op_zoo.list_ops())} registered; input {args.size}×{args.size}; "
          f"candidates per block (min / median / max), teacher included\n")
    print("| family | model | blocks | all blocks: min / median / max | shape-changing blocks | seconds |")
    print("| --- | --- | ---: | --- | --- | ---: |")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [pool.submit(count_model, m, args.size, args.include, args.exclude) for m in models]
        for job in jobs:
            r = job.result()
            print(f"| {family.get(r['model'], '')} | `{r['model']}` | {r['blocks']} | {_spread(r['counts'])} | "
                  f"{_spread(r['changing'])} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
