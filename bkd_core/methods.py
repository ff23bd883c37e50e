"""The label-issue detectors a batch compares, in one registry: name -> how to train it, what it outputs.

Every method writes an ordinary run directory (``bkd_core.rundir``) with ``metrics.json`` and
``scores.npz`` holding cleanlab-style outputs: ``label_issues`` bool [N], ``label_quality`` float [N]
(lower = more likely mislabelled), ``ranked_indices`` and ``predicted_labels``. The command line,
the batch (``bkd_core.reproduce``) and the results tables read :data:`METHODS`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .config import BKDConfig
    from .data import NoisyCIFAR
    from .train import RunResult


@dataclass(frozen=True)
class Method:
    """One detector. ``train(data, config, run_dir, folds=..., progress=...)`` trains (or resumes, or
    loads) it; ``networks`` is the training work per epoch in network-epochs over the subset (for the
    batch's time-left estimate; 0 for a method that trains nothing). ``single_run``: ``train`` is one
    run of the training loop (``bkd_core.train``) in ``run_dir``, fixed by the data and the configuration
    alone (it ignores ``folds`` and has no sub-runs), so the run cache (``bkd_core.cache``) can key it by
    the configuration."""

    name: str
    title: str
    train: Callable[..., "RunResult"]
    needs_features: bool = False
    networks: Callable[[int], float] = lambda folds: 1.0
    single_run: bool = False


def _bkd(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from .train import train_bkd

    return train_bkd(data, config, run_dir, progress=progress)


def _ce(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from .train import train_ce

    return train_ce(data, config, run_dir, progress=progress)


def _cleanlab(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from .confident_learning import train_confident_learning

    return train_confident_learning(data, config, run_dir, folds=folds, progress=progress)


#: Neighbours per sample of the k-nearest-neighbour detector (SimiFeat / Docta use about 10).
KNN_NEIGHBOURS = 10


def train_knn(data: "NoisyCIFAR", config: "BKDConfig", run_dir: str | Path, *, k: int = KNN_NEIGHBOURS,
              progress: bool = True) -> "RunResult":
    """k-nearest-neighbour label voting on the run's feature vectors (no training): a sample's quality is
    the fraction of its ``k`` nearest neighbours (cosine) that carry its given label; it is flagged
    when the neighbours' majority label differs from its own (``bkd_core.knn``).

    Scores the same subset as the other methods (``config.train_size``, ``config.seed``), all of it.

    Raises:
        ValueError: ``config.features`` is not set (the detector needs feature vectors).
    """
    from .config import stored_fingerprint
    from .knn import cached_nearest_neighbours, knn_label_issues
    from .metrics import detector_summary, run_header
    from .rundir import RunDir
    from .train import RunResult, training_subset, with_config_features

    if not config.features:
        raise ValueError("the knn detector votes over feature vectors: use a configuration with features "
                         "(e.g. --profile features)")
    rundir = RunDir(run_dir)
    subset = training_subset(with_config_features(data, config, progress=progress), config)
    identity = {"kind": "knn", "dataset": data.dataset, "split": data.split, "k": k, "num_samples": len(subset),
                "fingerprint": config.fingerprint("knn"), "features": subset.feature_key}

    def compute() -> None:
        start = time.perf_counter()
        # the neighbour graph depends on the features alone: one per batch, shared by its splits and seeds
        graph = cached_nearest_neighbours(subset.train_features, k=k)
        out = knn_label_issues(subset.train_features, subset.train_labels, k=k, num_classes=subset.num_classes,
                               neighbours=graph)
        wall = time.perf_counter() - start
        estimate = float(out.label_issues.mean())
        metrics = {**run_header("knn", subset, config), "k": k, "estimated_noise_rate": estimate,
                   **detector_summary(out.label_issues, subset.is_noisy),
                   "vote_acc_clean": float((out.vote == subset.clean_labels).mean()),
                   "wall_time_s": round(wall, 2), "device": "cpu", "command": " ".join(sys.argv)}
        arrays = {"label_issues": out.label_issues, "label_quality": out.label_quality.astype(np.float32),
                  "ranked_indices": np.argsort(out.label_quality, kind="stable").astype(np.int64),
                  "indices": subset.indices.astype(np.int64), "predicted_labels": out.vote.astype(np.int64)}
        rundir.save_outputs(metrics, arrays)

    return rundir.load_or_compute(identity, config.to_dict(), fingerprint=stored_fingerprint("knn"),
                                  load=lambda: RunResult.load(rundir, config), compute=compute)


def _knn(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    return train_knn(data, config, run_dir, progress=progress)


#: Every detector, in the order tables show them.
METHODS: dict[str, Method] = {
    "bkd": Method("bkd", "BKD (teacher + blind student)", _bkd, networks=lambda folds: 2.0, single_run=True),
    "ce": Method("ce", "cross-entropy baseline (prediction differs from the label)", _ce, single_run=True),
    "cleanlab": Method("cleanlab", "confident learning (cleanlab, out-of-fold)", _cleanlab,
                       networks=lambda folds: (folds - 1) / folds),
    "knn": Method("knn", "k-nearest-neighbour label voting on the features", _knn, needs_features=True,
                  networks=lambda folds: 0.0),
}


def methods_for(config: "BKDConfig") -> tuple[str, ...]:
    """The methods a configuration can run: all of them with feature vectors, the trained ones without."""
    return tuple(name for name, m in METHODS.items() if config.features or not m.needs_features)
