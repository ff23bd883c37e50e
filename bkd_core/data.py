"""CIFAR-10/100 images with the CIFAR-N human labels: loading, validation, subsets, train/val split.

Everything here returns numpy arrays; moving them to a device is the job of ``augment.py``.

Data folder (``root``): the ``root`` argument, else ``$BKD_DATA_DIR``, else the user cache folder
``$XDG_CACHE_HOME/bkd_core/data`` (``~/.cache/bkd_core/data``). It holds

* the images, either as ``cifar10.npz`` / ``cifar100.npz`` (keys ``x_train`` uint8 [50000, 32, 32, 3],
  ``y_train`` [50000], ``x_test`` uint8 [10000, 32, 32, 3], ``y_test`` [10000]; RGB, HWC, original
  order) or as torchvision's own folders
  (``cifar-10-batches-py`` / ``cifar-100-python``, read with ``torchvision.datasets.CIFAR10/100``);
* the CIFAR-N label file ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` (a ``torch.save`` archive of a
  dict of int64 numpy arrays of length 50,000, in the original training order).

Getting the data: :func:`ensure_data` (what ``python -m bkd_core data`` runs) downloads what is missing and
checks what is there; :func:`download` and :func:`download_labels` fetch one dataset. Every download is staged,
checked and only then put in place, one rename per file or folder, under a lock on the data folder.

Every problem with the data raises :class:`DataError` (a :class:`~bkd_core.errors.BKDError` and a ``ValueError``), or
:class:`DataNotFoundError` (also a ``FileNotFoundError``) when a file is missing. Each message names
the file, says what is wrong and how to fix it. Bad arguments (unknown dataset or split, bad sizes)
raise a plain ``ValueError`` that lists the valid choices.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import shutil
import stat
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import BKDError
from .io import atomic_path, user_cache_dir

__all__ = [
    "CIFAR10_SPLITS",
    "CIFAR100_SPLITS",
    "SPLITS",
    "DATASETS",
    "NUM_CLASSES",
    "IMAGE_FILES",
    "TORCHVISION_FOLDERS",
    "LABEL_FILES",
    "LABEL_URLS",
    "CIFAR_TRAIN_SIZE",
    "PUBLISHED_NOISE_RATES",
    "CIFAR_TEST_SIZE",
    "DataError",
    "DataNotFoundError",
    "NoisyCIFAR",
    "canonical_dataset",
    "canonical_split",
    "class_names",
    "resolve_data_dir",
    "load_cifar_n",
    "load_cifar_n_labels",
    "download",
    "download_labels",
    "ensure_data",
    "BOOK_IMAGES",
    "BOOK_LABELS",
    "STAGING",
    "train_val_split",
    "missing_data",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: CIFAR-10N split name -> key in ``CIFAR-10_human.pt``.
CIFAR10_SPLITS: dict[str, str] = {
    "clean": "clean_label",
    "aggre": "aggre_label",
    "rand1": "random_label1",
    "rand2": "random_label2",
    "rand3": "random_label3",
    "worst": "worse_label",  # sic: the release spells it "worse"
}
#: Noise rate of each CIFAR-N split over the full training set, as published with the release
#: (github.com/UCSC-REAL/cifar-10-100n). ``load_cifar_n`` warns when a label file's split is far from it.
PUBLISHED_NOISE_RATES: dict[str, float] = {
    "clean": 0.0, "aggre": 0.0901, "rand1": 0.1723, "rand2": 0.1812, "rand3": 0.1764, "worst": 0.4021,
    "clean100": 0.0, "noisy100": 0.4020,
}
#: How far (absolute) a loaded split's noise rate may be from the published one before ``load_cifar_n`` warns.
NOISE_RATE_TOLERANCE = 0.02

#: CIFAR-100N split name -> key in ``CIFAR-100_human.pt`` (fine labels).
CIFAR100_SPLITS: dict[str, str] = {"clean100": "clean_label", "noisy100": "noisy_label"}

SPLITS: dict[str, dict[str, str]] = {"cifar10": CIFAR10_SPLITS, "cifar100": CIFAR100_SPLITS}
DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100}
#: Number of CIFAR-100 coarse classes (``clean_coarse_label`` / ``noisy_coarse_label``).
NUM_COARSE_CLASSES = 20

IMAGE_FILES: dict[str, str] = {"cifar10": "cifar10.npz", "cifar100": "cifar100.npz"}
TORCHVISION_FOLDERS: dict[str, str] = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
LABEL_FILES: dict[str, str] = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
LABEL_URLS: dict[str, str] = {
    d: f"https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/{f}" for d, f in LABEL_FILES.items()
}
#: Keys of the image npz files.
NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")

#: Expected number of training / test images. Read at call time, so tests may monkeypatch them
#: to small numbers and work with small generated files.
CIFAR_TRAIN_SIZE = 50_000
CIFAR_TEST_SIZE = 10_000
IMAGE_SHAPE = (32, 32, 3)

_CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
# Fine label names in label order (alphabetical), as in torchvision's ``meta`` file.
_CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DataError(BKDError, ValueError):
    """A data file is present but unusable (corrupt, truncated, wrong keys/shape/range, misordered)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A required data file or folder is missing. Also a ``FileNotFoundError``."""


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def canonical_dataset(dataset: str) -> str:
    """Return ``"cifar10"`` or ``"cifar100"``; accepts e.g. ``"CIFAR-10"``, ``"cifar_100"``.

    Raises ``ValueError`` listing the valid datasets for anything else.
    """
    key = str(dataset).strip().lower().replace("-", "").replace("_", "")
    if key in DATASETS:
        return key
    raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")


def canonical_split(dataset: str, split: str) -> str:
    """Canonical split name of ``split`` for ``dataset``.

    Accepts the split names (``"worst"``) and the label-file keys (``"worse_label"`` -> ``"worst"``),
    case-insensitively. Unknown splits raise ``ValueError`` listing the dataset's valid splits.
    """
    ds = canonical_dataset(dataset)
    splits = SPLITS[ds]
    key = str(split).strip().lower()
    if key in splits:
        return key
    for name, label_key in splits.items():
        if key == label_key:
            return name
    valid = ", ".join(f"{n} ({k})" for n, k in splits.items())
    msg = f"unknown split {split!r} for {ds}; valid splits (label-file key in brackets): {valid}"
    for other, other_splits in SPLITS.items():
        if other != ds and key in other_splits:
            msg += f". {split!r} is a {other} split: use dataset={other!r}"
    raise ValueError(msg)


def class_names(dataset: str) -> list[str]:
    """Class names in label order: 10 for CIFAR-10, the 100 fine names (alphabetical) for CIFAR-100."""
    ds = canonical_dataset(dataset)
    return list(_CIFAR10_CLASSES if ds == "cifar10" else _CIFAR100_CLASSES)


# --------------------------------------------------------------------------------------------
# Data folder
# --------------------------------------------------------------------------------------------


def _resolve_with_source(root: str | os.PathLike | None) -> tuple[Path, str]:
    if root is not None and str(root) != "":
        return Path(root).expanduser(), "the root argument"
    env = os.environ.get("BKD_DATA_DIR")
    if env:
        return Path(env).expanduser(), "$BKD_DATA_DIR"
    return user_cache_dir("data"), "the default cache folder (neither root nor $BKD_DATA_DIR was given)"


def resolve_data_dir(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$BKD_DATA_DIR``, else ``~/.cache/bkd_core/data``
    (``$XDG_CACHE_HOME`` respected). The folder is not created and need not exist."""
    return _resolve_with_source(root)[0]


