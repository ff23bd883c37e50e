"""A small synthetic noisy-label dataset with the shape of CIFAR-N, for tests and quick demos.

Each class is a fixed random smooth colour pattern; an image is its class pattern, randomly shifted,
plus pixel noise. A chosen fraction of training labels is replaced by a different random class,
so ``is_noisy`` is known exactly.
"""

from __future__ import annotations

import numpy as np

from .data import NoisyCIFAR


def make_synthetic_cifar_n(n_train: int = 600, n_test: int = 200, num_classes: int = 10, noise_rate: float = 0.3,
                           seed: int = 0, pixel_noise: float = 40.0) -> NoisyCIFAR:
    """Synthetic :class:`~bkd_core.data.NoisyCIFAR` (dataset ``"cifar10"``, split ``"synthetic"``).

    Images: uint8 [n, 32, 32, 3]. ``noise_rate`` in [0, 1) of training labels are flipped to another class.
    """
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, 3))
    templates = coarse.repeat(8, axis=1).repeat(8, axis=2)  # [C, 32, 32, 3] blocky patterns

    def images_for(labels: np.ndarray) -> np.ndarray:
        shifts = rng.integers(-3, 4, size=(len(labels), 2))
        out = np.empty((len(labels), 32, 32, 3), dtype=np.float64)
        for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
            out[i] = np.roll(templates[label], (dy, dx), axis=(0, 1))
        out += rng.normal(0, pixel_noise, size=out.shape)
        return np.clip(out, 0, 255).astype(np.uint8)

    clean = rng.integers(0, num_classes, size=n_train)
    given = clean.copy()
    flip = rng.random(n_train) < noise_rate
    given[flip] = (clean[flip] + rng.integers(1, num_classes, size=int(flip.sum()))) % num_classes
    test_labels = rng.integers(0, num_classes, size=n_test)
    return NoisyCIFAR(train_images=images_for(clean), train_labels=given, clean_labels=clean,
                      test_images=images_for(test_labels), test_labels=test_labels, num_classes=num_classes,
                      dataset="cifar10", split="synthetic")
