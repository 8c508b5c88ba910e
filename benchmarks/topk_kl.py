"""How well the solver's additive score ranks selections: its ``--k`` best at a table budget,
assembled with their distilled weights (no fine-tune) and measured on the choice images, as
lana's pipeline compares them (``lana.stages.choose``)::

    python -m benchmarks.topk_kl --run RUN --teacher resnet --seed 0 --table-ms 10.52 [--k 10]

``RUN`` is a quality run folder (``benchmarks.quality --run``) whose seed has been distilled;
``--table-ms`` a table budget (the ``knob`` of a row in its log). Prints one row per rank.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a quality run folder (benchmarks.quality --run)")
    parser.add_argument("--teacher", default="resnet", help="resnet, mobilenet, efficientnet or vit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-ms", type=float, required=True, help="the table budget (ms) the solver's selections are under")
    parser.add_argument("--k", type=int, default=10, help="how many of the solver's best selections")
    parser.add_argument("--mode", default="cpu")
    args = parser.parse_args(argv)
    folder = Path(args.run) / args.teacher
    if not (folder / f"seed{args.seed}").is_dir():
        parser.error(f"{folder / f'seed{args.seed}'} is missing: run benchmarks.quality --teachers {args.teacher} first")
    from benchmarks.quality_run import seed_context
    from benchmarks.search import BAND
    from benchmarks.table_choice import solve_in_window
    from lana.stages.choose import measure_selections
    from lana.stages.solve import load_run

    ctx = seed_context(args.mode, args.teacher, args.run, args.seed)
    choices = solve_in_window(load_run(ctx.run.path), args.table_ms, BAND[0], "auto", args.k)
    figures = measure_selections(ctx, [{"choice": c} for c in choices])
    print(f"{args.teacher} seed {args.seed}, table budget {args.table_ms} ms: the solver's {len(choices)} best, assembled")
    print("| solver's rank | choice KL | choice top-1 | ops |\n| --- | --- | --- | --- |")
    for rank, (choice, fig) in enumerate(zip(choices, figures), 1):
        ops = ", ".join(f"{block}={op}" for block, op in choice.items() if op != "teacher")
        print(f"| {rank} | {fig['choice_kl']:.2f} | {fig['choice_acc']:.1f} % | {ops} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
