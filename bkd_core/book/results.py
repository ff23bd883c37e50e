"""Tables of a reproduction batch's outputs (``python -m bkd_core reproduce``), for the results chapter.

:func:`collect_results` reads every ``OUT/*/metrics.json`` into one row per (run, method);
:func:`summarize` gives mean and standard deviation over seeds per configuration, split and method: runs of
different configurations are never averaged together, and one seed found twice (a copied run folder) is
refused. :func:`batch_problems` names what a table cannot show: runs ``summary.json`` lists as finished
that are missing, and runs whose recorded numbers or configuration were edited. Each run also has a
per-sample table (:func:`read_samples`, one row per training image, not committed) and the few rows of it
the results chapter shows (:func:`read_highlights`, committed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typing import TYPE_CHECKING, Sequence

from ..io import is_folder_name, read_json
from ..detectors import METHODS
from ..metrics import ranking_auc

if TYPE_CHECKING:
    import pandas as pd

#: Columns of ``results.csv`` (one row per dataset, split, seed and method), in this order.
COLUMNS = (
    "dataset", "split", "seed", "method", "profile", "num_samples", "epochs", "true_noise_rate",
    "estimated_noise_rate", "tipping_epoch", "tipping_rule", "detection_precision", "detection_recall", "detection_f1",
    "below_threshold_precision", "below_threshold_recall", "below_threshold_f1", "flag_all_f1", "ranking_auc",
    "test_acc", "best_test_acc", "wall_time_s", "device", "configuration", "run",
)
#: Metrics averaged by :func:`summarize`.
SUMMARY_METRICS = (
    "true_noise_rate", "estimated_noise_rate", "tipping_epoch", "tipping_from_peak", "detection_precision",
    "detection_recall", "detection_f1", "below_threshold_f1", "flag_all_f1", "ranking_auc", "test_acc", "best_test_acc",
    "wall_time_s",
)
SPLIT_ORDER = ("clean", "aggre", "rand1", "rand2", "rand3", "worst", "clean100", "noisy100")
METHOD_ORDER = tuple(METHODS)  # bkd_core.detectors: the registry's order
#: A batch run's per-sample table (``reproduce.run_one``), gzip-compressed CSV.
SAMPLES = "samples.csv.gz"
#: The rows of it the results chapter shows (:func:`highlights`): committed, unlike the full table.
HIGHLIGHTS = "highlights.csv"
#: How many rows :func:`highlights` keeps per list.
HIGHLIGHT_ROWS = 24


def ordered_splits(names) -> list[str]:
    """The distinct split ``names`` in CIFAR-N order (:data:`SPLIT_ORDER`), unknown ones after, by name."""
    present = set(names)
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def collect_results(out: str | Path) -> "pd.DataFrame":
    """One row per (dataset, split, seed, method) of every finished run under ``out``, sorted by
    split (CIFAR-N order), seed and method; columns :data:`COLUMNS` (missing values are NaN).

    Every value comes from the runs' ``metrics.json``; ``ranking_auc`` is what ``reproduce`` computed
    from the run's full samples table (:func:`ranking_aucs`), NaN on a split with no wrong label;
    ``configuration`` is :func:`configuration_of` the run and ``run`` its folder's name.
    """
    import pandas as pd

    rows = []
    for path in sorted(Path(out).glob("*/metrics.json")):
        run = _read_run(path)
        configuration = configuration_of(run, path)
        for method, metrics in run["methods"].items():
            if not isinstance(metrics, dict):
                raise ValueError(f"{path}: methods.{method} holds a {type(metrics).__name__}, not a method's metrics; "
                                 "delete the run's folder and rerun the batch to rewrite it")
            row = {key: metrics.get(key) for key in COLUMNS}
            row.update(dataset=run["dataset"], split=run["split"], seed=run["seed"], method=method,
                       profile=run.get("profile"), configuration=configuration, run=path.parent.name)
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(table):  # CIFAR-N order of splits, then seeds, then methods; unknown splits last
        split_rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
        method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        table = table.sort_values(["split", "seed", "method"], key=lambda col: col.map(
            lambda v: (split_rank if col.name == "split" else method_rank if col.name == "method" else {}).get(v, 99))
            if col.name != "seed" else col, kind="stable").reset_index(drop=True)
    return table


_RUN_KEYS = ("dataset", "split", "seed", "methods")


def _read_run(path: Path) -> dict:
    """A run's ``metrics.json`` (from ``reproduce``), checked, with errors that name the file."""
    fix = ("it is not a run written by 'python -m bkd_core reproduce': move it out of the batch folder, "
           "or delete its folder and rerun the batch")
    run = read_json(path)
    if not isinstance(run, dict):
        raise ValueError(f"{path} holds a {type(run).__name__}, not a run's metrics; {fix}")
    missing = [k for k in _RUN_KEYS if k not in run]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; {fix}")
    if not isinstance(run["methods"], dict):
        raise ValueError(f"{path}: 'methods' holds a {type(run['methods']).__name__}, not a dict of methods; {fix}")
    return run


