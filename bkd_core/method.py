"""The pure functions of Blind Knowledge Distillation (BKD).

Every function here is a plain function of tensors/arrays, without state, so that it can be tested
against an independent computation. Defaults reproduce the official implementation
(github.com/TimoK93/blind_knowledge_distillation, ``blind_knowledge_dist_training.py``, commit 56ae05a); switches
expose the quirks that are cheap to change (numbered as in the book's chapter 08).

Notation: ``B`` is the batch size, ``C`` the number of classes, ``N`` the number of scored samples.
Logits are real-valued float tensors ``[B, C]``; labels are integer tensors ``[B]`` with values in
``[0, C)``. The torch functions compute on the device of their inputs (no hidden ``.cpu()``);
:func:`otsu_split` is a once-per-run operation and goes through numpy on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GROUP_ALPHAS",
    "OTSU_VARIANCE_FLOOR",
    "Detection",
    "OtsuSplit",
    "TippingPoint",
    "agreement_probability",
    "assign_groups",
    "BKDStep",
    "bkd_step",
    "blind_distillation_loss",
    "no_peak_fallback",
    "detect",
    "find_tipping_point",
    "group_alpha",
    "otsu_split",
    "robust_targets",
    "soft_cross_entropy",
    "tipping_point",
]

#: alpha (weight of the student's prediction in the robust target) of groups G1..G4 (official defaults).
GROUP_ALPHAS: tuple[float, float, float, float] = (0.30, 0.45, 0.55, 0.70)

#: The official Otsu code clamps each class variance to at least 1e-5 before taking the square
#: root (``.clamp(0.00001).sqrt()``), so a class concentrated in one or two bins does not get a
#: near-zero standard deviation. A detail of the code only; we keep it as the default.
OTSU_VARIANCE_FLOOR: float = 1e-5

_REDUCTIONS = ("official", "mean")
_CRITERIA = ("bkd", "classic")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _check_logits_pair(teacher_logits: Tensor, student_logits: Tensor) -> None:
    if not isinstance(teacher_logits, Tensor) or not isinstance(student_logits, Tensor):
        raise TypeError("teacher_logits and student_logits must be torch tensors")
    if teacher_logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, C], got teacher_logits of shape "
                         f"{tuple(teacher_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
                         f"{tuple(student_logits.shape)} must have the same shape [B, C]")


def _check_labels(labels: Tensor, batch: int, num_classes: int, name: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch tensor of class indices")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    # A range check needs the values on the host: only done for CPU tensors, where it is free.
    # (On CUDA an out-of-range label triggers a device-side assert in the indexing below.)
    if labels.device.type == "cpu" and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), found values in [{lo}, {hi}]")
    return labels.long()


def _label_mask(labels: Tensor, like: Tensor) -> Tensor:
    """Boolean ``[B, C]`` mask, True at ``(i, labels[i])``, on ``like``'s device."""
    mask = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    return mask.scatter_(1, labels.to(like.device).unsqueeze(1), True)


