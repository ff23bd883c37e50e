"""One rule for "beats": when a difference between two methods over seeds counts, and when it is a tie.

Every sentence of the book and of the README that says one method beats, ties with or loses to another
goes through :func:`verdict`, so a win, a tie and a loss are decided the same way everywhere and reported in
the same words.

The rule (:func:`verdict`), for paired per-seed values ``a`` and ``b`` (seed ``i`` of ``a`` was trained on the
same split with the same seed as seed ``i`` of ``b``):

* **beats** when the mean of ``a`` exceeds the mean of ``b`` by more than the larger of the two standard
  deviations over seeds (ddof 1, as the tables' "±") **and** ``a`` is above ``b`` on every seed;
* **loses** when the same holds the other way round;
* **ties** otherwise.

Why both parts: a gap larger than the seeds' spread says the difference is not what another seed would undo,
and the paired sign says it does not rest on one lucky seed (with three seeds, three of three agreeing has a
chance of 1 in 4 under a coin flip, so the sign alone would be too weak, and the spread alone ignores the
pairing). The rule needs at least two seeds: one run has no spread to judge a difference against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["BEATS", "TIES", "LOSES", "OUTCOMES", "verdict", "split_verdicts", "verdict_counts", "verdict_text"]

BEATS, TIES, LOSES = "beats", "ties", "loses"
#: The three outcomes, in the order the book reports them.
OUTCOMES = (BEATS, TIES, LOSES)


def verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """``"beats"``, ``"ties"`` or ``"loses"``: whether method A's per-seed values ``a`` beat method B's ``b``.

    Parameters
    ----------
    a : Sequence[float]
        float [S], method A's value on each of S seeds (higher is better).
    b : Sequence[float]
        float [S], method B's value on the same S seeds, in the same order.

    Returns
    -------
    str
        ``"beats"`` when ``mean(a) - mean(b) > max(std(a), std(b))`` (ddof 1) and ``a[i] > b[i]`` for every
        seed; ``"loses"`` when the same holds with ``a`` and ``b`` swapped; ``"ties"`` otherwise.

    Raises
    ------
    ValueError
        ``a`` and ``b`` differ in length, hold fewer than two seeds, or hold a NaN (says which).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"verdict needs the same seeds of both methods, got {a.shape} and {b.shape} values")
    if len(a) < 2:
        raise ValueError(f"verdict needs at least two seeds of each method, got {len(a)}: one run has no spread to "
                         "judge a difference against; report its numbers without a verdict")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"verdict needs a finite value on every seed, got {a.tolist()} and {b.tolist()}")
    spread = max(a.std(ddof=1), b.std(ddof=1))
    gap = a.mean() - b.mean()
    if gap > spread and (a > b).all():
        return BEATS
    if -gap > spread and (a < b).all():
        return LOSES
    return TIES


def split_verdicts(table, method: str, rival: str, metric: str, rival_metric: str | None = None,
                   splits: Sequence[str] | None = None) -> dict[str, str]:
    """:func:`verdict` of ``method``'s ``metric`` against ``rival``'s ``rival_metric`` on each split of a batch.

    Parameters
    ----------
    table : pd.DataFrame
        a batch's runs, :func:`bkd_core.book.results.collect_results` (one row per run and method, with
        columns ``split``, ``seed``, ``method`` and the metrics).
    method, rival : str
        the two methods (``"bkd"``, ``"cleanlab"``, ``"knn"``, ``"ce"``).
    metric : str
        the column compared, higher is better (e.g. ``"detection_f1"``).
    rival_metric : str | None
        the rival's column; None means ``metric`` (``"flag_all_f1"`` compares BKD with
        flagging everything, both read from BKD's rows when ``rival`` is ``"bkd"``).
    splits : Sequence[str] | None
        the splits to judge, in order; None means every split both methods ran.

    Returns
    -------
    dict[str, str]
        ``{split: "beats" | "ties" | "loses"}``, over the seeds both methods ran on the split; a split with
        fewer than two such seeds is left out.
    """
    import pandas as pd

    rival_metric = metric if rival_metric is None else rival_metric

    def per_seed(name: str, column: str) -> pd.DataFrame:
        rows = table[table["method"] == name]
        return pd.DataFrame({"split": rows["split"], "seed": rows["seed"],
                             "value": pd.to_numeric(rows[column], errors="coerce")}).dropna()

    pairs = per_seed(method, metric).merge(per_seed(rival, rival_metric), on=["split", "seed"], suffixes=("_a", "_b"))
    order = list(dict.fromkeys(pairs["split"])) if splits is None else list(splits)
    out = {}
    for split in order:
        rows = pairs[pairs["split"] == split].sort_values("seed")
        if len(rows) >= 2:
            out[split] = verdict(rows["value_a"].to_numpy(), rows["value_b"].to_numpy())
    return out


def verdict_counts(verdicts: dict[str, str]) -> dict[str, list[str]]:
    """The splits of :func:`split_verdicts` by outcome: ``{"beats": [...], "ties": [...], "loses": [...]}``."""
    return {outcome: [split for split, v in verdicts.items() if v == outcome] for outcome in OUTCOMES}


def verdict_text(verdicts: dict[str, str], details: Mapping[str, str] | None = None, *, brief: bool = False) -> str:
    """Wins, ties and losses in the same words, e.g. ``"beats on 3 (rand1, rand2, rand3), ties on 1 (aggre)
    and loses on 1 (worst)"``; an outcome with no split is said as "on none".

    ``details``: split -> a note shown after its name, e.g. ``{"worst": "68.0 against 73.2"}`` gives
    ``"loses on 1 (worst: 68.0 against 73.2)"``. ``brief``: leave out the outcomes with no split
    (``"beats on 5 (...)"`` alone when there is no tie and no loss).
    """
    details = details or {}
    counts = verdict_counts(verdicts)

    def named(split: str) -> str:
        return f"{split}: {details[split]}" if split in details else split

    def listed(splits: list[str]) -> str:  # "; " between splits when a note holds commas of its own
        return ("; " if any(s in details for s in splits) else ", ").join(map(named, splits))

    parts = [f"{outcome} on {len(splits)} ({listed(splits)})" if splits else f"{outcome} on none"
             for outcome, splits in counts.items() if splits or not brief]
    if not parts:
        return "has no split to compare on"
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
