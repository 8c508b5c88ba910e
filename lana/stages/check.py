"""``lana latency-check``: measure networks of a run end to end, compare with the prediction,
optionally fit and store a correction.
"""
from __future__ import annotations

import logging

from lana.distill.candidates import build_all_candidates, module_views
from lana.errors import RunFolderError
from lana.latency.calibration import (
    check_latency,
    mixed_selections,
    scatter_png,
    solver_selections,
)
from lana.latency.profiles import config_for_record, find_profile, finish_record, merge_latency
from lana.run.context import prepare
from lana.run.folder import atomic_write_bytes, read_json, write_json

log = logging.getLogger("lana")


def check_run(run, networks: int = 12, fit: bool = False, shares: tuple[float, ...] = (0.5, 0.7, 0.9), tag: str | None = None,
              overrides: list[str] | None = None, seed: int = 0) -> dict:
    """``lana latency-check``: measure networks of a run end to end, compare, optionally fit and store a correction.

    Writes ``RUN/latency_check.csv``, ``.png`` and ``.json``; with ``fit``, the correction goes
    into the profile in ``latency.json`` and the table's latency columns are rebuilt, so
    ``lana solve`` adds corrected figures.

    Args:
        run: the run folder.
        networks: random networks to build (besides the solver's picks and the teacher).
        fit: choose a correction by nested leave-one-out over every measured network and store it
            (an int is read as a flag, for older callers).
        shares: budgets (shares of the teacher's latency) for the solver's picks.
        tag: which latency profile (default: the primary one).
        overrides: ``--set`` config overrides (e.g. ``latency.repeats=50``).
    """

    config = run.load_config(overrides)
    latency = read_json(run.file("latency.json"))
    record = find_profile(latency, tag)
    if record.get("method") == "imported":
        raise RunFolderError(f"profile '{record['tag']}' was measured on another machine; run the check there")
    cfg = config_for_record(record, config.latency)
    ctx = prepare(config, run, writes=False)
    modules = module_views(build_all_candidates(ctx.specs, config.ops))  # built as the networks need them
    table = run.load_table()
    column = "latency_ms" if tag in (None, latency.get("tag")) else f"latency_ms:{tag}"
    used = {b: dict(zip(g["candidate"], g[column])) for b, g in table.groupby("block", sort=False)}
    selections = mixed_selections(used, networks, seed)
    picks = []
    for choice in solver_selections(record, table, column, list(shares)):
        if choice not in picks:  # budgets often share a pick
            picks.append(choice)
    result = check_latency(ctx.teacher, ctx.specs, modules, record, ctx.input_shape, cfg,
                           selections + picks, ["random"] * len(selections) + ["solver"] * len(picks), bool(fit))
    frame, summary = result["frame"], result["summary"]
    summary.update({"tag": record["tag"], "settings": record["settings"], "method": record.get("method")})
    atomic_write_bytes(run.file("latency_check.csv"), frame.to_csv(index=False).encode())
    atomic_write_bytes(run.file("latency_check.png"), scatter_png(frame, f"{record['tag']}: predicted vs measured"))
    if result["correction"] is not None:
        record["calibration"] = {**result["correction"].as_dict(), "fitted_at": _now(), "held_out": summary.get("after"),
                                 "why": summary["choice"]["why"], "leave_one_out": summary["choice"]["kinds"],
                                 "nested_leave_one_out": summary["choice"]["nested"]}

        finish_record(record)
        write_json(run.file("latency.json"), latency)
        run.save_table(merge_latency(table, latency))
    write_json(run.file("latency_check.json"), summary)
    return {"frame": frame, "summary": summary}


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S")
