"""One call for users' own data: label issues from BKD's phase 1 on MLP heads over feature vectors.

Given a feature matrix ``[N, D]`` (e.g. :func:`bkd_core.features.cached_features`, or any
embedding) and given labels ``[N]``, :func:`find_label_issues` trains a teacher and a student MLP
with BKD's losses and optimiser until the official tipping rule fires, scores every sample with the
teacher-student agreement on its given label at the tipping epoch, splits the scores with BKD's
Otsu variant and reports, as cleanlab's ``find_label_issues`` does, a boolean mask, quality scores
and the indices ranked from worst to best.

Only phase 1 is needed for detection (the groups are fixed at the tipping epoch), so no phase 2 is
run here; to *train* a robust classifier use :func:`bkd_core.train.train_bkd`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import ordered_batches, shuffled_batches
from .config import FEATURES
from .errors import DivergedError
from .method import agreement_probability, blind_distillation_loss, detect, tipping_point
from .train import BKDTrainer, build_networks, build_optimizer

__all__ = ["BKDLabelIssues", "find_label_issues"]


@dataclass(frozen=True)
class BKDLabelIssues:
    """Result of :func:`find_label_issues` (N samples).

    Attributes
    ----------
    label_issues : np.ndarray
        bool ``[N]``: group G4 (``flag="g4"``, the official output) or every score below the Otsu
        threshold (``flag="below_threshold"``).
    label_quality : np.ndarray
        float32 ``[N]`` in ``[0, 1]``: the agreement probability of the given label at the tipping
        epoch (lower = worse).
    ranked : np.ndarray
        int64 ``[N]``: indices from the lowest quality to the highest.
    groups : np.ndarray
        int64 ``[N]`` in ``{1, 2, 3, 4}`` (see :func:`bkd_core.method.assign_groups`).
    threshold : float
        The Otsu threshold; ``noise_rate`` is the fraction of scores below it.
    noise_rate : float
        Estimated fraction of wrong labels.
    tipping_epoch : int
        0-based epoch whose scores were used.
    tipping_found : bool
        False when the peak rule did not fire within ``epochs`` (then the epoch of the highest
        statistic was used, with a warning).
    epoch_statistic : list of float
        The student's mean max-probability per epoch (the tipping rule's input).
    """

    label_issues: np.ndarray
    label_quality: np.ndarray
    ranked: np.ndarray
    groups: np.ndarray
    threshold: float
    noise_rate: float
    tipping_epoch: int
    tipping_found: bool
    epoch_statistic: list[float] = field(default_factory=list)


def find_label_issues(features, labels, *, num_classes: int | None = None,
                      widths: Sequence[int] = FEATURES.model_widths, epochs: int = FEATURES.epochs,
                      batch_size: int = FEATURES.batch_size, lr: float = FEATURES.lr,
                      momentum: float = FEATURES.momentum, weight_decay: float = FEATURES.weight_decay,
                      tipping_window: int = FEATURES.tipping_window,
                      flag: Literal["g4", "below_threshold"] = "g4", seed: int = 0,
                      device: str = "auto", progress: bool = True) -> BKDLabelIssues:
    """Label issues of ``labels`` given ``features``, by BKD (phase 1) on two MLP heads.

    Parameters
    ----------
    features : array_like
        float ``[N, D]``. Standardised columns work best (the patch features are).
    labels : array_like
        int ``[N]``, the given labels in ``[0, C)``.
    num_classes : int, optional
        C; default ``labels.max() + 1``.
    widths : sequence of int
        Hidden widths of both MLPs; default the ``features`` profile's (``bkd_core.config.FEATURES``: one
        hidden layer of 1,024 units).
    epochs : int
        Maximum phase-1 epochs; training stops as soon as the tipping rule fires.
    batch_size, lr, momentum, weight_decay : optional
        One SGD optimiser over both networks (the ``features`` profile's, i.e. the official values, by
        default).
    tipping_window : int
        Neighbours on each side of the peak (official 2).
    flag : {"g4", "below_threshold"}
        Which samples are reported as label issues.
    seed : int
        Seed of the initialisation and the batch order.
    device : str
        Torch device; ``"auto"``: CUDA when present, else the CPU.
    progress : bool
        tqdm bar over the epochs.

    Returns
    -------
    BKDLabelIssues
        ``label_issues`` bool ``[N]``, ``label_quality`` float32 ``[N]``, ``ranked`` int64 ``[N]``
        (worst first), ``groups`` int64 ``[N]``, and the threshold, noise estimate and tipping epoch.

    Raises
    ------
    ValueError
        Features not ``[N, D]`` or not finite, labels not integers in ``[0, C)``, ``epochs`` too few for
        the tipping rule, or an unknown ``flag``.
    bkd_core.errors.DivergedError
        The training turned non-finite (usually a learning rate too high for the feature scale).
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y_np = np.asarray(labels)
    if x.ndim != 2 or y_np.shape != (len(x),):
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(x.shape)} and {y_np.shape}")
    bad_rows = int((~torch.isfinite(x)).any(1).sum())
    if bad_rows:
        raise ValueError(f"features contain NaN or infinite values in {bad_rows} of {len(x)} rows; "
                         "remove or impute those rows first")
    if not np.issubdtype(y_np.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y_np.dtype}")
    if flag not in ("g4", "below_threshold"):
        raise ValueError(f"flag must be 'g4' or 'below_threshold', got {flag!r}")
    if epochs < 2 * tipping_window + 2:
        raise ValueError(f"epochs must be >= {2 * tipping_window + 2} for the tipping rule, got {epochs}")
    c = int(num_classes) if num_classes is not None else int(y_np.max()) + 1
    if y_np.min() < 0 or y_np.max() >= c or c < 2:
        raise ValueError(f"labels must lie in [0, {c}) with at least 2 classes")
    # the networks, the optimiser and the batch order come from the trainer's own helpers
    config = FEATURES.replace(model_widths=tuple(widths), epochs=epochs, batch_size=batch_size, lr=lr,
                              momentum=momentum, weight_decay=weight_decay, tipping_window=tipping_window,
                              seed=seed, device=device)
    dev = config.resolved_device()
    x, y = x.to(dev), torch.as_tensor(y_np.astype(np.int64)).to(dev)
    teacher, student = build_networks(config, BKDTrainer.network_names, c, dev, in_features=x.shape[1]).values()
    opt, _ = build_optimizer(config, (teacher, student), dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    stats: list[float] = []
    scores: list[np.ndarray] = []
    point = None
    for _ in tqdm(range(epochs), desc="BKD phase 1", unit="epoch", disable=not progress, leave=False):
        teacher.train(), student.train()
        total = torch.zeros((), device=dev)
        for idx in shuffled_batches(len(x), batch_size, generator, dev):
            zt, zs = teacher(x[idx]), student(x[idx])
            loss = F.cross_entropy(zt, y[idx]) + blind_distillation_loss(
                zt, zs, y[idx], detach_teacher=config.detach_teacher, reduction=config.loss_reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += torch.softmax(zs.detach(), 1).max(1).values.sum()
        stats.append(float(total) / len(x))
        teacher.eval(), student.eval()
        with torch.no_grad():
            parts = [agreement_probability(teacher(x[i]), student(x[i])).gather(1, y[i, None])[:, 0]
                     for i in ordered_batches(len(x), config.eval_batch_size, dev)]
        scores.append(torch.cat(parts).float().cpu().numpy())
        if not (np.isfinite(stats[-1]) and np.isfinite(scores[-1]).all()):
            raise DivergedError(
                f"training diverged in epoch {len(stats)}: the student's confidence or the agreement scores are "
                f"not finite. The likely cause is a learning rate too high for these features (lr={lr:g}, "
                f"batch_size={batch_size}); standardise the feature columns, or pass a lower lr")
        point = tipping_point(stats, window=tipping_window)
        if point is not None:
            break
    found = point is not None
    if found:
        tip = point.epoch
    else:  # unlike train_bkd's fixed fallback epoch: the epoch of the highest statistic
        tip = int(np.argmax(stats))
        warnings.warn(f"the tipping rule did not fire within {epochs} epochs; using the epoch of the "
                      f"highest statistic ({tip})", RuntimeWarning, stacklevel=2)
    quality = scores[tip]
    detection = detect(quality)
    issues = detection.label_issues if flag == "g4" else detection.below_threshold
    return BKDLabelIssues(label_issues=issues, label_quality=quality.astype(np.float32),
                          ranked=np.argsort(quality, kind="stable"), groups=detection.groups,
                          threshold=float(detection.split.threshold), noise_rate=detection.estimated_noise_rate,
                          tipping_epoch=int(tip), tipping_found=found, epoch_statistic=stats)