def _how_to_get(dataset: str, data_dir: Path) -> str:
    return (
        f"How to get the data: `python -m bkd_core data --dataset {dataset} --data-dir {data_dir}` (or "
        f"load_cifar_n(..., download=True)) downloads and checks it; offline, put {IMAGE_FILES[dataset]} (keys "
        f"{', '.join(NPZ_KEYS)}; uint8 HWC, original order) or torchvision's {TORCHVISION_FOLDERS[dataset]}/ folder, "
        f"and {LABEL_FILES[dataset]}, into that folder, or set BKD_DATA_DIR (or pass root=) to a folder that "
        "holds them."
    )


def _refetch_hint(dataset: str, data_dir: Path) -> str:
    return (
        "Delete it and get a good copy: "
        f"`python -m bkd_core data --dataset {dataset} --data-dir {data_dir}` (or download=True)."
    )


# --------------------------------------------------------------------------------------------
# Label files
# --------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """Globals a CIFAR-N label file needs under ``torch.load(weights_only=True)``.

    The release pickles ``numpy.core.multiarray._reconstruct`` (numpy 1 name); files written with
    numpy 2 say ``numpy._core.multiarray._reconstruct``. Both names map to the same function.
    """
    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None or not hasattr(multiarray, "_reconstruct"):  # numpy < 2
        multiarray = np.core.multiarray  # type: ignore[attr-defined]
    reconstruct = multiarray._reconstruct
    dtype_classes = {
        type(np.dtype(t))
        for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64")
    }  # fmt: skip
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


def _infer_label_dataset(keys: set[str]) -> str | None:
    if "aggre_label" in keys or "worse_label" in keys or "random_label1" in keys:
        return "cifar10"
    if "noisy_label" in keys:
        return "cifar100"
    return None


def _check_labels(
    values: Any, *, name: str, where: str, n: int, num_classes: int, fix: str
) -> np.ndarray:
    """Validate one label array: 1-D, integer, length ``n``, values in ``[0, num_classes)``.

    Returns it as int64 [n].
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{where}: {name!r} is not an array of labels ({e}). {fix}") from e
    if arr.ndim != 1:
        raise DataError(f"{where}: {name!r} has shape {arr.shape}, expected 1-D [{n}]. {fix}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: {name!r} has dtype {arr.dtype}, expected integer class labels. {fix}")
    if len(arr) != n:
        raise DataError(
            f"{where}: {name!r} has {len(arr):,} labels, expected {n:,} (one per image); "
            f"the file is truncated or belongs to another dataset. {fix}"
        )
    if len(arr):
        bad = (arr < 0) | (arr >= num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: {name!r} has {int(bad.sum()):,} labels outside [0, {num_classes}) "
                f"(first at index {i}: {int(arr[i])}); wrong dataset or corrupt file. {fix}"
            )
    return arr.astype(np.int64, copy=False)


