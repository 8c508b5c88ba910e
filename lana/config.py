"""Run configuration: defaults owned by code, YAML only overrides, unknown keys rejected.

Precedence is command line > config file > defaults (black / hf CLI style). The resolved
config is written into the run folder as ``config.yaml`` so a run can be repeated exactly.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lana.errors import ConfigError
from lana.names import DEFAULT_SOLVER


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# teacher.checkpoint: random — an untrained teacher on purpose (tests, timing studies); a file
# named "random" is written ./random
RANDOM_CHECKPOINT = "random"


class TeacherConfig(_Section):
    """Which network to accelerate."""

    model: str = "lana.teacher.demo_net:demo_resnet"
    checkpoint: str | None = None  # the trained weights; required (or `random`, see RANDOM_CHECKPOINT)
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"num_classes": 10, "in_chans": 1})
    blocks: list[str] | None = None  # module names; None = discover automatically


class DataConfig(_Section):
    """Where images come from and how they are prepared."""

    kind: Literal["fashion_mnist", "imagefolder", "digits", "synthetic", "python"] = "fashion_mnist"  # python: passed to lana.accelerate
    root: str = "/usr/share/datasets/fashion-mnist"
    image_size: int | None = None  # resize to this square size; None keeps the native size
    channels: int = 1
    mean: list[float] = Field(default_factory=lambda: [0.2860])
    std: list[float] = Field(default_factory=lambda: [0.3530])
    val_size: int = 5000  # held out from train for scoring candidates
    train_limit: int | None = None  # use only the first N training images (after the val split)
    test_limit: int | None = None
    batch_size: int = Field(128, ge=1)
    num_workers: int = 0  # lana's loader's workers, every stage (a DataLoader passed from Python keeps its own)
    seed: int = 0
    batch_fn: str | None = None  # "pkg.module:function" mapping one batch to (images, labels or None), e.g. dict batches
    deterministic: bool | None = None  # train images the same every epoch (teacher logits cached); None = decide (docs/api.md)


class OpsConfig(_Section):
    """Which op-zoo candidates to build for each block."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)  # user modules that register ops


class TeacherTrainingConfig(_Section):
    """Training the demo teacher from scratch (``lana demo`` / ``lana train-teacher``)."""

    epochs: float = 2.0
    lr: float = 4e-3
    weight_decay: float = 5e-4


class DistillConfig(_Section):
    """Layer-wise feature-map distillation of all candidates."""

    epochs: float = 1.0
    max_steps: int | None = Field(None, ge=1)
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int | None = Field(None, ge=1)  # None = data.batch_size (the global batch, split over torchrun's ranks)
    checkpoint_every: int = Field(50, ge=1)  # steps between resumable checkpoints
    max_memory: str | int = "auto"  # per device, e.g. 8GB; auto = held + half the free memory (85 % on a GPU); none = one group
    feature_cache: str | int = "auto"  # teacher features kept for blocks split over groups, e.g. 2GB; none = recompute
    device: str | None = None  # None = the top-level `device`; set, it wins for distillation alone
    # successive halving: after halving_warmup of the steps (and each time the steps double),
    # candidates another of their block beats on distillation loss and MACs stop training
    halving: bool = False
    halving_warmup: float = Field(0.25, gt=0, lt=1)


class ScoreConfig(_Section):
    """Swap-one scoring on the held-out split."""

    val_images: int = Field(2000, ge=1)  # most images scored on (and most images choices are made on)
    # kl: -KL(teacher outputs || swapped network's), 0 for keep-teacher and never above it;
    # loss: -change of validation loss; accuracy: change of top-1 (both can rise above 0 by noise)
    metric: Literal["kl", "loss", "accuracy"] = "kl"
    # share of the validation split never scored on: later choices (the top-k selections
    # compared, the fine-tuning figures) are made on it
    holdout: float = Field(0.5, gt=0, lt=1)
    batch_size: int = Field(500, ge=1)


