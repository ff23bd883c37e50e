"""A run cache: runs that several chapters need are trained once, keyed by their configuration and
by the code that trains them (:func:`bkd_core.provenance.code_hash`).

The cache records the sha256 of each finished run's ``metrics.json`` and ``scores.npz`` (in the run's
``cache_record.json``) the first time it returns the run, and refuses the run later if either file no longer has
it: a number edited by hand is never shown as the run's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..config import BKDConfig
from ..data import NoisyCIFAR
from ..errors import RunDirError
from ..io import atomic_write_json, read_json, user_cache_dir
from ..detectors import METHODS
from ..provenance import code_hash
from ..rundir import METRICS, SCORES
from ..train import RunResult

#: File in a cached run's folder with the sha256 of its outputs as the cache first returned them.
RECORD = "cache_record.json"

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

    Parameters
    ----------
    kind : str
        a method of :func:`cached_methods` (``"bkd"`` or ``"ce"``).

    Raises
    ------
    ValueError
        ``kind`` is not such a method (unknown, or one whose result depends on more than the
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
    folder = cache_dir(root) / run_key(kind, data, config)
    recorded = _check_unedited(folder)
    # a single run has no folds: the registry's train ignores them
    result = METHODS[kind].train(data, config, folder, folds=1, progress=progress)
    digests = _digests(folder)
    if digests and digests != recorded:  # first returned (or recomputed after a file was deleted): record it
        try:
            atomic_write_json(folder / RECORD, digests)
        except OSError:  # a read-only cache: nothing can be edited through bkd_core either
            pass
    return result


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of the run's outputs that exist, by file name."""
    out = {}
    for name in (METRICS, SCORES):
        path = folder / name
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            out[name] = digest.hexdigest()
    return out


def _check_unedited(folder: Path) -> dict[str, str] | None:
    """The record of ``folder`` (None if there is none), after checking that no recorded output was changed.

    Raises
    ------
    RunDirError
        ``metrics.json`` or ``scores.npz`` no longer has the sha256 recorded when the cache first
        returned the run (or the record itself is damaged).
    """
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        recorded = read_json(path)
    except (ValueError, OSError):
        recorded = None
    if not isinstance(recorded, dict):
        raise RunDirError(f"{path} is damaged, so it cannot be told whether the cached run's numbers are its own; "
                          f"delete the folder {folder} to train the run again")
    now = _digests(folder)
    for name, digest in recorded.items():
        if name in now and now[name] != digest:
            raise RunDirError(f"{folder / name} was changed after the run wrote it (its sha256 is not the one "
                              f"recorded in {RECORD}), so its numbers are not the run's; restore the file, or delete "
                              f"the folder {folder} to train the run again")
    return recorded
