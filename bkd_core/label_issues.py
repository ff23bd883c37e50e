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
from torch import nn
from tqdm.auto import tqdm

from .augment import ordered_batches, shuffled_batches
from .config import FEATURES, BKDConfig
from .errors import DivergedError
from .method import BKDStep, agreement_probability, bkd_step, detect, tipping_point
from .train import BKDTrainer, build_networks, build_optimizer

__all__ = ["BKDLabelIssues", "find_label_issues"]


@dataclass(frozen=True)
class BKDLabelIssues:
    """Result of :func:`find_label_issues` (N samples): every output of the one training.

    Attributes
    ----------
    label_issues : np.ndarray
        bool ``[N]``: the mask ``flag`` chose, ``g4`` or ``below_threshold``.
    label_quality : np.ndarray
        float32 ``[N]`` in ``[0, 1]``: the agreement probability of the given label at the tipping
        epoch (lower = worse).
    ranked : np.ndarray
        int64 ``[N]``: indices from the lowest quality to the highest.
    groups : np.ndarray
        int64 ``[N]`` in ``{1, 2, 3, 4}`` (chapter 08, "Groups"); all 0 when no tipping epoch was chosen.
    threshold : float
        The Otsu threshold; ``noise_rate`` is the fraction of scores below it (NaN when no tipping epoch
        was chosen).
    noise_rate : float
        Estimated fraction of wrong labels (the official estimate).
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
    flag : str
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
    ranked: np.ndarray
    groups: np.ndarray
    threshold: float
    noise_rate: float
    tipping_epoch: int | None
    tipping_found: bool
    epoch_statistic: list[float] = field(default_factory=list)
    g4: np.ndarray | None = None
    below_threshold: np.ndarray | None = None
    flag: str = "g4"
    tipping_rule: str | None = None
    separation: float = float("nan")


_FLAGS = ("g4", "below_threshold")
_MAX_CLASSES = 100_000


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, 2**{high.bit_length() - 1})"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _checked_features(features) -> np.ndarray:
    """The features as a C-contiguous float32 array [N, D] (a copy of a reversed or strided view), or one
    clear ValueError."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    raw = np.asarray(features)
    if raw.ndim != 2:
        raise ValueError(f"features must be [N, D] (one row per sample), got shape {raw.shape}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ValueError(f"features has shape {raw.shape}: at least one sample and one feature column are needed")
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)
            or raw.dtype == np.bool_):
        raise ValueError(f"features must be numbers, got dtype {raw.dtype}")
    if np.issubdtype(raw.dtype, np.floating):
        bad_rows = int((~np.isfinite(raw)).any(1).sum())
        if bad_rows:
            raise ValueError(f"features contain NaN or infinite values in {bad_rows} of {len(raw)} rows; "
                             "remove or impute those rows first")
    biggest = float(np.abs(raw).max())
    limit = float(np.finfo(np.float32).max)
    if biggest > limit:
        raise ValueError(f"features hold values up to {biggest:.3g} in magnitude, beyond float32's range "
                         f"({limit:.3g}): they would overflow to infinity; rescale (e.g. standardise) the columns")
    x = np.ascontiguousarray(raw, dtype=np.float32)
    if (x == x[:1]).all():
        warnings.warn(f"all {len(x)} feature vectors are identical (every column has zero variance): the "
                      "networks cannot tell the samples apart and the scores say nothing about the labels; "
                      "pass informative features", RuntimeWarning, stacklevel=3)
    return x


