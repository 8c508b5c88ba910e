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

import pandas as pd
from torch import nn

from lana.config import LatencyConfig
from lana.latency import measure_candidates, measure_in_context, settings_record, settings_tag

log = logging.getLogger("lana")
PRIMARY = "latency_ms"


def profile_latency(teacher: nn.Module, specs, candidates: dict, input_shape: tuple[int, ...], cfg: LatencyConfig) -> dict:
    """Measure every candidate and the teacher under ``cfg``; the profile record for ``latency.json``.

    With ``method: context`` each candidate is timed in the whole network (the prediction
    input) and alone (kept as ``isolated_ms``); with ``method: isolated``, or where in-context
    clocks cannot run (ONNX Runtime, CUDA graphs), alone only, the fixed part being the
    deployed teacher minus its blocks timed alone.

    Args:
        teacher: the teacher network.
        specs: its blocks.
        candidates: candidates (or modules) by block and op name.
        input_shape: ``(C, H, W)`` of one network input.
        cfg: the measurement settings.
    """
    shapes = {s.name: (s.in_channels, *s.in_size) for s in specs}
    method = cfg.method
    if method == "context" and (cfg.runtime == "onnxruntime" or (cfg.cuda_graphs and cfg.device.startswith("cuda"))):
        log.info("latency: %s cannot be clocked block by block; timing candidates alone", cfg.runtime)
        method = "isolated"
    isolated = measure_candidates(candidates, shapes, cfg)
    if method == "context":
        order = {b: sorted(c, key=lambda n, b=b: isolated[(b, n)].median_ms) for b, c in candidates.items()}
        context, record = measure_in_context(teacher, specs, candidates, input_shape, cfg, cfg.context_rounds, order=order)
    else:
        from lana.latency import measure_network

        whole = measure_network(teacher, input_shape, cfg)
        blocks_sum = sum(isolated[(s.name, "teacher")].median_ms for s in specs)
        context, record = isolated, {"teacher_latency_ms": whole.median_ms, "teacher_latency_iqr_ms": whole.iqr_ms,
                                     "teacher_latency_ci_ms": whole.ci_ms, "blocks_sum_ms": blocks_sum}
    record["measured_fixed_latency_ms"] = record.pop("fixed_latency_ms", record["teacher_latency_ms"] - record["blocks_sum_ms"])
    rows = []
    for (block, name), timing in context.items():
        alone = isolated[(block, name)]
        rows.append({"block": block, "candidate": name, "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms,
                     "ci_ms": timing.ci_ms, "isolated_ms": alone.median_ms, "isolated_iqr_ms": alone.iqr_ms,
                     "isolated_ci_ms": alone.ci_ms, "isolated_repeats": alone.repeats})
    return finish_record({
        "tag": settings_tag(cfg), "settings": settings_record(cfg), "method": method, "input_shape": list(input_shape),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **record,
        "isolated_blocks_sum_ms": sum(isolated[(s.name, "teacher")].median_ms for s in specs),
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
    from lana.errors import RunFolderError

    if tag is None or tag == latency.get("tag"):
        return latency
    try:
        return latency["profiles"][tag]
    except (KeyError, TypeError):
        known = [latency.get("tag"), *(latency.get("profiles") or {})]
        raise RunFolderError(f"no latency profile '{tag}' in this run; profiles are {', '.join(map(str, known))}") from None


def latency_offsets(latency: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Per latency column: the fixed part to add, and the measured teacher latency (for ``50%`` budgets)."""
    offsets = {PRIMARY: latency.get("fixed_latency_ms", 0.0)}
    teacher = {PRIMARY: latency.get("teacher_latency_ms")}
    for tag, record in (latency.get("profiles") or {}).items():
        offsets[f"{PRIMARY}:{tag}"] = record.get("fixed_latency_ms", 0.0)
        teacher[f"{PRIMARY}:{tag}"] = record.get("teacher_latency_ms")
    return offsets, teacher


def config_for_record(record: dict, base: LatencyConfig) -> LatencyConfig:
    """The measurement settings a profile was taken with (knobs such as ``repeats`` from ``base``)."""
    fields = set(LatencyConfig.model_fields)
    kept = {k: v for k, v in record.get("settings", {}).items() if k in fields}
    if kept.get("threads") is None and record.get("settings", {}).get("threads_used"):
        kept["threads"] = record["settings"]["threads_used"]  # the count the profile was taken with
    knobs = {k: getattr(base, k) for k in ("warmup", "repeats", "max_repeats", "ci", "time_cap_s")}
    return LatencyConfig.model_validate({**kept, **knobs})


# -- run folder level: `lana profile` ------------------------------------------------------------
def _load_run(run, overrides: list[str] | None, device: str | None):
    from lana.candidates import build_all_candidates
    from lana.pipeline import prepare

    overrides = list(overrides or []) + ([f"latency.device={device}"] if device else [])
    config = run.load_config(overrides)
    ctx = prepare(config, run, writes=False)
    return config, ctx, build_all_candidates(ctx.specs, config.ops)


def _save(run, latency: dict) -> pd.DataFrame:
    from lana.rundir import write_json

    write_json(run.file("latency.json"), latency)
    table = merge_latency(run.load_table(), latency)
    run.save_table(table)
    return table


def profile_run(run, overrides: list[str] | None = None, device: str | None = None, primary: bool = False) -> dict:
    """(Re)measure a run's candidates under other settings without redoing distillation.

    Args:
        run: the run folder.
        overrides: ``--set latency.KEY=VALUE`` settings (batch size, dtype, runtime, ...).
        device: shorthand for ``--set latency.device=...``.
        primary: make this the profile ``lana solve`` uses (``latency_ms``); the previous
            primary moves to ``latency_ms:<its tag>``; the config's latency section follows.

    Returns:
        The new profile record.
    """
    from lana.rundir import read_json

    config, ctx, candidates = _load_run(run, overrides, device)
    record = profile_latency(ctx.teacher, ctx.specs, candidates, ctx.input_shape, config.latency)
    latency = read_json(run.file("latency.json")) if run.file("latency.json").is_file() else None
    _save(run, store_profile(latency, record, primary))
    if primary:
        stored = run.load_config()
        run.save_config(stored.model_copy(update={"latency": config.latency}))
    return record


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_bundle(run, out, networks: int = 6, overrides: list[str] | None = None, seed: int = 0) -> dict:
    """``lana profile --bundle OUT``: TorchScript modules, a manifest and a torch-only runner.

    The bundle holds every candidate at its block's input shape, the whole teacher (for the
    fixed part) and ``networks`` whole networks of random selections (for the correction fit
    on import). On the other machine: ``python OUT/runner.py --device cuda --out latency.csv``.

    Returns:
        The manifest.
    """
    import io
    import json
    import shutil
    from pathlib import Path

    import torch

    from lana import bundle_runner
    from lana.export import to_torchscript
    from lana.latency_check import build_network, mixed_selections
    from lana.rundir import atomic_write_bytes, atomic_write_text

    config, ctx, candidates = _load_run(run, overrides, None)
    cfg = config.latency
    out = Path(out)
    (out / "modules").mkdir(parents=True, exist_ok=True)
    entries = []

    def save(module: nn.Module, shape: tuple[int, ...], file: str, **entry) -> None:
        scripted, _ = to_torchscript(module, torch.randn(2, *shape))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        atomic_write_bytes(out / file, buffer.getvalue())
        entries.append({**entry, "file": file, "input_shape": list(shape)})

    for spec in ctx.specs:
        shape = (spec.in_channels, *spec.in_size)
        for name, cand in candidates[spec.name].items():
            save(cand.module, shape, f"modules/{_safe(spec.name)}__{_safe(name)}.pt", kind="candidate", block=spec.name, candidate=name)
    save(ctx.teacher, ctx.input_shape, "teacher.pt", kind="teacher", name="teacher")
    macs = {b: {n: float(c.macs) for n, c in cands.items()} for b, cands in candidates.items()}
    modules = {b: {n: c.module for n, c in cands.items()} for b, cands in candidates.items()}
    for index, choice in enumerate(mixed_selections(macs, networks, seed) if networks else []):
        save(build_network(ctx.teacher, ctx.specs, choice, modules), ctx.input_shape, f"networks/net{index:02d}.pt",
             kind="network", name=f"net{index:02d}", choice=choice)
    base = f"b{cfg.batch_size}-{cfg.dtype}-{'torchscript' if cfg.runtime == 'torchscript' else 'eager'}"
    base += ("-cl" if cfg.channels_last else "") + ("-graphs" if cfg.cuda_graphs else "")
    settings = {**cfg.model_dump(mode="json"), "runtime": "torchscript" if cfg.runtime == "torchscript" else "eager"}
    manifest = {"format": 1, "run": str(run.path), "tag_base": base, "settings": settings, "entries": entries,
                "input_shape": list(ctx.input_shape), "made_with_torch": torch.__version__}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    shutil.copyfile(bundle_runner.__file__, out / "runner.py")
    atomic_write_text(out / "README.txt", "Time these modules on the target machine (needs only torch):\n"
                      "    python runner.py --device cuda --out latency.csv   # or --device cpu --threads N\n"
                      f"then bring latency.csv back and run: lana profile --run {run.path} --import latency.csv\n")
    return manifest


def import_csv(run, path, primary: bool = False) -> dict:
    """``lana profile --import FILE``: merge a bundle runner's CSV as a profile of the run.

    Candidates' figures are taken as timed alone; the fixed part is the teacher minus its
    blocks; with at least two timed networks a correction (fixed + scale × sum) is fitted on
    them and the teacher, as ``lana latency-check --fit`` does here.
    """
    import json
    from pathlib import Path

    from lana.errors import TableError
    from lana.latency_check import fit_correction
    from lana.rundir import read_json

    path = Path(path)
    try:
        rows = pd.read_csv(path, dtype={"block": str, "candidate": str}, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for damaged files
        raise TableError(f"{path} cannot be read as a bundle runner CSV ({type(exc).__name__}); re-run runner.py") from None
    needed = {"kind", "block", "candidate", "median_ms", "tag"}
    if not needed <= set(rows.columns) or rows.empty:
        raise TableError(f"{path} lacks columns {sorted(needed - set(rows.columns))} or rows; it was not written by runner.py")
    table = run.load_table()
    cands = rows[rows["kind"] == "candidate"]
    have = set(zip(cands["block"], cands["candidate"]))
    want = set(zip(table["block"].astype(str), table["candidate"].astype(str)))
    if want - have or have - want:
        raise TableError(f"{path} does not match this run's candidates ({len(want - have)} missing, {len(have - want)} unknown); "
                         f"write a new bundle with `lana profile --run {run.path} --bundle DIR`")
    teacher = rows[rows["kind"] == "teacher"]
    if teacher.empty:
        raise TableError(f"{path} has no teacher row; re-run the bundle's runner.py on the whole bundle")
    raw = {(b, c): float(m) for b, c, m in zip(cands["block"], cands["candidate"], cands["median_ms"])}
    blocks_sum = sum(v for (b, c), v in raw.items() if c == "teacher")
    teacher_ms = float(teacher["median_ms"].iloc[0])
    tag = str(rows["tag"].iloc[0])
    record = {"tag": tag, "settings": {"tag": tag, "device": tag.split("-", 1)[0], "torch": str(rows.get("torch", pd.Series([""])).iloc[0])},
              "method": "imported", "source": str(path), "host": str(rows.get("host", pd.Series([""])).iloc[0]),
              "measured_at": _now(), "teacher_latency_ms": teacher_ms, "blocks_sum_ms": blocks_sum,
              "measured_fixed_latency_ms": teacher_ms - blocks_sum, "calibration": None,
              "candidates": [{"block": r.block, "candidate": r.candidate, "median_ms": float(r.median_ms),
                              "iqr_ms": float(getattr(r, "iqr_ms", math.nan) or math.nan),
                              "ci_ms": float(getattr(r, "ci_ms", math.nan) or math.nan), "isolated_ms": float(r.median_ms)}
                             for r in cands.itertuples()]}
    nets = rows[rows["kind"] == "network"]
    if len(nets) >= 2:
        sums = [sum(raw[(b, c)] for b, c in json.loads(choice).items()) for choice in nets["choice"]]
        fit = fit_correction(sums + [blocks_sum], [float(m) for m in nets["median_ms"]] + [teacher_ms])
        record["calibration"] = {**fit.as_dict(), "fitted_at": _now(), "source": "bundle networks"}
    finish_record(record)
    latency = read_json(run.file("latency.json"))
    _save(run, store_profile(latency, record, primary))
    return record


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
