"""Latency profiles of a run: measured once per settings tag, kept in ``latency.json``.

``latency.json`` holds the *primary* profile at its top level (the settings the run was
configured with; what ``lana solve`` adds up as ``latency_ms`` plus ``fixed_latency_ms``) and
any other profiles under ``profiles`` by tag (another device, batch size, dtype, runtime),
which become ``latency_ms:<tag>`` columns. The candidates table's latency columns are always
rebuilt from this file (:func:`latency_columns`), so nothing measured is ever lost.

A profile record::

    tag, settings, method (context | isolated | imported), input_shape, measured_at,
    teacher_latency_ms (+ _iqr_ms, _ci_ms), blocks_sum_ms, measured_fixed_latency_ms,
    calibration (null, or {fixed_ms, scale, networks, ...} from `lana latency-check --fit`),
    fixed_latency_ms (the one the prediction uses: calibrated if there is a calibration),
    candidates: [{block, candidate, median_ms (raw prediction input), iqr_ms, isolated_ms, ...}]
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pandas as pd
from torch import nn

from lana.config import LatencyConfig
from lana.distill.candidates import OneBlockAtATime, release_all
from lana.errors import RunFolderError
from lana.latency.checkpoint import PartialTimings, partial_key
from lana.latency.context import measure_in_context
from lana.latency.drift import drift_pct, speed_ratio
from lana.latency.measure import (
    measure_candidates,
    measure_network,
    resolve_device,
    settings_record,
    settings_tag,
)
from lana.latency.runtimes import CLOCKABLE
from lana.run.memory import release_memory

log = logging.getLogger("lana")

# In context, the candidates timed alone only order the first round of cover networks (fast
# ops among fast neighbours); nothing the solver adds comes from them. A median of a few
# calls orders them as well as a tight one (benchmarks/latency_rate.py measures both) at an
# eighth of the calls: with the default knobs, under load, most candidates ran to the cap.
# A median of 3 after a warm-up capped at 25 ms: the in-context figures it leads to differ
# from those ordered by the default knobs less than two passes with one order do.
ORDERING_KNOBS = {"warmup": 2, "repeats": 3, "max_repeats": 3, "ci": 1.0, "time_cap_s": 0.1}


def isolated_settings(cfg: LatencyConfig, method: str, precise: bool = False) -> LatencyConfig:
    """The settings candidates are timed alone with: ``cfg``'s own where their figures are the
    prediction's input (``method`` isolated) or ``precise``, else :data:`ORDERING_KNOBS`."""
    return cfg if method != "context" or precise else cfg.model_copy(update=ORDERING_KNOBS)


