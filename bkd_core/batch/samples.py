"""A batch run's per-sample table: one row per training image with each method's score, flag and prediction.

:func:`samples_table` builds it from a run's method results; the run writes it whole as ``samples.csv.gz``
(not committed: 50,000 rows are about 0.8 MB) and the few rows of it the results chapter shows as
``highlights.csv`` (:func:`highlights`, committed). :func:`read_samples` and :func:`read_highlights` read
them back through the batch folder's safe reader (:func:`bkd_core.batch.files.read_run_csv`);
:func:`ranking_aucs`, :func:`most_suspicious` and :func:`disagreements` are what the results chapter asks of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DamagedFileError
from ..metrics import ranking_auc
from .files import lexists, read_run_csv

if TYPE_CHECKING:
    import pandas as pd

#: A batch run's per-sample table (:func:`write_tables`), gzip-compressed CSV; not committed.
SAMPLES = "samples.csv.gz"
#: The same, uncompressed, as runs committed before it was compressed have it.
OLD_SAMPLES = "samples.csv"
#: The rows of it the results chapter shows (:func:`highlights`): committed, unlike the full table.
HIGHLIGHTS = "highlights.csv"
#: How many rows :func:`highlights` keeps per list.
HIGHLIGHT_ROWS = 24


def samples_table(subset: Any, results: dict[str, Any]) -> "pd.DataFrame":
    """One row per training sample of ``subset``: ``index`` (into the 50,000 images), ``given_label``,
    ``clean_label``, and each method's ``{method}_quality`` (rounded to 5 decimals), ``{method}_issue``
    (0/1), ``{method}_prediction`` (and ``bkd_group``), from the method ``results`` of :func:`run_one`."""
    import pandas as pd

    table: dict[str, np.ndarray] = {"index": subset.indices, "given_label": subset.train_labels,
                                    "clean_label": subset.clean_labels}
    for method, result in results.items():
        arrays = result.arrays
        if not np.array_equal(arrays["indices"], subset.indices):
            raise RuntimeError(f"{method} run in {result.run_dir} holds other samples than this run's subset")
        table[f"{method}_quality"] = np.round(arrays["label_quality"].astype(np.float64), 5)
        table[f"{method}_issue"] = arrays["label_issues"].astype(np.int8)
        table[f"{method}_prediction"] = arrays["predicted_labels"]
        if method == "bkd" and "groups" in arrays:
            table["bkd_group"] = arrays["groups"]
    return pd.DataFrame(table)


def write_tables(out_dir: Path, samples: "pd.DataFrame") -> None:
    """A run's per-sample tables: the full one as ``samples.csv.gz`` (not committed) and its
    :func:`highlights` as ``highlights.csv`` (committed), both atomically."""
    from ..io import atomic_path

    with atomic_path(out_dir / SAMPLES) as tmp:  # mtime 0 in the gzip header: the same table gives the same bytes
        samples.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
    with atomic_path(out_dir / HIGHLIGHTS) as tmp:
        highlights(samples).to_csv(tmp, index=False)


def samples_file(run_dir: str | Path) -> Path | None:
    """A batch run's per-sample table: ``samples.csv.gz`` (what ``reproduce`` writes), or ``samples.csv``
    (runs committed before it compressed them); None if there is neither."""
    for name in (SAMPLES, OLD_SAMPLES):
        if lexists(Path(run_dir) / name):  # a link or a FIFO there is named by the reader, not passed over
            return Path(run_dir) / name
    return None


def read_samples(run_dir: str | Path) -> "pd.DataFrame":
    """A batch run's per-sample table (:func:`samples_file`), checked: one row per training sample with
    ``index``, ``given_label``, ``clean_label`` and each method's ``*_quality``, ``*_issue``, ``*_prediction``.

    Raises
    ------
    FileNotFoundError
        the run folder has no samples table (the run did not finish).
    ValueError
        the table cannot be read or lacks its key columns (names the file and the fix).
    """
    path = samples_file(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no {SAMPLES} (nor samples.csv): the run has not finished; "
                                "rerun the batch command to finish it")
    return _read_samples(path)


def _read_samples(path: Path) -> "pd.DataFrame":
    samples = read_run_csv(path)
    missing = [c for c in ("index", "given_label", "clean_label") if c not in samples]
    if missing:
        raise DamagedFileError(f"{path} lacks the column(s) {missing}; "
                         "delete the run's folder and rerun the batch to rewrite it")
    return samples


def quality_methods(samples: "pd.DataFrame") -> list[str]:
    """The methods with a score column (``{method}_quality``) in a samples table, in its column order."""
    return [c[: -len("_quality")] for c in samples.columns if c.endswith("_quality")]


def ranking_aucs(samples: "pd.DataFrame") -> dict[str, float | None]:
    """Each method's :func:`~bkd_core.metrics.ranking_auc` over a run's full samples table (its
    ``{method}_quality`` against ``given_label != clean_label``); None where it is undefined (no wrong label).

    Raises
    ------
    ValueError
        a NaN or infinite score (names the column, the line and the sample index).
    """
    is_noisy = (samples["given_label"] != samples["clean_label"]).to_numpy()
    aucs = {}
    for method in quality_methods(samples):
        scores = samples[f"{method}_quality"].to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):  # row numbers as a spreadsheet shows them: the header is line 1
            raise ValueError(f"column {method}_quality has {len(bad)} NaN or infinite score(s) "
                             f"(first on line {int(bad[0]) + 2}, sample index {int(samples['index'].iloc[bad[0]])})")
        auc = ranking_auc(scores, is_noisy)
        aucs[method] = None if np.isnan(auc) else float(auc)
    return aucs


def with_percentiles(samples: "pd.DataFrame") -> "pd.DataFrame":
    """``samples`` with a ``{method}_percentile`` column per score: its rank percentile among all of the
    run's samples (ties averaged; near 0 = the most suspicious)."""
    return samples.assign(**{f"{m}_percentile": samples[f"{m}_quality"].rank(pct=True, method="average")
                             for m in quality_methods(samples)})


