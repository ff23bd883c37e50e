"""Tests of bkd_core.features: label-free patch features, the backbone extractor, the cache."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from bkd_core import features as feat
from bkd_core.features import (
    BackboneFeatureSettings,
    FeatureCacheError,
    PatchFeatureSettings,
    cached_features,
    data_fingerprint,
    extract_features,
    feature_cache_path,
    register_extractor,
)

#: small settings: 200 images take well under a second
TINY = PatchFeatureSettings(n_patches=4000, n_atoms=32, kmeans_iters=3, out_dim=16, pca_fit_size=200,
                            chunk_size=64)


def _random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: horizontal stripes, class 1: vertical stripes; random period, phase, colour, noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.arange(32)
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i, label in enumerate(labels):
        period = rng.uniform(3, 8)
        wave = np.sin(2 * np.pi * grid / period + rng.uniform(0, 2 * np.pi))
        pattern = np.tile(wave[:, None], (1, 32)) if label == 0 else np.tile(wave[None, :], (32, 1))
        colour = rng.uniform(0.3, 1.0, 3)
        img = 128 + 80 * pattern[..., None] * colour + rng.normal(0, 20, (32, 32, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return _random_images(200, 0), _random_images(40, 1)


@pytest.fixture(scope="module")
def tiny_features(images):
    return extract_features(*images, settings=TINY, progress=False)


# --------------------------------------------------------------------------------------------
# the patch extractor
# --------------------------------------------------------------------------------------------
def test_shapes_dtypes_and_standardised_columns(tiny_features):
    train, test = tiny_features
    assert train.shape == (200, 16) and test.shape == (40, 16)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert np.isfinite(train).all() and np.isfinite(test).all()
    # PCA whitening: every column centred and of unit spread over the *training* images
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(0, ddof=1), 1, atol=1e-3)
    # the components are decorrelated on the training images
    corr = np.corrcoef(train.T)
    assert np.abs(corr - np.eye(16)).max() < 1e-3


def test_deterministic_and_seeded(images, tiny_features):
    again = extract_features(*images, settings=TINY, progress=False)
    np.testing.assert_array_equal(again[0], tiny_features[0])
    np.testing.assert_array_equal(again[1], tiny_features[1])
    other = extract_features(*images, settings=dataclasses.replace(TINY, seed=1), progress=False)
    assert not np.allclose(np.abs(other[0]), np.abs(tiny_features[0]), atol=1e-2)


def test_statistics_fitted_on_train_only(images, tiny_features):
    train_images, test_images = images
    changed = test_images.copy()
    changed[20:] = _random_images(20, 7)  # replace half of the test images
    train, test = extract_features(train_images, changed, settings=TINY, progress=False)
    np.testing.assert_array_equal(train, tiny_features[0])
    # the unchanged test images keep their features; the replaced ones do not
    np.testing.assert_allclose(test[:20], tiny_features[1][:20], rtol=1e-5, atol=1e-5)
    assert not np.allclose(test[20:], tiny_features[1][20:], atol=1e-2)
    # fewer test images: still the same training features
    train_few, test_few = extract_features(train_images, test_images[:3], settings=TINY, progress=False)
    np.testing.assert_array_equal(train_few, tiny_features[0])
    np.testing.assert_allclose(test_few, tiny_features[1][:3], rtol=1e-5, atol=1e-5)


def test_flip_invariance(images, tiny_features):
    train_images, test_images = images
    _, mirrored = extract_features(train_images, test_images[:, :, ::-1], settings=TINY, progress=False)
    # Exact in exact arithmetic; float32 sums in another order move a few features (seen: 2 of 40 rows, by up
    # to 1.7e-3 on an Intel Xeon, features of std 0.8), while mirroring without the option moves every row by
    # 1.1 or more (median 0.64): the tolerance sits far from both.
    np.testing.assert_allclose(mirrored, tiny_features[1], rtol=0, atol=1e-2)
    plain = dataclasses.replace(TINY, flip_invariant=False)
    _, a = extract_features(train_images, test_images, settings=plain, progress=False)
    _, b = extract_features(train_images, test_images[:, :, ::-1], settings=plain, progress=False)
    assert (np.abs(a - b).max(axis=1) > 0.1).all()  # without the option, mirroring changes every image's features


def test_pooled_dim_matches_encoding():
    x = torch.rand(3, 3, 32, 32)
    for flip, grid in ((True, 2), (True, 3), (False, 2), (False, 3)):
        s = dataclasses.replace(TINY, n_atoms=8, flip_invariant=flip, pool_grid=grid)
        filters = torch.randn(8, 108)
        codes = feat._encode_block(x, filters.T.contiguous(), torch.zeros(8), feat._pool_matrix(27, grid), s)
        assert codes.shape == (3, s.pooled_dim)
        expected = 2 * 8 * grid * grid
        # mirroring pairs every (cell, atom) with another one (the middle column's cells pair their atoms)
        assert s.pooled_dim == (expected // 2 if flip else expected)


def test_encoding_matches_a_direct_computation():
    """Soft-threshold codes against a plain conv2d + relu + adaptive pooling (no mirroring)."""
    torch.manual_seed(0)
    s = dataclasses.replace(TINY, n_atoms=5, flip_invariant=False, pool_grid=2, threshold=0.3)
    x = torch.rand(2, 3, 32, 32)
    filters, bias = torch.randn(5, 108), torch.randn(5)
    got = feat._encode_block(x, filters.T.contiguous(), -bias, feat._pool_matrix(27, 2), s)
    mu = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 6, stride=1)
    var = torch.nn.functional.avg_pool2d((x * x).mean(1, keepdim=True), 6, stride=1) - mu**2
    # windows normalised to zero mean: filters @ (w - mu) / sqrt(var + eps)
    raw = torch.nn.functional.conv2d(x, filters.view(5, 3, 6, 6))
    r = (raw - mu * filters.sum(1).view(1, 5, 1, 1)) / torch.sqrt(var + s.contrast_eps) - bias.view(1, 5, 1, 1)
    pos = torch.nn.functional.adaptive_avg_pool2d(torch.relu(r - 0.3), 2)  # [2, 5, 2, 2]
    neg = torch.nn.functional.adaptive_avg_pool2d(torch.relu(-r - 0.3), 2)
    expected = torch.stack([pos, neg], 1).permute(0, 3, 4, 1, 2).reshape(2, -1)  # cell, sign, atom
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_features_separate_structured_images():
    """Horizontal vs vertical stripes: a nearest-class-mean rule on the features is near perfect."""
    train_images, train_labels = _stripes(200, 0)
    test_images, test_labels = _stripes(100, 1)
    train, test = extract_features(train_images, test_images, settings=TINY, progress=False)
    means = np.stack([train[train_labels == c].mean(0) for c in (0, 1)])
    predicted = ((test[:, None, :] - means[None]) ** 2).sum(2).argmin(1)
    assert (predicted == test_labels).mean() >= 0.9  # chance is 0.5


def test_randomized_pca_matches_exact_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g) @ torch.randn(8, 50, generator=g) * torch.linspace(1, 3, 50)
    x = x - x.mean(0)
    comps, var = feat._randomized_pca(x, 5, 10, 2, torch.Generator().manual_seed(1))
    _, sv, vh = torch.linalg.svd(x.double(), full_matrices=False)
    torch.testing.assert_close(var.double(), sv[:5] ** 2 / 299, rtol=1e-3, atol=1e-4)
    overlap = (comps.double().T @ vh[:5].T).abs()  # same subspace, up to signs
    torch.testing.assert_close(overlap.diagonal(), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-3)


def test_unwhitened_output_keeps_component_order(images):
    s = dataclasses.replace(TINY, pca_whiten=False)
    train, _ = extract_features(*images, settings=s, progress=False)
    variances = train.var(0)
    assert variances[0] > 2 * variances[-1]  # the leading component keeps the larger spread
    np.testing.assert_allclose(variances.mean(), 1, rtol=2e-2)


@pytest.mark.parametrize("change", [dict(n_atoms=31), dict(pool_grid=0), dict(out_dim=0),
                                    dict(dictionary="sparse"), dict(n_atoms=10, n_patches=5)])
def test_settings_are_checked(change):
    with pytest.raises(ValueError, match="PatchFeatureSettings"):
        dataclasses.replace(TINY, **change)


def test_bad_images_are_rejected(images):
    train, test = images
    with pytest.raises(ValueError, match="uint8"):
        extract_features(train.astype(np.float32), test, settings=TINY, progress=False)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        extract_features(train[..., 0], test, settings=TINY, progress=False)
    with pytest.raises(ValueError, match="differ in size"):
        extract_features(train, test[:, :16, :16], settings=TINY, progress=False)


def test_fingerprint_depends_on_what_changes_the_result():
    assert TINY.fingerprint() == dataclasses.replace(TINY).fingerprint()
    assert TINY.fingerprint() == dataclasses.replace(TINY, chunk_size=7).fingerprint()
    keys = {dataclasses.replace(TINY, **c).fingerprint() for c in
            (dict(), dict(seed=1), dict(n_atoms=64), dict(pool_grid=3), dict(threshold=0.5),
             dict(flip_invariant=False), dict(pca_whiten=False))}
    assert len(keys) == 7
    assert BackboneFeatureSettings(weights=None).fingerprint() != BackboneFeatureSettings().fingerprint()


# --------------------------------------------------------------------------------------------
# the backbone extractor and the registry
# --------------------------------------------------------------------------------------------
def test_backbone_extractor_with_random_weights():
    torch.manual_seed(0)
    train, test = _random_images(6, 2), _random_images(3, 3)
    s = BackboneFeatureSettings(arch="resnet18", weights=None, image_size=32, batch_size=4, device="cpu")
    a, b = extract_features(train, test, settings=s, progress=False)
    assert a.shape == (6, 512) and b.shape == (3, 512)
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-4)  # standardised with the training images
    assert not np.allclose(b, 0)
    raw_a, _ = extract_features(train, test, settings=dataclasses.replace(s, standardize=False), progress=False)
    assert (raw_a >= 0).all()  # resnet18's penultimate layer is after a ReLU and average pooling


def test_unknown_settings_type_and_a_registered_extractor(images):
    @dataclasses.dataclass(frozen=True)
    class MeanColour:
        kind = "mean_colour"

        def fingerprint(self) -> str:
            return "mean-colour-v1"

    with pytest.raises(TypeError, match="no extractor registered"):
        extract_features(*images, settings=MeanColour(), progress=False)

    def mean_colour(train, test, *, settings, progress=True):
        return train.mean((1, 2)), test.mean((1, 2))

    register_extractor(MeanColour, mean_colour)
    try:
        a, b = extract_features(*images, settings=MeanColour(), progress=False)
        assert a.shape == (200, 3) and a.dtype == np.float32
        np.testing.assert_allclose(b, images[1].mean((1, 2)), rtol=1e-6)
    finally:
        feat.EXTRACTORS.pop(MeanColour)
    with pytest.raises(TypeError, match="dataclass"):
        register_extractor(int, mean_colour)


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
def _forbid_extraction(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(feat, "extract_features", fail)


def test_cache_round_trip(images, tiny_features, tmp_path, monkeypatch):
    first = cached_features(images, settings=TINY, root=tmp_path, progress=False)
    np.testing.assert_array_equal(first[0], tiny_features[0])
    path = feature_cache_path(images, settings=TINY, root=tmp_path)
    assert path.is_file() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as archive:  # a plain archive, readable without pickle
        assert set(archive.files) == {"train", "test", "fingerprint", "settings"}
    _forbid_extraction(monkeypatch)
    second = cached_features(images, settings=TINY, root=tmp_path, progress=False)
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])


def test_cache_key_follows_settings_and_data(images, tmp_path):
    base = feature_cache_path(images, settings=TINY, root=tmp_path)
    assert feature_cache_path(images, settings=dataclasses.replace(TINY, seed=3), root=tmp_path) != base
    assert feature_cache_path(images, settings=dataclasses.replace(TINY, chunk_size=9), root=tmp_path) == base
    changed = images[0].copy()
    changed[0, 0, 0, 0] ^= 1  # one bit of one pixel
    assert feature_cache_path((changed, images[1]), settings=TINY, root=tmp_path) != base
    assert feature_cache_path((images[0], images[1][:-1]), settings=TINY, root=tmp_path) != base
    assert data_fingerprint(*images) == data_fingerprint(images[0].copy(), images[1].copy())


def test_cache_folder_from_environment(images, tmp_path, monkeypatch):
    monkeypatch.setenv("BKD_FEATURE_CACHE", str(tmp_path / "env"))
    assert feature_cache_path(images, settings=TINY).parent == tmp_path / "env"
    monkeypatch.delenv("BKD_FEATURE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache_path(images, settings=TINY).parent == tmp_path / "xdg" / "bkd_core" / "features"


def test_cache_accepts_a_noisy_cifar(images, tmp_path):
    from bkd_core.data import NoisyCIFAR

    train, test = images
    data = NoisyCIFAR(train, np.zeros(200), np.zeros(200), test, np.zeros(40), 10, "cifar10", "clean")
    a, b = cached_features(data, settings=TINY, root=tmp_path, progress=False)
    path = feature_cache_path(data, settings=TINY, root=tmp_path)
    assert path.name.startswith("cifar10-patches-") and path.is_file()
    assert a.shape == (200, 16) and b.shape == (40, 16)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_damaged_cache_is_recomputed_or_raises(images, tiny_features, tmp_path, damage):
    cached_features(images, settings=TINY, root=tmp_path, progress=False)
    path = feature_cache_path(images, settings=TINY, root=tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, train=np.zeros((5, 16), np.float32), test=np.zeros((40, 16), np.float32),
                 fingerprint=np.array(TINY.fingerprint()), settings=np.array("{}"))
    with pytest.raises(FeatureCacheError, match="delete it to recompute"):
        cached_features(images, settings=TINY, root=tmp_path, progress=False, on_damaged="raise")
    with pytest.warns(RuntimeWarning, match="recomputing"):
        train, test = cached_features(images, settings=TINY, root=tmp_path, progress=False)
    np.testing.assert_array_equal(train, tiny_features[0])
    np.testing.assert_array_equal(test, tiny_features[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: now read without a warning
        cached_features(images, settings=TINY, root=tmp_path, progress=False)


def test_failed_write_leaves_no_file(images, tmp_path, monkeypatch):
    def broken_savez(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(feat.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cached_features(images, settings=TINY, root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# one image set, in any form
# --------------------------------------------------------------------------------------------
def test_one_image_set_gives_its_features_as_the_pair_form_does(images, tiny_features):
    train, _ = images
    single = extract_features(train, settings=TINY, progress=False)
    assert isinstance(single, np.ndarray) and single.dtype == np.float32 and single.shape == (200, 16)
    # fitted on the same images: exactly the pair form's training features (the test set is only transformed)
    np.testing.assert_array_equal(single, tiny_features[0])


def test_image_forms_give_the_same_features(images):
    from PIL import Image

    train = images[0][:60]
    expected = extract_features(train, settings=TINY, progress=False)
    forms = {
        "strided view": (np.asfortranarray(train), expected),
        "tensor NHWC": (torch.from_numpy(train), expected),
        "tensor NCHW": (torch.from_numpy(train).permute(0, 3, 1, 2), expected),
        "list of PIL": ([Image.fromarray(im) for im in train], expected),
        "list of arrays": (list(train), expected),
    }
    reversed_view = extract_features(train[::-1], settings=TINY, progress=False)
    np.testing.assert_array_equal(reversed_view, extract_features(train[::-1].copy(), settings=TINY, progress=False))
    for name, (form, want) in forms.items():
        got = extract_features(form, settings=TINY, progress=False)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    # a grey or RGBA PIL image is converted to RGB
    grey = [Image.fromarray(im).convert("L") for im in train]
    assert extract_features(grey, settings=TINY, progress=False).shape == (60, 16)


@pytest.mark.parametrize("bad, match", [
    (np.random.default_rng(0).random((10, 32, 32, 3)), r"uint8 .*\(images \* 255\)\.round\(\)"),
    (np.zeros((32, 32, 3), np.uint8), r"one image\? pass a batch .*images\[None\]"),
    (np.zeros((10, 32, 24, 3), np.uint8), "square images of at least 7 pixels a side.*got 32x24; crop or resize"),
    (np.zeros((10, 5, 5, 3), np.uint8), "at least 7 pixels.*got 5x5"),
    (np.zeros((1, 32, 32, 3), np.uint8), "at least 2 images, got 1"),
    (np.zeros((0, 32, 32, 3), np.uint8), "images is empty"),
    ([], "empty sequence"),
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)], "2 different sizes.*resize them"),
    (np.zeros((10, 32, 32), np.uint8), r"\[N, H, W, 3\]"),
], ids=["floats", "one image", "not square", "too small", "one", "none", "empty list", "mixed sizes", "grey"])
def test_unsupported_images_get_one_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        extract_features(bad, settings=TINY, progress=False)


def test_cached_features_of_one_image_set(images, tmp_path, monkeypatch):
    train = images[0]
    first = cached_features(train, settings=TINY, root=tmp_path, progress=False)
    assert isinstance(first, np.ndarray) and first.shape == (200, 16) and first.dtype == np.float32
    path = feature_cache_path(train, settings=TINY, root=tmp_path)
    assert path.is_file() and path.name.startswith("images1-patches-")
    assert path != feature_cache_path(images, settings=TINY, root=tmp_path)  # not the pair's key
    assert feature_cache_path(torch.from_numpy(train), settings=TINY, root=tmp_path) == path  # same images
    _forbid_extraction(monkeypatch)
    np.testing.assert_array_equal(cached_features(list(train), settings=TINY, root=tmp_path, progress=False), first)


def test_backbone_features_of_one_image_set():
    torch.manual_seed(0)
    s = BackboneFeatureSettings(arch="resnet18", weights=None, image_size=32, batch_size=4, device="cpu")
    out = extract_features(_random_images(5, 4), settings=s, progress=False)
    assert out.shape == (5, 512) and out.dtype == np.float32 and np.isfinite(out).all()
