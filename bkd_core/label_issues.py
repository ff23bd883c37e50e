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

import os
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import ordered_batches, shuffled_batches
from .config import FEATURES, BKDConfig, resolve
from .errors import DivergedError
from .method import BKDStep, agreement_probability, bkd_step, detect, tipping_point
from .models import build_networks, build_optimizer
from .validation import check_features_and_labels, check_int

__all__ = ["BKDLabelIssues", "find_label_issues"]


@dataclass(frozen=True)
class BKDLabelIssues:
    """Result of :func:`find_label_issues` (N samples): every output of the one training.

    Attributes
    ----------
    The names of the first four outputs mean what they mean in every result of ``bkd_core`` (a training run's
    :class:`~bkd_core.train.RunResult`, :class:`~bkd_core.detectors.knn.KNNLabelIssues`): ``label_issues`` the
    samples the detector reports, ``label_quality`` lower = more likely wrong, ``ranked_indices`` worst first,
    ``estimated_noise_rate`` the detector's estimate of the fraction of wrong labels. ``ranked`` and
    ``noise_rate`` are older names of the same two outputs, kept for code written against them.

    Attributes
    ----------
    label_issues : np.ndarray
        bool ``[N]``: the samples reported as mislabelled, the mask ``flag`` names: by default (as
        :func:`find_label_issues` chooses) ``below_threshold``, else ``g4``, the official output.
    label_quality : np.ndarray
        float32 ``[N]`` in ``[0, 1]``: the agreement probability of the given label at the tipping
        epoch (lower = worse).
    ranked_indices : np.ndarray
        int64 ``[N]``: indices from the lowest quality to the highest.
    groups : np.ndarray
        int64 ``[N]`` in ``{1, 2, 3, 4}`` (chapter 08, "Groups"); all 0 when no tipping epoch was chosen.
    threshold : float
        The Otsu threshold (NaN when no tipping epoch was chosen).
    estimated_noise_rate : float
        Estimated fraction of wrong labels, the official estimate: the fraction of scores below the threshold,
        whichever mask ``label_issues`` is (NaN when no tipping epoch was chosen).
    tipping_epoch : int or None
        0-based epoch whose scores were used; None when no peak was found and ``tipping_fallback=None``.
    tipping_found : bool
        True when the official peak rule fired; False when ``tipping_rule`` is a fallback (or None).
    epoch_statistic : list of float
        The student's mean max-probability per epoch (the tipping rule's input).
    g4 : np.ndarray
        bool ``[N]``: group G4, the official output (``groups == 4``).
    below_threshold : np.ndarray
        bool ``[N]``: ``label_quality < threshold`` (groups G3 and G4).
    flag : {"below_threshold", "g4"}
        Which mask ``label_issues`` is.
    tipping_rule : str or None
        ``"peak"``, ``"fallback"``, ``"highest"`` (:func:`bkd_core.method.tipping_point`) or None.
    separation : float
        Ashman's D of the two Otsu classes, ``sqrt(2) |upper_mean - lower_mean| / sqrt(lower_std**2 +
        upper_std**2)``: how far apart the two classes the Otsu split found are, relative to their spread.
        A diagnostic beside ``noise_rate`` (which is 10-17% even when no label is wrong, as the split always
        finds two classes): measured lower on correct labels than on noisy ones of the same size and
        features, but its level grows with N, so no fixed cut says "one class"
        (``benchmarks/label_issues_flag.md``). NaN when no tipping epoch was chosen.
    """

    label_issues: np.ndarray
    label_quality: np.ndarray
    ranked_indices: np.ndarray
    groups: np.ndarray
    threshold: float
    estimated_noise_rate: float
    tipping_epoch: int | None
    tipping_found: bool
    epoch_statistic: list[float] = field(default_factory=list)
    g4: np.ndarray | None = None
    below_threshold: np.ndarray | None = None
    flag: str = "below_threshold"
    tipping_rule: str | None = None
    separation: float = float("nan")

    @property
    def ranked(self) -> np.ndarray:
        """The older name of :attr:`ranked_indices`."""
        return self.ranked_indices

    @property
    def noise_rate(self) -> float:
        """The older name of :attr:`estimated_noise_rate`."""
        return self.estimated_noise_rate


