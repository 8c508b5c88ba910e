"""How far a longer fine-tune takes one lana student: validation top-1 against steps and training images.

    OMP_NUM_THREADS=1 python -m benchmarks.finetune_steps RUN/resnet/seed0 --share 0.4 \
        --variants 125:4000,500:4000,500:0,1500:0,4000:0

``RUN/resnet/seed0`` is a lana run folder whose distill stage ran (a seed folder of
``benchmarks.quality`` or ``benchmarks.halving``: its config names the cached teacher and the
data). The solver's selection at ``--share`` of the teacher's profiled latency is assembled
once; each variant ``STEPS:IMAGES`` fine-tunes a fresh copy by the quality benchmark's
distillation (``finetune`` settings, the run's batch size) for STEPS steps on the first
IMAGES training images (0: all of them), and prints its top-1 on the validation images the
swap-one scores did not use (the comparison's choice images). Seed 0 throughout, so the
variants differ only in steps and images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_variants(text: str) -> list[tuple[int, int]]:
    """``"125:4000,4000:0"`` → ``[(125, 4000), (4000, 0)]`` (steps, training images; 0 = all)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        steps, _, images = part.partition(":")
        if not steps.isdigit() or not images.isdigit() or int(steps) < 1:
            raise ValueError(f"variant '{part}': write STEPS:IMAGES, e.g. 500:4000 (0 images = all)")
        out.append((int(steps), int(images)))
    if not out:
        raise ValueError("no variant given")
    return out


def run(run_dir: Path, share: float, variants: list[tuple[int, int]]) -> list[dict]:
    """One row per variant: steps, training images, validation top-1, fine-tune seconds."""
    import copy

    from benchmarks.table_choice import choice_split
    from lana.config import load_config
    from lana.distill.candidates import assemble_student
    from lana.distill.train import TeacherLogits, distil_into
    from lana.distill.validation import evaluate
    from lana.run.context import prepare
    from lana.run.folder import RunFolder
    from lana.selection import build_problem, solve_inputs
    from lana.stages.solve import load_run

    base = load_config(run_dir / "config.yaml")
    inputs = load_run(run_dir)
    problem, limits = build_problem(inputs, f"{share * inputs.teacher_ms:.6f}ms")
    choice = solve_inputs(inputs, problem, limits, "auto")["choice"]
    print("selection:", ", ".join(f"{b}={op}" for b, op in choice.items()), flush=True)
    contexts, rows, student = {}, [], None
    for steps, images in variants:
        if images not in contexts:
            config = base.model_copy(deep=True)
            config.data.train_limit = images or None
            contexts[images] = prepare(config, RunFolder(run_dir), writes=False)
        ctx = contexts[images]
        val = choice_split(ctx)
        if student is None:
            student = assemble_student(ctx.teacher, ctx.specs, choice, ctx.run.weights_dir)
            rows.append({"steps": 0, "images": 0, "val_top1": evaluate(student, *val)[1], "finetune_s": 0.0,
                         "teacher_val_top1": evaluate(ctx.teacher, *val)[1]})
        model = copy.deepcopy(student)
        batch = base.data.batch_size
        targets = TeacherLogits.if_it_fits(ctx.teacher, ctx.splits, batch)
        tick = time.time()
        n = len(ctx.splits.train)
        distil_into(model, ctx.teacher, ctx.splits, base.finetune, batch, 0, f"{steps} steps", steps * batch / n, None, targets)
        rows.append({"steps": steps, "images": n, "val_top1": evaluate(model, *val)[1], "finetune_s": time.time() - tick,
                     "teacher_val_top1": rows[0]["teacher_val_top1"]})
        print(f"{steps} steps on {n} images: validation top-1 {rows[-1]['val_top1']:.2f} % "
              f"(teacher {rows[0]['teacher_val_top1']:.2f} %), {rows[-1]['finetune_s']:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a lana run folder whose distill stage ran (e.g. RUN/resnet/seed0)")
    parser.add_argument("--share", type=float, default=0.4, help="table budget as a share of the teacher's profiled latency")
    parser.add_argument("--variants", default="125:4000,500:4000,500:0,1500:0,4000:0", help="STEPS:IMAGES,... (0 images = all)")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variants)
    except ValueError as exc:
        parser.error(f"--variants: {exc}")
    if not (args.run / "config.yaml").is_file() or not (args.run / "candidates.csv").is_file():
        parser.error(f"{args.run} is not a lana run folder whose distill stage ran (no config.yaml or candidates.csv)")
    rows = run(args.run, args.share, variants)
    print("\n| steps | training images | validation top-1 | fine-tune s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['steps']} | {r['images'] or '—'} | {r['val_top1']:.2f} % | {r['finetune_s']:.0f} |")
    print(f"\nteacher: {rows[0]['teacher_val_top1']:.2f} % on the same images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
