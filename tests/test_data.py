"""Tests of bkd_core.data: loading, validation, error messages, subsets, splits, download.

Synthetic tests shrink the expected set sizes (``CIFAR_TRAIN_SIZE``/``CIFAR_TEST_SIZE``) with
monkeypatch and work on small generated files in ``tmp_path``. The real-data tests read the
unpacked data from ``$BKD_DATA_DIR`` and are skipped when it is unset.
"""

from __future__ import annotations

import io
import os
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bkd_core import data as D

N_TRAIN = 200
N_TEST = 50


# --------------------------------------------------------------------------------------------
# Helpers: small generated CIFAR / CIFAR-N files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_sizes(monkeypatch):
    """Shrink the expected training / test set sizes so that small generated files are valid."""
    monkeypatch.setattr(D, "CIFAR_TRAIN_SIZE", N_TRAIN)
    monkeypatch.setattr(D, "CIFAR_TEST_SIZE", N_TEST)


def _flip(labels: np.ndarray, rate: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``labels`` with exactly round(rate * n) entries moved to another class."""
    out = labels.copy()
    rows = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    out[rows] = (labels[rows] + rng.integers(1, k, size=len(rows))) % k
    return out


#: Noise rates of the generated label files (exact, by construction).
CIFAR10_RATES = {"clean": 0.0, "aggre": 0.09, "rand1": 0.17, "rand2": 0.18, "rand3": 0.175, "worst": 0.40}
CIFAR100_RATES = {"clean100": 0.0, "noisy100": 0.40}


def make_arrays(dataset: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Image arrays in the cifar10.npz format (uint8 HWC, uint8 labels), small sizes."""
    rng = np.random.default_rng(seed)
    k = D.NUM_CLASSES[dataset]
    return {
        "x_train": rng.integers(0, 256, size=(N_TRAIN, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, k, size=N_TRAIN).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(N_TEST, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, k, size=N_TEST).astype(np.uint8),
    }


def make_labels(dataset: str, clean: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    """A CIFAR-N style label dict (int64 numpy arrays) whose clean_label is ``clean``."""
    rng = np.random.default_rng(seed)
    k = D.NUM_CLASSES[dataset]
    clean = np.asarray(clean, dtype=np.int64)
    if dataset == "cifar10":
        return {key: _flip(clean, CIFAR10_RATES[s], k, rng) for s, key in D.CIFAR10_SPLITS.items()}
    coarse = clean // 5  # any values in [0, 20); the release stores these as lists of ints
    return {
        "clean_label": clean,
        "noisy_label": _flip(clean, CIFAR100_RATES["noisy100"], k, rng),
        "clean_coarse_label": coarse.tolist(),
        "noisy_coarse_label": _flip(coarse, 0.3, 20, rng).tolist(),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def write_labels(path: Path, labels: object) -> Path:
    torch.save(labels, path)
    return path


def make_root(root: Path, dataset: str = "cifar10", *, arrays=None, labels=None) -> Path:
    """Write ``cifar10.npz``/``cifar100.npz`` and the matching label file into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays(dataset) if arrays is None else arrays
    labels = make_labels(dataset, arrays["y_train"]) if labels is None else labels
    write_npz(root / D.IMAGE_FILES[dataset], arrays)
    write_labels(root / D.LABEL_FILES[dataset], labels)
    return root


@pytest.fixture
def root10(tmp_path, small_sizes) -> Path:
    return make_root(tmp_path / "data10", "cifar10")


@pytest.fixture
def root100(tmp_path, small_sizes) -> Path:
    return make_root(tmp_path / "data100", "cifar100")


# --------------------------------------------------------------------------------------------
# Good loads
# --------------------------------------------------------------------------------------------


def test_load_cifar10_good(root10):
    arrays = make_arrays("cifar10")
    labels = make_labels("cifar10", arrays["y_train"])
    for split, key in D.CIFAR10_SPLITS.items():
        d = D.load_cifar_n("cifar10", split, root10)
        assert (d.dataset, d.split, d.num_classes) == ("cifar10", split, 10)
        assert d.train_images.dtype == np.uint8 and d.train_images.shape == (N_TRAIN, 32, 32, 3)
        assert d.test_images.dtype == np.uint8 and d.test_images.shape == (N_TEST, 32, 32, 3)
        for a in (d.train_labels, d.clean_labels, d.test_labels, d.indices):
            assert a.dtype == np.int64
        np.testing.assert_array_equal(d.train_images, arrays["x_train"])
        np.testing.assert_array_equal(d.test_images, arrays["x_test"])
        np.testing.assert_array_equal(d.test_labels, arrays["y_test"])
        np.testing.assert_array_equal(d.clean_labels, arrays["y_train"])
        np.testing.assert_array_equal(d.train_labels, labels[key])
        np.testing.assert_array_equal(d.indices, np.arange(N_TRAIN))
        assert d.noise_rate == pytest.approx(CIFAR10_RATES[split])
        assert d.is_noisy.dtype == bool and d.is_noisy.sum() == round(CIFAR10_RATES[split] * N_TRAIN)
        assert len(d) == N_TRAIN
    assert "worst" in repr(d) and "noise_rate=0.4000" in repr(d)


def test_load_cifar100_from_generated_files(root100):
    arrays = make_arrays("cifar100")
    clean = D.load_cifar_n("cifar100", "clean100", root100)
    noisy = D.load_cifar_n("cifar100", "noisy100", root100)
    assert clean.num_classes == noisy.num_classes == 100
    assert clean.noise_rate == 0.0
    assert noisy.noise_rate == pytest.approx(0.40)
    np.testing.assert_array_equal(noisy.clean_labels, arrays["y_train"])
    np.testing.assert_array_equal(noisy.train_images, arrays["x_train"])
    assert noisy.train_labels.max() < 100
    labels = D.load_cifar_n_labels(root100 / "CIFAR-100_human.pt")  # dataset inferred from keys
    assert set(labels) == {"clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label"}
    assert all(v.dtype == np.int64 and v.shape == (N_TRAIN,) for v in labels.values())
    assert labels["clean_coarse_label"].max() < 20


def test_label_file_with_numpy1_pickle_names_loads(tmp_path, small_sizes):
    """The release pickles numpy 1's ``numpy.core.multiarray._reconstruct``; that name is allowed."""
    good = write_labels(tmp_path / "new.pt", make_labels("cifar10", np.zeros(N_TRAIN, np.int64)))
    old = tmp_path / "CIFAR-10_human.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            payload = zin.read(info)
            if info.filename.endswith("data.pkl"):
                payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
                assert b"numpy.core.multiarray\n_reconstruct" in payload
            zout.writestr(info, payload)
    labels = D.load_cifar_n_labels(old, "cifar10")
    assert labels["worse_label"].shape == (N_TRAIN,)


def test_load_from_torchvision_folder(tmp_path, small_sizes, monkeypatch):
    """Without an npz, the torchvision folder is read through torchvision.datasets.CIFAR100."""
    import torchvision.datasets

    arrays = make_arrays("cifar100")
    root = tmp_path / "tv"
    (root / "cifar-100-python").mkdir(parents=True)
    write_labels(root / "CIFAR-100_human.pt", make_labels("cifar100", arrays["y_train"]))
    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            calls.append((root, train, download))
            self.data = arrays["x_train"] if train else arrays["x_test"]
            self.targets = (arrays["y_train"] if train else arrays["y_test"]).astype(int).tolist()

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    d = D.load_cifar_n("cifar100", "noisy100", root)
    assert calls == [(str(root), True, False), (str(root), False, False)]
    np.testing.assert_array_equal(d.train_images, arrays["x_train"])
    assert d.test_labels.dtype == np.int64
    assert d.noise_rate == pytest.approx(0.40)


def test_corrupt_torchvision_folder(tmp_path, small_sizes, monkeypatch):
    import torchvision.datasets

    root = tmp_path / "tv"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    write_labels(root / "CIFAR-10_human.pt", make_labels("cifar10", np.zeros(N_TRAIN, np.int64)))

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Broken)
    with pytest.raises(D.DataError, match="cifar-10-batches-py") as e:
        D.load_cifar_n("cifar10", "aggre", root)
    assert "md5" in str(e.value) and "bkd_core data --dataset cifar10" in str(e.value)


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, given, canonical",
    [
        ("cifar10", "worst", "worst"),
        ("cifar10", "worse_label", "worst"),
        ("cifar10", "WORST", "worst"),
        ("cifar10", "aggre_label", "aggre"),
        ("cifar10", "random_label1", "rand1"),
        ("cifar10", "random_label3", "rand3"),
        ("cifar10", "clean_label", "clean"),
        ("CIFAR-10", "rand2", "rand2"),
        ("cifar100", "clean_label", "clean100"),
        ("cifar100", "noisy_label", "noisy100"),
        ("cifar_100", "noisy100", "noisy100"),
    ],
)
def test_split_aliases(dataset, given, canonical):
    assert D.canonical_split(dataset, given) == canonical


def test_split_alias_loads_same_labels(root10):
    a = D.load_cifar_n("cifar10", "worse_label", root10)
    b = D.load_cifar_n("cifar10", "worst", root10)
    assert a.split == b.split == "worst"
    np.testing.assert_array_equal(a.train_labels, b.train_labels)


def test_unknown_split_lists_valid_splits():
    with pytest.raises(ValueError) as e:
        D.canonical_split("cifar10", "noisy")
    msg = str(e.value)
    assert "'noisy'" in msg
    for name, key in D.CIFAR10_SPLITS.items():
        assert name in msg and key in msg
    with pytest.raises(ValueError, match="clean100.*noisy100"):
        D.canonical_split("cifar100", "worst")
    with pytest.raises(ValueError, match="dataset='cifar100'"):
        D.canonical_split("cifar10", "noisy100")


def test_unknown_split_checked_before_files(tmp_path):
    with pytest.raises(ValueError, match="valid splits"):
        D.load_cifar_n("cifar10", "bogus", tmp_path / "does-not-exist")


def test_unknown_dataset_lists_valid_datasets():
    with pytest.raises(ValueError, match="'imagenet'.*cifar10, cifar100"):
        D.load_cifar_n("imagenet", "clean")
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        D.class_names("mnist")
    assert D.canonical_dataset("CIFAR-100") == "cifar100"


def test_class_names():
    c10 = D.class_names("cifar10")
    assert c10[0] == "airplane" and c10[9] == "truck" and len(c10) == 10
    c100 = D.class_names("cifar100")
    assert len(c100) == len(set(c100)) == 100
    assert c100 == sorted(c100)  # torchvision's meta file lists the fine names alphabetically
    assert (c100[0], c100[1], c100[99]) == ("apple", "aquarium_fish", "worm")
    c100.append("x")  # callers get a copy
    assert len(D.class_names("cifar100")) == 100


# --------------------------------------------------------------------------------------------
# Bad image files
# --------------------------------------------------------------------------------------------


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"<html>404: Not Found</html>")
    elif how == "bitflip":  # keep the zip structure, damage array bytes: CRC check fails
        b = bytearray(raw)
        for i in range(len(b) // 3, len(b) // 3 + 64):
            b[i] ^= 0xFF
        path.write_bytes(bytes(b))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "bitflip"])
