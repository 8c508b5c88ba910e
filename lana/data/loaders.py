"""The user's data as given: batches from a DataLoader or a Dataset, mapped to ``(images, labels)``.

A user's ``DataLoader`` is iterated as it is: its sampler, collate_fn, workers, transforms
and batch size are kept. A plain ``Dataset`` gets lana's loader (``data.batch_size``,
``data.num_workers``, a seeded shuffle where training asks for one, pinned memory on
CUDA). Every batch then goes through ``batch_fn(batch) -> (images, labels or None)``; the
default takes ``(images, labels, ...)``, images alone, or a dict in the Hugging Face
convention (``pixel_values`` and ``labels``). Labels may be torch, numpy or Python
integers; data without labels carries :data:`NO_LABEL` in their place.

Nothing here holds a split in memory: :func:`iterate` streams batches, and
:func:`take_tensors` stops at its ``limit``.
"""
from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from lana.data.datasets import NO_LABEL, DataSplits
from lana.errors import ConfigError, DataError

log = logging.getLogger("lana")
BatchFn = Callable[[Any], tuple]
IMAGE_KEYS = ("pixel_values", "images", "image", "input")
LABEL_KEYS = ("labels", "label", "targets", "target")


def default_batch_fn(batch) -> tuple:
    """``(images, labels or None)`` from ``(images, labels, ...)``, images alone, or a dict
    with ``pixel_values`` (or ``image(s)``/``input``) and ``labels`` (or ``label``/``target(s)``)."""
    if isinstance(batch, dict):
        image = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
        if image is None:
            raise DataError(f"a dict batch with keys {sorted(batch)} has none of {list(IMAGE_KEYS)}; "
                            "pass batch_fn=lambda b: (b['your_images'], b['your_labels'])")
        return image, next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if isinstance(batch, (tuple, list)):
        return (batch[0], batch[1] if len(batch) > 1 else None) if batch else (None, None)
    return batch, None


def describe(item) -> str:
    """A short description of what a batch or item is, for error messages."""
    if isinstance(item, torch.Tensor):
        return f"a {item.dtype} tensor of shape {tuple(item.shape)}"
    if isinstance(item, np.ndarray):
        return f"a numpy {item.dtype} array of shape {item.shape}"
    if isinstance(item, dict):
        return f"a dict of ({', '.join(f'{k}: {describe(v)}' for k, v in item.items())})"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of ({', '.join(describe(i) for i in item)})"
    return f"a {type(item).__name__}"


def as_labels(labels, count: int, name: str = "data") -> torch.Tensor:
    """Integer labels of any kind (torch, numpy, Python; None) as a long tensor of ``count``."""
    if labels is None:
        return torch.full((count,), NO_LABEL, dtype=torch.long)
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{name}: labels are {describe(labels)}; expected integers (torch, numpy or Python)") from None
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.reshape(-1).numel() != count:
        raise DataError(f"{name}: labels are {describe(labels)} for {count} images; expected {count} integer class indices")
    return labels.reshape(-1).long()