def configuration_of(run: dict, path: str | Path = "metrics.json") -> str:
    """What a batch run (its ``metrics.json`` as read) was trained with, apart from its seed: the fingerprint
    of its recorded configuration at seed 0 (:meth:`bkd_core.config.BKDConfig.fingerprint`), with
    ``-folds{k}`` for confident learning's folds other than 3; ``""`` for a run that records no configuration.

    Raises:
        ValueError: the recorded configuration is not a valid one (names ``path``).
    """
    from ..config import BKDConfig

    config = run.get("config")
    if not isinstance(config, dict):
        return ""
    try:
        key = BKDConfig.from_dict({**config, "seed": 0}).fingerprint()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} records an invalid configuration ({exc}); restore the file, or delete the run's "
                         "folder and rerun the batch") from None
    folds = run.get("folds", 3)
    return key if folds == 3 else f"{key}-folds{folds}"


def _configuration_column(table: "pd.DataFrame") -> "pd.Series":
    """``table["configuration"]`` with "" for a missing one (a table made before runs recorded it)."""
    if "configuration" not in table:
        return table.assign(configuration="")["configuration"]
    column = table["configuration"].astype(object)
    return column.where(column.notna(), "").astype(str)


def duplicate_runs(table: "pd.DataFrame") -> list[str]:
    """One sentence per (configuration, dataset, split, seed) that more than one run folder of a
    :func:`collect_results` table holds (a copied folder): it would count one seed twice."""
    if not len(table) or "run" not in table:
        return []
    runs = table.assign(configuration=_configuration_column(table))
    found = []
    keys = ["configuration", "dataset", "split", "seed"]
    for (_, dataset, split, seed), group in runs.groupby(keys, sort=False, dropna=False):
        names = sorted(set(group["run"].astype(str)))
        if len(names) > 1:
            found.append(f"run folders {', '.join(repr(n) for n in names)} all hold {dataset} {split} seed {seed} "
                         "of one configuration, so that seed would count more than once (a copied folder?); "
                         "move all but one out of the batch folder")
    return found


def read_batch_summary(out: str | Path) -> dict:
    """``out/summary.json`` (written by ``reproduce``), checked: a dict whose ``runs`` is a list of
    ``{"name": ..., "status": ...}``; ``{"options": {}, "runs": []}`` without the file.

    Raises:
        ValueError: the file is not such a summary (names it and the fix).
    """
    path = Path(out) / "summary.json"
    if not path.is_file():
        return {"options": {}, "runs": []}
    summary = read_json(path)
    runs = summary.get("runs") if isinstance(summary, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and is_folder_name(r.get("name"))
                                             and isinstance(r.get("status"), str) for r in runs):
        raise ValueError(f"{path} is not a batch summary written by reproduce (no list of runs, each with a run "
                         "folder's name and a status); move it away: the next reproduce into this folder writes a "
                         "new one, and the runs' own folders are kept")
    if not isinstance(summary.get("options", {}), dict):
        raise ValueError(f"{path}: 'options' holds a {type(summary['options']).__name__}, not a dict; move it away: "
                         "the next reproduce into this folder writes a new one")
    return summary


