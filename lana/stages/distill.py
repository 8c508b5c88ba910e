"""``lana distill``: distil, score and time every candidate; write the candidates table.

Skips work whose result is already in the run folder, so a stopped run resumes with the
same command. Candidate modules are never all held: distillation builds one group at a time,
scoring and latency profiling one block at a time (:mod:`lana.distill.candidates`).
"""
from __future__ import annotations

import logging
import shutil
import time

import pandas as pd
import torch
from torch import nn

from lana.config import LanaConfig
from lana.data import DataSplits
from lana.device import Placement, distill_device_name
from lana.distill.candidates import BUILDS, OneBlockAtATime, attach_weights, build_all_candidates
from lana.distill.checkpoint import STATE_FILE, clear_state
from lana.distill.core import distill_candidates, memory_limits
from lana.distill.distributed import init_distributed
from lana.distill.score import score_candidates, score_column
from lana.distill.validation import validation_tensors
from lana.latency.checkpoint import PARTIAL_FILE
from lana.latency.measure import resolve_device
from lana.latency.profiles import merge_latency, profile_latency, store_profile
from lana.run.context import prepare
from lana.run.folder import RunFolder, check_free_space, read_json, setup_logging, write_json
from lana.teacher.blocks import describe_blocks
from lana.teacher.load import teacher_fingerprint

log = logging.getLogger("lana")


def _keyed(path, rows: dict) -> None:
    write_json(path, [{"block": b, "candidate": c, **v} for (b, c), v in rows.items()])


def _unkeyed(path) -> dict:
    return {(r.pop("block"), r.pop("candidate")): r for r in read_json(path)}


def _check_weights_fit(candidates: dict, run: RunFolder) -> None:
    """The distilled weights (float32, one file per trainable candidate) fit on the run folder's disk:
    said before hours of distillation, not when the disk fills (ResNet-50's whole zoo at 224×224: 98.5 GiB)."""
    needed = 4 * sum(c.params for cs in candidates.values() for c in cs.values() if c.trainable)
    if run.weights_dir.is_dir():  # a resumed run has written part of them
        needed -= sum(f.stat().st_size for f in run.weights_dir.rglob("*") if f.is_file())
    check_free_space(run.weights_dir, needed, "the candidates' distilled weights",
                     "narrow the zoo (ops.include / --ops) or put the run folder on a larger disk")


class _Clock:
    """Wall and CPU seconds of the stage's parts (``distill``, ``score``, ``latency`` and their
    ``*_cpu``), saved after each part: a part resumed from its checkpoint adds to what earlier
    attempts spent, a part done again from the start replaces it, a part reused from its file
    adds nothing. CPU seconds survive a paused or shared machine, where wall seconds do not."""

    def __init__(self, seconds: dict[str, float], path) -> None:
        self.seconds, self.path = seconds, path
        self.wall, self.cpu = time.time(), time.process_time()

    def lap(self, part: str, ran: bool = True, resumed: bool = False) -> None:
        wall, cpu = time.time(), time.process_time()
        if ran:
            keep = 1.0 if resumed else 0.0
            self.seconds[part] = keep * self.seconds.get(part, 0.0) + wall - self.wall
            self.seconds[f"{part}_cpu"] = keep * self.seconds.get(f"{part}_cpu", 0.0) + cpu - self.cpu
            write_json(self.path, self.seconds)
        self.wall, self.cpu = wall, cpu


