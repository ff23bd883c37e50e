"""Reading a batch folder's files safely: one reader for every file of a run that a batch folder holds.

A batch folder can come from anywhere (a clone, a copy, an archive), and git keeps symbolic links: a
run's ``metrics.json`` could be a link to ``/dev/zero`` (reading it would never end and fill the memory), a
FIFO (reading it would wait forever) or a folder. :func:`open_run_file` opens a file without following a
link and without waiting, refuses anything that is not a regular file, and refuses a file larger than its
cap; every error is one sentence that names the file. :func:`curve_arrays` checks per-epoch curves (a run's
``curves.json``, and the curves of the `cnn` profile's diagnostic runs) and turns them into arrays.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import reprlib
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DamagedFileError

#: Largest JSON file of a run read (a run's ``metrics.json`` is a few kB; per-epoch curves keep it well below).
MAX_JSON_BYTES = 64 * 2**20
#: Largest table read (``samples.csv.gz``, ``highlights.csv``, ``results.csv``; 50,000 rows are about 5 MB).
MAX_TABLE_BYTES = 256 * 2**20
#: Largest array file read (``scores.npz`` with per-epoch per-image curves).
MAX_ARRAY_BYTES = 8 * 2**30

#: What restores a damaged file of a batch run.
REWRITE = "restore it (e.g. git checkout), or delete the run's folder and rerun the batch to rewrite it"

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _refused(path: Path, what: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is {what}, not a regular file: a batch run's files are plain files written by "
                            f"'python -m bkd_core reproduce', so it was not written by bkd_core; move it away and "
                            "restore the run's folder (e.g. git checkout), or delete the run's folder and rerun "
                            "the batch")


def open_run_file(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES) -> BinaryIO:
    """Open a file of a batch folder for reading in binary mode: never through a symbolic link, never
    waiting on a FIFO, and only a regular file of at most ``limit`` bytes.

    Raises
    ------
    FileNotFoundError
        there is no such file.
    bkd_core.errors.DamagedFileError
        it is a symbolic link, a folder, a FIFO, a socket or a device,
        or larger than ``limit`` (one sentence naming the file and what to do).
    """
    path = Path(path)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from None
        if exc.errno == errno.ENXIO:
            raise _refused(path, "a socket") from None
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"{path} does not exist", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(path, _kind(info.st_mode))
        if info.st_size > limit:
            raise DamagedFileError(f"{path} holds {info.st_size:,} bytes, more than the {limit:,} a batch run's "
                                   "file of this kind can hold: it was not written by bkd_core; move it away, or "
                                   "delete the run's folder and rerun the batch")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_run_bytes(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a file of a batch folder (:func:`open_run_file`), never more than ``limit`` of them."""
    with open_run_file(path, limit=limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while it was read
        raise DamagedFileError(f"{path} grew past {limit:,} bytes while it was read; move it away, or delete the "
                               "run's folder and rerun the batch")
    return data


def read_run_json(path: str | os.PathLike) -> Any:
    """A JSON file of a batch folder, read safely (:func:`open_run_file`).

    Raises
    ------
    FileNotFoundError
        there is no such file.
    bkd_core.errors.DamagedFileError
        it is not a regular file, too large, or not valid JSON (names it).
    """
    data = read_run_bytes(path, limit=MAX_JSON_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFileError(f"{path} is not valid JSON ({exc}); restore it (e.g. git checkout), or delete the "
                               "run's folder and rerun the batch") from None


def read_run_csv(path: str | os.PathLike) -> Any:
    """A CSV table of a batch folder (gzip-compressed when its name ends in ``.gz``) as a DataFrame, read
    safely (:func:`open_run_file`).

    Raises
    ------
    FileNotFoundError
        there is no such file.
    bkd_core.errors.DamagedFileError
        it is not a regular file, too large, or not a readable table (names it).
    """
    import pandas as pd

    path = Path(path)
    data = read_run_bytes(path, limit=MAX_TABLE_BYTES)
    try:
        return pd.read_csv(io.BytesIO(data), compression="gzip" if path.name.endswith(".gz") else None)
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DamagedFileError(f"{path} cannot be read ({type(exc).__name__}: {first}); delete the run's folder "
                               "and rerun the batch to rewrite it") from None


def load_run_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """Every array of a ``.npz`` file of a batch folder (no pickled objects), read safely (:func:`open_run_file`).

    Raises
    ------
    FileNotFoundError
        there is no such file.
    bkd_core.errors.DamagedFileError
        it is not a regular file, too large, or not a readable ``.npz`` (names it).
    """
    import zipfile

    import numpy as np

    with open_run_file(path, limit=MAX_ARRAY_BYTES) as f:
        try:
            with np.load(f, allow_pickle=False) as arrays:
                return {key: arrays[key] for key in arrays.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DamagedFileError(f"{path} is not a readable array file ({type(exc).__name__}: {first}); delete "
                                   "the run's folder and rerun the batch to rewrite it") from None


def lexists(path: str | os.PathLike) -> bool:
    """Is there an entry at ``path`` (of any kind, a dangling link too)? A batch folder's reader lists such an
    entry, so that :func:`open_run_file` names it, rather than leaving it out without a word."""
    return os.path.lexists(path)


def _is_value(value: Any) -> bool:
    """A curve's entry: a finite number (not a boolean) or None (an epoch without a value)."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve_arrays(raw: Any, path: str | os.PathLike, *, required: Sequence[str] = (), where: str = "",
                 fix: str = REWRITE) -> dict[str, np.ndarray]:
    """Per-epoch curves, as :func:`bkd_core.metrics.epoch_curves` writes them, checked and turned into arrays.

    Parameters
    ----------
    raw : Any
        The curves as read from JSON: a dict of curve name to a list with one entry per epoch, each a finite
        number or None (an epoch without a value). An ``epoch`` curve, when there is one, counts 1, 2, ...
    path : str or os.PathLike
        The file they come from (named in errors).
    required : sequence of str, keyword-only
        Curves that must be there.
    where : str, keyword-only
        Where in the file they are (named in errors, e.g. ``"run 'off-worst': curves"``); empty when they are
        the whole file.
    fix : str, keyword-only
        What restores the file (the end of an error's sentence).

    Returns
    -------
    dict of str to ndarray
        Every curve of ``raw`` as float64 ``[epochs]``, NaN where an epoch has no value; all of one length.

    Raises
    ------
    bkd_core.errors.DamagedFileError
        ``raw`` is not a dict of such lists, a required curve is missing, an entry is not a finite number or None
        (a boolean, a string, NaN), the curves differ in length, or ``epoch`` does not count 1, 2, ... (one
        sentence naming the file, the curve and the fix).
    """
    def damaged(what: str) -> DamagedFileError:
        return DamagedFileError(f"{path}: {what}; {fix}")

    def curve(key: str) -> str:
        return f"{where}.{key}" if where else f"the curve {key}"

    if not isinstance(raw, dict):
        raise damaged(f"{where or 'the file'} holds a {type(raw).__name__}, not a dict of per-epoch curves")
    missing = [key for key in required if key not in raw]
    if missing:
        raise damaged(f"{where or 'the file'} lacks the curves {', '.join(missing)}")
    wrong = next((key for key, values in raw.items() if not isinstance(values, list)), None)
    if wrong is not None:
        raise damaged(f"{curve(wrong)} holds a {type(raw[wrong]).__name__}, not a list with one value per epoch")
    first = "epoch" if "epoch" in raw else next(iter(raw), None)
    curves: dict[str, np.ndarray] = {}
    for key, values in raw.items():
        if len(values) != len(raw[first]):
            raise damaged(f"{curve(key)} is not a list of {len(raw[first])} values, one per epoch (it holds "
                          f"{len(values)}, {first} {len(raw[first])})")
        bad = next((i for i, v in enumerate(values) if not _is_value(v)), None)
        if bad is not None:
            raise damaged(f"{curve(key)} holds {reprlib.repr(values[bad])} at epoch {bad + 1}, which is neither "
                          "a finite number nor null")
        curves[key] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if "epoch" in curves and not (len(curves["epoch"]) and np.array_equal(curves["epoch"],
                                                                         np.arange(1, len(curves["epoch"]) + 1))):
        raise damaged(f"{curve('epoch')} is not 1, 2, ... (one entry per epoch)")
    return curves
