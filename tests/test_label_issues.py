"""Tests of bkd_core.label_issues: the one-call BKD detector on feature vectors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bkd_core.errors import DivergedError
from bkd_core.label_issues import find_label_issues


def _noisy_clusters(seed: int = 0, n_per: int = 150, classes: int = 4, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(classes, 16))
    clean = np.repeat(np.arange(classes), n_per)
    x = (centres[clean] + rng.normal(size=(len(clean), 16))).astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    given = clean.copy()
    flip = rng.random(len(clean)) < noise
    given[flip] = (clean[flip] + rng.integers(1, classes, flip.sum())) % classes
    return x, given, given != clean


def _auc(score_of_positive: np.ndarray, score_of_negative: np.ndarray) -> float:
    """P(a positive scores lower than a negative): the ranking AUC for 'lower = worse'."""
    diff = score_of_positive[:, None] - score_of_negative[None, :]
    return float((diff < 0).mean() + 0.5 * (diff == 0).mean())


def test_outputs_and_that_wrong_labels_score_lower():
    x, given, wrong = _noisy_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # whether the peak rule fires is not tested here
        res = find_label_issues(x, given, widths=(64,), epochs=12, batch_size=64, progress=False)
    n = len(given)
    assert res.label_issues.shape == (n,) and res.label_issues.dtype == bool
    assert res.label_quality.shape == (n,) and res.label_quality.dtype == np.float32
    assert ((res.label_quality >= 0) & (res.label_quality <= 1)).all()
    np.testing.assert_array_equal(np.sort(res.ranked), np.arange(n))
    assert (np.diff(res.label_quality[res.ranked]) >= 0).all()  # worst first
    assert set(np.unique(res.groups)) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(res.label_issues, res.groups == 4)
    assert 0 <= res.tipping_epoch < len(res.epoch_statistic) <= 12
    assert res.noise_rate == pytest.approx(float((res.label_quality < res.threshold).mean()))
    # separated clusters, 30% wrong labels: the agreement score ranks wrong labels far below
    assert _auc(res.label_quality[wrong], res.label_quality[~wrong]) >= 0.85
    precision = (res.label_issues & wrong).sum() / max(res.label_issues.sum(), 1)
    assert precision >= 0.6  # flagging at random would give 0.3


def test_deterministic_and_flag_option():
    x, given, _ = _noisy_clusters(1, n_per=60)
    kwargs = dict(widths=(16,), epochs=8, batch_size=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = find_label_issues(x, given, **kwargs)
        b = find_label_issues(x, given, **kwargs)
        c = find_label_issues(x, given, flag="below_threshold", **kwargs)
    np.testing.assert_array_equal(a.label_quality, b.label_quality)
    np.testing.assert_array_equal(c.label_issues, c.label_quality < c.threshold)
    assert c.label_issues.sum() >= a.label_issues.sum()  # G4 lies below the threshold


@pytest.mark.parametrize("kwargs, match", [(dict(epochs=5), "epochs"), (dict(flag="all"), "flag"),
                                           (dict(num_classes=2), "labels must lie")])
def test_arguments_are_checked(kwargs, match):
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=match):
        find_label_issues(x, given, progress=False, **kwargs)
    with pytest.raises(ValueError, match="features must be"):
        find_label_issues(x, given[:-1], progress=False)


def test_non_finite_features_are_refused_with_the_row_count():
    x, given, _ = _noisy_clusters(n_per=5)
    x[3, 2], x[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match="NaN or infinite values in 2 of 20 rows"):
        find_label_issues(x, given, progress=False)


def test_a_diverging_training_stops_with_the_learning_rate_named():
    x, given, _ = _noisy_clusters(n_per=20)
    with pytest.raises(DivergedError, match=r"diverged in epoch \d+.*lr=1e\+06"):
        find_label_issues(1e3 * x, given, widths=(16,), epochs=8, batch_size=16, lr=1e6, progress=False)


def test_a_missing_cuda_device_is_refused_before_training():
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match="cuda:99"):
        find_label_issues(x, given, device="cuda:99", progress=False)
