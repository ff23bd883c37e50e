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

__all__ = ["ALTERNATIVES", "COLUMNS", "ablation_runs", "ablation_summary", "ablation_verdicts"]

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