def highlights(samples: "pd.DataFrame", n: int = HIGHLIGHT_ROWS) -> "pd.DataFrame":
    """The few rows of a run's full samples table that the results chapter shows, with their percentiles.

    The union, in sample order, of the ``n`` rows BKD ranks most suspicious (:func:`most_suspicious`; each
    method's when the run has no BKD) and, when the table has BKD's and cleanlab's scores, the ``n`` largest
    BKD/cleanlab disagreements each way (:func:`disagreements`), with :func:`with_percentiles`' columns
    computed over *all* rows first. On it, those two functions give the same rows as on the full table for
    any ``n`` up to this one.
    ``reproduce`` writes it as ``highlights.csv`` beside ``metrics.json``; the full table is not committed.
    """
    table = with_percentiles(samples)
    methods = quality_methods(table)
    ranked = ["bkd"] if "bkd" in methods else methods  # a batch run without BKD: each method's own top rows
    picked = [most_suspicious(table, n, method=m) for m in ranked]
    if {"bkd", "cleanlab"} <= set(methods):
        picked += list(disagreements(table, n))
    keep = sorted(set().union(*(rows.index for rows in picked)))
    result = table.loc[keep].reset_index(drop=True)
    result.attrs["highlight_rows"] = n
    return result


def read_highlights(run_dir: str | Path) -> "pd.DataFrame":
    """A batch run's ``highlights.csv`` (:func:`highlights`), checked like :func:`read_samples`.

    Raises
    ------
    FileNotFoundError
        the run folder has none (the run did not finish).
    ValueError
        the table cannot be read or lacks its key columns.
    """
    path = Path(run_dir) / HIGHLIGHTS
    if not lexists(path):
        raise FileNotFoundError(f"{run_dir} holds no {HIGHLIGHTS}: the run has not finished (or was written by an "
                                "older bkd_core); rerun the batch command to finish or rewrite it")
    table = _read_samples(path)
    table.attrs["highlight_rows"] = HIGHLIGHT_ROWS
    return table


def most_suspicious(samples: "pd.DataFrame", n: int = 12, method: str = "bkd") -> "pd.DataFrame":
    """The ``n`` rows of a run's samples table (full, or :func:`highlights`) that ``method`` ranks most
    likely mislabelled."""
    _check_rows(samples, n)
    return samples.sort_values(f"{method}_quality", kind="stable").head(n)


def disagreements(samples: "pd.DataFrame", n: int = 6) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Where BKD and cleanlab disagree most: ``(BKD suspects, cleanlab trusts)`` and the reverse.

    Each score is turned into its rank percentile (0 = most suspicious; a :func:`highlights` table
    carries them, computed over all samples); the rows with the largest gap between the two percentiles,
    ``n`` in each direction, with a ``rank_gap`` column.
    """
    _check_rows(samples, n)
    table = samples if "bkd_percentile" in samples else with_percentiles(samples)
    table = table.assign(rank_gap=table["cleanlab_percentile"] - table["bkd_percentile"])
    return (table.sort_values("rank_gap", ascending=False, kind="stable").head(n),
            table.sort_values("rank_gap", ascending=True, kind="stable").head(n))


def _check_rows(samples: "pd.DataFrame", n: int) -> None:
    kept = samples.attrs.get("highlight_rows")
    if kept is not None and n > kept:
        raise ValueError(f"a highlights table keeps the top {kept} rows of each list, not {n}: ask for n <= {kept}, "
                         "or read the run's full samples table (read_samples)")
