"""Successive halving against uniform distillation steps, with the distillation time each spends.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.halving                    # ResNet-18-D, CPU mode
    python -m benchmarks.halving --teacher mobilenet --shares 0.5 --seeds 2

Two settings of lana on one converged quality teacher (``benchmarks.quality``'s CPU mode,
its cached teacher, its data, search, fine-tune and seeds), lana alone (``--methods lana``):

- ``uniform``: every candidate trains ``distill.max_steps`` = S steps (the mode's 60);
- ``halving``: ``distill.halving: true`` with 2·S steps: after 25 % and 50 % of them the
  candidates dominated in their block (distillation loss against MACs) stop, so the
  survivors train twice as long; the total candidate-steps (and the time both settings
  spend) depend on how many stop, which this benchmark measures rather than assumes.

Per setting and seed it records the distillation + scoring + profiling time (wall, and CPU
seconds, which a shared or paused machine does not inflate; summed over a stopped run's
attempts), the mean steps per candidate (the table's ``distill_steps``), and per budget
the selected student's validation and test top-1 after the same fine-tune. A difference smaller than the larger
spread over seeds (max − min) is a tie and is printed as one. Each setting's run folder is
kept under ``--run``: a stopped run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def settings(steps: int) -> dict[str, list[str]]:
    """The two settings' config overrides for ``steps`` uniform steps. ``distill.epochs`` is
    lifted so that ``max_steps`` alone sets the steps: the CPU mode's one epoch of 4 000
    images is 32 steps, which capped both settings' steps alike in the first run."""
    lift = "distill.epochs=1000"
    return {"uniform": [lift, f"distill.max_steps={steps}", f"distill.checkpoint_every={steps}"],
            "halving": [lift, "distill.halving=true", f"distill.max_steps={2 * steps}", f"distill.checkpoint_every={2 * steps}"]}


def steps_per_candidate(seed_dir: Path) -> float:
    """Mean distillation steps over the trainable candidates of one seed's run folder."""
    table = pd.read_parquet(seed_dir / "candidates.parquet")
    steps = table.loc[table["candidate"] != "teacher", "distill_steps"].dropna()
    return float(steps[steps > 0].mean()) if len(steps) else float("nan")


def summarise(frames: dict[str, pd.DataFrame], out: Path, key: str) -> pd.DataFrame:
    """One row per setting and budget: wall, steps, val/test top-1 mean and spread over seeds."""
    rows = []
    for name, frame in frames.items():
        timing = json.loads((out / name / key / "quality_timing.json").read_text())
        per_seed = timing.get("distill_score_latency_s_per_seed", {})
        cpu = timing.get("distill_score_latency_cpu_s_per_seed", {})
        steps = [steps_per_candidate(out / name / key / f"seed{s}") for s in per_seed]
        lana = frame[(frame["method"] == "lana") & frame["val_top1"].notna()]  # a seed that missed the band has no student
        for budget, g in lana.groupby("budget"):
            rows.append({"setting": name, "budget": budget, "seeds": len(g),
                         "distill_s": sum(per_seed.values()) / max(len(per_seed), 1),
                         "distill_cpu_s": sum(cpu.values()) / len(cpu) if cpu else float("nan"),
                         "steps_per_candidate": sum(steps) / max(len(steps), 1),
                         "val_top1": g["val_top1"].mean(), "val_spread": g["val_top1"].max() - g["val_top1"].min(),
                         "top1": g["top1"].mean(), "spread": g["top1"].max() - g["top1"].min(),
                         "share": g["final_share"].mean() if "final_share" in g else float("nan")})
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> list[str]:
    """Halving against uniform per budget, on validation top-1: a win only beyond the larger spread."""
    lines = []
    for budget, g in table.groupby("budget"):
        if set(g["setting"]) != {"uniform", "halving"}:
            lines.append(f"{budget:g}×: only {', '.join(g['setting'])} reached the band")
            continue
        u, h = (g[g["setting"] == s].iloc[0] for s in ("uniform", "halving"))
        margin, diff = max(u["val_spread"], h["val_spread"]), h["val_top1"] - u["val_top1"]
        word = "tie" if abs(diff) <= margin else ("halving wins" if diff > 0 else "halving LOSES")
        if min(u["seeds"], h["seeds"]) < 2:  # one seed has no spread: nothing to judge a margin by
            word = f"no verdict (seeds in the band: uniform {u['seeds']}, halving {h['seeds']})"
        lines.append(f"{budget:g}×: {word}: validation top-1 {h['val_top1']:.2f} against {u['val_top1']:.2f} % "
                     f"(difference {diff:+.2f}, larger spread {margin:.2f}); "
                     f"distillation {h['distill_cpu_s']:.0f} CPU-s against {u['distill_cpu_s']:.0f}")
    return lines


def markdown(table: pd.DataFrame, command: str) -> str:
    """The table and verdicts as Markdown."""
    out = [f"`{command}`", "",
           "| setting | budget | seeds | distill+score+profile s (wall / CPU) | steps per candidate "
           "| val top-1 | test top-1 | measured share |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in table.iterrows():
        out.append(f"| {r['setting']} | {r['budget']:g}× | {r['seeds']} | {r['distill_s']:.0f} / {r['distill_cpu_s']:.0f} | "
                   f"{r['steps_per_candidate']:.0f} | "
                   f"{r['val_top1']:.2f} ± {r['val_spread'] / 2:.2f} % | {r['top1']:.2f} ± {r['spread'] / 2:.2f} % | {r['share']:.3f} |")
    return "\n".join(out + [""] + [f"- {line}" for line in verdicts(table)])


def main(argv: list[str] | None = None) -> int:
    """Both settings in turn (each resumable), then the comparison."""
    from benchmarks.quality import MODES
    from benchmarks.quality_run import run_teacher

    parser = argparse.ArgumentParser(prog="python -m benchmarks.halving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet", help="a quality CPU-mode teacher (resnet, mobilenet, efficientnet)")
    parser.add_argument("--shares", default="0.3,0.5,0.7", help="budgets as shares of the teacher's latency")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (each varies every random choice)")
    parser.add_argument("--steps", type=int, default=None, help="uniform steps per candidate (default: the mode's max_steps)")
    parser.add_argument("--run", default="runs/halving", help="folder of both settings' runs (reused: a stopped run resumes)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the system's)")
    parser.add_argument("--override", action="append", default=[],
                        help="extra config override for both settings, e.g. score.val_images=200")
    args = parser.parse_args(argv)
    mode = "cpu"
    if args.teacher not in MODES[mode]["teachers"]:
        parser.error(f"--teacher: choose from {sorted(MODES[mode]['teachers'])}")
    if args.seeds < 1:
        parser.error("--seeds: at least 1 (2 for the tie rule)")
    steps = args.steps or MODES[mode]["tree"]["distill"]["max_steps"]
    shares = [float(s) for s in args.shares.split(",") if s.strip()]
    out = Path(args.run)
    frames = {}
    for name, overrides in settings(steps).items():
        frames[name] = run_teacher(mode, args.teacher, str(out / name), args.data, [*overrides, *args.override],
                                   shares, list(range(args.seeds)), ["lana"])
    table = summarise(frames, out, args.teacher)
    table.to_csv(out / "halving.csv", index=False)
    print(markdown(table, "python -m benchmarks.halving " + " ".join(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
