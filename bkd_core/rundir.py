"""A run directory: one training run's folder, its identity, a writer lock, checkpoint, epoch files, outputs.

Every run of ``bkd_core`` (BKD, cross-entropy, each fold of confident learning, confident learning
itself) writes through :class:`RunDir`, which promises:

- **Identity.** ``config.json`` records the configuration and the run's identity (kind, dataset,
  split, sizes, fingerprint). A folder whose ``config.json`` names another run, whose
  ``config.json`` was edited by hand (its settings no longer give the recorded fingerprint), or
  that holds run files without a ``config.json``, is never written: :class:`RunDirError`.
- **One writer.** ``.lock`` is held with ``flock`` while a process writes; a second writer is refused
  at once. The lock dies with its process, so a killed run leaves no stale lock. ``.lock`` is opened
  without following links and never truncated; one that is not a plain file of its own (a symbolic or
  hard link, a folder, a FIFO) is refused, so nothing outside the folder is written through it.
- **No code from files.** ``checkpoint.pt`` is read with ``torch.load(weights_only=True)``: tensors
  and plain data only. A checkpoint whose pickle names anything else is refused
  (:class:`UnsafeFileError`) without running it.
- **Nothing half-written.** Every file is written atomically (``bkd_core.io``); temporary files left
  by a killed writer (``.NAME.XXXXXXXX.tmp``) are removed when the next writer starts. A damaged or
  missing file gives :class:`DamagedFileError` naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import stat
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from .errors import DamagedFileError, RunDirError, UnsafeFileError
from .io import atomic_save_npz, atomic_torch_save, atomic_write_json, read_json

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
METRICS = "metrics.json"
SCORES = "scores.npz"
CURVES = "curves.json"
#: the tipping epoch's agreement scores in float16 (small enough to commit beside a batch's metrics)
TIPPING_SCORES = "tipping_scores.npz"
#: Files that mark a folder as a run's (``config.json`` aside).
RUN_FILES = (METRICS, SCORES, CURVES, TIPPING_SCORES, CHECKPOINT, "samples.csv", "samples.csv.gz", "highlights.csv")
T = TypeVar("T")
_STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # bkd_core.io's temporary names


def decode_tipping_scores(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``tipping_scores.npz``'s arrays -> (agreement float32 [N], is_noisy bool [N]); the one reader of its format
    (written by :meth:`RunDir.save_outputs`: float16 scores, the truth packed into bits, the count).

    Raises
    ------
    DamagedFileError
        arrays missing or of the wrong shapes (names ``path``).
    """
    try:
        n = int(arrays["num_samples"])
        agreement = np.asarray(arrays["agreement"]).astype(np.float32)
        is_noisy = np.unpackbits(np.asarray(arrays["is_noisy"], dtype=np.uint8))[:n].astype(bool)
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedFileError(f"{path} is damaged ({_first_line(exc)}); delete it and rerun the run") from exc
    if agreement.shape != (n,) or is_noisy.shape != (n,):
        raise DamagedFileError(f"{path} holds {agreement.shape} scores for {n} samples; delete it and rerun the run")
    return agreement, is_noisy


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def refused_global(exc: BaseException) -> str | None:
    """The global a ``weights_only`` load refused (``"posix.system"``), or None if ``exc`` is another error."""
    match = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(exc))
    return match.group(1) if match else None


