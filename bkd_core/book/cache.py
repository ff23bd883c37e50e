"""A run cache: runs that several chapters need are trained once, keyed by their configuration and
by the code that trains them (:func:`bkd_core.provenance.code_hash`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import BKDConfig
from ..data import NoisyCIFAR
from ..io import user_cache_dir
from ..detectors import METHODS
from ..provenance import code_hash
from ..train import RunResult

_CHECKOUT = Path(__file__).resolve().parents[2]  # bkd_core/book/cache.py -> the checkout


def _default_cache() -> Path:
    if (_CHECKOUT / "_toc.yml").is_file():  # running from a checkout of the book
        return _CHECKOUT / "runs" / "cache"
    return user_cache_dir("runs")


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$BKD_RUN_CACHE``, else ``runs/cache`` in a checkout, else a user cache folder."""
    return Path(root or os.environ.get("BKD_RUN_CACHE") or _default_cache())


def run_key(kind: str, data: NoisyCIFAR, config: BKDConfig) -> str:
    """Folder name of a run: method, dataset, split, the configuration's fingerprint and the code hash.

    The code hash (:func:`~bkd_core.provenance.code_hash`) changes with any change to the training
    code (not with comments or docstrings), so a fix in ``method.py`` or ``train.py`` that leaves the
    configuration unchanged trains a new run instead of reusing one made by the old code.
    """
    return f"{kind}-{data.dataset}-{data.split}-{config.fingerprint(kind)}-code{code_hash()}"


def cached_methods() -> tuple[str, ...]:
    """The methods :func:`cached_run` can train: those of :data:`bkd_core.detectors.METHODS` whose run is a
    single run of the training loop, fixed by its configuration (``Method.single_run``)."""
    return tuple(name for name, method in METHODS.items() if method.single_run)


def cached_run(kind: str, data: NoisyCIFAR, config: BKDConfig,
               root: str | os.PathLike | None = None, *, progress: bool = True) -> RunResult:
    """Train (or resume, or just load) the ``kind`` run of ``config`` on ``data`` in the cache.

    Args:
        kind: a method of :func:`cached_methods` (``"bkd"`` or ``"ce"``).

    Raises:
        ValueError: ``kind`` is not such a method (unknown, or one whose result depends on more than the
            configuration, such as the folds of ``"cleanlab"``).
    """
    supported = cached_methods()
    if kind not in supported:
        choices = " or ".join(repr(name) for name in supported)
        if kind not in METHODS:
            raise ValueError(f"unknown method {kind!r}: cached_run trains {choices} runs")
        raise ValueError(f"cached_run trains {choices} runs, not {kind!r}: its result is not one training run "
                         f"keyed by the configuration alone; train it into a run folder of your own with "
                         f"bkd_core.detectors.METHODS[{kind!r}].train(data, config, run_dir, folds=..., progress=...)")
    # a single run has no folds: the registry's train ignores them
    return METHODS[kind].train(data, config, cache_dir(root) / run_key(kind, data, config), folds=1,
                               progress=progress)