# --------------------------------------------------------------------------------------------
# losses and probabilities
# --------------------------------------------------------------------------------------------
def blind_distillation_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    labels: Tensor,
    *,
    detach_teacher: bool = False,
    reduction: str = "official",
    blind: bool = True,
) -> Tensor:
    """Blind ("compensation") distillation loss: squared logit differences except at the label.

    ``sum_{i, c != labels[i]} (teacher_logits[i, c] - student_logits[i, c])**2`` divided by

    - ``B*C - 1`` for ``reduction="official"`` (the official code's denominator, chapter 08, section 3);
    - ``B*(C - 1)`` for ``reduction="mean"`` (the mean over the entries that enter the sum).

    The label entry is masked out of the sum, so the gradient with respect to both networks'
    label logits is exactly zero: the student never sees the given label through this loss.
    With ``blind=False`` (plain distillation, an ablation) the label entry enters the sum too: the
    denominator stays ``B*C - 1`` for ``"official"`` and becomes ``B*C`` for ``"mean"``.

    Parameters
    ----------
    teacher_logits : Tensor
        float ``[B, C]``.
    student_logits : Tensor
        float ``[B, C]``, same shape, dtype and device as ``teacher_logits``.
    labels : Tensor
        int ``[B]`` in ``[0, C)`` (the given, possibly noisy labels).
    detach_teacher : bool
        if True the teacher logits are detached and the gradient reaches the
        student only. Default False = official (the teacher is also pulled to the student,
        chapter 08, section 1).
    reduction : str
        ``"official"`` or ``"mean"``.
    blind : bool
        True (BKD): the given label's logit is left out. False: the student is matched to every
        logit of the teacher, the given label's included.

    Returns
    -------
    Tensor
        A scalar tensor (>= 0) on the inputs' device.

    Raises
    ------
    ValueError
        unknown ``reduction``, shape mismatch, ``C < 2``, or (CPU) labels out of range.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid options: {', '.join(_REDUCTIONS)}")
    _check_logits_pair(teacher_logits, student_logits)
    batch, num_classes = teacher_logits.shape
    if num_classes < 2:
        raise ValueError(f"the blind loss needs at least 2 classes, got C={num_classes}")
    labels = _check_labels(labels, batch, num_classes)
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    squared = (teacher_logits - student_logits).pow(2)
    if blind:  # masked_fill has an exactly-zero gradient at the filled (label) positions
        squared = squared.masked_fill(_label_mask(labels, squared), 0.0)
    if reduction == "official":
        denominator = batch * num_classes - 1
    else:
        denominator = batch * (num_classes - 1) if blind else batch * num_classes
    return squared.sum() / max(denominator, 1)


def agreement_probability(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Agreement distribution of teacher and student: ``normalize(softmax(z_T) * softmax(z_S))``.

    Computed in log space as ``softmax(log_softmax(z_T) + log_softmax(z_S))``, which is the same
    distribution but does not underflow for large logits (the plain product of two softmaxes can
    be 0 in every class, giving 0/0).

    Parameters
    ----------
    teacher_logits : Tensor
        float ``[B, C]``.
    student_logits : Tensor
        float ``[B, C]``.

    Returns
    -------
    Tensor
        float ``[B, C]`` with entries in ``[0, 1]`` and rows summing to 1, on the inputs' device.
        Gradients flow to both inputs (detach them yourself when only scoring).
        The per-sample BKD score is ``agreement_probability(...)[i, labels[i]]``, and the
        prediction is its argmax over classes.
    """
    _check_logits_pair(teacher_logits, student_logits)
    return torch.softmax(
        F.log_softmax(teacher_logits, dim=1) + F.log_softmax(student_logits, dim=1), dim=1
    )


