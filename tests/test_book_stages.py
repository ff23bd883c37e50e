"""A batch read stage by stage while it runs (bkd_core.book.results.collect_stages, stages_text, peak_fall,
peak_falls): the methods finished in runs that have not finished yet count, with the configuration of the finished
runs, and nothing else."""

from __future__ import annotations

import math

import pytest

pd = pytest.importorskip("pandas")  # a book package

from bkd_core.book import results  # noqa: E402
from bkd_core.config import get_profile  # noqa: E402
from bkd_core.errors import DamagedFileError  # noqa: E402
from bkd_core.io import atomic_write_json  # noqa: E402

CONFIG = get_profile("cnn", seed=0, epochs=3).to_dict()


def _method(folder, run, method, split, **extra):
    """A method's own metrics.json and config.json, as the trainer writes them when it finishes."""
    metrics = {"kind": method, "dataset": "cifar10", "split": split, "profile": "cnn", "seed": 0,
               "true_noise_rate": 0.4, "estimated_noise_rate": 0.5, "detection_f1": 0.7, "flag_all_f1": 0.57,
               "test_acc": 70.0, "best_test_acc": 71.0, "tipping_epoch": 2, "tipping_rule": "peak",
               "wall_time_s": 60.0, "device": "cpu", **extra}
    atomic_write_json(folder / run / method / "metrics.json", metrics)
    atomic_write_json(folder / run / method / "config.json", {"config": CONFIG, "identity": {"kind": method}})
    return metrics


def _batch(tmp_path):
    folder = tmp_path / "batch"
    metrics = {m: {**_method(folder, "cifar10-clean-seed0", m, "clean"), "ranking_auc": None} for m in ("bkd", "ce")}
    atomic_write_json(folder / "cifar10-clean-seed0" / "metrics.json", {  # a finished run, with its run metrics
        "dataset": "cifar10", "split": "clean", "seed": 0, "profile": "cnn", "config": CONFIG, "folds": 2,
        "methods": metrics})
    _method(folder, "cifar10-worst-seed0", "bkd", "worst")  # a partial run: BKD done, cross-entropy training
    (folder / "cifar10-worst-seed0" / "ce").mkdir()
    _method(folder, "cifar10-aggre-seed0", "bkd", "aggre", stopped_by="deadline")  # goes on at the next batch
    return folder


def test_a_partial_run_shows_its_finished_methods_with_the_finished_runs_configuration(tmp_path):
    folder = _batch(tmp_path)
    assert len(results.collect_results(folder)) == 2  # the finished run alone
    table = results.collect_stages(folder)
    assert list(zip(table["run"], table["method"])) == [("cifar10-clean-seed0", "bkd"), ("cifar10-clean-seed0", "ce"),
                                                        ("cifar10-worst-seed0", "bkd")]
    assert list(table.columns) == list(results.COLUMNS)
    assert table["configuration"].nunique() == 1 and table["configuration"].iloc[0].endswith("-folds2")
    partial = table.iloc[2]
    assert partial["split"] == "worst" and partial["estimated_noise_rate"] == 0.5 and pd.isna(partial["ranking_auc"])
    shown = results.split_table(results.summarize(table))  # one configuration: one table, both splits
    assert list(shown.columns) == ["clean", "worst"] and shown.loc["BKD F1, G4 (%)", "worst"] == "70.0"
    assert shown.loc["CE test accuracy, last epoch (%)", "worst"] == "–"  # not here yet


def test_stages_text_says_what_is_here_and_what_is_not(tmp_path):
    table = results.collect_stages(_batch(tmp_path))
    assert results.stages_text(table, splits=("clean", "aggre", "worst"), batch="the test batch") == (
        "In the test batch so far: BKD on clean and worst; cross-entropy on clean. Not here yet: BKD on aggre; "
        "cross-entropy on aggre and worst; confident learning on every split.")
    assert results.stages_text(table.iloc[:0], splits=("clean",)) == "Nothing of this batch is here yet."
    assert results.stages_text(table, splits=("clean",), methods=("bkd", "ce")) == (
        "In this batch: every method on every split.")


