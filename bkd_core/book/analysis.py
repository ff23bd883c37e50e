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
    "loss_spikes",
    "phase1_epochs",
    "tipping_by_window",
    "peak_prominence",
    "window_sensitivity",
    "scores_at_tipping",
    "otsu_comparison",
    "group_table",
    "detection_table",
    "seen_vs_held_out",
    "modelled_estimate",
    "estimate_bias",
    "detection_by_confusion",
    "CLAIMS",
    "claim_findings",
    "claims_table",
    "detection_by_epoch",
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


def loss_spikes(loss: Sequence[float], *, start: int = 0, factor: float = 2.0) -> list[int]:
    """Epochs (0-based, from ``start`` on) whose training loss exceeds ``factor`` times the median loss of the epochs
    from ``start`` on: one bad stretch of optimizer steps, which a curve of the run shows as a dip, not a trend.

    Parameters
    ----------
    loss : Sequence[float]
        float [E], the run's loss per epoch (``history["loss"]``).
    start : int
        the first epoch to look at, e.g. the first of phase 2, whose loss differs from phase 1's.
    factor : float
        how far above the median a spike is.
    """
    values = np.asarray(loss, dtype=np.float64)[start:]
    if not np.isfinite(values).any():
        return []
    with np.errstate(invalid="ignore"):
        return [start + int(e) for e in np.flatnonzero(values > factor * np.nanmedian(values))]


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



# --------------------------------------------------------------------------------------------
# Questions a reader of the paper asks, answered on recorded runs
# --------------------------------------------------------------------------------------------


def seen_vs_held_out(mask: np.ndarray, is_noisy: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray):
    """Detection on the images the networks trained on against the held-out ones (never seen with their labels).

    Parameters
    ----------
    mask : np.ndarray
        bool [N], the flagged images (e.g. group G4) over all rows of the run.
    is_noisy : np.ndarray
        bool [N], the truth (given label differs from the clean one).
    train_rows, val_rows : np.ndarray
        int indices into the N rows: trained on, and held out for validation.

    Returns
    -------
    pd.DataFrame
        Indexed ``"trained on"`` / ``"held out"``: ``images``, ``true noise rate``, ``flagged``
        (share), ``precision``, ``recall``, ``F1``.
    """
    import pandas as pd

    mask, is_noisy = np.asarray(mask, dtype=bool), np.asarray(is_noisy, dtype=bool)
    rows = {}
    for name, index in (("trained on", np.asarray(train_rows)), ("held out", np.asarray(val_rows))):
        scores = detection_scores(mask[index], is_noisy[index]) if len(index) else {}
        rows[name] = {"images": len(index), "true noise rate": float(is_noisy[index].mean()) if len(index) else np.nan,
                      "flagged": float(mask[index].mean()) if len(index) else np.nan,
                      "precision": scores.get("precision", np.nan), "recall": scores.get("recall", np.nan),
                      "F1": scores.get("f1", np.nan)}
    return pd.DataFrame.from_dict(rows, orient="index")


def modelled_estimate(true_rate: np.ndarray | float, control_rate: float) -> np.ndarray:
    """The noise estimate if the threshold flags every mislabelled image plus the share ``control_rate`` of the
    clean ones (the share it flags on the clean split, where no label is wrong): ``r + (1 - r) * control_rate``.

    Parameters
    ----------
    true_rate : np.ndarray | float
        float or float [K], true noise rates in [0, 1].
    control_rate : float
        the estimate on the clean split, in [0, 1].
    """
    r = np.asarray(true_rate, dtype=np.float64)
    return r + (1 - r) * float(control_rate)


def estimate_bias(table):
    """BKD's signed noise-estimate error per run of a batch, beside :func:`modelled_estimate`'s prediction.

    ``table``: :func:`bkd_core.book.results.collect_results`. The control rate is the mean estimate over the
    batch's clean-split runs (NaN without them). Returns a DataFrame, one row per BKD run: ``split``, ``seed``,
    ``true`` and ``estimated`` noise rate (%), ``error`` (estimated - true, points) and ``modelled error``
    (points), and ``attrs["control_rate"]`` (%).
    """
    import pandas as pd

    bkd = table[table["method"] == "bkd"]
    true = pd.to_numeric(bkd["true_noise_rate"], errors="coerce").to_numpy(dtype=np.float64)
    est = pd.to_numeric(bkd["estimated_noise_rate"], errors="coerce").to_numpy(dtype=np.float64)
    clean = est[(true == 0) & np.isfinite(est)]
    control = float(clean.mean()) if len(clean) else float("nan")
    out = pd.DataFrame({"split": bkd["split"].to_numpy(), "seed": bkd["seed"].to_numpy(), "true": 100 * true,
                        "estimated": 100 * est, "error": 100 * (est - true),
                        "modelled error": 100 * (modelled_estimate(true, control) - true)})
    out.attrs["control_rate"] = 100 * control
    return out


