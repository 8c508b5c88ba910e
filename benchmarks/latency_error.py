"""Latency-model error: predicted (fixed part + per-block sum) vs measured whole networks.

    .venv/bin/python -m benchmarks.latency_error                 # the figures in docs/benchmarks.md
    .venv/bin/python -m benchmarks.latency_error --quick         # fewer networks
    .venv/bin/python -m benchmarks.latency_error --clock wall --threads 2
    .venv/bin/python -m benchmarks.latency_error --device cuda --dtype float16 --batch 64

For each teacher family (the demo ResNet 32x32, torchvision's MobileNetV2 x0.5 at 64x64,
timm's mobilenetv3_large_100 at 32x32; ``--families vit``: the quality benchmark's ViT with its
token ops; random weights: latency does not depend on them) the candidates of a small op set are profiled as ``lana distill`` does
(``lana.latency.profiles.profile_latency``: alone and in context, the clocked teacher timed
in every group as the reference), then N networks (half spread over the latency range, half
random mixes) are measured end to end in interleaved groups that each also time the teacher
(``lana.latency.calibration.check_latency``). Every column is judged on the same N networks
(the teacher itself is not counted), each prediction converted to its group's machine speed
with the teacher timed beside it. Printed per family:

- naive: blocks timed alone, summed, plus teacher minus its blocks timed alone;
- in context: candidates timed inside the network, plus the fixed part (median per-call gap
  between the clocked network and its clocked blocks);
- in context + fit: the correction (none / offset / offset + scale) chosen by leave-one-out
  and fitted *without* the network it is judged on (nested leave-one-out: every network is
  held out, and so is the choice);
- the noise floor (the same networks timed again in a second window) and how far the reference
  (the teacher) moved between profiling and checking; with ``--retakes N`` a group whose halves
  disagree by more than 4 % is timed again (up to N times) and the calmest take kept
  (``latency.retakes``), and the line says how many takes each check group needed.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.baselines import DEIT
from benchmarks.quality import VIT_OPS
from lana.config import LatencyConfig, OpsConfig
from lana.distill.candidates import build_all_candidates
from lana.latency.calibration import check_latency, mixed_selections
from lana.latency.correction import nested_loo_errors
from lana.latency.drift import speed_ratio
from lana.latency.profiles import profile_latency
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

OPS = ["identity", "conv_k1", "conv_k3", "dwsep_k3", "mbconv_k3_e3", "mbconv_k5_e6", "fused_mbconv_k3_e1",
       "ghost_conv_k3", "pruned_keep50"]
FAMILIES = {
    "demo_resnet": ("lana.teacher.demo_net:demo_resnet", {"num_classes": 10, "in_chans": 3, "widths": [32, 64, 128], "depth": 2},
                    (3, 32, 32), 16),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"num_classes": 10, "width_mult": 0.5}, (3, 64, 64), 8),
    "mobilenetv3": ("timm:mobilenetv3_large_100", {"num_classes": 10}, (3, 32, 32), 8),
    # the quality benchmark's ViT (its teacher's shape, batch and token ops)
    "vit": (DEIT, {"num_classes": 10, "in_chans": 1, "img_size": 28, "patch_size": 4, "embed_dim": 96, "depth": 12,
                   "num_heads": 3, "mlp_ratio": 4.0}, (1, 28, 28), 32),
}
FAMILY_OPS = {"vit": VIT_OPS}  # the others: OPS
METHODS = (("naive sum (alone)", "naive"), ("in context", "context"), ("in context + fit", "context_fit"))


def _summary(errors, frame) -> dict:
    """Median and worst of absolute errors (%), with the count and the mean predicted/measured."""
    return {"median_error_pct": float(np.median(errors)), "worst_error_pct": float(np.max(errors)), "networks": len(errors),
            "mean_ratio_predicted_over_measured": float((frame["predicted_ms"] / frame["measured_ms"]).mean())}


def run_family(name: str, args) -> dict:
    """Profile one family, measure networks, and return every column's error on the same networks."""
    model, kwargs, shape, batch = FAMILIES[name]
    torch.manual_seed(0)
    teacher = load_teacher(model, "random", kwargs).eval()
    specs = discover_blocks(teacher, (1, *shape))
    candidates = build_all_candidates(specs, OpsConfig(include=FAMILY_OPS.get(name, OPS)))
    gpu = args.device.startswith("cuda")
    cfg = LatencyConfig(device=args.device, batch_size=args.batch or batch, dtype=args.dtype, runtime=args.runtime,
                        threads=None if gpu else args.threads, clock="wall" if gpu else args.clock, repeats=args.repeats,
                        time_cap_s=args.cap, context_rounds=args.rounds, retakes=args.retakes,
                        context_repeats=args.context_repeats, context_min_s=args.context_min_s)
    tick, cpu = time.time(), time.process_time()
    # the naive sum below adds the candidates timed alone: precisely, unless --ordering-only (as lana does in context)
    record = profile_latency(teacher, specs, candidates, shape, cfg, precise_isolated=not args.ordering_only)
    profile_s, profile_cpu_s = time.time() - tick, time.process_time() - cpu
    used = {b: {} for b in candidates}
    for row in record["candidates"]:
        used[row["block"]][row["candidate"]] = row["median_ms"]
    selections = mixed_selections(used, args.networks, seed=args.seed)
    modules = {b: {n: c.module for n, c in cs.items()} for b, cs in candidates.items()}
    tick = time.time()
    result = check_latency(teacher, specs, modules, record, shape, cfg, selections, ["random"] * len(selections), fit=True)
    check_s = time.time() - tick
    frame, summary = result["frame"], result["summary"]
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(args.save) / f"{name}.csv", index=False)
    nets = frame[frame["kind"] != "teacher"]
    speed = nets["reference_ms"].map(lambda now: speed_ratio(now, record["teacher_latency_ms"]))  # every column, one reference
    # the naive model on the very same measurements
    isolated = {(r["block"], r["candidate"]): r["isolated_ms"] for r in record["candidates"]}
    naive_fixed = record["teacher_latency_ms"] - record["isolated_blocks_sum_ms"]
    naive = nets.assign(predicted_ms=[(naive_fixed + sum(isolated[(b, c)] for b, c in json.loads(ch).items())) * k
                                      for ch, k in zip(nets["choice"], speed)])
    # the correction chosen and fitted without the network it is judged on (nested leave-one-out)
    judged = nets.index.tolist()
    fit_err, kinds = nested_loo_errors(frame["raw_sum_ms"].tolist(), frame["measured_profiled_ms"].tolist(),
                                       record["measured_fixed_latency_ms"], judged)
    fitted = nets.assign(predicted_ms=nets["measured_ms"] * (1 + fit_err / 100))  # only the ratio's size is used
    columns = {"naive": _summary(_abs_error(naive), naive), "context": _summary(_abs_error(nets), nets),
               "context_fit": _summary(fit_err, fitted)}
    return {"family": name, "model": model, "input": [cfg.batch_size, *shape], "blocks": len(specs),
            "candidates": sum(len(c) for c in candidates.values()), "networks": len(nets), **columns,
            "chosen_per_fold": {k: kinds.count(k) for k in sorted(set(kinds))}, "choice": summary["choice"],
            "correction": summary["correction"], "noise": summary["before"], "teacher_drift_pct": summary["teacher_drift_pct"],
            "reference_spread_pct": record.get("reference_spread_pct"), "group_takes": summary.get("group_takes", []),
            "profile_s": profile_s, "profile_cpu_s": profile_cpu_s, "check_s": check_s,
            "in_context_networks": record.get("networks")}


