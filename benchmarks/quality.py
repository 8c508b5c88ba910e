"""Quality against the alternatives: top-1 accuracy at equal measured latency.

    .venv/bin/python benchmarks/quality.py                       # CPU mode (2-core machine: 27 min measured)
    .venv/bin/python benchmarks/quality.py --mode full           # GPU: full-width teachers, 64×64, whole zoo
    .venv/bin/python benchmarks/quality.py --teachers resnet --shares 0.5 --random 2

Fashion-MNIST (Debian's ``dataset-fashion-mnist``; standard train/test split, a validation
split carved from train for scoring), at its native 28×28 (CPU mode) or resized to 64×64 (full mode). Two
teacher families, adapted to one input channel and 10 classes and trained here: timm's
ResNet-18 and torchvision's MobileNetV2. At each budget (a share of the teacher's measured
latency) lana, Torch-Pruning, width scaling and random selections get the same fine-tuning
by distillation from the teacher (``lana.compare``); top-1 is taken on the whole test set,
latency measured on the device, interleaved with the teacher.

Writes RUN/<teacher>/quality.csv for each teacher, RUN/quality.csv for all, and with
``--docs`` (default ``docs/``) ``quality.md`` (table, verdict, command, machine) and
``quality.png`` (accuracy against measured latency). Teachers run in parallel processes
with ``--jobs`` (CPU mode: one thread each, latency by process CPU time, so the two do not
disturb each other's figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

CPU_OPS = [
    "identity", "avgpool_conv_k1", "conv_k1", "dwsep_k3", "mbconv_k3_e1", "fused_mbconv_k3_e1", "ghost_conv_k3",
    "pruned_keep25", "pruned_keep40", "pruned_keep50", "pruned_keep60", "pruned_keep75", "lowrank_r25", "lowrank_r50",
]

# Per mode: the shared settings, then each teacher's model and kwargs.
MODES = {
    "cpu": {
        "image_size": 28,
        "tree": {
            "data": {"image_size": 28, "val_size": 2000, "train_limit": 10000, "batch_size": 128},
            "ops": {"include": CPU_OPS},
            "teacher_training": {"epochs": 5},
            "distill": {"epochs": 2, "max_steps": 160, "checkpoint_every": 80},
            "score": {"val_images": 2000},
            "latency": {"device": "cpu", "batch_size": 128, "threads": 1, "clock": "process", "time_cap_s": 0.6,
                        "context_rounds": 1},
            "finetune": {"epochs": 3},
        },
        "teachers": {
            # half the widths of the ImageNet models so the CPU mode fits 30 minutes
            "resnet": ("timm:resnet18d", {"num_classes": 10, "in_chans": 1, "channels": [32, 64, 128, 256], "stem_width": 16}),
            "mobilenet": ("torchvision:mobilenet_v2", {"num_classes": 10, "in_chans": 1, "width_mult": 0.5}),
        },
        "random": 3,
        "threads": 1,
    },
    "full": {
        "image_size": 64,
        "tree": {
            "data": {"image_size": 64, "val_size": 5000, "batch_size": 256},
            "teacher_training": {"epochs": 15},
            "distill": {"epochs": 2, "device": "auto"},
            "score": {"val_images": 5000},
            "latency": {"device": "cuda", "batch_size": 64, "time_cap_s": 2.0},
            "finetune": {"epochs": 3},
        },
        "teachers": {
            "resnet": ("timm:resnet18d", {"num_classes": 10, "in_chans": 1}),
            "mobilenet": ("torchvision:mobilenet_v2", {"num_classes": 10, "in_chans": 1}),
        },
        "random": 10,
        "threads": None,
    },
}


# Blocks lana may replace, where the automatic ones (the residual blocks) are not enough:
# ResNet-18-D's deep stem and its max-pool cost about a quarter of the teacher's latency at
# 32×32 on a CPU (measured), so at 0.3× the residual blocks alone would have to vanish.
RESNET_BLOCKS = ["conv1", "maxpool"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
BLOCKS = {"resnet": RESNET_BLOCKS}


def teacher_config(mode: str, key: str, out: Path, data_root: str | None, overrides: list[str]):
    from lana.config import build_config

    preset = MODES[mode]
    model, kwargs = preset["teachers"][key]
    tree = json.loads(json.dumps(preset["tree"]))
    tree["name"] = f"quality-{key}"
    tree["teacher"] = {"model": model, "kwargs": kwargs, "checkpoint": str(out / key / "teacher.pt"), "blocks": BLOCKS.get(key)}
    if data_root:
        tree["data"]["root"] = data_root
    return build_config(tree, overrides)


def run_teacher(mode: str, key: str, out: str, data_root: str | None, overrides: list[str], shares: list[float],
                n_random: int, methods: list[str], threads: int | None, lana_shares: list[float] = (),
                quiet: bool = False) -> pd.DataFrame:
    """One teacher's whole comparison (run in its own process with ``--jobs``)."""
    if quiet:  # parallel teachers: one prefixed log line per step instead of interleaved progress bars
        import logging

        os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is first imported (torch imports it)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[{key}] %(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("lana").addHandler(handler)
        logging.getLogger("lana").setLevel(logging.INFO)
    import torch

    if threads:
        torch.set_num_threads(threads)
    from benchmarks.compare import compare_teacher
    from lana.stages.demo import train_teacher

    out_path = Path(out)
    config = teacher_config(mode, key, out_path, data_root, overrides)
    tick = time.time()
    frame = compare_teacher(config, out_path / key, shares, n_random, tuple(methods), train_teacher=train_teacher,
                            lana_shares=tuple(lana_shares))
    frame["key"] = key
    frame["wall_s"] = time.time() - tick
    return frame


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, lines: list[str], meta: dict) -> str:
    mode, timing = meta["mode"], meta["timing"]
    out = [
        "# Quality against the alternatives",
        "",
        f"Made by `{meta['command']}` ({mode} mode) on {meta['machine']}, {meta['date']}, "
        f"{meta['seconds'] / 60:.1f} min wall. Written by `benchmarks/quality.py`; do not edit by hand "
        "(`--report-only` rewrites it from the run folder).",
        "",
        f"Data: Fashion-MNIST at {MODES[mode]['image_size']}×{MODES[mode]['image_size']}, standard test split "
        "(10 000 images) for top-1; validation split carved from train for scoring. "
        "Latency: whole network, measured on the device, interleaved with the teacher at the end of the run "
        "(settings in each teacher's `config.yaml`). Every method gets the same fine-tune by distillation "
        "from the teacher (`training s`: that fine-tune; for `width` also its training from scratch with the "
        "teacher's recipe, with distillation, before it; the teacher's logits over the train split are computed "
        "once per teacher and shared by every fine-tune, see the Teachers table). "
        "Each network met its budget, as a share of the teacher timed interleaved with it, when it was picked; "
        "⚠ marks one that measured more than 2 % above it in the final run. "
        f"lana's op set: {', '.join(MODES[mode]['tree'].get('ops', {}).get('include', ['the whole zoo']))} (+ the teacher's block); "
        f"blocks: the residual / inverted-residual blocks, and for ResNet-18-D also its deep stem and max-pool ({', '.join(RESNET_BLOCKS[:2])}).",
        "",
        f"Settings ({mode} mode, shared by both teachers): " + "; ".join(
            f"`{section}`: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "include")
            for section, values in MODES[mode]["tree"].items() if isinstance(values, dict) and section not in ("ops", "teacher")) + ".",
        "",
        "![accuracy against measured latency](quality.png)",
        "",
        "## Verdict (measured)",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Teachers",
        "",
        "| teacher | top-1 | latency (ms) | train / distill+score+latency / teacher logits (s) |",
        "| --- | --- | --- | --- |",
    ]
    for teacher, group in frame[frame["method"] == "teacher"].groupby("teacher", sort=False):
        row = group.iloc[0]
        t = timing.get(row["key"], {})
        out.append(f"| {teacher} | {row['top1']:.2f} % | {row['latency_ms']:.2f} | "
                   f"{t.get('train_teacher_s', 0):.0f} / {t.get('distill_score_latency_s', 0):.0f} / {t.get('teacher_logits_s', 0):.0f} |")
    out += ["", "## Every method at every budget", "",
            "| teacher | budget | method | measured ms (× teacher) | top-1 | drop (points) | training s | setting |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in summary.iterrows():
        if pd.isna(r["top1"]):
            out.append(f"| {r['teacher']} | {r['budget']} ({r['budget_ms']:.2f} ms) | {r['method']} | — | — | — | — | {r['setting']} |")
            continue
        over = " ⚠" if r["latency_share"] > float(r["budget"].rstrip("×")) * 1.02 else ""  # over the budget when re-measured
        out.append(f"| {r['teacher']} | {r['budget']} ({r['budget_ms']:.2f} ms) | {r['method']} | "
                   f"{r['latency_ms']:.2f} ({r['latency_share']:.2f}{over}) | {r['top1']:.2f} % | {r['drop']:+.2f} | "
                   f"{r['finetune_s']:.0f} | {r['setting']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--teachers", default="resnet,mobilenet", help="comma-separated: resnet, mobilenet")
    parser.add_argument("--shares", default="0.3,0.5,0.7", help="budgets as shares of the measured teacher latency")
    parser.add_argument("--lana-shares", default="0.4", help="extra budgets for lana alone (its fastest student within 0.5 points); '' for none")
    parser.add_argument("--methods", default="lana,torch-pruning,width,random")
    parser.add_argument("--random", type=int, default=None, help="random selections per budget (mode default)")
    parser.add_argument("--run", default="runs/quality", help="output folder (stages done there are reused)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's location)")
    parser.add_argument("--docs", default="docs", help="where quality.md and quality.png go ('' for nowhere)")
    parser.add_argument("--jobs", type=int, default=None, help="teachers run at once (CPU mode default 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the docs from RUN/quality.csv and RUN/quality_meta.json without running anything")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE for every teacher")
    args = parser.parse_args(argv)

    preset = MODES[args.mode]
    keys = [k.strip() for k in args.teachers.split(",") if k.strip()]
    unknown = [k for k in keys if k not in preset["teachers"]]
    if unknown:
        parser.error(f"unknown teachers {unknown}; choose from {sorted(preset['teachers'])}")
    shares = [float(s) for s in args.shares.split(",")]
    lana_shares = [float(s) for s in args.lana_shares.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from benchmarks.compare import METHODS

    if not methods or set(methods) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(set(methods) - set(METHODS)) or 'none given'}; choose from {', '.join(METHODS)}")
    n_random = preset["random"] if args.random is None else args.random
    jobs = args.jobs or (2 if args.mode == "cpu" else 1)
    out = Path(args.run)
    meta_path = out / "quality_meta.json"
    if args.report_only:
        if not (out / "quality.csv").is_file() or not meta_path.is_file():
            parser.error(f"--report-only needs {out / 'quality.csv'} and {meta_path} from a finished run")
        frame = pd.read_csv(out / "quality.csv")
        meta = json.loads(meta_path.read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        tick = time.time()
        jobs_args = [(args.mode, k, str(out), args.data, args.overrides, shares, n_random, methods, preset["threads"], lana_shares,
                      jobs > 1 and len(keys) > 1) for k in keys]
        if jobs > 1 and len(keys) > 1:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                frames = list(pool.map(run_teacher, *zip(*jobs_args)))
        else:
            frames = [run_teacher(*a) for a in jobs_args]
        frame = pd.concat(frames, ignore_index=True)
        frame.to_csv(out / "quality.csv", index=False)
        command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
        machine = f"{platform.node() or 'this machine'} ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})"
        meta = {"command": command.strip(), "machine": machine, "seconds": time.time() - tick, "mode": args.mode,
                "date": time.strftime("%Y-%m-%d"), "timing": {k: json.loads((out / k / "quality_timing.json").read_text()) for k in keys}}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    from benchmarks.compare import plot, summarise, verdict

    summary = summarise(frame)
    lines = verdict(frame)
    text = markdown(frame, summary, lines, meta)
    print(summary.to_string(index=False))
    print("\n".join(lines))
    print(f"{meta['seconds'] / 60:.1f} min")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        plot(frame, docs / "quality.png")
        (docs / "quality.md").write_text(text)
        print(f"wrote {docs / 'quality.md'} and {docs / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
