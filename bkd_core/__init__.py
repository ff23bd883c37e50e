"""bkd_core: Blind Knowledge Distillation (Kaiser et al., arXiv 2211.11355) on CIFAR-N.

The public verbs, importable from the package itself (each is loaded on first use, so ``import bkd_core`` stays
light)::

    from bkd_core import find_label_issues, knn_label_issues      # label issues in your own features
    from bkd_core import load_cifar_n, ensure_data                # CIFAR-10/100 with the CIFAR-N labels
    from bkd_core import resolve, train_bkd, train_ce             # a profile -> a configuration -> a run
"""

import os

# OpenMP threads that finish early sleep instead of spinning (unless the user chose otherwise).
# Must be set before torch loads its OpenMP runtime, i.e. before the first `import torch`. Measured
# in benchmarks/README.md: neutral on an idle machine, 1.5x to 5x faster epochs when other processes
# share the cores (spinning threads steal the CPU the busy ones need).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "find_label_issues": "label_issues",
    "BKDLabelIssues": "label_issues",
    "knn_label_issues": "detectors.knn",
    "KNNLabelIssues": "detectors.knn",
    "load_cifar_n": "data",
    "ensure_data": "data",
    "NoisyCIFAR": "data",
    "resolve": "config",
    "get_profile": "config",
    "BKDConfig": "config",
    "train_bkd": "train",
    "train_ce": "train",
    "RunResult": "train",
    "BKDError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bkd_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
