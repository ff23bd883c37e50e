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
pairing). The rule needs at least two seeds: one run has no spread to judge a difference against. A batch with one
seed per split (:func:`one_seed_findings`) is reported by its numbers alone, "higher" and "lower" said alike, with
:data:`ONE_SEED` beside them, and a stage of it that has not finished yet as :data:`NOT_HERE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["BEATS", "TIES", "LOSES", "OUTCOMES", "ONE_SEED", "NOT_HERE", "CIFAR10N_SPLITS", "verdict",
           "split_verdicts", "verdict_counts", "verdict_text", "one_seed_findings", "missing_splits", "claims_box"]

BEATS, TIES, LOSES = "beats", "ties", "loses"
#: The three outcomes, in the order the book reports them.
OUTCOMES = (BEATS, TIES, LOSES)
#: What a comparison of one seed says instead of a verdict.
ONE_SEED = "one seed: no verdict yet"
#: What a finding says of a stage (a method, a split) that has not finished yet.
NOT_HERE = "not here yet"
#: The CIFAR-10N splits a full batch runs, in the book's order.
CIFAR10N_SPLITS = ("clean", "aggre", "rand1", "rand2", "rand3", "worst")


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


def missing_splits(table, splits: Sequence[str] = CIFAR10N_SPLITS, method: str = "bkd") -> list[str]:
    """The splits of ``splits`` (in that order) on which ``table`` has no run of ``method``."""
    present = set(table.loc[table["method"] == method, "split"]) if len(table) else set()
    return [s for s in splits if s not in present]


def _compared(pairs: list[tuple[str, float, float]], unit: str = "") -> str:
    """``"higher on 2 of 2 (worst 76.7 vs 57.4, aggre 60.0 vs 16.5)"``: one run's values against another's, the
    splits where it is higher and lower said alike; "level" where they are equal to the digit shown."""
    higher = [p for p in pairs if round(p[1], 1) > round(p[2], 1)]
    lower = [p for p in pairs if round(p[1], 1) < round(p[2], 1)]
    level = [p for p in pairs if round(p[1], 1) == round(p[2], 1)]
    parts = [f"{word} on {len(group)} of {len(pairs)}" for word, group in (("higher", higher), ("lower", lower),
                                                                         ("level", level)) if group]
    shown = ", ".join(f"{s} {a:.1f}{unit} vs {b:.1f}{unit}" for s, a, b in pairs)
    return f"{' and '.join(parts)} ({shown})"


def one_seed_findings(table, *, splits: Sequence[str] = CIFAR10N_SPLITS,
                      falls: Mapping[str, float] | None = None) -> dict[str, str]:
    """What a batch with one seed per split measured on each of BKD's claims, one short sentence each with its
    numbers, negatives included, and no verdict (:data:`ONE_SEED`): one run has no spread to judge a difference
    against. A claim whose runs have not finished yet (a method, or the clean control) says :data:`NOT_HERE`.

    Parameters
    ----------
    table : pd.DataFrame
        the batch's finished stages, :func:`bkd_core.book.results.collect_stages` (or
        :func:`~bkd_core.book.results.collect_results`), one row per run and method.
    splits : Sequence[str]
        the splits the full batch runs; those without a BKD run are said to be not here yet.
    falls : Mapping[str, float] | None
        split -> how far the student's curve falls after the tipping epoch before phase 2
        (:func:`bkd_core.book.results.peak_fall`), said with the tipping point when given.

    Returns
    -------
    dict[str, str]
        ``{claim key: sentence}`` for the keys of :data:`bkd_core.book.analysis.CLAIMS`.
    """
    import pandas as pd

    from .results import ordered_splits

    def rows(method: str) -> "pd.DataFrame":
        return table[table["method"] == method] if len(table) else table

    def value(method: str, split: str, column: str, scale: float = 100.0) -> float:
        found = rows(method)
        found = found[found["split"] == split]
        return scale * float(pd.to_numeric(found[column], errors="coerce").mean()) if len(found) else float("nan")

    bkd = rows("bkd")
    present = ordered_splits(bkd["split"]) if len(bkd) else []
    by_noise = sorted(present, key=lambda s: -value("bkd", s, "true_noise_rate"))  # the noisiest split first
    noisy = [s for s in by_noise if value("bkd", s, "true_noise_rate") > 0]
    absent = missing_splits(table, splits)
    clean_absent = "; clean control: " + NOT_HERE if "clean" in absent else ""

    def has(method: str, split: str, column: str) -> bool:
        return bool(np.isfinite(value(method, split, column)))

    out = {}
    ce = [s for s in noisy if has("ce", s, "best_test_acc") and has("ce", s, "test_acc")]
    if ce:
        s = ce[0]
        peak, end = value("ce", s, "best_test_acc", 1), value("ce", s, "test_acc", 1)
        out["memorization"] = f"Cross-entropy's test accuracy on {s} peaks at {peak:.1f}% and ends at {end:.1f}%."
    else:
        out["memorization"] = f"{NOT_HERE.capitalize()} (the cross-entropy runs)."
    if len(bkd):
        tips = {s: value("bkd", s, "tipping_epoch", 1) + 1 for s in present}
        fired = int((bkd["tipping_rule"] == "peak").sum())
        at = ", ".join(f"{tips[s]:.0f} on {s}" for s in by_noise if np.isfinite(tips[s]))
        fell = [f"{falls[s]:.3f} on {s}" for s in by_noise if falls and np.isfinite(falls.get(s, np.nan))]
        after = f"; after it the student's confidence falls by only {', '.join(fell)} before phase 2" if fell else ""
        out["tipping"] = f"The peak rule fires in {fired} of {len(bkd)} runs (epoch {at}){after}{clean_absent}."
        estimates = [f"{s} {value('bkd', s, 'estimated_noise_rate'):.1f}% vs true "
                     f"{value('bkd', s, 'true_noise_rate'):.1f}%" for s in by_noise]
        over = sum(value("bkd", s, "estimated_noise_rate") > value("bkd", s, "true_noise_rate") for s in present)
        under = sum(value("bkd", s, "estimated_noise_rate") < value("bkd", s, "true_noise_rate") for s in present)
        direction = " and ".join(f"too {word} on {n} of {len(present)}" for word, n in (("high", over), ("low", under))
                                 if n) or f"exact on {len(present)} of {len(present)}"
        out["estimate"] = f"{direction.capitalize()}: {', '.join(estimates)}{clean_absent}."
        floor = _compared([(s, value("bkd", s, "detection_f1"), value("bkd", s, "flag_all_f1")) for s in noisy])
        cl = [(s, value("bkd", s, "detection_f1"), value("cleanlab", s, "detection_f1")) for s in noisy
              if has("cleanlab", s, "detection_f1")]
        out["detection"] = (f"{ONE_SEED.capitalize()}. G4 vs flagging everything: {floor}; vs confident learning: "
                            f"{_compared(cl) if cl else NOT_HERE}." if noisy else
                            f"{NOT_HERE.capitalize()} (no noisy split).")
        acc = [(s, value("bkd", s, "test_acc", 1), value("ce", s, "test_acc", 1)) for s in by_noise
               if has("ce", s, "test_acc") and has("bkd", s, "test_acc")]
        if acc:
            out["robust"] = f"{ONE_SEED.capitalize()}. BKD's last epoch vs cross-entropy's: {_compared(acc, '%')}."
        else:
            ends = ", ".join(f"{value('bkd', s, 'test_acc', 1):.1f}% on {s}" for s in by_noise
                             if has("bkd", s, "test_acc"))
            out["robust"] = f"BKD ends at {ends}; cross-entropy: {NOT_HERE}."
    else:
        for key in ("tipping", "estimate", "detection", "robust"):
            out[key] = f"{NOT_HERE.capitalize()} (BKD)."
    return out


def claims_box(tables: Mapping[str, object], *, splits: Sequence[str] = CIFAR10N_SPLITS,
               falls: Mapping[str, Mapping[str, float]] | None = None):
    """BKD's claims against what each batch measured: one row per claim (:data:`bkd_core.book.analysis.CLAIMS`),
    one column per batch.

    A batch with two or more seeds on a split is judged by :func:`verdict` (its findings are
    :func:`bkd_core.book.analysis.claim_findings`); one with a single seed everywhere is reported by its numbers
    (:func:`one_seed_findings`, ``splits`` the splits its full batch runs).

    Parameters
    ----------
    tables : Mapping[str, pd.DataFrame]
        column label -> the batch's :func:`bkd_core.book.results.collect_stages` (or ``collect_results``), in the
        order the columns are shown.
    falls : Mapping[str, Mapping[str, float]] | None
        column label -> :func:`one_seed_findings`' ``falls`` of that batch.

    Returns
    -------
    pd.DataFrame
        column ``claim`` and one column per batch, each cell a sentence.
    """
    import pandas as pd

    from .analysis import CLAIMS, claim_findings

    def findings(label: str, table) -> dict[str, str]:
        seeds = table.groupby(["split", "method"])["seed"].nunique() if len(table) else pd.Series(dtype=int)
        if len(seeds) and int(seeds.max()) >= 2:
            return claim_findings(table)
        return one_seed_findings(table, splits=splits, falls=(falls or {}).get(label))

    columns = {label: findings(label, table) for label, table in tables.items()}
    return pd.DataFrame({"claim": list(CLAIMS.values()),
                         **{label: [found[key] for key in CLAIMS] for label, found in columns.items()}})
