"""The one rule for "beats" (bkd_core.book.verdict): a gap beyond the seeds' spread, in the same direction on every
seed; anything less is a tie, and a loss is decided as a win is."""

from __future__ import annotations

import pytest

from bkd_core.book.verdict import split_verdicts, verdict, verdict_counts, verdict_text

pd = pytest.importorskip("pandas")  # a book package: this file is skipped where only the training path is installed


@pytest.mark.parametrize("a, b", [
    ([76.3, 76.1, 76.2], [76.0, 75.8, 76.2]),     # equal on one seed: the sign does not agree on every seed
    ([76.4, 76.0, 76.2], [76.1, 75.7, 76.2]),     # above on two seeds, level on the third
    ([0.901, 0.899, 0.902], [0.900, 0.898, 0.900]),  # above on every seed, but by less than the spread (0.0015)
    ([70.0, 80.0], [69.0, 79.0]),                 # above on both seeds by 1, the spread is 7.1
    ([50.0, 50.0, 50.0], [50.0, 50.0, 50.0]),     # identical
    ([60.0, 70.0, 62.0], [65.0, 61.0, 64.0]),     # means 64.0 vs 63.3, signs mixed
])
def test_ties(a, b):
    assert verdict(a, b) == "ties"
    assert verdict(b, a) == "ties"  # a tie is a tie from either side


@pytest.mark.parametrize("a, b", [
    ([75.7, 75.5, 75.9], [73.2, 73.0, 73.4]),     # clear gap, every seed
    ([68.0, 68.1, 67.9], [67.5, 67.6, 67.4]),     # small gap, but the seeds barely move (spread 0.1)
    ([0.2, 0.3], [0.0, 0.0]),                     # two seeds suffice
])
def test_wins_and_the_same_losses(a, b):
    assert verdict(a, b) == "beats"
    assert verdict(b, a) == "loses"  # a loss is decided exactly as a win


def test_the_gap_must_exceed_the_larger_spread():
    steady = [10.0, 10.1, 9.9]  # mean 10.0, spread 0.1
    assert verdict(steady, [9.4, 9.9, 8.9]) == "beats"  # gap 0.6 beyond the rival's spread 0.5
    assert verdict(steady, [9.6, 9.95, 8.95]) == "ties"  # gap 0.5 inside its spread 0.507, though every seed agrees


@pytest.mark.parametrize("a, b, message", [
    ([1.0], [0.0], "at least two seeds"),
    ([1.0, 2.0], [0.0], "same seeds"),
    ([1.0, float("nan")], [0.0, 0.0], "finite"),
])
def test_bad_input_says_what_is_wrong(a, b, message):
    with pytest.raises(ValueError, match=message):
        verdict(a, b)


def _table():
    rows = []
    for split, (bkd, rival) in {"aggre": ([76.3, 76.1, 76.2], [76.0, 75.8, 76.2]),
                                "rand1": ([75.7, 75.5, 75.9], [73.2, 73.0, 73.4]),
                                "worst": ([68.0, 67.0, 69.0], [73.0, 73.5, 73.1])}.items():
        for seed in (2, 0, 1):  # any order: pairs are matched by seed
            rows.append({"split": split, "seed": seed, "method": "bkd", "f1": bkd[seed], "floor": 50.0})
            rows.append({"split": split, "seed": seed, "method": "cleanlab", "f1": rival[seed]})
    rows.append({"split": "rand2", "seed": 0, "method": "bkd", "f1": 90.0, "floor": 50.0})  # one seed: no verdict
    rows.append({"split": "rand2", "seed": 0, "method": "cleanlab", "f1": 10.0})
    return pd.DataFrame(rows)


def test_split_verdicts_pair_seeds_and_say_ties_and_losses_as_wins():
    verdicts = split_verdicts(_table(), "bkd", "cleanlab", "f1")
    assert verdicts == {"aggre": "ties", "rand1": "beats", "worst": "loses"}
    assert verdict_counts(verdicts) == {"beats": ["rand1"], "ties": ["aggre"], "loses": ["worst"]}
    assert verdict_text(verdicts) == "beats on 1 (rand1), ties on 1 (aggre) and loses on 1 (worst)"
    against_floor = split_verdicts(_table(), "bkd", "bkd", "f1", "floor", splits=["worst", "aggre"])
    assert against_floor == {"worst": "beats", "aggre": "beats"}
    assert verdict_text({}) == "beats on none, ties on none and loses on none"


def test_verdict_text_gives_each_outcome_its_numbers():
    text = verdict_text({"aggre": "ties", "worst": "loses", "rand1": "loses"},
                        details={"worst": "68.0 against 73.2", "aggre": "76.2 against 76.0"})
    assert text == ("beats on none, ties on 1 (aggre: 76.2 against 76.0) and "
                    "loses on 2 (worst: 68.0 against 73.2; rand1)")



def test_brief_verdict_text_leaves_out_empty_outcomes_only():
    assert verdict_text({"aggre": "beats", "worst": "beats"}, brief=True) == "beats on 2 (aggre, worst)"
    assert verdict_text({"aggre": "beats", "worst": "loses"}, {"worst": "68.0 against 73.2"}, brief=True) == (
        "beats on 1 (aggre) and loses on 1 (worst: 68.0 against 73.2)")
    assert verdict_text({}, brief=True) == "has no split to compare on"
