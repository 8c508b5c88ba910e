"""Distillation's memory: the planner's estimate for one group against the resident peak.

    OMP_NUM_THREADS=1 python -m benchmarks.group_memory RUN/seed0/config.yaml [MORE.yaml ...] [--steps 3]

For each run config (a quality benchmark seed's ``config.yaml``, or any lana config): build
the teacher, its blocks and the whole zoo, print what
:func:`lana.distill.distributed.plan_groups` estimates for all candidates in one group, then
distil ``--steps`` steps as one group (``max_memory: none``) in a fresh process while a thread
samples the resident memory every 20 ms, and print the rise over what the process held
before. The estimate is meant to be an upper bound of that rise. Nothing is kept (the run
folder is a temporary one).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


def measure(config_path: str, steps: int) -> dict:
    """In this process: the planner's one-group estimate and the resident rise of ``steps`` steps."""
    import torch

    from lana.config import load_config
    from lana.data import load_data
    from lana.distill.candidates import build_all_candidates
    from lana.distill.core import distill_candidates
    from lana.distill.distributed import plan_groups
    from lana.run.folder import RunFolder
    from lana.teacher.blocks import discover_blocks
    from lana.teacher.load import load_teacher

    torch.set_num_threads(1)
    config = load_config(config_path)
    config = config.model_copy(update={"distill": config.distill.model_copy(
        update={"max_steps": steps, "max_memory": "none", "checkpoint_every": 10**6})})
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape), config.teacher.blocks)
    cands = build_all_candidates(specs, config.ops, seed=config.seed)
    batch = config.distill.batch_size or config.data.batch_size  # as the distillation resolves it
    _, estimate = plan_groups(teacher, specs, cands, batch, 2**62, splits.input_shape)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.02)
    before = _rss_mib()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    with tempfile.TemporaryDirectory() as folder:
        distill_candidates(teacher, specs, cands, splits, config, RunFolder(folder))
    done.set()
    watcher.join()
    return {"config": config_path, "candidates": sum(map(len, cands.values())) - len(cands), "blocks": len(specs),
            "estimate_mib": estimate / 2**20, "before_mib": before, "rise_mib": peak[0] - before}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="run configs (YAML)")
    parser.add_argument("--steps", type=int, default=3, help="distillation steps (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.configs[0], args.steps)))
        return []
    rows = []
    print("| config | blocks | candidates | estimate, one group (MiB) | measured rise (MiB) | held before (MiB) |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for path in args.configs:  # each in its own process: a fresh peak
        done = subprocess.run([sys.executable, "-m", "benchmarks.group_memory", "--child", path, "--steps", str(args.steps)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"| {path} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1]} |||||", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {path} | {row['blocks']} | {row['candidates']} | {row['estimate_mib']:.0f} | {row['rise_mib']:.0f} | "
              f"{row['before_mib']:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
