"""The whole pipeline on one GPU: seconds per stage, peak GPU memory, the GPU's share of the wall.

    python -m benchmarks.gpu_check                       # one GPU: ResNet-50 at 224×224, the whole zoo
    python -m benchmarks.gpu_check --ops 'mbconv_*,dwsep_*,identity'   # a narrower zoo
    python -m benchmarks.gpu_check --smoke               # CPU, tiny: the script end to end (tests)

A torchvision ResNet-50 (untrained: time and memory do not depend on the weights) on
Fashion-MNIST upsampled to 224×224 and 3 channels, bounded data (``--images`` training
images, ``--epochs`` of distillation), through the public API stage by stage
(``lana.new_run`` with ``device="cuda"``, then ``Run.distill``, ``solve``, ``finetune``,
``export``). Printed per stage: seconds, peak resident and GPU memory, and the GPU's mean load
while it ran (NVML through ``torch.cuda.utilization``, else ``nvidia-smi``, sampled twice a
second). The aim (DESIGN.md): the whole run within 10 minutes on one H100, distillation at
least 80 % GPU-busy; the verdict is printed. Without CUDA (and without ``--smoke``) the script
refuses with one line and exit code 2.

Every candidate's weights stay in host memory for the whole distill stage (see
docs/scaling.md): ResNet-50's whole zoo is far larger than the 2-core machine's RAM, which is
why no CPU run of it is recorded; ``--ops`` narrows it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.stage_probe import Sampler, fashion_splits, machine, print_stages, run_pipeline_stages
from lana.config import RANDOM_CHECKPOINT
from lana.teacher.load import load_teacher

AIM_SECONDS, AIM_BUSY = 600, 80.0
FULL = {"model": "torchvision:resnet50", "size": 224, "images": 8192, "val": 1024, "batch": 128, "epochs": 1.0,
        "latency_batch": 64, "dtype": "float16", "repeats": 10, "ops": "*"}
SMOKE = {"model": "torchvision:resnet18", "size": 32, "images": 16, "val": 8, "batch": 8, "epochs": 1.0,
         "latency_batch": 1, "dtype": "float32", "repeats": 1, "ops": "conv_k1"}


def run_config(args) -> dict:
    """The run's settings (all recorded with the results)."""
    return {
        "ops": {"include": args.ops.split(",")},
        "data": {"batch_size": args.batch},
        "distill": {"epochs": args.epochs, **({"max_steps": 1} if args.smoke else {}), "checkpoint_every": 10**6},
        "score": {"val_images": args.val, "batch_size": args.batch},
        "latency": {"batch_size": args.latency_batch, "dtype": args.dtype, "warmup": 2, "repeats": args.repeats,
                    "max_repeats": 2 * args.repeats, "time_cap_s": 0.05 if args.smoke else 0.5, "context_rounds": 1},
        "finetune": {"epochs": 0.25 if args.smoke else 1.0, **({"min_steps": 0} if args.smoke else {})},
        "export": {"formats": ["torchscript"], "check_images": 4 if args.smoke else 64},
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny ResNet-18 run: checks the script end to end")
    for key, value in FULL.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value} ({SMOKE[key]} with --smoke)"
        )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def verdict(rows: dict, total: float) -> dict:
    """The aim: the whole run within 10 minutes, distillation at least 80 % GPU-busy."""
    busy = rows.get("  distill", {}).get("gpu_busy_pct")
    return {"total_s": round(total, 1), "within_10_min": total <= AIM_SECONDS,
            "distill_gpu_busy_pct": busy, "distill_busy_ok": None if busy is None else busy >= AIM_BUSY}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a machine with one GPU, or --smoke for the CPU check", file=sys.stderr)
        raise SystemExit(2)
    device = "cpu" if args.smoke else "cuda"
    train, val, test = fashion_splits(args.size, args.images, args.val, args.val)
    torch.manual_seed(0)
    teacher = load_teacher(args.model, RANDOM_CHECKPOINT, {"num_classes": 10}).eval()
    with tempfile.TemporaryDirectory(prefix="lana-gpu-check-") as folder, Sampler(interval=0.1, gpu=device == "cuda") as sampler:
        out = run_pipeline_stages(teacher, train, val, test, Path(folder) / "run", run_config(args), "50%", device, sampler)
    rows = sampler.report()
    total = sum(r["seconds"] for name, r in rows.items() if not name.startswith(" "))
    result = {"command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "machine": machine(),
              "stages": rows, "candidates": out["table_rows"], "blocks": out["blocks"],
              "student_ms": (out["report"] or {}).get("student_latency_ms"), "teacher_ms": (out["report"] or {}).get("teacher_latency_ms"),
              "verdict": verdict(rows, total)}
    print_stages(rows)
    print(json.dumps({k: result[k] for k in ("candidates", "blocks", "student_ms", "teacher_ms", "verdict")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