def _abs_error(frame) -> np.ndarray:
    return ((frame["predicted_ms"] - frame["measured_ms"]).abs() / frame["measured_ms"] * 100).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=[f for f in FAMILIES if f != "vit"], choices=list(FAMILIES),
                        help="default: the three CNNs (vit: the quality benchmark's ViT, its token ops, batch 32)")
    parser.add_argument("--networks", type=int, default=12, help="random networks per family (every one is held out)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--runtime", default="eager", choices=["eager", "torchscript", "onnxruntime"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default per family: 16 / 8 / 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="process", choices=["wall", "process"])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--cap", type=float, default=1.5, help="seconds per timed module (latency.time_cap_s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="latency.context_rounds: cover networks per candidate")
    defaults = LatencyConfig()
    parser.add_argument("--context-repeats", type=lambda v: None if v.lower() == "none" else int(v), default=defaults.context_repeats,
                        help="latency.context_repeats: timed calls per cover network; none = as whole networks (before 2b83577)")
    parser.add_argument("--context-min-s", type=float, default=defaults.context_min_s,
                        help="latency.context_min_s: more calls while a cover network's timed calls took less than this")
    parser.add_argument("--ordering-only", action="store_true",
                        help="time candidates alone only briefly, to order the cover networks (as lana does); "
                        "the naive column then uses those figures")
    parser.add_argument("--retakes", type=int, default=0, help="latency.retakes: time a noisy group again up to N times")
    parser.add_argument("--quick", action="store_true", help="6 networks per family")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", default=None, help="folder to write each family's predicted-vs-measured CSV into")
    args = parser.parse_args()
    if args.quick:
        args.networks = 6
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"machine: {where}, {torch.get_num_threads()} torch threads available; torch {torch.__version__}; settings: "
          f"{args.device}, threads {args.threads}, clock {args.clock}, {args.runtime}, {args.dtype}")
    results, begin = [], time.time()
    for name in args.families:
        res = run_family(name, args)
        results.append(res)
        if args.json:
            continue
        print(f"\n{name} ({res['model']}, input {res['input']}, {res['blocks']} blocks, {res['candidates']} candidates, "
              f"{res['networks']} held-out networks; profile {res['profile_s']:.0f} s wall, {res['profile_cpu_s']:.0f} s CPU, "
              f"{res['in_context_networks']} networks in context; check {res['check_s']:.0f} s)")
        for label, key in METHODS:
            s = res[key]
            print(f"  {label:<18} median {s['median_error_pct']:5.1f} %   worst {s['worst_error_pct']:5.1f} %   (n={s['networks']})")
        s = res["noise"]
        print(f"  noise floor        median {s['median_noise_pct']:5.1f} %   worst {s['worst_noise_pct']:5.1f} %   "
              f"reference moved {res['teacher_drift_pct']:+.1f} % since profiling "
              f"(spread over profiling groups {res['reference_spread_pct'] or 0:.1f} %); takes per check group "
              f"{'/'.join(str(t) for t in res['group_takes'])}")
        kinds = ", ".join(f"{k} {v['median_pct']:.1f}/{v['worst_pct']:.1f} %" for k, v in res["choice"]["kinds"].items())
        c = res["correction"]
        print(f"  correction (leave-one-out median/worst: {kinds}): {c['kind']}, {c['fixed_ms']:.3f} ms + {c['scale']:.3f} x sum; "
              f"per held-out fold chosen {res['chosen_per_fold']}")
    if not args.json:
        print(f"\ntotal {time.time() - begin:.0f} s")
    if args.json:
        print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
