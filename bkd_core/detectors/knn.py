"""k-nearest-neighbour label voting on feature vectors: a training-free label-issue detector.

As SimiFeat (Zhu, Dong, Liu, ICML 2022) and Docta do: a sample whose nearest neighbours in
feature space (cosine similarity) mostly carry another label is probably mislabelled.

- quality score: the fraction of the sample's ``k`` nearest neighbours (itself excluded) that carry
  its given label, in ``[0, 1]``; lower = worse;
- label issue: the majority label of the neighbours differs from the given label (a tie that
  includes the given label counts as agreement).

The neighbour graph depends on the feature vectors alone, not on the labels: every CIFAR-10N split
and seed of a batch shares it, so :func:`cached_nearest_neighbours` computes it once and keeps it
beside the cached features.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..validation import check_features, check_features_and_labels

if TYPE_CHECKING:
    from ..config import BKDConfig
    from ..data import NoisyCIFAR
    from ..train import RunResult

__all__ = ["KNNLabelIssues", "knn_label_issues", "nearest_neighbours", "cached_nearest_neighbours", "train_knn",
           "KNN_NEIGHBOURS"]


@dataclass(frozen=True)
class KNNLabelIssues:
    """Result of :func:`knn_label_issues` (N samples, C classes).

    ``label_issues``, ``label_quality``, ``ranked_indices`` and ``estimated_noise_rate`` mean what they mean in
    :class:`~bkd_core.label_issues.BKDLabelIssues` and :class:`~bkd_core.train.RunResult`; ``ranked`` is the older
    name of ``ranked_indices``.

    Attributes
    ----------
    label_issues : np.ndarray
        bool ``[N]``, True where the neighbours' majority label differs from the given label.
    label_quality : np.ndarray
        float32 ``[N]``, fraction of the k neighbours carrying the given label (lower = worse).
    ranked_indices : np.ndarray
        int64 ``[N]``, sample indices from the lowest quality to the highest (stable: ties keep
        index order).
    estimated_noise_rate : float
        The fraction of samples flagged (``label_issues.mean()``).
    vote : np.ndarray
        int64 ``[N]``, the neighbours' majority label (the given label where it ties for first).
    neighbour_counts : np.ndarray
        int64 ``[N, C]``, how many of the k neighbours carry each class.
    """

    label_issues: np.ndarray
    label_quality: np.ndarray
    ranked_indices: np.ndarray
    estimated_noise_rate: float
    vote: np.ndarray
    neighbour_counts: np.ndarray

    @property
    def ranked(self) -> np.ndarray:
        """The older name of :attr:`ranked_indices`."""
        return self.ranked_indices


def _as_tensor(features) -> torch.Tensor:
    """Checked features (:func:`bkd_core.validation.check_features`, at least 2 rows) as a float32 tensor."""
    return torch.from_numpy(check_features(features, min_samples=2))  # also a reversed view, copied


def nearest_neighbours(features, *, k: int = 10, batch_size: int = 2048) -> np.ndarray:
    """Indices of each sample's ``k`` nearest neighbours by cosine similarity, itself excluded.

    Parameters
    ----------
    features : array_like
        float ``[N, D]``. Rows of zero norm are compared as they are (similarity 0 to everything).
    k : int
        Neighbours per sample, ``1 <= k < N``.
    batch_size : int
        Rows per block of the ``[batch, N]`` similarity matrix (memory ``4 * batch * N`` bytes).

    Returns
    -------
    np.ndarray
        int64 ``[N, k]``, most similar first (exact ties in the order ``torch.topk`` gives).
    """
    return _nearest(_as_tensor(features), k, batch_size)


@torch.no_grad()
def _nearest(x: torch.Tensor, k: int, batch_size: int) -> np.ndarray:
    """:func:`nearest_neighbours` of a tensor that :func:`_as_tensor` has checked."""
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, N-1] = [1, {n - 1}], got {k}")
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(n, k, dtype=torch.int64)
    for start in range(0, n, batch_size):
        block = x[start:start + batch_size]
        sims = block @ x.T  # [b, N]
        rows = torch.arange(len(block))
        sims[rows, rows + start] = -float("inf")  # never one's own neighbour
        out[start:start + len(block)] = torch.topk(sims, k, dim=1).indices
    return out.numpy()


def _check_graph(graph: np.ndarray, n: int, k: int) -> None:
    if (graph.dtype != np.int64 or graph.shape != (n, k) or (n and (graph.min() < 0 or graph.max() >= n))
            or (graph == np.arange(n)[:, None]).any()):
        raise ValueError(f"a neighbour graph must be int64 [{n}, {k}] of other rows' indices, got "
                         f"{graph.dtype} {graph.shape}")


def _read_graph(path: os.PathLike) -> np.ndarray:
    """The one array of an ``.npy`` file, read without pickle; ``ValueError`` for any other content."""
    with open(path, "rb") as handle:  # numpy leaves its own handle open when a zip is bad
        graph = np.load(handle, allow_pickle=False)
        if not isinstance(graph, np.ndarray):
            graph.close()
            raise ValueError("it holds an .npz archive, not one .npy array")
    return graph


def cached_nearest_neighbours(features, *, k: int = 10, batch_size: int = 2048,
                              root: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`nearest_neighbours`, computed once per feature matrix and kept as ``.npy``.

    The file, ``knn-<sha256 of the features>-k<k>-b<batch_size>.npy`` in the feature cache folder
    (``root``, else :func:`bkd_core.features.feature_cache_dir`), is written atomically and read
    with ``allow_pickle=False``; a damaged or mismatched file is recomputed (with a warning).

    Returns
    -------
    np.ndarray
        int64 ``[N, k]``, as :func:`nearest_neighbours` returns it.
    """
    from ..features import _check_cache_target, data_fingerprint, feature_cache_dir
    from ..io import atomic_path

    x = _as_tensor(features)
    path = feature_cache_dir(root) / f"knn-{data_fingerprint(x.numpy())}-k{k}-b{batch_size}.npy"
    if path.is_file():
        try:
            graph = _read_graph(path)
            _check_graph(graph, len(x), k)
            return graph
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"cached neighbour graph {path} is damaged ({exc}); recomputing it", RuntimeWarning,
                          stacklevel=2)
    _check_cache_target(path, root)
    graph = _nearest(x, k, batch_size)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, graph)
    return graph


