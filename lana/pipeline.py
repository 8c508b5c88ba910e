"""The stages a user runs, each reading and writing one run folder.

``distill_stage`` trains, scores and times every candidate and writes the candidates
table; ``finetune_stage`` trains the student the solver picked; ``export_stage`` writes the
TorchScript file and the report. Each stage skips work whose result is already in the run
folder, so a stopped run resumes with the same command.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from lana.blocks import discover_blocks, describe_blocks
from lana.candidates import TEACHER_OP, build_all_candidates
from lana.config import LanaConfig
from lana.data import DataSplits, load_data, take_tensors
from lana.distill import clear_state, distill_candidates, memory_limits
from lana.distributed import init_distributed
from lana.latency import measure_candidates, measure_network, resolve_device, settings_tag
from lana.rundir import RunFolder, read_json, setup_logging, write_json
from lana.score import score_candidates
from lana.teacher import load_teacher, teacher_fingerprint
from op_zoo import BlockSpec

log = logging.getLogger("lana")


@dataclass
class Context:
    """What every stage needs: config, run folder, data, teacher and its blocks."""

    config: LanaConfig
    run: RunFolder
    splits: DataSplits
    teacher: nn.Module
    specs: list[BlockSpec]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.splits.input_shape


def prepare(config: LanaConfig, run: RunFolder, writes: bool = True) -> Context:
    """Load data and teacher, find the blocks and (if ``writes``) check the run folder's fingerprint."""
    if writes:
        setup_logging(run)
    torch.manual_seed(config.seed)
    splits = load_data(config.data)
    teacher = load_teacher(config.teacher.model, config.teacher.checkpoint, config.teacher.kwargs)
    specs = discover_blocks(teacher, (1, *splits.input_shape), config.teacher.blocks)
    if writes:
        run.check_fingerprint(teacher_fingerprint(teacher), config)
    return Context(config, run, splits, teacher, specs)


def _keyed(path, rows: dict) -> None:
    write_json(path, [{"block": b, "candidate": c, **v} for (b, c), v in rows.items()])


def _unkeyed(path) -> dict:
    return {(r.pop("block"), r.pop("candidate")): r for r in read_json(path)}


def distill_stage(config: LanaConfig, run: RunFolder, force: bool = False) -> pd.DataFrame | None:
    """Distil, score and time every candidate of every block; write the candidates table.

    Args:
        config: the run config.
        run: the run folder (created if needed).
        force: redo sub-stages whose results already exist.

    Returns:
        The candidates table (one row per block and candidate); None on torchrun's ranks
        other than 0, which only help distil (rank 0 alone writes, scores and times).
    """
    resolve_device(config.latency.device)  # a missing GPU is said now, not after distillation
    memory_limits(config.distill)
    dist = init_distributed(config.distill.device)
    ctx = prepare(config, run, writes=False)
    torch.manual_seed(config.seed)
    candidates = build_all_candidates(ctx.specs, config.ops)  # bad op names are said before anything is written
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        setup_logging(run)
        run.check_fingerprint(teacher_fingerprint(ctx.teacher), config)
        run.save_config(config)
        write_json(run.file("blocks.json"), describe_blocks(ctx.specs))
    counts = {b: len(c) for b, c in candidates.items()}
    log.info("candidates per block: %s", counts)
    seconds: dict[str, float] = {}

    distill_file = run.file("distill.json")
    tick = time.time()
    results = None
    if dist.broadcast_json(force or not distill_file.is_file()):
        if force and dist.is_main:
            clear_state(run)
        results = distill_candidates(ctx.teacher, ctx.specs, candidates, ctx.splits, config, run, dist)
    dist.close()
    if not dist.is_main:
        return None
    if results is not None:
        _keyed(distill_file, results)
        clear_state(run)
    else:
        from lana.candidates import weights_file
        from lana.rundir import load_tensors

        for block, cands in candidates.items():
            stored = load_tensors(weights_file(run.weights_dir, block))
            for name, cand in cands.items():
                if name in stored:
                    cand.module.load_state_dict(stored[name])
                cand.module.eval()
    distilled = _unkeyed(distill_file)
    seconds["distill"] = time.time() - tick

    score_file = run.file("scores.json")
    tick = time.time()
    if force or not score_file.is_file():
        images, labels = take_tensors(ctx.splits.val, config.score.val_images)
        live = {b: {n: c for n, c in cs.items() if not distilled[(b, n)]["status"].startswith("dropped")} for b, cs in candidates.items()}
        scores, base = score_candidates(ctx.teacher, live, images, labels, config.score.batch_size)
        _keyed(score_file, scores)
        write_json(run.file("teacher_val.json"), base)
    scores = _unkeyed(score_file)
    seconds["score"] = time.time() - tick

    tick = time.time()
    latency_file = run.file("latency.json")
    if force or not latency_file.is_file():
        shapes = {s.name: (s.in_channels, *s.in_size) for s in ctx.specs}
        timings = measure_candidates(candidates, shapes, config.latency)
        whole = measure_network(ctx.teacher, ctx.input_shape, config.latency)
        blocks_sum = sum(timings[(s.name, TEACHER_OP)].median_ms for s in ctx.specs)
        write_json(
            latency_file,
            {
                "settings": config.latency.model_dump(mode="json"),
                "tag": settings_tag(config.latency),
                "input_shape": list(ctx.input_shape),
                "teacher_latency_ms": whole.median_ms,
                "teacher_latency_iqr_ms": whole.iqr_ms,
                "blocks_sum_ms": blocks_sum,
                # what no choice changes (stem, head) plus the gap between the sum and the whole;
                # never negative, so a prediction can't undercut zero when blocks time slower alone
                "fixed_latency_ms": max(0.0, whole.median_ms - blocks_sum),
                "candidates": [
                    {"block": b, "candidate": c, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms} for (b, c), t in timings.items()
                ],
            },
        )
    latency = read_json(latency_file)
    seconds["latency"] = time.time() - tick
    timing = {(r["block"], r["candidate"]): r for r in latency["candidates"]}

    rows = []
    for index, (block, cands) in enumerate(candidates.items()):
        for name, cand in cands.items():
            d, s, t = distilled[(block, name)], scores.get((block, name), {}), timing[(block, name)]
            rows.append(
                {
                    "block": block,
                    "block_index": index,
                    "candidate": name,
                    "family": cand.family,
                    "params": cand.params,
                    "macs": cand.macs,
                    "distill_loss": d["distill_loss"],
                    "status": d["status"],
                    "val_loss": s.get("val_loss", float("nan")),
                    "val_acc": s.get("val_acc", float("nan")),
                    "val_loss_delta": s.get("val_loss_delta", float("nan")),
                    "acc_delta": s.get("acc_delta", float("nan")),
                    "latency_ms": t["median_ms"],
                    "latency_iqr_ms": t["iqr_ms"],
                    "latency_settings": latency["tag"],
                }
            )
    table = pd.DataFrame(rows)
    table["score"] = -table["val_loss_delta"] if config.score.metric == "loss" else table["acc_delta"]
    run.save_table(table)
    write_json(run.file("distill_timing.json"), seconds)
    log.info("distill stage done: %d candidates over %d blocks (%s)", len(table), len(counts), seconds)
    return table
