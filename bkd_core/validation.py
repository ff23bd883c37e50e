"""The one check of a detector's inputs: a feature matrix and its given labels, as users hand them over.

:func:`check_features_and_labels` is what :func:`bkd_core.label_issues.find_label_issues` and
:func:`bkd_core.detectors.knn.knn_label_issues` call first, so both refuse the same inputs with the same
sentence, before anything is allocated or trained (as cleanlab's ``internal/validation.py`` does for its own
``find_label_issues``).

Rules, each a ``ValueError`` of one sentence:

- features: ``[N, D]`` numbers with ``N >= min_samples`` and ``D >= 1``, finite, within float32's range;
- labels: ``[N]`` integers ``>= 0``, at least two classes present (one class leaves nothing to tell apart);
- the number of classes C (``num_classes``, default ``labels.max() + 1``): at least ``labels.max() + 1`` and at
  most 100,000; given, at most ``max(labels.max() + 1, 2 * K)`` for the K classes present (a few classes without a
  sample are fine, thousands of empty output units for twenty samples are not); by default, refused when fewer
  than half of the ids below it are used (sparse ids: remap them);
- a numpy masked array with masked entries is refused (its mask would be ignored: nothing here can leave a
  value out); one with nothing masked is read as its data. Torch tensors are read on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MAX_CLASSES", "check_features", "check_labels", "check_features_and_labels", "check_int"]

#: The most classes a detector accepts (two output layers of that width already need gigabytes).
MAX_CLASSES = 100_000


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high)`` (``high`` None: no upper bound), or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, 2**{high.bit_length() - 1})"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _array(values, name: str) -> np.ndarray:
    """``values`` as a numpy array: a tensor moved to the CPU, a masked array refused if anything is masked."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ma.MaskedArray):
        masked = int(np.ma.getmaskarray(values).sum())
        if masked:
            raise ValueError(f"{name} is a masked array with {masked} masked entries, and a mask cannot be honoured "
                             f"here (every sample is scored); drop those samples from features and labels alike, or "
                             f"fill them (e.g. {name}.filled(...)), and pass a plain array")
        return np.asarray(values.data)
    return np.asarray(values)


def check_features(features, *, min_samples: int = 1) -> np.ndarray:
    """The features as a C-contiguous float32 array ``[N, D]`` (a copy of a reversed or strided view).

    Raises
    ------
    ValueError
        Not ``[N, D]`` with ``N >= min_samples`` and ``D >= 1``, not numbers, NaN or infinite values (the number of
        rows named), values beyond float32's range, or a masked array with masked entries.
    """
    raw = _array(features, "features")
    if raw.ndim != 2:
        raise ValueError(f"features must be [N, D] (one row per sample), got shape {raw.shape}")
    if raw.shape[0] < max(min_samples, 1) or raw.shape[1] == 0:
        need = "at least one sample" if min_samples <= 1 else f"at least {min_samples} samples"
        raise ValueError(f"features has shape {raw.shape}: {need} and one feature column are needed")
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
        raise ValueError(f"features must be numbers, got dtype {raw.dtype}")
    if np.issubdtype(raw.dtype, np.floating):
        bad_rows = int((~np.isfinite(raw)).any(1).sum())
        if bad_rows:
            raise ValueError(f"features contain NaN or infinite values in {bad_rows} of {len(raw)} rows; "
                             "remove or impute those rows first")
    biggest = float(np.abs(raw).max())
    limit = float(np.finfo(np.float32).max)
    if biggest > limit:
        raise ValueError(f"features hold values up to {biggest:.3g} in magnitude, beyond float32's range "
                         f"({limit:.3g}): they would overflow to infinity; rescale (e.g. standardise) the columns")
    return np.ascontiguousarray(raw, dtype=np.float32)


def check_labels(labels, n: int, num_classes=None) -> tuple[np.ndarray, int]:
    """The labels as int64 ``[n]`` and the number of classes C (module docstring: the rules).

    Raises
    ------
    ValueError
        Not ``[n]`` integers ``>= 0``; one class only; ``num_classes`` not an integer, below ``labels.max() + 1``,
        above ``max(labels.max() + 1, 2 * classes present)`` or 100,000; sparse class ids without
        ``num_classes``; a masked array with masked entries.
    """
    y = _array(labels, "labels")
    if y.shape != (n,):
        raise ValueError(f"features must be [N, D] and labels [N], got {n} feature rows and labels of shape "
                         f"{y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())  # Python ints: no wrap-around of uint64 values
    if lo < 0:
        raise ValueError(f"labels must be class indices >= 0, found {lo}")
    distinct = len(np.unique(y))
    if num_classes is None:
        if hi + 1 > MAX_CLASSES or distinct < (hi + 1) / 2:
            raise ValueError(f"labels use {distinct} distinct values between 0 and {hi}, so most class ids in "
                             f"[0, {hi + 1}) are unused: map them to 0..{distinct - 1} first "
                             "(np.unique(labels, return_inverse=True)[1]), or pass num_classes if the unused "
                             "classes are meant")
        c = hi + 1
    else:
        c = check_int("num_classes", num_classes, 2)
    if c > MAX_CLASSES:
        raise ValueError(f"num_classes={c:,} is more than the {MAX_CLASSES:,} classes supported (two output "
                         "layers of that width would not fit in memory); map the labels to 0..K-1 for the K "
                         "classes present")
    if hi >= c:
        raise ValueError(f"labels must lie in [0, {c}) for num_classes={c}, found values in [{lo}, {hi}]")
    if distinct < 2:
        raise ValueError(f"labels hold one class only ({lo}) in all {n} samples: with nothing to tell apart there is "
                         "no label issue to find; pass labels of at least two classes")
    if c > max(hi + 1, 2 * distinct):
        raise ValueError(f"num_classes={c:,} is far more than the labels need: they use {distinct} classes (ids up to "
                         f"{hi}), and at most max(largest id + 1, twice the classes present) = "
                         f"{max(hi + 1, 2 * distinct)} is accepted; leave num_classes out, or pass the number of "
                         "classes your labels come from")
    return y.astype(np.int64), c


def check_features_and_labels(features, labels, num_classes=None, *,
                              min_samples: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`check_features` and :func:`check_labels` in one call: ``(x float32 [N, D], y int64 [N], C)``."""
    x = check_features(features, min_samples=min_samples)
    y, c = check_labels(labels, len(x), num_classes)
    return x, y, c
