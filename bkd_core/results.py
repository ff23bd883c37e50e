"""Tables of a reproduction batch's outputs (``python -m bkd_core reproduce``), for the results chapter.

:func:`collect_results` reads every ``OUT/*/metrics.json`` into one row per (run, method);
:func:`summarize` gives mean and standard deviation over seeds per split and method.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .io import read_json

if TYPE_CHECKING:
    import pandas as pd

#: Columns of ``results.csv`` (one row per dataset, split, seed and method), in this order.
COLUMNS = (
    "dataset", "split", "seed", "method", "profile", "num_samples", "epochs", "true_noise_rate",
    "estimated_noise_rate", "tipping_epoch", "detection_precision", "detection_recall", "detection_f1",
    "below_threshold_precision", "below_threshold_recall", "below_threshold_f1", "flag_all_f1",
    "test_acc", "best_test_acc", "wall_time_s", "device",
)
#: Metrics averaged by :func:`summarize`.
SUMMARY_METRICS = (
    "true_noise_rate", "estimated_noise_rate", "tipping_epoch", "detection_precision", "detection_recall",
    "detection_f1", "below_threshold_f1", "flag_all_f1", "test_acc", "best_test_acc", "wall_time_s",
)
SPLIT_ORDER = ("clean", "aggre", "rand1", "rand2", "rand3", "worst", "clean100", "noisy100")
METHOD_ORDER = ("bkd", "ce", "cleanlab")


def collect_results(out: str | Path) -> "pd.DataFrame":
    """One row per (dataset, split, seed, method) of every finished run under ``out``, sorted by
    split (CIFAR-N order), seed and method; columns :data:`COLUMNS` (missing values are NaN)."""
    import pandas as pd

    rows = []
    for path in sorted(Path(out).glob("*/metrics.json")):
        run = read_json(path)
        for method, metrics in run.get("methods", {}).items():
            row = {key: metrics.get(key) for key in COLUMNS}
            row.update(dataset=run["dataset"], split=run["split"], seed=run["seed"], method=method,
                       profile=run.get("profile"))
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(table):  # CIFAR-N order of splits, then seeds, then methods; unknown splits last
        split_rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
        method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        table = table.sort_values(["split", "seed", "method"], key=lambda col: col.map(
            lambda v: (split_rank if col.name == "split" else method_rank if col.name == "method" else {}).get(v, 99))
            if col.name != "seed" else col, kind="stable").reset_index(drop=True)
    return table


def summarize(table: "pd.DataFrame") -> "pd.DataFrame":
    """Mean, standard deviation (ddof 1; NaN for one seed) and number of seeds of
    :data:`SUMMARY_METRICS` per (dataset, split, method): columns ``{metric}_mean``,
    ``{metric}_std`` and ``seeds``."""
    import pandas as pd

    if not len(table):
        return pd.DataFrame()
    numeric = table[["dataset", "split", "method", *SUMMARY_METRICS]].copy()
    for column in SUMMARY_METRICS:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(["dataset", "split", "method"], sort=False)
    means = grouped[list(SUMMARY_METRICS)].mean().add_suffix("_mean")
    stds = grouped[list(SUMMARY_METRICS)].std(ddof=1).add_suffix("_std")
    out = pd.concat([means, stds, grouped.size().rename("seeds")], axis=1).reset_index()
    return out[["dataset", "split", "method", "seeds", *[f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]]]