def test_corrupt_npz(root10, how):
    path = root10 / "cifar10.npz"
    _corrupt(path, how)
    with pytest.raises(D.DataError) as e:
        D.load_cifar_n("cifar10", "aggre", root10)
    msg = str(e.value)
    assert str(path) in msg and ("truncated or corrupt" in msg)
    assert "bkd_core data" in msg and "unpack.py" not in msg


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "bitflip"])
def test_a_corrupt_npz_is_closed_at_once(root10, how):
    """The refused image file is closed before the error leaves the reader, not left open for the garbage
    collector to warn about during some later test."""
    import gc
    import warnings

    path = root10 / "cifar10.npz"
    _corrupt(path, how)
    gc.collect()  # what earlier tests left warns now, not below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(D.DataError):
            D.load_cifar_n("cifar10", "aggre", root10)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and str(path) in str(w.message)]


def test_npz_wrong_keys(root10):
    arrays = make_arrays("cifar10")
    arrays["images"] = arrays.pop("x_test")
    write_npz(root10 / "cifar10.npz", arrays)
    with pytest.raises(D.DataError, match=r"missing keys \['x_test'\].*present") as e:
        D.load_cifar_n("cifar10", "aggre", root10)
    assert "images" in str(e.value)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda a: a.update(x_train=a["x_train"][:-1], y_train=a["y_train"][:-1]), r"199 images instead of 200"),
        (lambda a: a.update(x_test=a["x_test"][:-1]), r"'x_test' has shape \(49, 32, 32, 3\)"),
        (lambda a: a.update(y_test=a["y_test"][:-1]), r"'y_test' has 49 labels, expected 50"),
        (lambda a: a.update(x_train=a["x_train"].transpose(0, 3, 1, 2)), r"CHW"),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), r"dtype float32, expected uint8"),
        (lambda a: a.update(y_train=a["y_train"].astype(np.float64)), r"'y_train' has dtype float64"),
        (lambda a: a.update(y_test=np.full(N_TEST, 10)), r"'y_test' has 50 labels outside \[0, 10\)"),
    ],
    ids=["train-length", "test-length", "test-labels-length", "chw", "float-images", "float-labels", "range"],
)
def test_bad_image_arrays(root10, change, pattern):
    arrays = make_arrays("cifar10")
    change(arrays)
    write_npz(root10 / "cifar10.npz", arrays)
    with pytest.raises(D.DataError, match=pattern) as e:
        D.load_cifar_n("cifar10", "aggre", root10)
    assert str(root10 / "cifar10.npz") in str(e.value)


