"""Errors a user can fix. Each message says what is wrong, where, and how to fix it; the command line
prints it as one line (``error: ...``) with a non-zero exit status instead of a traceback.

Every such error is a :class:`BKDError`: those below, and those defined beside the code that raises them,
:class:`bkd_core.data.DataError` (a data file; :class:`~bkd_core.data.DataNotFoundError` when it is missing),
:class:`bkd_core.features.FeatureCacheError` and :class:`bkd_core.io.FolderNotWritableError`.
"""

from __future__ import annotations


class BKDError(Exception):
    """Base class: a problem with the user's input, files or machine, not a bug in ``bkd_core``."""


class RunDirError(BKDError, ValueError):
    """A run directory that must not be written: it belongs to another run, is a file, was edited by
    hand, or another process is writing to it."""


class DamagedFileError(BKDError, ValueError):
    """A file of a run directory is truncated, corrupt or missing."""


class UnsafeFileError(DamagedFileError):
    """A file was refused because loading it would run code (a pickle that names arbitrary globals)."""


class DivergedError(BKDError, RuntimeError):
    """Training produced a non-finite loss or non-finite scores."""