#: Keys of a batch run's per-method metrics that its method's own ``metrics.json`` does not hold.
_BATCH_ONLY_KEYS = frozenset({"ranking_auc"})


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def batch_problems(out: str | Path) -> list[str]:
    """What a results table of ``out`` cannot show, one sentence each (``[]`` when there is nothing):

    - runs ``summary.json`` lists as finished (done, finished-before) whose ``metrics.json`` is missing;
    - runs whose ``metrics.json`` was edited: a recorded configuration that no longer gives the recorded
      fingerprint, or a method's number that differs from that method's own ``metrics.json`` beside it.
    """
    from ..config import BKDConfig

    out = Path(out)
    problems = []
    missing = [r["name"] for r in read_batch_summary(out)["runs"]
               if r["status"] in ("done", "finished-before") and not (out / r["name"] / "metrics.json").is_file()]
    if missing:
        problems.append(f"summary.json lists {len(missing)} finished run(s) that are missing from {out}: "
                        f"{', '.join(missing)}; the table leaves them out (restore them, or rerun the batch)")
    for path in sorted(out.glob("*/metrics.json")):
        run = _read_run(path)
        edited = []
        config, recorded = run.get("config"), run.get("fingerprint")
        if isinstance(config, dict) and recorded is not None:
            try:
                edited_config = BKDConfig.from_dict(config).fingerprint() != recorded
            except (ValueError, TypeError):
                edited_config = True
            if edited_config:
                edited.append("its configuration no longer gives its recorded fingerprint")
        for method, metrics in run["methods"].items():
            own_path = path.parent / str(method) / "metrics.json"
            if not isinstance(metrics, dict) or not own_path.is_file():
                continue
            own = read_json(own_path)
            if not isinstance(own, dict):
                continue
            edited += [f"methods.{method}.{key} is {metrics[key]!r} but {own[key]!r} in {method}/metrics.json"
                       for key in sorted(set(metrics) & set(own) - _BATCH_ONLY_KEYS, key=str)
                       if not _same(metrics[key], own[key])]
        if edited:
            problems.append(f"{path} was edited after the run wrote it ({'; '.join(edited[:3])}"
                            f"{'; ...' if len(edited) > 3 else ''}): its numbers in the table are not the run's")
    return problems


def samples_file(run_dir: str | Path) -> Path | None:
    """A batch run's per-sample table: ``samples.csv.gz`` (what ``reproduce`` writes), or ``samples.csv``
    (runs committed before it compressed them); None if there is neither."""
    for name in (SAMPLES, "samples.csv"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def read_samples(run_dir: str | Path) -> "pd.DataFrame":
    """A batch run's per-sample table (:func:`samples_file`), checked: one row per training sample with
    ``index``, ``given_label``, ``clean_label`` and each method's ``*_quality``, ``*_issue``, ``*_prediction``.

    Raises:
        FileNotFoundError: the run folder has no samples table (the run did not finish).
        ValueError: the table cannot be read or lacks its key columns (names the file and the fix).
    """
    path = samples_file(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} holds no {SAMPLES} (nor samples.csv): the run has not finished; "
                                "rerun the batch command to finish it")
    return _read_samples(path)


def _read_samples(path: Path) -> "pd.DataFrame":
    import pandas as pd

    try:
        samples = pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas' parser errors are ValueErrors
        raise ValueError(f"{path} cannot be read "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "delete the run's folder and rerun the batch to rewrite it") from exc
    missing = [c for c in ("index", "given_label", "clean_label") if c not in samples]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; "
                         "delete the run's folder and rerun the batch to rewrite it")
    return samples


