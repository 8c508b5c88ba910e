"""Scale on this machine: peak resident memory and seconds per stage, and evaluation over a
large split with flat memory.

    nice -n 10 python -m benchmarks.scale mobilenetv4 --steps 2      # issue 22's memory case
    nice -n 10 python -m benchmarks.scale resnet50 --steps 2 --ops 'conv_*,mbconv_k3_*'
    nice -n 10 python -m benchmarks.scale eval --images 50000         # lazily generated split

Cases:
- ``mobilenetv4``: timm ``mobilenetv4_conv_medium`` at 64×64, 96 training images (Fashion-MNIST
  upsampled to 3 channels), the whole zoo, ``distill.max_memory: auto`` by default: every
  stage's peak resident memory against the limit lana resolved (logged by the distill stage).
- ``resnet50``: torchvision ResNet-50 at 224×224 on the same data, a bounded step count.
- ``eval``: a ``--images``-image split generated from each index (nothing stored), streamed
  through the teacher of ``--model`` at ``--size``: resident memory at 10 %, 50 % and 100 %.

The teachers are untrained (``--model`` is built with random weights, passed from Python):
memory and time do not depend on the weights. What ran and what it measured are printed and
written as JSON (``--out``); docs/benchmarks.md records the runs on the 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.stage_probe import LazyImages, Sampler, fashion_splits, machine, print_stages, run_pipeline_stages, stream_evaluate
from lana.config import RANDOM_CHECKPOINT
from lana.distill.candidates import BUILDS
from lana.run.memory import memory_limit, mib, parse_bytes, resident_bytes
from lana.teacher.load import load_teacher

CASES = {
    "mobilenetv4": {"model": "timm:mobilenetv4_conv_medium", "size": 64, "images": 96},
    "resnet50": {"model": "torchvision:resnet50", "size": 224, "images": 64},
    "eval": {"model": "timm:mobilenetv4_conv_medium", "size": 64, "images": 50_000},
}


class LimitLog(logging.Handler):
    """Keeps the limit the distill stage resolved (``group_budget`` logs it with ``extra``) and
    the number of distillation groups; echoes lana's progress lines with the resident size."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = self.held = self.groups = None
        self.started = time.time()

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "memory_limit"):
            self.limit, self.held = record.memory_limit, record.memory_held
        message = record.getMessage()
        if message.startswith("distill: ") and " groups of " in message:
            self.groups = int(message.split()[1])
        print(f"[{time.time() - self.started:7.0f}s rss {resident_bytes() >> 20} MiB] {message[:200]}", file=sys.stderr, flush=True)


def watch_memory(stop: threading.Event, every: float) -> None:
    """A line on stderr every ``every`` seconds: elapsed time, resident size and its peak so far
    (what a run killed before its report still leaves in the log)."""
    started, peak = time.time(), 0
    while not stop.wait(every):
        now = resident_bytes()
        peak = max(peak, now)
        print(f"[{time.time() - started:7.0f}s] rss {now >> 20} MiB, peak {peak >> 20} MiB, builds {BUILDS['builds']}",
              file=sys.stderr, flush=True)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is missing)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def run_config(args, images: int) -> dict:
    """The run's config: short settings for a 2-core machine (every one recorded)."""
    return {
        "ops": {"include": args.ops.split(",")},
        "data": {"batch_size": args.batch},
        "distill": {"max_steps": args.steps, "epochs": 100, "max_memory": args.max_memory, "checkpoint_every": 10**6},
        "score": {"val_images": args.val, "batch_size": args.batch},
        "latency": {"batch_size": args.latency_batch, "warmup": 1, "repeats": args.repeats, "max_repeats": args.repeats,
                    "time_cap_s": 0.5, "context_rounds": 1, "threads": args.threads},
        "finetune": {"epochs": args.finetune_epochs, "min_steps": 0},  # bounded: the default floor is 200 steps
        "export": {"formats": ["torchscript"], "check_images": 16},
        "solve": {"budget": "50%"},
    }