def load_cifar_n_labels(path: str | os.PathLike, dataset: str | None = None) -> dict[str, np.ndarray]:
    """Load and validate a CIFAR-N label file (``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``).

    The file is read with ``torch.load(weights_only=True)``; only numpy's array reconstruction,
    ``ndarray`` and the numeric dtypes are allow-listed (all that the release's files pickle), so no arbitrary
    object is ever unpickled.

    Parameters
    ----------
    path : str | os.PathLike
        the ``.pt`` file.
    dataset : str | None
        ``"cifar10"`` / ``"cifar100"``; ``None`` infers it from the keys.

    Returns
    -------
    dict[str, np.ndarray]
        ``{key: int64 array [50000]}``: for CIFAR-10 ``clean_label``, ``aggre_label``,
        ``worse_label``, ``random_label1..3`` (values in [0, 10)); for CIFAR-100 ``clean_label``,
        ``noisy_label`` (fine, [0, 100)) and, when present, ``clean_coarse_label``,
        ``noisy_coarse_label`` ([0, 20)). Other keys are dropped.

    Raises
    ------
    DataNotFoundError
        the file does not exist.
    DataError
        unreadable/truncated file, disallowed objects in the pickle, not a dict,
        missing keys, wrong length or dtype, labels out of range.
    """
    path = Path(path)
    ds = canonical_dataset(dataset) if dataset is not None else None
    hint_ds = ds or ("cifar100" if "100" in path.name else "cifar10")
    if not path.is_file():
        raise DataNotFoundError(
            f"label file {path} not found{' (it is a folder)' if path.exists() else ''}.\n"
            + _how_to_get(hint_ds, path.parent)
        )
    return _read_label_file(path, ds, where=f"label file {path}", fix=_refetch_hint(hint_ds, path.parent))


