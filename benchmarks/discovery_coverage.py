"""How many of a published list of timm / torchvision models automatic block discovery handles.

For each model: build it as a new user would (``num_classes=10``, random weights, nothing
downloaded), run ``discover_blocks`` at the model's own input size, and print one Markdown
row: blocks found and their layouts, or the one-line reason none were. The last line
counts the models with at least one block. This is the discovery part of the coverage
benchmark the issue asks for (``benchmarks/coverage.py``: distillation, assembly, export
and speed-up per model are not measured here).

    .venv/bin/python -m benchmarks.discovery_coverage                 # the whole list
    .venv/bin/python -m benchmarks.discovery_coverage --models timm:vit_tiny_patch16_224
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

# One or two per family: the families users bring (issue 23), the ones lana handled before,
# and a few that stress discovery (dense, multi-branch, hybrid, MLP-only).
MODELS = [
    "timm:resnet18", "timm:resnet50", "timm:mobilenetv2_100", "timm:mobilenetv3_small_100",
    "timm:efficientnet_b0", "timm:tf_efficientnetv2_b0", "timm:regnetx_002", "timm:regnety_002",
    "timm:convnext_atto", "timm:convnext_tiny", "timm:convnextv2_atto",
    "timm:vit_tiny_patch16_224", "timm:vit_small_patch16_224", "timm:deit_tiny_patch16_224",
    "timm:deit_tiny_distilled_patch16_224", "timm:swin_tiny_patch4_window7_224",
    "timm:swinv2_tiny_window8_256", "timm:efficientvit_b0", "timm:efficientvit_m0",
    "timm:repvit_m1", "timm:fastvit_t8", "timm:mobilenetv4_conv_small",
    "timm:mobilenetv4_hybrid_medium", "timm:efficientformer_l1", "timm:efficientformerv2_s0",
    "timm:poolformer_s12", "timm:poolformerv2_s12", "timm:densenet121", "timm:ghostnet_100",
    "timm:rexnet_100", "timm:ese_vovnet19b_dw", "timm:levit_128s", "timm:mixer_s16_224",
    "timm:resmlp_12_224", "timm:dla34", "timm:hrnet_w18_small", "timm:cspresnet50",
    "timm:res2net50_14w_8s", "timm:resnest14d", "timm:seresnext26d_32x4d", "timm:mnasnet_100",
    "timm:lcnet_050", "timm:mobilevit_xxs", "timm:edgenext_xx_small", "timm:pit_ti_224",
    "timm:xcit_nano_12_p16_224", "timm:cait_xxs24_224", "timm:pvt_v2_b0", "timm:coatnet_0_rw_224",
    "timm:regnetz_b16", "timm:inception_v3", "timm:xception41", "timm:hgnetv2_b0",
    "timm:tiny_vit_5m_224", "timm:inception_next_tiny", "timm:mambaout_femto", "timm:starnet_s1",
    "timm:vgg11",
    "torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:convnext_tiny",
    "torchvision:vit_b_16", "torchvision:swin_t", "torchvision:efficientnet_b0",
    "torchvision:densenet121", "torchvision:shufflenet_v2_x0_5", "torchvision:mnasnet0_5",
    "torchvision:regnet_x_400mf",
]


def input_size(model) -> int:
    """The model's own input side (timm's pretrained config; 224 for torchvision)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def discover_one(name: str) -> dict:
    """Blocks found in one model, or the reason none were."""
    import torch

    from lana.errors import LanaError
    from lana.teacher.blocks import discover_blocks
    from lana.teacher.load import load_teacher

    begin = time.time()
    try:
        model = load_teacher(name, None, {"num_classes": 10})
        size = input_size(model)
        with torch.no_grad():
            specs = discover_blocks(model, (1, 3, size, size))
    except LanaError as err:
        return {"model": name, "blocks": 0, "layouts": "", "why": str(err)[:160], "seconds": time.time() - begin}
    layouts = Counter(getattr(s, "layout", "nchw") for s in specs)
    return {"model": name, "blocks": len(specs), "layouts": ", ".join(f"{k} {v}" for k, v in sorted(layouts.items())),
            "why": "", "seconds": time.time() - begin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    args = parser.parse_args()
    print("| model | blocks | layouts | why none | s |\n| --- | ---: | --- | --- | ---: |")
    found = 0
    for name in args.models:
        row = discover_one(name)
        found += row["blocks"] > 0
        print(f"| {row['model']} | {row['blocks']} | {row['layouts']} | {row['why']} | {row['seconds']:.1f} |", flush=True)
    print(f"\nblocks found in {found} of {len(args.models)} models")


if __name__ == "__main__":
    main()