def test_misordered_images_detected(root10):
    """A shuffled copy of the images (each image keeps its own label) no longer fits CIFAR-N."""
    arrays = make_arrays("cifar10")
    perm = np.random.default_rng(5).permutation(N_TRAIN)
    shuffled = {**arrays, "x_train": arrays["x_train"][perm], "y_train": arrays["y_train"][perm]}
    write_npz(root10 / "cifar10.npz", shuffled)
    with pytest.raises(D.DataError) as e:
        D.load_cifar_n("cifar10", "worst", root10)
    msg = str(e.value)
    assert "clean_label differs" in msg and "order" in msg
    assert str(root10 / "cifar10.npz") in msg and str(root10 / "CIFAR-10_human.pt") in msg


# --------------------------------------------------------------------------------------------
# Bad label files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_corrupt_label_file(root10, how):
    path = root10 / "CIFAR-10_human.pt"
    _corrupt(path, how)
    with pytest.raises(D.DataError) as e:
        D.load_cifar_n("cifar10", "aggre", root10)
    msg = str(e.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "bkd_core data" in msg


def _labels10(**changes):
    labels = make_labels("cifar10", make_arrays("cifar10")["y_train"])
    labels.update(changes)
    return {k: v for k, v in labels.items() if v is not None}


@pytest.mark.parametrize(
    "labels, pattern",
    [
        (lambda: _labels10(worse_label=None), r"missing keys \['worse_label'\] for cifar10 \(present: "),
        (lambda: _labels10(aggre_label=np.zeros(N_TRAIN - 1, np.int64)), r"'aggre_label' has 199 labels, expected 200"),
        (lambda: _labels10(aggre_label=np.zeros(N_TRAIN + 5, np.int64)), r"'aggre_label' has 205 labels"),
        (lambda: _labels10(random_label2=np.full(N_TRAIN, 10)), r"'random_label2' has 200 labels outside \[0, 10\)"),
        (lambda: _labels10(random_label2=np.full(N_TRAIN, -1)), r"outside \[0, 10\) \(first at index 0: -1\)"),
        (lambda: _labels10(clean_label=np.zeros(N_TRAIN, np.float32)), r"'clean_label' has dtype float32"),
        (lambda: _labels10(clean_label=np.zeros((N_TRAIN, 1), np.int64)), r"shape \(200, 1\)"),
        (lambda: [1, 2, 3], r"holds a list, expected a dict"),
        (lambda: {"foo": np.zeros(N_TRAIN, np.int64)}, r"cannot tell CIFAR-10N from CIFAR-100N"),
    ],
    ids=["missing-key", "short", "long", "range-high", "range-negative", "float", "2d", "not-dict", "unknown-keys"],
)
def test_bad_label_contents(root10, labels, pattern):
    path = write_labels(root10 / "CIFAR-10_human.pt", labels())
    with pytest.raises(D.DataError, match=pattern) as e:
        D.load_cifar_n_labels(path)
    assert str(path) in str(e.value)


def test_cifar100_file_as_cifar10_labels(tmp_path, small_sizes):
    arrays = make_arrays("cifar10")
    root = make_root(tmp_path, "cifar10", arrays=arrays, labels=make_labels("cifar100", arrays["y_train"]))
    with pytest.raises(D.DataError, match=r"missing keys .*aggre_label.* for cifar10"):
        D.load_cifar_n("cifar10", "aggre", root)


def test_cifar100_labels_out_of_range(tmp_path, small_sizes):
    arrays = make_arrays("cifar100")
    labels = make_labels("cifar100", arrays["y_train"])
    labels["noisy_label"] = labels["noisy_label"] + 100
    root = make_root(tmp_path, "cifar100", arrays=arrays, labels=labels)
    with pytest.raises(D.DataError, match=r"'noisy_label' has 200 labels outside \[0, 100\)"):
        D.load_cifar_n("cifar100", "noisy100", root)


_EVIL_CALLED = []


def _evil_payload(*args):
    _EVIL_CALLED.append(args)
    return np.zeros(N_TRAIN, np.int64)


class _Evil:
    def __reduce__(self):
        return (_evil_payload, ("code ran",))


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_label_file_with_arbitrary_objects_is_refused(tmp_path, small_sizes):
    path = write_labels(tmp_path / "CIFAR-10_human.pt", _labels10(clean_label=_Evil()))
    with pytest.raises(D.DataError, match="refused as unsafe") as e:
        D.load_cifar_n_labels(path)
    assert str(path) in str(e.value)
    assert _EVIL_CALLED == []


def test_label_file_that_calls_a_shell_is_refused_as_unsafe(tmp_path, small_sizes):
    # torch words a blocked module (os, subprocess) differently from an unknown global: both are "unsafe"
    marker = tmp_path / "code-ran"
    path = write_labels(tmp_path / "CIFAR-10_human.pt", _labels10(clean_label=_Shell(marker)))
    with pytest.raises(D.DataError, match=r"refused as unsafe: loading it would unpickle (posix|os)\.system"):
        D.load_cifar_n_labels(path)
    assert not marker.exists()


def test_label_file_with_torch_tensors(tmp_path, small_sizes):
    labels = {k: torch.from_numpy(v) for k, v in _labels10().items()}
    out = D.load_cifar_n_labels(write_labels(tmp_path / "l.pt", labels), "cifar10")
    assert all(isinstance(v, np.ndarray) and v.dtype == np.int64 for v in out.values())


# --------------------------------------------------------------------------------------------
# Missing data and the data folder
# --------------------------------------------------------------------------------------------


def test_missing_everything_message(tmp_path):
    where = tmp_path / "empty"
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_cifar_n("cifar10", "worst", where)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, D.DataError)
    msg = str(e.value)
    for part in (
        str(where / "cifar10.npz"),
        str(where / "cifar-10-batches-py"),
        str(where / "CIFAR-10_human.pt"),
        "the root argument",
        "the folder does not exist",
        "download=True",
        f"python -m bkd_core data --dataset cifar10 --data-dir {where}",
        "BKD_DATA_DIR",
    ):
        assert part in msg, part