def _checked_labels(labels, n: int, num_classes) -> tuple[np.ndarray, int]:
    """The labels as int64 [N] and the number of classes C, or one clear ValueError."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"features must be [N, D] and labels [N], got {n} feature rows and labels of shape "
                         f"{y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())  # Python ints: no wrap-around of uint64 values
    if lo < 0:
        raise ValueError(f"labels must be class indices >= 0, found {lo}")
    if num_classes is None:
        distinct = len(np.unique(y))
        if hi + 1 > _MAX_CLASSES or distinct < (hi + 1) / 2:
            raise ValueError(f"labels use {distinct} distinct values between 0 and {hi}, so most class ids in "
                             f"[0, {hi + 1}) are unused: map them to 0..{distinct - 1} first "
                             "(np.unique(labels, return_inverse=True)[1]), or pass num_classes if the unused "
                             "classes are meant")
        c = hi + 1
    else:
        c = _check_int("num_classes", num_classes, 2)
    if c > _MAX_CLASSES:
        raise ValueError(f"num_classes={c:,} is more than the {_MAX_CLASSES:,} classes supported (two output "
                         "layers of that width would not fit in memory); map the labels to 0..K-1 for the K "
                         "classes present")
    if hi >= c or c < 2:
        raise ValueError(f"labels must lie in [0, {c}) with at least 2 classes, found values in [{lo}, {hi}]")
    return y.astype(np.int64), c


def _train_step(teacher: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, config: BKDConfig) -> BKDStep:
    """One phase-1 SGD step on the batch ``x`` [B, D], ``y`` [B] (the trainer's step, in fp32, without
    its autocast and gradient scaler)."""
    out = bkd_step(teacher(x), student(x), y, detach_teacher=config.detach_teacher,
                   reduction=config.loss_reduction)
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
        Standardised columns work best (the patch features are). Values must fit in float32.
    labels : array_like
        int ``[N]``, the given labels in ``[0, C)``.
    num_classes : int, optional
        C; default ``labels.max() + 1``, refused when most ids below it are unused (remap sparse ids).
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
        float32 ``[N]``, ``ranked`` int64 ``[N]`` (worst first), ``groups`` int64 ``[N]``, the
        threshold, noise estimate, tipping epoch and rule, and the ``separation`` diagnostic.

    Raises
    ------
    ValueError
        Bad inputs, each named before any training: features not ``[N, D]`` with ``N, D >= 1``, not
        finite or beyond float32; labels not integers in ``[0, C)``, sparse class ids, more than 100,000
        classes; ``epochs`` too few for the tipping rule; a non-integer ``num_classes``, ``epochs``,
        ``batch_size`` or ``seed``; an unknown ``flag`` or ``tipping_fallback``.
    bkd_core.errors.DivergedError
        The training turned non-finite (usually a learning rate too high for the feature scale).
    """
    if flag not in _FLAGS:
        raise ValueError(f"flag must be 'g4' or 'below_threshold', got {flag!r}")
    tipping_window = _check_int("tipping_window", tipping_window, 1)
    epochs = _check_int("epochs", epochs, 1)
    if epochs < 2 * tipping_window + 2:
        raise ValueError(f"epochs must be >= {2 * tipping_window + 2} for the tipping rule, got {epochs}")
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0, 2**63)
    tipping_point([], window=tipping_window, fallback=tipping_fallback)  # checks tipping_fallback
    x_np = _checked_features(features)
    y_np, c = _checked_labels(labels, len(x_np), num_classes)
    # the networks, the optimiser and the batch order come from the trainer's own helpers
    config = FEATURES.replace(model_widths=tuple(widths), epochs=epochs, batch_size=batch_size, lr=lr,
                              momentum=momentum, weight_decay=weight_decay, tipping_window=tipping_window,
                              seed=seed, device=device)
    dev = config.resolved_device()
    x, y = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)
    teacher, student = build_networks(config, BKDTrainer.network_names, c, dev, in_features=x.shape[1]).values()
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
                              ranked=np.argsort(quality, kind="stable"), groups=np.zeros(len(quality), np.int64),
                              threshold=float("nan"), noise_rate=float("nan"), tipping_epoch=None,
                              tipping_found=False, epoch_statistic=stats, g4=none, below_threshold=none.copy(),
                              flag=flag, tipping_rule=None)
    detection = detect(quality)
    split = detection.split
    separation = float(np.sqrt(2.0) * abs(split.upper_mean - split.lower_mean)
                       / np.hypot(split.lower_std, split.upper_std))
    issues = detection.label_issues if flag == "g4" else detection.below_threshold
    return BKDLabelIssues(label_issues=issues, label_quality=quality.astype(np.float32),
                          ranked=np.argsort(quality, kind="stable"), groups=detection.groups,
                          threshold=float(split.threshold), noise_rate=detection.estimated_noise_rate,
                          tipping_epoch=int(point.epoch), tipping_found=point.rule == "peak", epoch_statistic=stats,
                          g4=detection.label_issues, below_threshold=detection.below_threshold, flag=flag,
                          tipping_rule=point.rule, separation=separation)
