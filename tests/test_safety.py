"""Issue #5, safety: checkpoints and configs never run code, and tables and state hold no pickled objects."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch
from conftest import run_main
from torch import nn

from lana.distill.checkpoint import STATE_FILE, STATE_FORMAT, save_state


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"lana-pwned-{os.getpid()}"


def test_checkpoints_and_configs_never_run_code(trained_run, tmp_path, monkeypatch, capsys):
    import pickle

    run, _, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "distill.json").unlink()
    (copy / STATE_FILE).write_bytes(pickle.dumps({"format": 2, "x": _Payload()}, protocol=2))
    code, err = run_main(["distill", "--run", copy], monkeypatch, capsys)
    assert code == 2 and "corrupted or not a weights file" in err and not MARKER.exists()
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {MARKER}']\n")
    code, err = run_main(["config", "--config", config], monkeypatch, capsys)
    assert code == 2 and "not valid YAML" in err and not MARKER.exists()


def test_tables_and_state_hold_no_pickled_objects(trained_run, tmp_path):
    run, _, _ = trained_run
    schema = pq.read_schema(run.file("candidates.parquet"))
    assert all(str(t) in ("string", "large_string", "int64", "double", "bool") for t in schema.types), schema
    assert b"pickle" not in (schema.metadata or {}).get(b"pandas", b"")
    # every weights file the run wrote loads with weights_only=True (tensors and plain containers only)
    stored = sorted(run.path.rglob("*.pt"))
    assert stored
    for path in stored:
        torch.load(path, map_location="cpu", weights_only=True)
    # so does the distillation state a stop leaves (optimiser and scheduler state, rng, stats)
    conv = nn.Conv2d(2, 2, 3)
    optimiser = torch.optim.AdamW(conv.parameters(), lr=1e-3)
    conv(torch.ones(1, 2, 4, 4)).sum().backward()
    optimiser.step()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=10)
    state = tmp_path / STATE_FILE
    save_state(state, "settings", [[("b", "conv_k1")]], 0, 3, {"b\tconv_k1": conv.state_dict()}, optimiser, scheduler,
               {("b", "conv_k1"): {"loss": 0.5}})
    loaded = torch.load(state, map_location="cpu", weights_only=True)
    assert loaded["format"] == STATE_FORMAT and loaded["step"] == 3 and loaded["optimiser"]["state"]