def quality_methods(samples: "pd.DataFrame") -> list[str]:
    """The methods with a score column (``{method}_quality``) in a samples table, in its column order."""
    return [c[: -len("_quality")] for c in samples.columns if c.endswith("_quality")]


def ranking_aucs(samples: "pd.DataFrame") -> dict[str, float | None]:
    """Each method's :func:`~bkd_core.metrics.ranking_auc` over a run's full samples table (its
    ``{method}_quality`` against ``given_label != clean_label``); None where it is undefined (no wrong label).

    Raises:
        ValueError: a NaN or infinite score (names the column, the line and the sample index).
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

    Raises:
        FileNotFoundError: the run folder has none (the run did not finish).
        ValueError: the table cannot be read or lacks its key columns.
    """
    path = Path(run_dir) / HIGHLIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {HIGHLIGHTS}: the run has not finished (or was written by an "
                                "older bkd_core); rerun the batch command to finish or rewrite it")
    table = _read_samples(path)
    table.attrs["highlight_rows"] = HIGHLIGHT_ROWS
    return table


def summarize(table: "pd.DataFrame") -> "pd.DataFrame":
    """Mean, standard deviation (ddof 1; NaN for one seed) and number of seeds of
    :data:`SUMMARY_METRICS` per (configuration, dataset, split, method): columns ``configuration``,
    ``dataset``, ``split``, ``method``, ``seeds``, ``{metric}_mean`` and ``{metric}_std``. Runs of
    different configurations (:func:`configuration_of`) are never averaged together.

    Raises:
        ValueError: two run folders hold the same seed of one split and configuration (:func:`duplicate_runs`).
    """
    import pandas as pd

    if not len(table):
        return pd.DataFrame()
    duplicates = duplicate_runs(table)
    if duplicates:
        raise ValueError(" ".join(duplicates))
    keys = ["configuration", "dataset", "split", "method"]
    numeric = table.assign(tipping_from_peak=table["tipping_rule"].map({"peak": 1.0, "fallback": 0.0}),
                           configuration=_configuration_column(table))
    numeric = numeric[[*keys, *SUMMARY_METRICS]]
    for column in SUMMARY_METRICS:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(keys, sort=False)
    means = grouped[list(SUMMARY_METRICS)].mean().add_suffix("_mean")
    stds = grouped[list(SUMMARY_METRICS)].std(ddof=1).add_suffix("_std")
    out = pd.concat([means, stds, grouped.size().rename("seeds")], axis=1).reset_index()
    return out[[*keys, "seeds", *[f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]]]


def configurations(summary: "pd.DataFrame") -> list[str]:
    """The distinct configurations of a :func:`summarize` table (or a :func:`collect_results` one), in order."""
    return list(dict.fromkeys(_configuration_column(summary))) if len(summary) else []


def _one_configuration(summary: "pd.DataFrame") -> None:
    found = configurations(summary)
    if len(found) > 1:
        raise ValueError(f"this summary holds runs of {len(found)} configurations ({', '.join(found)}), which are "
                         "never averaged or shown as one: pick one, summary[summary['configuration'] == ...], "
                         "or keep each configuration's runs in a batch folder of its own")


def mean_of(summary: "pd.DataFrame", split: str, method: str, metric: str) -> float:
    """The mean over seeds of ``metric`` for ``method`` on ``split`` in :func:`summarize`'s table; NaN when the
    batch has no such run (a method it did not train, a split it did not run).

    Raises:
        ValueError: the table holds runs of more than one configuration.
    """
    if not len(summary):
        return float("nan")
    _one_configuration(summary)
    row = summary[(summary["split"] == split) & (summary["method"] == method)]
    return float(row[f"{metric}_mean"].iloc[0]) if len(row) else float("nan")