def _read_label_file(path: Path, ds: str | None, *, where: str, fix: str) -> dict[str, np.ndarray]:
    """:func:`load_cifar_n_labels` of an existing file; ``where`` names it and ``fix`` says what to do in messages."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(e))
        if refused:
            raise DataError(
                f"{where} was refused as unsafe: loading it would unpickle {refused.group(1)}, which is not "
                f"a numpy array, so it is not a CIFAR-N label file (or it has been tampered with); nothing "
                f"in it was run. " + fix
            ) from e
        raise DataError(
            f"{where} cannot be read (not a torch.save archive of numpy arrays); "
            f"it is truncated or corrupt. " + fix
        ) from e
    except Exception as e:  # truncated zip, empty file, garbage bytes...
        raise DataError(
            f"{where} cannot be read ({type(e).__name__}: {_first_line(e)}); "
            f"it is truncated or corrupt. " + fix
        ) from e

    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, expected a dict of label arrays. {fix}")
    keys = {str(k) for k in obj}
    if ds is None:
        ds = _infer_label_dataset(keys)
        if ds is None:
            raise DataError(
                f"{where}: cannot tell CIFAR-10N from CIFAR-100N: keys are {sorted(keys)}; expected "
                f"{sorted(CIFAR10_SPLITS.values())} or {sorted(CIFAR100_SPLITS.values())}. {fix}"
            )
    required = sorted(set(SPLITS[ds].values()))
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataError(
            f"{where}: missing keys {missing} for {ds} (present: {sorted(keys)}); expected the "
            f"{LABEL_FILES[ds]} of the CIFAR-N release. {fix}"
        )
    n = CIFAR_TRAIN_SIZE
    out: dict[str, np.ndarray] = {}
    for key in required:
        out[key] = _check_labels(obj[key], name=key, where=where, n=n, num_classes=NUM_CLASSES[ds], fix=fix)
    if ds == "cifar100":
        for key in ("clean_coarse_label", "noisy_coarse_label"):
            if key in obj:
                out[key] = _check_labels(
                    obj[key], name=key, where=where, n=n, num_classes=NUM_COARSE_CLASSES, fix=fix
                )
    return out


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _read_npz(path: Path, dataset: str) -> dict[str, np.ndarray]:
    fix = _refetch_hint(dataset, path.parent)
    with contextlib.ExitStack() as opened:
        try:
            # opened here: numpy leaves its own handle open when the zip is bad
            npz = np.load(opened.enter_context(open(path, "rb")), allow_pickle=False)
        except Exception as e:
            raise DataError(
                f"image file {path} cannot be opened as .npz ({type(e).__name__}: {e}); "
                f"it is truncated or corrupt. {fix}"
            ) from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(
                f"image file {path} is a single .npy array, expected an .npz with keys {list(NPZ_KEYS)}. {fix}"
            )
        opened.enter_context(npz)
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise DataError(
                f"image file {path}: missing keys {missing} (present: {sorted(npz.files)}); expected "
                f"{list(NPZ_KEYS)}. {fix}"
            )
        try:
            return {k: npz[k] for k in NPZ_KEYS}
        except Exception as e:  # bad CRC, truncated member, pickled object arrays...
            raise DataError(
                f"image file {path}: cannot read its arrays ({type(e).__name__}: {e}); "
                f"it is truncated or corrupt. {fix}"
            ) from e


def _read_torchvision(folder_root: Path, dataset: str) -> dict[str, np.ndarray]:
    """Read torchvision's CIFAR folder under ``folder_root``.

    torchvision checks the md5 of every batch file against its own table before unpickling it,
    so only the genuine batch files are ever unpickled.
    """
    from torchvision import datasets as tv_datasets

    cls = tv_datasets.CIFAR10 if dataset == "cifar10" else tv_datasets.CIFAR100
    folder = folder_root / TORCHVISION_FOLDERS[dataset]
    out: dict[str, np.ndarray] = {}
    for train, (xk, yk) in ((True, ("x_train", "y_train")), (False, ("x_test", "y_test"))):
        try:
            ds = cls(root=str(folder_root), train=train, download=False)
        except Exception as e:
            raise DataError(
                f"torchvision folder {folder} cannot be read ({type(e).__name__}: {e}); files are "
                f"missing or fail torchvision's md5 check. {_refetch_hint(dataset, folder_root)}"
            ) from e
        out[xk] = np.asarray(ds.data)
        out[yk] = np.asarray(ds.targets)
    return out


def _check_images(arrays: dict[str, np.ndarray], *, where: str, dataset: str, fix: str) -> None:
    for xk, n in (("x_train", CIFAR_TRAIN_SIZE), ("x_test", CIFAR_TEST_SIZE)):
        x = arrays[xk]
        expected = (n, *IMAGE_SHAPE)
        if x.dtype != np.uint8:
            raise DataError(f"{where}: {xk!r} has dtype {x.dtype}, expected uint8 pixels in [0, 255]. {fix}")
        if x.shape != expected:
            extra = ""
            if x.ndim == 4 and x.shape[1:] == (3, 32, 32):
                extra = " (looks like CHW layout; images must be HWC)"
            elif x.ndim == 4 and x.shape[1:] == IMAGE_SHAPE:
                extra = f" ({x.shape[0]:,} images instead of {n:,}: truncated or not the full set)"
            raise DataError(f"{where}: {xk!r} has shape {x.shape}, expected {expected}{extra}. {fix}")


def _load_images(data_dir: Path, dataset: str, source: str) -> tuple[dict[str, np.ndarray], str]:
    npz_path = data_dir / IMAGE_FILES[dataset]
    tv_folder = data_dir / TORCHVISION_FOLDERS[dataset]
    if npz_path.is_file():
        return _read_npz(npz_path, dataset), f"image file {npz_path}"
    if tv_folder.is_dir():
        return _read_torchvision(data_dir, dataset), f"torchvision folder {tv_folder}"
    raise DataNotFoundError(
        f"no {dataset} images found in {data_dir} (data folder from {source}): looked for "
        f"{npz_path} and {tv_folder}{'' if data_dir.is_dir() else ' (the folder does not exist)'}.\n"
        + _how_to_get(dataset, data_dir)
    )


# --------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class NoisyCIFAR:
    """A CIFAR training set with one CIFAR-N label split, plus the clean test set.

    Attributes
    ----------
    train_images : np.ndarray
        uint8 [N, 32, 32, 3], HWC RGB in [0, 255].
    train_labels : np.ndarray
        int64 [N], the split's (noisy) labels in [0, num_classes).
    clean_labels : np.ndarray
        int64 [N], the original CIFAR labels.
    test_images : np.ndarray
        uint8 [T, 32, 32, 3] (T = 10,000 for real data).
    test_labels : np.ndarray
        int64 [T].
    num_classes : int
        10 or 100.
    dataset : str
        ``"cifar10"`` or ``"cifar100"``.
    split : str
        canonical split name (see :data:`CIFAR10_SPLITS`, :data:`CIFAR100_SPLITS`).
    indices : np.ndarray | None
        int64 [N], each row's position in the full 50,000-image training set
        (``arange(N)`` for the full set; defaults to that when not given).
    train_features, test_features : np.ndarray | None
        optional float32 [N, D] / [T, D] label-free feature vectors of
        the images (``bkd_core.features.with_features``), carried along by :meth:`subset`.
    feature_key : str | None
        the fingerprint of the feature settings that produced them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    clean_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    dataset: str
    split: str
    indices: np.ndarray | None = None
    train_features: np.ndarray | None = None
    test_features: np.ndarray | None = None
    feature_key: str | None = None

    def __post_init__(self) -> None:
        self.train_labels = np.asarray(self.train_labels, dtype=np.int64)
        self.clean_labels = np.asarray(self.clean_labels, dtype=np.int64)
        self.test_labels = np.asarray(self.test_labels, dtype=np.int64)
        n = len(self.train_images)
        if self.indices is None:
            self.indices = np.arange(n, dtype=np.int64)
        else:
            self.indices = np.asarray(self.indices, dtype=np.int64)
        for name in ("train_labels", "clean_labels", "indices"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"NoisyCIFAR: {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if (self.train_features is None) != (self.test_features is None):
            raise ValueError("NoisyCIFAR: give both train_features and test_features, or neither")
        if self.train_features is not None:
            if self.train_features.ndim != 2 or len(self.train_features) != n or self.test_features.ndim != 2 \
                    or len(self.test_features) != len(self.test_images) \
                    or self.train_features.shape[1] != self.test_features.shape[1]:
                raise ValueError(f"NoisyCIFAR: features of shapes {self.train_features.shape} and "
                                 f"{self.test_features.shape} do not fit {n} training and {len(self.test_images)} "
                                 "test images (expected [N, D] and [T, D])")
        if self.test_labels.shape != (len(self.test_images),):
            raise ValueError(
                f"NoisyCIFAR: test_labels has shape {self.test_labels.shape}, "
                f"expected ({len(self.test_images)},)"
            )

    def __len__(self) -> int:
        return len(self.train_labels)

    def __repr__(self) -> str:
        return (
            f"NoisyCIFAR(dataset={self.dataset!r}, split={self.split!r}, n_train={len(self):,}, "
            f"n_test={len(self.test_labels):,}, num_classes={self.num_classes}, "
            f"noise_rate={self.noise_rate:.4f})"
        )

    @property
    def is_noisy(self) -> np.ndarray:
        """bool [N]: True where the split's label differs from the clean label."""
        return self.train_labels != self.clean_labels

    @property
    def noise_rate(self) -> float:
        """Fraction of training labels that differ from the clean labels (0.0 for an empty set)."""
        return float(self.is_noisy.mean()) if len(self) else 0.0

    def subset(self, size: int | None, seed: int) -> NoisyCIFAR:
        """A seeded uniform random subset of ``size`` training samples (test set untouched).

        Rows stay in their original order (sorted indices); ``indices`` maps them back to the full
        training set. ``size`` None or >= N returns ``self``. Same (size, seed) -> same subset.

        Raises
        ------
        ValueError
            ``size`` is not a positive integer.
        """
        n = len(self)
        if size is None:
            return self
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"subset size must be a positive integer or None, got {size!r}")
        if size >= n:
            return self
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=int(size), replace=False))
        return self.take(rows)

    def take(self, rows: np.ndarray) -> NoisyCIFAR:
        """The training rows ``rows`` (int [M], positions in this set) with their labels, indices and
        features; the test set is untouched."""
        return replace(
            self,
            train_images=self.train_images[rows],
            train_labels=self.train_labels[rows],
            clean_labels=self.clean_labels[rows],
            indices=self.indices[rows],
            train_features=None if self.train_features is None else self.train_features[rows],
        )


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


