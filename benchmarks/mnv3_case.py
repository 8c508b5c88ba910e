"""Issue 24's MobileNetV3 case, as a new user would run it: ``lana.accelerate`` with defaults.

    .venv/bin/python -m benchmarks.mnv3_case --out /tmp/mnv3_digits     # torch's threads, a quiet machine

The issue's data, a 10-class 32x32 ImageFolder of 1 437 training and 360 validation images,
is scikit-learn's handwritten digits (1 797 images: an 80/20 split), which scikit-learn ships
(nothing is downloaded). This makes it again: a seeded class-balanced split (36 images of
each class for validation), each 8x8 image scaled to 0-255, upsampled to 32x32 (bilinear)
and repeated to 3 channels, written as PNG files to ``OUT/data/{train,val}/<class>/``
(stored class by class, as an ImageFolder is read). ``--source fashion`` draws the same
number of images from Fashion-MNIST's training split instead (28 -> 32; a harder task).
The teacher, timm ``mobilenetv3_large_100`` (10 classes, no pretrained weights), is trained
on it with the recipe in :data:`RECIPE` (kept in ``OUT/teacher.pt``, keyed by the recipe and
the data: a rerun reuses it). Then ``lana.accelerate(teacher, train, val, budget="50%")``
with every default (the whole zoo) in ``OUT/run`` (removed first unless ``--keep-run``), and
the figures: measured share of the teacher, accuracy change, wall time per stage and in all.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets, transforms

import lana
from lana.data.datasets import read_idx

TRAIN, VAL, CLASSES = 1437, 360, 10
RECIPE = {"epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.1,
          "schedule": "cosine", "optimizer": "AdamW",
          "augment": "random crop 32 pad 4; horizontal flips for fashion only (a flipped digit is no digit)", "seed": 0}
NORMALISE = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def source_images(source: str, fashion: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``TRAIN + VAL`` images (N, 1, 32, 32, 0-255) and labels, class-balanced: all of
    scikit-learn's digits (180 or 179 per class already), or a seeded draw from Fashion-MNIST."""
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).mul(255.0 / 16).unsqueeze(1)
        return images, torch.tensor(bunch.target, dtype=torch.long)
    images = torch.from_numpy(read_idx(fashion / "train-images-idx3-ubyte.gz").copy()).float().unsqueeze(1)
    labels = torch.from_numpy(read_idx(fashion / "train-labels-idx1-ubyte.gz").copy()).long()
    gen = torch.Generator().manual_seed(seed)
    per_class = [(TRAIN + VAL) // CLASSES + (c < (TRAIN + VAL) % CLASSES) for c in range(CLASSES)]  # 180 x7, 179 x3
    picked = torch.cat([(labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=gen)[: per_class[c]]]
                        for c in range(CLASSES)])
    return images[picked], labels[picked]


def make_imagefolder(source: str, fashion: Path, out: Path, seed: int = 0) -> Path:
    """The 1 797-image ImageFolder (see the module's docstring); made once per source."""
    root = out / "data"
    if (root / "done").is_file() and (root / "done").read_text().strip() == source:
        return root
    shutil.rmtree(root, ignore_errors=True)
    images, labels = source_images(source, fashion, seed)
    big = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    gen = torch.Generator().manual_seed(seed)
    for c in range(CLASSES):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        for i, index in enumerate(members.tolist()):
            split = "val" if i < VAL // CLASSES else "train"
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(big[index, 0].numpy()).convert("RGB").save(folder / f"{index}.png")
    (root / "done").write_text(f"{source}\n")
    return root