def profile_latency(teacher: nn.Module, specs, candidates: dict, input_shape: tuple[int, ...], cfg: LatencyConfig,
                    checkpoint: Path | None = None, precise_isolated: bool = False) -> dict:
    """Measure every candidate and the teacher under ``cfg``; the profile record for ``latency.json``.

    With ``method: context`` each candidate is timed in the whole network (the prediction
    input) and alone, briefly (:data:`ORDERING_KNOBS`: the order of the first cover round;
    kept as ``isolated_ms``, ``isolated_timing`` ``ordering``); with ``method: isolated``, or where in-context
    clocks cannot run (ONNX Runtime, CUDA graphs), alone only, the fixed part being the
    deployed teacher minus its blocks timed alone.

    Args:
        teacher: the teacher network.
        specs: its blocks.
        candidates: candidates (or modules) by block and op name; a candidate built on demand
            (:class:`lana.distill.candidates.Candidate`) is held one block at a time when timed
            alone, one group of networks at a time in context.
        input_shape: ``(C, H, W)`` of one network input.
        cfg: the measurement settings.
        checkpoint: a file (``RUN/latency_partial.json``) where timings are saved as they are
            taken; a rerun after a kill resumes from it. The caller deletes it once the
            profile is stored.
        precise_isolated: in context too, time the candidates alone with ``cfg``'s own knobs
            (``isolated_timing`` ``precise``: for comparing a naive sum of them).

    Returns:
        The profile record; each candidate also carries ``share``, its figure as a share of
        the teacher timed in the same window (what a ``50%`` budget is measured against).
    """
    shapes = {s.name: s.in_shape for s in specs}
    device = resolve_device(cfg.device)
    method = cfg.method
    if method == "context" and (cfg.runtime not in CLOCKABLE or (cfg.cuda_graphs and cfg.device.startswith("cuda"))):
        why = "CUDA graphs replay whole" if cfg.runtime in CLOCKABLE else f"{cfg.runtime} compiles the whole graph"
        log.info("latency: %s cannot be clocked block by block (%s); timing candidates alone (method isolated)", cfg.runtime, why)
        method = "isolated"
    precise = isolated_settings(cfg, method, precise_isolated) is cfg
    knobs = {k: getattr(cfg, k) for k in ("warmup", "repeats", "max_repeats", "ci", "time_cap_s", "context_rounds",
                                         "context_repeats", "context_min_s")}
    knobs["isolated_precise"] = precise
    partial = PartialTimings(checkpoint, partial_key(f"{settings_tag(cfg)}-{method}", knobs, candidates, input_shape))
    release_memory(device)  # what earlier stages freed goes back before the timed copies are made
    isolated = measure_candidates(OneBlockAtATime(candidates), shapes, isolated_settings(cfg, method, precise_isolated),
                                  partial)  # one block's modules held at a time
    release_memory(device)
    if method == "context":
        order = {b: sorted(c, key=lambda n, b=b: isolated[(b, n)].median_ms) for b, c in candidates.items()}
        # each group of networks builds its candidates and releases them once timed
        context, record = measure_in_context(teacher, specs, candidates, input_shape, cfg, cfg.context_rounds, order=order,
                                             partial=partial)
        release_all(candidates)
        release_memory(device)  # the timed networks' copies go back to the system too
    else:

        whole = measure_network(teacher, input_shape, cfg)
        blocks_sum = sum(isolated[(s.name, "teacher")].median_ms for s in specs)
        context, record = isolated, {"teacher_latency_ms": whole.median_ms, "teacher_latency_iqr_ms": whole.iqr_ms,
                                     "teacher_latency_ci_ms": whole.ci_ms, "blocks_sum_ms": blocks_sum}
    record["measured_fixed_latency_ms"] = record.pop("fixed_latency_ms", record["teacher_latency_ms"] - record["blocks_sum_ms"])
    rows = []
    teacher_ms = record["teacher_latency_ms"]
    for (block, name), timing in context.items():
        alone = isolated[(block, name)]
        rows.append({"block": block, "candidate": name, "median_ms": timing.median_ms, "share": timing.median_ms / teacher_ms,
                     "iqr_ms": timing.iqr_ms,
                     "ci_ms": timing.ci_ms, "isolated_ms": alone.median_ms, "isolated_iqr_ms": alone.iqr_ms,
                     "isolated_ci_ms": alone.ci_ms, "isolated_repeats": alone.repeats})
    record["fixed_share"] = record["measured_fixed_latency_ms"] / teacher_ms
    return finish_record({
        "tag": settings_tag(cfg), "settings": settings_record(cfg), "method": method, "input_shape": list(input_shape),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **record,
        "isolated_blocks_sum_ms": sum(isolated[(s.name, "teacher")].median_ms for s in specs),
        "isolated_timing": "precise" if precise else "ordering",
        "calibration": None, "candidates": rows,
    })


def finish_record(record: dict) -> dict:
    """Set ``fixed_latency_ms`` from the calibration (if any) or the measured fixed part."""
    calibration = record.get("calibration")
    record["fixed_latency_ms"] = calibration["fixed_ms"] if calibration else record["measured_fixed_latency_ms"]
    return record


def _suffix(tag: str | None) -> str:
    return "" if tag is None else f":{tag}"