def pipeline_case(args) -> dict:
    """Run the pipeline stage by stage; per-stage seconds and peak resident MiB, with the limit."""
    train, val, test = fashion_splits(args.size, args.images, args.val, args.val)
    torch.manual_seed(0)
    teacher = load_teacher(args.model, RANDOM_CHECKPOINT, {"num_classes": 10}).eval()
    limits = LimitLog()
    logging.getLogger("lana").addHandler(limits)
    config = run_config(args, args.images)
    stop = threading.Event()
    threading.Thread(target=watch_memory, args=(stop, args.watch), daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="lana-scale-", dir=args.tmp) as folder, Sampler(interval=0.1) as sampler:
        out = run_pipeline_stages(teacher, train, val, test, Path(folder) / "run", config, "50%", "cpu", sampler,
                                  stages=tuple(args.stages.split(",")))
        weights = folder_bytes(Path(folder) / "run" / "weights")  # the distilled candidates on disk
    stop.set()
    rows = sampler.report()
    peak = max(r["peak_rss_mib"] for r in rows.values())
    limit = limits.limit
    return {"stages": rows, "peak_rss_mib": peak, "max_memory": args.max_memory,
            "limit_mib": round(limit / 2**20) if limit else None,
            "held_at_planning_mib": round(limits.held / 2**20) if limits.held else None,
            "within_limit": None if not limit else peak * 2**20 <= limit,
            "groups": limits.groups, "candidate_builds": BUILDS["builds"], "build_s": round(BUILDS["seconds"], 1),
            "weights_on_disk_mib": round(weights / 2**20),
            "candidates": out["table_rows"], "blocks": out["blocks"],
            "student_ms": (out["report"] or {}).get("student_latency_ms"), "teacher_ms": (out["report"] or {}).get("teacher_latency_ms")}


def eval_case(args) -> dict:
    """Streaming evaluation over a lazily generated split: resident memory must stay flat."""
    torch.manual_seed(0)
    teacher = load_teacher(args.model, RANDOM_CHECKPOINT, {"num_classes": 10}).eval()
    data = LazyImages(args.images, (3, args.size, args.size))
    with Sampler(interval=0.2) as sampler, sampler.stage("evaluate"):
        result = stream_evaluate(teacher, data, args.batch)
    rss = list(result["rss_mib_at"].values())
    return {**result, "stages": sampler.report(), "rss_growth_mib_after_10pct": rss[-1] - rss[0] if rss else None}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--model", help="teacher (default per case)")
    parser.add_argument("--size", type=int, help="image size (default per case)")
    parser.add_argument("--images", type=int, help="training images (eval: images in the split)")
    parser.add_argument("--val", type=int, default=48, help="validation / test images")
    parser.add_argument("--ops", default="*", help="op patterns, comma-separated (default: the whole zoo)")
    parser.add_argument("--steps", type=int, default=2, help="distillation steps per group")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-memory", default="auto", help="distill.max_memory (auto, 8GB, none)")
    parser.add_argument("--repeats", type=int, default=3, help="latency repeats per module")
    parser.add_argument("--latency-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="latency threads (default: torch's)")
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--stages", default="distill,solve,finetune,export")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--tmp", help="folder for the run folder (default: the system's temp folder)")
    parser.add_argument("--watch", type=float, default=30.0, help="seconds between resident-size lines on stderr")
    args = parser.parse_args(argv)
    for key, value in CASES[args.case].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_memory not in ("auto", "none"):
        parse_bytes(args.max_memory, "--max-memory")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    auto = memory_limit("auto", torch.device("cpu"))
    print(f"scale {args.case}: {args.model} at {args.size}x{args.size}, {args.images} images; auto limit now {mib(auto) if auto else '?'}")
    result = eval_case(args) if args.case == "eval" else pipeline_case(args)
    result = {"case": args.case, "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "machine": machine(), **result}
    print_stages(result["stages"])
    print(json.dumps({k: v for k, v in result.items() if k not in ("stages", "settings")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
