"""What `benchmarks/scale.py` and `benchmarks/gpu_check.py` share: data made on demand, a
sampler of resident / GPU memory and GPU load, the pipeline run stage by stage through the
public API (`lana.new_run` and the `Run` methods), and a minimal streaming evaluation.

Per-stage peaks: one thread samples the process's resident size (``VmRSS``), and on a GPU the
reserved memory and the GPU's load, every ``interval`` seconds; each stage is a window of
that timeline. ``lana distill`` (one call: distil, score, time) is split into its parts with
the seconds it records in ``RUN/distill_timing.json``, counted back from its end.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import lana
from lana.run.memory import available_bytes, resident_bytes

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_fashion_mnist(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(N, 28, 28)`` uint8 and labels from the (gzipped) idx files."""
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind, offset in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
        path = Path(root) / f"{prefix}-{kind}"
        opener = gzip.open if not path.exists() else open
        with opener(path if path.exists() else path.with_name(path.name + ".gz"), "rb") as handle:
            arrays.append(np.frombuffer(handle.read(), dtype=np.uint8, offset=offset))
    images, labels = arrays
    return images.reshape(-1, 28, 28), labels.astype(np.int64)


class FashionMNIST3(Dataset):
    """Fashion-MNIST upsampled to ``size``×``size`` and 3 channels, each image made when asked."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = (torch.from_numpy(self.images[index].astype(np.float32)) / 255 - MEAN) / STD
        image = F.interpolate(image[None, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return image.expand(3, -1, -1).contiguous(), int(self.labels[index])


class LazyImages(Dataset):
    """``length`` images generated from their index (a seeded generator each): nothing is stored."""

    def __init__(self, length: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> None:
        self.length, self.shape, self.classes, self.seed = length, shape, classes, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(self.shape, generator=generator), index % self.classes


def fashion_splits(size: int, train: int, val: int, test: int, root: str = FASHION_MNIST):
    """Train / val / test datasets of Fashion-MNIST at ``size`` (val taken from the training file)."""
    images, labels = read_fashion_mnist(root, "train")
    test_images, test_labels = read_fashion_mnist(root, "test")
    return (FashionMNIST3(images[:train], labels[:train], size), FashionMNIST3(images[-val:], labels[-val:], size),
            FashionMNIST3(test_images[:test], test_labels[:test], size))


def _gpu_load() -> float | None:
    """The GPU's load now, 0-100 (NVML through torch, else nvidia-smi); None when unknown."""
    try:
        return float(torch.cuda.utilization())
    except Exception:  # noqa: BLE001  no pynvml, or NVML failed: ask nvidia-smi
        if not shutil.which("nvidia-smi"):
            return None
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i",
                                  str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5, check=True)
            return float(out.stdout.split()[0])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            return None


class Sampler:
    """Samples resident memory (and GPU memory and load) in a thread; reports peaks per window."""

    def __init__(self, interval: float = 0.1, gpu: bool = False) -> None:
        self.interval, self.gpu = interval, gpu
        self.samples: list[tuple[float, int, int, float | None]] = []  # time, rss, gpu reserved, gpu load
        self.stages: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_load = 0.0
        load = None
        while not self._stop.is_set():
            now = time.time()
            if self.gpu and now >= next_load:  # nvidia-smi is slow: load twice a second at most
                load, next_load = _gpu_load(), now + 0.5
            reserved = torch.cuda.memory_reserved() if self.gpu else 0
            self.samples.append((now, resident_bytes(), reserved, load if self.gpu else None))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str):
        """Time a stage and mark its window (its GPU peak counter is reset at the start)."""
        if self.gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        try:
            yield
        finally:
            if self.gpu:
                torch.cuda.synchronize()
            self.stages[name] = (start, time.time())
            if self.gpu:
                self.stages[name] += (torch.cuda.max_memory_allocated(),)

    def window(self, name: str, start: float, end: float) -> None:
        """Mark a window inside a stage (from a stage's own record of its seconds)."""
        self.stages[name] = (start, end)

    def report(self) -> dict[str, dict]:
        """Per window: seconds, peak resident MiB and, on a GPU, peak reserved MiB and mean load %."""
        rows = {}
        for name, (start, end, *peak) in self.stages.items():
            inside = [s for s in self.samples if start <= s[0] <= end] or [min(self.samples, key=lambda s: abs(s[0] - end))]
            loads = [s[3] for s in inside if s[3] is not None]
            row = {"seconds": round(end - start, 1), "peak_rss_mib": round(max(s[1] for s in inside) / 2**20)}
            if self.gpu:
                row["peak_gpu_reserved_mib"] = round(max(s[2] for s in inside) / 2**20)
                if peak:
                    row["peak_gpu_allocated_mib"] = round(peak[0] / 2**20)
                row["gpu_busy_pct"] = round(float(np.mean(loads)), 1) if loads else None
            rows[name] = row
        return rows


def run_pipeline_stages(teacher, train, val, test, run_dir: Path, config: dict, budget: str, device: str,
                        sampler: Sampler, stages: tuple[str, ...] = ("distill", "solve", "finetune", "export")) -> dict:
    """The pipeline through the public API, one stage at a time under ``sampler``'s windows.

    Returns:
        ``{"table_rows", "blocks", "report"}``: candidates, blocks and the export report (if run).
    """
    with sampler.stage("new_run"):
        run = lana.new_run(teacher, train, val, test, run_dir=run_dir, device=device, config=config)
    with sampler.stage("distill_stage"):
        table = run.distill()
    end = sampler.stages["distill_stage"][1]
    parts = json.loads((run.path / "distill_timing.json").read_text())
    for name in ("latency", "score", "distill"):  # back from the end: latency ran last
        sampler.window(f"  {name}", end - parts[name], end)
        end -= parts[name]
    sampler.window("  setup (teacher, candidates)", sampler.stages["distill_stage"][0], end)
    out = {"table_rows": len(table), "blocks": int(table["block"].nunique()), "report": None}
    if "solve" in stages:
        with sampler.stage("solve"):
            selection = run.solve(budget)
        out["choice"] = selection.get("choice")
    if "finetune" in stages:
        with sampler.stage("finetune"):
            run.finetune()
    if "export" in stages:
        with sampler.stage("export"):
            out["report"] = run.export()
    return out


@torch.inference_mode()
def stream_evaluate(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: str = "cpu",
                    checkpoints: tuple[float, ...] = (0.1, 0.5, 1.0)) -> dict:
    """Top-1 over ``dataset`` in streaming batches (nothing kept but counts); RSS at checkpoints.

    A minimal loop on purpose: it stands in for lana's streaming evaluation where that is not
    in the public API yet.
    """
    model = model.eval().to(device)
    correct = seen = 0
    marks, rss = sorted(checkpoints), {}
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        seen += len(labels)
        while marks and seen >= marks[0] * len(dataset):
            rss[f"{marks.pop(0):.0%}"] = round(resident_bytes() / 2**20)
    return {"images": seen, "top1": correct / max(1, seen), "rss_mib_at": rss}


def machine() -> dict:
    """What ran it: CPU count, RAM available now, torch version, GPU name."""
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "available_gib": round((available_bytes() or 0) / 2**30, 1),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def print_stages(rows: dict[str, dict]) -> None:
    """The per-stage table, one line each."""
    keys = list(next(iter(rows.values())).keys()) if rows else []
    print(f"{'stage':<32}" + "".join(f"{k:>24}" for k in keys))
    for name, row in rows.items():
        print(f"{name:<32}" + "".join(f"{row.get(k)!s:>24}" for k in keys))
