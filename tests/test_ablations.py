"""Is it the blindness? BKD's last epoch against early-stopped cross-entropy and BKD stopped at its switch
(bkd_core.book.ablations), on hand-made batch folders and on the committed features batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")  # a book package

from bkd_core.book.ablations import ALTERNATIVES, COLUMNS, ablation_runs, ablation_summary, ablation_verdicts  # noqa: E402
from bkd_core.book.verdict import split_verdicts  # noqa: E402
from bkd_core.io import atomic_write_json  # noqa: E402

FEATURES = Path(__file__).resolve().parents[1] / "reproductions" / "features"


def _run(folder: Path, split: str, seed: int, *, bkd_test=None, ce_test=None, ce_val=None, found_at=1,
         methods=("bkd", "ce")) -> None:
    """A finished run as a batch writes it, by hand: metrics.json, and curves.json where curves are given."""
    bkd_test = [60.0, 70.0, 72.0, 75.0] if bkd_test is None else bkd_test
    ce_test = [61.0, 66.0, 64.0, 62.0] if ce_test is None else ce_test
    ce_val = [40.0, 45.0, 44.0, 43.0] if ce_val is None else ce_val
    name = f"cifar10-{split}-seed{seed}"
    metrics = {"bkd": {"test_acc": bkd_test[-1], "best_test_acc": max(bkd_test), "tipping_found_at_epoch": found_at},
               "ce": {"test_acc": ce_test[-1], "best_test_acc": max(ce_test)}}
    atomic_write_json(folder / name / "metrics.json", {"dataset": "cifar10", "split": split, "seed": seed,
                                                       "methods": {m: metrics[m] for m in methods}})
    return folder / name


def _curves(run_dir: Path, method: str, **curves) -> None:
    n = len(next(iter(curves.values())))
    atomic_write_json(run_dir / method / "curves.json", {"epoch": [float(e + 1) for e in range(n)], **curves})


def test_without_curves_only_the_recorded_numbers_are_filled(tmp_path):
    for seed in range(3):
        _run(tmp_path, "worst", seed)
    _run(tmp_path, "worst", 3, methods=("bkd",))  # no cross-entropy: nothing to compare, left out
    runs = ablation_runs(tmp_path)
    assert list(runs.columns) == list(COLUMNS)
    assert list(runs["seed"]) == [0, 1, 2]
    assert (runs["bkd_last"] == 75.0).all() and (runs["ce_last"] == 62.0).all() and (runs["ce_best"] == 66.0).all()
    assert runs[["bkd_switch", "bkd_switch_epoch", "ce_val_pick", "ce_val_epoch"]].isna().all().all()
    verdicts = ablation_verdicts(runs)
    assert verdicts["bkd_switch"] == {} and verdicts["ce_val_pick"] == {}
    assert verdicts["ce_best"] == {"worst": "beats"}


def test_curves_give_the_validation_pick_and_the_switch(tmp_path):
    run = _run(tmp_path, "worst", 0, found_at=1)
    # the noisy validation set peaks twice (epochs 2 and 4): the first peak is the pick
    _curves(run, "ce", test_acc=[61.0, 66.0, 64.0, 62.0], val_acc=[40.0, 45.0, 44.0, 45.0])
    _curves(run, "bkd", test_acc=[60.0, 70.0, 72.0, 75.0], phase=[1.0, 1.0, 2.0, 2.0])
    row = ablation_runs(tmp_path).iloc[0]
    assert (row["ce_val_pick"], row["ce_val_epoch"]) == (66.0, 2)
    assert (row["bkd_switch"], row["bkd_switch_epoch"]) == (70.0, 2)  # the last epoch of phase 1, from 1


def test_a_run_without_a_tipping_point_is_all_phase_1(tmp_path):
    run = _run(tmp_path, "clean", 0, found_at=None)
    _curves(run, "bkd", test_acc=[60.0, 70.0, 72.0, 75.0])
    row = ablation_runs(tmp_path).iloc[0]
    assert (row["bkd_switch"], row["bkd_switch_epoch"]) == (75.0, 4)
    assert np.isnan(row["ce_val_pick"])  # the cross-entropy run has no curves


def test_verdicts_per_split_and_alternative(tmp_path):
    # worst: BKD 75 against a validation pick near 66 on every seed (beats); aggre: level with it (ties);
    # clean: the switch is better than BKD's last epoch (loses)
    for seed in range(3):
        run = _run(tmp_path, "worst", seed, bkd_test=[60.0, 70.0, 72.0, 75.0 + 0.1 * seed])
        _curves(run, "ce", test_acc=[61.0, 66.0 + 0.2 * seed, 64.0, 62.0], val_acc=[40.0, 45.0, 44.0, 43.0])
        run = _run(tmp_path, "aggre", seed, bkd_test=[60.0, 70.0, 72.0, 66.0 + [0.3, -0.2, 0.0][seed]])
        _curves(run, "ce", test_acc=[61.0, 66.0, 64.0, 62.0], val_acc=[40.0, 45.0, 44.0, 43.0])
        run = _run(tmp_path, "clean", seed, bkd_test=[60.0, 78.0 + 0.1 * seed, 72.0, 75.0], found_at=1)
        _curves(run, "bkd", test_acc=[60.0, 78.0 + 0.1 * seed, 72.0, 75.0])
    runs = ablation_runs(tmp_path)
    assert list(dict.fromkeys(runs["split"])) == ["clean", "aggre", "worst"]  # CIFAR-N order
    verdicts = ablation_verdicts(runs)
    assert verdicts["ce_val_pick"] == {"aggre": "ties", "worst": "beats"}
    assert verdicts["bkd_switch"] == {"clean": "loses"}
    summary = ablation_summary(runs)
    assert list(summary["column"][:5]) == ["bkd_last", *ALTERNATIVES]
    worst = summary[summary["split"] == "worst"].set_index("column")
    assert worst.loc["bkd_last", "verdict"] == "" and worst.loc["ce_val_pick", "verdict"] == "beats"
    assert worst.loc["ce_val_pick", "mean"] == pytest.approx(66.2) and worst.loc["ce_val_pick", "seeds"] == 3
    assert worst.loc["bkd_switch", "seeds"] == 0 and np.isnan(worst.loc["bkd_switch", "mean"])


def test_an_empty_folder_has_no_runs_and_no_verdicts(tmp_path):
    runs = ablation_runs(tmp_path / "nothing")
    assert len(runs) == 0 and list(runs.columns) == list(COLUMNS)
    assert ablation_verdicts(runs) == {column: {} for column in ALTERNATIVES}
    assert len(ablation_summary(runs)) == 0


@pytest.mark.skipif(not (FEATURES / "summary.json").is_file(), reason="the committed features batch is not here")
def test_the_committed_features_batch():
    from bkd_core.batch import BatchFolder

    runs = ablation_runs(FEATURES)
    assert len(runs) == 18 and set(runs["split"]) == {"clean", "aggre", "rand1", "rand2", "rand3", "worst"}
    assert (runs["ce_best"] >= runs["ce_last"]).all()  # the best test epoch is at least the last one
    table = BatchFolder(FEATURES).results_table()
    # the last-epoch verdict is the results chapter's
    assert ablation_verdicts(runs, ["ce_last"])["ce_last"] == split_verdicts(table, "bkd", "ce", "test_acc")


def test_the_validation_pick_is_among_the_epochs_with_a_test_accuracy(tmp_path):
    # the paper profile tests every 10th epoch: the best noisy-validation epoch without a test accuracy is passed over
    run = _run(tmp_path, "worst", 0)
    _curves(run, "ce", test_acc=[61.0, None, 64.0, 62.0], val_acc=[40.0, 46.0, 45.0, None])
    row = ablation_runs(tmp_path).iloc[0]
    assert (row["ce_val_pick"], row["ce_val_epoch"]) == (64.0, 3)


def test_a_damaged_curves_file_is_named_not_read_as_missing(tmp_path):
    from bkd_core.errors import DamagedFileError

    run = _run(tmp_path, "worst", 0)
    _curves(run, "bkd", test_acc=[60.0, 70.0, 72.0, 75.0])
    atomic_write_json(run / "ce" / "curves.json", {"epoch": [1.0, 2.0], "test_acc": [61.0, 66.0], "val_acc": [40.0]})
    with pytest.raises(DamagedFileError, match=r"ce/curves.json: the curve val_acc is not a list of 2 values"):
        ablation_runs(tmp_path)


def test_the_figure_shows_the_series_that_have_values(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book.plots import plot_ablations

    for seed in range(2):
        _run(tmp_path / "recorded", "worst", seed)
        _run(tmp_path / "recorded", "aggre", seed)
        run = _run(tmp_path / "curves", "worst", seed)
        _curves(run, "ce", test_acc=[61.0, 66.0, 64.0, 62.0], val_acc=[40.0, 45.0, 44.0, 43.0])
        _curves(run, "bkd", test_acc=[60.0, 70.0, 72.0, 75.0])
    try:
        for folder, series in (("recorded", 3), ("curves", 5)):
            fig = plot_ablations(ablation_summary(ablation_runs(tmp_path / folder)))
            (ax,) = fig.axes
            assert ax.get_xlabel() and ax.get_ylabel()
            labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
            assert len(labels) == series and labels[0] == "BKD, last epoch", labels
            if folder == "recorded":
                assert [t.get_text() for t in ax.get_xticklabels()] == ["aggre", "worst"]  # CIFAR-N order
    finally:
        plt.close("all")


def test_the_figure_adds_one_runs_values_where_the_batch_has_none(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book.plots import plot_ablations

    for seed in range(2):
        _run(tmp_path, "worst", seed)
    summary = ablation_summary(ablation_runs(tmp_path))
    try:
        fig = plot_ablations(summary, run={"ce_val_pick": 66.0, "bkd_switch": float("nan")}, run_split="worst",
                             run_label="seed 0")
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert "CE, best noisy-validation epoch, seed 0" in labels and len(labels) == 4  # no NaN entry
        fig = plot_ablations(summary, run={"ce_val_pick": 66.0}, run_split="clean")  # a split the batch lacks
        assert len([t for legend in fig.legends for t in legend.get_texts()]) == 3
    finally:
        plt.close("all")


def _bkd_run(folder: Path, split: str, seed: int, **bkd) -> None:
    atomic_write_json(folder / f"cifar10-{split}-seed{seed}" / "metrics.json",
                      {"dataset": "cifar10", "split": split, "seed": seed, "methods": {"bkd": bkd}})


def _blindness_batches(folder: Path) -> tuple[Path, Path]:
    """A blind batch and a sees-the-label batch: `worst` with two seeds, `clean` with one, no `aggre`."""
    blind, sees = folder / "blind", folder / "sees"
    for seed, (f1, f1_sees) in enumerate([(0.68, 0.32), (0.70, 0.35)]):
        _bkd_run(blind, "worst", seed, detection_f1=f1, estimated_noise_rate=0.45, tipping_epoch=3,
                 test_acc=70.0 + seed, true_noise_rate=0.4, flag_all_f1=0.57)
        _bkd_run(sees, "worst", seed, detection_f1=f1_sees, estimated_noise_rate=0.2, tipping_epoch=24,
                 test_acc=70.5 + seed, true_noise_rate=0.4, flag_all_f1=0.57)
    _bkd_run(blind, "clean", 0, detection_f1=0.0, estimated_noise_rate=0.16, tipping_epoch=8, test_acc=77.0,
             true_noise_rate=0.0, flag_all_f1=0.0)
    _bkd_run(sees, "clean", 0, detection_f1=0.0, estimated_noise_rate=0.05, tipping_epoch=13, test_acc=78.0,
             true_noise_rate=0.0, flag_all_f1=0.0)
    return blind, sees


def test_blindness_pairs_the_runs_of_two_batches_by_split_and_seed(tmp_path):
    from bkd_core.book.ablations import BLINDNESS_MEASURES, blindness_runs, blindness_summary

    blind, sees = _blindness_batches(tmp_path)
    _bkd_run(sees, "clean", 0, detection_f1=0.0, estimated_noise_rate=0.05, tipping_epoch=None, test_acc=78.0,
             true_noise_rate=0.0)  # a run records F1 0 where nothing is wrong: there is no F1 to compare
    _bkd_run(blind, "aggre", 0, detection_f1=0.5, estimated_noise_rate=0.2, tipping_epoch=4, test_acc=76.0)  # no pair
    runs = blindness_runs(blind, sees)
    assert list(zip(runs["split"], runs["seed"])) == [("clean", 0), ("worst", 0), ("worst", 1)]  # CIFAR-N order
    worst = runs[runs["split"] == "worst"]
    assert worst["g4_f1"].tolist() == pytest.approx([68.0, 70.0]) and worst["g4_f1_sees"].tolist() == pytest.approx(
        [32.0, 35.0])
    assert worst["noise_estimate_sees"].tolist() == pytest.approx([20.0, 20.0]) and (worst["true_noise"] == 40.0).all()
    assert worst["tipping_epoch"].tolist() == [4.0, 4.0]  # counted from 1, as the book counts
    clean = runs[runs["split"] == "clean"].iloc[0]
    assert np.isnan(clean["g4_f1"]) and np.isnan(clean["tipping_epoch_sees"]) and clean["test_acc_sees"] == 78.0
    summary = blindness_summary(runs).set_index(["split", "measure"])
    assert set(summary.loc["worst"].index) == set(BLINDNESS_MEASURES)
    assert summary.loc[("worst", "g4_f1"), "verdict"] == "beats"  # 69 against 33.5, every seed
    assert summary.loc[("worst", "test_acc"), "verdict"] == "ties"  # 0.5 apart, inside the seeds' spread
    assert summary.loc[("worst", "noise_estimate"), "verdict"] == ""  # not a higher-is-better measure
    assert summary.loc[("clean", "g4_f1"), "seeds"] == 0 and summary.loc[("clean", "test_acc"), "verdict"] == ""
    assert len(blindness_runs(blind, tmp_path / "nothing")) == 0 and len(blindness_summary(blindness_runs(
        blind, tmp_path / "nothing"))) == 0


def test_the_blindness_figure_shows_each_seed_the_spread_and_the_verdict(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book.ablations import BLINDNESS_MEASURES, blindness_runs, blindness_summary
    from bkd_core.book.plots import BLINDNESS_SERIES, plot_blindness

    runs = blindness_runs(*_blindness_batches(tmp_path))
    try:
        fig = plot_blindness(runs, summary=blindness_summary(runs), splits=["clean", "aggre", "worst"])
        panels = {ax.get_ylabel(): ax for ax in fig.axes}
        assert len(fig.axes) == len(BLINDNESS_MEASURES) == 4
        f1, accuracy = panels["detection F1 of the G4 mask (%)"], panels["test accuracy, last epoch (%)"]
        # under each split the blind student's verdict: two seeds judged, one seed said as such, a missing split bare
        assert [t.get_text() for t in f1.get_xticklabels()] == ["clean", "aggre", "worst\nbeats"]
        assert [t.get_text() for t in accuracy.get_xticklabels()] == ["clean\n1 seed", "aggre", "worst\nties"]
        assert {"no wrong label", "not here yet"} <= {t.get_text() for t in f1.texts}
        # one dot per seed and student: no F1 on clean, the two seeds of worst for each student
        dots = [len(c.get_offsets()) for c in f1.collections if c.get_label() in
                {label for label, _, _ in BLINDNESS_SERIES.values()}]
        assert dots == [2, 2]
        assert sorted(len(c.get_offsets()) for c in accuracy.collections if c.get_label() in
                      {label for label, _, _ in BLINDNESS_SERIES.values()}) == [1, 1, 2, 2]
        # the spread: one error bar per student where there are two seeds (worst), none for clean's one seed
        assert len([c for c in accuracy.containers if len(c.lines[2])]) == 2
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert {"blind student (BKD)", "student sees the label (plain distillation)", "true noise rate",
                "flag every image (F1 floor)"} <= set(labels)
        assert len(plot_blindness(runs, measures=["test_acc"]).axes) == 1  # the splits of the runs alone
        assert len(plot_blindness(runs, measures=["g4_f1", "noise_estimate", "test_acc"]).axes) == 3
        with pytest.raises(ValueError, match="choose measures among"):
            plot_blindness(runs, measures=["accuracy"])
        assert len(plot_blindness(runs.iloc[:0]).axes) == 4  # no pair of runs yet: empty panels, no error
    finally:
        plt.close("all")


def test_the_blindness_text_says_verdicts_over_seeds_and_numbers_of_one_seed(tmp_path):
    from bkd_core.book.ablations import blindness_runs, blindness_text
    from bkd_core.book.verdict import ONE_SEED

    runs = blindness_runs(*_blindness_batches(tmp_path))
    text = blindness_text(runs)
    # worst (two seeds) judged: F1 69 against 33.5 on every seed beats; accuracy 0.5 apart ties (inside the spread)
    assert text.startswith("As a detector (G4 F1), BKD's blind student against the one that sees the label beats on "
                           "1 (worst: 69.0 against 33.5); in test accuracy it ties on 1 (worst: 70.5 against 71.0) and "
                           f"reads 77.0 against 78.0 on clean ({ONE_SEED})."), text
    # a win as a detector and no win in accuracy (a tie): the blindness makes the detector, not the accuracy
    assert "The blindness is what makes BKD a detector, not what makes it accurate." in text
    assert "the noise estimate is 16.0% against 5.0% on clean (true 0.0%), 45.0% against 20.0% on worst (true 40.0%)" \
        in text and "the tipping point falls in epoch 9.0 against 14.0 on clean, 4.0 against 25.0 on worst" in text
    higher = blindness_text(runs.assign(test_acc=runs["test_acc"] + 5.0))
    assert "in test accuracy it beats on 1" in higher and "The blindness makes BKD both a detector and more " \
        "accurate." in higher
    tie = blindness_text(runs.assign(g4_f1_sees=runs["g4_f1"] - 0.1))  # as a detector too: no finding
    assert "ties on 1 (worst: 69.0 against 68.9)" in tie and "The blindness" not in tie
    one_seed = blindness_text(runs[runs["seed"] == 0])
    assert "beats" not in one_seed and "ties" not in one_seed and "The blindness" not in one_seed
    assert one_seed.startswith("As a detector (G4 F1), BKD's blind student against the one that sees the label reads "
                               f"68.0 against 32.0 on worst ({ONE_SEED}); in test accuracy it reads 77.0 against 78.0 "
                               f"on clean, 70.0 against 70.5 on worst ({ONE_SEED})."), one_seed
    assert blindness_text(runs.iloc[:0]) == ""
