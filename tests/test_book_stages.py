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


# -- runs of a second command into the same folder: BKD alone, stopped right after its detection ------------------

def _full_and_stopped_batch(tmp_path):
    """A batch folder as two ``reproduce`` commands leave it: worst with every method (2 folds, the batch's options),
    and rand1 from ``--methods bkd --set stop_after_detection=true`` (3 folds recorded, no confident learning)."""
    from bkd_core.batch import BatchFolder

    folder = tmp_path / "batch"
    atomic_write_json(folder / "summary.json", {"options": {"profile": "cnn", "folds": 2, "overrides": {},
                                                            "methods": ["bkd", "ce", "cleanlab"]},
                                                "runs": [{"name": "cifar10-worst-seed0", "status": "done"}]})
    worst = {m: {**_method(folder, "cifar10-worst-seed0", m, "worst", stopped_by="epochs", test_acc=78.0),
                 "ranking_auc": 0.9} for m in ("bkd", "ce", "cleanlab")}
    atomic_write_json(folder / "cifar10-worst-seed0" / "metrics.json", {
        "dataset": "cifar10", "split": "worst", "seed": 0, "profile": "cnn", "config": CONFIG, "folds": 2,
        "methods": worst})
    stopped_config = {**CONFIG, "stop_after_detection": True}
    bkd = _method(folder, "cifar10-rand1-seed0", "bkd", "rand1", stopped_by="detection", true_noise_rate=0.17,
                  estimated_noise_rate=0.31, detection_f1=0.756, flag_all_f1=0.294, test_acc=84.4, best_test_acc=84.9)
    atomic_write_json(folder / "cifar10-rand1-seed0" / "bkd" / "config.json",
                      {"config": stopped_config, "identity": {"kind": "bkd"}})
    atomic_write_json(folder / "cifar10-rand1-seed0" / "metrics.json", {
        "dataset": "cifar10", "split": "rand1", "seed": 0, "profile": "cnn", "config": stopped_config, "folds": 3,
        "methods": {"bkd": {**bkd, "ranking_auc": 0.955}}})
    BatchFolder(folder).write_results()  # what the batch's table holds once the second command's run is copied in
    return folder


def test_a_run_stopped_at_its_detection_is_the_full_runs_configuration_without_its_test_accuracy(tmp_path):
    from bkd_core.batch import BatchFolder
    from bkd_core.book import plots, verdict

    folder = _full_and_stopped_batch(tmp_path)
    table = results.collect_stages(folder)
    assert table["configuration"].nunique() == 1 and table["configuration"].iloc[0].endswith("-folds2")
    rand1 = table[table["split"] == "rand1"].iloc[0]
    assert rand1["stopped_by"] == "detection" and pd.isna(rand1["test_acc"]) and pd.isna(rand1["best_test_acc"])
    assert rand1["detection_f1"] == 0.756 and rand1["estimated_noise_rate"] == 0.31 and rand1["ranking_auc"] == 0.955
    assert table.loc[table["split"] == "worst", "test_acc"].tolist() == [78.0, 78.0, 78.0]  # full runs keep theirs
    written = pd.read_csv(folder / "results.csv")
    assert pd.isna(written.loc[written["split"] == "rand1", "test_acc"]).all()
    assert BatchFolder(folder).problems() == []  # the masked cells are no sign of an edit
    # chapter 07's cnn section: one configuration, so its means, table and figures read the batch
    summary = results.summarize(table)
    assert results.mean_of(summary, "rand1", "bkd", "detection_f1") == 0.756
    assert math.isnan(results.mean_of(summary, "rand1", "bkd", "test_acc"))  # never its accuracy at detection
    shown = results.split_table(summary)
    assert shown.loc["BKD test accuracy, last epoch (%)"].tolist() == ["stopped at detection", "78.0"]  # rand1, worst
    assert shown.loc["BKD test accuracy, best epoch (%, optimistic)", "rand1"] == "stopped at detection"
    assert shown.loc["BKD F1, G4 (%)", "rand1"] == "75.6" and shown.loc["CE F1, prediction differs (%)", "rand1"] == "–"
    assert results.stopped_text(table).startswith("Stopped at detection: BKD on rand1 (seed 0) ended right after its "
                                                  "detection")
    assert results.stopped_text(table[table["split"] == "worst"]) == ""
    assert results.estimate_errors(table)["split"].tolist() == ["worst"]  # no last-epoch accuracy to plot it at
    found = verdict.claim_findings(table)
    assert "rand1" not in found["robust"] and "84.4" not in " ".join(found.values())
    assert "Fires in 2 of 2 runs" in found["tipping"]
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    plots.plot_detection_by_batch({"cnn": table})
    plots.plot_estimate_error_vs_accuracy({"cnn": table})


def test_a_stage_of_some_seeds_stopped_at_detection_averages_the_others_and_says_so(tmp_path):
    folder = _full_and_stopped_batch(tmp_path)
    table = results.collect_results(folder)
    seed1 = table[table["split"] == "worst"].assign(run="cifar10-worst-seed1", seed=1, test_acc=float("nan"),
                                                    best_test_acc=float("nan"), stopped_by="detection")
    summary = results.summarize(pd.concat([table, seed1], ignore_index=True))
    worst = summary[(summary["split"] == "worst") & (summary["method"] == "bkd")].iloc[0]
    assert worst["seeds"] == 2 and worst["stopped_at_detection"] == 1 and worst["test_acc_mean"] == 78.0
    assert results.split_table(summary).loc["BKD test accuracy, last epoch (%)", "worst"] == (
        "78.0 (1 of 2 stopped at detection)")


def test_the_results_command_says_which_run_stopped_at_its_detection(tmp_path, capsys):
    from bkd_core.cli import main

    assert main(["results", str(_full_and_stopped_batch(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert out.count("mean ± std over seeds") == 1  # one configuration: one table
    assert "| BKD test accuracy, last epoch (%) | stopped at detection | 78.0 |" in out
    assert "84.4" not in out and "84.9" not in out
    assert "Stopped at detection: BKD on rand1 (seed 0)" in out and err == ""


def test_stages_text_never_says_a_method_is_missing_where_it_is_not_planned(tmp_path):
    table = results.collect_stages(_batch(tmp_path))
    plan = {"bkd": ("clean", "aggre", "worst"), "ce": ("clean",), "cleanlab": ("clean",)}
    assert results.stages_text(table, splits=("clean", "aggre", "worst"), plan=plan, batch="the test batch") == (
        "In the test batch so far: BKD on clean and worst; cross-entropy on clean. Not here yet: BKD on aggre; "
        "confident learning on clean.")
