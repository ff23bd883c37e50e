"""Device-resident data: uint8 image tensors on the device, augmented and normalized a batch at a time.

No PIL, no DataLoader workers: a batch is gathered from one uint8 tensor by index arithmetic
(flip, padded random crop) and normalized on the device, so the CPU and CUDA paths are the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass(frozen=True)
class AugmentSpec:
    """Random horizontal flip and padded random crop, in a given order.

    ``order="flip_crop"`` flips, then pads and crops (official CIFAR-10);
    ``order="crop_flip"`` pads and crops, then flips (official CIFAR-100).
    ``pad_mode`` is ``"reflect"`` (CIFAR-10) or ``"constant"`` (zero padding, CIFAR-100).
    """

    flip: bool = True
    crop_padding: int = 4
    pad_mode: Literal["reflect", "constant"] = "reflect"
    order: Literal["flip_crop", "crop_flip"] = "flip_crop"


OFFICIAL_AUGMENT = {
    "cifar10": AugmentSpec(True, 4, "reflect", "flip_crop"),
    "cifar100": AugmentSpec(True, 4, "constant", "crop_flip"),
}


def to_device_images(images_hwc: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [N, H, W, 3] numpy images -> uint8 [N, 3, H, W] tensor on ``device``."""
    if images_hwc.dtype != np.uint8 or images_hwc.ndim != 4 or images_hwc.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images_hwc.dtype} {images_hwc.shape}")
    return torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2).contiguous().to(device)


def _source_index(pos: torch.Tensor, size: int, pad_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map positions in a padded axis (already shifted by -padding) to source pixel indices.

    Returns (index clamped into [0, size-1], valid mask). Reflect padding mirrors without repeating
    the edge pixel (as ``torch.nn.functional.pad(mode="reflect")``); constant padding marks the
    out-of-range positions invalid (they become 0).
    """
    if pad_mode == "reflect":
        period = 2 * (size - 1)
        pos = torch.remainder(pos, period)
        pos = torch.where(pos >= size, period - pos, pos)
        return pos, torch.ones_like(pos, dtype=torch.bool)
    valid = (pos >= 0) & (pos < size)
    return pos.clamp(0, size - 1), valid


def augment_batch(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch of uint8 images [B, 3, H, W] on their device; returns uint8 [B, 3, H, W].

    Each image gets its own flip (probability 1/2) and crop offset (uniform in [0, 2*padding] on
    each axis), drawn from ``generator`` (which must live on the images' device).
    """
    b, device, p = images.shape[0], images.device, spec.crop_padding
    dy = torch.randint(0, 2 * p + 1, (b,), device=device, generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), device=device, generator=generator)
    flip = torch.rand((b,), device=device, generator=generator) < 0.5 if spec.flip else None
    return flip_and_crop(images, spec, dy, dx, flip)


def flip_and_crop(images: torch.Tensor, spec: AugmentSpec, dy: torch.Tensor, dx: torch.Tensor,
                  flip: torch.Tensor | None) -> torch.Tensor:
    """Deterministic part of :func:`augment_batch`.

    images: uint8 [B, 3, H, W]; dy, dx: int64 [B] crop offsets in [0, 2*padding] into the padded
    image; flip: bool [B] or None. Returns uint8 [B, 3, H, W].
    """
    b, _, h, w = images.shape
    device, p = images.device, spec.crop_padding
    rows = torch.arange(h, device=device).expand(b, h)
    cols = torch.arange(w, device=device).expand(b, w)

    def flipped(c: torch.Tensor) -> torch.Tensor:
        return c if flip is None else torch.where(flip[:, None], w - 1 - c, c)

    if spec.order == "crop_flip":
        cols = flipped(cols)
    src_rows, valid_rows = _source_index(rows + dy[:, None] - p, h, spec.pad_mode)
    src_cols, valid_cols = _source_index(cols + dx[:, None] - p, w, spec.pad_mode)
    if spec.order == "flip_crop":
        src_cols = flipped(src_cols)
    batch = torch.arange(b, device=device)[:, None, None]
    out = images[batch, :, src_rows[:, :, None], src_cols[:, None, :]]  # [B, H, W, 3]
    if spec.pad_mode == "constant":
        out = out * (valid_rows[:, :, None] & valid_cols[:, None, :])[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2)


class Normalizer:
    """uint8 [B, 3, H, W] -> float32 [B, 3, H, W], ``(x / 255 - mean) / std``, on the images' device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str,
                 channels_last: bool = False) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = images.float() * self.scale - self.shift
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device | str
                     ) -> list[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into index batches (the last one may be smaller)."""
    return list(torch.randperm(n, generator=generator, device=device).split(batch_size))


def ordered_batches(n: int, batch_size: int, device: torch.device | str) -> list[torch.Tensor]:
    """``range(n)`` cut into index batches, in order."""
    return list(torch.arange(n, device=device).split(batch_size))
