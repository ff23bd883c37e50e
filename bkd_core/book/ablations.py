"""Is it the blindness? BKD's last epoch against the alternatives a reader would run instead, from a batch's runs.

A practitioner without clean labels would not train cross-entropy to its last epoch: they would stop it where
the noisy validation set is most accurate. And BKD itself could stop at its switch, the tipping point, and skip
phase 2. :func:`ablation_runs` reads, for every run of a batch that trained both BKD and cross-entropy, the
test accuracy (%) of:

- ``bkd_last``: BKD's last epoch (what the book reports);
- ``bkd_switch``: BKD at its switch, the last epoch of phase 1 (the epoch the tipping rule fired; "phase 1
  only"); its whole run when no tipping point was found;
- ``ce_val_pick``: cross-entropy at the epoch with the best accuracy on the noisy validation set (the first
  such epoch, among the epochs whose test accuracy was measured): early stopping as a practitioner would run it;
- ``ce_last``: cross-entropy's last epoch;
- ``ce_best``: cross-entropy's best test epoch, chosen with the clean test labels. No stopping rule can do
  better, so it bounds every early stopping, the noisy validation set's pick included, from above.

``bkd_last``, ``ce_last`` and ``ce_best`` are in every run's metrics. ``bkd_switch`` and ``ce_val_pick`` need the
per-epoch curves a run writes beside its metrics (``curves.json``, :meth:`bkd_core.batch.BatchFolder.method_curves`);
a run trained before runs wrote them has NaN there, and a damaged ``curves.json`` raises
:class:`bkd_core.errors.DamagedFileError`. :func:`ablation_summary` gives mean and standard deviation
over seeds per split and judges ``bkd_last`` against each alternative with :func:`bkd_core.book.verdict.verdict`.

The blindness itself: :func:`blindness_runs` sets each BKD run of a batch beside the run of a second batch
trained with ``student_sees_label=True`` on the same split and seed, a student that also sees the teacher's logit
of the given label (plain distillation), everything else the same. :func:`blindness_summary` compares the two
per split: detection (F1 of the G4 mask), the noise estimate, the tipping epoch and the last epoch's test accuracy;
:func:`blindness_text` says it in words (:func:`bkd_core.book.plots.plot_blindness` draws it).

Every file is read through :class:`bkd_core.batch.BatchFolder`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..batch.folder import BatchFolder
from .results import ordered_splits
from .verdict import verdict

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ALTERNATIVES", "BLINDNESS_MEASURES", "COLUMNS", "ablation_runs", "ablation_summary", "ablation_verdicts",
           "blindness_runs", "blindness_summary", "blindness_text"]

#: The alternatives to BKD's last epoch, in the order the book shows them: column -> what it is.
ALTERNATIVES: dict[str, str] = {
    "bkd_switch": "BKD stopped at its switch (phase 1 only)",
    "ce_val_pick": "cross-entropy stopped at its best noisy-validation epoch",
    "ce_last": "cross-entropy, last epoch",
    "ce_best": "cross-entropy at its best test epoch (a bound on any early stopping)",
}
#: Columns of :func:`ablation_runs`, in this order (epochs counted from 1).
COLUMNS = ("split", "seed", "run", "bkd_last", "bkd_switch", "bkd_switch_epoch", "ce_val_pick", "ce_val_epoch",
           "ce_last", "ce_best")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def ablation_runs(batch: BatchFolder | str | os.PathLike) -> "pd.DataFrame":
    """One row per finished run of ``batch`` that trained both BKD and cross-entropy: the test accuracy (%)
    of BKD's last epoch and of each alternative (module docstring); columns :data:`COLUMNS`, sorted by split
    (CIFAR-N order) and seed.

    Parameters
    ----------
    batch : BatchFolder | str | os.PathLike
        a batch folder (``python -m bkd_core reproduce --out``) or its path.

    Returns
    -------
    pd.DataFrame
        ``bkd_switch_epoch`` and ``ce_val_epoch`` are the epochs (from 1) the two stopping points fell on; the
        columns that need per-epoch curves are NaN for a run without them.

    Raises
    ------
    bkd_core.errors.DamagedFileError
        A run's file is damaged, its ``curves.json`` included (one sentence naming the file and the fix).
    """
    import pandas as pd

    folder = batch if isinstance(batch, BatchFolder) else BatchFolder(batch)
    rows = []
    for name, run in folder.runs():
        bkd, ce = run["methods"].get("bkd"), run["methods"].get("ce")
        if bkd is None or ce is None:
            continue
        row = {"split": run["split"], "seed": run["seed"], "run": name, "bkd_last": _number(bkd.get("test_acc")),
               "ce_last": _number(ce.get("test_acc")), "ce_best": _number(ce.get("best_test_acc")),
               "bkd_switch": np.nan, "bkd_switch_epoch": np.nan, "ce_val_pick": np.nan, "ce_val_epoch": np.nan}
        bkd_test = (folder.method_curves(name, "bkd") or {}).get("test_acc")
        if bkd_test is not None and len(bkd_test):
            found_at = bkd.get("tipping_found_at_epoch")  # 0-based: the last epoch of phase 1
            switch = len(bkd_test) - 1 if found_at is None else int(found_at)
            if 0 <= switch < len(bkd_test):
                row.update(bkd_switch=bkd_test[switch], bkd_switch_epoch=switch + 1)
        ce_curves = folder.method_curves(name, "ce") or {}
        ce_test, ce_val = ce_curves.get("test_acc"), ce_curves.get("val_acc")
        if ce_test is not None and ce_val is not None:  # of one length: one value per epoch
            measured = np.isfinite(ce_val) & np.isfinite(ce_test)  # the paper profile tests every 10th epoch
            if measured.any():  # the first epoch with the best noisy-validation accuracy
                pick = int(np.nanargmax(np.where(measured, ce_val, np.nan)))
                row.update(ce_val_pick=ce_test[pick], ce_val_epoch=pick + 1)
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(table):
        rank = {s: i for i, s in enumerate(ordered_splits(table["split"]))}
        table = table.sort_values(["split", "seed"], key=lambda c: c.map(rank) if c.name == "split" else c,
                                  kind="stable").reset_index(drop=True)
    return table


def ablation_verdicts(runs: "pd.DataFrame", alternatives: Sequence[str] = tuple(ALTERNATIVES)
                      ) -> dict[str, dict[str, str]]:
    """``{alternative: {split: "beats" | "ties" | "loses"}}``: :func:`~bkd_core.book.verdict.verdict` of BKD's
    last epoch against each alternative's column of :func:`ablation_runs`, per split, over the seeds where both
    are known; a split with fewer than two such seeds is left out (so an alternative without curves has ``{}``)."""
    out: dict[str, dict[str, str]] = {}
    for column in alternatives:
        judged = {}
        for split in ordered_splits(runs["split"]) if len(runs) else []:
            pairs = runs[runs["split"] == split].sort_values("seed")[["bkd_last", column]].dropna()
            if len(pairs) >= 2:
                judged[split] = verdict(pairs["bkd_last"].to_numpy(), pairs[column].to_numpy())
        out[column] = judged
    return out


def ablation_summary(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Per split and column of :func:`ablation_runs`: mean, standard deviation over seeds (ddof 1) and the
    number of seeds with a value, and the verdict of BKD's last epoch against it.

    Returns
    -------
    pd.DataFrame
        One row per (split, column): ``split``, ``column`` (``"bkd_last"`` first, then :data:`ALTERNATIVES`),
        ``what`` (its description), ``mean``, ``std``, ``seeds`` and ``verdict`` (of ``bkd_last`` against
        the column; empty for ``bkd_last`` itself and where fewer than two seeds have both).
    """
    import pandas as pd

    verdicts = ablation_verdicts(runs)
    described = {"bkd_last": "BKD, last epoch", **ALTERNATIVES}
    rows = []
    for split in ordered_splits(runs["split"]) if len(runs) else []:
        of_split = runs[runs["split"] == split]
        for column, what in described.items():
            values = pd.to_numeric(of_split[column], errors="coerce").dropna()
            rows.append({"split": split, "column": column, "what": what, "seeds": len(values),
                         "mean": values.mean() if len(values) else np.nan,
                         "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                         "verdict": verdicts.get(column, {}).get(split, "")})
    return pd.DataFrame(rows, columns=["split", "column", "what", "mean", "std", "seeds", "verdict"])


#: What :func:`blindness_runs` reads of each BKD run: column -> (key in the run's metrics, scale, shift,
#: description); the column holds ``scale * value + shift``.
BLINDNESS_MEASURES: dict[str, tuple[str, float, float, str]] = {
    "g4_f1": ("detection_f1", 100.0, 0.0, "detection F1 of the G4 mask (%)"),
    "noise_estimate": ("estimated_noise_rate", 100.0, 0.0, "estimated noise (%)"),
    "tipping_epoch": ("tipping_epoch", 1.0, 1.0, "tipping epoch (from 1)"),
    "test_acc": ("test_acc", 1.0, 0.0, "test accuracy, last epoch (%)"),
}


def _folder(batch: BatchFolder | str | os.PathLike) -> BatchFolder:
    return batch if isinstance(batch, BatchFolder) else BatchFolder(batch)


def blindness_runs(batch: BatchFolder | str | os.PathLike,
                   sees_label: BatchFolder | str | os.PathLike) -> "pd.DataFrame":
    """One row per split and seed that both batches trained BKD on: each :data:`BLINDNESS_MEASURES` of the
    blind student's run (``batch``) and of the student that sees the label (``sees_label``: a batch trained with
    ``--set student_sees_label=true``), sorted by split (CIFAR-N order) and seed.

    Parameters
    ----------
    batch : BatchFolder | str | os.PathLike
        a batch folder of BKD runs as the book reports them.
    sees_label : BatchFolder | str | os.PathLike
        a batch folder of the same profile trained with ``student_sees_label=True``.

    Returns
    -------
    pd.DataFrame
        columns ``split``, ``seed``, ``true_noise`` (%), ``flag_all_f1`` (%, the F1 of flagging every image) and,
        for each measure ``m``, ``m`` (blind) and ``m_sees`` (sees the label); NaN where a run lacks a value (a
        tipping epoch never found), and the F1 on a split without a wrong label (``true_noise`` 0).
    """
    import pandas as pd

    def bkd_of(folder: BatchFolder) -> dict[tuple[str, int], dict[str, Any]]:
        return {(run["split"], int(run["seed"])): run["methods"]["bkd"] for _, run in folder.runs()
                if isinstance(run["methods"].get("bkd"), dict)}

    blind, seeing = bkd_of(_folder(batch)), bkd_of(_folder(sees_label))
    rows = []
    for split, seed in sorted(set(blind) & set(seeing)):
        a, b = blind[split, seed], seeing[split, seed]
        row = {"split": split, "seed": seed, "true_noise": 100.0 * _number(a.get("true_noise_rate")),
               "flag_all_f1": 100.0 * _number(a.get("flag_all_f1"))}
        for column, (key, scale, shift, _) in BLINDNESS_MEASURES.items():
            row[column], row[f"{column}_sees"] = (scale * _number(a.get(key)) + shift,
                                                  scale * _number(b.get(key)) + shift)
        if not row["true_noise"] > 0:  # a split without a wrong label: nothing to detect, no F1
            row["g4_f1"] = row["g4_f1_sees"] = np.nan
        rows.append(row)
    columns = ["split", "seed", "true_noise", "flag_all_f1",
               *(c for m in BLINDNESS_MEASURES for c in (m, f"{m}_sees"))]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        rank = {s: i for i, s in enumerate(ordered_splits(table["split"]))}
        table = table.sort_values(["split", "seed"], key=lambda c: c.map(rank) if c.name == "split" else c,
                                  kind="stable").reset_index(drop=True)
    return table


def blindness_summary(runs: "pd.DataFrame") -> "pd.DataFrame":
    """Per split and measure of :func:`blindness_runs`: the mean over seeds of the blind student's run and of the
    student's that sees the label, their standard deviations (ddof 1), the seeds with both values, and the verdict
    of the blind student against the other (:func:`~bkd_core.book.verdict.verdict`, higher is better: for the
    noise estimate and the tipping epoch, which are not better when higher, the verdict is left empty).

    Returns
    -------
    pd.DataFrame
        One row per (split, measure): ``split``, ``measure``, ``what``, ``blind``, ``blind_std``, ``sees``,
        ``sees_std``, ``seeds`` and ``verdict`` (empty with fewer than two seeds).
    """
    import pandas as pd

    judged = ("g4_f1", "test_acc")
    rows = []
    for split in ordered_splits(runs["split"]) if len(runs) else []:
        of_split = runs[runs["split"] == split].sort_values("seed")
        for measure, (*_, what) in BLINDNESS_MEASURES.items():
            pairs = of_split[[measure, f"{measure}_sees"]].astype(float).dropna()
            a, b = pairs[measure].to_numpy(), pairs[f"{measure}_sees"].to_numpy()
            rows.append({"split": split, "measure": measure, "what": what,
                         "blind": a.mean() if len(a) else np.nan, "blind_std": a.std(ddof=1) if len(a) > 1 else np.nan,
                         "sees": b.mean() if len(b) else np.nan, "sees_std": b.std(ddof=1) if len(b) > 1 else np.nan,
                         "seeds": len(a),
                         "verdict": verdict(a, b) if measure in judged and len(a) >= 2 else ""})
    return pd.DataFrame(rows, columns=["split", "measure", "what", "blind", "blind_std", "sees", "sees_std", "seeds",
                                       "verdict"])


def blindness_text(runs: "pd.DataFrame", *, summary: "pd.DataFrame | None" = None) -> str:
    """What :func:`blindness_runs` found, in two sentences with their numbers, blind student first: the verdicts
    (:func:`~bkd_core.book.verdict.verdict`, over the seeds of each split) of the blind student against the one
    that sees the label as a detector (G4 F1) and in test accuracy, with what they mean when they agree; then the
    noise estimate (against the true rate) and the tipping epoch per split, which have no better direction.

    A split with one seed is reported by its numbers, with :data:`~bkd_core.book.verdict.ONE_SEED` beside them;
    ``summary`` is :func:`blindness_summary` of ``runs`` (None: computed here). Empty ``runs`` give ``""``.
    """
    from .verdict import BEATS, ONE_SEED, verdict_text

    summary = blindness_summary(runs) if summary is None else summary
    if not len(summary):
        return ""
    value = summary.set_index(["split", "measure"])
    splits = list(dict.fromkeys(summary["split"]))
    true_noise = runs.groupby("split")["true_noise"].mean()

    def both(split: str, measure: str, unit: str = "") -> str:
        row = value.loc[split, measure]
        return f"{row['blind']:.1f}{unit} against {row['sees']:.1f}{unit}"

    def judged(measure: str) -> tuple[dict[str, str], str]:
        verdicts = {s: value.loc[s, measure]["verdict"] for s in splits if value.loc[s, measure]["verdict"]}
        said = [verdict_text(verdicts, {s: both(s, measure) for s in verdicts}, brief=True)] if verdicts else []
        alone = [f"{both(s, measure)} on {s}" for s in splits if value.loc[s, measure]["seeds"] == 1]
        said += [f"reads {', '.join(alone)} ({ONE_SEED})"] if alone else []
        return verdicts, " and ".join(said)

    f1, f1_said = judged("g4_f1")
    accuracy, accuracy_said = judged("test_acc")
    subject = "BKD's blind student against the one that sees the label"
    parts = [f"as a detector (G4 F1), {subject} {f1_said}" if f1_said else "",
             f"in test accuracy {'it' if f1_said else subject} {accuracy_said}" if accuracy_said else ""]
    text = "; ".join(p for p in parts if p)
    text = text[:1].upper() + text[1:]
    detector = bool(f1) and all(v == BEATS for v in f1.values())
    if detector and accuracy and not any(v == BEATS for v in accuracy.values()):
        text += ". The blindness is what makes BKD a detector, not what makes it accurate"
    elif detector and accuracy and all(v == BEATS for v in accuracy.values()):
        text += ". The blindness makes BKD both a detector and more accurate"
    estimates = ", ".join(f"{both(s, 'noise_estimate', '%')} on {s} (true {true_noise[s]:.1f}%)" for s in splits
                          if value.loc[s, "noise_estimate"]["seeds"])
    tipping = ", ".join(f"{both(s, 'tipping_epoch')} on {s}" for s in splits if value.loc[s, "tipping_epoch"]["seeds"])
    said = ([f"the noise estimate is {estimates}"] if estimates else []) + (
        [f"the tipping point falls in epoch {tipping}"] if tipping else [])
    if said:
        text += (". " if text else "") + "Blind against seeing, " + ", and ".join(said)
    return text + "." if text else ""
