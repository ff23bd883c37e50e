"""Which code produced a run: a hash of the ``bkd_core`` sources that affect training.

:func:`code_hash` is part of every cached run's key (:func:`bkd_core.book.cache.run_key`) and is
recorded in every reproduction run's ``metrics.json`` (:func:`bkd_core.batch.run_one`), so that
a change to the method or the training code retrains the cached runs instead of reusing numbers
produced by older code, and the results chapter can say which committed runs came from other code.

The hash covers :data:`TRAINING_MODULES` (those of them that exist): the method, the training
loops, the networks, augmentation, data loading and subsets, the configuration and its profiles,
confident learning, feature extraction, the kNN detector and its registry entry, and the metrics each
run records. It does not cover the book's helpers, plots, tables, the
command line or the batch runner, which change what is shown, not what is trained.

Each module is normalised before hashing: parsed with :mod:`ast`, its docstrings removed, and
written back with :func:`ast.unparse`. Comments, docstrings, blank lines, line breaks and quoting
style therefore do not count; any change to the code itself does.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

__all__ = ["TRAINING_MODULES", "PACKAGE_DIR", "code_hash", "normalized_source"]

#: ``bkd_core`` modules whose code decides what a training run computes (missing ones are skipped).
TRAINING_MODULES: tuple[str, ...] = ("method", "train", "models", "augment", "data", "config", "features",
                                     "metrics", "detectors/registry", "detectors/confident_learning",
                                     "detectors/knn")
#: The folder of the ``bkd_core`` package this module belongs to.
PACKAGE_DIR = Path(__file__).resolve().parent
#: Length of the hexadecimal hash (48 bits: collisions between code versions are not a concern).
HASH_LENGTH = 12


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(source: str) -> str:
    """``source`` (Python code) without comments, docstrings or layout: what :func:`code_hash` hashes."""
    return ast.unparse(_strip_docstrings(ast.parse(source)))


def code_hash(package_dir: str | os.PathLike | None = None, modules: Sequence[str] = TRAINING_MODULES) -> str:
    """A 12-digit hex hash of the training code: the normalised sources of ``modules`` in ``package_dir``.

    Parameters
    ----------
    package_dir : str | os.PathLike | None
        folder holding the modules; None means this ``bkd_core`` package.
    modules : Sequence[str]
        module paths relative to ``package_dir``, without ``.py`` (e.g. ``"detectors/knn"``);
        those without a file in ``package_dir`` are skipped, so adding an optional module later
        changes the hash once, when it appears.

    Raises
    ------
    FileNotFoundError
        none of ``modules`` exists in ``package_dir``.
    SyntaxError
        a module does not parse.
    """
    folder = Path(package_dir).resolve() if package_dir is not None else PACKAGE_DIR
    return _code_hash(str(folder), tuple(modules), *(_mtime(folder / f"{m}.py") for m in modules))


def _mtime(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _code_hash(folder: str, modules: tuple[str, ...], *stats: tuple[int, int]) -> str:
    # cached on the files' modification times and sizes: recomputed when a source file changes
    digest = hashlib.sha256()
    found = 0
    for name in modules:
        path = Path(folder) / f"{name}.py"
        if not path.is_file():
            continue
        found += 1
        digest.update(f"{name}\n".encode())
        digest.update(normalized_source(path.read_text(encoding="utf-8")).encode())
        digest.update(b"\n\0")
    if not found:
        raise FileNotFoundError(f"none of the modules {', '.join(modules)} is in {folder}")
    return digest.hexdigest()[:HASH_LENGTH]
