"""What the chapters measure on a finished run: per-epoch curves, the tipping point's robustness, the
Otsu split and groups, detection tables. Arrays (and :class:`bkd_core.train.RunResult`) in, numbers
and DataFrames out; :mod:`bkd_core.book.plots` draws them, :mod:`bkd_core.book` puts them into the prose.

Epochs: the package counts epochs from 0 (``history[key][e]`` is epoch ``e``, and
``metrics["tipping_epoch"]`` is such an index); the book shows them counted from 1, as a reader
counts passes over the data. :func:`epoch_number` converts, and every plot uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import CIFAR10_SPLITS, CIFAR100_SPLITS, LABEL_FILES, NoisyCIFAR, load_cifar_n_labels, resolve_data_dir
from ..method import GROUP_ALPHAS, detect, find_tipping_point
from ..metrics import detection_scores, flag_all_f1

__all__ = [
    "epoch_number",
    "noise_rate_table",
    "transition_matrix",
    "example_rows",
    "train_truth",
    "all_truth",
    "clean_noisy_means",
    "memorization_onset",
    "peak_epoch",
    "phase1_epochs",
    "tipping_by_window",
    "peak_prominence",
    "window_sensitivity",
    "scores_at_tipping",
    "otsu_comparison",
    "group_table",
    "detection_table",
]


def epoch_number(index: int | None) -> int | None:
    """The book's epoch number (from 1) of a 0-based epoch index; None stays None."""
    return None if index is None else int(index) + 1


def noise_rate_table(data_dir: str | os.PathLike | None = None):
    """Noise rate of every CIFAR-N split, computed from the label files in ``data_dir``.

    Needs only ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` (no images); a missing file's rows
    are left out. Returns a DataFrame with columns dataset, split, key, noisy (count), noise rate.
    """
    import pandas as pd

    root = resolve_data_dir(data_dir)
    rows = []
    for dataset, splits in (("cifar10", CIFAR10_SPLITS), ("cifar100", CIFAR100_SPLITS)):
        path = Path(root) / LABEL_FILES[dataset]
        if not path.is_file():
            continue
        labels = load_cifar_n_labels(path, dataset)
        clean = labels["clean_label"]
        for split, key in splits.items():
            noisy = labels[key] != clean
            rows.append({"dataset": {"cifar10": "CIFAR-10N", "cifar100": "CIFAR-100N"}[dataset], "split": split,
                         "key": key, "noisy": int(noisy.sum()), "noise rate": float(noisy.mean())})
    if not rows:
        raise FileNotFoundError(f"no CIFAR-N label file ({', '.join(LABEL_FILES.values())}) in {root}")
    return pd.DataFrame(rows)


def transition_matrix(clean: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalized noise transition matrix: ``T[i, j] = P(given = j | clean = i)``, float [C, C]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (np.asarray(clean), np.asarray(given)), 1.0)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1.0)


