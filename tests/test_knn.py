"""Tests of bkd_core.detectors.knn: k-nearest-neighbour label voting."""

from __future__ import annotations

import numpy as np
import pytest

from bkd_core.detectors.knn import knn_label_issues, nearest_neighbours


def _clusters(n_per: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well separated directions (cosine geometry): class c around a random unit vector."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), n_per)
    x = centres[labels] + 0.15 * rng.normal(size=(len(labels), 16))
    return (x * rng.uniform(0.5, 3.0, (len(labels), 1))).astype(np.float32), labels  # norms do not matter


def test_neighbours_match_brute_force_and_exclude_self():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    got = nearest_neighbours(x, k=4, batch_size=7)  # several blocks
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(got, expected)
    assert not (got == np.arange(60)[:, None]).any()


def test_detects_flipped_labels():
    x, clean = _clusters(50, 4, 1)
    rng = np.random.default_rng(2)
    noisy = clean.copy()
    flipped = rng.choice(len(clean), 30, replace=False)
    noisy[flipped] = (clean[flipped] + rng.integers(1, 4, 30)) % 4
    res = knn_label_issues(x, noisy, k=10)
    truth = noisy != clean
    assert res.label_issues.shape == (200,) and res.label_issues.dtype == bool
    assert res.label_quality.dtype == np.float32 and res.ranked_indices.dtype == np.int64
    # separated clusters with 15% noise: nearly every flip is found, nearly nothing else
    assert res.label_issues[truth].mean() >= 0.9
    assert res.label_issues[~truth].mean() <= 0.05
    assert res.label_quality[truth].mean() < 0.3 < 0.7 < res.label_quality[~truth].mean()
    assert len(set(res.ranked_indices[:30].tolist()) & set(flipped.tolist())) >= 27  # worst first
    assert res.estimated_noise_rate == res.label_issues.mean() and res.ranked is res.ranked_indices
    found = truth & res.label_issues
    assert (res.vote[found] == clean[found]).mean() >= 0.9  # the vote recovers the clean label
    assert (res.vote[res.label_issues] != noisy[res.label_issues]).all()
    np.testing.assert_array_equal(res.neighbour_counts.sum(1), 10)


def test_quality_and_vote_by_hand():
    # four points on a line of angles: 0 and 1 close, 2 and 3 close
    x = np.array([[1, 0.0], [1, 0.1], [0, 1.0], [0.1, 1]], np.float32)
    res = knn_label_issues(x, np.array([0, 1, 1, 1]), k=1)
    # nearest of 0 is 1 (label 1): issue; of 1 is 0 (label 0): issue; 2 and 3 agree
    np.testing.assert_array_equal(res.label_issues, [True, True, False, False])
    np.testing.assert_array_equal(res.label_quality, [0, 0, 1, 1])
    np.testing.assert_array_equal(res.vote, [1, 0, 1, 1])
    res2 = knn_label_issues(x, np.array([0, 1, 1, 1]), k=2)  # 0's neighbours: 1 (label 1) and 3 (label 1)
    assert res2.label_issues[0] and res2.label_quality[0] == 0
    # a tie that includes the given label counts as agreement: 1's neighbours are 0 (label 0) and 3 (label 1)
    assert not res2.label_issues[1] and res2.label_quality[1] == 0.5 and res2.vote[1] == 1


@pytest.mark.parametrize("kwargs, match", [(dict(k=0), "k must"), (dict(k=4), "k must"),
                                           (dict(num_classes=1), "num_classes must be an integer >= 2")])
def test_arguments_are_checked(kwargs, match):
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        knn_label_issues(x, np.array([0, 1, 0, 1]), **kwargs)
    with pytest.raises(ValueError, match="integer"):
        knn_label_issues(x, np.array([0.0, 1, 0, 1]))
    with pytest.raises(ValueError, match="rows"):
        knn_label_issues(x, np.array([0, 1, 0]), k=1)


def test_the_neighbour_graph_is_cached_once_per_feature_matrix(tmp_path, monkeypatch):
    import bkd_core.detectors.knn as knn

    x, labels = _clusters(20, 3, seed=4)
    graph = knn.cached_nearest_neighbours(x, k=5, root=tmp_path)
    np.testing.assert_array_equal(graph, nearest_neighbours(x, k=5))
    [path] = tmp_path.glob("knn-*-k5-b2048.npy")

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(knn, "_nearest", fail)  # the computation behind nearest_neighbours
    np.testing.assert_array_equal(knn.cached_nearest_neighbours(x, k=5, root=tmp_path), graph)  # read, not computed
    with pytest.raises(AssertionError, match="recomputed"):  # other features or another k: another file
        knn.cached_nearest_neighbours(x[::-1], k=5, root=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):
        knn.cached_nearest_neighbours(x, k=4, root=tmp_path)
    monkeypatch.undo()

    path.write_bytes(path.read_bytes()[:40])  # truncated: recomputed with a warning, and rewritten
    with pytest.warns(RuntimeWarning, match="damaged"):
        np.testing.assert_array_equal(knn.cached_nearest_neighbours(x, k=5, root=tmp_path), graph)
    np.testing.assert_array_equal(np.load(path), graph)
    res = knn.knn_label_issues(x, labels, k=5, neighbours=graph)
    direct = knn.knn_label_issues(x, labels, k=5)
    np.testing.assert_array_equal(res.label_quality, direct.label_quality)
    np.testing.assert_array_equal(res.label_issues, direct.label_issues)
    with pytest.raises(ValueError, match="neighbours must be"):
        knn.knn_label_issues(x, labels, k=4, neighbours=graph)


@pytest.mark.parametrize("features, labels, num_classes, match", [
    (np.eye(20, 3), np.zeros(20, np.int64), 2, "labels hold one class only"),
    (np.eye(20, 3), np.arange(20) % 4, 99_999, "num_classes=99,999 is far more than the labels need"),
    (np.ma.masked_array(np.eye(20, 3), mask=np.eye(20, 3) > 0), np.arange(20) % 4, None,
     "features is a masked array with 3 masked entries"),
    (np.eye(20, 3), np.arange(20) % 4 * 1000, None, "most class ids .* are unused"),
], ids=["one class", "huge num_classes", "masked", "sparse ids"])
def test_knn_and_bkd_refuse_the_same_inputs_with_the_same_sentence(features, labels, num_classes, match):
    from bkd_core.label_issues import find_label_issues

    with pytest.raises(ValueError, match=match) as knn_error:
        knn_label_issues(features, labels, k=3, num_classes=num_classes)
    with pytest.raises(ValueError, match=match) as bkd_error:
        find_label_issues(features, labels, num_classes=num_classes, progress=False)
    assert str(knn_error.value) == str(bkd_error.value)
