"""Latency in the runtime that serves the model: eager vs Inductor vs ONNX Runtime.

    .venv/bin/python -m benchmarks.runtimes            # the figures in docs/benchmarks.md (about 8 min, 2 cores)
    .venv/bin/python -m benchmarks.runtimes --json

1. A demo-like run, end to end through lana's stages: the demo teacher
   (``lana.teacher.demo_net:demo_resnet`` at widths 32/64/128, 1x28x28) trained briefly on scikit-learn's digits
   (resized to 28x28), distilled with a small op set and profiled in eager (``distill``, in
   context), then in Inductor and ONNX Runtime (``lana profile --set latency.runtime=...``:
   compiled runtimes are timed alone). Per runtime: predicted vs measured whole networks
   (``lana latency-check``, median and worst error), the Spearman correlation of candidate
   latencies against eager, and the solver's pick at 50 % of the teacher. Then the eager
   pick is exported in every format and its speed-up measured in each runtime against the
   teacher exported the same way (``lana export --format all``), and timed in Inductor.
2. torchvision ``mobilenet_v2`` (width 0.5, 3x32x32, random weights, every second block):
   the same error and rank figures from ``profile_latency`` and ``check_latency``.
Settings: CPU, 1 thread, process clock (CPU time: other jobs on a shared machine do not inflate it).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lana.config import LatencyConfig, OpsConfig, build_config
from lana.distill.candidates import build_all_candidates
from lana.latency.calibration import check_latency, mixed_selections, solver_selections
from lana.latency.measure import measure_networks
from lana.latency.profiles import find_profile, profile_latency
from lana.latency.proxy import rank_correlation
from lana.run.context import prepare
from lana.run.folder import RunFolder, read_json
from lana.stages.check import check_run
from lana.stages.demo import train_teacher
from lana.stages.distill import distill_stage
from lana.stages.export import run_export
from lana.stages.finetune import load_selection, load_student
from lana.stages.profile import profile_run
from lana.stages.solve import solve_run
from lana.teacher.blocks import discover_blocks
from lana.teacher.load import load_teacher

OPS = ["identity", "conv_k3", "dwsep_k3", "mbconv_k3_e3", "pruned_keep50"]
RUNTIMES = ["eager", "inductor", "onnxruntime"]
LATENCY = {"batch_size": 8, "threads": 1, "clock": "process", "warmup": 3, "repeats": 15, "time_cap_s": 1.0}


def _error(summary: dict) -> dict:
    return {"median_error_pct": summary["median_error_pct"], "worst_error_pct": summary["worst_error_pct"],
            "networks": summary["networks"]}


def demo_run(folder: Path, networks: int) -> dict:
    """The demo-like run through lana's stages, profiled and checked in every runtime."""
    torch.manual_seed(0)
    run = RunFolder(folder / "demo")
    run.path.mkdir(parents=True)
    config = build_config({
        "name": "runtimes",
        # the demo ResNet at the widths the recorded figures used (the demo itself now trains 16/32/64)
        "teacher": {"checkpoint": str(run.file("teacher.pt")), "kwargs": {"num_classes": 10, "in_chans": 1, "widths": [32, 64, 128]}},
        "data": {"kind": "digits", "image_size": 28, "val_size": 200, "train_limit": 600, "mean": [0.3], "std": [0.42]},
        "ops": {"include": OPS}, "distill": {"epochs": 1, "max_steps": 20}, "score": {"val_images": 200},
        "latency": LATENCY, "teacher_training": {"epochs": 2}})
    tick = time.time()
    train_teacher(config, run)
    distill_stage(config, run)
    seconds = {"train_distill_profile_eager": time.time() - tick}
    tags = {"eager": read_json(run.file("latency.json"))["tag"]}
    for runtime in RUNTIMES[1:]:
        tick = time.time()
        tags[runtime] = profile_run(run, [f"latency.runtime={runtime}"])["tag"]
        seconds[f"profile_{runtime}"] = time.time() - tick
    latency, table = read_json(run.file("latency.json")), run.load_table()
    out = {"runtimes": {}, "seconds": seconds}
    for runtime, tag in tags.items():
        column = "latency_ms" if runtime == "eager" else f"latency_ms:{tag}"
        record = find_profile(latency, None if runtime == "eager" else tag)
        tick = time.time()
        summary = check_run(run, networks=networks, shares=(0.5,), tag=None if runtime == "eager" else tag)["summary"]
        seconds[f"check_{runtime}"] = time.time() - tick
        pick = solver_selections(record, table, column, [0.5])
        out["runtimes"][runtime] = {"tag": tag, "method": record["method"], "error": _error(summary["before"]),
                                    "pick_50pct": pick[0] if pick else None,
                                    "spearman_vs_eager": None if runtime == "eager" else rank_correlation(table, "latency_ms", column)}
    for a, b in (("inductor", "onnxruntime"),):
        out[f"spearman_{a}_vs_{b}"] = rank_correlation(table, f"latency_ms:{tags[a]}", f"latency_ms:{tags[b]}")
    picks = [json.dumps(r["pick_50pct"], sort_keys=True) for r in out["runtimes"].values()]
    out["different_picks"] = len(set(picks)) > 1
    # the eager pick, exported in every format and timed in each runtime against the teacher exported alike
    solve_run(run, "50%")
    tick = time.time()
    report = run_export(run, finetuned=False, formats="all")
    seconds["export_all"] = time.time() - tick
    ctx = prepare(run.load_config(), run, writes=False)
    student, _ = load_student(ctx, load_selection(run), finetuned=False)
    cfg = ctx.config.latency.model_copy(update={"runtime": "inductor"})
    teacher_t, student_t = measure_networks([ctx.teacher, student], ctx.input_shape, cfg)
    out["speedups"] = {"eager": report["speedup"], "inductor": teacher_t["median_ms"] / student_t["median_ms"],
                       **{f"{r['format']} file": r.get("speedup") for r in report["exports"]}}
    out["latency_ms"] = {"eager": (report["teacher_latency_ms"], report["student_latency_ms"]),
                         "inductor": (teacher_t["median_ms"], student_t["median_ms"]),
                         **{f"{r['format']} file": (r.get("teacher_latency_ms"), r.get("latency_ms")) for r in report["exports"]}}
    out["export_errors"] = {r["format"]: r["error"] for r in report["exports"] if r["error"]}
    out["top1"] = (report["teacher_top1"], report["student_top1"])
    return out


