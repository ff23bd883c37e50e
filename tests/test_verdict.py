"""The one rule for "beats" (bkd_core.book.verdict): a gap beyond the seeds' spread, in the same direction on every
seed; anything less is a tie, and a loss is decided as a win is."""

from __future__ import annotations

from pathlib import Path

import pytest

from bkd_core.book.verdict import (NOT_HERE, claim_findings, claims_box, missing_splits, split_verdicts, verdict,
                                   verdict_counts, verdict_text)

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


# ----------------------------------------------------------------------------------------------
# A batch with one seed per split: its numbers, no verdict, and what is not here yet
# ----------------------------------------------------------------------------------------------


def _one_seed(methods=("bkd",)):
    """A partial one-seed batch: worst and aggre; BKD's numbers, and when asked cross-entropy's and cleanlab's."""
    rows = []
    for split, true, est, f1, floor, acc, tip in (("worst", 0.40208, 0.49394, 0.7671, 0.5735, 78.59, 25),
                                                   ("aggre", 0.0901, 0.25598, 0.6002, 0.1653, 85.86, 21)):
        rows.append({"split": split, "seed": 0, "method": "bkd", "true_noise_rate": true,
                     "estimated_noise_rate": est, "detection_f1": f1, "flag_all_f1": floor, "test_acc": acc,
                     "best_test_acc": acc + 1, "tipping_epoch": tip, "tipping_rule": "peak"})
        if "ce" in methods:
            rows.append({"split": split, "seed": 0, "method": "ce", "true_noise_rate": true, "test_acc": 80.0,
                         "best_test_acc": 84.0, "detection_f1": 0.5})
        if "cleanlab" in methods:  # above BKD on worst, below on aggre: said alike
            rows.append({"split": split, "seed": 0, "method": "cleanlab", "true_noise_rate": true,
                         "detection_f1": 0.80 if split == "worst" else 0.50})
    from bkd_core.book.results import COLUMNS

    return pd.DataFrame(rows, columns=list(COLUMNS)).assign(dataset="cifar10", configuration="")


def test_one_seed_findings_give_numbers_without_a_verdict_and_say_what_is_not_here():
    found = claim_findings(_one_seed(), falls={"worst": 0.0018, "aggre": 0.0026})
    assert found["memorization"] == "Not here yet (cross-entropy)."
    assert found["tipping"] == ("Fires in 2 of 2 runs (epoch 26 on worst, 22 on aggre), then the curve falls at most "
                                "0.003; clean: not here yet.")
    assert found["estimate"] == ("Too high on 2 of 2: worst 49.4 vs true 40.2%, aggre 25.6 vs 9.0%; "
                                 "clean: not here yet.")
    assert found["detection"] == ("G4 F1 vs flagging all: higher on 2 of 2 (worst 76.7 vs 57.4); vs cleanlab: not "
                                  "here yet; vs CE's prediction ≠ label: not here yet.")
    assert found["robust"] == "BKD ends at 78.6% on worst, 85.9% on aggre; CE: not here yet."
    for text in found.values():  # no verdict word for one seed
        assert not any(word in text for word in ("beats", "ties", "loses")), text


def test_one_seed_findings_say_higher_and_lower_alike_once_every_stage_is_there():
    found = claim_findings(_one_seed(("ce", "cleanlab")), splits=("aggre", "worst", "clean"))
    assert found["memorization"] == "CE on worst peaks at 84.0%, ends at 80.0%."
    assert ("vs cleanlab: higher on 1 of 2 and lower on 1 of 2 (aggre 60.0 vs 50.0, worst 76.7 vs 80.0); "
            in found["detection"])  # every lower split named, the first higher one
    assert found["detection"].endswith("vs CE's prediction ≠ label: higher on 2 of 2 (worst 76.7 vs 50.0).")
    assert found["robust"] == ("Test accuracy vs CE: higher on 1 of 2 and lower on 1 of 2 (aggre 85.9 vs "
                               "80.0%, worst 78.6 vs 80.0%).")
    everything = claim_findings(_one_seed(("ce", "cleanlab")), splits=("aggre", "worst"))
    assert NOT_HERE not in " ".join(everything.values())  # the clean control is not part of this batch
    assert missing_splits(_one_seed()) == ["clean", "rand1", "rand2", "rand3"]
    empty = claim_findings(_one_seed().iloc[:0])
    assert set(empty.values()) == {"Not here yet (cross-entropy).", "Not here yet (BKD)."}


def test_claims_box_judges_a_batch_with_seeds_and_reports_one_without():
    from bkd_core.book.analysis import CLAIMS

    seeds = pd.concat([_one_seed(("ce", "cleanlab")).assign(seed=s) for s in (0, 1, 2)], ignore_index=True)
    box = claims_box({"one seed": _one_seed(), "three seeds": seeds})
    assert list(box.columns) == ["claim", "one seed", "three seeds"] and list(box["claim"]) == list(CLAIMS.values())
    detection = box.set_index("claim").loc[CLAIMS["detection"]]
    assert "higher on 2 of 2" in detection["one seed"]
    # three identical seeds: no spread, every seed ahead, so a win and a loss, in the same words
    assert detection["three seeds"] == ("G4 F1 vs flagging all: beats on 2; vs cleanlab: beats on 1, loses on worst "
                                        "(76.7 vs 80.0); vs CE's prediction ≠ label: beats on 2.")


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "reproductions" / "cnn").is_dir(),
                    reason="no committed cnn batch")
def test_the_committed_cnn_batch_speaks_through_its_files():
    """Chapter 01's cnn column: every number read from the committed runs (seed 0), none typed in."""
    from bkd_core.book import results

    table = results.collect_stages(Path(__file__).resolve().parents[1] / "reproductions" / "cnn")
    found = claim_findings(table)
    bkd = table[table["method"] == "bkd"]
    for row in bkd[bkd["split"].isin(["worst", "aggre", "clean"])].itertuples():  # the estimates it names
        assert f"{row.split} {100 * row.estimated_noise_rate:.1f} vs " in found["estimate"]
    if {"worst", "aggre"} <= set(bkd["split"]):
        assert "worst 49.4 vs true 40.2%" in found["estimate"] and "aggre 25.6 vs 9.0%" in found["estimate"]


def test_the_committed_features_batch_in_brief():
    """Chapter 01's features column: the losses and the tie of the committed batch, with their numbers."""
    from bkd_core import book
    from bkd_core.book import results

    found = claim_findings(results.collect_results(book.find_results_dir("reproductions/features")))
    assert found["detection"] == ("G4 F1 vs flagging all: beats on 5; vs cleanlab: beats on 4, loses on worst "
                                  "(68.0 vs 73.2); vs CE's prediction ≠ label: beats on 5.")
    assert found["robust"] == ("Test accuracy vs CE: beats on 4, ties on aggre (76.2 vs 76.0%), loses on clean "
                               "(76.9 vs 78.6%).")
    assert found["tipping"] == "Fires in 18 of 18 runs (epoch 4 to 6); on clean too (epoch 8.3)."