class LatencyConfig(_Section):
    """How latency is measured: the figures the solver trusts."""

    device: str = "cpu"
    batch_size: int = Field(64, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # where the model will be served: candidates, the budget and the report are all timed there
    runtime: Literal["eager", "torchscript", "inductor", "aoti", "onnxruntime", "openvino", "tensorrt"] = "eager"
    channels_last: bool = False
    cuda_graphs: bool = False  # replay CUDA graphs (GPU, eager/torchscript only)
    threads: int | None = None  # CPU threads; None = torch's default (the count used is recorded)
    # CPU clock: wall (perf_counter) or process (CPU time: with threads 1, immune to other jobs)
    clock: Literal["wall", "process"] = "wall"
    steady_malloc: bool = True  # CPU: pin glibc's malloc thresholds (no page faults after warm-up)
    warmup: int = 5  # fewest warm-up calls; more while timings still drift
    repeats: int = 25  # fewest timed calls; more until the median's CI is tight
    max_repeats: int | None = None  # most timed calls (None = 8 x repeats)
    ci: float = 0.02  # target half-width of the median's 95 % CI, relative to the median
    time_cap_s: float = 3.0  # wall-clock cap per timed module
    # context: each candidate timed inside the whole network (what the sum needs); isolated: alone
    method: Literal["context", "isolated"] = "context"
    context_rounds: int = Field(2, ge=1)  # in-context: networks each candidate is timed in (random neighbours)
    # in-context: timed calls per cover network (after warm-up; whole rounds of 3, at least two);
    # None = as a whole network (repeats, ci, time_cap_s). Every call clocks every block, and a
    # candidate's figure is the median over its networks (benchmarks/latency_error.py)
    context_repeats: int | None = Field(9, ge=6)
    # in-context: more calls while a cover network's timed calls took less than this (seconds)
    context_min_s: float = Field(0.3, ge=0)
    # a group of interleaved networks whose two halves disagree by more than retake_noise (relative)
    # was timed while the machine moved: it is timed again, up to `retakes` times, the calmest take kept
    retake_noise: float = Field(0.04, gt=0)
    retakes: int = Field(0, ge=0)  # off by default: one run with 2 doubled profiling time and did not lower the error


class SolveConfig(_Section):
    """Default budget and solver for ``lana solve``."""

    budget: str = "50%"
    solver: str = DEFAULT_SOLVER
    # the solver's k best selections are assembled and compared on held-out images (the
    # validation images no score came from); the best is kept (lana.accelerate, demo, Run.solve).
    # 10, not 3: where budgets are tight the additive score ranks badly (ResNet-18-D at 0.33×: the
    # solver's first three measured KL 2.0-2.4 assembled, its seventh 1.22; docs/benchmarks.md)
    top_k: int = Field(10, ge=1)


class FinetuneConfig(_Section):
    """End-to-end distillation of the assembled student."""

    epochs: float = 1.0
    min_steps: int = Field(200, ge=0)  # at least this many steps (more epochs on a small train split)
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the KL term; (1 - alpha) weights the label loss
    checkpoint_every_s: float = Field(300.0, ge=0)  # resumable state (RUN/finetune_state.pt) at most this often, and on Ctrl-C


class ExportConfig(_Section):
    """Export formats, their reload check against eager, and their timing."""

    formats: list[str] = Field(default_factory=lambda: ["torchscript", "pt2"])  # or ["all"]; see lana.export.verify.FORMATS
    atol: float = 1e-3
    check_images: int = 256


class LanaConfig(_Section):
    """The whole run configuration (one tree, each section owning its defaults)."""

    name: str = "run"
    seed: int = 0
    # the compute device: distillation, scoring, fine-tuning, evaluation (latency.device is the target)
    device: str = "auto"  # auto = this rank's GPU if any, else cpu
    amp: bool = True  # on CUDA: mixed precision for training (bf16 where supported, else fp16 with loss scaling)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    teacher_training: TeacherTrainingConfig = Field(default_factory=TeacherTrainingConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    solve: SolveConfig = Field(default_factory=SolveConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}'; check the spelling against `lana config` (it prints every key)"
    return f"'{where}': {err['msg']} (got {err.get('input')!r})"


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> LanaConfig:
    """Validate a config tree, applying ``key.path=value`` overrides on top.

    Args:
        data: the parsed YAML tree (or None for all defaults).
        overrides: command-line overrides such as ``["distill.epochs=0.5"]``; values are YAML.

    Returns:
        The validated config.
    """
    tree: dict[str, Any] = dict(data or {})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not KEY=VALUE; write e.g. --set distill.epochs=0.5")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({str(exc).splitlines()[0]}); "
                              "quote it, e.g. --set 'name=\"a[1\"'") from None
    try:
        return LanaConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_first_error(exc)}") from None


def map_paths(tree: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """Apply ``change`` to every file-system path of a (possibly partial) config tree.

    Args:
        tree: a config tree as YAML or ``LanaConfig.model_dump(mode="json")`` gives it (not modified).
        change: maps one path to another.

    Returns:
        A copy whose ``teacher.checkpoint`` (unless ``random``), ``data.root`` and the ``.py`` entries of
        ``ops.modules`` went through ``change`` (module names and the rest are kept).
    """
    tree = copy.deepcopy(tree)
    teacher, data, ops = (tree[k] if isinstance(tree.get(k), dict) else {} for k in ("teacher", "data", "ops"))
    if isinstance(teacher.get("checkpoint"), str) and teacher["checkpoint"] != RANDOM_CHECKPOINT:
        teacher["checkpoint"] = change(teacher["checkpoint"])
    if isinstance(data.get("root"), str):
        data["root"] = change(data["root"])
    if isinstance(ops.get("modules"), list):
        ops["modules"] = [change(m) if isinstance(m, str) and m.endswith(".py") else m for m in ops["modules"]]
    return tree


def _found_beside(folder: Path) -> Callable[[str], str]:
    """A relative path names a file next to the config if one is there, else in the working
    directory (as before): a run folder's ``config.yaml`` finds its ``teacher.pt`` wherever
    the folder is and whichever directory lana runs in."""

    def find(value: str) -> str:
        beside = folder / value
        return os.path.abspath(beside) if not Path(value).is_absolute() and beside.exists() else value

    return find


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> LanaConfig:
    """Read a YAML config file (or none) and return the validated config.

    Args:
        path: YAML file; None means defaults only. Its relative paths (checkpoint, data
            root, ``.py`` op modules) are looked up next to the file first, then in the
            working directory.
        overrides: ``key.path=value`` strings applied after the file (relative to the
            working directory, as on any command line).

    Returns:
        The validated config.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, found {type(data).__name__}")
        data = map_paths(data, _found_beside(path.parent))
    return build_config(data, overrides)


def dump_config(config: LanaConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
