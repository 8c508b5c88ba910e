"""How far one batch's gradients are from float64, contiguous and channels_last (CPU).

    python -m benchmarks.layout_grads [--teachers efficientnet,mobilenet,resnet]

Each CPU-mode quality teacher at its initialisation (seed 0), one batch of 64 random images:
for each parameter with a gradient above 1e-3, the largest error against the float64
network's, relative to that parameter's largest gradient; prints the worst three per layout.
A teacher that trains worse on channels_last than contiguous would show it here first.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F


def worst_errors(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[tuple[float, str]]]:
    """Per layout ("contiguous", "channels_last"): the worst (relative error, parameter) against float64."""
    layouts = {"contiguous": (copy.deepcopy(net), images),
               "channels_last": (copy.deepcopy(net).to(memory_format=torch.channels_last),
                                 images.contiguous(memory_format=torch.channels_last)),
               "float64": (copy.deepcopy(net).double(), images.double())}
    grads = {}
    for name, (model, x) in layouts.items():
        torch.manual_seed(1)  # the same dropout masks in every layout
        F.cross_entropy(model(x), labels).backward()
        grads[name] = {n: p.grad.double() for n, p in model.named_parameters()}
    exact = grads.pop("float64")
    return {name: sorted(((g[n] - ref).abs().max().item() / ref.abs().max().item(), n)
                         for n, ref in exact.items() if ref.abs().max() > 1e-3)[-3:]
            for name, g in grads.items()}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.quality import MODES
    from benchmarks.teachers import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="efficientnet,mobilenet,resnet")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    for key in args.teachers.split(","):
        torch.manual_seed(0)
        model, kwargs = MODES["cpu"]["teachers"][key]
        net = build_model(model, kwargs).train()
        images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
        for layout, worst in worst_errors(net, images, labels).items():
            print(f"{key:13s} {layout:13s} worst relative errors: " + ", ".join(f"{e:.1e} {n}" for e, n in worst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