def mobilenet(networks: int) -> dict:
    """torchvision mobilenet_v2 (width 0.5): error per runtime and rank correlation, random weights."""
    torch.manual_seed(0)
    shape = (3, 32, 32)
    teacher = load_teacher("torchvision:mobilenet_v2", "random", {"num_classes": 10, "width_mult": 0.5}).eval()
    specs = discover_blocks(teacher, (1, *shape))[::2]
    candidates = build_all_candidates(specs, OpsConfig(include=OPS))
    modules = {b: {n: c.module for n, c in cs.items()} for b, cs in candidates.items()}
    out, columns = {"blocks": len(specs), "candidates": sum(len(c) for c in candidates.values()), "runtimes": {}, "seconds": {}}, {}
    selections = None
    for runtime in RUNTIMES:
        cfg = LatencyConfig(**LATENCY, runtime=runtime)
        tick = time.time()
        record = profile_latency(teacher, specs, candidates, shape, cfg)
        columns[runtime] = {(r["block"], r["candidate"]): r["median_ms"] for r in record["candidates"]}
        used = {b: {} for b in candidates}
        for (block, name), ms in columns[runtime].items():
            used[block][name] = ms
        selections = selections or mixed_selections(used, networks, seed=0)  # the same networks in every runtime
        result = check_latency(teacher, specs, modules, record, shape, cfg, selections, ["random"] * len(selections), fit=0)
        out["seconds"][runtime] = time.time() - tick
        out["runtimes"][runtime] = {"method": record["method"], "error": _error(result["summary"]["before"])}
    keys = list(columns["eager"])
    table = pd.DataFrame({"block": [k[0] for k in keys], **{r: [columns[r][k] for k in keys] for r in RUNTIMES}})
    for a, b in (("eager", "inductor"), ("eager", "onnxruntime"), ("inductor", "onnxruntime")):
        out[f"spearman_{a}_vs_{b}"] = rank_correlation(table, a, b)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=6, help="random networks per latency check")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}; cpu, 1 thread, process clock")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="lana-runtimes-") as folder:
        results = {"demo_resnet": demo_run(Path(folder), args.networks), "mobilenet_v2": mobilenet(args.networks)}
    results["total_s"] = time.time() - start
    if args.json:
        print(json.dumps(results, indent=1, default=str))
        return
    for family, res in (("demo_resnet", results["demo_resnet"]), ("mobilenet_v2", results["mobilenet_v2"])):
        print(f"\n{family}")
        for runtime, row in res["runtimes"].items():
            e = row["error"]
            print(f"  {runtime:<12} ({row['method']:<8}) predicted vs measured: median {e['median_error_pct']:5.1f} %  "
                  f"worst {e['worst_error_pct']:5.1f} %  (n={e['networks']})")
        for key, rho in res.items():
            if key.startswith("spearman"):
                print(f"  {key}: overall {rho['overall']:.3f}, median block {rho['median_block']:.3f}, worst block {rho['worst_block']}")
        for runtime, row in res["runtimes"].items():
            if row.get("spearman_vs_eager"):
                rho = row["spearman_vs_eager"]
                print(f"  spearman_eager_vs_{runtime}: overall {rho['overall']:.3f}, median block {rho['median_block']:.3f}, "
                      f"worst block {rho['worst_block']}")
    demo = results["demo_resnet"]
    print(f"\ndemo: the solver's 50 % picks differ between runtimes: {demo['different_picks']}")
    for runtime, row in demo["runtimes"].items():
        print(f"  {runtime}: {row['pick_50pct']}")
    print(f"demo student (eager pick at 50 %; top-1 teacher/student {demo['top1'][0]:.1f}/{demo['top1'][1]:.1f} %):")
    for where, speedup in demo["speedups"].items():
        t, s = demo["latency_ms"][where]
        print(f"  {where:<18} teacher {t or float('nan'):7.3f} ms  student {s or float('nan'):7.3f} ms  "
              f"speed-up {speedup or float('nan'):.2f}x")
    if demo["export_errors"]:
        print(f"  export errors: {demo['export_errors']}")
    print(f"seconds: demo {demo['seconds']}, mobilenet {results['mobilenet_v2']['seconds']}, total {results['total_s']:.0f}")


if __name__ == "__main__":
    main()