def detection_by_confusion(mask: np.ndarray, clean: np.ndarray, given: np.ndarray, names: Sequence[str],
                           top: int = 8, min_images: int = 50):
    """Which human confusions a detector finds: recall per (true class, given class) pair of the mislabelled images.

    Parameters
    ----------
    mask : np.ndarray
        bool [N], flagged images.
    clean, given : np.ndarray
        int [N], the clean and the given labels.
    names : Sequence[str]
        class names.
    top : int
        the ``top`` most frequent confusions are returned.
    min_images : int
        pairs with fewer mislabelled images are left out.

    Returns
    -------
    pd.DataFrame
        One row per pair, most frequent first: ``confusion`` ("cat labelled dog"), ``images`` (mislabelled
        images of the pair), ``found`` (recall), and ``clean flagged``: the share of the *correctly* labelled images
        of the given class that are flagged (false alarms on the label the confusion produces).
    """
    import pandas as pd

    mask, clean, given = np.asarray(mask, dtype=bool), np.asarray(clean), np.asarray(given)
    wrong = clean != given
    rows = []
    for (c, g), count in pd.Series(list(zip(clean[wrong], given[wrong]))).value_counts().items():
        if count < min_images:
            continue
        pair = wrong & (clean == c) & (given == g)
        right = ~wrong & (given == g)
        rows.append({"confusion": f"{names[int(c)]} labelled {names[int(g)]}", "images": int(count),
                     "found": float(mask[pair].mean()),
                     "clean flagged": float(mask[right].mean()) if right.any() else float("nan")})
        if len(rows) == top:
            break
    return pd.DataFrame(rows, columns=["confusion", "images", "found", "clean flagged"])


def claim_findings(table) -> dict[str, str]:
    """What a batch measured on each of BKD's claims, one sentence each, with its numbers, negatives included.

    ``table``: :func:`bkd_core.book.results.collect_results` of a batch that ran BKD and cross-entropy (and
    confident learning) on CIFAR-10N splits, with at least two seeds (wins, ties and losses are decided by
    :func:`bkd_core.book.verdict.verdict`). Returns ``{claim key: sentence}`` for the keys ``memorization``,
    ``tipping``, ``estimate``, ``detection`` and ``robust``; a claim the batch cannot speak to gets a sentence
    that says so.
    """
    from .results import mean_of, ordered_splits, summarize
    from .verdict import split_verdicts, verdict_text

    summary = summarize(table)
    splits = ordered_splits(table["split"])
    noisy = [s for s in splits if mean_of(summary, s, "bkd", "true_noise_rate") > 0]
    hardest = max(noisy, key=lambda s: mean_of(summary, s, "bkd", "true_noise_rate")) if noisy else None

    def m(split, method, metric, scale=100.0):
        return scale * mean_of(summary, split, method, metric)

    def judged(method, rival, metric, rival_metric=None, among=None, scale=100.0):
        verdicts = split_verdicts(table, method, rival, metric, rival_metric, splits=among or noisy)
        details = {s: f"{m(s, method, metric, scale):.1f} against {m(s, rival, rival_metric or metric, scale):.1f}"
                   for s, v in verdicts.items() if v != "beats"}
        return verdict_text(verdicts, details, brief=True)

    out = {}
    if hardest is not None and np.isfinite(m(hardest, "ce", "best_test_acc", 1)):
        drops = {s: m(s, "ce", "best_test_acc", 1) - m(s, "ce", "test_acc", 1) for s in splits}
        others = [v for s, v in drops.items() if s != hardest]
        out["memorization"] = (f"Cross-entropy's test accuracy on {hardest} peaks at "
                               f"{m(hardest, 'ce', 'best_test_acc', 1):.1f}% and ends at "
                               f"{m(hardest, 'ce', 'test_acc', 1):.1f}%"
                               + (f"; elsewhere it ends {min(others):.1f} to {max(others):.1f} points below its peak."
                                  if others else "."))
    else:
        out["memorization"] = "This batch has no cross-entropy run on a noisy split."
    bkd = table[table["method"] == "bkd"]
    fired = int((bkd["tipping_rule"] == "peak").sum())
    tips = {s: 1 + bkd.loc[bkd["split"] == s, "tipping_epoch"].astype(float) for s in splits}
    clean_text = ""
    if "clean" in tips and len(tips["clean"]):
        clean_fired = int((bkd.loc[bkd["split"] == "clean", "tipping_rule"] == "peak").sum())
        clean_text = (f", and on the clean split too, where no label is wrong (epoch {tips['clean'].mean():.1f}, "
                      f"{clean_fired} of {len(tips['clean'])} runs)")
    noisy_tips = np.concatenate([tips[s].to_numpy() for s in noisy]) if noisy else np.array([])
    span = f", at epoch {noisy_tips.min():.0f} to {noisy_tips.max():.0f} on the noisy splits" if len(noisy_tips) else ""
    out["tipping"] = f"The peak rule fires in {fired} of {len(bkd)} runs{span}{clean_text}."
    shown = [s for s in (hardest, "aggre", "clean") if s in splits]  # the noisiest, the majority vote, the control
    est = [f"{s} {m(s, 'bkd', 'estimated_noise_rate'):.1f}% (true {m(s, 'bkd', 'true_noise_rate'):.1f}%)"
           for s in dict.fromkeys(shown)]
    over = sum(m(s, "bkd", "estimated_noise_rate") > m(s, "bkd", "true_noise_rate") for s in splits)
    out["estimate"] = f"Above the true noise rate on {over} of {len(splits)} splits: {', '.join(est)}."
    floor = judged("bkd", "bkd", "detection_f1", "flag_all_f1")
    if "cleanlab" in set(table["method"]):
        out["detection"] = (f"BKD's G4 mask against flagging everything {floor}; against confident learning it "
                            f"{judged('bkd', 'cleanlab', 'detection_f1')}.")
    else:
        out["detection"] = f"BKD's G4 mask against flagging everything {floor}; no confident-learning run."
    accuracy = judged("bkd", "ce", "test_acc", among=splits, scale=1.0)
    out["robust"] = f"BKD's last epoch against cross-entropy's {accuracy}."
    return out


