"""Data: lana's own datasets (:mod:`lana.data.datasets`) and the user's data as given
(:mod:`lana.data.loaders`). The names below are the package's public surface."""
from lana.data.datasets import (
    FASHION_FILES,
    NO_LABEL,
    DataSplits,
    fashion_mnist_available,
    load_data,
    read_idx,
)
from lana.data.loaders import (
    BatchFn,
    as_labels,
    batch_fn_name,
    batches_per_epoch,
    default_batch_fn,
    deterministic_train,
    epoch_steps,
    is_loader,
    iterate,
    load_batch_fn,
    make_loader,
    num_images,
    take_tensors,
    to_pair,
    user_splits,
    window,
)

__all__ = [
    "FASHION_FILES", "NO_LABEL", "BatchFn", "DataSplits", "as_labels", "batch_fn_name", "batches_per_epoch",
    "default_batch_fn", "deterministic_train", "epoch_steps", "fashion_mnist_available", "is_loader", "iterate", "load_batch_fn",
    "load_data", "make_loader", "num_images", "read_idx", "take_tensors", "to_pair", "user_splits", "window",
]