def knn_label_issues(features, labels, *, k: int = 10, num_classes: int | None = None,
                     batch_size: int = 2048, neighbours: np.ndarray | None = None) -> KNNLabelIssues:
    """Label issues, quality scores and a ranking from k-nearest-neighbour label voting.

    Parameters
    ----------
    features : array_like
        float ``[N, D]`` feature vectors, ``N >= 2`` (e.g. :func:`bkd_core.features.cached_features`).
    labels : array_like
        int ``[N]`` given (possibly noisy) labels in ``[0, C)``, of at least two classes.
    k : int
        Neighbours per sample (cosine similarity, itself excluded).
    num_classes : int, optional
        C; default ``labels.max() + 1``. Features, labels and ``num_classes`` are checked as
        :func:`bkd_core.label_issues.find_label_issues` checks them (:mod:`bkd_core.validation`).
    batch_size : int
        Rows per block of the similarity matrix.
    neighbours : np.ndarray, optional
        int64 ``[N, k]``, the neighbour graph of ``features`` if it is known already
        (:func:`cached_nearest_neighbours`); computed here otherwise.

    Returns
    -------
    KNNLabelIssues
        ``label_issues`` bool ``[N]``, ``label_quality`` float32 ``[N]`` (lower = worse),
        ``ranked_indices`` int64 ``[N]`` (worst first), ``estimated_noise_rate``, ``vote`` int64 ``[N]``,
        ``neighbour_counts`` int64 ``[N, C]``.
    """
    x, y, c = check_features_and_labels(features, labels, num_classes, min_samples=2)
    if neighbours is None:
        neighbours = _nearest(torch.from_numpy(x), k, batch_size)
    else:
        neighbours = np.asarray(neighbours)
        if neighbours.ndim != 2 or neighbours.shape[1] != k:
            raise ValueError(f"neighbours must be int64 [N, k={k}], got shape {neighbours.shape}")
    if len(neighbours) != len(y):
        raise ValueError(f"features have {len(neighbours)} rows but labels {len(y)}")
    neighbour_labels = y[neighbours]  # [N, k]
    counts = np.zeros((len(y), c), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(y)), k), neighbour_labels.ravel()), 1)
    own = counts[np.arange(len(y)), y]
    quality = (own / k).astype(np.float32)
    top = counts.max(1)
    vote = np.where(own == top, y, counts.argmax(1))
    issues = own < top
    return KNNLabelIssues(label_issues=issues, label_quality=quality, ranked_indices=np.argsort(quality, kind="stable"),
                          estimated_noise_rate=float(issues.mean()), vote=vote, neighbour_counts=counts)


#: Neighbours per sample of the k-nearest-neighbour detector (SimiFeat / Docta use about 10).
KNN_NEIGHBOURS = 10


def train_knn(data: "NoisyCIFAR", config: "BKDConfig", run_dir: str | Path, *, k: int = KNN_NEIGHBOURS,
              progress: bool = True) -> "RunResult":
    """k-nearest-neighbour label voting on the run's feature vectors (no training): a sample's quality is
    the fraction of its ``k`` nearest neighbours (cosine) that carry its given label; it is flagged
    when the neighbours' majority label differs from its own (:func:`knn_label_issues`).

    Scores the same subset as the other methods (``config.train_size``, ``config.seed``), all of it.

    Raises
    ------
    ValueError
        ``config.features`` is not set (the detector needs feature vectors).
    """
    from ..config import stored_fingerprint
    from ..metrics import detector_summary, run_header
    from ..rundir import RunDir
    from ..train import RunResult, training_subset, with_config_features

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
        metrics = {**run_header("knn", subset, config), "k": k, "estimated_noise_rate": out.estimated_noise_rate,
                   **detector_summary(out.label_issues, subset.is_noisy),
                   "vote_acc_clean": float((out.vote == subset.clean_labels).mean()),
                   "wall_time_s": round(wall, 2), "device": "cpu", "command": " ".join(sys.argv)}
        arrays = {"label_issues": out.label_issues, "label_quality": out.label_quality.astype(np.float32),
                  "ranked_indices": out.ranked_indices.astype(np.int64),
                  "indices": subset.indices.astype(np.int64), "predicted_labels": out.vote.astype(np.int64)}
        rundir.save_outputs(metrics, arrays)

    return rundir.load_or_compute(identity, config.to_dict(), fingerprint=stored_fingerprint("knn"),
                                  load=lambda: RunResult.load(rundir, config), compute=compute)