def distill_stage(config: LanaConfig, run: RunFolder, force: bool = False, teacher: nn.Module | None = None,
                  splits: DataSplits | None = None) -> pd.DataFrame | None:
    """Distil, score and time every candidate of every block; write the candidates table.

    Args:
        config: the run config.
        run: the run folder (created if needed).
        force: redo sub-stages whose results already exist.
        teacher: a teacher in memory (the Python API) instead of ``config.teacher``.
        splits: data in memory (the Python API) instead of ``config.data``.

    Returns:
        The candidates table (one row per block and candidate); None on torchrun's ranks
        other than 0, which only help distil (rank 0 alone writes, scores and times).
    """
    resolve_device(config.latency.device)  # a missing GPU is said now, not after distillation
    memory_limits(config.distill)
    dist = init_distributed(*distill_device_name(config))
    config = type(config).model_validate(dist.broadcast_json(config.model_dump(mode="json")))  # every rank uses rank 0's
    ctx = prepare(config, run, writes=False, teacher=teacher, splits=splits)
    torch.manual_seed(config.seed)
    # static costs only (each module built, counted, dropped); bad op names are said before anything is written
    candidates = build_all_candidates(ctx.specs, config.ops, seed=config.seed)
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        setup_logging(run)
        run.check_fingerprint(teacher_fingerprint(ctx.teacher), config)
        run.save_config(config)
        write_json(run.file("blocks.json"), describe_blocks(ctx.specs))
    counts = {b: len(c) for b, c in candidates.items()}
    log.info("candidates per block: %s", counts)
    timing_file = run.file("distill_timing.json")  # summed over attempts: a resumed stage adds what it spent
    seconds: dict[str, float] = {} if force or not timing_file.is_file() else read_json(timing_file)
    clock = _Clock(seconds, timing_file)

    distill_file = run.file("distill.json")
    results = None
    resumed = not force and (run.file(STATE_FILE).is_file() or run.weights_dir.is_dir())  # a stopped attempt's steps
    if dist.broadcast_json(force or not distill_file.is_file()):
        if force and dist.is_main:  # a forced run killed midway resumes from its own state, never the old results
            clear_state(run)
            distill_file.unlink(missing_ok=True)
            shutil.rmtree(run.weights_dir, ignore_errors=True)
        if dist.is_main:
            _check_weights_fit(candidates, run)
        results = distill_candidates(ctx.teacher, ctx.specs, candidates, ctx.splits, config, run, dist)
    dist.close()
    if not dist.is_main:
        return None
    if results is not None:
        _keyed(distill_file, results)
        clear_state(run)
    attach_weights(candidates, run.weights_dir)  # later builds load the distilled weights; a missing file is said now
    distilled = _unkeyed(distill_file)
    clock.lap("distill", ran=results is not None, resumed=resumed)

    score_file = run.file("scores.json")
    rescore = force or not score_file.is_file() or any("kl" not in row for row in read_json(score_file)[:1])
    if rescore:  # tables before the KL score: rescored
        # the scoring part of the val split (disjoint from the choice images), read batch by batch, scored on the compute device
        images, labels = validation_tensors(ctx.splits, config.score, 0)
        labels = labels if ctx.splits.labelled else None  # scores by agreement with the teacher
        # dropped (NaN) candidates are not scored; stopped ones (dominated under successive halving)
        # are, with the weights they stopped with: their MACs are not their latency, and a tight
        # budget may want them (docs/benchmarks.md, the halving runs)
        live = {b: {n: c for n, c in cs.items() if not distilled[(b, n)]["status"].startswith("dropped")} for b, cs in candidates.items()}
        place = Placement.for_config(config)
        place.model(ctx.teacher)
        try:
            scores, base = score_candidates(ctx.teacher, OneBlockAtATime(live), images, labels, config.score.batch_size)
        finally:
            place.offload(ctx.teacher)
        _keyed(score_file, scores)
        write_json(run.file("teacher_val.json"), base)
    scores = _unkeyed(score_file)
    clock.lap("score", ran=rescore)

    latency_file = run.file("latency.json")
    profile = force or not latency_file.is_file()
    resumed = profile and not force and run.file(PARTIAL_FILE).is_file()
    if profile:

        partial = run.file(PARTIAL_FILE)  # timings saved as taken: a killed run resumes here
        record = profile_latency(ctx.teacher, ctx.specs, candidates, ctx.input_shape, config.latency, checkpoint=partial)
        write_json(latency_file, store_profile(None, record, primary=True))
        partial.unlink(missing_ok=True)
    latency = read_json(latency_file)
    clock.lap("latency", ran=profile, resumed=resumed)

    rows = []
    for index, (block, cands) in enumerate(candidates.items()):
        for name, cand in cands.items():
            d, s = distilled[(block, name)], scores.get((block, name), {})
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
                    "distill_steps": d.get("steps", float("nan")),
                    "kl": s.get("kl", float("nan")),
                    "val_loss": s.get("val_loss", float("nan")),
                    "val_acc": s.get("val_acc", float("nan")),
                    "val_loss_delta": s.get("val_loss_delta", float("nan")),
                    "acc_delta": s.get("acc_delta", float("nan")),
                }
            )

    table = merge_latency(pd.DataFrame(rows), latency)  # latency columns of every profile in latency.json
    base_file = run.file("teacher_val.json")  # feature maps have no KL or accuracy: their score is -distance
    features = base_file.is_file() and read_json(base_file).get("score_kind") == "feature_distance"
    table["score"] = -table["val_loss_delta"] if features else score_column(table, config.score.metric)
    run.save_table(table)
    log.info("distill stage done: %d candidates over %d blocks (%s); %d candidate modules built in %.1fs", len(table), len(counts),
             seconds, BUILDS["builds"], BUILDS["seconds"])
    return table