def test_missing_label_file_only(root10):
    (root10 / "CIFAR-10_human.pt").unlink()
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_cifar_n("cifar10", "aggre", root10)
    msg = str(e.value)
    assert str(root10 / "CIFAR-10_human.pt") in msg and "cifar10.npz" not in msg.split("\n")[0]


def test_missing_cifar100_images_says_how_to_get_them(tmp_path, small_sizes):
    write_labels(tmp_path / "CIFAR-100_human.pt", make_labels("cifar100", np.zeros(N_TRAIN, np.int64)))
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_cifar_n("cifar100", "noisy100", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar100.npz") in msg and "data --dataset cifar100" in msg and "unpack" not in msg
    assert "CIFAR-100_human.pt" not in msg.split("\n")[0]  # the label file is there


def test_missing_label_file_direct(tmp_path):
    with pytest.raises(D.DataNotFoundError, match="CIFAR-100_human.pt not found"):
        D.load_cifar_n_labels(tmp_path / "CIFAR-100_human.pt")


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BKD_DATA_DIR", str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert D.resolve_data_dir() == tmp_path / "env"
    assert D.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("BKD_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.resolve_data_dir() == tmp_path / "xdg" / "bkd_core" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.resolve_data_dir() == tmp_path / "home" / ".cache" / "bkd_core" / "data"
    monkeypatch.setenv("BKD_DATA_DIR", "")  # empty counts as unset
    assert D.resolve_data_dir() == tmp_path / "home" / ".cache" / "bkd_core" / "data"
    assert not (tmp_path / "home").exists()  # resolving never creates folders


def test_load_uses_bkd_data_dir(root10, monkeypatch, tmp_path):
    monkeypatch.setenv("BKD_DATA_DIR", str(root10))
    d = D.load_cifar_n("cifar10", "rand1")
    assert d.noise_rate == pytest.approx(CIFAR10_RATES["rand1"])
    monkeypatch.setenv("BKD_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(D.DataNotFoundError, match=r"\$BKD_DATA_DIR"):
        D.load_cifar_n("cifar10", "rand1")


def test_default_cache_folder_named_in_message(tmp_path, monkeypatch):
    monkeypatch.delenv("BKD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_cifar_n("cifar10", "clean")
    assert str(tmp_path / "xdg" / "bkd_core" / "data") in str(e.value)
    assert "default cache folder" in str(e.value)


# --------------------------------------------------------------------------------------------
# NoisyCIFAR, subsets, train/val split
# --------------------------------------------------------------------------------------------


def test_subset_deterministic_with_indices(root10):
    d = D.load_cifar_n("cifar10", "worst", root10)
    a, b, c = d.subset(60, seed=3), d.subset(60, seed=3), d.subset(60, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert len(a) == 60 and a.indices.dtype == np.int64
    assert np.all(np.diff(a.indices) > 0)  # sorted, unique
    np.testing.assert_array_equal(a.train_images, d.train_images[a.indices])
    np.testing.assert_array_equal(a.train_labels, d.train_labels[a.indices])
    np.testing.assert_array_equal(a.clean_labels, d.clean_labels[a.indices])
    assert a.test_images is d.test_images and a.test_labels is d.test_labels
    assert (a.dataset, a.split, a.num_classes) == (d.dataset, d.split, d.num_classes)
    np.testing.assert_array_equal(a.is_noisy, d.is_noisy[a.indices])
    # a subset of a subset still maps to rows of the full set
    aa = a.subset(10, seed=0)
    np.testing.assert_array_equal(aa.train_labels, d.train_labels[aa.indices])
    assert set(aa.indices) <= set(a.indices)


def test_subset_sizes(root10):
    d = D.load_cifar_n("cifar10", "aggre", root10)
    assert d.subset(None, seed=0) is d
    assert d.subset(N_TRAIN, seed=0) is d
    assert d.subset(N_TRAIN + 1, seed=0) is d
    assert len(d.subset(np.int64(5), seed=0)) == 5
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="subset size"):
            d.subset(bad, seed=0)


def test_noisy_cifar_direct_construction():
    x = np.zeros((4, 32, 32, 3), np.uint8)
    d = D.NoisyCIFAR(x, [0, 1, 2, 3], [0, 1, 0, 3], x[:2], [1, 1], 10, "cifar10", "worst")
    np.testing.assert_array_equal(d.indices, np.arange(4))
    assert d.train_labels.dtype == np.int64 and d.noise_rate == 0.25
    with pytest.raises(ValueError, match="clean_labels"):
        D.NoisyCIFAR(x, [0, 1, 2, 3], [0, 1], x[:2], [1, 1], 10, "cifar10", "worst")


def test_train_val_split():
    tr, va = D.train_val_split(50_000, 0.1, seed=0)
    assert (len(tr), len(va)) == (45_000, 5_000)
    assert tr.dtype == va.dtype == np.int64
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert len(np.intersect1d(tr, va)) == 0
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(50_000))
    tr2, va2 = D.train_val_split(50_000, 0.1, seed=0)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(va, D.train_val_split(50_000, 0.1, seed=1)[1])
    assert [len(x) for x in D.train_val_split(10, 0.25, seed=0)] == [8, 2]
    assert [len(x) for x in D.train_val_split(100, 0.29, seed=0)] == [71, 29]  # no float round-down
    tr0, va0 = D.train_val_split(7, 0.0, seed=0)
    np.testing.assert_array_equal(tr0, np.arange(7))
    assert len(va0) == 0
    assert [len(x) for x in D.train_val_split(3, 0.99, seed=0)] == [1, 2]  # never empties training


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan")])
def test_train_val_split_bad_ratio(ratio):
    with pytest.raises(ValueError, match="val_ratio"):
        D.train_val_split(10, ratio, seed=0)


# --------------------------------------------------------------------------------------------
# Download (no network: urllib and torchvision are monkeypatched)
# --------------------------------------------------------------------------------------------


class _FakeResponse(io.BytesIO):
    """What urlopen returns; optionally checks, while streaming, that the final file is absent."""

    def __init__(self, payload: bytes, dest: Path | None = None, fail_after: int | None = None):
        super().__init__(payload)
        self.dest, self.fail_after, self.served = dest, fail_after, 0

    def read(self, size=-1):
        if self.dest is not None:
            assert not self.dest.exists(), "final file must not appear before the download is complete"
        if self.fail_after is not None and self.served >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        chunk = super().read(min(size, 1000) if size and size > 0 else 1000)
        self.served += len(chunk)
        return chunk


def _fake_urlopen(monkeypatch, responses: list, urls: list):
    def urlopen(url, timeout=None):
        urls.append(url)
        r = responses.pop(0)
        if isinstance(r, BaseException):
            raise r
        return r

    monkeypatch.setattr(D.urllib.request, "urlopen", urlopen)


def _fake_torchvision(monkeypatch, dataset: str, arrays: dict, calls: list):
    import torchvision.datasets

    folder_name = D.TORCHVISION_FOLDERS[dataset]

    class FakeCIFAR:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            calls.append((train, download))
            folder = Path(root) / folder_name
            if download:
                folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self.data = arrays["x_train"] if train else arrays["x_test"]
            self.targets = list(map(int, arrays["y_train"] if train else arrays["y_test"]))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10" if dataset == "cifar10" else "CIFAR100", FakeCIFAR)


def _label_bytes(dataset: str, clean: np.ndarray) -> bytes:
    buf = io.BytesIO()
    torch.save(make_labels(dataset, clean), buf)
    return buf.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("dataset, split", [("cifar10", "worst"), ("cifar100", "noisy100")])
def test_download_then_load(tmp_path, small_sizes, monkeypatch, dataset, split):
    arrays = make_arrays(dataset)
    root = tmp_path / "fresh" / "data"
    dest = root / D.LABEL_FILES[dataset]
    urls, tv_calls = [], []
    _fake_urlopen(monkeypatch, [_FakeResponse(_label_bytes(dataset, arrays["y_train"]), dest=dest)], urls)
    _fake_torchvision(monkeypatch, dataset, arrays, tv_calls)

    d = D.load_cifar_n(dataset, split, root, download=True)
    assert urls == [D.LABEL_URLS[dataset]]
    assert urls[0] == f"https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/{D.LABEL_FILES[dataset]}"
    assert (True, True) in tv_calls and (False, True) in tv_calls
    assert dest.is_file() and _leftovers(root) == []
    np.testing.assert_array_equal(d.train_images, arrays["x_train"])
    assert d.noise_rate == pytest.approx(0.40)

    # a second download keeps the valid files (no network call: the fake has no responses left)
    assert D.download(dataset, root) == root
    assert len(urls) == 1


def test_download_uses_bkd_data_dir_and_skips_images_when_npz_present(tmp_path, small_sizes, monkeypatch):
    arrays = make_arrays("cifar10")
    root = tmp_path / "env"
    root.mkdir()
    write_npz(root / "cifar10.npz", arrays)
    monkeypatch.setenv("BKD_DATA_DIR", str(root))
    urls, tv_calls = [], []
    _fake_urlopen(monkeypatch, [_FakeResponse(_label_bytes("cifar10", arrays["y_train"]))], urls)
    _fake_torchvision(monkeypatch, "cifar10", arrays, tv_calls)
    assert D.download("cifar10") == root
    assert tv_calls == [] and (root / "CIFAR-10_human.pt").is_file()
    assert D.load_cifar_n("cifar10", "aggre").noise_rate == pytest.approx(0.09)


def test_download_replaces_corrupt_label_file(root10, monkeypatch):
    path = root10 / "CIFAR-10_human.pt"
    _corrupt(path, "truncated")
    urls = []
    payload = _label_bytes("cifar10", make_arrays("cifar10")["y_train"])
    _fake_urlopen(monkeypatch, [_FakeResponse(payload)], urls)
    D.download("cifar10", root10)
    assert len(urls) == 1
    assert D.load_cifar_n("cifar10", "worst", root10).noise_rate == pytest.approx(0.40)


@pytest.mark.parametrize(
    "response, pattern",
    [
        (urllib.error.URLError("[Errno -3] Temporary failure in name resolution"), "could not download"),
        ("broken-stream", "could not download"),
        ("html", "truncated or corrupt"),
        ("wrong-length", "has 10 labels, expected 200"),
    ],
)
def test_failed_label_download_leaves_no_file(tmp_path, small_sizes, monkeypatch, response, pattern):
    arrays = make_arrays("cifar10")
    root = make_root(tmp_path / "d", "cifar10", arrays=arrays)
    dest = root / "CIFAR-10_human.pt"
    dest.unlink()
    good = _label_bytes("cifar10", arrays["y_train"])
    if response == "broken-stream":
        response = _FakeResponse(good, dest=dest, fail_after=len(good) // 2)
    elif response == "html":
        response = _FakeResponse(b"<!DOCTYPE html><html>rate limited</html>")
    elif response == "wrong-length":
        buf = io.BytesIO()
        torch.save({k: v[:10] for k, v in make_labels("cifar10", arrays["y_train"]).items()}, buf)
        response = _FakeResponse(buf.getvalue())
    _fake_urlopen(monkeypatch, [response], [])
    with pytest.raises(D.DataError, match=pattern) as e:
        D.download("cifar10", root)
    assert not dest.exists() and _leftovers(root) == []
    if pattern == "could not download":
        assert D.LABEL_URLS["cifar10"] in str(e.value) and str(dest) in str(e.value)
    else:  # names what the user has (the URL, the file not written), not the temporary file already gone
        assert D.LABEL_URLS["cifar10"] in str(e.value) and f"{dest} was not written" in str(e.value)
        assert ".tmp" not in str(e.value)


def test_failed_image_download_message(tmp_path, small_sizes, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    _fake_urlopen(monkeypatch, [_FakeResponse(_label_bytes("cifar10", make_arrays("cifar10")["y_train"]))], [])
    with pytest.raises(D.DataError) as e:
        D.download("cifar10", tmp_path / "x")
    msg = str(e.value)
    assert "could not download the cifar10 images" in msg and "no network" in msg
    assert f"--data-dir {tmp_path / 'x'}" in msg and D.STAGING not in msg
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [D.STAGING, "CIFAR-10_human.pt"]  # checked labels


# --------------------------------------------------------------------------------------------
# Real data ($BKD_DATA_DIR)
# --------------------------------------------------------------------------------------------

REAL = pytest.mark.skipif(
    not os.environ.get("BKD_DATA_DIR"),
    reason="BKD_DATA_DIR is unset: point it at a folder with the CIFAR-10 images and both CIFAR-N label files",
)

# the CIFAR-N paper's (Wei et al., 2022) noise rate of each split (fraction of labels != clean_label)
REAL_RATES = {
    "cifar10": {
        "clean": 0.0, "aggre": 0.0901, "rand1": 0.1723, "rand2": 0.1812, "rand3": 0.1764, "worst": 0.4021,
    },  # fmt: skip
    "cifar100": {"clean100": 0.0, "noisy100": 0.4020},
}


@REAL
def test_real_cifar10n():
    d = D.load_cifar_n("cifar10", "worst")  # root from BKD_DATA_DIR
    assert d.train_images.shape == (50_000, 32, 32, 3) and d.train_images.dtype == np.uint8
    assert d.test_images.shape == (10_000, 32, 32, 3)
    assert d.noise_rate == pytest.approx(REAL_RATES["cifar10"]["worst"], abs=1e-4)
    np.testing.assert_array_equal(np.bincount(d.clean_labels, minlength=10), np.full(10, 5_000))
    np.testing.assert_array_equal(np.bincount(d.test_labels, minlength=10), np.full(10, 1_000))
    means = d.train_images.reshape(-1, 3).mean(axis=0) / 255.0
    np.testing.assert_allclose(means, [0.4914, 0.4822, 0.4465], atol=1e-4)
    labels = D.load_cifar_n_labels(Path(os.environ["BKD_DATA_DIR"]) / "CIFAR-10_human.pt", "cifar10")
    for split, rate in REAL_RATES["cifar10"].items():
        noisy = labels[D.CIFAR10_SPLITS[split]] != labels["clean_label"]
        assert noisy.mean() == pytest.approx(rate, abs=1e-4), split


@REAL
def test_real_cifar100n_labels():
    """The CIFAR-100N label file loads on its own, even though the CIFAR-100 images are absent."""
    root = Path(os.environ["BKD_DATA_DIR"])
    labels = D.load_cifar_n_labels(root / "CIFAR-100_human.pt")
    assert {"clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label"} <= set(labels)
    assert (labels["noisy_label"] != labels["clean_label"]).mean() == pytest.approx(0.4020, abs=1e-4)
    np.testing.assert_array_equal(np.bincount(labels["clean_label"], minlength=100), np.full(100, 500))
    assert labels["clean_coarse_label"].max() == 19
    if not (root / "cifar100.npz").exists() and not (root / "cifar-100-python").exists():
        with pytest.raises(D.DataNotFoundError, match="cifar100 images"):
            D.load_cifar_n("cifar100", "noisy100")


@pytest.mark.skipif(not os.environ.get("BKD_DATA_DIR"),
                    reason="BKD_DATA_DIR is not set: real CIFAR-10N data unavailable")
def test_shuffled_split_warns_that_its_noise_rate_is_far_from_the_published_one(tmp_path):
    real = Path(os.environ["BKD_DATA_DIR"])
    labels = D.load_cifar_n_labels(real / "CIFAR-10_human.pt", "cifar10")
    labels["worse_label"] = np.random.default_rng(0).permutation(labels["worse_label"])  # only this column
    torch.save(labels, tmp_path / "CIFAR-10_human.pt")
    (tmp_path / "cifar10.npz").symlink_to(real / "cifar10.npz")
    with pytest.warns(D.NoiseRateWarning,
                      match=r"on 8\d\.\d% .*publishes 40\.21%.*worse_label. column may be shuffled"):
        data = D.load_cifar_n("cifar10", "worst", tmp_path)
    assert data.noise_rate > 0.8
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.load_cifar_n("cifar10", "aggre", tmp_path)  # an untouched split: no warning


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_download_labels_fetches_only_the_label_file(tmp_path, small_sizes, monkeypatch, dataset):
    arrays = make_arrays(dataset)
    root = tmp_path / "labels"
    dest = root / D.LABEL_FILES[dataset]
    urls, tv_calls = [], []
    _fake_urlopen(monkeypatch, [_FakeResponse(_label_bytes(dataset, arrays["y_train"]), dest=dest)], urls)
    _fake_torchvision(monkeypatch, dataset, arrays, tv_calls)
    assert D.download_labels(dataset, root) == dest
    assert urls == [D.LABEL_URLS[dataset]] and tv_calls == []  # no images
    assert dest.is_file() and _leftovers(root) == []
    assert D.download_labels(dataset, root) == dest and len(urls) == 1  # a valid file is kept


def test_download_labels_refuses_an_invalid_download(tmp_path, monkeypatch):
    urls = []
    _fake_urlopen(monkeypatch, [_FakeResponse(b"<html>rate limited</html>")], urls)
    with pytest.raises(D.DataError, match="not a valid CIFAR-N label file"):
        D.download_labels("cifar100", tmp_path)
    assert not (tmp_path / D.LABEL_FILES["cifar100"]).exists() and _leftovers(tmp_path) == []


def test_data_and_feature_cache_errors_are_bkd_errors_and_keep_their_kinds():
    from bkd_core.errors import BKDError
    from bkd_core.features import FeatureCacheError

    for error in (D.DataError, D.DataNotFoundError, FeatureCacheError):
        assert issubclass(error, BKDError) and issubclass(error, ValueError)
    assert issubclass(D.DataNotFoundError, FileNotFoundError) and issubclass(D.DataNotFoundError, D.DataError)
