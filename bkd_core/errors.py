"""Errors a user can fix. Each message says what is wrong, where, and how to fix it; the command line
prints it as one line (``error: ...``) with a non-zero exit status instead of a traceback."""

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
