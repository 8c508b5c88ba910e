"""Converged teachers for the quality benchmark, trained once and cached by recipe hash.

A teacher is trained on the whole training split of Fashion-MNIST (55 000 images; 5 000
held out for validation, the 10 000 test images only reported) with one recorded recipe
(:data:`RECIPE`): SGD with Nesterov momentum, a linear warm-up then a cosine decay,
label smoothing, random crops from a padded image and horizontal flips. A teacher may
change keys of it (``"optimizer": "adamw"`` for the vision transformer, with its own lr,
weight decay, warm-up and epochs): another recipe, another hash. A recipe may also start
from another cached teacher's weights (``"init"``) and mix a third one's soft targets into
its loss (``"kd"``, Hinton's distillation, as DeiT is trained from a CNN): each is named by
its model, kwargs and whole recipe, so they are part of the hash, and trained first when
missing. With ``"ema"`` (a decay per step) each epoch's network is the exponential moving
average of the weights (``torch.optim.swa_utils.AveragedModel``, buffers averaged too), as
timm trains DeiT; the raw weights' validation top-1 is recorded beside it. The epoch whose
validation top-1 is best is the teacher; test top-1 is recorded per epoch, never used.

The cache lives outside the repository (``$LANA_TEACHER_CACHE``, default
``~/.cache/lana/quality-teachers/``), one folder per recipe hash (sha256 of the JSON of
recipe, model name and model kwargs; the data split seed is in the recipe):

- ``checkpoint.pt`` after every epoch (weights, optimiser, step, epoch, RNG, history, best
  weights so far), written atomically: a stopped run resumes after its last whole epoch;
- ``teacher.pt`` (the chosen epoch's state_dict) and ``teacher.json`` (recipe, per-epoch
  validation and test top-1, the chosen epoch, wall time) when the schedule is done.

A lock file keeps two processes from training the same teacher at once: the second waits,
then reuses what the first wrote.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lana.config import DataConfig
from lana.data import load_data, take_tensors
from lana.device import module_device
from lana.distill.inference import channels_last_trains_safely, fast_inference
from lana.run.folder import load_tensors, save_tensors, write_json
from lana.teacher.load import build_model

log = logging.getLogger("lana")

RECIPE: dict[str, Any] = {
    # the split: Fashion-MNIST's 60 000 training images, 5 000 held out (seeded), 10 000 test
    "data": {"kind": "fashion_mnist", "image_size": 28, "val_size": 5000, "seed": 0},
    "epochs": 15,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,  # not on norm weights and biases
    "warmup_epochs": 1,  # linear from lr/10, then cosine to 0 by the last step
    "label_smoothing": 0.1,
    "pad_crop": 2,  # random 28×28 crop of the image padded by 2 (background value)
    "hflip": True,
    "seed": 0,  # initialisation, shuffling and augmentation
    "choose": "best validation top-1 over epochs",
}
OPTIMIZERS = ("sgd", "adamw")  # recipe["optimizer"]; see _optimiser
# Keys a recipe may add (absent from RECIPE, so the hashes of the recipes without them stay):
# another cached teacher, each ``{"model", "kwargs", "recipe"}``, trained first when missing.
OPTIONAL = {
    "init": "start from that teacher's chosen weights (a second schedule: fine-tuning it)",
    "kd": "mix that teacher's soft targets into the loss (also 'alpha', its weight, and 'temperature'; "
          "'hard': true uses its top class instead, as DeiT's hard distillation)",
    "ema": "keep an exponential moving average of the weights (this decay per step): each epoch's network is the average",
}


def cache_root() -> Path:
    """``$LANA_TEACHER_CACHE``, else ``~/.cache/lana/quality-teachers``."""
    return Path(os.environ.get("LANA_TEACHER_CACHE") or Path.home() / ".cache" / "lana" / "quality-teachers").expanduser()


def merge_recipe(overrides: dict | None = None, base: dict | None = None) -> dict:
    """``base`` (default :data:`RECIPE`) with ``overrides`` applied; ``data`` is merged key by key,
    and an :data:`OPTIONAL` key given as None is removed."""
    recipe = copy.deepcopy(base or RECIPE)
    for key, value in (overrides or {}).items():
        if key == "data":
            recipe["data"] = {**recipe["data"], **value}
        elif key not in recipe and key not in OPTIONAL:
            raise KeyError(f"unknown recipe key '{key}'; known: {', '.join(sorted({*recipe, *OPTIONAL}))}")
        elif key in OPTIONAL and value is None:
            recipe.pop(key, None)  # an optional key set to null is left out: the recipe (and hash) without it
        elif key == "optimizer" and value not in OPTIMIZERS:
            raise ValueError(f"recipe optimizer '{value}' is not one of {', '.join(OPTIMIZERS)}")
        else:
            recipe[key] = value
    return recipe


def recipe_hash(model: str, kwargs: dict, recipe: dict) -> str:
    """sha256 of the JSON of recipe, model name and kwargs: the teacher's identity in the cache."""
    text = json.dumps({"model": model, "kwargs": kwargs, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def teacher_dir(model: str, kwargs: dict, recipe: dict, root: Path | None = None) -> Path:
    """The cache folder of one teacher (first 16 hex digits of its hash)."""
    return (root or cache_root()) / recipe_hash(model, kwargs, recipe)[:16]


def data_config(recipe: dict, data_root: str | None = None) -> DataConfig:
    """The recipe's split as lana's ``data`` settings (``root`` is where, not what: not hashed)."""
    return DataConfig(**recipe["data"], **({"root": data_root} if data_root else {}))


def cached(model: str, kwargs: dict, recipe: dict, root: Path | None = None) -> dict | None:
    """The finished teacher's record (``teacher.json`` plus ``weights``), or None when it is not done."""
    folder = teacher_dir(model, kwargs, recipe, root)
    if (folder / "teacher.json").is_file() and (folder / "teacher.pt").is_file():
        info = json.loads((folder / "teacher.json").read_text())
        return {**info, "weights": str(folder / "teacher.pt"), "trained_now": 0}
    return None


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """Random crops of ``x`` padded by ``pad`` (with ``fill``, the normalised black) and random flips."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        x = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def _hits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode."""
    model.eval()
    with torch.no_grad(), fast_inference([model], module_device(model)) as fast:  # the same figures, faster kernels
        right = sum(fast.run(_hits, model, x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch))
    return 100.0 * right / max(1, len(x))


def _optimiser(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """The recipe's optimiser; no weight decay on norm weights, biases and what the model names.

    ``sgd``: SGD with the recipe's ``momentum`` and ``nesterov``. ``adamw``: AdamW with
    torch's default betas (0.9, 0.999) and eps; ``momentum``/``nesterov`` are not used.
    A model's ``no_weight_decay()`` (timm ViTs: position embedding, class token) adds to
    the undecayed set; the CNN teachers have none, so their training is unchanged.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim > 1 and n not in skip]
    rest = [p for n, p in named if p.ndim <= 1 or n in skip]
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    kind = recipe["optimizer"]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["nesterov"])
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=recipe["lr"])
    raise ValueError(f"recipe optimizer '{kind}' is not one of {', '.join(OPTIMIZERS)}")


def soft_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: KL(teacher ‖ student) at ``temperature``, times its square."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(targets / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def _other(spec: dict, root: Path, data_root: str | None, label: str) -> dict:
    """The record of the teacher ``spec`` names (``recipe["init"]`` or ``["kd"]``), trained first when missing."""
    return prepare_teacher(spec["model"], spec["kwargs"], spec["recipe"], root=root, data_root=data_root, label=label)


def _load(spec: dict, info: dict) -> nn.Module:
    """``spec``'s network with the chosen weights of its record ``info``."""
    model = build_model(spec["model"], spec["kwargs"])
    model.load_state_dict(load_tensors(Path(info["weights"])))
    return model


def _lr(recipe: dict, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return recipe["lr"] * (0.1 + 0.9 * step / warmup)
    return 0.5 * recipe["lr"] * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def prepare_teacher(model: str, kwargs: dict, recipe: dict | None = None, root: Path | None = None,
                    data_root: str | None = None, stop_after: int | None = None, label: str = "") -> dict | None:
    """The cached teacher, trained (or resumed) first when it is not finished.

    Args:
        model, kwargs: the architecture, as lana's ``teacher.model`` / ``teacher.kwargs``.
        recipe: the training recipe (default :data:`RECIPE`); its hash names the cache folder.
        root: the cache (default :func:`cache_root`).
        data_root: the Fashion-MNIST folder (default lana's).
        stop_after: stop once this many epochs are done in all (a deliberate stop: returns None).
        label: a short name for the log lines.

    Returns:
        The teacher's record (``teacher.json``: recipe, hash, history, chosen epoch, val and test
        top-1, wall) plus ``weights`` (the path of ``teacher.pt``) and ``trained_now`` (epochs
        trained by this call), or None after a ``stop_after`` stop.
    """
    recipe = merge_recipe(None, recipe)
    folder = teacher_dir(model, kwargs, recipe, root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process training it: wait, then reuse its result
        done = cached(model, kwargs, recipe, root)
        if done is not None:
            return done
        return _train(model, kwargs, recipe, folder, data_root, stop_after, label or model)


def _train(model_name: str, kwargs: dict, recipe: dict, folder: Path, data_root: str | None, stop_after: int | None,
           label: str) -> dict | None:
    digest = recipe_hash(model_name, kwargs, recipe)
    cfg = data_config(recipe, data_root)
    splits = load_data(cfg)
    x_train, y_train = take_tensors(splits.train)
    x_val, y_val = take_tensors(splits.val)
    x_test, y_test = take_tensors(splits.test)
    fill = (-torch.tensor(cfg.mean) / torch.tensor(cfg.std)).view(1, -1, 1, 1)
    torch.manual_seed(recipe["seed"])
    model = build_model(model_name, kwargs)
    path = folder / "checkpoint.pt"
    for role in ("init", "kd"):
        if recipe.get(role) and merge_recipe(None, recipe[role]["recipe"])["data"] != recipe["data"]:
            raise ValueError(f"{label}: the '{role}' teacher's recipe has another data split; it must be this one's")
    before_s = 0.0  # the init teacher's training: part of this teacher's
    if recipe.get("init"):
        start = _other(recipe["init"], folder.parent, data_root, f"{label} init")
        before_s = start["wall_s"]
        if not path.is_file():  # a resumed run has its own weights in the checkpoint
            model.load_state_dict(load_tensors(Path(start["weights"])))
    kd = recipe.get("kd")
    kd_model = _load(kd, _other(kd, folder.parent, data_root, f"{label} kd")).eval().requires_grad_(False) if kd else None
    optimiser = _optimiser(model, recipe)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe["ema"]), use_buffers=True)
           if recipe.get("ema") else None)
    bs = recipe["batch_size"]
    per_epoch = len(x_train) // bs  # the last partial batch is dropped (BatchNorm needs > 1 image)
    total, warmup = per_epoch * recipe["epochs"], per_epoch * recipe["warmup_epochs"]
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_epoch": 0, "best_val": -1.0, "wall_s": 0.0}
    best_weights = None
    if path.is_file():
        saved = load_tensors(path)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"])
        best_weights = saved["best_model"]
        state = saved["state"]
        log.info("[%s] resuming %s after epoch %d of %d", label, digest[:16], state["epoch"], recipe["epochs"])
    log.info("[%s] %s: %d train / %d val / %d test images, %d steps per epoch, recipe %s", label, digest[:16],
             len(x_train), len(x_val), len(x_test), per_epoch, digest[:16])
    # on a CPU, channels_last weights and batches train a step 1.05-1.23x faster (one thread, batch 128;
    # ``python -m benchmarks.eval_rate --train``, docs/benchmarks.md); the same sums in another order.
    # Not where oneDNN issue #6035 gives wrong weight gradients.
    layout = torch.channels_last if channels_last_trains_safely(model) else torch.contiguous_format
    for net in (model, ema, kd_model):
        if net is not None:
            net.to(memory_format=layout)
    start_epoch = state["epoch"]
    while state["epoch"] < recipe["epochs"]:
        if stop_after is not None and state["epoch"] >= stop_after:
            return None
        epoch, tick = state["epoch"], time.time()
        gen = torch.Generator().manual_seed(recipe["seed"] * 100_003 + epoch)  # the same batches on resume
        order = torch.randperm(len(x_train), generator=gen)
        model.train()
        losses = []
        for i in range(per_epoch):
            step = epoch * per_epoch + i
            for group in optimiser.param_groups:
                group["lr"] = _lr(recipe, step, total, warmup)
            idx = order[i * bs:(i + 1) * bs]
            images = augment(x_train[idx], gen, recipe["pad_crop"], recipe["hflip"], fill).contiguous(memory_format=layout)
            logits = model(images)
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=recipe["label_smoothing"])
            if kd_model is not None:
                with torch.no_grad():
                    targets = kd_model(images)
                if kd.get("hard"):  # DeiT's hard distillation: the teacher's top class as a second label
                    taught = F.cross_entropy(logits, targets.argmax(1))
                else:
                    taught = soft_loss(logits, targets, kd["temperature"])
                loss = (1 - kd["alpha"]) * loss + kd["alpha"] * taught
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{label}: loss became {loss.item()} at step {step}; lower the recipe's lr")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
        train_s = time.time() - tick
        kept = model if ema is None else ema.module  # the epoch's network
        val, test = top1(kept, x_val, y_val), top1(kept, x_test, y_test)
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_top1": val, "test_top1": test}
        if ema is not None:
            record["raw_val_top1"] = top1(model, x_val, y_val)
        seconds = time.time() - tick
        state["epoch"] = epoch + 1
        state["wall_s"] += seconds
        state["history"].append({**record, "train_s": train_s, "seconds": seconds})
        if val > state["best_val"]:
            state["best_val"], state["best_epoch"] = val, epoch + 1
            best_weights = copy.deepcopy(kept.state_dict())
        save_tensors(path, {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "rng": torch.get_rng_state(),
                            "best_model": best_weights, "state": state, **({"ema": ema.state_dict()} if ema is not None else {})})
        raw = f" (raw weights {record['raw_val_top1']:.2f} %)" if ema is not None else ""
        log.info("[%s] epoch %d/%d: loss %.4f, val %.2f %%%s, test %.2f %%, %.0f s (train %.0f s)", label, epoch + 1,
                 recipe["epochs"], sum(losses) / len(losses), val, raw, test, seconds, train_s)
    chosen = state["history"][state["best_epoch"] - 1]
    info = {"model": model_name, "kwargs": kwargs, "recipe": recipe, "hash": digest, "epochs": recipe["epochs"],
            "chosen_epoch": state["best_epoch"], "val_top1": chosen["val_top1"], "test_top1": chosen["test_top1"],
            "wall_s": state["wall_s"] + before_s, "own_wall_s": state["wall_s"], "threads": torch.get_num_threads(),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)", "history": state["history"]}
    save_tensors(folder / "teacher.pt", best_weights)
    write_json(folder / "teacher.json", info)
    path.unlink(missing_ok=True)  # the finished teacher is teacher.pt; the resume state is no longer needed
    return {**info, "weights": str(folder / "teacher.pt"), "trained_now": recipe["epochs"] - start_epoch}


def teachers_table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table: teacher, recipe hash, epochs (chosen / run), val and test top-1, wall."""
    out = ["| teacher | model | recipe hash | epochs (chosen / run) | val top-1 | test top-1 | wall (min) | s / epoch |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, info in rows:
        per = info.get("own_wall_s", info["wall_s"]) / max(1, len(info["history"]))
        out.append(f"| {key} | {info['model']} | {info['hash'][:16]} | {info['chosen_epoch']} / {info['epochs']} | "
                   f"{info['val_top1']:.2f} % | {info['test_top1']:.2f} % | {info['wall_s'] / 60:.1f} | {per:.0f} |")
    return "\n".join(out)