def example_rows(data: NoisyCIFAR, n: int = 24, noisy_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Rows of ``data`` to show: ``n`` random images, about ``noisy_fraction`` of them mislabelled."""
    rng = np.random.default_rng(seed)
    noisy, clean = np.flatnonzero(data.is_noisy), np.flatnonzero(~data.is_noisy)
    k = min(len(noisy), int(round(n * noisy_fraction)))
    rows = np.concatenate([rng.choice(noisy, k, replace=False),
                           rng.choice(clean, min(len(clean), n - k), replace=False)])
    return rng.permutation(rows)


def train_truth(result) -> np.ndarray:
    """bool [n_train]: truly mislabelled, for the rows trained on (the columns of per-sample history)."""
    return all_truth(result)[result.arrays["train_rows"]]


def all_truth(result) -> np.ndarray:
    """bool [N]: which rows of the run's (subset of the) training set are truly mislabelled."""
    return result.arrays["given_labels"] != result.arrays["clean_labels"]


def clean_noisy_means(per_sample: np.ndarray, is_noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch means of a per-sample history ``[E, n]`` over clean and over noisy samples -> two [E]."""
    values = np.asarray(per_sample, dtype=np.float64)
    is_noisy = np.asarray(is_noisy, dtype=bool)
    with np.errstate(invalid="ignore"):
        clean = values[:, ~is_noisy].mean(1) if (~is_noisy).any() else np.full(len(values), np.nan)
        noisy = values[:, is_noisy].mean(1) if is_noisy.any() else np.full(len(values), np.nan)
    return clean, noisy


def memorization_onset(fraction: Sequence[float], rise: float = 0.10) -> int | None:
    """Epoch index at which memorization of noisy samples takes off.

    The first epoch at which the fraction of noisy samples predicted as their (wrong) given label
    is at least ``rise`` (10 percentage points) above its lowest value so far. None if it never is.
    """
    lowest = np.inf
    for i, value in enumerate(np.asarray(fraction, dtype=np.float64)):
        if not np.isfinite(value):
            continue
        lowest = min(lowest, value)
        if value - lowest >= rise:
            return i
    return None


def peak_epoch(curve: Sequence[float]) -> int | None:
    """Index of the largest finite value of a per-epoch curve (first one on ties); None if none."""
    values = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmax(values))


def phase1_epochs(result) -> int:
    """Number of epochs trained in phase 1 (all of them if phase 2 never started)."""
    found = result.metrics.get("tipping_found_at_epoch")
    return int(result.metrics["epochs"]) if found is None else int(found) + 1


def tipping_by_window(curve: Sequence[float], windows: Sequence[int] = (1, 2, 3, 4)) -> dict[int, int | None]:
    """``{window: find_tipping_point(curve, window)}``: 0-based epoch indices (None: no peak)."""
    return {int(w): find_tipping_point(curve, window=int(w)) for w in windows}


def peak_prominence(curve: Sequence[float], index: int, window: int = 2) -> tuple[float, float]:
    """How far a tipping point stands out: (margin, typical step) of a per-epoch curve.

    ``margin`` is ``curve[index]`` minus the largest other value within ``window`` epochs on either
    side (> 0 for a point ``find_tipping_point`` accepts); ``typical step`` is the median absolute
    change from one epoch to the next up to ``index + window``, the curve's epoch-to-epoch wobble.
    A margin below the typical step means the rule fired on a fluctuation rather than a clear turn.
    """
    values = np.asarray(curve, dtype=np.float64)
    if not 0 <= index < len(values) or window < 1:
        raise ValueError(f"index must be in [0, {len(values)}) and window >= 1, got index {index}, window {window}")
    lo, hi = max(0, index - window), min(len(values), index + window + 1)
    neighbours = np.delete(values[lo:hi], index - lo)
    if not len(neighbours):
        raise ValueError("the curve has no other epoch within the window")
    steps = np.abs(np.diff(values[:hi]))
    return float(values[index] - np.nanmax(neighbours)), float(np.nanmedian(steps)) if len(steps) else float("nan")


def window_sensitivity(curve: Sequence[float], windows: Sequence[int] = (1, 2, 3, 4)):
    """Tipping point of the same curve for several window sizes (no retraining).

    Returns a DataFrame: window, tipping epoch and the epoch at which it is detected (both counted
    from 1; missing when no peak qualifies), and how many epochs the detection lags the peak.
    """
    import pandas as pd

    rows = []
    for w, tip in tipping_by_window(curve, windows).items():
        rows.append({"window": int(w), "tipping epoch": epoch_number(tip),
                     "detected at epoch": None if tip is None else epoch_number(tip + int(w)),
                     "lag (epochs)": None if tip is None else int(w)})
    return pd.DataFrame(rows).astype({"tipping epoch": "Int64", "detected at epoch": "Int64", "lag (epochs)": "Int64"})


def scores_at_tipping(result) -> tuple[np.ndarray, int, bool]:
    """The agreement scores the run's detector split, as the run saved them.

    A finished BKD run (:class:`bkd_core.train.RunResult`) saves the eval-pass scores of its tipping
    epoch as ``label_quality`` (float32 [N], in ``scores.npz``) and that epoch as
    ``metrics["tipping_epoch"]``. Without a tipping point ``label_quality`` holds the scores of the last
    epoch that has them; the run does not save that epoch's index, so it is read from
    ``history["eval_agreement"]`` (the last row without a missing value).

    Returns (scores float64 [N] over all rows of the subset, epoch index, found).
    """
    scores = np.asarray(result.label_quality, dtype=np.float64)
    tip = result.metrics.get("tipping_epoch")
    if tip is not None:
        return scores, int(tip), True
    have = np.flatnonzero(np.isfinite(np.asarray(result.history["eval_agreement"], dtype=np.float64)).all(1))
    return scores, int(have[-1]), False


def _row(name: str, mask: np.ndarray, is_noisy: np.ndarray) -> dict[str, Any]:
    s = detection_scores(mask, is_noisy)
    return {"flagged": name, "flagged fraction": float(np.mean(mask)), "precision": s["precision"],
            "recall": s["recall"], "F1": s["f1"]}


def otsu_comparison(scores: np.ndarray, is_noisy: np.ndarray, bins: int = 1000):
    """The official (``"bkd"``) and the classic Otsu criterion on the same scores.

    Returns a DataFrame with one column per criterion and one row per measure: threshold, class
    means, estimated noise rate (share below the threshold), and the F1 of flagging G4 (below the
    lower class mean: the official detector) and of flagging G3+G4, which is exactly everything
    below the threshold.
    """
    import pandas as pd

    columns = {}
    for criterion in ("bkd", "classic"):
        detection = detect(scores, bins=bins, criterion=criterion)
        split = detection.split
        columns[criterion] = {
            "threshold": split.threshold, "lower class mean": split.lower_mean, "upper class mean": split.upper_mean,
            "estimated noise rate": detection.estimated_noise_rate,
            "F1 of flagging G4": detection_scores(detection.label_issues, is_noisy)["f1"],
            "F1 of flagging G3+G4 (below threshold)": detection_scores(detection.below_threshold, is_noisy)["f1"],
        }
    return pd.DataFrame(columns)


def group_table(groups: np.ndarray, is_noisy: np.ndarray, alphas: Sequence[float] = GROUP_ALPHAS):
    """Per group G1..G4: alpha, size, share of all samples, share truly mislabelled."""
    import pandas as pd

    groups = np.asarray(groups)
    is_noisy = np.asarray(is_noisy, dtype=bool)
    rows = []
    for g in (1, 2, 3, 4):
        members = groups == g
        rows.append({"group": f"G{g}", "alpha": float(alphas[g - 1]), "samples": int(members.sum()),
                     "share of samples": float(members.mean()),
                     "truly mislabelled": float(is_noisy[members].mean()) if members.any() else float("nan")})
    return pd.DataFrame(rows).set_index("group")


def detection_table(masks: dict[str, np.ndarray], is_noisy: np.ndarray):
    """Precision, recall and F1 of several flagged-as-noisy masks (plus flagging everything)."""
    import pandas as pd

    is_noisy = np.asarray(is_noisy, dtype=bool)
    rows = [_row(name, np.asarray(mask, dtype=bool), is_noisy) for name, mask in masks.items()]
    rows.append(_row("everything (baseline)", np.ones_like(is_noisy), is_noisy))
    assert abs(rows[-1]["F1"] - flag_all_f1(float(is_noisy.mean()))) < 1e-9
    return pd.DataFrame(rows).set_index("flagged")