def estimate_errors(table: "pd.DataFrame") -> "pd.DataFrame":
    """BKD's noise-estimate error of each run of :func:`collect_results`' ``table`` that has an estimate and a
    test accuracy: columns ``run``, ``split``, ``seed``, ``test_acc`` (%) and ``error``, ``|estimated - true
    noise rate|`` in points."""
    import pandas as pd

    if not len(table):
        return pd.DataFrame(columns=["run", "split", "seed", "test_acc", "error"])
    bkd = table[(table["method"] == "bkd") & table["estimated_noise_rate"].notna() & table["test_acc"].notna()]
    error = 100 * (bkd["estimated_noise_rate"].astype(float) - bkd["true_noise_rate"].astype(float)).abs()
    return bkd.reindex(columns=["run", "split", "seed"]).assign(test_acc=bkd["test_acc"].astype(float),
                                                               error=error).reset_index(drop=True)


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    """``"41.0 ± 1.2"`` (``"41.0"`` when ``std`` is NaN, i.e. one seed; ``"–"`` when ``mean`` is NaN)."""
    import math

    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None or math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


#: Rows of :func:`split_table`: (label, method, metric, scale, digits).
SPLIT_TABLE_ROWS = (
    ("seeds", "bkd", "seeds", None, 0),
    ("true noise rate (%)", "bkd", "true_noise_rate", 100, 1),
    ("BKD estimated noise rate (%)", "bkd", "estimated_noise_rate", 100, 1),
    ("cleanlab estimated noise rate (%)", "cleanlab", "estimated_noise_rate", 100, 1),
    ("kNN estimated noise rate (%)", "knn", "estimated_noise_rate", 100, 1),
    ("BKD tipping epoch (from 1)", "bkd", "tipping_epoch", 1, 1),
    ("BKD tipping point from the peak rule (runs)", "bkd", "tipping_from_peak", None, 0),
    ("BKD precision, G4 (%)", "bkd", "detection_precision", 100, 1),
    ("BKD recall, G4 (%)", "bkd", "detection_recall", 100, 1),
    ("BKD F1, G4 (%)", "bkd", "detection_f1", 100, 1),
    ("BKD F1, below threshold (%)", "bkd", "below_threshold_f1", 100, 1),
    ("cleanlab F1 (%)", "cleanlab", "detection_f1", 100, 1),
    ("kNN label voting F1 (%)", "knn", "detection_f1", 100, 1),
    ("CE F1, prediction differs (%)", "ce", "detection_f1", 100, 1),
    ("flag everything F1 (%)", "bkd", "flag_all_f1", 100, 1),
    ("BKD ranking ROC-AUC", "bkd", "ranking_auc", 1, 3),
    ("cleanlab ranking ROC-AUC", "cleanlab", "ranking_auc", 1, 3),
    ("CE ranking ROC-AUC", "ce", "ranking_auc", 1, 3),
    ("kNN ranking ROC-AUC", "knn", "ranking_auc", 1, 3),
    ("BKD test accuracy, last epoch (%)", "bkd", "test_acc", 1, 1),
    ("CE test accuracy, last epoch (%)", "ce", "test_acc", 1, 1),
    ("BKD test accuracy, best epoch (%, optimistic)", "bkd", "best_test_acc", 1, 1),
    ("CE test accuracy, best epoch (%, optimistic)", "ce", "best_test_acc", 1, 1),
    ("BKD training time (min)", "bkd", "wall_time_s", 1 / 60, 1),
    ("CE training time (min)", "ce", "wall_time_s", 1 / 60, 1),
    ("cleanlab training time (min)", "cleanlab", "wall_time_s", 1 / 60, 1),
    ("kNN time (min)", "knn", "wall_time_s", 1 / 60, 1),
)


#: Metrics undefined without wrong labels (no positives to find).
DETECTION_PREFIXES = ("detection_", "below_threshold_", "flag_all_", "ranking_")