def record_columns(record: dict, tag: str | None = None) -> pd.DataFrame:
    """The table columns of one profile (``tag`` None: the primary columns).

    ``latency_ms`` is what the solver adds: the raw prediction input times the calibration's
    scale (1 without one). Raw figures stay beside it: ``latency_context_ms`` (in-context
    profiles) and ``latency_isolated_ms``; ``latency_iqr_ms`` is the spread.
    """
    scale = (record.get("calibration") or {}).get("scale", 1.0)
    end = _suffix(tag)
    rows = []
    for r in record["candidates"]:
        row = {"block": r["block"], "candidate": r["candidate"], f"latency_ms{end}": r["median_ms"] * scale,
               f"latency_iqr_ms{end}": r.get("iqr_ms", math.nan), f"latency_isolated_ms{end}": r.get("isolated_ms", math.nan)}
        if record.get("method") == "context":
            row[f"latency_context_ms{end}"] = r["median_ms"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    if tag is None:
        frame["latency_settings"] = record["tag"]
    return frame


def latency_columns(latency: dict) -> pd.DataFrame:
    """Every latency column of a run (primary and per tag), keyed by block and candidate."""
    frame = record_columns(latency)
    for tag, record in (latency.get("profiles") or {}).items():
        frame = frame.merge(record_columns(record, tag), on=["block", "candidate"], how="left")
    return frame


def merge_latency(table: pd.DataFrame, latency: dict) -> pd.DataFrame:
    """The table with its latency columns replaced by those of ``latency.json``."""
    stale = [c for c in table.columns if c.startswith(("latency_ms", "latency_iqr_ms", "latency_isolated_ms", "latency_context_ms"))
             or c == "latency_settings"]
    merged = table.drop(columns=stale).merge(latency_columns(latency), on=["block", "candidate"], how="left")
    return merged


def store_profile(latency: dict | None, record: dict, primary: bool) -> dict:
    """``latency.json`` content with ``record`` added: as the primary profile, or under ``profiles``.

    A primary profile replaced by another tag moves under ``profiles`` (nothing is dropped).
    """
    if latency is None:
        return {**record, "profiles": {}}
    profiles = dict(latency.get("profiles") or {})
    current = {k: v for k, v in latency.items() if k != "profiles"}
    if primary or record["tag"] == latency.get("tag"):
        if current.get("tag") and current["tag"] != record["tag"]:
            profiles[current["tag"]] = current
        profiles.pop(record["tag"], None)
        return {**record, "profiles": profiles}
    profiles[record["tag"]] = record
    return {**current, "profiles": profiles}


def find_profile(latency: dict, tag: str | None) -> dict:
    """The primary profile (``tag`` None or the primary's tag) or the one stored under ``tag``."""

    if tag is None or tag == latency.get("tag"):
        return latency
    try:
        return latency["profiles"][tag]
    except (KeyError, TypeError):
        known = [latency.get("tag"), *(latency.get("profiles") or {})]
        raise RunFolderError(f"no latency profile '{tag}' in this run; profiles are {', '.join(map(str, known))}") from None


def config_for_record(record: dict, base: LatencyConfig) -> LatencyConfig:
    """The measurement settings a profile was taken with (knobs such as ``repeats`` from ``base``)."""
    fields = set(LatencyConfig.model_fields)
    kept = {k: v for k, v in record.get("settings", {}).items() if k in fields}
    if kept.get("threads") is None and record.get("settings", {}).get("threads_used"):
        kept["threads"] = record["settings"]["threads_used"]  # the count the profile was taken with
    knobs = {k: getattr(base, k) for k in ("warmup", "repeats", "max_repeats", "ci", "time_cap_s")}
    return LatencyConfig.model_validate({**kept, **knobs})


REFERENCE_FILE = "reference.json"


def reference_record(record: dict, teacher_now_ms: float, source: str) -> dict:
    """``RUN/reference.json``: the teacher (the reference) timed now, against the profile's.

    ``lana solve`` reads it to convert budgets in ms to the machine's present speed (every
    figure × now / profiled), so a share-of-teacher budget and an ms budget both hold when
    the machine has sped up or slowed down since profiling.

    Args:
        record: the primary profile.
        teacher_now_ms: the deployed teacher, timed now in the profile's settings.
        source: what timed it (``export``, ``profile --reference``).

    Returns:
        The JSON-able record.
    """
    profiled = record["teacher_latency_ms"]
    return {"tag": record["tag"], "teacher_profiled_ms": profiled, "teacher_now_ms": teacher_now_ms,
            "drift_pct": drift_pct(speed_ratio(teacher_now_ms, profiled)), "source": source,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