_FLAGS = ("g4", "below_threshold")


def _check_widths(widths, *, in_features: int, num_classes: int, kept: int, device: torch.device) -> tuple[int, ...]:
    """``widths`` as a tuple of positive ints, refused (one ValueError) when the two MLPs, with their gradients,
    momentum and the ``kept`` copies of their weights, would not fit in the device's memory."""
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"widths must be a sequence of hidden widths (positive integers), got {widths!r}")
    widths = tuple(check_int("each hidden width", w, 1) for w in widths)
    sizes = (in_features, *widths, num_classes)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))  # one MLP's weights and biases
    need = 2 * params * 4 * (3 + kept)  # two float32 networks: weights, gradients, momentum and kept copies
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not on POSIX: no check
            return widths
    if need > have:
        where = str(device) if device.type == "cuda" else "this machine"
        raise ValueError(f"widths={widths} with {in_features} features and {num_classes} classes make two networks "
                         f"of {params:,} parameters each, about {need / 2**30:,.1f} GiB with their gradients, "
                         f"momentum and kept copies, more than {where}'s {have / 2**30:,.1f} GiB of memory; "
                         f"choose smaller hidden widths (the default is {FEATURES.model_widths})")
    return widths


def _train_step(teacher: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, config: BKDConfig) -> BKDStep:
    """One phase-1 SGD step on the batch ``x`` [B, D], ``y`` [B] (the trainer's step, in fp32, without
    its autocast and gradient scaler)."""
    out = bkd_step(teacher(x), student(x), y, detach_teacher=config.detach_teacher,
                   reduction=config.loss_reduction, student_sees_label=config.student_sees_label)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


def _diverged(epoch: int, lr: float, batch_size: int) -> None:
    raise DivergedError(
        f"training diverged in epoch {epoch + 1}: the student's confidence or the agreement scores are not finite. "
        f"The likely cause is a learning rate too high for these features (lr={lr:g}, batch_size={batch_size}); "
        "standardise the feature columns, or pass a lower lr")


