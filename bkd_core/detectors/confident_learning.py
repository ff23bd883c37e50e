"""cleanlab's confident learning on the same data and budget as a BKD run: the comparison detector.

Out-of-fold predicted probabilities come from K cross-entropy networks (``train_ce``, same model,
epochs, batch size and pipeline as the BKD run), each trained on K-1 stratified folds of the
run's training subset and applied to the fold it did not see; then
``cleanlab.filter.find_label_issues`` flags the label issues and
``cleanlab.rank.get_label_quality_scores`` scores every sample (lower = more likely mislabelled).

A run directory holds one ``fold_K`` run directory per fold (each resumable on its own),
``metrics.json`` and ``scores.npz`` (``label_issues``, ``label_quality``, ``ranked_indices``,
``indices``, ``pred_probs``, ``predicted_labels``), as the BKD and CE runs do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..augment import NORMALIZATION, Normalizer, ordered_batches, to_device_images
from ..config import BKDConfig, stored_fingerprint
from ..data import NoisyCIFAR
from ..errors import DamagedFileError
from ..metrics import detector_summary, run_header
from ..rundir import RunDir
from ..train import RunResult, train_ce, training_subset, with_config_features

__all__ = ["stratified_folds", "predict_probabilities", "train_confident_learning"]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number in ``[0, folds)`` of each sample, stratified by ``labels`` (int [N]) -> int64 [N].

    As cleanlab's own cross-validation: ``StratifiedKFold`` (shuffled, seeded); plain ``KFold``
    when a class has fewer members than there are folds.

    Raises
    ------
    ValueError
        fewer than 2 folds, or more folds than samples.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    if folds < 2 or folds > len(labels):
        raise ValueError(f"folds must be between 2 and the number of samples ({len(labels)}), got {folds}")
    counts = np.bincount(labels)
    stratify = counts[counts > 0].min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of[held_out] = k
    return fold_of


@torch.no_grad()
def predict_probabilities(network: nn.Module, inputs: np.ndarray, dataset: str, config: BKDConfig) -> np.ndarray:
    """Softmax probabilities of ``network`` (eval mode, no augmentation) -> float32 [N, C].

    ``inputs``: uint8 images [N, H, W, 3] (normalized with ``dataset``'s constants), or float32
    feature vectors [N, D] when ``config.features`` is set; on ``config``'s device.
    """
    device = next(network.parameters()).device
    if config.features:
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(device)
        normalize = lambda batch: batch  # noqa: E731  (features are standardized already)
    else:
        mean, std = NORMALIZATION[dataset]
        normalize = Normalizer(mean, std, device, config.channels_last)
        x = to_device_images(inputs, device)
    network.eval()
    out = [network(normalize(x[rows])).float().softmax(1)
           for rows in ordered_batches(len(x), config.eval_batch_size, device)]
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def train_confident_learning(data: NoisyCIFAR, config: BKDConfig, run_dir: str | Path, *, folds: int = 5,
                             progress: bool = True) -> RunResult:
    """Confident learning on ``config``'s training subset of ``data`` with ``folds``-fold cross-validation.

    The subset is the one ``train_bkd`` uses (``config.train_size`` and ``config.seed``); every sample
    of it (training and validation rows alike, as BKD's scores) gets an out-of-fold prediction.
    Each fold network is ``train_ce`` with ``config`` on the other folds (no validation hold-out, and
    accuracies measured at the last epoch only: the out-of-fold probabilities do not depend on them).
    Rerunning with the same ``run_dir`` resumes the unfinished folds and returns a finished run.
    """
    rundir = RunDir(run_dir)
    identity = {"kind": "cleanlab", "dataset": data.dataset, "split": data.split, "folds": folds,
                "fingerprint": config.fingerprint("cleanlab")}
    return rundir.load_or_compute(identity, config.to_dict(), fingerprint=stored_fingerprint("cleanlab"),
                                  load=lambda: RunResult.load(rundir, config),
                                  compute=lambda: _train_folds(rundir, data, config, folds, progress))


def _train_folds(rundir: RunDir, data: NoisyCIFAR, config: BKDConfig, folds: int, progress: bool) -> None:
    import cleanlab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    subset = training_subset(with_config_features(data, config, progress=progress), config)
    labels = subset.train_labels
    fold_of = stratified_folds(labels, folds, config.seed)
    # a fold network is only asked for its held-out probabilities: it has no validation rows, and its
    # accuracy curves are not needed, so it is evaluated (training rows, test set) at its last epoch only
    fold_config = config.replace(train_size=None, val_ratio=0.0, val_every=config.epochs, test_every=config.epochs)
    pred_probs = np.zeros((len(labels), subset.num_classes), dtype=np.float32)
    wall = 0.0
    for k in range(folds):
        fit_rows, held_out = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        fold = train_ce(subset.take(fit_rows), fold_config, rundir.path / f"fold_{k}", progress=progress)
        if "model" not in fold.networks:
            raise DamagedFileError(f"{fold.run_dir} is finished but its checkpoint.pt is gone, so its network cannot "
                                   f"predict the held-out fold; delete {fold.run_dir} to retrain that fold")
        wall += fold.metrics["wall_time_s"]
        start = time.perf_counter()
        inputs = subset.train_features if config.features else subset.train_images
        pred_probs[held_out] = predict_probabilities(fold.networks["model"], inputs[held_out],
                                                     subset.dataset, fold_config)
        wall += time.perf_counter() - start

    label_issues = find_label_issues(labels, pred_probs)
    quality = get_label_quality_scores(labels, pred_probs).astype(np.float32)
    metrics: dict[str, Any] = {
        **run_header("cleanlab", subset, config), "folds": folds, "epochs": config.epochs,
        "estimated_noise_rate": float(label_issues.mean()), **detector_summary(label_issues, subset.is_noisy),
        "out_of_fold_acc_given": float((pred_probs.argmax(1) == labels).mean()),
        "out_of_fold_acc_clean": float((pred_probs.argmax(1) == subset.clean_labels).mean()),
        "wall_time_s": round(wall, 2), "device": fold.metrics["device"], "cleanlab": cleanlab.__version__,
        "command": " ".join(sys.argv),
    }
    rundir.save_outputs(metrics, {
        "label_issues": label_issues, "label_quality": quality,
        "ranked_indices": np.argsort(quality, kind="stable").astype(np.int64),
        "indices": subset.indices.astype(np.int64), "pred_probs": pred_probs,
        "predicted_labels": pred_probs.argmax(1).astype(np.int64), "folds": fold_of})