#: What the book reads: the images with their CIFAR-N labels of ``BOOK_IMAGES``, the label files alone of
#: ``BOOK_LABELS`` (the introduction shows CIFAR-100N's noise rates).
BOOK_IMAGES: tuple[str, ...] = ("cifar10",)
BOOK_LABELS: tuple[str, ...] = ("cifar100",)
#: The folder inside the data folder where images are downloaded until they are complete and checked. bkd_core
#: makes it itself (a file :data:`STAGING_MARK` inside says so) and never uses or removes a folder of that name it
#: did not make; it is removed once its contents are in place, kept after a failure so that a rerun reuses a
#: complete archive.
STAGING = ".bkd_core-download"
STAGING_MARK = "made-by-bkd_core"
#: The split whose labels are the images' own (loading it checks the label file against the images).
SPLITS_CLEAN: dict[str, str] = {"cifar10": "clean", "cifar100": "clean100"}


@contextmanager
def _data_folder_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the data folder itself (no file is written for it) while data is fetched into
    it: a second process waits for the first, saying so once, and then finds the first's files in place."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    fd = os.open(data_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another process is fetching data into {data_dir}; waiting for it to finish", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some network mounts): no lock
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _data_folder(root: str | os.PathLike | None) -> Path:
    """The data folder (:func:`resolve_data_dir`), created if needed, or one :class:`DataError`."""
    data_dir, source = _resolve_with_source(root)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        raise DataError(f"cannot create the data folder {data_dir} (chosen by {source}): {reason}; choose a folder "
                        "you can write to (--data-dir, root=, or BKD_DATA_DIR)") from None
    return data_dir


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _staging_folder(data_dir: Path) -> Path:
    """``data_dir/STAGING``, made now (exclusively) or by an earlier download of bkd_core; anything else there is
    refused with one :class:`DataError`, untouched."""
    staging = data_dir / STAGING
    mark = staging / STAGING_MARK
    try:
        os.mkdir(staging)
    except FileExistsError:
        info = os.lstat(staging)
        if stat.S_ISLNK(info.st_mode):
            what = "a symbolic link"
        elif not stat.S_ISDIR(info.st_mode):
            what = "a file"
        elif _is_plain_file(mark) or not any(os.scandir(staging)):  # ours, or empty: nothing to lose
            what = ""
        else:
            what = "a folder bkd_core did not make"
        if what:
            raise DataError(f"{staging} is in the way: bkd_core downloads into a folder of that name that it makes "
                            f"itself, and this is {what}; move or rename it, then rerun") from None
    if not _is_plain_file(mark):
        with open(mark, "x") as f:
            f.write("A download of bkd_core (python -m bkd_core data) is staged here until it is complete and "
                    "checked; it is removed then. Safe to delete.\n")
    return staging