def find_label_issues(features, labels, *, num_classes: int | None = None,
                      widths: Sequence[int] = FEATURES.model_widths, epochs: int = FEATURES.epochs,
                      batch_size: int = FEATURES.batch_size, lr: float = FEATURES.lr,
                      momentum: float = FEATURES.momentum, weight_decay: float = FEATURES.weight_decay,
                      tipping_window: int = FEATURES.tipping_window,
                      tipping_fallback: int | Literal["highest"] | None = "highest",
                      flag: Literal["g4", "below_threshold"] = "below_threshold", seed: int = 0,
                      device: str = "auto", progress: bool = True) -> BKDLabelIssues:
    """Label issues of ``labels`` given ``features``, by BKD (phase 1) on two MLP heads.

    One training gives every output: the G4 mask, the below-threshold mask, the groups, the quality
    scores, the ranking, the threshold, the noise estimate and the tipping epoch; ``flag`` only chooses
    which mask is ``label_issues``.

    Parameters
    ----------
    features : array_like
        float ``[N, D]`` (numpy array, torch tensor or nested sequence; a strided view is copied).
        Standardised columns work best (the patch features are). Values must fit in float32. A masked array
        with masked entries is refused (every sample is scored, so a mask cannot be honoured).
    labels : array_like
        int ``[N]``, the given labels in ``[0, C)``, of at least two classes.
    num_classes : int, optional
        C; default ``labels.max() + 1``, refused when most ids below it are unused (remap sparse ids). Given, it
        may leave a few classes without a sample, up to ``max(labels.max() + 1, 2 * classes present)``
        (:mod:`bkd_core.validation`).
    widths : sequence of int
        Hidden widths of both MLPs; default the ``features`` profile's (``bkd_core.config.FEATURES``: one
        hidden layer of 1,024 units). Refused when the two networks would not fit in the device's memory.
        ``(512,)`` is 1.3-1.5 times faster on 10,000 CIFAR-10 feature vectors with the same detection (F1 and
        ranking AUC within the default's seed range or above; benchmarks/README.md).
    epochs : int
        Maximum phase-1 epochs; training stops as soon as the tipping rule fires.
    batch_size, lr, momentum, weight_decay : optional
        One SGD optimiser over both networks (the ``features`` profile's, i.e. the official values, by
        default).
    tipping_window : int
        Neighbours on each side of the peak (official 2).
    tipping_fallback : int, "highest" or None
        What happens when the peak rule does not fire (:func:`bkd_core.method.no_peak_fallback`, the
        definition the trainer's ``BKDConfig.tipping_fallback`` uses): ``"highest"`` (default): the epoch
        of the highest statistic once ``epochs`` have run, with a warning; an integer ``e``: epoch ``e``
        once ``e + tipping_window`` epochs have run without a peak; None (the official code): nothing is
        flagged, with a warning.
    flag : {"g4", "below_threshold"}
        Which mask is reported as ``label_issues`` (both are in the result). The default,
        ``"below_threshold"`` (every score under the Otsu threshold: groups G3 and G4), found more of the
        wrong labels in 12 of 16 measured noisy cases (mean F1 57.4 against 47.8,
        ``benchmarks/label_issues_flag.md``); ``"g4"`` is the official output, better on the full
        CIFAR-10N ``aggre`` and ``rand`` splits, where the noise estimate is far too high.
    seed : int
        Seed of the initialisation and the batch order, in ``[0, 2**63)``.
    device : str
        Torch device; ``"auto"``: CUDA when present, else the CPU.
    progress : bool
        tqdm bar over the epochs.

    Returns
    -------
    BKDLabelIssues
        ``label_issues`` bool ``[N]``, ``g4`` and ``below_threshold`` bool ``[N]``, ``label_quality``
        float32 ``[N]``, ``ranked_indices`` int64 ``[N]`` (worst first), ``groups`` int64 ``[N]``, the
        threshold, ``estimated_noise_rate``, tipping epoch and rule, and the ``separation`` diagnostic.

    Raises
    ------
    ValueError
        Bad inputs, each named in one sentence before anything is allocated or trained
        (:func:`bkd_core.validation.check_features_and_labels`): features not ``[N, D]`` with ``N, D >= 1``, not
        finite or beyond float32, or masked; labels not integers in ``[0, C)``, of one class only, sparse class
        ids; ``num_classes`` far above what the labels use, or more than 100,000; hidden widths that would not fit
        in memory; ``epochs`` too few for the tipping rule; a non-integer ``num_classes``, ``epochs``,
        ``batch_size`` or ``seed``; an unknown ``flag`` or ``tipping_fallback``.
    bkd_core.errors.DivergedError
        The training turned non-finite (usually a learning rate too high for the feature scale).
    """
    if flag not in _FLAGS:
        raise ValueError(f"flag must be 'g4' or 'below_threshold', got {flag!r}")
    tipping_window = check_int("tipping_window", tipping_window, 1)
    epochs = check_int("epochs", epochs, 1)
    if epochs < 2 * tipping_window + 2:
        raise ValueError(f"epochs must be >= {2 * tipping_window + 2} for the tipping rule, got {epochs}")
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0, 2**63)
    tipping_point([], window=tipping_window, fallback=tipping_fallback)  # checks tipping_fallback
    x_np, y_np, c = check_features_and_labels(features, labels, num_classes)
    if (x_np == x_np[:1]).all():
        warnings.warn(f"all {len(x_np)} feature vectors are identical (every column has zero variance): the "
                      "networks cannot tell the samples apart and the scores say nothing about the labels; "
                      "pass informative features", RuntimeWarning, stacklevel=2)
    # the configuration the trainer would use (the features profile with these settings), so that the networks,
    # the optimiser and the batch order come from the trainer's own helpers
    config = resolve("features", dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                      weight_decay=weight_decay, tipping_window=tipping_window, seed=seed,
                                      device=device))
    dev = config.resolved_device()
    widths = _check_widths(widths, in_features=x_np.shape[1], num_classes=c, kept=tipping_window + 3, device=dev)
    config = config.replace(model_widths=widths)
    x, y = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)
    teacher, student = build_networks(config, ("teacher", "student"), c, dev, in_features=x.shape[1]).values()
    opt, _ = build_optimizer(config, (teacher, student), dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    stats: list[float] = []
    # the scores are needed at one epoch only, known up to tipping_window + 1 epochs later: keep the weights of
    # the recent epochs (and of the highest statistic so far) and score once, instead of every epoch
    kept: dict[int, list[dict[str, torch.Tensor]]] = {}
    best = 0
    point = None
    for epoch in tqdm(range(epochs), desc="BKD phase 1", unit="epoch", disable=not progress, leave=False):
        teacher.train(), student.train()
        total = torch.zeros((), device=dev)
        for idx in shuffled_batches(len(x), batch_size, generator, dev):
            total += _train_step(teacher, student, opt, x[idx], y[idx], config).student_confidence.sum()
        stats.append(float(total) / len(x))
        if not np.isfinite(stats[-1]):
            _diverged(epoch, lr, batch_size)
        best = epoch if stats[-1] > stats[best] else best
        kept[epoch] = [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in (teacher, student)]
        for old in [e for e in kept if e < epoch - tipping_window - 1 and e != best]:
            del kept[old]
        point = tipping_point(stats, window=tipping_window, fallback=tipping_fallback, final=epoch == epochs - 1)
        if point is not None:
            break
    scored = len(stats) - 1 if point is None else point.epoch
    for net, state in zip((teacher, student), kept[scored]):
        net.load_state_dict(state)
    teacher.eval(), student.eval()
    with torch.no_grad():
        parts = [agreement_probability(teacher(x[i]), student(x[i])).gather(1, y[i, None])[:, 0]
                 for i in ordered_batches(len(x), config.eval_batch_size, dev)]
    quality = torch.cat(parts).float().cpu().numpy()
    if not np.isfinite(quality).all():
        _diverged(scored, lr, batch_size)
    if point is None or point.rule != "peak":
        used = "nothing is flagged" if point is None else f"using epoch {point.epoch} ({point.rule})"
        warnings.warn(f"the tipping rule did not fire within {len(stats)} epochs; {used} "
                      f"(tipping_fallback={tipping_fallback!r})", RuntimeWarning, stacklevel=2)
    if point is None:
        none = np.zeros(len(quality), dtype=bool)
        return BKDLabelIssues(label_issues=none, label_quality=quality.astype(np.float32),
                              ranked_indices=np.argsort(quality, kind="stable"),
                              groups=np.zeros(len(quality), np.int64), threshold=float("nan"),
                              estimated_noise_rate=float("nan"), tipping_epoch=None,
                              tipping_found=False, epoch_statistic=stats, g4=none, below_threshold=none.copy(),
                              flag=flag, tipping_rule=None)
    detection = detect(quality)
    split = detection.split
    separation = float(np.sqrt(2.0) * abs(split.upper_mean - split.lower_mean)
                       / np.hypot(split.lower_std, split.upper_std))
    issues = detection.label_issues if flag == "g4" else detection.below_threshold
    return BKDLabelIssues(label_issues=issues, label_quality=quality.astype(np.float32),
                          ranked_indices=np.argsort(quality, kind="stable"), groups=detection.groups,
                          threshold=float(split.threshold), estimated_noise_rate=detection.estimated_noise_rate,
                          tipping_epoch=int(point.epoch), tipping_found=point.rule == "peak", epoch_statistic=stats,
                          g4=detection.label_issues, below_threshold=detection.below_threshold, flag=flag,
                          tipping_rule=point.rule, separation=separation)