def test_collect_stages_of_a_missing_folder_is_empty_and_a_damaged_method_is_named(tmp_path):
    assert results.collect_stages(tmp_path / "nothing").empty
    folder = _batch(tmp_path)
    (folder / "cifar10-worst-seed0" / "bkd" / "config.json").write_text('{"identity": {}}')
    with pytest.raises(DamagedFileError, match="cifar10-worst-seed0/bkd"):
        results.collect_stages(folder)


def test_peak_fall_is_the_drop_after_the_tipping_epoch_before_phase_2():
    curves = {"mean_max_student": [0.40, 0.45, 0.46, 0.455, 0.452, 0.80, 0.70], "phase": [1, 1, 1, 1, 1, 2, 2]}
    assert results.peak_fall(curves, 2) == pytest.approx(0.46 - 0.452)  # phase 2's values do not count
    assert results.peak_fall({"mean_max_student": [0.4, 0.5, 0.3]}, 1) == pytest.approx(0.2)  # no phase: all phase 1
    assert math.isnan(results.peak_fall(curves, None)) and math.isnan(results.peak_fall(curves, 4))
    assert math.isnan(results.peak_fall(None, 1))
    import numpy as np  # what BatchFolder.method_curves returns: float arrays, the same answer
    arrays = {key: np.asarray(value, dtype=np.float64) for key, value in curves.items()}
    assert results.peak_fall(arrays, 2) == pytest.approx(0.46 - 0.452)


def test_peak_falls_are_each_splits_fall_read_from_its_bkd_curves(tmp_path):
    folder = _batch(tmp_path)
    atomic_write_json(folder / "cifar10-worst-seed0" / "bkd" / "curves.json",
                      {"epoch": [1, 2, 3, 4, 5], "mean_max_student": [0.40, 0.45, 0.46, 0.455, 0.452]})
    table = results.collect_stages(folder)
    falls = results.peak_falls(folder, table)
    assert list(falls) == ["clean", "worst"] and math.isnan(falls["clean"])  # the clean run has no curves
    assert falls["worst"] == pytest.approx(0.46 - 0.452)
    # a second seed of worst that falls further: the split's fall is the largest, so "falls at most" stays true
    second = table[(table["run"] == "cifar10-worst-seed0")].assign(run="cifar10-worst-seed1", seed=1)
    _method(folder, "cifar10-worst-seed1", "bkd", "worst")
    atomic_write_json(folder / "cifar10-worst-seed1" / "bkd" / "curves.json",
                      {"epoch": [1, 2, 3, 4], "mean_max_student": [0.40, 0.45, 0.46, 0.40]})
    assert results.peak_falls(folder, pd.concat([table, second]))["worst"] == pytest.approx(0.06)
    assert results.peak_falls(folder, table.assign(tipping_epoch=float("nan"))) == {}  # no tipping point, no fall
    assert results.peak_falls(tmp_path / "nowhere", table.iloc[:0]) == {}


def test_estimate_errors_are_signed_and_absolute():
    table = pd.DataFrame([{"run": "a", "split": "worst", "seed": 0, "method": "bkd", "true_noise_rate": 0.4,
                           "estimated_noise_rate": 0.35, "test_acc": 70.0}])
    errors = results.estimate_errors(table)
    assert errors["signed_error"].tolist() == pytest.approx([-5.0]) and errors["error"].tolist() == pytest.approx([5.0])
    assert list(results.estimate_errors(table.iloc[:0]).columns)[-1] == "signed_error"


def test_the_results_command_prints_a_partial_batch_and_names_its_unfinished_runs(tmp_path, capsys):
    from bkd_core.cli import main

    assert main(["results", str(_batch(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert "| mean ± std over seeds | clean | worst |" in out  # the partial run's finished BKD is a column
    assert "1 run(s) have not finished every method yet (cifar10-worst-seed0)" in err
    assert "aggre" not in out  # a method stopped by its deadline is not a result
