"""The features path through the one trainer: BKD, cross-entropy and confident learning on label-free
feature vectors with the MLP (``BKDConfig.features``), on tiny synthetic images with a small extractor."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bkd_core import features
from bkd_core.config import BKDConfig
from bkd_core.detectors.confident_learning import train_confident_learning
from bkd_core.errors import RunDirError
from bkd_core.synthetic import make_synthetic_cifar_n
from bkd_core.train import train_bkd, train_ce, with_config_features

SMALL = features.PatchFeatureSettings(n_patches=2000, n_atoms=16, kmeans_iters=2, out_dim=16, pca_fit_size=200,
                                      pca_oversample=8, chunk_size=64)
MLP = BKDConfig(model="mlp", model_widths=(32,), features="patches", augment=False, epochs=6, batch_size=32,
                lr_step=None, val_every=1, test_every=1, eval_batch_size=128, tipping_fallback=1, seed=0)


@pytest.fixture
def data(monkeypatch, tmp_path):
    monkeypatch.setitem(features.FEATURE_SETTINGS, "patches", SMALL)
    monkeypatch.setenv("BKD_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    return make_synthetic_cifar_n(n_train=200, n_test=50, noise_rate=0.3, seed=1)


def test_bkd_and_ce_train_on_features(data, tmp_path):
    bkd = train_bkd(data, MLP, tmp_path / "bkd", progress=False)
    ce = train_ce(data, MLP, tmp_path / "ce", progress=False)
    assert bkd.metrics["tipping_epoch"] is not None and bkd.label_quality.shape == (len(data),)
    assert np.isfinite(bkd.label_quality).all() and np.isfinite(ce.label_quality).all()
    assert bkd.metrics["test_acc"] > 30 and ce.metrics["test_acc"] > 30  # the synthetic classes are easy (chance 10)
    identity = json.loads((tmp_path / "bkd" / "config.json").read_text())["identity"]
    assert identity["features"] == f"patches-{SMALL.fingerprint()}"
    assert list((tmp_path / "feature-cache").glob("*.npz"))  # computed once, cached


def test_features_are_fitted_on_the_full_set_and_subsets_carry_them(data):
    full = with_config_features(data, MLP, progress=False)
    part = full.subset(50, seed=0)
    np.testing.assert_array_equal(part.train_features, full.train_features[np.searchsorted(full.indices, part.indices)])
    assert with_config_features(full, MLP) is full  # already attached


def test_confident_learning_on_features(data, tmp_path):
    result = train_confident_learning(data, MLP.replace(epochs=3), tmp_path / "cl", folds=2, progress=False)
    np.testing.assert_allclose(result.arrays["pred_probs"].sum(1), 1.0, atol=1e-4)


def test_a_run_of_other_features_is_refused(data, tmp_path, monkeypatch):
    train_ce(data, MLP.replace(epochs=1), tmp_path / "ce", progress=False)
    monkeypatch.setitem(features.FEATURE_SETTINGS, "patches", features.PatchFeatureSettings(
        **{**SMALL.__dict__, "threshold": 0.5}))
    with pytest.raises(RunDirError, match="belongs to a different run"):
        train_ce(data, MLP.replace(epochs=1), tmp_path / "ce", progress=False)


@pytest.mark.parametrize("changes, fragment", [({"features": None}, "model 'mlp' trains on feature vectors"),
                                               ({"model": "small_cnn", "model_widths": (4, 4, 4)},
                                                "features with model 'mlp'"),
                                               ({"augment": True}, "augment must be False with features")])
def test_features_config_checks(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        MLP.replace(**changes)


def test_knn_on_features_writes_a_run_and_shares_one_neighbour_graph(data, tmp_path):
    from bkd_core.detectors.knn import train_knn

    first = train_knn(data, MLP, tmp_path / "knn", progress=False)
    assert first.label_issues.shape == (len(data),) and first.metrics["kind"] == "knn"
    assert first.metrics["num_samples"] == len(data) and 0 < first.metrics["detection_f1"] <= 1
    [graph] = (tmp_path / "feature-cache").glob("knn-*.npy")
    other = dataclasses.replace(data, split="clean", train_labels=data.clean_labels.copy())  # same images
    second = train_knn(other, MLP, tmp_path / "knn-other", progress=False)
    assert list((tmp_path / "feature-cache").glob("knn-*.npy")) == [graph]  # the same graph, reused
    assert second.metrics["true_noise_rate"] == 0 < first.metrics["true_noise_rate"]
    again = train_knn(data, MLP, tmp_path / "knn", progress=False)  # finished: loaded
    assert again.metrics == first.metrics
    (tmp_path / "knn" / "scores.npz").write_bytes(b"damaged")  # recomputed
    np.testing.assert_array_equal(train_knn(data, MLP, tmp_path / "knn", progress=False).label_quality,
                                  first.label_quality)