def robust_targets(
    labels: Tensor,
    student_probs: Tensor,
    alpha: Tensor | float,
    *,
    detach_student: bool = False,
) -> Tensor:
    """Phase-2 soft targets: ``r = (1-a)*onehot(y) + a*p_S``; ``r = r**(1+a)``; ``r / r.sum(1)``.

    Parameters
    ----------
    labels : Tensor
        int ``[B]`` in ``[0, C)``.
    student_probs : Tensor
        float ``[B, C]``, the student's softmax (rows sum to 1).
    alpha : Tensor | float
        float ``[B]`` per-sample weight in ``[0, 1]`` (see :func:`group_alpha`), or a
        Python float used for every sample. ``alpha = 0`` gives the one-hot label.
    detach_student : bool
        if True the targets carry no gradient to ``student_probs``. Default False
        = official (chapter 08, section 2: in phase 2 the student receives gradients through the
        targets, which contain the label).

    Returns
    -------
    Tensor
        float ``[B, C]`` (dtype/device of ``student_probs``), entries in ``[0, 1]``, rows summing to 1.
    """
    if not isinstance(student_probs, Tensor) or student_probs.ndim != 2:
        raise ValueError("student_probs must be a float tensor of shape [B, C]")
    batch, num_classes = student_probs.shape
    labels = _check_labels(labels, batch, num_classes)
    if detach_student:
        student_probs = student_probs.detach()
    if isinstance(alpha, Tensor):
        if alpha.shape not in ((batch,), ()):
            raise ValueError(f"alpha must have shape [B] = [{batch}] (or be a scalar), "
                             f"got {tuple(alpha.shape)}")
        a = alpha.to(device=student_probs.device, dtype=student_probs.dtype)
        a = a.reshape(-1, 1) if a.ndim == 1 else a
    else:
        a = float(alpha)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {a}")
    onehot = _label_mask(labels, student_probs).to(student_probs.dtype)
    r = (1.0 - a) * onehot + a * student_probs
    r = r.pow(1.0 + a)
    return r / r.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy with soft targets: batch mean of ``-(targets * log_softmax(logits)).sum(1)``.

    Parameters
    ----------
    logits : Tensor
        float ``[B, C]``.
    targets : Tensor
        float ``[B, C]``, rows are probability distributions (e.g. :func:`robust_targets`
        or a one-hot label, for which this equals ``F.cross_entropy(logits, labels)``).

    Returns
    -------
    Tensor
        A scalar tensor (>= 0 for valid targets). Gradients flow to both arguments.
    """
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must "
                         "both have shape [B, C]")
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@dataclass(frozen=True)
class BKDStep:
    """Result of :func:`bkd_step` for a batch of ``B`` samples.

    Attributes
    ----------
    loss : Tensor
        scalar, ``cross_entropy + compensation``: what the SGD step minimises.
    cross_entropy : Tensor
        scalar, the teacher's cross-entropy on the given labels (phase 1) or on the
        robust targets (phase 2).
    compensation : Tensor
        scalar, :func:`blind_distillation_loss`.
    agreement : Tensor
        float ``[B]``, the agreement probability of the given label (no gradient).
    teacher_p : Tensor
        float ``[B]``, the teacher's probability of the given label (no gradient).
    student_p : Tensor
        float ``[B]``, the student's probability of the given label (no gradient).
    student_confidence : Tensor
        float ``[B]``, the student's top probability (no gradient); its mean
        over an epoch is the tipping rule's statistic.
    """

    loss: Tensor
    cross_entropy: Tensor
    compensation: Tensor
    agreement: Tensor
    teacher_p: Tensor
    student_p: Tensor
    student_confidence: Tensor


def bkd_step(
    teacher_logits: Tensor,
    student_logits: Tensor,
    labels: Tensor,
    *,
    alpha: Tensor | None = None,
    detach_teacher: bool = False,
    reduction: str = "official",
    detach_robust_target: bool = False,
    student_sees_label: bool = False,
) -> BKDStep:
    """BKD's losses and per-sample statistics for one batch (the training step without the SGD update).

    ``compensation = blind_distillation_loss(z_T, z_S, y)``; phase 1 (``alpha`` None):
    ``cross_entropy = CE(z_T, y)``; phase 2: ``cross_entropy = soft_CE(z_T, robust_targets(y,
    softmax(z_S), alpha))``; ``loss = cross_entropy + compensation``. The statistics are computed
    without gradient from the same logits. The trainer (:class:`bkd_core.train.BKDTrainer`) and
    :func:`bkd_core.label_issues.find_label_issues` both call this.

    Parameters
    ----------
    teacher_logits : Tensor
        float ``[B, C]``.
    student_logits : Tensor
        float ``[B, C]``.
    labels : Tensor
        int ``[B]`` in ``[0, C)``, the given labels.
    alpha : Tensor | None
        float ``[B]``, each sample's robust-target weight (phase 2, :func:`group_alpha`), or
        None for phase 1.
    detach_teacher : bool
        see :func:`blind_distillation_loss` (official False).
    reduction : str
        see :func:`blind_distillation_loss` (official ``"official"``).
    detach_robust_target : bool
        see :func:`robust_targets`' ``detach_student`` (official False).
    student_sees_label : bool
        False (BKD): the blind student. True: plain distillation, the compensation loss also matches the
        given label's logit (``blind=False`` in :func:`blind_distillation_loss`); an ablation.

    Returns
    -------
    BKDStep
        :class:`BKDStep`.
    """
    compensation = blind_distillation_loss(teacher_logits, student_logits, labels, detach_teacher=detach_teacher,
                                           reduction=reduction, blind=not student_sees_label)
    probs_s = student_logits.softmax(1)
    if alpha is None:
        ce = F.cross_entropy(teacher_logits, labels)
    else:
        ce = soft_cross_entropy(teacher_logits, robust_targets(labels, probs_s, alpha,
                                                               detach_student=detach_robust_target))
    loss = ce + compensation
    with torch.no_grad():
        rows = torch.arange(len(labels), device=labels.device)
        return BKDStep(loss=loss, cross_entropy=ce, compensation=compensation,
                       agreement=agreement_probability(teacher_logits, student_logits)[rows, labels],
                       teacher_p=teacher_logits.softmax(1)[rows, labels], student_p=probs_s[rows, labels],
                       student_confidence=probs_s.detach().max(1).values)


# --------------------------------------------------------------------------------------------
# tipping point
# --------------------------------------------------------------------------------------------
def find_tipping_point(
    values: Sequence[float], window: int = 2, *, min_length: int | None = None
) -> int | None:
    """First strict local maximum of a per-epoch statistic (the generalizing->overfitting point).

    Returns the first index ``i`` with ``window <= i <= len(values) - 1 - window`` such that
    ``values[i]`` is strictly greater than every other value in ``values[i-window : i+window+1]``,
    or None if there is none (too short, monotone, a plateau: equal values are not strictly
    greater, NaNs never win). The peak can only be seen ``window`` epochs after it happened.

    Parameters
    ----------
    values : Sequence[float]
        the epoch statistics so far (the student's mean max probability), a sequence of
        floats, 1-D tensor or array.
    window : int
        how many neighbours on each side must be smaller (official: 2), ``>= 1``.
    min_length : int | None
        return None while ``len(values) < min_length``. Default None means
        ``2*window + 2``, which for ``window=2`` is the official rule "needs at least 6
        epochs" (one more than the 5 values a window needs: a peak at index 2 is reported at
        epoch 5, not 4). Pass 0 for the pure window rule.

    Raises
    ------
    ValueError
        ``window < 1`` or ``min_length < 0``.
    """
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    window = int(window)
    if min_length is None:
        min_length = 2 * window + 2
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    vals = [float(v) for v in values]
    n = len(vals)
    if n < min_length:
        return None
    for i in range(window, n - window):
        centre = vals[i]
        if all(centre > vals[j] for j in range(i - window, i + window + 1) if j != i):
            return i
    return None


@dataclass(frozen=True)
class TippingPoint:
    """Result of :func:`tipping_point`.

    ``epoch``: 0-based index into the curve of the epoch whose scores fix the groups;
    ``rule``: ``"peak"`` when the official strict-local-maximum rule fired, ``"fallback"`` when
    the configured fallback epoch was taken because no peak had appeared in time, ``"highest"``
    when training ended without a peak and the epoch of the highest statistic was taken.
    """

    epoch: int
    rule: Literal["peak", "fallback", "highest"]


def _check_fallback(fallback) -> None:
    if fallback is not None and fallback != "highest" and (
            isinstance(fallback, (bool, str)) or int(fallback) != fallback or fallback < 0):
        raise ValueError(f"fallback must be None, 'highest' or an integer >= 0 (a 0-based epoch), got {fallback!r}")


def no_peak_fallback(
    curve: Sequence[float], *, window: int = 2, fallback: int | Literal["highest"] | None = None,
    final: bool = False,
) -> TippingPoint | None:
    """What BKD does when the peak rule has not fired: the one definition, used by the trainer
    (``BKDConfig.tipping_fallback``) and by :func:`bkd_core.label_issues.find_label_issues`.

    - ``fallback`` an integer (not in the official code, chapter 08, section 5): epoch ``fallback`` once
      ``len(curve) == fallback + window``, the moment a peak at ``fallback`` would have been seen
      (or, with ``final``, once ``len(curve) >= fallback + window``); rule ``"fallback"``;
    - ``fallback="highest"``: when training ends (``final``), the first epoch with the highest
      statistic; rule ``"highest"``;
    - ``fallback=None`` (official): never; phase 2 does not start and nothing is flagged.

    Parameters
    ----------
    curve : Sequence[float]
        the per-epoch statistic so far, ``[E]``.
    window : int
        the peak rule's window (the delay before a peak can be seen), ``>= 1``.
    fallback : int | Literal['highest'] | None
        an integer ``>= 0`` (a 0-based epoch), ``"highest"`` or None.
    final : bool
        True after the last epoch of training (no later call will come).

    Returns
    -------
    TippingPoint | None
        :class:`TippingPoint`, or None while (or, with ``final``, because) no rule applies.

    Raises
    ------
    ValueError
        ``fallback`` is none of the above.
    """
    _check_fallback(fallback)
    if fallback == "highest":
        if not final or len(curve) == 0:
            return None
        values = np.asarray([float(v) for v in curve], dtype=np.float64)
        return TippingPoint(epoch=int(np.argmax(np.where(np.isnan(values), -np.inf, values))), rule="highest")
    if fallback is not None and (len(curve) == fallback + window or (final and len(curve) >= fallback + window)):
        return TippingPoint(epoch=int(fallback), rule="fallback")
    return None


def tipping_point(
    curve: Sequence[float], *, window: int = 2, fallback: int | Literal["highest"] | None = None,
    final: bool = False,
) -> TippingPoint | None:
    """The tipping epoch the training loop acts on after the epochs in ``curve``, and its rule.

    Meant to be called once per epoch with the growing curve (the epoch statistics so far), until
    it returns a point:

    1. ``"peak"``: :func:`find_tipping_point` ``(curve, window)``, the official rule (first
       strict local maximum, seen ``window`` epochs late, at least ``2*window + 2`` values);
    2. otherwise :func:`no_peak_fallback` ``(curve, window=window, fallback=fallback, final=final)``
       (not in the official code, chapter 08, section 5).
       An integer ``fallback`` is tested for equality ``len(curve) == fallback + window``: called
       with a longer curve without a peak it returns None (unless ``final``), as the training loop
       never asks again after it fired.

    Parameters
    ----------
    curve : Sequence[float]
        the per-epoch statistic so far (the student's mean max probability), ``[E]``: a
        sequence of floats, 1-D tensor or array.
    window : int
        neighbours on each side that must be smaller (official 2), ``>= 1``.
    fallback : int | Literal['highest'] | None
        see :func:`no_peak_fallback`; None (official) means phase 2 may never start.
    final : bool
        True after the last epoch of training.

    Returns
    -------
    TippingPoint | None
        :class:`TippingPoint`, or None while neither rule fires.

    Raises
    ------
    ValueError
        ``window < 1`` (from :func:`find_tipping_point`) or a bad ``fallback``.
    """
    _check_fallback(fallback)
    peak = find_tipping_point(curve, window)
    if peak is not None:
        return TippingPoint(epoch=peak, rule="peak")
    return no_peak_fallback(curve, window=window, fallback=fallback, final=final)


# --------------------------------------------------------------------------------------------
# Otsu split and groups
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OtsuSplit:
    """Result of :func:`otsu_split`; all values in ``[0, 1]``.

    ``threshold``: the chosen split ``s / bins`` (the left edge of the first upper-class bin);
    ``lower_mean``/``upper_mean``: the class means and ``lower_std``/``upper_std`` the class
    standard deviations (with the variance floor applied), computed from the histogram with bin
    left edges as values. Always ``lower_mean < threshold <= upper_mean``.
    """

    threshold: float
    lower_mean: float
    upper_mean: float
    lower_std: float
    upper_std: float


def _scores_to_numpy(scores) -> np.ndarray:
    if isinstance(scores, Tensor):
        arr = scores.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("scores is empty: nothing to split")
    if np.isnan(arr).any():
        raise ValueError(f"scores contain {int(np.isnan(arr).sum())} NaN value(s)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"scores must lie in [0, 1] (they are probabilities), found [{lo}, {hi}]")
    return arr


def otsu_split(
    scores,
    *,
    bins: int = 1000,
    criterion: str = "bkd",
    variance_floor: float = OTSU_VARIANCE_FLOOR,
) -> OtsuSplit:
    """Split scores in ``[0, 1]`` into a low (likely noisy) and a high class, Otsu style.

    Exactly the official procedure (``blind_knowledge_dist_training.py``; the book's chapter 08, section 11):

    1. histogram of the scores with ``bins`` equal bins on ``[0, 1]`` (``np.histogram(scores,
       bins, range=(0, 1))``: bins are half-open except the last, so 1.0 lands in the last bin);
       each bin ``k`` stands for its left edge ``k / bins``;
    2. for every split bin ``s`` in ``2 .. bins-3`` (``2..997`` for 1000 bins): lower class =
       bins ``< s``, upper class = bins ``>= s``; counts ``n1, n2``, means ``mu1, mu2`` and
       standard deviations ``sigma_j = sqrt(max(var_j, variance_floor))`` from the histogram
       (population variance); ``mu`` = mean of the raw scores;
    3. criterion ``"bkd"``: ``(n1 (mu1-mu)^2 + n2 (mu2-mu)^2) / (n1 sigma1 + n2 sigma2)``
       (a Fisher-like ratio, chapter 08, section 11); ``"classic"``: only the numerator (Otsu's
       between-class variance, up to a constant);
    4. the first ``s`` with the largest criterion wins; ``threshold = s / bins``.

    Splits with an empty class (or a zero denominator when ``variance_floor == 0``) are skipped.
    Vectorized with cumulative sums over the histogram (O(N + bins)); the scores are copied to
    the host as float64 numpy (this runs once per training run, so the transfer is irrelevant).

    Parameters
    ----------
    scores
        1-D tensor (any device, any float dtype), array or sequence, values in ``[0, 1]``.
    bins : int
        number of histogram bins (official 1000), ``>= 5``.
    criterion : str
        ``"bkd"`` (official) or ``"classic"``.
    variance_floor : float
        lower clamp of each class variance (official 1e-5, see
        :data:`OTSU_VARIANCE_FLOOR`); 0 disables it.

    Returns
    -------
    OtsuSplit
        :class:`OtsuSplit` of the chosen split.

    Raises
    ------
    ValueError
        empty scores, NaN, values outside ``[0, 1]``, bad ``bins``/``criterion``, or no
        split leaves both classes non-empty (all scores within bins ``< 2`` or ``>= bins-2``, or
        in a single bin).
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid options: {', '.join(_CRITERIA)}")
    if isinstance(bins, bool) or int(bins) != bins or bins < 5:
        raise ValueError(f"bins must be an integer >= 5, got {bins!r}")
    bins = int(bins)
    if not variance_floor >= 0.0:
        raise ValueError(f"variance_floor must be >= 0, got {variance_floor}")
    x = _scores_to_numpy(scores)

    counts, _ = np.histogram(x, bins=bins, range=(0.0, 1.0))
    counts = counts.astype(np.float64)
    k = np.arange(bins, dtype=np.float64)  # bin index; value of bin k is k / bins
    # prefix sums over bins < s for s = 0..bins (integer-valued, exact in float64 for N*bins^2 < 2^53)
    n_cum = np.concatenate(([0.0], np.cumsum(counts)))
    s1_cum = np.concatenate(([0.0], np.cumsum(counts * k)))
    s2_cum = np.concatenate(([0.0], np.cumsum(counts * k * k)))
    total_n, total_s1, total_s2 = n_cum[-1], s1_cum[-1], s2_cum[-1]

    s = np.arange(2, bins - 2)
    n1, sum1, sq1 = n_cum[s], s1_cum[s], s2_cum[s]
    n2, sum2, sq2 = total_n - n1, total_s1 - sum1, total_s2 - sq1
    valid = (n1 > 0) & (n2 > 0)
    mu = float(x.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = sum1 / n1 / bins
        mu2 = sum2 / n2 / bins
        # population variance in value units: (n*sum k^2 - (sum k)^2) / n^2 / bins^2
        var1 = np.maximum(n1 * sq1 - sum1 * sum1, 0.0) / (n1 * n1) / (bins * bins)
        var2 = np.maximum(n2 * sq2 - sum2 * sum2, 0.0) / (n2 * n2) / (bins * bins)
        sigma1 = np.sqrt(np.maximum(var1, variance_floor))
        sigma2 = np.sqrt(np.maximum(var2, variance_floor))
        between = n1 * (mu1 - mu) ** 2 + n2 * (mu2 - mu) ** 2
        if criterion == "bkd":
            denominator = n1 * sigma1 + n2 * sigma2
            valid &= denominator > 0
            crit = between / denominator
        else:
            crit = between
    crit = np.where(valid & np.isfinite(crit), crit, -np.inf)
    if not np.isfinite(crit).any():
        raise ValueError(
            f"no split of the {bins}-bin histogram leaves both classes non-empty: the scores "
            f"(range [{x.min():.4g}, {x.max():.4g}]) must occupy at least two bins, not all below "
            f"{2 / bins:.4g} or all at/above {(bins - 2) / bins:.4g}"
        )
    best = int(np.argmax(crit))  # first maximum, as torch.argmax in the official code
    return OtsuSplit(
        threshold=float(s[best]) / bins,
        lower_mean=float(mu1[best]),
        upper_mean=float(mu2[best]),
        lower_std=float(sigma1[best]),
        upper_std=float(sigma2[best]),
    )


def assign_groups(scores, split: OtsuSplit) -> Tensor:
    """Confidence groups of the scores, as the official code forms them (the book's chapter 05).

    With ``t = split.threshold``, ``lo = split.lower_mean``, ``up = split.upper_mean``:
    1: ``p >= up``; 2: ``t <= p < up``; 3: ``lo <= p < t``; 4: ``p < lo``. G4 is what the official
    code reports as noisy.

    Comparisons are made in the scores' own dtype (a float32 score equal to ``float32(t)`` is
    ``>= t``), as in the official code.

    Parameters
    ----------
    scores
        float ``[N]`` in ``[0, 1]`` (tensor on any device, or array).
    split : OtsuSplit
        the result of :func:`otsu_split`.

    Returns
    -------
    Tensor
        int64 ``[N]`` with values in ``{1, 2, 3, 4}``, on the scores' device (CPU for arrays).
    """
    p = scores if isinstance(scores, Tensor) else torch.as_tensor(np.asarray(scores))
    if p.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(p.shape)}")
    if not p.dtype.is_floating_point:
        p = p.to(torch.get_default_dtype())
    groups = torch.full(p.shape, 4, dtype=torch.int64, device=p.device)
    groups = torch.where(p >= split.lower_mean, torch.full_like(groups, 3), groups)
    groups = torch.where(p >= split.threshold, torch.full_like(groups, 2), groups)
    groups = torch.where(p >= split.upper_mean, torch.full_like(groups, 1), groups)
    return groups


def group_alpha(groups: Tensor, alphas: Sequence[float] = GROUP_ALPHAS) -> Tensor:
    """Per-sample alpha of the groups: group ``g`` (1..4) gets ``alphas[g - 1]``.

    Parameters
    ----------
    groups : Tensor
        int ``[N]`` in ``{1, .., len(alphas)}`` (from :func:`assign_groups`).
    alphas : Sequence[float]
        alpha of G1..G4, each in ``[0, 1]`` (official ``(0.30, 0.45, 0.55, 0.70)``).

    Returns
    -------
    Tensor
        float32 ``[N]`` on the groups' device. Compute it once for the whole training set and index
        it per batch (this function checks the group values, which needs a host sync).
    """
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty sequence of values in [0, 1], got {alphas}")
    groups = torch.as_tensor(groups)
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor, got dtype {groups.dtype}")
    if groups.numel() > 0:
        lo, hi = int(groups.min()), int(groups.max())
        if lo < 1 or hi > len(alphas):
            raise ValueError(f"groups must lie in 1..{len(alphas)}, found values in [{lo}, {hi}]")
    table = torch.tensor(alphas, dtype=torch.float32, device=groups.device)
    return table[groups.long() - 1]



@dataclass(frozen=True)
class Detection:
    """Result of :func:`detect` on ``N`` scores.

    Attributes
    ----------
    split : OtsuSplit
        the :class:`OtsuSplit` of the scores.
    groups : np.ndarray
        int64 ``[N]`` numpy array in ``{1, 2, 3, 4}`` (:func:`assign_groups`).
    label_issues : np.ndarray
        bool ``[N]``, True for samples whose group is in ``noisy_groups`` (official:
        G4 only, chapter 08, section 10).
    below_threshold : np.ndarray
        bool ``[N]``, ``scores < split.threshold`` (G3 and G4).
    """

    split: OtsuSplit
    groups: np.ndarray
    label_issues: np.ndarray
    below_threshold: np.ndarray

    @property
    def estimated_noise_rate(self) -> float:
        """The share of scores below the Otsu threshold: BKD's estimate of the noise rate."""
        return float(self.below_threshold.mean())


def detect(
    scores,
    *,
    bins: int = 1000,
    criterion: str = "bkd",
    noisy_groups: int | Sequence[int] = (4,),
) -> Detection:
    """BKD's noise detection from the scores of the tipping epoch, as in the official code.

    ``split = otsu_split(scores, bins=bins, criterion=criterion)``, ``groups =
    assign_groups(scores, split)``, ``label_issues = groups in noisy_groups``, ``below_threshold =
    scores < split.threshold``. The comparisons are made in the scores' own dtype (as in
    :func:`assign_groups`): pass float64 scores for float64 comparisons.

    Parameters
    ----------
    scores
        float ``[N]`` in ``[0, 1]``, the agreement probabilities of the given labels (1-D
        tensor on any device, array or sequence; bfloat16 tensors are compared in float32).
    bins : int
        Otsu histogram bins (official 1000), ``>= 5``.
    criterion : str
        ``"bkd"`` (official) or ``"classic"``, see :func:`otsu_split`.
    noisy_groups : int | Sequence[int]
        the groups reported as label issues, a non-empty subset of ``1..4`` (or one
        group); official ``(4,)``.

    Returns
    -------
    Detection
        :class:`Detection` with numpy arrays on the host.

    Raises
    ------
    ValueError
        bad ``noisy_groups``, or anything :func:`otsu_split` rejects (empty, NaN or
        out-of-range scores, bad ``bins`` or ``criterion``, no valid split).
    """
    groups_wanted = (noisy_groups,) if isinstance(noisy_groups, int) else tuple(noisy_groups)
    if not groups_wanted or any(isinstance(g, bool) or g not in (1, 2, 3, 4) for g in groups_wanted):
        raise ValueError(f"noisy_groups must be a non-empty subset of 1..4 (official: (4,)), got {noisy_groups!r}")
    if isinstance(scores, Tensor):  # numpy has no bfloat16: such scores are compared in float32
        scores = scores.detach().cpu()
        scores = (scores.float() if scores.dtype == torch.bfloat16 else scores).numpy()
    values = np.asarray(scores)
    split = otsu_split(values, bins=bins, criterion=criterion)
    groups = assign_groups(values, split).numpy()
    return Detection(split=split, groups=groups, label_issues=np.isin(groups, groups_wanted),
                     below_threshold=values < split.threshold)