def table_rows(labels: Sequence[str]) -> tuple[tuple, ...]:
    """The rows of :data:`SPLIT_TABLE_ROWS` with these labels, in this order (another table's rows)."""
    by_label = {row[0]: row for row in SPLIT_TABLE_ROWS}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise ValueError(f"no row labelled {unknown[0]!r} in SPLIT_TABLE_ROWS")
    return tuple(by_label[label] for label in labels)


def summary_cell(summary: "pd.DataFrame", split: str, method: str, metric: str, scale: float | None,
                 digits: int) -> str:
    """One cell of a :func:`summarize` table as text: ``"mean ± std"`` of ``metric`` (times ``scale``) for
    ``method`` on ``split``; tipping epochs counted from 1; ``tipping_from_peak`` as ``"k of n"`` runs;
    ``seeds`` as a count; "–" when the batch has no such run."""
    import pandas as pd

    match = summary[(summary["split"] == split) & (summary["method"] == method)]
    if match.empty:
        return "–"
    if metric == "seeds":
        return str(int(match["seeds"].iloc[0]))
    if metric == "tipping_from_peak":  # "2 of 3": the other runs fell back to config.tipping_fallback
        mean, seeds = match["tipping_from_peak_mean"].iloc[0], int(match["seeds"].iloc[0])
        return "–" if pd.isna(mean) else f"{round(mean * seeds)} of {seeds}"
    mean, std = match[f"{metric}_mean"].iloc[0], match[f"{metric}_std"].iloc[0]
    if metric == "tipping_epoch":
        mean = mean + 1  # the book counts epochs from 1
    return mean_std(mean, std, scale, digits)


def split_table(summary: "pd.DataFrame") -> "pd.DataFrame":
    """The results chapter's table: one column per split, rows :data:`SPLIT_TABLE_ROWS` as
    ``"mean ± std"`` strings over seeds (tipping epochs counted from 1; how many runs' tipping point
    came from the official peak rule rather than the fallback, as ``"k of n"``). On a split without wrong
    labels (``clean``) precision, recall and F1 are undefined: ``"n/a"``. The rows of a feature-only
    method (kNN) are left out of a batch that has none of its runs; another method's missing runs show "–".

    Raises:
        ValueError: the summary holds runs of more than one configuration (one table each: :func:`markdown_results`).
    """
    import pandas as pd

    _one_configuration(summary)
    present = set(summary["method"]) | {name for name, m in METHODS.items() if not m.needs_features}
    columns = {}
    for split in ordered_splits(summary["split"]):
        rows = {}
        noise = summary.loc[summary["split"] == split, "true_noise_rate_mean"]
        no_wrong_labels = bool(len(noise)) and float(noise.max()) == 0.0
        for label, method, metric, scale, digits in (row for row in SPLIT_TABLE_ROWS if row[1] in present):
            has_run = ((summary["split"] == split) & (summary["method"] == method)).any()
            undefined = has_run and no_wrong_labels and metric.startswith(DETECTION_PREFIXES)
            rows[label] = "n/a" if undefined else summary_cell(summary, split, method, metric, scale, digits)
        columns[split] = rows
    return pd.DataFrame(columns)


