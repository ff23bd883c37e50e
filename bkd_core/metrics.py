"""Noise-detection metrics (the LMNL-2022 challenge metric, as the official code scores its detection)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["detection_scores", "detection_metrics", "detector_summary", "epoch_curves", "flag_all_f1", "rank_auc",
           "ranking_auc", "run_header"]


def _as_bool_array(mask, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        arr = mask.detach().cpu().numpy()
    else:
        arr = np.asarray(mask)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        arr = arr.astype(bool)
    return arr


def detection_scores(predicted_noisy, is_noisy) -> dict[str, float]:
    """Precision, recall and F1 of a predicted noisy-label mask.

    Parameters
    ----------
    predicted_noisy
        bool ``[N]`` (numpy or torch, any device; 0/1 integers accepted), True
        for samples flagged as mislabelled.
    is_noisy
        bool ``[N]``, the truth (``noisy_label != clean_label``).

    Returns
    -------
    dict[str, float]
        ``{"precision", "recall", "f1"}``, Python floats in ``[0, 1]``. A ratio whose denominator is
        zero (nothing flagged, nothing noisy) is 0.0, as ``sklearn``'s ``zero_division=0``.

    Raises
    ------
    ValueError
        masks of different lengths, not 1-D, or non-boolean values.
    """
    pred = _as_bool_array(predicted_noisy, "predicted_noisy")
    truth = _as_bool_array(is_noisy, "is_noisy")
    if pred.shape != truth.shape:
        raise ValueError(f"predicted_noisy has {pred.size} entries but is_noisy has {truth.size}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def detection_metrics(predicted_noisy, is_noisy, *, prefix: str = "detection") -> dict[str, float]:
    """:func:`detection_scores` under the keys of a run's ``metrics.json``: ``{prefix}_precision``,
    ``{prefix}_recall``, ``{prefix}_f1``."""
    return {f"{prefix}_{key}": value for key, value in detection_scores(predicted_noisy, is_noisy).items()}


def detector_summary(label_issues, is_noisy) -> dict[str, float]:
    """What every detector's ``metrics.json`` reports of its label-issue mask (bool ``[N]``) against the
    truth (bool ``[N]``): ``flagged_fraction``, ``flag_all_f1`` (:func:`flag_all_f1` at this noise rate)
    and :func:`detection_metrics`."""
    truth = _as_bool_array(is_noisy, "is_noisy")
    return {"flagged_fraction": float(_as_bool_array(label_issues, "label_issues").mean()),
            "flag_all_f1": flag_all_f1(float(truth.mean())), **detection_metrics(label_issues, truth)}


def run_header(kind: str, data, config) -> dict:
    """The fields every run's ``metrics.json`` starts with: the method (``kind``), the data (a
    :class:`~bkd_core.data.NoisyCIFAR`: the subset the run scored) and the configuration's profile and seed."""
    return {"kind": kind, "dataset": data.dataset, "split": data.split, "profile": config.profile,
            "seed": config.seed, "num_samples": len(data.train_labels), "true_noise_rate": float(data.noise_rate)}


def flag_all_f1(noise_rate: float) -> float:
    """F1 of the trivial detector that flags every sample: ``2r / (1 + r)``.

    (Precision is ``r``, recall 1.) The baseline every detector must beat: for CIFAR-10N aggre
    (r = 0.0901) it is 0.165, for worst (r = 0.4021) 0.574.

    Parameters
    ----------
    noise_rate : float
        fraction ``r`` of mislabelled samples, in ``[0, 1]``.
    """
    r = float(noise_rate)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"noise_rate must lie in [0, 1], got {noise_rate}")
    return 2.0 * r / (1.0 + r)