#: BKD's claims (the paper's abstract; chapter 01 states them in full), by the keys of :func:`claim_findings`.
CLAIMS = {
    "memorization": "Memorization",
    "tipping": "Tipping point",
    "estimate": "Noise estimate",
    "detection": "Detection (F1)",
    "robust": "Robust training",
}


def claims_table(tables: dict):
    """BKD's claims against what each batch measured: :data:`CLAIMS` as rows, one column per batch.

    ``tables``: column label -> :func:`bkd_core.book.results.collect_results` of a batch, e.g.
    ``{"features (MLP, 50,000 feature vectors)": table}``; a second batch adds a column.
    """
    import pandas as pd

    columns = {label: claim_findings(table) for label, table in tables.items()}
    frame = pd.DataFrame({"claim": list(CLAIMS.values()),
                          **{label: [found[key] for key in CLAIMS] for label, found in columns.items()}})
    return frame


def detection_by_epoch(scores: np.ndarray, is_noisy: np.ndarray, *, bins: int = 1000, criterion: str = "bkd",
                       groups: Sequence[int] = (4,)):
    """Detection as it would have been at every recorded epoch: the ranking's ROC-AUC and the F1 of the
    official mask (Otsu split of that epoch's scores, ``groups`` flagged).

    Parameters
    ----------
    scores : np.ndarray
        float [E, N], each epoch's agreement scores (NaN rows: epochs without scores).
    is_noisy : np.ndarray
        bool [N].

    Returns
    -------
    pd.DataFrame
        One row per epoch with scores: ``epoch`` (from 1), ``auc``, ``f1``, ``estimate`` (share below
        the threshold).
    """
    import pandas as pd

    from ..metrics import ranking_auc

    scores = np.asarray(scores, dtype=np.float64)
    is_noisy = np.asarray(is_noisy, dtype=bool)
    rows = []
    for e in range(scores.shape[0]):
        if not np.isfinite(scores[e]).all():
            continue
        d = detect(scores[e], bins=bins, criterion=criterion)
        mask = np.isin(d.groups, list(groups))
        rows.append({"epoch": e + 1, "auc": ranking_auc(scores[e], is_noisy) if is_noisy.any() else np.nan,
                     "f1": detection_scores(mask, is_noisy)["f1"], "estimate": float(d.below_threshold.mean())})
    return pd.DataFrame(rows, columns=["epoch", "auc", "f1", "estimate"])