def markdown_table(frame: "pd.DataFrame", index_label: str = "") -> str:
    """``frame`` (cells already formatted, e.g. :func:`split_table`) as a GitHub-flavoured Markdown
    table, the index as its first column headed ``index_label``. Every cell is escaped (:func:`markdown_cell`)."""
    header = [markdown_cell(index_label), *map(markdown_cell, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([markdown_cell(label), *map(markdown_cell, row.tolist())]) + " |")
    return "\n".join(lines)


def markdown_cell(value: object) -> str:
    """``str(value)`` safe in a Markdown table cell: HTML markup escaped (``<`` as ``&lt;``), ``|`` as
    ``\\|`` and line breaks as spaces, so a name cannot add a column, a row or markup."""
    import html

    text = html.escape(" ".join(str(value).splitlines()), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_results(table: "pd.DataFrame") -> str:
    """The ``results`` command's output for a :func:`collect_results` table: :func:`split_table` as Markdown
    (:func:`markdown_table`), one table per configuration, each headed by its configuration and profile when
    the batch holds more than one.

    Raises:
        ValueError: one seed is held twice (:func:`duplicate_runs`).
    """
    summary = summarize(table)
    found = configurations(summary)
    parts = []
    for configuration in found:
        rows = table[_configuration_column(table) == configuration]
        if len(found) > 1:
            profiles = ", ".join(sorted({str(p) for p in rows["profile"].dropna()})) or "unrecorded"
            parts.append(f"configuration {configuration or 'unrecorded'} (profile {profiles}; runs "
                         f"{', '.join(sorted(set(rows['run'].astype(str))))}):\n")
        one = summary[_configuration_column(summary) == configuration]
        parts.append(markdown_table(split_table(one), "mean ± std over seeds") + "\n")
    return "\n".join(parts).rstrip("\n")


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


def run_times(out: str | Path) -> "pd.DataFrame":
    """One row per run of the batch (``summary.json``): status and each method's training time (min)
    and device, from the run's ``metrics.json`` when it finished."""
    import pandas as pd

    out = Path(out)
    summary = read_batch_summary(out)
    rows = []
    for run in summary["runs"]:
        row = {"run": run["name"], "status": run["status"], "reason": run.get("reason", "")}
        path = out / run["name"] / "metrics.json"
        if path.is_file():
            methods = _read_run(path)["methods"]
            for method, metrics in methods.items():
                row[f"{method} (min)"] = metrics.get("wall_time_s", float("nan")) / 60
            row["device"] = next(iter(methods.values())).get("device", "")
        rows.append(row)
    return pd.DataFrame(rows)


#: What :func:`code_versions` says of a run, by how its recorded code hash compares with this code's.
CODE_CURRENT, CODE_OTHER, CODE_UNKNOWN = "current code", "other code", "code version not recorded"
#: ... and of a run made by other code that the current code, rerun, reproduced exactly (:data:`CODE_CHECKS`).
CODE_REPRODUCED = "other code, reproduced exactly by the current code"
#: A batch's record of reruns of its runs by later code (``python -m bkd_core check``,
#: :func:`bkd_core.book.reproduce.check_run`).
CODE_CHECKS = "code_checks.json"


def read_code_checks(out: str | Path) -> list[dict]:
    """The reruns recorded in ``out/code_checks.json`` (:func:`bkd_core.book.reproduce.check_run`), oldest first;
    ``[]`` without the file."""
    path = Path(out) / CODE_CHECKS
    if not path.is_file():
        return []
    stored = read_json(path)
    checks = stored.get("checks") if isinstance(stored, dict) else None
    if not isinstance(checks, list) or not all(isinstance(c, dict) and {"run", "code_hash", "identical"} <= set(c)
                                               for c in checks):
        raise ValueError(f"{path} is not a record of checks written by 'python -m bkd_core check' (a list of "
                         "checks, each with run, code_hash and identical); move it away and rerun the checks")
    return checks


def _identical_codes(checks: list[dict], run: str, recorded: str) -> set[str]:
    """Code hashes that computed ``run`` as code ``recorded`` did: reachable from it through identical checks."""
    reached, frontier = {recorded}, [recorded]
    while frontier:
        source = frontier.pop()
        for c in checks:
            if c["run"] == run and c["identical"] and c.get("recorded_code_hash") == source \
                    and c["code_hash"] not in reached:
                reached.add(c["code_hash"])
                frontier.append(c["code_hash"])
    return reached


def code_versions(out: str | Path, current: str | None = None) -> "pd.DataFrame":
    """Which code produced each finished run under ``out``: one row per run with its recorded
    ``code_hash`` (:func:`bkd_core.provenance.code_hash`, written by ``reproduce`` into the run's
    ``metrics.json``) and ``code``: :data:`CODE_CURRENT` (same hash as ``current``, by default this
    package's), :data:`CODE_REPRODUCED` (other code, but rerunning it with the current code gave identical
    results: :data:`CODE_CHECKS`; identical checks of the run chain, e.g. code A reproduced the run and code
    B reproduced A's rerun side by side on another machine), :data:`CODE_OTHER` (the training code changed
    since: the run's numbers may be stale) or :data:`CODE_UNKNOWN` (runs made before the hash was recorded;
    whether their code matches this one cannot be told)."""
    import pandas as pd

    from ..provenance import code_hash

    current = current or code_hash()
    checks = read_code_checks(out)
    rows = []
    for path in sorted(Path(out).glob("*/metrics.json")):
        recorded = read_json(path).get("code_hash")
        name = path.parent.name
        status = (CODE_UNKNOWN if not recorded else CODE_CURRENT if recorded == current
                  else CODE_REPRODUCED if current in _identical_codes(checks, name, recorded) else CODE_OTHER)
        chained = status == CODE_REPRODUCED and not any(
            c["run"] == name and c["identical"] and (c.get("recorded_code_hash"), c["code_hash"]) == (recorded, current)
            for c in checks)
        rows.append({"run": name, "code_hash": recorded, "code": status, "chained": chained})
    return pd.DataFrame(rows, columns=["run", "code_hash", "code", "chained"])


def code_version_text(versions: "pd.DataFrame", current: str | None = None) -> str:
    """One sentence (plain text, for ``{glue:text}``) on :func:`code_versions`: how many runs were produced by
    this code, by other code (and which of those the current code reproduced exactly), or by code whose
    version was not recorded."""
    import pandas as pd

    from ..provenance import code_hash

    current = current or code_hash()
    n = len(versions)
    counts = {s: int((versions["code"] == s).sum()) for s in (CODE_CURRENT, CODE_REPRODUCED, CODE_OTHER, CODE_UNKNOWN)}
    if not n:
        return "No finished run to check."
    parts = []
    if counts[CODE_CURRENT]:
        parts.append(f"{counts[CODE_CURRENT]} of {n} runs were produced by the current training code ({current})")
    older = versions[versions["code"].isin([CODE_OTHER, CODE_REPRODUCED])]
    if len(older):
        hashes = ", ".join(sorted(set(older["code_hash"])))
        text = f"{len(older)} of {n} by other code ({hashes}; the training code changed since, now {current})"
        if counts[CODE_REPRODUCED]:
            if counts[CODE_REPRODUCED] == len(older):
                which = f"all {len(older)} of them"
            else:
                names = ", ".join(versions.loc[versions["code"] == CODE_REPRODUCED, "run"])
                which = f"{counts[CODE_REPRODUCED]} of them ({names})"
            text += (f", and rerun with the current code, {which} came out identical, bit for bit: every "
                     "metric, the ranking AUCs and the highlighted images' scores")
            chained = int(versions.get("chained", pd.Series(False, index=versions.index)).fillna(False).sum())
            if chained:
                text += (f" ({chained} of them through a chain of such checks: older code reproduced the run on "
                         "the machine that made it, and the current code reproduced the older code's rerun side "
                         "by side on another machine, whose floats differ from the first's in the last digits)")
        if counts[CODE_OTHER]:
            if counts[CODE_REPRODUCED]:
                names = ", ".join(versions.loc[versions["code"] == CODE_OTHER, "run"])
                text += (f"; the other {counts[CODE_OTHER]} ({names}) were not reproduced by the current code (not "
                         "rerun, or the rerun differed or did not finish): their numbers may be stale")
            else:
                names = ", ".join(versions.loc[versions["code"] == CODE_OTHER, "run"])
                text += f"; their numbers may be stale: {names}"
        parts.append(text)
    if counts[CODE_UNKNOWN]:
        parts.append(f"{counts[CODE_UNKNOWN]} of {n} were made before runs recorded their code version "
                     f"(code version not recorded: they may or may not match the current code, {current})")
    return "Code version: " + "; ".join(parts) + "."