def to_pair(batch, batch_fn: BatchFn | None = None, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as ``(images (N, C, H, W) float, labels (N,) long)`` (``NO_LABEL`` without labels)."""
    mapped = (batch_fn or default_batch_fn)(batch)
    if not isinstance(mapped, (tuple, list)) or len(mapped) != 2:
        raise DataError(f"{name}: batch_fn returned {describe(mapped)}; expected (images, labels or None)")
    images, labels = mapped
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise DataError(f"{name} yields batches of {describe(batch)}; expected float images (N, C, H, W), (images, labels) "
                        "or a dict with pixel_values; convert images with e.g. torchvision's ToTensor(), or pass batch_fn=")
    return images, as_labels(labels, len(images), name)


def load_batch_fn(spec: str | BatchFn | None) -> BatchFn | None:
    """``batch_fn`` from a callable or a ``"pkg.module:function"`` string (``data.batch_fn``)."""
    if spec is None or callable(spec):
        return spec
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"data.batch_fn '{spec}' is not 'pkg.module:function'")
    try:
        fn = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"data.batch_fn '{spec}' cannot be imported ({exc}); check the module is on PYTHONPATH") from None
    if not callable(fn):
        raise ConfigError(f"data.batch_fn '{spec}' is a {type(fn).__name__}, not a function")
    return fn


def batch_fn_name(fn: BatchFn | None) -> str | None:
    """``"pkg.module:function"`` for an importable function (recorded in ``config.yaml``), else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if fn is None or not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """lana's loader for a plain Dataset: a seeded shuffle (same seed, same batches)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                      drop_last=False, pin_memory=pin_memory, persistent_workers=False)


def is_loader(data) -> bool:
    """True for a user's DataLoader (iterated as given)."""
    return isinstance(data, DataLoader)


def batches_per_epoch(data, batch_size: int) -> int:
    """Batches in one pass: ``len(loader)`` for a DataLoader, else ``ceil(len / batch_size)``."""
    if is_loader(data):
        try:
            return len(data)
        except TypeError:
            raise DataError("the train DataLoader has no length (an IterableDataset without __len__); "
                            "give its dataset a __len__ so lana can count steps") from None
    return math.ceil(len(data) / batch_size)


def epoch_steps(data, batch_size: int) -> float:
    """Steps in one pass, for step counts: ``len(loader)`` for a DataLoader, else ``len / batch_size``
    (unrounded, so ``epochs × this`` rounds once)."""
    return float(batches_per_epoch(data, batch_size)) if is_loader(data) else len(data) / batch_size


def num_images(data) -> int:
    """Images in a split (a DataLoader: what its sampler draws, else its dataset's length, else
    batches × batch size)."""
    if isinstance(data, Window):
        return data.count
    if is_loader(data):
        if data.batch_size is not None and not data.drop_last:
            try:
                return len(data.sampler)
            except TypeError:
                pass
        try:
            return min(len(data.dataset), len(data) * (data.batch_size or len(data.dataset)))
        except TypeError:
            return len(data) * (data.batch_size or 1)
    return len(data)


class Window:
    """Images ``start .. start + count`` of a split in its own order.

    A user's DataLoader cannot be indexed: it is read in order and the window sliced out
    (its images are disjoint from another window's only where the loader's order is fixed).
    A Dataset is indexed directly (:func:`window`).
    """

    def __init__(self, data, start: int, count: int) -> None:
        self.data, self.start, self.count = data, start, count

    def __len__(self) -> int:
        return self.count


def window(data, start: int, count: int):
    """Images ``start .. start + count`` of a split: a ``Subset`` of a Dataset, a :class:`Window` of a DataLoader."""
    if is_loader(data):
        return Window(data, start, count)
    return Subset(data, range(start, start + count))


def iterate(data, batch_size: int, *, batch_fn: BatchFn | None = None, shuffle: bool = False, seed: int = 0,
            num_workers: int = 0, pin_memory: bool = False, name: str = "data") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream ``(images, labels)`` batches of a split.

    Args:
        data: a user's DataLoader (iterated as given: ``batch_size``, ``shuffle``, ``seed``,
            ``num_workers`` and ``pin_memory`` do not apply) or a Dataset (lana's loader).
        batch_size, shuffle, seed, num_workers, pin_memory: lana's loader's settings.
        batch_fn: maps one batch to ``(images, labels or None)``.
        name: the split's name, for error messages.

    Yields:
        Images ``(N, C, H, W)`` and long labels ``(N,)`` (``NO_LABEL`` without labels).
    """
    if isinstance(data, Window):
        seen = 0
        for images, labels in iterate(data.data, batch_size, batch_fn=batch_fn, num_workers=num_workers, name=name):
            lo, hi = max(0, data.start - seen), min(len(images), data.start + data.count - seen)
            seen += len(images)
            if hi > lo:
                yield images[lo:hi], labels[lo:hi]
            if seen >= data.start + data.count:
                return
        return
    if isinstance(data, TensorDataset) and batch_fn is None and not shuffle:  # in memory: slices, no collation
        images, *rest = data.tensors
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            yield images[start:stop], as_labels(rest[0][start:stop] if rest else None, len(images[start:stop]), name)
        return
    loader = data if is_loader(data) else make_loader(data, batch_size, shuffle, seed, num_workers, pin_memory)
    for batch in loader:
        yield to_pair(batch, batch_fn, name)


def take_tensors(data, limit: int | None = None, batch_size: int = 512, batch_fn: BatchFn | None = None,
                 num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` images and labels of a split as two tensors (reads only what it keeps)."""
    if isinstance(data, TensorDataset) and batch_fn is None:
        x, *rest = data.tensors
        return x[:limit], as_labels(rest[0][:limit] if rest else None, len(x[:limit]))
    if limit is not None and not is_loader(data) and not isinstance(data, (IterableDataset, Window)):
        data = Subset(data, range(min(limit, len(data))))
    xs, ys, count = [], [], 0
    for x, y in iterate(data, batch_size, batch_fn=batch_fn, num_workers=num_workers):
        keep = len(x) if limit is None else min(len(x), limit - count)
        xs.append(x[:keep])
        ys.append(y[:keep])
        count += keep
        if limit is not None and count >= limit:
            break
    if not xs:
        raise DataError("a split yielded no images; pass non-empty data")
    return torch.cat(xs), torch.cat(ys)


# -- deterministic or not: may the teacher's logits be cached? --------------------------
TRANSFORM_ATTRS = ("transform", "transforms", "target_transform")


def _own_dataset(data) -> bool:
    while isinstance(data, Subset):
        data = data.dataset
    return isinstance(data, TensorDataset)


def deterministic_train(data, flag: bool | None) -> tuple[bool, str]:
    """Whether the train split gives the same images every epoch, and why (for the log).

    The rule: a DataLoader is iterated as given, so its order and crops are its own: never
    cached (the teacher runs beside the student). A Dataset: ``data.deterministic`` when
    set; else lana's own tensor datasets are, and a user's dataset is when it has no
    ``transform``/``transforms`` attribute (a transform may crop or flip at random).
    """
    if is_loader(data):
        return False, "the train DataLoader is iterated as given (its sampler and transforms may change every epoch)"
    if flag is not None:
        return flag, f"data.deterministic is {str(flag).lower()}"
    if _own_dataset(data):
        return True, "lana's own in-memory dataset"
    inner = data
    while isinstance(inner, Subset):
        inner = inner.dataset
    if any(getattr(inner, attr, None) is not None for attr in TRANSFORM_ATTRS):
        return False, f"{type(inner).__name__} has a transform (set data.deterministic: true if it draws nothing at random)"
    return True, f"{type(inner).__name__} has no transform"


# -- a user's own data (the Python API) ------------------------------------------------
def _first_pair(data, name: str, batch_fn: BatchFn | None) -> tuple[tuple[int, ...], bool]:
    """``(C, H, W)`` of the first batch and whether it carries labels."""
    if is_loader(data):
        source = data
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        if len(data) == 0:
            raise DataError(f"{name} is empty; pass at least one image")
        source = make_loader(Subset(data, [0]), 1, shuffle=False)
    elif isinstance(data, IterableDataset):
        raise DataError(f"{name} is an IterableDataset ({type(data).__name__}); pass it in a DataLoader "
                        "(lana iterates a DataLoader as given) or pass a map-style Dataset")
    else:
        raise DataError(f"{name} is a {type(data).__name__}; expected a torch Dataset or DataLoader of images or (images, labels)")
    try:
        batch = next(iter(source))
    except StopIteration:
        raise DataError(f"{name} yielded no batches; pass a non-empty DataLoader") from None
    except (TypeError, RuntimeError) as exc:  # default_collate refuses what it cannot stack
        raise DataError(f"{name}: its items cannot be batched ({str(exc).splitlines()[0]}); "
                        "yield tensors, (image, label) or dicts of them, or pass a DataLoader with its own collate_fn") from None
    images, labels = to_pair(batch, batch_fn, name)
    labelled = bool((labels != NO_LABEL).all())
    return tuple(images.shape[1:]), labelled


def user_splits(train, val, test=None, num_classes: int = 0, batch_fn: BatchFn | None = None,
                deterministic: bool | None = None, num_workers: int = 0) -> DataSplits:
    """A user's own data as lana's splits, kept as given.

    Args:
        train: Dataset or DataLoader; batches (after ``batch_fn``) of images ``(N, C, H, W)``
            with or without labels.
        val: the same, held out: swap-one scores are measured on it.
        test: the same, for the report's figures; None uses ``val``.
        num_classes: the teacher's output width.
        batch_fn: maps one batch to ``(images, labels or None)`` (dict batches and others).
        deterministic: whether ``train`` gives the same images every epoch (see
            :func:`deterministic_train`); None decides by the rule there.
        num_workers: lana's loader's workers for splits given as plain Datasets.

    Returns:
        The splits; ``labelled`` is False unless every split has labels (then scores are
        agreement with the teacher, and fine-tuning uses the teacher's logits alone).

    Raises:
        DataError: not a Dataset/DataLoader, empty, or batches of another form or shape.
    """
    test = val if test is None else test
    found = {name: _first_pair(data, name, batch_fn) for name, data in (("train", train), ("val", val), ("test", test))}
    shapes = {name: shape for name, (shape, _) in found.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the splits' images differ in shape ({shapes}); give every split the same (C, H, W)")
    channels, *size = shapes["train"]
    steady, _why = deterministic_train(train, deterministic)
    return DataSplits(train=train, val=val, test=test, num_classes=num_classes, channels=channels, image_size=tuple(size),
                      source="python", labelled=all(lab for _, lab in found.values()), batch_fn=batch_fn,
                      num_workers=num_workers, deterministic=steady)