def _fetch_label_file(dataset: str, dest: Path) -> None:
    """Download the CIFAR-N label file to ``dest`` atomically (temporary file, validate, replace)."""
    url = LABEL_URLS[dataset]
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, f)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
                raise DataError(
                    f"could not download {url} to {dest} ({type(e).__name__}: {reason}); check the internet "
                    "connection and rerun. " + _how_to_get(dataset, dest.parent)
                ) from e
            f.flush()
            os.fsync(f.fileno())
        # refuse to install a bad download (an HTML error page, a truncated transfer...)
        _read_label_file(tmp, dataset, where=f"the file downloaded from {url}",
                         fix=f"It is not a valid CIFAR-N label file, so {dest} was not written; rerun later, or "
                             f"fetch that file yourself into {dest}.")


def _ensure_label_file(ds: str, data_dir: Path) -> None:
    """Fetch ``ds``'s CIFAR-N label file into ``data_dir`` unless a valid one is there."""
    label_path = data_dir / LABEL_FILES[ds]
    need = not label_path.is_file()
    if not need:
        try:
            load_cifar_n_labels(label_path, ds)
        except DataError:
            need = True
    if need:
        _fetch_label_file(ds, label_path)


def _has_images(ds: str, data_dir: Path) -> bool:
    return (data_dir / IMAGE_FILES[ds]).is_file() or (data_dir / TORCHVISION_FOLDERS[ds]).is_dir()


def _stage_images(ds: str, data_dir: Path) -> None:
    """Download ``ds``'s images with torchvision into the staging folder, check them against the label file of
    ``data_dir`` and only then move torchvision's folder into ``data_dir``; remove the staging folder."""
    from torchvision import datasets as tv_datasets

    staging = _staging_folder(data_dir)
    target = data_dir / TORCHVISION_FOLDERS[ds]
    label_path = data_dir / LABEL_FILES[ds]
    cls = tv_datasets.CIFAR10 if ds == "cifar10" else tv_datasets.CIFAR100
    try:
        for train in (True, False):
            cls(root=str(staging), train=train, download=True)
    except Exception as e:  # no network, a truncated transfer (md5), a full disk...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
        raise DataError(
            f"could not download the {ds} images into {data_dir} ({type(e).__name__}: {reason}); check the internet "
            f"connection and rerun the same command (a complete archive already fetched is reused, nothing in "
            f"{data_dir} was changed). " + _how_to_get(ds, data_dir)
        ) from e
    staged_labels = staging / LABEL_FILES[ds]
    staged_labels.unlink(missing_ok=True)
    try:
        os.link(label_path, staged_labels)
    except OSError:  # a file system without hard links
        shutil.copyfile(label_path, staged_labels)
    try:
        load_cifar_n(ds, SPLITS_CLEAN[ds], staging)  # images and labels read and agree
    except DataError as e:
        raise DataError(
            f"the {ds} images just downloaded do not pass their check against {label_path} "
            f"({_first_line(e).replace(str(staging), 'the download')}); nothing in {data_dir} was changed: if that "
            f"label file is not the CIFAR-N release's, delete it and rerun"
        ) from e
    if target.exists() or target.is_symlink():
        raise DataError(f"{target} is in the way of the downloaded {ds} images: move or rename it, then rerun")
    os.replace(staging / TORCHVISION_FOLDERS[ds], target)
    shutil.rmtree(staging)


def _download(ds: str, data_dir: Path) -> Path:
    """:func:`download` of a canonical dataset name into an existing data folder."""
    with _data_folder_lock(data_dir):
        _ensure_label_file(ds, data_dir)
        if not _has_images(ds, data_dir):  # images there are checked when loaded, never replaced
            print(f"The {ds} images are not in {data_dir}: downloading them there (about 170 MB). "
                  f"To use a copy you already have, set BKD_DATA_DIR to its folder ({IMAGE_FILES[ds]} or "
                  f"{TORCHVISION_FOLDERS[ds]}/, and {LABEL_FILES[ds]}) and rerun.", file=sys.stderr)
            _stage_images(ds, data_dir)
    return data_dir


