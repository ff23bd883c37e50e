"""A run cache: runs that several chapters need are trained once, keyed by their configuration and
by the code that trains them (:func:`bkd_core.provenance.code_hash`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .config import BKDConfig
from .data import NoisyCIFAR
from .provenance import code_hash
from .train import RunResult, train_bkd, train_ce

_CHECKOUT = Path(__file__).resolve().parent.parent


def _default_cache() -> Path:
    if (_CHECKOUT / "_toc.yml").is_file():  # running from a checkout of the book
        return _CHECKOUT / "runs" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bkd_core" / "runs"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$BKD_RUN_CACHE``, else ``runs/cache`` in a checkout, else a user cache folder."""
    return Path(root or os.environ.get("BKD_RUN_CACHE") or _default_cache())


def run_key(kind: str, data: NoisyCIFAR, config: BKDConfig) -> str:
    """Folder name of a run: method, dataset, split, the configuration's fingerprint and the code hash.

    The code hash (:func:`~bkd_core.provenance.code_hash`) changes with any change to the training
    code (not with comments or docstrings), so a fix in ``method.py`` or ``train.py`` that leaves the
    configuration unchanged trains a new run instead of reusing one made by the old code.
    """
    return f"{kind}-{data.dataset}-{data.split}-{config.fingerprint()}-code{code_hash()}"


def cached_run(kind: Literal["bkd", "ce"], data: NoisyCIFAR, config: BKDConfig,
               root: str | os.PathLike | None = None, *, progress: bool = True) -> RunResult:
    """Train (or resume, or just load) the ``kind`` run of ``config`` on ``data`` in the cache."""
    if kind not in ("bkd", "ce"):
        raise ValueError(f"kind must be 'bkd' or 'ce', got {kind!r}")
    trainer = train_bkd if kind == "bkd" else train_ce
    return trainer(data, config, cache_dir(root) / run_key(kind, data, config), progress=progress)
