"""lana's own datasets: Fashion-MNIST idx files, ImageFolder trees, scikit-learn digits, synthetic.

Small datasets are held in memory as normalised tensors (fast on a CPU); ImageFolder trees
are read lazily with the usual torchvision transforms (deterministic: resize and centre
crop). Every kind yields the same three splits: ``train`` (for distillation and
fine-tuning), ``val`` (held out from train, for scoring candidates) and ``test`` (for the
accuracy that reports quote). A user's own ``Dataset``/``DataLoader`` (the Python API)
becomes the same :class:`DataSplits` through :func:`lana.data.loaders.user_splits`.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lana.config import DataConfig
from lana.errors import DataError

NO_LABEL = -1  # the label of an image that came without one
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class DataSplits:
    """Train/val/test data plus their shape and how their batches are read.

    Each split is a ``Dataset`` (read through lana's loader, ``data.batch_size`` and
    ``data.num_workers``) or a user's ``DataLoader`` (iterated as given: its sampler,
    collate_fn, workers and batch size). ``batch_fn`` maps one batch to
    ``(images, labels or None)``; see :mod:`lana.data.loaders`.
    """

    train: Dataset | DataLoader
    val: Dataset | DataLoader
    test: Dataset | DataLoader
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    source: str
    labelled: bool = True  # False: labels are NO_LABEL; scores and fine-tuning follow the teacher's outputs
    batch_fn: Callable[[Any], tuple] | None = None  # None: (images, labels), images alone, or a dict (pixel_values/labels)
    num_workers: int = 0  # lana's loader's worker processes (a user's DataLoader keeps its own)
    deterministic: bool = True  # the train split gives the same images every epoch (the teacher's logits may be cached)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, *self.image_size)


def fashion_mnist_available(root: str | Path) -> bool:
    """True when the Fashion-MNIST idx files (plain or .gz) are under ``root``."""
    return all(_find_idx(Path(root), name) is not None for pair in FASHION_FILES.values() for name in pair)


def _find_idx(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (the MNIST container format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
            raise ValueError("bad magic number")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable idx file ({exc}); re-install or re-download it") from None


def _fashion_mnist(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    root = Path(cfg.root)
    arrays = []
    for split, names in FASHION_FILES.items():
        for name in names:
            path = _find_idx(root, name)
            if path is None:
                raise DataError(
                    f"Fashion-MNIST file {name}[.gz] not found under {root}; install Debian's "
                    "dataset-fashion-mnist or point data.root (--data) at the idx files"
                )
            arrays.append(read_idx(path))
    x_train, y_train, x_test, y_test = (torch.from_numpy(a.copy()) for a in arrays)
    if x_train.ndim != 3 or len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"Fashion-MNIST files under {root} have unexpected shapes {tuple(x_train.shape)}; expected N×28×28")
    return x_train.float().div(255).unsqueeze(1), y_train.long(), x_test.float().div(255).unsqueeze(1), y_test.long()


def _digits(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div(16).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = len(x) // 4
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _synthetic(cfg: DataConfig, n_train: int = 600, n_test: int = 200, classes: int = 10):
    """Class templates plus noise: learnable, seeded, any channels and size."""
    size = cfg.image_size or 16
    gen = torch.Generator().manual_seed(cfg.seed)
    templates = torch.rand(classes, cfg.channels, size, size, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, classes, (n,), generator=gen)
        images = templates[labels] + 0.35 * torch.randn(n, cfg.channels, size, size, generator=gen)
        return images.clamp(0, 1), labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def _to_tensor_splits(cfg: DataConfig, arrays, source: str) -> DataSplits:
    x_train, y_train, x_test, y_test = arrays
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"dataset '{source}' is empty; check data.root")
    if x_train.shape[1] != cfg.channels:
        if cfg.channels == 3 and x_train.shape[1] == 1:
            x_train, x_test = x_train.expand(-1, 3, -1, -1), x_test.expand(-1, 3, -1, -1)
        else:
            raise DataError(f"dataset '{source}' has {x_train.shape[1]} channels but data.channels is {cfg.channels}")
    if cfg.image_size and x_train.shape[-1] != cfg.image_size:
        size = (cfg.image_size, cfg.image_size)
        x_train = F.interpolate(x_train, size=size, mode="bilinear", align_corners=False)
        x_test = F.interpolate(x_test, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1)
    if mean.numel() not in (1, cfg.channels) or std.numel() not in (1, cfg.channels):
        raise DataError(f"data.mean/std need 1 or {cfg.channels} values, got {len(cfg.mean)}/{len(cfg.std)}")
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    if cfg.val_size >= len(x_train):
        raise DataError(f"data.val_size={cfg.val_size} leaves no training images (the train split has {len(x_train)})")
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, train_idx = order[: cfg.val_size], order[cfg.val_size :]
    if cfg.train_limit:
        train_idx = train_idx[: cfg.train_limit]
    test_n = min(len(x_test), cfg.test_limit or len(x_test))
    num_classes = int(max(y_train.max(), y_test.max()).item()) + 1
    return DataSplits(
        train=TensorDataset(x_train[train_idx].contiguous(), y_train[train_idx]),
        val=TensorDataset(x_train[val_idx].contiguous(), y_train[val_idx]),
        test=TensorDataset(x_test[:test_n].contiguous(), y_test[:test_n]),
        num_classes=num_classes,
        channels=cfg.channels,
        image_size=tuple(x_train.shape[-2:]),
        source=source,
    )


def _image_folder(cfg: DataConfig) -> DataSplits:
    from torchvision import datasets, transforms

    root = Path(cfg.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"ImageFolder layout needs {root / split}/<class>/<image>; not found")
    steps: list = []
    if cfg.channels == 1:
        steps.append(transforms.Grayscale(1))
    if cfg.image_size:
        steps += [transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    tfm = transforms.Compose(steps)
    try:
        train_full = datasets.ImageFolder(str(root / "train"), transform=tfm)
        test = datasets.ImageFolder(str(root / "val"), transform=tfm)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"ImageFolder at {root}: {exc}") from None
    if cfg.val_size >= len(train_full):
        raise DataError(f"data.val_size={cfg.val_size} leaves no training images ({root / 'train'} has {len(train_full)})")
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    train_idx = order[cfg.val_size :][: cfg.train_limit or None]
    test_n = min(len(test), cfg.test_limit or len(test))
    size = cfg.image_size or tuple(train_full[0][0].shape[-2:])
    size = (size, size) if isinstance(size, int) else size
    return DataSplits(
        train=Subset(train_full, train_idx),
        val=Subset(train_full, order[: cfg.val_size]),
        test=Subset(test, list(range(test_n))),
        num_classes=len(train_full.classes),
        channels=cfg.channels,
        image_size=size,
        source=f"imagefolder:{root}",
    )


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the configured dataset as train/val/test splits.

    Args:
        cfg: the ``data`` section of the config.

    Returns:
        The splits with their image shape and class count.
    """
    if cfg.kind == "python":
        raise DataError("this run's data were passed from Python (data.kind: python); "
                        "pass them again: lana.open_run(RUN, teacher=..., train=..., val=...)")
    if cfg.kind == "imagefolder":
        splits = _image_folder(cfg)
    elif cfg.kind == "fashion_mnist":
        splits = _to_tensor_splits(cfg, _fashion_mnist(cfg), f"fashion_mnist:{cfg.root}")
    elif cfg.kind == "digits":
        splits = _to_tensor_splits(cfg, _digits(cfg), "sklearn digits")
    else:
        splits = _to_tensor_splits(cfg, _synthetic(cfg), "synthetic")
    splits.num_workers = cfg.num_workers
    return splits