def train_teacher(train, val, out: Path, source: str) -> tuple[torch.nn.Module, dict]:
    """timm ``mobilenetv3_large_100`` trained with :data:`RECIPE` (or loaded from ``OUT/teacher.pt``)."""
    torch.manual_seed(RECIPE["seed"])
    model = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=CLASSES)
    key = hashlib.sha256(json.dumps({**RECIPE, "data": source}, sort_keys=True).encode()).hexdigest()[:12]
    cache = out / "teacher.pt"
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            model.load_state_dict(stored["state"])
            return model.eval(), stored["info"]
    tick = time.time()
    loader = torch.utils.data.DataLoader(train, batch_size=RECIPE["batch_size"], shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(RECIPE["seed"]))
    steps = RECIPE["epochs"] * len(loader)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, RECIPE["lr"], total_steps=steps, pct_start=0.1)
    for epoch in range(RECIPE["epochs"]):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 5 == 4 or epoch == RECIPE["epochs"] - 1:
            print(f"teacher epoch {epoch + 1}/{RECIPE['epochs']}: loss {loss.item():.3f}, val top-1 {accuracy(model, val):.2f} %",
                  flush=True)
    info = {"val_top1": accuracy(model, val), "train_seconds": time.time() - tick, "recipe": RECIPE}
    torch.save({"key": key, "state": model.state_dict(), "info": info}, cache)
    return model.eval(), info


@torch.no_grad()
def accuracy(model: torch.nn.Module, data) -> float:
    """Top-1 (percent) on a dataset."""
    model.eval()
    hits = 0
    for x, y in torch.utils.data.DataLoader(data, batch_size=200):
        hits += (model(x).argmax(1) == y).sum().item()
    return 100.0 * hits / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mnv3_case"))
    parser.add_argument("--source", choices=["digits", "fashion"], default="digits",
                        help="the images: scikit-learn's digits (the issue's data) or a draw from Fashion-MNIST")
    parser.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"), help="Fashion-MNIST's idx files")
    parser.add_argument("--keep-run", action="store_true", help="resume OUT/run instead of starting it afresh")
    parser.add_argument("--config", type=json.loads, default=None, help="config overrides as JSON (smoke tests only)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = make_imagefolder(args.source, args.fashion, args.out)
    flips = [transforms.RandomHorizontalFlip()] if args.source == "fashion" else []
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), *flips,
                                  transforms.ToTensor(), NORMALISE])
    plain = transforms.Compose([transforms.ToTensor(), NORMALISE])
    train_aug = datasets.ImageFolder(str(root / "train"), transform=augment)
    train, val = (datasets.ImageFolder(str(root / s), transform=plain) for s in ("train", "val"))
    print(f"data: {len(train)} train / {len(val)} val images, {len(train.classes)} classes, 32x32 RGB (from {args.source})")
    tick = time.time()
    teacher, info = train_teacher(train_aug, val, args.out, args.source)
    print(f"teacher: mobilenetv3_large_100, val top-1 {info['val_top1']:.2f} % (trained in {info['train_seconds']:.0f} s; "
          f"here {time.time() - tick:.0f} s)", flush=True)
    run_dir = args.out / "run"
    if run_dir.exists() and not args.keep_run:
        shutil.rmtree(run_dir)
    tick = time.time()
    result = lana.accelerate(teacher, train, val, budget="50%", run_dir=run_dir, config=args.config)
    total = time.time() - tick
    r = result.report
    summary = {"share_of_teacher": r["student_latency_ms"] / r["teacher_latency_ms"], "speedup": r.get("speedup"),
               "teacher_latency_ms": r["teacher_latency_ms"], "student_latency_ms": r["student_latency_ms"],
               "predicted_student_latency_ms": r.get("predicted_student_latency_ms"),
               "teacher_top1": r.get("teacher_top1"), "student_top1": r.get("student_top1"),
               "top1_change": None if r.get("teacher_top1") is None else r["student_top1"] - r["teacher_top1"],
               "teacher": {"val_top1": info["val_top1"], "train_seconds": round(info["train_seconds"], 1), "recipe": RECIPE},
               "data": args.source,
               "test_images": r.get("test_images"), "budget_met": r.get("budget_met"),
               "stage_seconds": r.get("stage_seconds"), "total_seconds": round(total, 1),
               "candidates": len(result.table), "threads": torch.get_num_threads()}
    timing = run_dir / "distill_timing.json"
    if timing.is_file():
        summary["distill_timing"] = json.loads(timing.read_text())  # distil / score / latency inside the first stage
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"student at {summary['share_of_teacher']:.2f}x the teacher's measured latency, top-1 change "
          f"{summary['top1_change']} points, lana.accelerate {total / 60:.1f} min")


if __name__ == "__main__":
    main()
