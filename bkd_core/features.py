"""Label-free image features: whitened-patch dictionary responses, pooled and reduced by PCA.

A single layer of the kind Coates, Lee and Ng (AISTATS 2011) and Thiry, Arbel, Belilovsky and
Oyallon (ICLR 2021) study, computed from the training images alone: no labels and no downloads.

1. Sample ``n_patches`` random ``patch_size`` x ``patch_size`` x 3 patches of the training images,
   normalise each patch's contrast (subtract its mean, divide by ``sqrt(var + contrast_eps)``),
   and fit a ZCA whitening ``W`` (eigenvalues regularised by ``zca_eps``).
2. Dictionary: ``n_atoms`` unit-norm whitened patches, either drawn at random (``"random"``) or
   refined by sign-invariant spherical k-means (``"kmeans"``).
3. For every window of every image (27 x 27 windows for 6 x 6 patches of a 32 x 32 image) the
   response to atom ``d`` is ``r = <d, W (p - m)>`` of the contrast-normalised window ``p``; the
   whitening is folded into the atoms, so this is one matrix product per block of images.
4. Encoding: soft threshold with both signs, ``max(0, r - a)`` and ``max(0, -r - a)``
   (``a = threshold``), averaged over the cells of a ``pool_grid`` x ``pool_grid`` grid of
   windows: ``2 * n_atoms * pool_grid**2`` pooled values per image.
5. Standardise each pooled value, project on the first ``out_dim`` principal components
   (randomised, seeded range finder on ``pca_fit_size`` training images), and standardise the
   components (PCA whitening) or only rescale them together (``pca_whiten=False``).

Every statistic (contrast normalisation constant aside: that one is a setting) is fitted on the
training images only and then applied to train and test. The computation is seeded and
deterministic for a given machine and thread count, float32 throughout, and chunked: the pooled
values are held as float16 (``[N + T, pooled_dim]``: 0.5 GB for the defaults on 60,000 images) and
reduced chunk by chunk; the whole extraction peaked at 2.1 GB RSS including ``import torch``.

Measured on CIFAR-10 (``benchmarks/README.md``): with the defaults (D = 512) a linear classifier
on the clean labels reaches 74.1% test accuracy and the MLP 512-512 78.4%; with ``out_dim=1024``
76.2% and 79.6%. Extraction of the 60,000 images: 5 minutes on one (shared) core.

The extractor is pluggable: :func:`extract_features` dispatches on the type of ``settings``
through :data:`EXTRACTORS` (see :func:`register_extractor`). A second extractor,
:class:`BackboneFeatureSettings`, runs a torchvision backbone (e.g. ``resnet18`` with ImageNet
weights, for users who can download them). :func:`cached_features` computes a feature set once
per dataset and settings and keeps it as an ``.npz`` file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BKDError

__all__ = [
    "FEATURE_FORMAT_VERSION",
    "EXTRACTORS",
    "BackboneFeatureSettings",
    "FeatureCacheError",
    "FeatureExtractor",
    "PatchFeatureSettings",
    "as_images",
    "cached_features",
    "data_fingerprint",
    "extract_backbone_features",
    "extract_features",
    "extract_patch_features",
    "feature_cache_dir",
    "feature_cache_path",
    "register_extractor",
    "FEATURE_SETTINGS",
    "with_features",
]

#: bumped whenever a change to the code changes the features computed for the same settings,
#: so that cached files of an older version are not reused.
FEATURE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def _fingerprint(kind: str, settings: Any) -> str:
    payload = {"kind": kind, "version": FEATURE_FORMAT_VERSION, **dataclasses.asdict(settings)}
    # settings that change neither the result nor its identity stay out of the key
    for field in getattr(settings, "_not_in_key", ()):
        payload.pop(field, None)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PatchFeatureSettings:
    """Settings of the whitened-patch extractor (see the module docstring for the steps).

    The defaults were chosen by measurement on CIFAR-10 (``benchmarks/README.md``).

    Attributes
    ----------
    patch_size : int
        Side of the square patches (and of the atoms), in pixels.
    n_patches : int
        Random training patches used to fit the whitening and the dictionary.
    n_atoms : int
        Dictionary size K. The pooled representation has ``2 * K * pool_grid**2`` values.
    dictionary : {"kmeans", "random"}
        ``"random"``: K whitened patches drawn at random; ``"kmeans"``: those refined by
        ``kmeans_iters`` rounds of sign-invariant spherical k-means.
    kmeans_iters : int
        Rounds of k-means (ignored for ``"random"``).
    contrast_eps : float
        Added to each patch's variance before dividing by its square root (pixel scale [0, 1];
        ``10 / 255**2`` is Coates et al.'s 10 on the [0, 255] scale).
    zca_eps : float
        Added to the eigenvalues of the patch covariance in the whitening.
    threshold : float
        Soft threshold ``a`` of the encoding ``max(0, r - a)``, ``max(0, -r - a)``.
    pool_grid : int
        Average pooling over a ``pool_grid`` x ``pool_grid`` grid of windows (2: quadrants).
    flip_invariant : bool
        Make the features invariant to horizontal mirroring, at no extra cost: the whitening is
        fitted on the patches and their mirror images, the dictionary holds every atom and its
        mirror image (``n_atoms`` must be even), and each pooled value is averaged with its
        mirror counterpart (mirrored cell, mirrored atom). This halves the pooled values.
    out_dim : int
        Output dimension D (principal components kept).
    pca_whiten : bool
        True: every component standardised (PCA whitening); False: all components divided by
        one common factor, so that they keep their relative variances (mean variance 1).
    pca_fit_size : int
        Training images the principal components are fitted on (all, if fewer).
    pca_oversample, pca_power_iters : int
        Extra columns and power iterations of the randomised range finder.
    chunk_size : int
        Images per progress step (and per block of the pooled float16 buffer).
    seed : int
        Seed of every random choice (patches, dictionary, PCA).
    """

    patch_size: int = 6
    n_patches: int = 100_000
    n_atoms: int = 1024
    dictionary: Literal["kmeans", "random"] = "kmeans"
    kmeans_iters: int = 10
    contrast_eps: float = 10 / 255**2
    zca_eps: float = 0.1
    threshold: float = 0.25
    pool_grid: int = 2
    flip_invariant: bool = True
    out_dim: int = 512
    pca_whiten: bool = True
    pca_fit_size: int = 20_000
    pca_oversample: int = 64
    pca_power_iters: int = 3
    chunk_size: int = 256
    seed: int = 0

    _not_in_key = ("chunk_size",)

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.patch_size <= 32, f"patch_size must lie in [1, 32], got {self.patch_size}"),
            (self.n_patches >= 2, f"n_patches must be >= 2, got {self.n_patches}"),
            (1 <= self.n_atoms <= self.n_patches, f"n_atoms must lie in [1, n_patches], got {self.n_atoms}"),
            (self.dictionary in ("kmeans", "random"),
             f"dictionary must be 'kmeans' or 'random', got {self.dictionary!r}"),
            (self.kmeans_iters >= 0, f"kmeans_iters must be >= 0, got {self.kmeans_iters}"),
            (self.contrast_eps > 0 and self.zca_eps > 0, "contrast_eps and zca_eps must be > 0"),
            (self.threshold >= 0, f"threshold must be >= 0, got {self.threshold}"),
            (self.pool_grid >= 1, f"pool_grid must be >= 1, got {self.pool_grid}"),
            (self.out_dim >= 1, f"out_dim must be >= 1, got {self.out_dim}"),
            (self.pca_fit_size >= 2, f"pca_fit_size must be >= 2, got {self.pca_fit_size}"),
            (self.pca_oversample >= 0 and self.pca_power_iters >= 0, "pca_oversample and pca_power_iters must be >= 0"),
            (self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PatchFeatureSettings: {message}")
        if self.flip_invariant and self.n_atoms % 2:
            raise ValueError(f"PatchFeatureSettings: flip_invariant needs an even n_atoms, got {self.n_atoms}")
        if self.pool_grid > 33 - self.patch_size:
            raise ValueError(f"PatchFeatureSettings: pool_grid {self.pool_grid} exceeds the "
                             f"{33 - self.patch_size} windows per side")

    kind = "patches"

    @property
    def pooled_dim(self) -> int:
        """Number of pooled values per image before the PCA: ``2 * n_atoms * pool_grid**2``,
        half that with ``flip_invariant``."""
        if self.flip_invariant:
            return int(_mirror_representatives(self.n_atoms, self.pool_grid)[0].numel())
        return 2 * self.n_atoms * self.pool_grid**2

    def fingerprint(self) -> str:
        """16 hex digits identifying the settings (and the feature format version)."""
        return _fingerprint(self.kind, self)


@dataclass(frozen=True)
class BackboneFeatureSettings:
    """Settings of the torchvision-backbone extractor: penultimate-layer activations.

    Attributes
    ----------
    arch : str
        A ``torchvision.models`` name whose classifier is ``fc`` or ``classifier`` (``resnet18``,
        ``resnet50``, ``efficientnet_b0``, ...).
    weights : str or None
        ``"DEFAULT"`` (or a weights enum name such as ``"IMAGENET1K_V1"``): pretrained weights,
        downloaded by torchvision on first use; ``None``: random initialisation (for tests).
    image_size : int
        Images are resized (bilinear) to this side before the backbone (224 for ImageNet weights).
    batch_size : int
        Images per forward pass.
    standardize : bool
        Standardise every output dimension with the training images' mean and std.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    arch: str = "resnet18"
    weights: str | None = "DEFAULT"
    image_size: int = 224
    batch_size: int = 128
    standardize: bool = True
    device: str = "auto"

    _not_in_key = ("batch_size", "device")
    kind = "backbone"

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.batch_size < 1:
            raise ValueError("BackboneFeatureSettings: image_size must be >= 16 and batch_size >= 1")

    def fingerprint(self) -> str:
        """16 hex digits identifying the settings (and the feature format version)."""
        return _fingerprint(self.kind, self)


