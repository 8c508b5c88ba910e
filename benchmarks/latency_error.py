"""Latency-model error: predicted (fixed part + per-block sum) vs measured whole networks.

    .venv/bin/python benchmarks/latency_error.py                 # the figures in docs/benchmarks.md
    .venv/bin/python benchmarks/latency_error.py --quick         # fewer networks
    .venv/bin/python benchmarks/latency_error.py --clock wall --threads 2
    .venv/bin/python benchmarks/latency_error.py --device cuda --dtype float16 --batch 64

For each teacher family (the demo ResNet, and torchvision's MobileNetV2 at width 0.5; random
weights: latency does not depend on them) the candidates of a small op set are profiled as
``lana distill`` does (``lana.profile.profile_latency``: alone and in context), then N
networks (half spread over the latency range, half random mixes) are measured end to end in
interleaved groups that each also time the teacher (``lana.latency_check.check_latency``).
Printed per family:

- naive: blocks timed alone, summed, plus teacher minus its blocks timed alone;
- context: candidates timed inside the network, plus the deployed teacher minus its clocked blocks;
- context + fit: ``fixed + scale x sum`` fitted on the teacher and ``--fit`` networks, judged on the others;
- the noise floor (two interleaved halves of the same measurement) and the teacher's drift
  between profiling and checking.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lana.config import LatencyConfig, OpsConfig
from lana.distill.candidates import build_all_candidates
from lana.latency.calibration import check_latency, error_summary, mixed_selections
from lana.latency.profiles import profile_latency
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

OPS = ["identity", "conv_k1", "conv_k3", "dwsep_k3", "mbconv_k3_e3", "mbconv_k5_e6", "fused_mbconv_k3_e1",
       "ghost_conv_k3", "pruned_keep50"]
FAMILIES = {
    "demo_resnet": ("lana.teacher.demo_net:demo_resnet", {"num_classes": 10, "in_chans": 3, "widths": [32, 64, 128], "depth": 2}, (3, 32, 32), 16),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"num_classes": 10, "width_mult": 0.5}, (3, 64, 64), 8),
}


def run_family(name: str, args) -> dict:
    """Profile one family, measure networks, and return the error figures."""
    model, kwargs, shape, batch = FAMILIES[name]
    torch.manual_seed(0)
    teacher = load_teacher(model, None, kwargs).eval()
    specs = discover_blocks(teacher, (1, *shape))
    candidates = build_all_candidates(specs, OpsConfig(include=OPS))
    gpu = args.device.startswith("cuda")
    cfg = LatencyConfig(device=args.device, batch_size=args.batch or batch, dtype=args.dtype, runtime=args.runtime,
                        threads=None if gpu else args.threads, clock="wall" if gpu else args.clock, repeats=args.repeats,
                        time_cap_s=args.cap, context_rounds=args.rounds)
    tick = time.time()
    record = profile_latency(teacher, specs, candidates, shape, cfg)
    profile_s = time.time() - tick
    used = {b: {} for b in candidates}
    for row in record["candidates"]:
        used[row["block"]][row["candidate"]] = row["median_ms"]
    selections = mixed_selections(used, args.networks, seed=args.seed)
    modules = {b: {n: c.module for n, c in cs.items()} for b, cs in candidates.items()}
    tick = time.time()
    result = check_latency(teacher, specs, modules, record, shape, cfg, selections, ["random"] * len(selections), fit=args.fit)
    check_s = time.time() - tick
    frame, summary = result["frame"], result["summary"]
    if args.save:
        from pathlib import Path

        Path(args.save).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(args.save) / f"{name}.csv", index=False)
    # the naive model on the very same measurements
    isolated = {(r["block"], r["candidate"]): r["isolated_ms"] for r in record["candidates"]}
    naive_fixed = record["teacher_latency_ms"] - record["isolated_blocks_sum_ms"]
    naive = frame.assign(predicted_ms=[naive_fixed + sum(isolated[(b, c)] for b, c in json.loads(ch).items()) for ch in frame["choice"]])
    return {"family": name, "model": model, "input": [batch, *shape], "blocks": len(specs),
            "candidates": sum(len(c) for c in candidates.values()), "networks": len(frame),
            "naive": error_summary(naive), "context": summary["before"], "context_fit": summary.get("after"),
            "correction": summary.get("correction"), "teacher_drift_pct": summary["teacher_drift_pct"],
            "profile_s": profile_s, "check_s": check_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--networks", type=int, default=16)
    parser.add_argument("--fit", type=int, default=4, help="networks (besides the teacher) the correction is fitted on")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--runtime", default="eager", choices=["eager", "torchscript", "onnxruntime"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default per family: 16 / 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="process", choices=["wall", "process"])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--cap", type=float, default=3.0, help="seconds per timed module (latency.time_cap_s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="latency.context_rounds: cover networks per candidate")
    parser.add_argument("--quick", action="store_true", help="8 networks, fit on 3")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", default=None, help="folder to write each family's predicted-vs-measured CSV into")
    args = parser.parse_args()
    if args.quick:
        args.networks, args.fit = 8, 3
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"machine: {where}, {torch.get_num_threads()} torch threads available; torch {torch.__version__}; settings: "
          f"{args.device}, threads {args.threads}, clock {args.clock}, {args.runtime}, {args.dtype}")
    results = []
    for name in args.families:
        res = run_family(name, args)
        results.append(res)
        if args.json:
            continue
        print(f"\n{name} ({res['model']}, input {res['input']}, {res['blocks']} blocks, {res['candidates']} candidates, "
              f"{res['networks']} networks; profile {res['profile_s']:.0f} s, check {res['check_s']:.0f} s)")
        for label, key in (("naive sum (alone)", "naive"), ("in context", "context"), ("in context + fit", "context_fit")):
            s = res[key]
            if s:
                print(f"  {label:<18} median {s['median_error_pct']:5.1f} %   worst {s['worst_error_pct']:5.1f} %   "
                      f"(n={s['networks']}, predicted/measured {s['mean_ratio_predicted_over_measured']:.3f})")
        s = res["context"]
        print(f"  noise floor        median {s['median_noise_pct']:5.1f} %   worst {s['worst_noise_pct']:5.1f} %   "
              f"teacher drift since profiling {res['teacher_drift_pct']:+.1f} %")
        if res["correction"]:
            c = res["correction"]
            print(f"  correction: {c['fixed_ms']:.3f} ms + {c['scale']:.3f} x sum (fitted on {c['networks']})")
    if args.json:
        print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
