"""``lana demo``: the whole pipeline on the embedded default, from an untrained teacher.

It trains the teacher, then runs :func:`lana.api.run_pipeline`, the code path of
``lana.accelerate``.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and the small demo ResNet: train the
teacher, distil every candidate, solve for half the teacher's measured latency, fine-tune
the student, export it and report measured figures. Where Fashion-MNIST is missing the
demo says so and uses scikit-learn's small handwritten-digits set instead.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from rich.console import Console

from lana.config import LanaConfig, build_config
from lana.data import fashion_mnist_available, load_data
from lana.api import Run, run_pipeline
from lana.device import Placement
from lana.distill.train import fit, label_loss
from lana.run.folder import RunFolder, save_tensors, setup_logging
from lana.teacher.load import build_model

log = logging.getLogger("lana")

# The demo's candidate set: 14 ops (plus the teacher's own block), the families the demo's
# solver picked at 50 % (pruned copies, low-rank) and their cheapest rivals, so that the
# whole demo stays within 10 minutes on 2 CPU cores, install included. `lana distill`
# builds the whole zoo (about 100 per block) by default.
DEMO_OPS = [
    "identity", "conv_k1", "conv_k3", "mbconv_k3_e1", "mbconv_k3_e3", "fused_mbconv_k3_e1", "dwsep_k3",
    "resnet_basic_w25", "pruned_keep25", "pruned_keep40", "pruned_keep50", "pruned_keep75", "lowrank_r25", "lowrank_r50",
]
console = Console(stderr=True)


def demo_config(run: RunFolder, data_root: str | None, overrides: list[str] | None) -> LanaConfig:
    """The demo's config: code defaults, the data fallback, then the user's overrides."""
    tree: dict = {
        "name": "demo",
        "teacher": {"checkpoint": str(run.file("teacher.pt"))},
        "ops": {"include": DEMO_OPS},
        "distill": {"max_steps": 100},
        "score": {"val_images": 500},
        "teacher_training": {"epochs": 2.0},
        # 5 epochs, not 3: on one distilled demo folder the 500 choice images gave 89.4 % after
        # 3 epochs and 90.0 % after 5 (docs/benchmarks.md, the demo section)
        "finetune": {"epochs": 5.0},
        "latency": {"time_cap_s": 1.0, "context_rounds": 1},
    }
    root = data_root or "/usr/share/datasets/fashion-mnist"
    if fashion_mnist_available(root):
        tree["data"] = {"root": root}
    else:
        console.print(
            f"[yellow]lana: Fashion-MNIST not found under {root} (apt-get install dataset-fashion-mnist, or --data DIR); "
            "running on scikit-learn's handwritten digits instead[/yellow]"
        )
        tree["data"] = {"kind": "digits", "image_size": 28, "val_size": 300, "mean": [0.30], "std": [0.42]}
        tree["teacher_training"] = {"epochs": 15}
        tree["distill"] = {"epochs": 6, "max_steps": 100}
        tree["finetune"] = {"epochs": 8}
        tree["score"] = {"val_images": 300}
    return build_config(tree, overrides)


def train_teacher(config: LanaConfig, run: RunFolder) -> float:
    """Train the demo teacher from scratch and save its weights (skipped when saved).

    Returns:
        Seconds spent (0 when the saved teacher was reused).
    """
    path = Path(config.teacher.checkpoint)
    if path.is_file():
        log.info("demo: reusing the teacher it trained before (%s)", path)
        return 0.0
    # the one place lana starts from random weights: the demo trains its own teacher (any other
    # run needs teacher.checkpoint, and refuses to go on without one)
    log.info("demo: training its own teacher from random weights (%s, %g epochs), saved to %s",
             config.teacher.model, config.teacher_training.epochs, path)
    start = time.time()
    torch.manual_seed(config.seed)
    splits = load_data(config.data)
    model = build_model(config.teacher.model, config.teacher.kwargs)
    cfg = config.teacher_training
    place = Placement.for_config(config)  # the compute device, mixed precision on CUDA
    fit(model, splits, label_loss, cfg.epochs, cfg.lr, cfg.weight_decay, config.data.batch_size, config.seed, "teacher", place=place)
    save_tensors(path, {k: v.cpu() for k, v in model.state_dict().items()})
    return time.time() - start


def run_demo(run_dir: str | Path, data_root: str | None = None, budget: str | None = None, overrides: list[str] | None = None) -> dict:
    """Train the demo teacher, then run the pipeline ``lana.accelerate`` runs, and return the report.

    Args:
        run_dir: the run folder (stages already done there are reused).
        data_root: a folder with Fashion-MNIST idx files (default: Debian's location).
        budget: latency budget (default ``solve.budget``, 50 % of the teacher).
        overrides: ``key.path=value`` config overrides.

    Returns:
        The report written to ``RUN/report.json``.
    """
    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    setup_logging(run)
    config = demo_config(run, data_root, overrides)
    run.save_config(config)
    steps = iter(range(2, 6))
    console.rule("1/5 train the demo's own teacher from random weights")
    stages = {"train_teacher": round(train_teacher(config, run), 1)}
    return run_pipeline(Run(run, config), budget, lambda title: console.rule(f"{next(steps, 5)}/5 {title}"), stages)
