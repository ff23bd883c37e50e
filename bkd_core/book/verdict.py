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
seed per split is reported by its numbers alone (:func:`claim_findings`), "higher" and "lower" said alike, with
:data:`ONE_SEED` beside them, and a stage of it that has not finished yet as :data:`NOT_HERE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["BEATS", "TIES", "LOSES", "OUTCOMES", "ONE_SEED", "NOT_HERE", "CIFAR10N_SPLITS", "verdict",
           "split_verdicts", "verdict_counts", "verdict_text", "claim_findings", "missing_splits", "claims_box"]

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


def _compared(pairs: list[tuple[str, float, float]], unit: str = "", shown: int = 1) -> str:
    """One run's values against another's on each split, with no verdict: ``"higher on 2 of 2 (worst 76.7 vs
    57.4)"``; higher and lower said alike ("level" where equal to the digit shown). Every lower or level split is
    named with its numbers, and the first ``shown`` higher ones (the noisiest splits come first)."""
    groups = {"higher": [p for p in pairs if round(p[1], 1) > round(p[2], 1)],
              "lower": [p for p in pairs if round(p[1], 1) < round(p[2], 1)],
              "level": [p for p in pairs if round(p[1], 1) == round(p[2], 1)]}
    named = [p for word, group in groups.items() for p in (group[:shown] if word == "higher" else group)]
    counts = " and ".join(f"{word} on {len(group)} of {len(pairs)}" for word, group in groups.items() if group)
    return f"{counts} ({', '.join(f'{s} {a:.1f} vs {b:.1f}{unit}' for s, a, b in named)})"


def _judged(verdicts: dict[str, str], numbers: Mapping[str, tuple[float, float]], unit: str = "") -> str:
    """:func:`verdict` outcomes in brief: ``"beats on 4, ties on aggre (76.2 vs 76.0%), loses on clean (76.9 vs
    78.6%)"``; each tie and loss named with both means."""
    counts = verdict_counts(verdicts)
    parts = []
    for outcome, found in counts.items():
        if not found:
            continue
        if outcome == BEATS:
            parts.append(f"beats on {len(found)}")
        else:
            parts.append(f"{outcome} on " + ", ".join(
                f"{s} ({numbers[s][0]:.1f} vs {numbers[s][1]:.1f}{unit})" for s in found))
    return ", ".join(parts) if parts else "no split to compare on"


def claim_findings(table, *, splits: Sequence[str] = CIFAR10N_SPLITS,
                   falls: Mapping[str, float] | None = None) -> dict[str, str]:
    """What a batch measured on each of BKD's claims, one short sentence each with its numbers, negatives included.

    Where a split has two or more seeds, a comparison is judged by :func:`verdict` (wins, ties and losses in the
    same words); where it has one, the numbers are said with "higher" and "lower" alike and no verdict
    (:data:`ONE_SEED`: the batch's column says so). A claim whose runs have not finished yet (a method, or the clean
    control) says :data:`NOT_HERE`.

    Parameters
    ----------
    table : pd.DataFrame
        the batch's finished stages, :func:`bkd_core.book.results.collect_stages` (or
        :func:`~bkd_core.book.results.collect_results`), one row per run and method.
    splits : Sequence[str]
        the splits the full batch runs; the clean control missing among them is said to be not here yet.
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

    def has(method: str, split: str, column: str) -> bool:
        return bool(np.isfinite(value(method, split, column)))

    bkd = rows("bkd")
    present = ordered_splits(bkd["split"]) if len(bkd) else []
    by_noise = sorted(present, key=lambda s: -value("bkd", s, "true_noise_rate"))  # the noisiest split first
    noisy = [s for s in by_noise if value("bkd", s, "true_noise_rate") > 0]
    seeded = bool(len(table)) and int(table.groupby(["split", "method"])["seed"].nunique().max()) >= 2
    clean_absent = f"; clean: {NOT_HERE}" if "clean" in splits and "clean" not in present else ""

    def compare(method, rival, metric, rival_metric=None, among=None, scale=100.0, unit=""):
        """The comparison on the splits both ran: verdicts over seeds, or one run's numbers; None without one."""
        among = [s for s in (among or noisy) if has(method, s, metric) and has(rival, s, rival_metric or metric)]
        if not among:
            return None
        numbers = {s: (value(method, s, metric, scale), value(rival, s, rival_metric or metric, scale)) for s in among}
        if seeded:
            return _judged(split_verdicts(table, method, rival, metric, rival_metric, splits=among), numbers, unit)
        return _compared([(s, *numbers[s]) for s in among], unit)

    out = {}
    ce = [s for s in noisy if has("ce", s, "best_test_acc") and has("ce", s, "test_acc")]
    if ce:
        s = ce[0]
        drops = [value("ce", t, "best_test_acc", 1) - value("ce", t, "test_acc", 1) for t in present
                 if t != s and has("ce", t, "test_acc") and has("ce", t, "best_test_acc")]
        elsewhere = f"; elsewhere {min(drops):.1f} to {max(drops):.1f} below its peak" if len(drops) > 1 else ""
        out["memorization"] = (f"CE on {s} peaks at {value('ce', s, 'best_test_acc', 1):.1f}%, ends at "
                               f"{value('ce', s, 'test_acc', 1):.1f}%{elsewhere}.")
    else:
        out["memorization"] = f"{NOT_HERE.capitalize()} (cross-entropy)."
    if not len(bkd):
        return {**out, **{key: f"{NOT_HERE.capitalize()} (BKD)." for key in ("tipping", "estimate", "detection",
                                                                               "robust")}}
    tips = {s: 1 + pd.to_numeric(bkd.loc[bkd["split"] == s, "tipping_epoch"], errors="coerce").dropna()
            for s in present}
    fired = int((bkd["tipping_rule"] == "peak").sum())
    noisy_tips = [t for s in noisy for t in tips[s]]
    if seeded or len(noisy) > 2:
        at = f"epoch {min(noisy_tips):.0f} to {max(noisy_tips):.0f}" if noisy_tips else "no noisy split"
    else:
        at = "epoch " + ", ".join(f"{tips[s].mean():.0f} on {s}" for s in noisy if len(tips[s]))
    clean_mean = float(tips["clean"].mean()) if "clean" in tips and len(tips["clean"]) else np.nan
    clean_epoch = f"{clean_mean:.0f}" if float(clean_mean).is_integer() else f"{clean_mean:.1f}"  # a mean over seeds
    clean_tip = (f"; on clean too (epoch {clean_epoch})" if "clean" in tips and len(tips["clean"])
                 else clean_absent)
    fell = [falls[s] for s in noisy if len(tips[s]) and falls and np.isfinite(falls.get(s, np.nan))]
    after = f", then the curve falls at most {max(fell):.3f}" if fell else ""
    out["tipping"] = f"Fires in {fired} of {len(bkd)} runs ({at}){after}{clean_tip}."
    shown = list(dict.fromkeys([*noisy[:1], *[s for s in ("aggre", "clean") if s in present]]))
    estimates = ", ".join(f"{s} {value('bkd', s, 'estimated_noise_rate'):.1f} vs {'true ' if k == 0 else ''}"
                          f"{value('bkd', s, 'true_noise_rate'):.1f}%" for k, s in enumerate(shown))
    high = sum(value("bkd", s, "estimated_noise_rate") > value("bkd", s, "true_noise_rate") for s in present)
    low = sum(value("bkd", s, "estimated_noise_rate") < value("bkd", s, "true_noise_rate") for s in present)
    direction = " and ".join(f"too {word} on {n} of {len(present)}" for word, n in (("high", high), ("low", low)) if n)
    out["estimate"] = f"{(direction or 'exact').capitalize()}: {estimates}{clean_absent}."
    floor = compare("bkd", "bkd", "detection_f1", "flag_all_f1")
    cl = compare("bkd", "cleanlab", "detection_f1")
    ce_mask = compare("bkd", "ce", "detection_f1")  # cross-entropy's "prediction differs from the label" mask
    out["detection"] = (f"G4 F1 vs flagging all: {floor}; vs cleanlab: {cl or NOT_HERE}; vs CE's prediction ≠ label: "
                        f"{ce_mask or NOT_HERE}." if floor else
                        f"{NOT_HERE.capitalize()} (no noisy split).")
    acc = compare("bkd", "ce", "test_acc", among=by_noise, scale=1.0, unit="%")
    if acc:
        out["robust"] = f"Test accuracy vs CE: {acc}."
    else:
        ends = ", ".join(f"{value('bkd', s, 'test_acc', 1):.1f}% on {s}" for s in by_noise if has("bkd", s, "test_acc"))
        out["robust"] = f"BKD ends at {ends}; CE: {NOT_HERE}."
    return out


def claims_box(tables: Mapping[str, object], *, splits: Sequence[str] = CIFAR10N_SPLITS,
               falls: Mapping[str, Mapping[str, float]] | None = None):
    """BKD's claims against what each batch measured, in brief (:func:`claim_findings`): one row per claim
    (:data:`bkd_core.book.analysis.CLAIMS`), one column per batch.

    Parameters
    ----------
    tables : Mapping[str, pd.DataFrame]
        column label -> the batch's :func:`bkd_core.book.results.collect_stages` (or ``collect_results``), in the
        order the columns are shown.
    splits : Sequence[str]
        the splits a full batch runs.
    falls : Mapping[str, Mapping[str, float]] | None
        column label -> :func:`claim_findings`' ``falls`` of that batch.

    Returns
    -------
    pd.DataFrame
        column ``claim`` and one column per batch, each cell a sentence.
    """
    import pandas as pd

    from .analysis import CLAIMS

    columns = {label: claim_findings(table, splits=splits, falls=(falls or {}).get(label))
               for label, table in tables.items()}
    return pd.DataFrame({"claim": list(CLAIMS.values()),
                         **{label: [found[key] for key in CLAIMS] for label, found in columns.items()}})
