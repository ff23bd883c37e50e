"""Atomic writes: a file is either its old version or its complete new version, never half of one.
Also where bkd_core keeps its caches (:func:`user_cache_dir`)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import BKDError


def user_cache_dir(name: str) -> Path:
    """The user cache folder bkd_core keeps ``name`` in (``"data"``, ``"features"``, ``"runs"``):
    ``$XDG_CACHE_HOME/bkd_core/<name>``, by default ``~/.cache/bkd_core/<name>``. Not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bkd_core" / name


def is_folder_name(name: object) -> bool:
    """True for a plain name of a folder's entry (``"cifar10-worst-seed0"``): not empty, ``.`` or ``..``,
    and without a path separator or NUL, so ``folder / name`` always lies directly inside ``folder``."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and os.sep not in name and not (os.altsep and os.altsep in name))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0o600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` (dicts, lists, numbers, numpy scalars/arrays) as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` atomically (``path`` should end in ``.npz``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically.

    Raises
    ------
    OSError
        ENOSPC (naming ``path``) when the file system has no room for it: ``torch.save`` itself
        reports a full disk as a ``RuntimeError`` from its zip writer, not as an ``OSError``.
    """
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            if not _no_room_for(obj, Path(tmp).parent):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def _no_room_for(obj: Any, folder: Path) -> bool:
    """Would ``torch.save(obj)`` need more bytes than ``folder``'s file system has free?"""
    import io
    import shutil

    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.tell() > shutil.disk_usage(folder).free
    except Exception:  # noqa: BLE001 (a best-effort measurement: any failure here leaves the first error standing)
        return False


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and rerun to recreate it") from exc


class FolderNotWritableError(BKDError, PermissionError):
    """A folder a file must be written into cannot be created or written (checked before the work that fills it)."""


def check_writable_folder(folder: str | os.PathLike, *, chosen_by: str, fix: str) -> None:
    """Create ``folder`` if needed and write (then remove) an empty temporary file in it.

    ``chosen_by`` says what chose the folder (``"$BKD_FEATURE_CACHE"``) and ``fix`` how to choose
    another (``"set BKD_FEATURE_CACHE to a folder you can write to"``), for the message.

    Raises
    ------
    FolderNotWritableError
        it cannot be created or written; the message names the folder, the
        reason and ``chosen_by``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError) or (folder.exists() and not folder.is_dir()):
            reason = "a file is in the way"
        elif isinstance(exc, NotADirectoryError):
            reason = "a file is in the way on its path"
        raise FolderNotWritableError(
            f"folder {folder} (chosen by {chosen_by}) is not writable ({reason}); {fix}") from exc
