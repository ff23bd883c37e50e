"""Tests of bkd_core.metrics against scikit-learn and the published flag-all F1 numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bkd_core.metrics import detection_scores, flag_all_f1, ranking_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed,n,p_pred,p_true", [(0, 1000, 0.3, 0.4), (1, 50, 0.05, 0.1),
                                                  (2, 5000, 0.5, 0.09), (3, 7, 0.5, 0.5)])
def test_detection_scores_match_sklearn(seed, n, p_pred, p_true):
    rng = np.random.default_rng(seed)
    pred = rng.random(n) < p_pred
    truth = rng.random(n) < p_true
    scores = detection_scores(pred, truth)
    assert set(scores) == {"precision", "recall", "f1"}
    assert all(type(v) is float for v in scores.values())
    kw = {"zero_division": 0}
    assert scores["precision"] == pytest.approx(sklearn_metrics.precision_score(truth, pred, **kw))
    assert scores["recall"] == pytest.approx(sklearn_metrics.recall_score(truth, pred, **kw))
    assert scores["f1"] == pytest.approx(sklearn_metrics.f1_score(truth, pred, **kw))
    # torch masks (and 0/1 integers) give the same numbers
    assert detection_scores(torch.from_numpy(pred), torch.from_numpy(truth)) == scores
    assert detection_scores(pred.astype(np.int64), truth.astype(np.int8)) == scores


@pytest.mark.parametrize(
    "pred,truth,expected",
    [
        ([0, 0, 0, 0], [0, 1, 1, 0], (0.0, 0.0, 0.0)),  # nothing flagged
        ([1, 1, 0, 0], [0, 0, 0, 0], (0.0, 0.0, 0.0)),  # nothing noisy
        ([0, 0, 0, 0], [0, 0, 0, 0], (0.0, 0.0, 0.0)),  # neither
        ([1, 1, 1, 1], [1, 1, 1, 1], (1.0, 1.0, 1.0)),  # all noisy, all flagged
        ([1, 0, 0, 0], [0, 1, 0, 0], (0.0, 0.0, 0.0)),  # all wrong
        ([], [], (0.0, 0.0, 0.0)),
    ],
)
def test_detection_scores_zero_division(pred, truth, expected):
    pred, truth = np.array(pred, dtype=bool), np.array(truth, dtype=bool)
    scores = detection_scores(pred, truth)
    assert (scores["precision"], scores["recall"], scores["f1"]) == expected
    if len(pred):
        kw = {"zero_division": 0}
        assert scores["f1"] == sklearn_metrics.f1_score(truth, pred, **kw)


def test_detection_scores_rejects_bad_masks():
    with pytest.raises(ValueError, match="entries"):
        detection_scores(np.zeros(5, bool), np.zeros(6, bool))
    with pytest.raises(ValueError):
        detection_scores(np.array([0, 2, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        detection_scores(np.zeros((2, 3), bool), np.zeros((2, 3), bool))


# the published flag-all F1: aggre 16.5, rand1 29.4, worst 57.4. It also lists C100N as 57.4, but its own
# C100N noise rate (40.20%, which the label file confirms: exactly 0.4020) gives 57.35 -> 57.3.
@pytest.mark.parametrize("rate,percent", [(0.0901, 16.5), (0.1723, 29.4), (0.4021, 57.4),
                                          (0.4020, 57.3), (0.0, 0.0), (1.0, 100.0)])
def test_flag_all_f1_matches_method_md(rate, percent):
    assert round(100 * flag_all_f1(rate), 1) == percent


def test_flag_all_f1_equals_flagging_every_sample():
    rng = np.random.default_rng(4)
    truth = rng.random(10000) < 0.4021
    flagged = detection_scores(np.ones_like(truth), truth)
    assert flagged["f1"] == pytest.approx(flag_all_f1(truth.mean()))
    assert flagged["recall"] == 1.0
    with pytest.raises(ValueError):
        flag_all_f1(1.2)
    with pytest.raises(ValueError):
        flag_all_f1(-0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_auc_is_the_chance_a_noisy_sample_scores_below_a_clean_one(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.3
    quality = np.round(rng.random(300) - 0.3 * truth, 1)  # rounded: many ties, which count half
    noisy, clean = quality[truth], quality[~truth]
    pairs = (noisy[:, None] < clean[None, :]).mean() + 0.5 * (noisy[:, None] == clean[None, :]).mean()
    assert ranking_auc(quality, truth) == pytest.approx(pairs)
    assert ranking_auc(torch.from_numpy(quality), torch.from_numpy(truth)) == pytest.approx(pairs)
    assert ranking_auc(-quality, truth) == pytest.approx(1 - pairs)


def test_ranking_auc_edge_cases_and_bad_input():
    assert ranking_auc(np.array([0.1, 0.9]), np.array([True, False])) == 1.0
    assert np.isnan(ranking_auc(np.array([0.1, 0.9]), np.zeros(2, bool)))  # no wrong label: undefined
    assert np.isnan(ranking_auc(np.array([0.1, 0.9]), np.ones(2, bool)))
    with pytest.raises(ValueError, match="one score per sample"):
        ranking_auc(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ranking_auc(np.array([0.1, np.nan]), np.array([True, False]))


def test_detector_summary_and_run_header_give_the_metrics_json_fields():
    from types import SimpleNamespace

    from bkd_core.metrics import detector_summary, run_header

    truth = np.array([True, True, False, False, False])
    summary = detector_summary(np.array([True, False, True, False, False]), truth)
    assert summary == {"flagged_fraction": 0.4, "flag_all_f1": flag_all_f1(0.4), "detection_precision": 0.5,
                       "detection_recall": 0.5, "detection_f1": 0.5}
    data = SimpleNamespace(dataset="cifar10", split="worst", train_labels=np.zeros(5), noise_rate=0.4)
    config = SimpleNamespace(profile="features", seed=2)
    assert run_header("knn", data, config) == {"kind": "knn", "dataset": "cifar10", "split": "worst",
                                               "profile": "features", "seed": 2, "num_samples": 5,
                                               "true_noise_rate": 0.4}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_is_sklearns_roc_auc_without_sklearn(seed):
    from bkd_core.metrics import rank_auc, ranking_auc

    rng = np.random.default_rng(seed)
    is_noisy = rng.random(500) < 0.3
    quality = np.round(rng.random(500) - 0.3 * is_noisy, 2)  # rounded: many ties
    assert rank_auc(quality, is_noisy) == pytest.approx(ranking_auc(quality, is_noisy), abs=1e-12)
    assert rank_auc(quality, np.zeros(500, bool)) is None and rank_auc(quality, np.ones(500, bool)) is None
    assert rank_auc(np.where(is_noisy, 0.0, 1.0), is_noisy) == 1.0
