"""Tables of a reproduction batch's outputs (``python -m bkd_core reproduce``), for the results chapter.

Every file is read through :class:`bkd_core.batch.BatchFolder`. :func:`collect_results` gives one row per
(run, method) of the batch's finished runs;
:func:`summarize` gives mean and standard deviation over seeds per configuration, split and method: runs of
different configurations are never averaged together, and one seed found twice (a copied run folder) is
refused. :func:`batch_problems` names what a table cannot show: runs the batch's summary lists as finished
that are missing, and runs whose recorded numbers or configuration were edited. Each run also has a
per-sample table (:func:`read_samples`, one row per training image, not committed) and the few rows of it
the results chapter shows (:func:`read_highlights`, committed).
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING, Mapping, Sequence

from ..batch.check import IDENTICAL, REPLAYED, TOLERANCES, WITHIN_TOLERANCE, replay_of, run_verdicts, verdict_of
from ..batch.folder import SPLIT_ORDER, BatchFolder
# a run's per-sample tables and what the results chapter asks of them, as results.* for the chapters
from ..batch.folder import (COLUMNS, METHOD_ORDER, PHASE_2_COLUMNS, STOPPED_AT_DETECTION,  # noqa: F401
                            configuration_of)
from ..batch.samples import (HIGHLIGHT_ROWS, HIGHLIGHTS, SAMPLES, disagreements, highlights,  # noqa: F401
                             most_suspicious, quality_methods, ranking_aucs, read_highlights, read_samples,
                             samples_file, with_percentiles)
from ..detectors import METHODS

if TYPE_CHECKING:
    import pandas as pd

#: Metrics averaged by :func:`summarize`.
SUMMARY_METRICS = (
    "true_noise_rate", "estimated_noise_rate", "tipping_epoch", "tipping_from_peak", "detection_precision",
    "detection_recall", "detection_f1", "below_threshold_f1", "flag_all_f1", "ranking_auc", "test_acc", "best_test_acc",
    "wall_time_s",
)
def ordered_splits(names) -> list[str]:
    """The distinct split ``names`` in CIFAR-N order (:data:`SPLIT_ORDER`), unknown ones after, by name."""
    present = set(names)
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def collect_results(out: str | Path) -> "pd.DataFrame":
    """One row per (dataset, split, seed, method) of every finished run under ``out``, sorted by
    split (CIFAR-N order), seed and method; columns :data:`~bkd_core.batch.folder.COLUMNS` (missing values are
    NaN): :meth:`bkd_core.batch.BatchFolder.results_table`.

    Every value comes from the runs' recorded metrics; ``ranking_auc`` is what ``reproduce`` computed
    from the run's full samples table (:func:`ranking_aucs`), NaN on a split with no wrong label;
    ``configuration`` is :func:`configuration_of` the run and ``run`` its folder's name.
    """
    return BatchFolder(out).results_table()


def collect_stages(out: str | Path) -> "pd.DataFrame":
    """:func:`collect_results`, plus one row per method that has finished in a run that has not (yet): a batch
    trains a run's methods one after the other and writes the run's ``metrics.json`` after the last, so a partial
    run shows its finished methods here (:meth:`bkd_core.batch.BatchFolder.results_table` with ``stages=True``,
    each read by :meth:`~bkd_core.batch.BatchFolder.finished_stages`).

    Such a row has the columns of :func:`collect_results` except ``ranking_auc`` (NaN: the batch computes it from
    the finished run's samples table); its ``configuration`` is the one a finished run of the same configuration
    gets, so the two are summarised together. A method stopped by its deadline (it goes on when the batch is run
    again) is left out.

    Raises
    ------
    bkd_core.errors.DamagedFileError
        a method's ``metrics.json`` or ``config.json`` is there but is not what it should be (names it).
    """
    return BatchFolder(out).results_table(stages=True)


#: How the book names each method in a sentence.
METHOD_NAMES = {"bkd": "BKD", "ce": "cross-entropy", "cleanlab": "confident learning", "knn": "kNN voting"}


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def stages_text(table: "pd.DataFrame", *, splits: Sequence[str], methods: Sequence[str] = ("bkd", "ce", "cleanlab"),
                plan: Mapping[str, Sequence[str]] | None = None, batch: str = "this batch") -> str:
    """What a partial batch holds and what it does not yet, as a sentence (plain text): e.g. "In the cnn batch so
    far: BKD on aggre and worst. Not here yet: BKD on clean, rand1, rand2 and rand3; cross-entropy and confident
    learning on every split."

    Parameters
    ----------
    table : pd.DataFrame
        the batch's :func:`collect_stages`.
    splits, methods : Sequence[str]
        the splits and methods of the full batch, in the order said.
    plan : Mapping[str, Sequence[str]] | None
        the splits each method is planned on, where a method runs on fewer than ``splits`` (e.g. the `cnn`
        batch's cross-entropy on clean, aggre and worst only: :data:`bkd_core.book.cnn.BATCH_PLAN`); a split
        outside its method's plan is never said to be missing. None: every method on every split.
    batch : str
        how the sentence names the batch.
    """
    have = {m: [s for s in splits if ((table["method"] == m) & (table["split"] == s)).any()] if len(table) else []
            for m in methods}
    here = [f"{METHOD_NAMES.get(m, m)} on {_listed(have[m])}" for m in methods if have[m]]
    missing: dict[str, list[str]] = {}  # "on every split" or the splits -> the methods not there
    for m in methods:
        planned = [s for s in splits if plan is None or s in plan.get(m, splits)]
        lacking = [s for s in planned if s not in have[m]]
        if lacking:
            where = "every split" if len(lacking) == len(splits) else _listed(lacking)
            missing.setdefault(where, []).append(METHOD_NAMES.get(m, m))
    text = f"In {batch} so far: {'; '.join(here)}." if here else f"Nothing of {batch} is here yet."
    if missing and here:
        text += " Not here yet: " + "; ".join(f"{_listed(ms)} on {where}" for where, ms in missing.items()) + "."
    elif not missing:
        text = f"In {batch}: every method on every split."
    return text


def peak_fall(curves: dict, tipping: int | None) -> float:
    """How far the student's mean max probability falls after the tipping epoch, before phase 2 starts: its value at
    ``tipping`` (0-based) minus the lowest of the later phase-1 epochs (NaN without a tipping epoch or such an epoch).

    ``curves``: a run's per-epoch curves (:meth:`bkd_core.batch.BatchFolder.method_curves` of its ``bkd``), with
    ``mean_max_student`` and ``phase`` (1 or 2 per epoch; without it every epoch counts as phase 1). A fall near 0
    says the rule fired on a plateau; the paper's tipping point is where the curve turns down.
    """
    import math

    import numpy as np

    if tipping is None or not isinstance(curves, dict) or "mean_max_student" not in curves:
        return math.nan
    student = np.array([math.nan if v is None else float(v) for v in curves["mean_max_student"]], dtype=np.float64)
    phase = curves.get("phase")
    phase = [1.0] * len(student) if phase is None or len(phase) == 0 else phase
    after = [student[e] for e in range(int(tipping) + 1, len(student)) if phase[e] == 1]
    after = [v for v in after if math.isfinite(v)]
    if not after or not 0 <= int(tipping) < len(student) or not math.isfinite(student[int(tipping)]):
        return math.nan
    return float(student[int(tipping)] - min(after))


def peak_falls(out: str | Path, table: "pd.DataFrame") -> dict[str, float]:
    """How far the student's curve falls after the tipping point, per split: :func:`peak_fall` of each BKD run of
    ``table`` that has a tipping epoch, on its curves in the batch ``out``
    (:meth:`bkd_core.batch.BatchFolder.method_curves`).

    Parameters
    ----------
    out : str or Path
        The batch folder ``table`` was read from.
    table : pd.DataFrame
        Its :func:`collect_stages` (or :func:`collect_results`).

    Returns
    -------
    dict of str to float
        split -> the largest fall over its runs (NaN for a run without curves); the splits in the table's order,
        only those with a BKD run that found a tipping point (``{}`` for an empty table).
    """
    import math

    import pandas as pd

    if not len(table):
        return {}
    folder = BatchFolder(out)
    falls: dict[str, float] = {}
    for row in table[(table["method"] == "bkd") & table["tipping_epoch"].notna()].itertuples():
        fall = peak_fall(folder.method_curves(row.run, "bkd"), int(row.tipping_epoch))
        before = falls.get(row.split, math.nan)
        falls[row.split] = fall if pd.isna(before) or (math.isfinite(fall) and fall > before) else before
    return falls


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
    """The batch's summary (:meth:`bkd_core.batch.BatchFolder.summary`): its options and each run's outcome."""
    return BatchFolder(out).summary()


def batch_problems(out: str | Path) -> list[str]:
    """What a results table of ``out`` cannot show, one sentence each (:meth:`bkd_core.batch.BatchFolder.problems`):
    finished runs that are missing, and runs whose recorded numbers or configuration were edited."""
    return BatchFolder(out).problems()


def summarize(table: "pd.DataFrame") -> "pd.DataFrame":
    """Mean, standard deviation (ddof 1; NaN for one seed) and number of seeds of
    :data:`SUMMARY_METRICS` per (configuration, dataset, split, method): columns ``configuration``,
    ``dataset``, ``split``, ``method``, ``seeds``, ``stopped_at_detection`` (how many of those runs stopped right
    after their detection: their :data:`PHASE_2_COLUMNS` are missing in the table, so the test accuracies' means and
    standard deviations are over the other runs alone, NaN when there is none), ``{metric}_mean`` and
    ``{metric}_std``. Runs of different configurations (:func:`configuration_of`) are never averaged together.

    Raises
    ------
    ValueError
        two run folders hold the same seed of one split and configuration (:func:`duplicate_runs`).
    """
    import pandas as pd

    if not len(table):
        return pd.DataFrame()
    duplicates = duplicate_runs(table)
    if duplicates:
        raise ValueError(" ".join(duplicates))
    keys = ["configuration", "dataset", "split", "method"]
    stopped = table["stopped_by"] if "stopped_by" in table else pd.Series(None, index=table.index, dtype=object)
    numeric = table.assign(tipping_from_peak=table["tipping_rule"].map({"peak": 1.0, "fallback": 0.0}),
                           configuration=_configuration_column(table),
                           stopped_at_detection=(stopped == STOPPED_AT_DETECTION).astype(int))
    numeric = numeric[[*keys, "stopped_at_detection", *SUMMARY_METRICS]]
    for column in SUMMARY_METRICS:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(keys, sort=False)
    means = grouped[list(SUMMARY_METRICS)].mean().add_suffix("_mean")
    stds = grouped[list(SUMMARY_METRICS)].std(ddof=1).add_suffix("_std")
    out = pd.concat([means, stds, grouped.size().rename("seeds"), grouped["stopped_at_detection"].sum()],
                    axis=1).reset_index()
    return out[[*keys, "seeds", "stopped_at_detection", *[f"{m}_{s}" for m in SUMMARY_METRICS
                                                          for s in ("mean", "std")]]]


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

    Raises
    ------
    ValueError
        the table holds runs of more than one configuration.
    """
    if not len(summary):
        return float("nan")
    _one_configuration(summary)
    row = summary[(summary["split"] == split) & (summary["method"] == method)]
    return float(row[f"{metric}_mean"].iloc[0]) if len(row) else float("nan")


def estimate_errors(table: "pd.DataFrame") -> "pd.DataFrame":
    """BKD's noise-estimate error of each run of :func:`collect_results`' ``table`` that has an estimate and a
    last-epoch test accuracy (a run that stopped at its detection has none: it is left out, :func:`stopped_text`
    says so): columns ``run``, ``split``, ``seed``, ``test_acc`` (%), ``error``, ``|estimated - true
    noise rate|`` in points, and ``signed_error``, ``estimated - true`` in points (above 0: too high)."""
    import pandas as pd

    if not len(table):
        return pd.DataFrame(columns=["run", "split", "seed", "test_acc", "error", "signed_error"])
    bkd = table[(table["method"] == "bkd") & table["estimated_noise_rate"].notna() & table["test_acc"].notna()]
    signed = 100 * (bkd["estimated_noise_rate"].astype(float) - bkd["true_noise_rate"].astype(float))
    return bkd.reindex(columns=["run", "split", "seed"]).assign(test_acc=bkd["test_acc"].astype(float),
                                                               error=signed.abs(),
                                                               signed_error=signed).reset_index(drop=True)


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


#: What a table says in place of a test accuracy of runs that stopped right after their detection.
STOPPED_NOTE = "stopped at detection"


def stopped_text(table: "pd.DataFrame") -> str:
    """Which runs of a :func:`collect_results` (or :func:`collect_stages`) table stopped right after their
    detection, and what that means for their numbers, as one plain sentence; ``""`` when none did."""
    if not len(table) or "stopped_by" not in table:
        return ""
    stopped = table[table["stopped_by"] == STOPPED_AT_DETECTION]
    if not len(stopped):
        return ""
    runs = [f"{METHOD_NAMES.get(m, m)} on {s} (seed {seed})" for s, seed, m in
            stopped[["split", "seed", "method"]].itertuples(index=False)]
    one = len(runs) == 1
    return (f"{STOPPED_NOTE.capitalize()}: {_listed(runs)} ended right after {'its' if one else 'their'} detection "
            f"(stop_after_detection), so {'its' if one else 'their'} detection numbers (F1, ROC-AUC, estimate, "
            f"tipping epoch) are those of a full run, and {'it has' if one else 'they have'} no final test accuracy: "
            "phase 2 never ran.")


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
    ``seeds`` as a count; "–" when the batch has no such run; a test accuracy (:data:`PHASE_2_COLUMNS`) of runs
    that stopped at their detection as :data:`STOPPED_NOTE` (``"72.0 (1 of 3 stopped at detection)"`` when only
    some did: the mean is over the others)."""
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
    stopped = int(match["stopped_at_detection"].iloc[0]) if "stopped_at_detection" in match else 0
    if metric in PHASE_2_COLUMNS and stopped:  # phase 2 never ran: no final test accuracy, said, not a dash
        seeds = int(match["seeds"].iloc[0])
        if stopped == seeds:
            return STOPPED_NOTE
        return f"{mean_std(mean, std, scale, digits)} ({stopped} of {seeds} {STOPPED_NOTE})"
    return mean_std(mean, std, scale, digits)


def split_table(summary: "pd.DataFrame") -> "pd.DataFrame":
    """The results chapter's table: one column per split, rows :data:`SPLIT_TABLE_ROWS` as
    ``"mean ± std"`` strings over seeds (tipping epochs counted from 1; how many runs' tipping point
    came from the official peak rule rather than the fallback, as ``"k of n"``). On a split without wrong
    labels (``clean``) precision, recall and F1 are undefined: ``"n/a"``. The rows of a feature-only
    method (kNN) are left out of a batch that has none of its runs; another method's missing runs show "–".

    Raises
    ------
    ValueError
        the summary holds runs of more than one configuration (one table each: :func:`markdown_results`).
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
    the batch holds more than one, and :func:`stopped_text` under them when a run stopped at its detection.

    Raises
    ------
    ValueError
        one seed is held twice (:func:`duplicate_runs`).
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
    note = stopped_text(table)
    if note:
        parts.append(note + "\n")
    return "\n".join(parts).rstrip("\n")


def run_times(out: str | Path) -> "pd.DataFrame":
    """One row per run of the batch (its summary): status and each method's training time (min) and device,
    from the run's recorded metrics when it finished."""
    import pandas as pd

    folder = BatchFolder(out)
    rows = []
    for run in folder.summary()["runs"]:
        row = {"run": run["name"], "status": run["status"], "reason": run.get("reason", "")}
        if folder.has_run(run["name"]):
            methods = folder.run(run["name"])["methods"]
            for method, metrics in methods.items():
                row[f"{method} (min)"] = metrics.get("wall_time_s", float("nan")) / 60
            row["device"] = next(iter(methods.values()), {}).get("device", "")
        rows.append(row)
    return pd.DataFrame(rows)


#: What :func:`code_versions` says of a run, by how its recorded code hash compares with this code's.
CODE_CURRENT, CODE_OTHER, CODE_UNKNOWN = "current code", "other code", "code version not recorded"
#: ... and of a run made by other code that the current code, rerun, reproduced exactly (the batch's code checks).
CODE_REPRODUCED = "other code, reproduced exactly by the current code"
#: ... and of one that the current code, rerun on another kind of CPU, reproduced within the stated tolerances.
CODE_TOLERANCE = "other code, reproduced within tolerance by the current code"
#: ... and of one whose first epochs the current code replayed bit for bit (weaker: not the whole run).
CODE_REPLAYED = "other code, first epochs replayed identically by the current code"
#: Method names as the code-version sentence says them.
_METHOD_WORDS = {"bkd": "BKD", "ce": "cross-entropy"}


def read_code_checks(out: str | Path) -> list[dict]:
    """The reruns recorded in the batch's code checks (:meth:`bkd_core.batch.BatchFolder.code_checks`), oldest
    first; ``[]`` when there are none."""
    return BatchFolder(out).code_checks()


def code_versions(out: str | Path, current: str | None = None) -> "pd.DataFrame":
    """Which code produced each finished run under ``out``: one row per run with its recorded
    ``code_hash`` (:func:`bkd_core.provenance.code_hash`, recorded by ``reproduce`` with the run's
    metrics), ``code`` and ``verdict`` (:func:`bkd_core.batch.check.run_verdicts`). ``code`` is
    :data:`CODE_CURRENT` (same hash as ``current``, by default this package's), :data:`CODE_REPRODUCED` (other
    code, but rerunning it with the current code gave identical results; identical checks of the run chain,
    e.g. code A reproduced the run and code B reproduced A's rerun side by side on another machine),
    :data:`CODE_TOLERANCE` (other code, reproduced by the current code on another kind of CPU within
    :data:`bkd_core.batch.check.TOLERANCES`), :data:`CODE_REPLAYED` (other code, and the current code replayed
    the run's first epochs bit for bit on the CPU model that made it, :func:`bkd_core.batch.check.replay_of`:
    those epochs only, the run's numbers still come from the other code), :data:`CODE_OTHER` (the training code
    changed since: the run's numbers may be stale) or :data:`CODE_UNKNOWN` (runs made before the hash was
    recorded; whether their code matches this one cannot be told). A replayed run's ``replayed_epochs``,
    ``replayed_methods`` (e.g. ``"bkd ce"``) and ``replayed_cpu`` say what was replayed where (None
    otherwise)."""
    import pandas as pd

    from ..provenance import code_hash

    current = current or code_hash()
    folder = BatchFolder(out)
    checks = folder.code_checks()
    verdicts = run_verdicts(out, current)
    rows = []
    for name, run in folder.runs():
        recorded = run.get("code_hash")
        verdict = verdicts.get(name, "")
        status = (CODE_UNKNOWN if not recorded else CODE_CURRENT if recorded == current
                  else CODE_REPRODUCED if verdict == IDENTICAL else CODE_TOLERANCE if verdict == WITHIN_TOLERANCE
                  else CODE_REPLAYED if verdict == REPLAYED else CODE_OTHER)
        chained = status == CODE_REPRODUCED and not any(
            c["run"] == name and verdict_of(c) == IDENTICAL
            and (c.get("recorded_code_hash"), c["code_hash"]) == (recorded, current) for c in checks)
        replay = replay_of(checks, name, recorded, current) if status == CODE_REPLAYED else None
        rows.append({"run": name, "code_hash": recorded, "code": status, "chained": chained, "verdict": verdict,
                     "replayed_epochs": None if replay is None else replay.get("replayed_epochs"),
                     "replayed_methods": None if replay is None else " ".join(map(str, replay.get("methods") or [])),
                     "replayed_cpu": None if replay is None else replay.get("cpu")})
    versions = pd.DataFrame(rows, columns=["run", "code_hash", "code", "chained", "verdict", "replayed_epochs",
                                           "replayed_methods", "replayed_cpu"])
    return versions.astype({"replayed_epochs": "Int64"})


def tolerance_text() -> str:
    """The tolerances of a "reproduced within tolerance" verdict (:data:`bkd_core.batch.check.TOLERANCES`) as
    words: ``"test accuracy within 1 point, noise estimate within 3 points, ..."``."""
    return ", ".join(f"{label} within {scale * TOLERANCES[key]:g}{unit}" for label, key, scale, unit in (
        ("test accuracy", "test_acc", 1, " point"), ("noise estimate", "estimated_noise_rate", 100, " points"),
        ("F1", "detection_f1", 100, " point"), ("ranking ROC-AUC", "ranking_auc", 1, "")))


def code_version_text(versions: "pd.DataFrame", current: str | None = None) -> str:
    """One sentence (plain text, for ``{glue:text}``) on :func:`code_versions`: how many runs were produced by
    this code, by other code (and which of those the current code reproduced exactly), or by code whose
    version was not recorded."""
    import pandas as pd

    from ..provenance import code_hash

    current = current or code_hash()
    n = len(versions)
    counts = {s: int((versions["code"] == s).sum())
              for s in (CODE_CURRENT, CODE_REPRODUCED, CODE_TOLERANCE, CODE_REPLAYED, CODE_OTHER, CODE_UNKNOWN)}
    if not n:
        return "No finished run to check."
    parts = []
    if counts[CODE_CURRENT]:
        parts.append(f"{counts[CODE_CURRENT]} of {n} runs were produced by the current training code ({current})")
    older = versions[versions["code"].isin([CODE_OTHER, CODE_REPRODUCED, CODE_TOLERANCE, CODE_REPLAYED])]
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
        if counts[CODE_TOLERANCE]:
            names = ", ".join(versions.loc[versions["code"] == CODE_TOLERANCE, "run"])
            text += (f"; {counts[CODE_TOLERANCE]} ({names}) were reproduced by the current code within tolerance on "
                     f"another kind of CPU ({tolerance_text()}), not bit for bit")
        if counts[CODE_REPLAYED]:
            text += "; " + _replay_text(versions[versions["code"] == CODE_REPLAYED])
        if counts[CODE_OTHER]:
            if counts[CODE_REPRODUCED] or counts[CODE_TOLERANCE] or counts[CODE_REPLAYED]:
                names = ", ".join(versions.loc[versions["code"] == CODE_OTHER, "run"])
                replayed = " or replayed" if counts[CODE_REPLAYED] else ""
                text += (f"; the other {counts[CODE_OTHER]} ({names}) were not reproduced{replayed} by the current "
                         "code (not rerun, or the rerun differed or did not finish): their numbers may be stale")
            else:
                names = ", ".join(versions.loc[versions["code"] == CODE_OTHER, "run"])
                text += f"; their numbers may be stale: {names}"
        parts.append(text)
    if counts[CODE_UNKNOWN]:
        parts.append(f"{counts[CODE_UNKNOWN]} of {n} were made before runs recorded their code version "
                     f"(code version not recorded: they may or may not match the current code, {current})")
    return "Code version: " + "; ".join(parts) + "."


def _replay_text(replayed: "pd.DataFrame") -> str:
    """The code-version sentence's words on the runs whose first epochs the current code replayed: what was
    replayed, on which runs and CPU model, and that a replay is not a full rerun."""
    import pandas as pd

    groups = []
    for (epochs, methods, cpu), rows in replayed.groupby(["replayed_epochs", "replayed_methods", "replayed_cpu"],
                                                         sort=False, dropna=False):
        words = [_METHOD_WORDS.get(m, m) for m in str(methods if pd.notna(methods) else "").split()]
        which = " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words) or "their methods"
        k = int(epochs) if pd.notna(epochs) else None
        span = "epoch" if k == 1 else f"{k} epochs" if k else "epochs"
        model = f" ({cpu})" if isinstance(cpu, str) and cpu else ""
        groups.append(f"the first {span} of {which} on {', '.join(rows['run'])} bit for bit on the CPU model that "
                      f"made {'them' if len(rows) > 1 else 'it'}{model}")
    return ("the current code replayed " + "; and ".join(groups) + ", a replay, not a full rerun: it shows that the "
            "current code computes those epochs as the recorded code did, and says nothing of the later epochs, the "
            "detection or the methods not replayed, so the runs' numbers still come from the other code")
