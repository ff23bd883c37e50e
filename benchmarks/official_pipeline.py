"""The official BKD training pipeline, reconstructed for the throughput benchmark (``bench_epoch.py``).

Written from a description of the official code (``blind_knowledge_dist_training.py``), not copied from it: a CIFAR-10
``Dataset`` that turns each uint8 HWC array into a PIL image with ``Image.fromarray`` (as
``torchvision.datasets.CIFAR10.__getitem__``) and applies ``Compose([RandomHorizontalFlip(),
RandomCrop(32, 4, padding_mode="reflect"), ToTensor(), Normalize(mean, std)])``;
``DataLoader(batch_size, shuffle=True, num_workers)`` (fresh worker processes every epoch, as
there); fp32, NCHW; teacher and student forward passes separately; per batch the compensation loss
(masked squared difference / (B*C - 1)), the agreement softmax, per-sample scores written into
device containers by dataset index, the sum of the student's max probability, cross-entropy on the
teacher, one SGD optimizer over both networks, and one host synchronisation (``loss.item()``, like
the official code's python-side loss accumulator).

This module must not import the ``bkd_core`` package (only ``bkd_core/models.py``, by path), so that
nothing the package sets up at import time (e.g. ``OMP_WAIT_POLICY``) leaks into the official
pipeline's worker process.

Attribution knobs, not part of the official pipeline (``bench_epoch.py --variant``):
``BENCH_CHANNELS_LAST=1`` (channels_last networks), ``BENCH_WORKERS=k`` (DataLoader workers),
``BENCH_PRECISION=bf16|fp16`` (autocast; fp16 with a gradient scaler).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: the official code's CIFAR-10 normalization (``blind_knowledge_dist_training.py``)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _models_module() -> Any:
    """``bkd_core/models.py`` loaded by path, without importing the ``bkd_core`` package."""
    spec = importlib.util.spec_from_file_location("_bench_models", ROOT / "bkd_core" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OfficialCIFAR10Train:
    """CIFAR-10 training set as torchvision's ``CIFAR10``: uint8 HWC arrays -> PIL -> transform.

    Returns ``(image, target, index)``: the official loop needs each sample's dataset index to
    write its score into the per-sample containers.
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data = images_hwc  # uint8 [N, 32, 32, 3]
        self.targets = [int(t) for t in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        from PIL import Image

        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)  # as torchvision.datasets.CIFAR10.__getitem__
        img = self.transform(img)
        return img, target, index


def official_transform() -> Callable:
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])


class OfficialPipeline:
    """Teacher + student trained as in the official loop, fed by a PIL DataLoader."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, model: str, widths: tuple[int, int, int],
                 batch_size: int, workers: int, device: str = "cpu", num_classes: int = 10, seed: int = 0) -> None:
        import torch

        self.device = torch.device(device)
        self.dataset = OfficialCIFAR10Train(images, labels, official_transform())
        # attribution knobs (not part of the official pipeline; used only through --variant):
        # BENCH_CHANNELS_LAST=1 runs the networks channels_last, BENCH_WORKERS=k overrides the worker count
        self.channels_last = os.environ.get("BENCH_CHANNELS_LAST") == "1"
        # BENCH_PRECISION=bf16|fp16 autocasts the networks (fp16 with a GradScaler), for a like-for-like GPU comparison
        self.precision = os.environ.get("BENCH_PRECISION", "fp32")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        workers = int(os.environ.get("BENCH_WORKERS", workers))
        self.batch_size, self.workers, self.num_classes = batch_size, workers, num_classes
        build_model = _models_module().build_model
        torch.manual_seed(seed)
        self.teacher = build_model(model, num_classes, widths).to(self.device)
        self.student = build_model(model, num_classes, widths).to(self.device)
        if self.channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
            self.student = self.student.to(memory_format=torch.channels_last)
        params = list(self.teacher.parameters()) + list(self.student.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
        n = len(self.dataset)
        # per-sample containers on the device, indexed by dataset index
        self.agreement = torch.zeros(n, device=self.device)
        self.teacher_p = torch.zeros(n, device=self.device)
        self.student_p = torch.zeros(n, device=self.device)

    def step(self, x: Any, y: Any, idx: Any) -> tuple[Any, Any]:
        """One official training step; returns (loss, sum of the student's max probability) on the device."""
        import torch
        import torch.nn.functional as F

        b, c = x.shape[0], self.num_classes
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            z_t = self.teacher(x)
            z_s = self.student(x)
        z_t, z_s = z_t.float(), z_s.float()
        mask = 1.0 - F.one_hot(y, c).float()  # every class except the given label
        compensation = (((z_t - z_s) ** 2) * mask).sum() / (b * c - 1)  # not detached (quirk 1)
        p_t = F.softmax(z_t, dim=1)
        p_s = F.softmax(z_s, dim=1)
        agree = p_t * p_s
        agree = agree / agree.sum(dim=1, keepdim=True)
        rows = torch.arange(b, device=x.device)
        self.agreement[idx] = agree[rows, y].detach()
        self.teacher_p[idx] = p_t[rows, y].detach()
        self.student_p[idx] = p_s[rows, y].detach()
        max_student = p_s.max(dim=1)[0].sum().detach()
        ce = F.cross_entropy(z_t, y)
        loss = ce + compensation
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, max_student

    def data_only(self) -> int:
        """One pass of the input pipeline alone (PIL DataLoader, no networks); returns the images seen."""
        from torch.utils.data import DataLoader

        seen = 0
        for x, y, idx in DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.workers,
                                    pin_memory=self.device.type == "cuda"):
            x, y, idx = (t.to(self.device, non_blocking=True) for t in (x, y, idx))
            seen += x.shape[0]
        sync(self.device)
        return seen

    def run(self, n_images: int | None = None) -> int:
        """One epoch over the first ``n_images`` samples (all by default); returns the images seen."""
        import torch
        from torch.utils.data import DataLoader, Subset

        dataset = self.dataset if n_images is None else Subset(self.dataset, range(n_images))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        self.teacher.train()
        self.student.train()
        loss_sum, max_sum, seen = 0.0, torch.zeros((), device=self.device), 0
        for x, y, idx in loader:
            x, y, idx = (t.to(self.device, non_blocking=True) for t in (x, y, idx))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, max_student = self.step(x, y, idx)
            loss_sum += loss.item() * x.shape[0]  # per-batch host synchronisation, as the official code
            max_sum += max_student
            seen += x.shape[0]
        _ = float(max_sum) / max(seen, 1)  # the epoch statistic (mean max student probability)
        sync(self.device)
        return seen