Settings = Union[PatchFeatureSettings, BackboneFeatureSettings]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What an extractor is: a function of train and test images and its settings.

    ``extractor(train_images_hwc, test_images_hwc, *, settings, progress)`` returns
    ``(train_features, test_features)``, float32 ``[N, D]`` and ``[T, D]``, and fits whatever it
    fits on the training images only.
    """

    def __call__(self, train_images_hwc: np.ndarray, test_images_hwc: np.ndarray, *,
                 settings: Any, progress: bool = ...) -> tuple[np.ndarray, np.ndarray]: ...


#: settings type -> extractor. Extended with :func:`register_extractor`.
EXTRACTORS: dict[type, FeatureExtractor] = {}


def register_extractor(settings_type: type, extractor: FeatureExtractor) -> None:
    """Make :func:`extract_features` (and :func:`cached_features`) use ``extractor`` for
    ``settings_type``.

    ``settings_type`` must be a frozen dataclass with a ``kind`` string attribute and a
    ``fingerprint()`` method (the cache key), like :class:`PatchFeatureSettings`.
    """
    if not (dataclasses.is_dataclass(settings_type) and hasattr(settings_type, "fingerprint")
            and isinstance(getattr(settings_type, "kind", None), str)):
        raise TypeError("settings_type must be a dataclass with a 'kind' string and a fingerprint() method")
    EXTRACTORS[settings_type] = extractor


# --------------------------------------------------------------------------------------------
# input checks and small helpers
# --------------------------------------------------------------------------------------------
def _check_images(images: np.ndarray, name: str, *, allow_empty: bool = False) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{name} must be uint8 HWC images [N, H, W, 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got dtype {images.dtype}")
    if len(images) == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    return images


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.")


def as_images(images: Any, name: str = "images", *, progress: bool = False) -> np.ndarray:
    """One set of images in any supported form as a C-contiguous uint8 array ``[N, H, W, 3]``.

    Accepted: a uint8 numpy array ``[N, H, W, 3]`` (RGB, any strides), a uint8 torch tensor ``[N, H, W, 3]``
    or ``[N, 3, H, W]`` (torchvision's layout), or a sequence of PIL images (converted to RGB) or of
    uint8 arrays ``[H, W, 3]``, all of one size. Anything else gets a ValueError that says how to convert it.
    """
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.ndim == 4 and t.shape[1] == 3 and t.shape[3] != 3:  # [N, 3, H, W]
            t = t.permute(0, 2, 3, 1)
        images = t.numpy()
    elif isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{name} is an empty sequence: pass at least one image")
        from tqdm.auto import tqdm

        rows = []
        for image in tqdm(images, desc="reading images", unit="img", disable=not progress or len(images) < 5000,
                          leave=False):
            rows.append(np.asarray(image.convert("RGB")) if _is_pil(image) else np.asarray(image))
        shapes = {row.shape for row in rows}
        if len(shapes) > 1:
            listed = ", ".join(map(str, sorted(shapes)[:3])) + (", ..." if len(shapes) > 3 else "")
            raise ValueError(f"{name} holds images of {len(shapes)} different sizes ({listed}); resize them to "
                             "one size first")
        images = np.stack(rows)
    array = np.asarray(images)
    if array.dtype != np.uint8:
        hint = (" (for floats in [0, 1]: (images * 255).round().astype(np.uint8))"
                if np.issubdtype(array.dtype, np.floating) else "")
        raise ValueError(f"{name} must be uint8 RGB values in [0, 255], got dtype {array.dtype}{hint}")
    if array.ndim == 3 and array.shape[-1] == 3:
        raise ValueError(f"{name} has shape {array.shape}: one image? pass a batch [N, H, W, 3] "
                         f"(images[None] for a single one)")
    return np.ascontiguousarray(_check_images(array, name))


def _to_float_nchw(images_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------
# the whitened-patch extractor
# --------------------------------------------------------------------------------------------
def _normalize_patches(patches: torch.Tensor, contrast_eps: float) -> torch.Tensor:
    """Per-row contrast normalisation of ``[M, P]`` patches: ``(p - mean) / sqrt(var + eps)``."""
    mean = patches.mean(1, keepdim=True)
    var = patches.var(1, keepdim=True, unbiased=False)
    return (patches - mean) / torch.sqrt(var + contrast_eps)


def _windows(images: torch.Tensor, size: int) -> torch.Tensor:
    """All ``size`` x ``size`` windows of float ``[B, 3, H, W]`` images as rows ``[B*L, 3*size*size]``
    (channel-major, the layout of a conv2d weight)."""
    cols = F.unfold(images, size)  # [B, 3*size*size, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _sample_patches(images_hwc: np.ndarray, n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random patches of the images, float ``[n, 3*size*size]`` in [0, 1], conv2d layout."""
    N, H, W, _ = images_hwc.shape
    idx = rng.integers(0, N, n)
    ys = rng.integers(0, H - size + 1, n)
    xs = rng.integers(0, W - size + 1, n)
    offsets = np.arange(size)
    rows = (ys[:, None] + offsets)[:, :, None]  # [n, size, 1]
    cols = (xs[:, None] + offsets)[:, None, :]  # [n, 1, size]
    patches = images_hwc[idx[:, None, None], rows, cols]  # [n, size, size, 3]
    return torch.from_numpy(patches).permute(0, 3, 1, 2).reshape(n, -1).float().div_(255.0)


def _fit_dictionary(train_images_hwc: np.ndarray, s: PatchFeatureSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening and dictionary, folded together: filters ``[K, 3*p*p]`` and bias ``[K]``.

    The response of atom k to a contrast-normalised window ``w`` is ``filters[k] @ w - bias[k]``.
    """
    rng = np.random.default_rng(s.seed)
    patches = _normalize_patches(_sample_patches(train_images_hwc, s.n_patches, s.patch_size, rng),
                                 s.contrast_eps).double()
    if s.flip_invariant:  # a mirror-symmetric covariance: the whitening commutes with mirroring
        patches = torch.cat([patches, _mirror_patches(patches, s.patch_size)])
    mean = patches.mean(0)
    centred = patches - mean
    cov = centred.T @ centred / len(patches)
    evals, evecs = torch.linalg.eigh(cov)
    zca = evecs @ torch.diag(1.0 / torch.sqrt(evals.clamp_min(0) + s.zca_eps)) @ evecs.T
    white = (centred @ zca).float()  # zca is symmetric
    white_unit = white / white.norm(dim=1, keepdim=True).clamp_min(1e-8)
    generator = torch.Generator().manual_seed(s.seed)
    n_free = s.n_atoms // 2 if s.flip_invariant else s.n_atoms
    atoms = white_unit[torch.randperm(len(white_unit), generator=generator)[:n_free]].clone()
    if s.dictionary == "kmeans":
        for _ in range(s.kmeans_iters):
            atoms = _spherical_kmeans_step(white_unit, atoms)
    if s.flip_invariant:  # atom k + K/2 is the mirror image of atom k
        atoms = torch.cat([atoms, _mirror_patches(atoms, s.patch_size)])
    filters = atoms.double() @ zca
    bias = filters @ mean
    return filters.float().contiguous(), bias.float()


def _mirror_patches(patches: torch.Tensor, size: int) -> torch.Tensor:
    """Horizontal mirror images of ``[M, 3*size*size]`` patches (conv2d layout)."""
    return patches.reshape(len(patches), 3, size, size).flip(3).reshape(len(patches), -1)


def _mirror_representatives(n_atoms: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns ``keep`` and their mirror partners ``partner`` in the pooled layout of
    :func:`_encode_block` (``[grid, grid, sign, n_atoms]``), one column per mirror orbit.

    Mirroring an image maps cell ``(i, j)`` to ``(i, grid-1-j)`` and atom ``k`` to its mirror
    ``(k + K/2) mod K``; the flip-invariant value of column ``c`` is the mean of ``c`` and its
    partner.
    """
    half = n_atoms // 2
    i, j, sign, k = torch.meshgrid(torch.arange(grid), torch.arange(grid), torch.arange(2),
                                   torch.arange(n_atoms), indexing="ij")
    index = ((i * grid + j) * 2 + sign) * n_atoms + k
    partner = ((i * grid + (grid - 1 - j)) * 2 + sign) * n_atoms + (k + half) % n_atoms
    index, partner = index.flatten(), partner.flatten()
    keep = index <= partner
    return index[keep], partner[keep]


def _spherical_kmeans_step(points: torch.Tensor, atoms: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """One sign-invariant spherical k-means step: each unit point joins the atom of largest
    ``|cosine|`` (sign-corrected); atoms without points are kept."""
    new = torch.zeros_like(atoms)
    counts = torch.zeros(len(atoms), dtype=torch.long)
    for start in range(0, len(points), block):
        chunk = points[start:start + block]
        sims = chunk @ atoms.T
        best = sims.abs().argmax(1)
        signs = torch.sign(sims.gather(1, best[:, None]))
        new.index_add_(0, best, chunk * signs)
        counts += torch.bincount(best, minlength=len(atoms))
    empty = counts == 0
    new[empty] = atoms[empty]
    return new / new.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _pool_matrix(windows_per_side: int, grid: int) -> torch.Tensor:
    """``[grid*grid, L]`` averaging weights of the grid cells over the ``L = windows_per_side**2``
    windows (cells as in ``adaptive_avg_pool2d``: they overlap by one when the side is not a
    multiple of ``grid``)."""
    n = windows_per_side
    edges = [(i * n // grid, -(-(i + 1) * n // grid)) for i in range(grid)]
    pool = torch.zeros(grid, grid, n, n)
    for i, (r0, r1) in enumerate(edges):
        for j, (c0, c1) in enumerate(edges):
            pool[i, j, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
    return pool.reshape(grid * grid, n * n)


def _encode_block(images: torch.Tensor, filters_t: torch.Tensor, neg_bias: torch.Tensor,
                  pool: torch.Tensor, s: PatchFeatureSettings, micro: int = 2) -> torch.Tensor:
    """Pooled soft-threshold codes of float ``[B, 3, H, W]`` images: ``[B, 2*K*G*G]``
    (layout: cell-major, then the K positive parts, then the K negative parts).

    Works on ``micro`` images at a time so that the ``[micro*L, K]`` responses stay in cache.
    The two one-sided parts come from two pooled sums: with ``u = r - clamp(r, -a, a)``,
    ``pos - neg = pool(u)`` and ``pos + neg = pool(|u|)``.
    """
    K = filters_t.shape[1]
    out = []
    for start in range(0, len(images), micro):
        part = images[start:start + micro]
        b = len(part)
        windows = _normalize_patches(_windows(part, s.patch_size), s.contrast_eps)
        response = torch.addmm(neg_bias, windows, filters_t)  # [b*L, K]
        response -= response.clamp(-s.threshold, s.threshold)
        response = response.view(b, -1, K)
        diff = torch.matmul(pool, response)  # [b, G*G, K]
        total = torch.matmul(pool, response.abs_())
        out.append(torch.cat([(total + diff) * 0.5, (total - diff) * 0.5], 2).reshape(b, -1))
    codes = torch.cat(out)
    if s.flip_invariant:
        keep, partner = _mirror_representatives(K, s.pool_grid)
        codes = (codes[:, keep] + codes[:, partner]) * 0.5
    return codes


def _randomized_pca(x: torch.Tensor, k: int, oversample: int, power_iters: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` right singular vectors ``[P, k]`` and the component variances ``[k]`` of the
    centred float32 matrix ``x [M, P]`` (Halko, Martinsson, Tropp 2011, seeded)."""
    m, p = x.shape
    q = min(k + oversample, m, p)
    basis = torch.linalg.qr(x @ torch.randn(p, q, generator=generator))[0]  # [M, q]
    for _ in range(power_iters):
        basis = torch.linalg.qr(x.T @ basis)[0]  # [P, q]
        basis = torch.linalg.qr(x @ basis)[0]  # [M, q]
    small = basis.T @ x  # [q, P]
    _, sv, vh = torch.linalg.svd(small.double(), full_matrices=False)
    k = min(k, len(sv))
    return vh[:k].T.float().contiguous(), (sv[:k] ** 2 / max(m - 1, 1)).float()


def _pooled_codes(train_images_hwc: np.ndarray, test_images_hwc: np.ndarray, s: PatchFeatureSettings,
                  progress: bool) -> torch.Tensor:
    """Pooled codes of the train then the test images, float16 ``[N + T, pooled_dim]``."""
    h = train_images_hwc.shape[1]
    filters, bias = _fit_dictionary(train_images_hwc, s)
    filters_t, neg_bias = filters.T.contiguous(), -bias
    pool = _pool_matrix(h - s.patch_size + 1, s.pool_grid)
    n_train, n_test = len(train_images_hwc), len(test_images_hwc)
    pooled = torch.empty(n_train + n_test, s.pooled_dim, dtype=torch.float16)
    bar = _progress_bar(n_train + n_test, "patch features", progress)
    try:
        for images, offset in ((train_images_hwc, 0), (test_images_hwc, n_train)):
            for start in range(0, len(images), s.chunk_size):
                block = _to_float_nchw(images[start:start + s.chunk_size])
                pooled[offset + start: offset + start + len(block)] = _encode_block(block, filters_t, neg_bias, pool, s)
                bar.update(len(block))
    finally:
        bar.close()
    return pooled


def _reduce(pooled: torch.Tensor, n_train: int, s: PatchFeatureSettings) -> torch.Tensor:
    """Standardise, project on the principal components and rescale: float32 ``[N + T, D]``.

    Every statistic comes from the first ``n_train`` rows (the training images)."""
    n_all = len(pooled)
    # standardisation of the pooled values: training images only, float64 sums over chunks
    total = torch.zeros(s.pooled_dim, dtype=torch.float64)
    total_sq = torch.zeros(s.pooled_dim, dtype=torch.float64)
    for start in range(0, n_train, 4096):
        block = pooled[start:min(start + 4096, n_train)].double()
        total += block.sum(0)
        total_sq += (block * block).sum(0)
    mean = total / n_train
    std = torch.sqrt((total_sq / n_train - mean * mean).clamp_min(0)).clamp_min(1e-6)
    mean, inv_std = mean.float(), (1.0 / std).float()

    generator = torch.Generator().manual_seed(s.seed + 1)
    fit_rows = torch.randperm(n_train, generator=generator)[: min(s.pca_fit_size, n_train)].sort().values
    fit = (pooled[fit_rows].float() - mean) * inv_std
    fit -= fit.mean(0)
    components, variances = _randomized_pca(fit, s.out_dim, s.pca_oversample, s.pca_power_iters, generator)
    del fit

    projected = torch.empty(n_all, components.shape[1])
    for start in range(0, n_all, 4096):
        block = (pooled[start:start + 4096].float() - mean) * inv_std
        projected[start:start + len(block)] = block @ components
    centre = projected[:n_train].mean(0)
    if s.pca_whiten:
        scale = projected[:n_train].std(0).clamp_min(1e-6)
    else:
        scale = torch.sqrt(projected[:n_train].var(0).mean()).clamp_min(1e-6).expand(projected.shape[1])
    return (projected - centre) / scale


def extract_patch_features(train_images_hwc: np.ndarray, test_images_hwc: np.ndarray, *,
                           settings: PatchFeatureSettings = PatchFeatureSettings(),
                           progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Whitened-patch features of train and test images (statistics fitted on train only).

    Parameters
    ----------
    train_images_hwc : np.ndarray
        uint8 ``[N, H, W, 3]`` training images (RGB, [0, 255]).
    test_images_hwc : np.ndarray
        uint8 ``[T, H, W, 3]`` images of the same size, only transformed.
    settings : PatchFeatureSettings
        See :class:`PatchFeatureSettings`.
    progress : bool
        Show a tqdm bar over the chunks of images.

    Returns
    -------
    train_features : np.ndarray
        float32 ``[N, D]`` with ``D = min(out_dim, N, pooled_dim)``; each column has mean 0 and
        (with ``pca_whiten``) standard deviation 1 over the training images.
    test_features : np.ndarray
        float32 ``[T, D]``, the same map applied to the test images.
    """
    s = settings
    train_images_hwc = _check_images(train_images_hwc, "train_images_hwc")
    test_images_hwc = _check_images(test_images_hwc, "test_images_hwc", allow_empty=True)
    if train_images_hwc.shape[1:] != test_images_hwc.shape[1:]:
        raise ValueError(f"train and test images differ in size: {train_images_hwc.shape[1:]} vs "
                         f"{test_images_hwc.shape[1:]}")
    h, w = train_images_hwc.shape[1:3]
    if h != w or h < s.patch_size + s.pool_grid - 1:
        raise ValueError(f"the patch features need square images of at least {s.patch_size + s.pool_grid - 1} "
                         f"pixels a side (patch_size + pool_grid - 1), got {h}x{w}; crop or resize them "
                         "(32x32 is what the defaults were measured on)")
    if len(train_images_hwc) < 2:
        raise ValueError(f"the patch features are fitted on the images themselves: pass at least 2 images, "
                         f"got {len(train_images_hwc)}")
    pooled = _pooled_codes(train_images_hwc, test_images_hwc, s, progress)
    projected = _reduce(pooled, len(train_images_hwc), s)
    n_train = len(train_images_hwc)
    return projected[:n_train].numpy().copy(), projected[n_train:].numpy().copy()


# --------------------------------------------------------------------------------------------
# the torchvision-backbone extractor
# --------------------------------------------------------------------------------------------
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _backbone(settings: BackboneFeatureSettings) -> torch.nn.Module:
    import torchvision

    net = torchvision.models.get_model(settings.arch, weights=settings.weights)
    if hasattr(net, "fc"):
        net.fc = torch.nn.Identity()
    elif hasattr(net, "classifier"):
        net.classifier = torch.nn.Identity()
    else:
        raise ValueError(f"do not know where the classifier of {settings.arch!r} is (no 'fc' or 'classifier')")
    return net.eval()


@torch.no_grad()
def extract_backbone_features(train_images_hwc: np.ndarray, test_images_hwc: np.ndarray, *,
                              settings: BackboneFeatureSettings = BackboneFeatureSettings(),
                              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer activations of a torchvision backbone (ImageNet-normalised inputs).

    Parameters
    ----------
    train_images_hwc, test_images_hwc : np.ndarray
        uint8 ``[N, H, W, 3]`` and ``[T, H, W, 3]`` images.
    settings : BackboneFeatureSettings
        Architecture, weights (``None`` = random, no download), input size, batch size.
    progress : bool
        Show a tqdm bar over the batches.

    Returns
    -------
    train_features, test_features : np.ndarray
        float32 ``[N, D]`` and ``[T, D]`` (D = 512 for resnet18), standardised with the training
        images' statistics when ``settings.standardize``.
    """
    s = settings
    train_images_hwc = _check_images(train_images_hwc, "train_images_hwc")
    test_images_hwc = _check_images(test_images_hwc, "test_images_hwc", allow_empty=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device)
    net = _backbone(s).to(device)
    mean = torch.tensor(_IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD, device=device).view(1, 3, 1, 1)
    outputs = []
    bar = _progress_bar(len(train_images_hwc) + len(test_images_hwc), f"{s.arch} features", progress)
    try:
        for images in (train_images_hwc, test_images_hwc):
            parts = []
            for start in range(0, len(images), s.batch_size):
                x = _to_float_nchw(images[start:start + s.batch_size]).to(device)
                if x.shape[-1] != s.image_size or x.shape[-2] != s.image_size:
                    x = F.interpolate(x, size=(s.image_size, s.image_size), mode="bilinear", align_corners=False)
                parts.append(net((x - mean) / std).flatten(1).float().cpu())
                bar.update(len(x))
            outputs.append(torch.cat(parts) if parts else torch.empty(0, outputs[0].shape[1]))
    finally:
        bar.close()
    train, test = outputs
    if s.standardize:
        centre, scale = train.mean(0), train.std(0).clamp_min(1e-6)
        train, test = (train - centre) / scale, (test - centre) / scale
    return train.numpy().astype(np.float32, copy=False), test.numpy().astype(np.float32, copy=False)


register_extractor(PatchFeatureSettings, extract_patch_features)
register_extractor(BackboneFeatureSettings, extract_backbone_features)


def extract_features(images: Any, test_images: Any = None, *, settings: Settings = PatchFeatureSettings(),
                     progress: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Features of one image set, or of a train and a test set, with the extractor registered for
    ``type(settings)``.

    Parameters
    ----------
    images : array_like
        The images the extractor's statistics are fitted on (:func:`as_images`: a uint8 array
        ``[N, H, W, 3]``, a uint8 torch tensor ``[N, H, W, 3]`` or ``[N, 3, H, W]``, or a list of PIL
        images of one size).
    test_images : array_like, optional
        Images of the same size, transformed with the statistics fitted on ``images``. Omit it for
        one set: the features of ``images`` alone are returned.
    settings : PatchFeatureSettings or BackboneFeatureSettings or a registered type
        Which extractor, with which options. Image sizes: the patch features (default) need square
        images of at least ``patch_size + pool_grid - 1`` pixels (7 for the defaults); they were
        measured on 32x32 images and cost about ``((H - 5) / 27)**2`` times as much per image for
        larger ones (downscale large photos to 32x32 or 64x64 first, or use
        :class:`BackboneFeatureSettings`, which resizes every image to ``image_size``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    np.ndarray or tuple of np.ndarray
        float32 ``[N, D]`` for one set; ``(train_features [N, D], test_features [T, D])`` for two.
    """
    extractor = EXTRACTORS.get(type(settings))
    if extractor is None:
        known = ", ".join(t.__name__ for t in EXTRACTORS)
        raise TypeError(f"no extractor registered for {type(settings).__name__}; known settings types: {known}")
    single = test_images is None
    train_images = as_images(images, "images" if single else "train images", progress=progress)
    test_images = (train_images[:0] if single
                   else as_images(test_images, "test images", progress=progress))
    train, test = extractor(train_images, test_images, settings=settings, progress=progress)
    train, test = np.ascontiguousarray(train, dtype=np.float32), np.ascontiguousarray(test, dtype=np.float32)
    if single and test.size == 0:
        test = test.reshape(0, train.shape[1] if train.ndim == 2 else 0)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1] \
            or len(train) != len(train_images) or len(test) != len(test_images):
        raise ValueError(f"extractor for {type(settings).__name__} returned shapes {train.shape} and "
                         f"{test.shape} for {len(train_images)} train and {len(test_images)} test images")
    return train if single else (train, test)


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
class FeatureCacheError(BKDError, ValueError):
    """A cached feature file is damaged or does not belong to its key."""


def feature_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$BKD_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/bkd_core/features``
    (``~/.cache/bkd_core/features``)."""
    if root is not None:
        return Path(root)
    if os.environ.get("BKD_FEATURE_CACHE"):
        return Path(os.environ["BKD_FEATURE_CACHE"])
    from .io import user_cache_dir

    return user_cache_dir("features")


def _cache_chooser(root: str | os.PathLike | None) -> tuple[str, str]:
    """What chose :func:`feature_cache_dir`, and how to choose another: for messages."""
    if root is not None:
        return "the root argument", "pass a root folder you can write to"
    fix = "set BKD_FEATURE_CACHE to a folder you can write to"
    if os.environ.get("BKD_FEATURE_CACHE"):
        return "$BKD_FEATURE_CACHE", fix
    return ("$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the default, ~/.cache"), fix


def _check_cache_target(path: Path, root: str | os.PathLike | None) -> None:
    """Before computing what ``path`` will keep: refuse a folder at ``path`` (nothing may replace it) and a
    cache folder that cannot be written (:class:`bkd_core.io.FolderNotWritableError`, naming what chose it)."""
    from .io import check_writable_folder

    if path.exists() and not path.is_file():
        raise FeatureCacheError(f"cache path {path} is not a file (a folder or another non-file is there); "
                                "move it away so the cache can be written there")
    chosen_by, fix = _cache_chooser(root)
    check_writable_folder(path.parent, chosen_by=chosen_by, fix=fix)


def data_fingerprint(*arrays: np.ndarray) -> str:
    """16 hex digits of the sha256 of the arrays' shapes, dtypes and bytes, in order (about 0.3 s for
    CIFAR's 180 MB): the data part of the feature cache's key (the train and test images) and of the
    neighbour graph's (:func:`bkd_core.detectors.knn.cached_nearest_neighbours`, the feature matrix)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}|{array.dtype.str}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def _is_image_batch(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4


def _images_of(data_or_images: Any, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(train images, test images or None for one set, cache name) of any accepted input form."""
    if hasattr(data_or_images, "train_images") and hasattr(data_or_images, "test_images"):
        return (data_or_images.train_images, data_or_images.test_images,
                str(getattr(data_or_images, "dataset", "data")))
    if (isinstance(data_or_images, (tuple, list)) and len(data_or_images) == 2
            and all(_is_image_batch(v) or isinstance(v, (list, tuple)) for v in data_or_images)):
        train, test = data_or_images
        return (as_images(train, "train images", progress=progress),
                as_images(test, "test images", progress=progress), "images")
    return as_images(data_or_images, "images", progress=progress), None, "images1"


def feature_cache_path(data_or_images: Any, *, settings: Settings = PatchFeatureSettings(),
                       root: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_features` keeps the features of these images and settings:
    ``<cache dir>/<name>-<kind>-<settings fingerprint>-<data fingerprint>.npz``."""
    return _cache_path(*_images_of(data_or_images), settings=settings, root=root)


def _cache_path(train: np.ndarray, test: np.ndarray | None, name: str, *, settings: Settings,
                root: str | os.PathLike | None) -> Path:
    arrays = (train,) if test is None else (train, test)
    key = f"{name}-{settings.kind}-{settings.fingerprint()}-{data_fingerprint(*arrays)}"
    return feature_cache_dir(root) / f"{key}.npz"


def _read_cached(path: Path, n_train: int, n_test: int, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:  # numpy leaves its own handle open when the zip is bad
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError(f"it holds one {archive.dtype} array [{archive.shape}], not an .npz archive")
            with archive:
                train, test = archive["train"], archive["test"]
                stored = str(archive["fingerprint"])
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise FeatureCacheError(f"cached feature file {path} is damaged ({type(exc).__name__}: {exc}); "
                                "delete it to recompute") from exc
    if stored != settings.fingerprint():
        raise FeatureCacheError(f"cached feature file {path} holds features of other settings "
                                f"({stored} != {settings.fingerprint()}); delete it to recompute")
    if (train.dtype != np.float32 or test.dtype != np.float32 or train.ndim != 2 or test.ndim != 2
            or train.shape[0] != n_train or test.shape[0] != n_test or train.shape[1] != test.shape[1]
            or not (np.isfinite(train).all() and np.isfinite(test).all())):
        raise FeatureCacheError(f"cached feature file {path} has wrong shapes/dtypes {train.shape} "
                                f"{train.dtype}, {test.shape} {test.dtype} (expected [{n_train}, D] and "
                                f"[{n_test}, D] finite float32); delete it to recompute")
    return train, test


def _write_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed ``.npz`` (features barely compress), written through :func:`bkd_core.io.atomic_path`."""
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())


def cached_features(data_or_images: Any, *, settings: Settings = PatchFeatureSettings(),
                    root: str | os.PathLike | None = None, progress: bool = True,
                    on_damaged: Literal["recompute", "raise"] = "recompute") -> tuple[np.ndarray, np.ndarray]:
    """:func:`extract_features`, computed once per images and settings and kept as ``.npz``.

    Parameters
    ----------
    data_or_images : array_like, NoisyCIFAR or tuple
        One image set (a uint8 array ``[N, H, W, 3]``, a uint8 torch tensor ``[N, H, W, 3]`` or
        ``[N, 3, H, W]``, or a list of PIL images of one size; see :func:`extract_features` for the
        sizes supported), a :class:`~bkd_core.data.NoisyCIFAR` (its ``train_images`` and ``test_images``)
        or a tuple ``(train_images, test_images)`` of two such sets.
    settings : PatchFeatureSettings or BackboneFeatureSettings
        Extractor settings; their fingerprint is part of the file name.
    root : path, optional
        Cache folder (default: ``$BKD_FEATURE_CACHE``, else ``~/.cache/bkd_core/features``).
    progress : bool
        Progress bar while computing.
    on_damaged : {"recompute", "raise"}
        What to do when the cached file cannot be read or does not match: warn and recompute
        (overwriting it), or raise :class:`FeatureCacheError`.

    Returns
    -------
    np.ndarray or tuple of np.ndarray
        For one image set: float32 ``[N, D]``; otherwise ``(train_features [N, D], test_features
        [T, D])``; rows in the order of the images.

    Notes
    -----
    The key is the settings' fingerprint plus a sha256 of the image bytes (a subset of a dataset
    is a different key). Files are written to a temporary file beside the target and moved into
    place with ``os.replace``, so a crash never leaves a half-written cache file; they are read
    with ``allow_pickle=False``.
    """
    if on_damaged not in ("recompute", "raise"):
        raise ValueError(f"on_damaged must be 'recompute' or 'raise', got {on_damaged!r}")
    train_images, test_images, name = _images_of(data_or_images, progress)
    path = _cache_path(train_images, test_images, name, settings=settings, root=root)
    single = test_images is None
    if single:
        test_images = train_images[:0]
    if path.is_file():  # anything else at the path is refused below, before any extraction
        try:
            train, test = _read_cached(path, len(train_images), len(test_images), settings)
            return train if single else (train, test)
        except FeatureCacheError as exc:
            if on_damaged == "raise":
                raise
            warnings.warn(f"{exc}; recomputing it now", RuntimeWarning, stacklevel=2)
    _check_cache_target(path, root)
    out = extract_features(train_images, None if single else test_images, settings=settings, progress=progress)
    train, test = (out, out[:0]) if single else out
    _write_atomic(path, train=train, test=test, fingerprint=np.array(settings.fingerprint()),
                  settings=np.array(json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)))
    return train if single else (train, test)


# --------------------------------------------------------------------------------------------
# features of a data set, by name (what BKDConfig.features names)
# --------------------------------------------------------------------------------------------

#: The feature sets a configuration can name (``BKDConfig.features``): name -> extractor settings.
FEATURE_SETTINGS: dict[str, Settings] = {"patches": PatchFeatureSettings()}


def with_features(data: Any, name: str, *, root: str | os.PathLike | None = None, progress: bool = True) -> Any:
    """``data`` (a :class:`~bkd_core.data.NoisyCIFAR`) with the feature set ``name`` attached
    (``train_features``, ``test_features``, ``feature_key``), from the cache or computed once.

    Attach them to the full data set before taking subsets: the extractor's statistics are fitted on
    ``data.train_images``, and :meth:`~bkd_core.data.NoisyCIFAR.subset` carries the features along.
    Returns ``data`` itself when it already holds this feature set.
    """
    if name not in FEATURE_SETTINGS:
        raise ValueError(f"unknown feature set {name!r}; choose one of {', '.join(FEATURE_SETTINGS)}")
    settings = FEATURE_SETTINGS[name]
    key = f"{name}-{settings.fingerprint()}"
    if getattr(data, "feature_key", None) == key:
        return data
    train, test = cached_features(data, settings=settings, root=root, progress=progress)
    return dataclasses.replace(data, train_features=train, test_features=test, feature_key=key)
