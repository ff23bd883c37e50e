"""The label-issue detectors a batch compares, in one registry: name -> how to train it, what it outputs.

Every method writes an ordinary run directory (``bkd_core.rundir``) with ``metrics.json`` and
``scores.npz`` holding cleanlab-style outputs: ``label_issues`` bool [N], ``label_quality`` float [N]
(lower = more likely mislabelled), ``ranked_indices`` and ``predicted_labels``. The command line,
the batch (``bkd_core.batch``) and the results tables read :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..config import BKDConfig
    from ..data import NoisyCIFAR
    from ..train import RunResult


@dataclass(frozen=True)
class Method:
    """One detector. ``train(data, config, run_dir, folds=..., progress=...)`` trains (or resumes, or
    loads) it; ``networks`` is the training work per epoch in network-epochs over the subset (for the
    batch's time-left estimate; 0 for a method that trains nothing). ``single_run``: ``train`` is one
    run of the training loop (``bkd_core.train``) in ``run_dir``, fixed by the data and the configuration
    alone (it ignores ``folds`` and has no sub-runs), so the run cache (``bkd_core.book.cache``) can key it by
    the configuration."""

    name: str
    title: str
    train: Callable[..., "RunResult"]
    needs_features: bool = False
    networks: Callable[[int], float] = lambda folds: 1.0
    single_run: bool = False


def _bkd(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from ..train import train_bkd

    return train_bkd(data, config, run_dir, progress=progress)


def _ce(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from ..train import train_ce

    return train_ce(data, config, run_dir, progress=progress)


def _cleanlab(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from .confident_learning import train_confident_learning

    return train_confident_learning(data, config, run_dir, folds=folds, progress=progress)


def _knn(data: "NoisyCIFAR", config: "BKDConfig", run_dir: Path, *, folds: int, progress: bool) -> "RunResult":
    from .knn import train_knn

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