def safe_torch_load(path: Path, *, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with errors that name the file.

    Raises
    ------
    UnsafeFileError
        the pickle names a global other than tensors and plain data (it would run code).
    DamagedFileError
        empty, truncated or not a ``torch.save`` file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_global(exc)
        if name:
            raise UnsafeFileError(
                f"{what} {path} was refused as unsafe: loading it would call {name}, and a file written "
                f"by bkd_core holds only tensors and plain data, so it was not written by bkd_core or has "
                f"been tampered with; nothing in it was run. {fix}") from exc
        raise DamagedFileError(f"{what} {path} is damaged ({_first_line(exc)}). {fix}") from exc
    except Exception as exc:  # empty file, truncated zip, other bytes: torch raises many kinds
        raise DamagedFileError(f"{what} {path} is damaged ({_first_line(exc)}). {fix}") from exc


_LOCK_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of the lock file ``path``, created if missing, opened without following a link;
    None when the folder cannot be written (no lock is needed to read it).

    Raises
    ------
    RunDirError
        ``path`` is a symbolic link, a hard link to another file, a folder, a FIFO, a socket
        or a device: never a file bkd_core made, and writing through it could change a file elsewhere.
    """
    def refused(what: str) -> RunDirError:
        return RunDirError(f"{path} is not a regular file ({what}); bkd_core only ever creates a plain file "
                           f"there, so someone else put it in place: remove it (rm {path}) and rerun")

    try:
        fd = os.open(path, _LOCK_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise refused("a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise refused("a folder") from None
        if exc.errno == errno.ENXIO:
            raise refused("a socket") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise refused("a hard link to another file" if stat.S_ISREG(info.st_mode) else "a FIFO or a device")
    return fd


@contextmanager
def folder_lock(folder: Path, *, busy: str = "is writing to", resume: bool = False) -> Iterator[bool]:
    """Hold ``folder/.lock`` with ``flock`` (one writer at a time); yield True, or False when the folder
    cannot be written (nothing to lock). The file is opened without following links and never truncated:
    the holder's pid is written over its first line.

    Raises
    ------
    RunDirError
        another process holds the lock (the message names its pid, ``busy`` says what it does,
        ``resume`` adds that a rerun resumes), or ``.lock`` is not a regular file (:func:`_open_lock_file`).
    """
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield True
        return
    path = folder / LOCK
    fd = _open_lock_file(path)
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            head = os.pread(fd, 64, 0).decode("ascii", "replace").splitlines()
            owner = (head[0].strip() if head else "") or "unknown"
            then = " (the run resumes where it stopped)" if resume else ""
            raise RunDirError(f"another process (pid {owner}) {busy} {folder}; wait for it to finish or stop it, "
                              f"then rerun{then}") from None
        os.pwrite(fd, f"{os.getpid():<19}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the lock


class RunDir:
    """The folder of one run. ``RunDir(path).writing(identity, config)`` opens it for one writer."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.read_only = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- opening --------------------------------------------------------------------------------
    @contextmanager
    def writing(self, identity: dict[str, Any], config: dict[str, Any],
                fingerprint: Callable[[dict[str, Any]], str] | None = None) -> Iterator["RunDir"]:
        """Check the folder, take its lock, remove stale temporary files, and check its identity.

        ``fingerprint`` maps a stored configuration dict to its fingerprint: with it, a
        ``config.json`` whose settings were edited after the run wrote it is refused.

        Raises
        ------
        RunDirError
            the path is a file, the folder belongs to another run or was edited, or
            another process is writing to it.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file, not a folder; "
                              "pass a folder path (new or of this run)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path} ({exc.strerror}); "
                              "choose a writable folder") from exc
        with self._lock():
            if not self.read_only:
                self.refuse_links()
                self.remove_stale_temp_files()
            self.check_identity(identity, fingerprint)
            yield self

    @contextmanager
    def lock(self) -> Iterator["RunDir"]:
        """Hold the folder's writer lock (creating the folder) without checking an identity.

        Raises
        ------
        RunDirError
            the path is a file, or another process holds the lock.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file, not a folder; pass a folder path")
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not self.read_only:
                self.refuse_links()
            yield self

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with folder_lock(self.path, busy="is writing to", resume=True) as held:
            if not held:  # a read-only folder: a finished run can still be read
                self.read_only = True
            yield

    def require_writable(self) -> None:
        """Raise :class:`RunDirError` if the folder cannot be written (read-only) before any training starts."""
        if self.read_only or not os.access(self.path, os.W_OK):
            raise RunDirError(f"run directory {self.path} is not writable (permission denied); choose a writable "
                              "folder, or make this one writable, to train or resume this run")

    def refuse_links(self) -> None:
        """Raise :class:`RunDirError` for a symbolic link in the folder (or its ``epochs/``): writing through it
        (an epoch file into a linked ``epochs/``, a notebook over a linked file) would change files outside."""
        for folder in (self.path, self.path / "epochs"):
            if folder.is_symlink() and folder != self.path:
                entries = [folder]
            elif folder.is_dir():
                entries = [entry for entry in folder.iterdir() if entry.is_symlink()]
            else:
                entries = []
            if entries:
                raise RunDirError(f"{entries[0]} is a symbolic link; a run folder holds only its own files, and "
                                  "writing through a link would change files outside it: remove the link (or "
                                  "replace it with a copy of what it points to) and rerun")

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temporary files a killed writer left (``.NAME.XXXXXXXX.tmp``); return them."""
        removed = []
        for folder in (self.path, self.path / "epochs"):
            if folder.is_dir():
                for tmp in folder.iterdir():
                    if _STALE_TEMP.match(tmp.name) and tmp.is_file():
                        tmp.unlink(missing_ok=True)
                        removed.append(tmp)
        return removed

    # -- identity -------------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any] | None:
        """``config.json`` as written (``{"config": ..., "identity": ...}``), or None if there is none."""
        path = self.path / CONFIG
        fix = f"delete {self.path} to start this run over, or use another run directory"
        if path.exists() and not path.is_file():
            raise DamagedFileError(f"{path} is not a file (a folder or another non-file is there); {fix}")
        if not path.is_file():
            return None
        try:
            stored = read_json(path)
        except (ValueError, OSError) as exc:
            raise DamagedFileError(f"{path} is damaged ({_first_line(exc)}); {fix}") from exc
        if not isinstance(stored, dict) or not isinstance(stored.get("identity"), dict):
            raise DamagedFileError(f"{path} is not a run's config.json (no 'identity' record); {fix}")
        return stored

    def check_identity(self, identity: dict[str, Any],
                       fingerprint: Callable[[dict[str, Any]], str] | None = None) -> None:
        """Refuse a folder that belongs to another run, was edited, or holds run files without ``config.json``."""
        stored = self.stored_config()
        if stored is None:
            present = [name for name in RUN_FILES if (self.path / name).exists()]
            if (self.path / "epochs").is_dir() and any((self.path / "epochs").iterdir()):
                present.append("epochs/")
            if present:
                raise RunDirError(
                    f"{self.path} holds {', '.join(present)} but no config.json, so it is not known which run they "
                    "belong to; refusing to overwrite them. Use another run directory, or delete that one")
            return
        # a fingerprint is a method's (only the fields it uses): another method's run is a different run
        same_kind = stored["identity"].get("kind") == identity.get("kind")
        if fingerprint is not None and same_kind and isinstance(stored.get("config"), dict):
            try:
                recorded = fingerprint(stored["config"])
            except (ValueError, TypeError) as exc:
                recorded = f"invalid ({_first_line(exc)})"
            if recorded != stored["identity"].get("fingerprint"):
                raise RunDirError(
                    f"{self.path / CONFIG} was edited after the run wrote it: its settings give fingerprint "
                    f"{recorded}, the run recorded {stored['identity'].get('fingerprint')}. Restore the file, "
                    "or train the new settings into another run directory")
        if stored["identity"] != identity:
            raise RunDirError(
                f"{self.path} belongs to a different run ({stored['identity']}), not this one ({identity}); "
                "use another run directory, or delete that one to start over")

    def write_config(self, identity: dict[str, Any], config: dict[str, Any]) -> None:
        atomic_write_json(self.path / CONFIG, {"config": config, "identity": identity})

    # -- checkpoint -----------------------------------------------------------------------------
    def load_checkpoint(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint's state (tensors on the CPU), or None if there is none.

        Raises
        ------
        UnsafeFileError
            the checkpoint would run code.
        DamagedFileError
            it is damaged or not a checkpoint of this code.
        RunDirError
            it belongs to another run.
        """
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        fix = f"Delete it to restart this run from its first epoch (rm {path})"
        state = safe_torch_load(path, what="checkpoint", fix=fix)
        if not isinstance(state, dict) or not {"identity", "epoch", "networks"} <= set(state):
            raise DamagedFileError(f"checkpoint {path} is not a bkd_core checkpoint (unexpected content). {fix}")
        if state["identity"] != identity:
            raise RunDirError(f"{path} belongs to a different run ({state['identity']}), not this one ({identity}); "
                              "use another run directory, or delete that one to start over")
        return state

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.path / CHECKPOINT, state)

    # -- per-epoch files ------------------------------------------------------------------------
    def epoch_file(self, epoch: int) -> Path:
        return self.path / "epochs" / f"epoch_{epoch:03d}.npz"

    def save_epoch(self, epoch: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_save_npz(self.epoch_file(epoch), **arrays)

    def load_epoch(self, epoch: int) -> dict[str, np.ndarray]:
        """Per-sample arrays of epoch ``epoch`` (0-based).

        Raises
        ------
        DamagedFileError
            the file is missing or damaged (the run cannot be finished from it).
        """
        path = self.epoch_file(epoch)
        fix = (f"the run's scores of that epoch are lost: delete {self.path} (or its checkpoint.pt and "
               "epochs/) to retrain the run")
        if not path.is_file():
            raise DamagedFileError(f"epoch file {path} is missing; {fix}")
        try:
            # opened here: numpy leaves its own handle open when the zip is bad
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise DamagedFileError(f"epoch file {path} is damaged ({_first_line(exc)}); {fix}") from exc

    def remove_epochs_from(self, epoch: int) -> list[Path]:
        """Delete the epoch files of epochs ``epoch`` and later (written after the checkpoint a run
        resumes from: the resumed run computes them again); return them."""
        folder = self.path / "epochs"
        removed = []
        if folder.is_dir():
            for path in sorted(folder.glob("epoch_*.npz")):
                number = path.stem[len("epoch_"):]
                if number.isdigit() and int(number) >= epoch:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def check_epochs(self, epochs: int) -> None:
        """Read epoch files ``0 .. epochs-1`` (at resume, so a damaged one is found before training on)."""
        for epoch in range(epochs):
            self.load_epoch(epoch)

    # -- finished outputs -----------------------------------------------------------------------
    def load_or_compute(self, identity: dict[str, Any], config: dict[str, Any], *,
                        fingerprint: Callable[[dict[str, Any]], str] | None, load: Callable[[], T],
                        compute: Callable[[], None]) -> T:
        """A run with no checkpoint to resume from (confident learning, kNN): open the folder for writing
        (:meth:`writing`), and return ``load()`` of the finished run, or else write ``config.json``, call
        ``compute()`` (which writes the outputs, :meth:`save_outputs`) and return ``load()``.

        A finished run whose outputs are damaged is computed again (what ``compute`` reuses, such as
        finished fold runs, is kept).
        """
        with self.writing(identity, config, fingerprint=fingerprint):
            if self.finished():
                try:
                    return load()
                except DamagedFileError:
                    pass  # computed again below
            self.require_writable()
            self.write_config(identity, config)
            compute()
            return load()

    def finished(self) -> bool:
        return all((self.path / name).is_file() for name in (METRICS, SCORES))

    def save_outputs(self, metrics: dict[str, Any], arrays: dict[str, np.ndarray], *,
                     curves: dict[str, Any] | None = None, tipping_scores: dict[str, np.ndarray] | None = None) -> None:
        """``scores.npz`` (and ``curves.json``, ``tipping_scores.npz``) then ``metrics.json`` (so a run with
        ``metrics.json`` has the others)."""
        if curves is not None:
            atomic_write_json(self.path / CURVES, curves)
        if tipping_scores is not None:
            atomic_save_npz(self.path / TIPPING_SCORES, **tipping_scores)
        atomic_save_npz(self.path / SCORES, **arrays)
        atomic_write_json(self.path / METRICS, metrics)

    def load_tipping_scores(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The detection's agreement scores (float32 [N]) and which samples are mislabelled (bool [N]) from
        ``tipping_scores.npz``, or None when the run wrote none (no tipping point, or an older run).

        Raises
        ------
        DamagedFileError
            the file is damaged.
        """
        path = self.path / TIPPING_SCORES
        if not path.exists():
            return None
        try:
            # opened here: numpy leaves its own handle open when the zip is bad
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DamagedFileError(f"{path} is damaged ({_first_line(exc)}); delete it and rerun the run") from exc
        return decode_tipping_scores(arrays, path)

    def load_outputs(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(metrics, arrays)`` of a finished run.

        Raises
        ------
        DamagedFileError
            ``metrics.json`` or ``scores.npz`` is damaged.
        """
        fix = f"delete it (and {METRICS}) and rerun: a run with its checkpoint recomputes them, another retrains"
        metrics_path, scores_path = self.path / METRICS, self.path / SCORES
        try:
            metrics = read_json(metrics_path)
        except (ValueError, OSError) as exc:
            raise DamagedFileError(f"{metrics_path} is damaged ({_first_line(exc)}); {fix}") from exc
        if not isinstance(metrics, dict):
            raise DamagedFileError(f"{metrics_path} holds a {type(metrics).__name__}, not a run's metrics; {fix}")
        try:
            # opened here: numpy leaves its own handle open when the zip is bad
            with open(scores_path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise DamagedFileError(f"{scores_path} is damaged ({_first_line(exc)}); {fix}") from exc
        missing = [k for k in ("label_issues", "label_quality", "ranked_indices", "indices") if k not in arrays]
        if missing:
            raise DamagedFileError(f"{scores_path} lacks {missing}; {fix}")
        return metrics, arrays