def download(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Fetch what is missing of ``dataset``: its images (torchvision) and its CIFAR-N label file (urllib).

    Files already there are kept: the images are skipped when ``cifar10.npz`` / ``cifar100.npz`` or
    torchvision's folder is there (they are checked when loaded); the label file is fetched when it is missing
    or invalid, validated before it is put in place. Images are downloaded into a staging folder
    (:data:`STAGING`), checked against the label file and only then moved into the data folder, in one rename:
    an interrupted download leaves the data folder as it was. A second process fetching into the same folder
    waits for the first.

    Returns
    -------
    Path
        The data folder (see :func:`resolve_data_dir`), created if needed.

    Raises
    ------
    DataError
        a download failed, or something not made by bkd_core is in the way (the message says what
        to do).
    """
    ds = canonical_dataset(dataset)
    return _download(ds, _data_folder(root))


def download_labels(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Fetch only the CIFAR-N label file of ``dataset`` (no images) into the data folder.

    For what needs the human labels alone, e.g. the noise rates of every split (the book's
    introduction shows CIFAR-100N's without its images). Validated and written atomically as in
    :func:`download`; a valid file already there is kept.

    Returns
    -------
    Path
        The path of the label file.

    Raises
    ------
    DataError
        the download failed or is not a valid label file (the message says how to get it).
    """
    ds = canonical_dataset(dataset)
    data_dir = _data_folder(root)
    with _data_folder_lock(data_dir):
        _ensure_label_file(ds, data_dir)
    return data_dir / LABEL_FILES[ds]


def ensure_data(root: str | os.PathLike | None = None, *, images: Sequence[str] = BOOK_IMAGES,
                labels: Sequence[str] = BOOK_LABELS) -> Path:
    """Make sure the data folder holds ``images`` (with their label files) and ``labels``; download what is
    missing (:func:`download`), check what is there.

    Parameters
    ----------
    root : path, optional
        The data folder; default ``$BKD_DATA_DIR``, else ``~/.cache/bkd_core/data``.
    images : sequence of str
        Datasets whose images and CIFAR-N label file are needed, each then loaded once as a check (the
        images against the label file's ``clean_label``). Default: what the book reads, CIFAR-10.
    labels : sequence of str
        Datasets whose label file alone is wanted; one that cannot be fetched is only a warning (on stderr).
        Default: CIFAR-100 (the book's introduction shows its noise rates).

    Returns
    -------
    Path
        The data folder.

    Raises
    ------
    DataError
        A download failed or a file is unusable (the message names the file and says how to fix it).
    """
    wanted = [canonical_dataset(ds) for ds in images]
    data_dir = _data_folder(root)
    for ds in wanted:
        _download(ds, data_dir)
        load_cifar_n(ds, SPLITS_CLEAN[ds], data_dir)
    for ds in (canonical_dataset(d) for d in labels):
        if ds not in wanted:
            try:
                download_labels(ds, data_dir)
            except DataError as exc:  # optional: the book leaves these rows out without the file
                print(f"warning: {' '.join(str(exc).split())}; the book shows no {ds} label statistics without it",
                      file=sys.stderr)
    return data_dir


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _missing_files(ds: str, data_dir: Path) -> list[str]:
    """What of ``ds``'s files is not in ``data_dir`` (the images as ``cifar10.npz`` or torchvision's
    folder, the CIFAR-N label file), as phrases for an error message; [] when both are there."""
    npz_path, tv_folder = data_dir / IMAGE_FILES[ds], data_dir / TORCHVISION_FOLDERS[ds]
    label_path = data_dir / LABEL_FILES[ds]
    has_images = npz_path.is_file() or tv_folder.is_dir()
    return ([] if has_images else [f"the {ds} images ({npz_path} or {tv_folder}/)"]) + (
        [] if label_path.is_file() else [f"the CIFAR-N label file {label_path}"])


def missing_data(dataset: str, root: str | os.PathLike | None = None) -> str | None:
    """Why ``dataset`` cannot be loaded from ``root`` without downloading, or None if its files exist.

    Only checks that the image file/folder and the CIFAR-N label file are present (cheap); the
    checks of their contents happen in :func:`load_cifar_n`.
    """
    ds = canonical_dataset(dataset)
    data_dir, source = _resolve_with_source(root)
    missing = _missing_files(ds, data_dir)
    if not missing:
        return None
    return (f"{ds} data not found: missing {' and '.join(missing)} (data folder from {source}); "
            "pass --download or see the README")


def load_cifar_n(
    dataset: str, split: str, root: str | os.PathLike | None = None, *, download: bool = False
) -> NoisyCIFAR:
    """Load CIFAR-10/100 with one CIFAR-N label split.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` or ``"cifar100"``.
    split : str
        ``clean aggre rand1 rand2 rand3 worst`` (CIFAR-10) or ``clean100 noisy100``
        (CIFAR-100), or the label-file key (``"worse_label"``...).
    root : str | os.PathLike | None
        data folder; default ``$BKD_DATA_DIR``, else ``~/.cache/bkd_core/data``.
    download : bool
        fetch missing files first (see :func:`download`).

    Returns
    -------
    NoisyCIFAR
        A :class:`NoisyCIFAR` with the full training set (N = 50,000, ``indices = arange(N)``).
        ``train_images`` uint8 [50000, 32, 32, 3]; labels int64; ``test_*`` [10000].

    Raises
    ------
    ValueError
        unknown dataset or split (lists the valid ones).
    DataNotFoundError
        images or label file missing (says where it looked and how to get them).
    DataError
        a file is corrupt, truncated, has wrong keys/shape/dtype/length, labels out of
        range, or the label file's ``clean_label`` differs from the images' own labels
        (a misordered copy).
    """
    ds = canonical_dataset(dataset)
    sp = canonical_split(ds, split)
    data_dir, source = _resolve_with_source(root)
    if download:
        _download(ds, _data_folder(root))

    label_path = data_dir / LABEL_FILES[ds]
    missing = _missing_files(ds, data_dir)
    if missing:
        raise DataNotFoundError(
            f"missing {' and '.join(missing)}; looked in {data_dir} (data folder from {source}"
            f"{'' if data_dir.is_dir() else '; the folder does not exist'}).\n" + _how_to_get(ds, data_dir)
        )
    labels = load_cifar_n_labels(label_path, ds)

    arrays, where = _load_images(data_dir, ds, source)
    fix = _refetch_hint(ds, data_dir)
    _check_images(arrays, where=where, dataset=ds, fix=fix)
    k = NUM_CLASSES[ds]
    y_train = _check_labels(
        arrays["y_train"], name="y_train", where=where, n=CIFAR_TRAIN_SIZE, num_classes=k, fix=fix
    )
    y_test = _check_labels(
        arrays["y_test"], name="y_test", where=where, n=CIFAR_TEST_SIZE, num_classes=k, fix=fix
    )

    clean = labels["clean_label"]
    mismatch = clean != y_train
    if mismatch.any():
        first = int(np.flatnonzero(mismatch)[0])
        raise DataError(
            f"{where} does not match {label_path}: clean_label differs from the images' own labels "
            f"at {int(mismatch.sum()):,} of {len(clean):,} positions (first at index {first}: "
            f"{int(clean[first])} vs {int(y_train[first])}). The images are not in the original CIFAR "
            f"training order (a shuffled or re-sorted copy), or the two files belong to different "
            f"datasets. The CIFAR-N labels only fit images in torchvision's order. {fix}"
        )

    given = labels[SPLITS[ds][sp]]
    _warn_if_noise_rate_is_off(float((given != clean).mean()), sp, label_path)
    return NoisyCIFAR(
        train_images=arrays["x_train"],
        train_labels=given,
        clean_labels=clean,
        test_images=arrays["x_test"],
        test_labels=y_test,
        num_classes=k,
        dataset=ds,
        split=sp,
        indices=np.arange(len(clean), dtype=np.int64),
    )


class NoiseRateWarning(UserWarning):
    """A label file's split has a noise rate far from the one published with CIFAR-N."""


def _warn_if_noise_rate_is_off(rate: float, split: str, path: Path) -> None:
    published = PUBLISHED_NOISE_RATES.get(split)
    if published is None or abs(rate - published) <= NOISE_RATE_TOLERANCE:
        return
    import warnings

    warnings.warn(
        f"{path}: the {split!r} labels differ from clean_label on {rate:.1%} of the training images, but the "
        f"CIFAR-N release publishes {published:.2%} for this split. The file's {SPLITS_OF.get(split, split)!r} "
        f"column may be shuffled, edited or from another release; results will not be comparable. Fetch the "
        f"original file from {LABEL_URLS['cifar100' if split.endswith('100') else 'cifar10']}",
        NoiseRateWarning, stacklevel=3)


SPLITS_OF: dict[str, str] = {**CIFAR10_SPLITS, **CIFAR100_SPLITS}


# --------------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------------


def train_val_split(n: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random hold-out split of ``n`` samples (the official code holds out 10%).

    ``floor(n * val_ratio)`` samples (at most n - 1) go to validation, chosen by a seeded
    permutation. Returns ``(train_idx, val_idx)``: sorted, disjoint int64 arrays covering
    ``range(n)``. ``val_ratio = 0`` gives all of ``range(n)`` and an empty validation set.

    Raises
    ------
    ValueError
        ``n`` < 0 or ``val_ratio`` outside [0, 1).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (isinstance(val_ratio, (int, float, np.floating)) and 0.0 <= float(val_ratio) < 1.0):
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio!r}")
    n = int(n)
    n_val = int(math.floor(n * float(val_ratio) + 1e-9))
    n_val = max(0, min(n_val, n - 1))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val]).astype(np.int64)
    train_idx = np.sort(perm[n_val:]).astype(np.int64)
    return train_idx, val_idx
