"""Coverage: ``lana.accelerate`` end to end on a published list of timm and torchvision models.

For each model of :data:`benchmarks.discovery_coverage.MODELS` (one or two per family), in
its own process with a time limit: build it as a new user would (``num_classes=10``, random
weights passed from Python, nothing downloaded) at the smallest input side it accepts of
:data:`SIZES` (timm's ``img_size`` / torchvision's ``image_size`` passed where the builder
takes one), run ``lana.accelerate(model, train, val, "50%")`` with the tiny settings of
:data:`SETTINGS` on synthetic images, then record: blocks found, candidates per block,
whether the student assembles (and returns the teacher's output structure), whether its
TorchScript and ``.pt2`` files reload and match it (checked again here, beside lana's own
check), and whether it measures faster than the teacher — or the one-line reason it does
not. Results are written per model as they come (``--results``, resumable: a rerun skips
finished models, ``--force`` redoes them) and the Markdown table is rewritten after each
model (``--doc``, default ``docs/coverage.md``).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.coverage             # the whole list
    .venv/bin/python -m benchmarks.coverage --models timm:resnet18 --force --limit 120
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.discovery_coverage import MODELS

# Input sides tried in order: the first the model builds and runs at is used.
SIZES = (64, 96, 128, 160, 224)
TIME_LIMIT_S = 240
# A handful of ops for every layout: skips (real speed), a few conv families, the token ops.
OPS = ["identity", "avgpool_conv_k1", "conv_k1", "dwsep_k3", "pruned_keep50",
       "attn_heads50", "attn_removed", "mlp_keep50", "token_pool"]
IMAGES = {"train": 32, "val": 32}
SETTINGS = {
    "ops": {"include": OPS},
    "data": {"batch_size": 16},
    "distill": {"max_steps": 2, "checkpoint_every": 10**6},
    "score": {"val_images": 16, "batch_size": 16},
    "latency": {"batch_size": 1, "threads": 1, "clock": "process", "warmup": 1, "repeats": 5, "max_repeats": 10,
                "time_cap_s": 0.3, "context_rounds": 1},
    "solve": {"top_k": 1},
    "finetune": {"epochs": 1, "min_steps": 2},
    "export": {"formats": ["torchscript", "pt2"], "check_images": 4},
}
BUDGET = "50%"
STAGES = ("distill_score_latency", "solve", "finetune", "export_measure", "budget_check")  # run_pipeline's order
ATOL = 1e-3


def slug(name: str) -> str:
    """A file name for a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def write_record(path: Path, record: dict) -> None:
    """Write a record atomically (a killed child leaves the last complete one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


# -- the child: one model ------------------------------------------------------------------
def build_at_size(name: str, sizes: tuple[int, ...] = SIZES):
    """The model (random weights, ``num_classes=10``) and the first side of ``sizes`` it runs at."""
    import torch

    from lana.config import RANDOM_CHECKPOINT
    from lana.teacher.load import load_teacher

    size_kw = "image_size" if name.startswith("torchvision:") else "img_size"
    last = None
    for size in sizes:
        for kwargs in ({"num_classes": 10, size_kw: size}, {"num_classes": 10}):
            torch.manual_seed(0)
            try:
                model = load_teacher(name, RANDOM_CHECKPOINT, kwargs).eval()
            except Exception as exc:
                last = exc
                if "UnknownModelError" in type(exc).__name__:
                    raise
                continue
            try:
                with torch.no_grad():
                    model(torch.randn(1, 3, size, size))
            except Exception as exc:  # noqa: BLE001 -- too small for it: the next side
                last = exc
                continue
            return model, size, size_kw in kwargs
    raise RuntimeError(f"no side of {list(sizes)} runs: {one_line(last)}")


def synthetic(n: int, size: int, seed: int):
    """``n`` seeded random images ``(3, size, size)`` with labels of 10 classes."""
    import torch
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def same_structure(got, want) -> None:
    """Raise where ``got`` does not have ``want``'s output structure and tensor shapes."""
    from lana.teacher.outputs import flatten_outputs, output_structure

    if output_structure(got) != output_structure(want):
        raise AssertionError(f"output structure {output_structure(got)} != {output_structure(want)}")
    for g, w in zip(flatten_outputs(got), flatten_outputs(want)):
        if g.shape != w.shape:
            raise AssertionError(f"output shape {tuple(g.shape)} != {tuple(w.shape)}")


