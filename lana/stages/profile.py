"""``lana profile``: (re)measure a run's candidates for another device or setting; bundles for
machines without lana, and importing what they measured.
"""
from __future__ import annotations

import logging
import math
import time

import pandas as pd
from torch import nn

from lana.distill.candidates import OneBlockAtATime, build_all_candidates, module_views
from lana.errors import TableError
from lana.export.torchscript import to_torchscript
from lana.latency import timing_core as bundle_runner
from lana.latency.calibration import build_network, fit_correction, mixed_selections
from lana.latency.checkpoint import PARTIAL_FILE
from lana.latency.measure import measure_network
from lana.latency.profiles import (
    REFERENCE_FILE,
    config_for_record,
    finish_record,
    merge_latency,
    profile_latency,
    reference_record,
    store_profile,
)
from lana.run.context import prepare
from lana.run.folder import atomic_write_bytes, atomic_write_text, read_json, write_json

log = logging.getLogger("lana")


# -- run folder level: `lana profile` ------------------------------------------------------------
def _load_run(run, overrides: list[str] | None, device: str | None):

    overrides = list(overrides or []) + ([f"latency.device={device}"] if device else [])
    config = run.load_config(overrides)
    ctx = prepare(config, run, writes=False)
    return config, ctx, build_all_candidates(ctx.specs, config.ops)


def _save(run, latency: dict) -> pd.DataFrame:

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

    config, ctx, candidates = _load_run(run, overrides, device)
    partial = run.file(PARTIAL_FILE)  # timings saved as taken: a killed `lana profile` resumes here
    record = profile_latency(ctx.teacher, ctx.specs, candidates, ctx.input_shape, config.latency, checkpoint=partial)
    latency = read_json(run.file("latency.json")) if run.file("latency.json").is_file() else None
    _save(run, store_profile(latency, record, primary))
    partial.unlink(missing_ok=True)
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

    shapes = {spec.name: spec.in_shape for spec in ctx.specs}
    by_block = OneBlockAtATime(candidates)  # one block's modules held at a time
    for block in by_block:
        for name, cand in by_block[block].items():
            save(cand.module, shapes[block], f"modules/{_safe(block)}__{_safe(name)}.pt", kind="candidate", block=block, candidate=name)
    save(ctx.teacher, ctx.input_shape, "teacher.pt", kind="teacher", name="teacher")
    macs = {b: {n: float(c.macs) for n, c in cands.items()} for b, cands in candidates.items()}
    modules = module_views(candidates)  # the networks' candidates only
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


def time_reference(run, overrides: list[str] | None = None) -> dict:
    """``lana profile --reference``: time the teacher now in the primary profile's settings.

    Writes ``RUN/reference.json``; ``lana solve`` then converts every figure to the machine's
    present speed, so ``--budget 5ms`` means 5 ms now, not 5 ms at profiling time.
    """
    config = run.load_config(overrides)
    latency = read_json(run.file("latency.json"))
    ctx = prepare(config, run, writes=False)
    now = measure_network(ctx.teacher, ctx.input_shape, config_for_record(latency, config.latency))
    reference = reference_record(latency, now.median_ms, "profile --reference")
    write_json(run.file(REFERENCE_FILE), reference)
    return reference


def import_csv(run, path, primary: bool = False) -> dict:
    """``lana profile --import FILE``: merge a bundle runner's CSV as a profile of the run.

    Candidates' figures are taken as timed alone; the fixed part is the teacher minus its
    blocks; with at least two timed networks a correction (fixed + scale × sum) is fitted on
    them and the teacher, as ``lana latency-check --fit`` does here.
    """
    import json
    from pathlib import Path


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
    record = {"tag": tag,
              "settings": {"tag": tag, "device": tag.split("-", 1)[0], "torch": str(rows.get("torch", pd.Series([""])).iloc[0])},
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
