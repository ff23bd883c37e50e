"""The label-issue detectors a batch compares, one module each, with one calling convention.

- :mod:`.registry`: every detector by name (:data:`METHODS`): ``train(data, config, run_dir, *,
  folds, progress) -> RunResult`` trains, resumes or loads it into an ordinary run folder.
- :mod:`.confident_learning`: cleanlab's confident learning on out-of-fold probabilities.
- :mod:`.knn`: k-nearest-neighbour label voting on feature vectors (no training).

BKD itself and the cross-entropy baseline are trained by :mod:`bkd_core.train`.
"""

from .registry import METHODS, Method, methods_for

__all__ = ["METHODS", "Method", "methods_for"]