def _close(got, want) -> float:
    from lana.teacher.outputs import flatten_outputs

    same_structure(got, want)
    diff = max((g.float() - w.float()).abs().max().item() for g, w in zip(flatten_outputs(got), flatten_outputs(want)))
    if not diff <= ATOL:
        raise AssertionError(f"differs from the eager student by {diff:.1e} > {ATOL:.0e}")
    return diff


def reload_check(fmt: str, path: str, student, x) -> float:
    """Reload an exported file with torch's own loader and compare it with the eager student."""
    import torch

    loaded = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
    with torch.no_grad():
        return _close(loaded(x), student(x))


def last_stage(run_dir: Path) -> str:
    """The stage running when a run stopped: the one after the last ``stage_seconds.json`` records."""
    path = run_dir / "stage_seconds.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    left = [stage for stage in STAGES[:4] if stage not in done]
    return left[0] if left else "the student's reload"


def run_child(name: str, out: Path, run_dir: Path, sizes: tuple[int, ...] = SIZES) -> dict:
    """Build, discover, accelerate and check one model; ``out`` holds its record as it grows."""
    import torch

    import lana
    from lana.teacher.blocks import discover_blocks

    torch.set_num_threads(1)
    begin = time.time()
    record = {"model": name, "status": "running", "stage": "build"}
    write_record(out, record)

    def fail(stage: str, exc: BaseException) -> dict:
        record.update(status="done", stage=stage, end_to_end=False, reason=f"{stage}: {one_line(exc)}", seconds=time.time() - begin,
                      traceback=traceback.format_exc()[-3000:])
        write_record(out, record)
        return record

    try:
        model, size, sized = build_at_size(name, sizes)
    except Exception as exc:  # noqa: BLE001 -- every failure is a one-line reason
        return fail("build", exc)
    record.update(size=size, size_kwarg=sized, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                  stage="discovery")
    write_record(out, record)
    try:
        specs = discover_blocks(model, (1, 3, size, size))
    except Exception as exc:  # noqa: BLE001
        return fail("discovery", exc)
    layouts: dict[str, int] = {}
    for spec in specs:
        layouts[getattr(spec, "layout", "nchw")] = layouts.get(getattr(spec, "layout", "nchw"), 0) + 1
    record.update(blocks=len(specs), layouts=layouts, stage="accelerate")
    write_record(out, record)
    train, val = synthetic(IMAGES["train"], size, 0), synthetic(IMAGES["val"], size, 1)
    try:
        result = lana.accelerate(model, train, val, BUDGET, run_dir=run_dir, device="cpu", config=SETTINGS)
    except Exception as exc:  # noqa: BLE001
        return fail(last_stage(run_dir), exc)
    table = result.table
    per_block = table[table["candidate"] != "teacher"].groupby("block").size().reindex(table["block"].unique(), fill_value=0)
    report = result.report
    exports = {row["format"]: row for row in report.get("exports", [])}
    record.update(candidates=[int(per_block.min()), float(statistics.median(per_block)), int(per_block.max())],
                  replaced=sum(op != "teacher" for op in result.selection.values()),
                  speedup=report.get("speedup"), teacher_ms=report.get("teacher_latency_ms"),
                  student_ms=report.get("student_latency_ms"), budget_verdict=report.get("budget_verdict"),
                  budget_ratio=report.get("budget_ratio"), stage_seconds=report.get("stage_seconds"))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    reasons = []
    try:
        with torch.no_grad():
            same_structure(result.student(x), model(x))
        record["assembles"] = True
    except Exception as exc:  # noqa: BLE001
        record["assembles"] = False
        reasons.append(f"student: {one_line(exc)}")
    for fmt in ("torchscript", "pt2"):
        row = exports.get(fmt) or {}
        if not row.get("file"):
            record[fmt] = False
            reasons.append(f"{fmt}: {row.get('error') or 'not exported'}")
            continue
        try:
            record[f"{fmt}_diff"] = reload_check(fmt, row["file"], result.student, x)
            record[fmt] = True
        except Exception as exc:  # noqa: BLE001
            record[fmt] = False
            reasons.append(f"{fmt} reload: {one_line(exc)}")
    faster = bool(record["speedup"] and record["speedup"] > 1)
    record["faster"] = faster
    if not faster:
        reasons.append(f"not faster: student {record['student_ms']:.3g} ms vs teacher {record['teacher_ms']:.3g} ms "
                       f"({record['replaced']} of {len(result.selection)} blocks replaced)")
    record.update(status="done", stage="done", end_to_end=not reasons, reason="; ".join(reasons),
                  seconds=time.time() - begin)
    write_record(out, record)
    return record