def ranking_auc(quality, is_noisy) -> float:
    """How well a per-sample score ranks the mislabelled samples first: the ROC-AUC of ``-quality``.

    The probability that a randomly drawn mislabelled sample scores lower than a randomly drawn
    clean one (ties count half). Unlike F1 it needs no threshold, so it compares the scores of
    detectors that flag different amounts: 0.5 is chance, 1.0 a perfect ranking.

    Parameters
    ----------
    quality
        float ``[N]`` (numpy or torch), low = likely mislabelled (BKD's agreement
        probability, cleanlab's label quality).
    is_noisy
        bool ``[N]``, the truth (``noisy_label != clean_label``).

    Returns
    -------
    float
        A Python float in ``[0, 1]``; NaN when every sample is clean or every sample is noisy.

    Raises
    ------
    ValueError
        arrays of different lengths, not 1-D, non-boolean truth or non-finite scores.
    """
    from sklearn.metrics import roc_auc_score

    truth = _as_bool_array(is_noisy, "is_noisy")
    score = quality.detach().cpu().numpy() if isinstance(quality, torch.Tensor) else np.asarray(quality, dtype=float)
    if score.shape != truth.shape:
        raise ValueError(f"quality has shape {score.shape} but is_noisy has {truth.shape}: give one score per sample")
    if not np.isfinite(score).all():
        rows = np.flatnonzero(~np.isfinite(score))
        raise ValueError(f"quality contains {len(rows)} NaN or infinite score(s) "
                         f"(first at row {int(rows[0])}: {score[rows[0]]})")
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, -score))


def rank_auc(quality: np.ndarray, is_noisy: np.ndarray) -> float | None:
    """:func:`ranking_auc` in NumPy alone (the Mann-Whitney statistic on average ranks, ties counted half), for
    the training path, which does not import scikit-learn; None when every sample is clean or every one noisy.

    ``quality`` float ``[N]`` (low = likely mislabelled), ``is_noisy`` bool ``[N]``.
    """
    truth = _as_bool_array(is_noisy, "is_noisy")
    score = -np.asarray(quality, dtype=np.float64)
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="stable")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each group of ties
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


#: per-sample keys of an epoch file that say whether a network predicts the given label (BKD: the teacher)
FIT_KEYS = ("train_teacher_fits", "train_predicts_label")


def epoch_curves(history: dict[str, list[float]], epochs: list[dict[str, np.ndarray]], is_noisy: np.ndarray,
                 train_rows: np.ndarray) -> dict[str, list[float | None]]:
    """A run's per-epoch curves, small enough to commit beside its metrics and plot without retraining.

    The clean labels enter here only, to evaluate: the shares of the mislabelled and of the correctly labelled
    training images whose given label the network predicts in the training pass (``fit_mislabelled``,
    ``fit_clean``: memorization shows as the first rising), and the ROC-AUC of the eval-mode agreement score
    for mislabelled against clean samples (``agreement_auc``, epochs that scored every sample).

    Parameters
    ----------
    history : dict of str to list of float
        The trainer's per-epoch scalars (loss, mean_max_student, test_acc, ...), each ``[E]``.
    epochs : list of dict
        Each epoch's per-sample arrays (``train_*`` over the training rows ``[n_train]``, ``eval_agreement``
        over all samples ``[N]``), ``E`` of them.
    is_noisy : bool ndarray, shape (N,)
    train_rows : int ndarray, shape (n_train,)
        The rows of the samples the ``train_*`` arrays are about.

    Returns
    -------
    dict of str to list
        ``epoch`` (from 1) and one list ``[E]`` per curve, None where an epoch has no value.
    """
    def clean(values: list[float]) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in values]

    curves: dict[str, list[float | None]] = {"epoch": [float(e + 1) for e in range(len(epochs))]}
    curves.update({key: clean(values) for key, values in history.items()})
    noisy_train = np.asarray(is_noisy, dtype=bool)[train_rows]
    fits: dict[str, list[float | None]] = {"fit_mislabelled": [], "fit_clean": []}
    auc: list[float | None] = []
    for arrays in epochs:
        fit = next((arrays[k].astype(np.float64) for k in FIT_KEYS if k in arrays), None)
        for name, rows in (("fit_mislabelled", noisy_train), ("fit_clean", ~noisy_train)):
            fits[name].append(float(fit[rows].mean()) if fit is not None and rows.any() else None)
        scores = arrays.get("eval_agreement")
        auc.append(rank_auc(scores, is_noisy) if scores is not None and np.isfinite(scores).all() else None)
    return {**curves, **fits, "agreement_auc": auc}
