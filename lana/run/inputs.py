"""What the Python API checks and fills in before a run is set up: the user's ``config=`` tree,
the run folder's path, the teacher's classes and the labels against them. One-line errors."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lana.data import DataSplits, take_tensors
from lana.device import Placement, module_device
from lana.errors import ConfigError, DataError, RunFolderError
from lana.run.folder import RunFolder
from lana.teacher.outputs import classes_of


def merge_defaults(tree: dict, key: str, values: dict) -> None:
    """Set ``values`` in section ``key`` unless the user's config already set them."""
    section = tree.setdefault(key, {})
    for name, value in values.items():
        section.setdefault(name, value)


def config_tree(config: Any) -> dict:
    """A copy of the user's ``config=``: a dict of sections, each a dict (one-line error otherwise)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"config is a {type(config).__name__}; pass the YAML's keys as a dict, e.g. {{'distill': {{'epochs': 1}}}}")
    for key in ("teacher", "data", "latency"):  # the sections lana fills in here; build_config checks the rest
        if key in config and not isinstance(config[key], dict):
            raise ConfigError(f"config['{key}'] is a {type(config[key]).__name__}; it is a section: a dict of its keys "
                              f"(`lana config` lists them)")
    return copy.deepcopy(config)


def folder_at(run_dir: Any, what: str = "run_dir") -> RunFolder:
    """The run folder at ``run_dir`` (a path; an existing file or an empty string is refused)."""
    if not isinstance(run_dir, (str, Path)) or str(run_dir).strip() == "":
        raise ConfigError(f"{what} is {run_dir!r}; pass a folder path (str or pathlib.Path)")
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise RunFolderError(f"{what} {run_dir} is a file, not a folder; pass a folder path")
    return RunFolder(run_dir)


def check_labels(splits: DataSplits, classes: int) -> None:
    """Labels of the first images of each split inside the teacher's classes (logits teachers only)."""
    if not classes or not splits.labelled:
        return
    for name in ("train", "val", "test"):
        labels = take_tensors(getattr(splits, name), 64, batch_fn=splits.batch_fn)[1]
        bad = labels[(labels < 0) | (labels >= classes)]
        if len(bad):
            raise DataError(f"{name}: label {int(bad[0])} is outside the teacher's {classes} classes (0 to {classes - 1}); "
                            "pass labels as class indices of the teacher's outputs")


def num_classes(teacher: nn.Module, splits: DataSplits) -> int:
    """The teacher's classes on one real image; 0 where it returns feature maps, not logits."""
    image = take_tensors(splits.train, 1, 1, splits.batch_fn)[0]
    image = Placement(module_device(teacher)).batch(image)  # the teacher may be on any device
    try:
        with torch.no_grad():
            out = teacher.eval()(image)
    except Exception as exc:  # any failure of the user's forward means the data do not fit it
        raise DataError(f"the teacher cannot run on the data's images (one image of shape {tuple(image.shape[1:])}): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; pass images the teacher takes") from None
    return classes_of(out)