# -- the parent: the list, one process each --------------------------------------------------
def run_model(name: str, results: Path, limit: float, sizes: tuple[int, ...] = SIZES) -> dict:
    """One model in its own process group, killed at ``limit`` seconds; its final record."""
    out = results / f"{slug(name)}.json"
    run_dir = results / "runs" / slug(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    out.unlink(missing_ok=True)
    begin, commit = time.time(), checkout_commit()
    cmd = [sys.executable, "-m", "benchmarks.coverage", "--child", name, "--results", str(results),
           "--sizes", *map(str, sizes)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        err = None
    record = json.loads(out.read_text()) if out.is_file() else {"model": name}
    if record.get("status") != "done":
        stage = record.get("stage", "start")
        if stage == "accelerate":
            stage = last_stage(run_dir)
        if err is None:
            why = f"time limit {limit:.0f} s reached in {stage}"
        else:
            lines = [line for line in (err or "").strip().splitlines() if line.strip()]
            why = f"{stage}: process ended with code {proc.returncode}" + (f" ({lines[-1][:200]})" if lines else "")
        record.update(status="done", reason=why, end_to_end=False, stage=stage)
    record.update(seconds=time.time() - begin, commit=commit, limit_s=limit, finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    write_record(out, record)
    shutil.rmtree(run_dir, ignore_errors=True)
    return record


def checkout_commit() -> str:
    """The checkout's commit (``+`` where lana, op_zoo or solvers have uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "lana", "op_zoo", "solvers"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def _mark(value) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def table_row(r: dict) -> str:
    """One Markdown row of a model's record."""
    layouts = ", ".join(f"{k} {v}" for k, v in sorted((r.get("layouts") or {}).items()))
    blocks = f"{r['blocks']} ({layouts})" if r.get("blocks") is not None else ""
    cands = "/".join(f"{c:g}" for c in r["candidates"]) if r.get("candidates") else ""
    speed = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
    budget = f"{r['budget_ratio']:.2f} {r.get('budget_verdict')}" if r.get("budget_ratio") else ""
    reason = (r.get("reason") or "").replace("|", "\\|").replace("\n", " ")[:300]
    return (f"| {r['model']} | {r.get('size', '')} | {blocks} | {cands} | {_mark(r.get('assembles'))} | "
            f"{_mark(r.get('torchscript'))} | {_mark(r.get('pt2'))} | {speed} | {budget} | {'yes' if r.get('end_to_end') else '**no**'} | "
            f"{r.get('seconds', 0):.0f} | {reason} |")


def machine() -> str:
    """The machine, in words."""
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores (shared), torch {torch.__version__}, timm {timm.__version__}"


def write_doc(path: Path, names: list[str], records: dict[str, dict], limit: float, command: str,
              sizes: tuple[int, ...] = SIZES) -> str:
    """Write the coverage page; returns its summary line."""
    done = [records[n] for n in names if n in records]
    passed = sum(bool(r.get("end_to_end")) for r in done)
    summary = f"**{passed} of {len(names)} models end to end** ({passed / max(1, len(names)) * 100:.0f} %)"
    partial = "" if len(done) == len(names) else (
        f"\n\n**Partial run:** {len(done)} of {len(names)} models measured; not yet run: "
        + ", ".join(n for n in names if n not in records) + ".")
    settings = json.dumps(SETTINGS, separators=(", ", ": "))
    commits: dict[str, int] = {}
    for r in done:
        commits[r.get("commit", "unknown")] = commits.get(r.get("commit", "unknown"), 0) + 1
    at = ", ".join(f"{c} ({n} models)" for c, n in commits.items())
    other = [f"{r['model']} {r['limit_s']:.0f} s" for r in done if r.get("limit_s", limit) != limit]
    longer = f" (rerun after the list with another limit: {', '.join(other)})" if other else ""
    lines = [
        f"# Coverage: `lana.accelerate` end to end on {len(names)} timm and torchvision models",
        "",
        (f"{summary}. Written by `benchmarks/coverage.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"`{command}` on {machine()}; rows measured at commit {at} (`+`: with uncommitted changes).{partial}"),
        "",
        ("Each model runs in its own process with a time limit of "
        f"{limit:.0f} s{longer}, built as a new user would (`num_classes=10`, random weights, nothing downloaded, passed to "
        f"`lana.accelerate` as an `nn.Module`) at the first input side of {list(sizes)} it builds and runs at "
        "(timm's `img_size` / torchvision's `image_size` is passed where the builder takes one, so fixed-size "
        "transformers are built for that side). Data: "
        f"{IMAGES['train']} train and {IMAGES['val']} validation images of seeded noise with random labels. "
        f"Budget {BUDGET}, `device=\"cpu\"`, one thread. Settings (lana config keys): `{settings}`."),
        "",
        ("Columns: *side* the input side used; *blocks* found by automatic discovery (by layout: `nchw` feature "
        "maps, `nld` tokens, `nhwc` channels-last token grids); *cands/block* the candidates per block besides "
        "the teacher's own (min/median/max); *assembles* the student runs and returns the teacher's output "
        "structure; *TorchScript*, *.pt2* the files lana exported reload (with `torch.jit.load` / "
        "`torch.export.load`) and match the eager student within 1e-3; *speed-up* the teacher's measured latency over the student's "
        "(eager, batch 1, one thread, CPU time, interleaved, after lana's budget check); *vs budget* the student's "
        "measured latency over the 50 % target and lana's verdict (`met` within 0.95-1.00, `under`, `over`: the "
        "budget check re-solves once; not part of *e2e*); *e2e* all of the columns before it and a speed-up above 1. "
        "The speed-ups of random-weight teachers with two distillation steps say that the "
        "path works, not what accuracy a real run keeps."),
        "",
        "| model | side | blocks | cands/block | assembles | TorchScript | .pt2 | speed-up | vs budget | e2e | s | reason |",
        "| --- | ---: | --- | --- | --- | --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    lines += [table_row(r) for r in done]
    misses = [r for r in done if not r.get("end_to_end")]
    lines += ["", f"{summary}."]
    if misses:
        lines += ["", "Misses:", ""] + [f"- `{r['model']}`: {r.get('reason') or 'unknown'}" for r in misses]
        if any("InfeasibleError" in (r.get("reason") or "") for r in misses):
            lines += ["", ("An `InfeasibleError` at 50 % says that the blocks found, each replaced by its fastest candidate "
                      "of this small op set, leave more than half the teacher's time: the stem, the head and the modules "
                      "outside any block (coarse discovery, see docs/teachers.md) cost the rest. A lower budget share, "
                      "the whole op zoo or blocks named by hand (`blocks=[...]`) are the ways on.")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Run the list (or ``--models``), skipping finished models; returns the records by model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--limit", type=float, default=TIME_LIMIT_S, help="seconds per model")
    parser.add_argument("--results", default="runs/coverage", help="one JSON record per model")
    parser.add_argument("--doc", default="docs/coverage.md")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="input sides tried, in order")
    parser.add_argument("--force", action="store_true", help="rerun models already recorded")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.child:
        return {args.child: run_child(args.child, results / f"{slug(args.child)}.json", results / "runs" / slug(args.child),
                                       tuple(args.sizes))}
    command = "python -m benchmarks.coverage " + " ".join(argv if argv is not None else sys.argv[1:])
    records: dict[str, dict] = {}
    for name in args.models:
        path = results / f"{slug(name)}.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("status") == "done" and not args.force:
            records[name] = old
            continue
        records[name] = run_model(name, results, args.limit, tuple(args.sizes))
        r = records[name]
        print(f"{name}: {'end to end' if r.get('end_to_end') else r.get('reason')} ({r['seconds']:.0f} s)", flush=True)
        write_doc(Path(args.doc), args.models, records, args.limit, command.strip(), tuple(args.sizes))
    print(write_doc(Path(args.doc), args.models, records, args.limit, command.strip(), tuple(args.sizes)))
    return records


if __name__ == "__main__":
    main()
