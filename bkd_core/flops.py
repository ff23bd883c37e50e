"""Model FLOPs of a run, counted with ``torch.utils.flop_counter``, for time estimates of the ``paper`` profile."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import BKDConfig
from .models import build_model

__all__ = ["flops_per_image", "bkd_run_flops"]


def flops_per_image(model: str, num_classes: int = 10,
                    widths: tuple[int, int, int] = (32, 64, 128)) -> dict[str, float]:
    """FLOPs of one network on one 32x32 image: ``{"forward": ..., "train": forward + backward}``."""
    net = build_model(model, num_classes, widths)
    x = torch.randn(2, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).sum().backward()
    train = counter.get_total_flops() / 2
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(x)
    return {"forward": counter.get_total_flops() / 2, "train": float(train)}


def bkd_run_flops(config: BKDConfig, num_samples: int = 50_000, num_test: int = 10_000, num_classes: int = 10,
                  phase1_epochs: int | None = None) -> float:
    """Model FLOPs of a whole BKD run of ``config`` (teacher and student).

    Counted: the training pass of both networks over the ``(1 - val_ratio)`` share of
    ``num_samples`` every epoch; the scoring pass (forward, both networks) over all ``num_samples``
    in each of the ``phase1_epochs`` before the tipping point is found (default: all epochs, an upper
    bound); validation and test passes at their configured frequency. Augmentation, the optimizer and
    the loss are left out (small next to the convolutions).
    """
    per_image = flops_per_image(config.model, num_classes, config.model_widths)
    n = min(num_samples, config.train_size or num_samples)
    n_train = n - int(n * config.val_ratio)
    n_test = min(num_test, config.test_size or num_test)
    epochs = config.epochs
    phase1 = epochs if phase1_epochs is None else min(phase1_epochs, epochs)
    train = epochs * n_train * per_image["train"]
    scoring = phase1 * n * per_image["forward"]
    evaluation = ((-(-epochs // config.val_every) * (n - n_train) + -(-epochs // config.test_every) * n_test)
                  * per_image["forward"])
    return 2.0 * (train + scoring + evaluation)
