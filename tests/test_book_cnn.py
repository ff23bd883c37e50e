"""The `cnn` profile's committed evidence as the chapters read it (bkd_core.book.cnn): the diagnostic runs, checked
field by field, and the reproduction batch, missing, partial or finished, built by hand in tmp_path (no training)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")  # a book package

from bkd_core.batch.folder import METHOD_CURVES, METHOD_TIPPING_SCORES, METRICS, SUMMARY  # noqa: E402
from bkd_core.book import cnn  # noqa: E402
from bkd_core.errors import DamagedFileError  # noqa: E402
from bkd_core.io import atomic_save_npz, atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / cnn.DIAGNOSTICS


def test_the_committed_diagnostics_read_as_the_profiles_notes_describe_them():
    """Official protocol on worst: the rule fires at epoch 22 on a plateau (the curve falls by less than 0.001 in the
    next 5 epochs); without augmentation at epoch 8 on a real turn (more than 0.02); CE on clean labels ends above
    90% test accuracy."""
    found = cnn.diagnostics()
    assert found is not None and found.folder == COMMITTED
    official, no_aug, aggre = (found.run(n) for n in (cnn.OFFICIAL, cnn.NO_AUGMENT, cnn.NO_AUGMENT_AGGRE))
    assert (official.augment, no_aug.augment, aggre.augment) == (True, False, False)
    assert (official.tipping, no_aug.tipping, aggre.tipping) == (21, 7, 6)
    assert official.detection["fall_within_5"] < 0.001 < 0.02 < no_aug.detection["fall_within_5"]
    assert official.epochs == 40 and official.best_auc_epoch == 33  # the plateau: best 12 epochs after the rule
    assert (no_aug.best_auc_epoch, aggre.best_auc_epoch) == (10, 6)  # the turn: at or 3 epochs after the rule
    assert 0 <= official.curves["fit_mislabelled"].min() and official.curves["fit_mislabelled"].max() < 0.2
    assert no_aug.curves["fit_mislabelled"][-1] > 0.4  # memorizes without augmentation
    assert found.ce_clean["test_acc"][-1] > 90
    with pytest.raises(KeyError, match="off-worst"):
        found.run("no-such-run")


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "cnn-diagnostics"
    shutil.copytree(COMMITTED, folder)
    return folder


def _edit_runs(folder: Path, change) -> None:
    path = folder / cnn.PHASE1_RUNS
    runs = json.loads(path.read_text())
    change(runs)
    path.write_text(json.dumps(runs))


def _bump_peak(runs):  # a curve the recorded tipping epoch is no longer the rule's peak of
    runs[0]["curves"]["mean_max_student"][5] = 0.9


def _nan_value(runs):
    runs[1]["curves"]["test_acc"][2] = "71.5"


MALFORMED = {
    "not a list": (lambda runs: runs.clear(), "not a list of runs"),
    "a run without curves": (lambda runs: runs[0].pop("curves"), "lacks curves"),
    "a curve missing": (lambda runs: runs[1]["curves"].pop("fit_mislabelled"), "lacks the curves fit_mislabelled"),
    "a curve too short": (lambda runs: runs[2]["curves"]["agreement_auc"].pop(), "agreement_auc is not a list of 16"),
    "a value as text": (_nan_value, "neither a finite number nor null"),
    "a tipping epoch the curve does not have": (_bump_peak, "the official rule (window 2) finds 5"),
    "a tipping epoch out of range": (lambda runs: runs[1].update(tipping_epoch=99), "is not an epoch of its 16"),
    "a detection number missing": (lambda runs: runs[0].pop("g4_f1"), "lacks g4_f1"),
    "a detection number as text": (lambda runs: runs[0].update(g4_f1="0.77"), "g4_f1 '0.77' is not a finite number"),
    "a setting of the wrong kind": (lambda runs: runs[1].update(augment="no"), "augment 'no' is not true or false"),
    "a fall that is not the curve's": (lambda runs: runs[0].update(fall_within_5=0.03), "fall_within_5 0.03"),
    "a wrong best epoch": (lambda runs: runs[0].update(best_auc_epoch=3), "best_auc_epoch 3"),
    "two runs of one name": (lambda runs: runs.append(copy.deepcopy(runs[0])), "two runs are called 'off-worst'"),
    "epochs that do not count from 1": (lambda runs: runs[2]["curves"]["epoch"].reverse(), "is not 1, 2, ..."),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_diagnostics_file_is_one_sentence_naming_it(tmp_path, case):
    change, expected = MALFORMED[case]
    folder = _copy(tmp_path)
    _edit_runs(folder, change)
    with pytest.raises(DamagedFileError) as info:
        cnn.read_diagnostics(folder)
    message = str(info.value)
    assert str(folder / cnn.PHASE1_RUNS) in message and expected in message, message
    assert "\n" not in message and "git checkout" in message


def test_damaged_json_and_a_missing_file_are_named(tmp_path):
    folder = _copy(tmp_path)
    (folder / cnn.CE_CLEAN).write_text('{"epoch": [1.0], "test_acc": [90.8]}')
    with pytest.raises(DamagedFileError, match=r"ce_clean_curves.json: the file lacks the curves val_acc, fit_clean"):
        cnn.read_diagnostics(folder)
    (folder / cnn.PHASE1_RUNS).write_text("[{")
    with pytest.raises(DamagedFileError, match="phase1_runs.json is not valid JSON"):
        cnn.read_diagnostics(folder)
    (folder / cnn.PHASE1_RUNS).unlink()
    with pytest.raises(FileNotFoundError):
        cnn.read_diagnostics(folder)


def test_diagnostics_outside_the_repository_are_none(tmp_path):
    assert cnn.diagnostics(tmp_path / "nowhere") is None


# ----------------------------------------------------------------------------------------------
# The batch: built by hand
# ----------------------------------------------------------------------------------------------

PLANNED = ("cifar10-clean-seed0", "cifar10-aggre-seed0", "cifar10-worst-seed0")
RAND = ("cifar10-rand1-seed0", "cifar10-rand2-seed0", "cifar10-rand3-seed0")  # BKD alone, stopped at detection
METHODS = ("bkd", "ce", "cleanlab")


def _summary(folder: Path, statuses: dict[str, str]) -> None:
    atomic_write_json(folder / SUMMARY, {
        "options": {"profile": "cnn", "methods": list(METHODS), "folds": 2},
        "runs": [{"name": n, "status": s, "seconds": 0.0, "reason": ""} for n, s in statuses.items()]})


def _finished_run(folder: Path, name: str, methods=METHODS, *, tipping=True) -> None:
    """A finished run of the batch as reproduce writes it (metrics, BKD's curves and tipping scores), by hand."""
    from bkd_core.config import get_profile

    split = name.split("-")[1]
    config = get_profile("cnn", seed=0, epochs=3)
    metrics = {m: {"detection_f1": 0.6, "estimated_noise_rate": 0.45, "true_noise_rate": 0.4, "test_acc": 70.0,
                   "ranking_auc": 0.9, "tipping_epoch": 1 if m == "bkd" else None,
                   "tipping_rule": "peak" if m == "bkd" else None, "wall_time_s": 60.0, "device": "cpu"}
               for m in methods}
    atomic_write_json(folder / name / METRICS, {
        "dataset": "cifar10", "split": split, "seed": 0, "profile": "cnn", "config": config.to_dict(), "folds": 2,
        "methods": metrics})
    curves = {"epoch": [1.0, 2.0, 3.0], "mean_max_student": [0.2, 0.3, 0.25], "agreement_auc": [0.8, 0.9, None]}
    atomic_write_json(folder / name / "bkd" / METHOD_CURVES, curves)
    if tipping:
        truth = np.arange(10) % 3 == 0
        atomic_save_npz(folder / name / "bkd" / METHOD_TIPPING_SCORES,
                        agreement=np.linspace(0, 1, 10).astype(np.float16), is_noisy=np.packbits(truth),
                        num_samples=np.int64(10))


def test_a_missing_batch_is_a_state_not_an_error(tmp_path):
    state = cnn.batch_state(tmp_path / "cnn")
    assert state.folder is None and not state.complete and not state.finished
    assert state.text() == "The cnn batch is not here yet: none of its runs has finished."
    assert state.results_table().empty
    assert state.curves("worst") is None and state.tipping_scores("worst") is None


def test_a_batch_that_has_started_but_finished_nothing_says_so(tmp_path):
    folder = tmp_path / "cnn"
    folder.mkdir()
    assert cnn.batch_state(folder).text() == "The cnn batch is not here yet: none of its runs has finished."
    _summary(folder, {n: "pending" for n in PLANNED})
    (folder / "cifar10-clean-seed0" / "bkd").mkdir(parents=True)  # training: no metrics yet
    state = cnn.batch_state(folder)  # the plan adds BKD's rand1-3 runs, which a second command trains
    assert state.planned == PLANNED + RAND and state.finished == ()
    assert state.text() == "The cnn batch is not finished yet: 0 of 6 runs."
    assert cnn.batch_state(folder, plan=None).planned == PLANNED


def test_a_partial_batch_shows_its_finished_runs_and_counts_the_rest(tmp_path):
    folder = tmp_path / "cnn"
    _summary(folder, {"cifar10-clean-seed0": "done", "cifar10-aggre-seed0": "failed", "cifar10-worst-seed0": "pending"})
    _finished_run(folder, "cifar10-clean-seed0")
    _finished_run(folder, "cifar10-worst-seed0", methods=("bkd", "ce"))  # cleanlab still training: not finished
    state = cnn.batch_state(folder)
    assert state.finished == ("cifar10-clean-seed0",) and state.failed == ("cifar10-aggre-seed0",)
    assert not state.complete
    assert state.text() == ("The cnn batch is not finished yet: 1 of 6 runs (cifar10-clean-seed0); "
                            "failed: cifar10-aggre-seed0.")
    table = state.results_table()
    assert set(table["run"]) == {"cifar10-clean-seed0"} and sorted(table["method"]) == sorted(METHODS)
    from bkd_core.book import results

    shown = results.split_table(results.summarize(table))  # what the results chapter shows of it
    assert list(shown.columns) == ["clean"]
    curves = state.curves("clean")
    np.testing.assert_allclose(curves["agreement_auc"], [0.8, 0.9, np.nan])
    scores, truth = state.tipping_scores("clean")
    assert scores.shape == truth.shape == (10,) and truth.sum() == 4
    assert state.curves("worst") is None and state.tipping_scores("worst") is None  # not finished yet
    assert state.run_of("aggre") is None
    # the detection at the finished run's tipping epoch, from its stored scores and its own Otsu settings
    found = cnn.tipping_detection(state, "clean")
    assert found.run == "cifar10-clean-seed0" and found.tipping == 1 and found.rule == "peak"
    np.testing.assert_array_equal(found.detection.below_threshold, found.scores < found.detection.split.threshold)
    text = found.text()
    assert text.startswith("In the cnn batch's run cifar10-clean-seed0, at the peak rule's tipping epoch 2, ")
    assert f"estimated noise {100 * found.detection.estimated_noise_rate:.1f}% against the true 40.0%" in text
    assert "(flagging every image: 0.571)" in text
    assert cnn.tipping_detection(state, "worst") is None and cnn.tipping_detection(state, "aggre") is None


def test_a_finished_batch_and_one_without_a_summary(tmp_path):
    folder = tmp_path / "cnn"
    _summary(folder, {n: "done" for n in PLANNED})
    for name in PLANNED:
        _finished_run(folder, name, tipping=name != "cifar10-clean-seed0")
    state = cnn.batch_state(folder, plan=None)
    assert state.complete and state.text() == "The cnn batch has finished: 3 of 3 runs."
    assert len(state.results_table()) == 9
    assert cnn.batch_state(folder).text().endswith(": 3 of 6 runs (cifar10-clean-seed0, cifar10-aggre-seed0, "
                                                   "cifar10-worst-seed0).")
    for name in RAND:  # BKD alone, as planned there, is a finished run of rand1-3
        _finished_run(folder, name, methods=("bkd",))
    state = cnn.batch_state(folder)
    assert state.complete and state.text() == "The cnn batch has finished: 6 of 6 runs."
    assert state.tipping_scores("clean") is None and state.tipping_scores("aggre") is not None
    (folder / SUMMARY).unlink()  # runs copied without their summary: each finished run is a planned one
    state = cnn.batch_state(folder)
    assert state.complete and len(state.planned) == 6


def test_a_damaged_run_of_the_batch_is_named_not_skipped(tmp_path):
    folder = tmp_path / "cnn"
    _summary(folder, {n: "done" for n in PLANNED[:1]})
    _finished_run(folder, PLANNED[0])
    atomic_write_json(folder / PLANNED[0] / "bkd" / METHOD_CURVES, {"epoch": [1.0, 2.0], "agreement_auc": [0.8]})
    with pytest.raises(DamagedFileError) as info:
        cnn.batch_state(folder).curves("clean")
    message = str(info.value)  # a batch run's file is retrained, not restored from the diagnostic runs' script
    assert METHOD_CURVES in message and "agreement_auc is not a list of 2" in message
    assert "delete the run's folder" in message and "cnn_diagnostics" not in message
    (folder / PLANNED[0] / METRICS).write_text("{")
    with pytest.raises(DamagedFileError, match=METRICS):
        cnn.batch_state(folder)


# ----------------------------------------------------------------------------------------------
# Their figures
# ----------------------------------------------------------------------------------------------


def _stars(ax):
    return [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "*"]


def test_the_figures_of_the_diagnostics_star_the_rules_epoch(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book import plots

    found = cnn.diagnostics()
    official, no_aug = found.run(cnn.OFFICIAL), found.run(cnn.NO_AUGMENT)
    flat = np.full(6, 0.5)  # no peak: a legend entry says so, no star
    fig = plots.plot_student_curves({"cnn": {"official": (official.curves["mean_max_student"], official.tipping),
                                             "no augmentation": (no_aug.curves["mean_max_student"], no_aug.tipping)},
                                     "flat": {"flat": (flat, None)}})
    cnn_ax, flat_ax = fig.axes[:2]
    assert _stars(cnn_ax) == [(22, official.curves["mean_max_student"][21]), (8, no_aug.curves["mean_max_student"][7])]
    assert not _stars(flat_ax) and all(ax.get_xlabel() and ax.get_ylabel() for ax in (cnn_ax, flat_ax))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "official: tipping point, epoch 22" in labels and "flat: no tipping point" in labels
    fig = plots.plot_auc_by_epoch({"official": (official.curves["agreement_auc"], official.tipping,
                                                official.best_auc_epoch)})
    assert _stars(fig.axes[0]) == [(22, official.curves["agreement_auc"][21])]
    assert "official: best, epoch 34" in [t.get_text() for t in fig.legends[0].get_texts()]
    fig = plots.plot_fit_by_epoch({"official": (official.curves["fit_clean"], official.curves["fit_mislabelled"])},
                                  {"CE, clean labels": found.ce_clean["test_acc"]})
    left, right = fig.axes[:2]
    assert len(left.lines) == 2 and len(right.lines) == 1
    np.testing.assert_allclose(left.lines[1].get_ydata(), 100 * official.curves["fit_mislabelled"])
    plt.close("all")


# ----------------------------------------------------------------------------------------------
# One method's stage of a run, committed before the run has finished, and the proxy beside it
# ----------------------------------------------------------------------------------------------

COMMITTED_BATCH = ROOT / cnn.BATCH
WORST = "cifar10-worst-seed0"


def _partial_batch(tmp_path: Path) -> Path:
    """The committed BKD stage of worst, seed 0, alone in a batch folder (no summary, no run metrics)."""
    folder = tmp_path / "cnn"
    shutil.copytree(COMMITTED_BATCH / WORST / "bkd", folder / WORST / "bkd")
    return folder


def test_the_committed_bkd_stage_of_worst_reads_as_its_metrics_say():
    """BKD on worst, seed 0: the peak rule fired at epoch 26 (index 25, seen at 27), 40 epochs of curves, the
    scores of all 50,000 images; the Otsu split of the stored float16 scores gives the run's own numbers."""
    state = cnn.batch_state()
    assert state.folder == COMMITTED_BATCH
    assert "bkd" in state.stages()[WORST]
    bkd = state.stage("worst")
    assert (bkd.method, bkd.tipping, bkd.found_at, bkd.rule) == ("bkd", 25, 27, "peak")
    assert bkd.config.profile == "cnn" and bkd.config.model == "whitened_cnn"
    assert len(bkd.curves["epoch"]) == 40 and bkd.curves["phase"][bkd.found_at + 1] == 2
    assert bkd.scores.shape == bkd.is_noisy.shape == (50_000,)
    detection = bkd.detection()
    assert abs(detection.estimated_noise_rate - bkd.number("estimated_noise_rate")) < 1e-9
    assert abs(detection.split.threshold - bkd.number("threshold")) < 1e-9
    assert abs(float(bkd.is_noisy.mean()) - bkd.number("true_noise_rate")) < 1e-9
    assert state.stage("worst", seed=99) is None and state.stage("worst", dataset="cifar100") is None


def test_a_stage_is_read_before_its_run_has_finished_and_a_missing_one_is_none(tmp_path):
    state = cnn.batch_state(_partial_batch(tmp_path))
    assert state.finished == () and state.run_of("worst") is None  # the run has not finished ...
    assert state.stage("worst") is not None  # ... but its BKD stage is here
    assert state.stage("worst", "ce") is None and state.stage("aggre") is None
    assert state.stages() == {WORST: ("bkd",)}
    assert cnn.batch_state(tmp_path / "nowhere").stage("worst") is None
    assert cnn.batch_state(tmp_path / "nowhere").stages() == {}
    # a stage that ended at its deadline goes on when the batch is run again: not here yet
    path = tmp_path / "cnn" / WORST / "bkd" / METRICS
    metrics = json.loads(path.read_text())
    atomic_write_json(path, {**metrics, "stopped_by": "deadline"})
    assert cnn.batch_state(tmp_path / "cnn").stage("worst") is None


@pytest.mark.parametrize("case", ["config missing", "config damaged", "metrics not a method's", "curves damaged",
                                  "scores damaged"])
def test_a_damaged_stage_is_one_sentence_naming_its_file(tmp_path, case):
    stage = _partial_batch(tmp_path) / WORST / "bkd"
    file = {"config missing": "config.json", "config damaged": "config.json", "metrics not a method's": METRICS,
            "curves damaged": METHOD_CURVES, "scores damaged": METHOD_TIPPING_SCORES}[case]
    if case == "config missing":
        (stage / file).unlink()
    elif case == "config damaged":
        atomic_write_json(stage / file, {"config": {"epochs": -3}})
    elif case == "metrics not a method's":
        atomic_write_json(stage / file, [1, 2])
    elif case == "curves damaged":
        atomic_write_json(stage / file, {"epoch": [1.0, 3.0]})
    else:
        atomic_save_npz(stage / file, agreement=np.zeros(3, np.float16))
    with pytest.raises(DamagedFileError) as info:
        cnn.read_stage(stage)
    assert file in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        cnn.read_stage(tmp_path / "empty")


def _stage(**metrics) -> "cnn.Stage":
    from bkd_core.config import get_profile

    base = {"kind": "bkd", "true_noise_rate": 0.4, "estimated_noise_rate": 0.47, "tipping_epoch": 25,
            "tipping_found_at_epoch": 27, "tipping_rule": "peak", "detection_f1": 0.75, "flag_all_f1": 0.571,
            "below_threshold_f1": 0.8, "test_acc": 78.0}
    return cnn.Stage(path=Path("stage"), metrics={**base, **metrics}, config=get_profile("cnn"), curves={})


@pytest.fixture(scope="module")
def features_worst():
    from bkd_core import book

    summary = book.batch_summary("reproductions/features", "worst")
    if summary is None:
        pytest.skip("the committed features batch is not here")
    return summary


def test_the_pixel_check_says_row_by_row_whether_the_proxy_tells_the_same_story(features_worst):
    from bkd_core.book.results import mean_of

    def proxy(method, metric):
        return mean_of(features_worst, "worst", method, metric)

    table = cnn.pixel_check(features_worst, _stage(), split="worst")
    assert list(table.index) == list(cnn.PIXEL_CHECK_ROWS)
    assert list(table.columns) == ["features proxy", "cnn", "same story?", "how"]
    assert table["same story?"].tolist()[:4] == ["yes"] * 4  # the committed proxy: peak rule, above, beats, higher
    assert table["same story?"].iloc[4] == "–" and "not here yet" in table["how"].iloc[4]  # no cross-entropy yet
    assert table["cnn"].iloc[0] == "26" and table["cnn"].iloc[4] == "78.0 / –"
    assert f"{proxy('bkd', 'detection_f1'):.3f} (0.571)" in table["features proxy"].iloc[2]
    assert f"{abs(100 * proxy('bkd', 'estimated_noise_rate') - 40):.1f} points" in table["how"].iloc[1]
    # where the stories part: an estimate below the truth, G4 under flag-all, BKD below cross-entropy
    ce = _stage(kind="ce", test_acc=90.0)
    table = cnn.pixel_check(features_worst, _stage(estimated_noise_rate=0.3, detection_f1=0.5), ce, split="worst")
    assert table["same story?"].tolist() == ["yes", "no", "no", "yes", "no"]
    assert table["how"].iloc[1].startswith("Not the same:") and "10.0 points below" in table["how"].iloc[1]
    assert "on the proxy only" in table["how"].iloc[2] and "78.0 / 90.0" == table["cnn"].iloc[4]
    assert "12.0 points below" in table["how"].iloc[4]
    # no tipping point on pixels; no proxy; no wrong label: never a NaN, always a sentence
    for table in (cnn.pixel_check(features_worst, _stage(tipping_epoch=None, tipping_found_at_epoch=None,
                                                          tipping_rule=None, estimated_noise_rate=None,
                                                          detection_f1=None, below_threshold_f1=None),
                                  split="worst"),
                  cnn.pixel_check(None, _stage(), ce, split="worst"),
                  cnn.pixel_check(features_worst, _stage(true_noise_rate=0.0), ce, split="clean")):
        text = table.to_string()
        assert "nan" not in text.lower() and all(table["how"].str.len() > 20)
    assert cnn.pixel_check(None, _stage(), ce, split="worst")["same story?"].eq("–").all()
    # a run stopped right after its detection has no final test accuracy to set beside the proxy's
    stopped = cnn.pixel_check(features_worst, _stage(stopped_by="detection", test_acc=84.4), split="worst")
    assert math.isnan(_stage(stopped_by="detection", test_acc=84.4).number("test_acc"))
    assert stopped["cnn"].iloc[4] == "– / –" and stopped["same story?"].iloc[4] == "–"
    assert "stopped right after its detection" in stopped["how"].iloc[4] and "nan" not in stopped.to_string().lower()
    assert cnn.pixel_check(features_worst, _stage(true_noise_rate=0.0), split="worst").loc[
        cnn.PIXEL_CHECK_ROWS[2], "cnn"] == "n/a"


def test_the_run_story_figure_draws_every_panel_with_or_without_cross_entropy():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book import plots

    bkd = cnn.batch_state().stage("worst")
    for ce in (None, {"fit_clean": bkd.curves["fit_clean"], "fit_mislabelled": bkd.curves["fit_mislabelled"],
                      "test_acc": bkd.curves["test_acc"] - 10}):
        fig = plots.plot_run_story(bkd.curves, ce, tipping=bkd.tipping, found_at=bkd.found_at)
        left, middle, right = fig.axes[:3]
        assert len(left.lines) == (4 if ce else 2) and len(right.lines) == (2 if ce else 1)
        assert _stars(middle) == [(26, bkd.curves["mean_max_student"][25])]
        assert len(middle.lines[0].get_xdata()) == bkd.found_at + 1  # phase 1 only
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert ("cross-entropy baseline" in labels) == (ce is not None) and "BKD phase 2" in labels
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The official protocol beside training without augmentation: both committed batches, read
# ----------------------------------------------------------------------------------------------

COMMITTED_NOAUG = ROOT / cnn.NOAUG_BATCH


def _row(table, split, protocol):
    rows = table[(table["split"] == split) & (table["protocol"] == protocol)]
    assert len(rows) == 1
    return rows.iloc[0]


def _noaug_batch(tmp_path: Path, splits=("worst",)) -> Path:
    """The committed run without augmentation on worst, alone in a batch folder, with a copy of it standing in for
    each other split of ``splits`` (its split and true noise rate changed), whatever else has been committed."""
    folder = tmp_path / "cnn-noaug"
    shutil.copytree(COMMITTED_NOAUG / WORST, folder / WORST)
    shutil.copy(COMMITTED_NOAUG / SUMMARY, folder / SUMMARY)
    true = {"aggre": 0.0901, "clean": 0.0}
    for split in splits:
        if split == "worst":
            continue
        name = f"cifar10-{split}-seed0"
        shutil.copytree(folder / WORST, folder / name)
        for path in (folder / name / METRICS, folder / name / "bkd" / METRICS):
            metrics = json.loads(path.read_text())
            target = metrics["methods"]["bkd"] if "methods" in metrics else metrics
            metrics["split"] = split
            target.update(split=split, true_noise_rate=true[split])
            if not true[split]:
                target.update(detection_f1=0.0, flag_all_f1=0.0)
            atomic_write_json(path, metrics)
    if "worst" not in splits:
        shutil.rmtree(folder / WORST)
    return folder


def test_the_official_protocol_and_the_one_without_augmentation_are_read_side_by_side():
    """worst, seed 0: the official run (full) fires at epoch 26, seen at 28; the run without augmentation (stopped
    at its detection) at 8, seen at 10, in 42 minutes; both have 2 phase-1 epochs after the tip."""
    table = cnn.augment_comparison()
    assert list(table.columns) == list(cnn.AUGMENT_COLUMNS) and len(table) == 6
    assert table[["split", "protocol"]].values.tolist() == [[s, p] for s in cnn.AUGMENT_SPLITS for p in cnn.PROTOCOLS]
    off, aug = _row(table, "worst", "official"), _row(table, "worst", "no augmentation")
    assert (off["status"], aug["status"]) == (cnn.RUN_FULL, cnn.RUN_STOPPED)
    assert (off["tipping_epoch"], off["found_at_epoch"], aug["tipping_epoch"], aug["found_at_epoch"]) == (26, 28, 8, 10)
    assert off["fall_epochs"] == aug["fall_epochs"] == 2 and off["epochs"] == 28 and aug["epochs"] == 10
    assert 0 < off["fall"] < 0.005 and 0 < aug["fall"] < 0.005  # the window alone: no turn to see yet
    assert abs(off["g4_f1"] - 0.7671) < 1e-3 and abs(aug["g4_f1"] - 0.7342) < 1e-3
    assert off["flag_all_f1"] == aug["flag_all_f1"] and abs(off["true_noise"] - 40.208) < 1e-9
    assert abs(aug["estimated_noise"] - 50.866) < 1e-9 and abs(aug["minutes"] - 2516.55 / 60) < 0.1
    assert 0.90 < aug["auc_at_tip"] <= aug["best_auc"] < 0.92 and aug["best_auc_epoch"] == 9
    assert off["auc_at_tip"] <= off["best_auc"] and off["best_auc_epoch"] <= off["found_at_epoch"]  # phase 1 only
    clean = _row(table, "clean", "official")
    assert clean["status"] == cnn.RUN_FULL and math.isnan(clean["g4_f1"]) and clean["true_noise"] == 0
    # a seed that has not run: a row that says so, never an error
    later = cnn.augment_comparison(splits=("worst",), seed=9)
    assert later["status"].tolist() == [cnn.RUN_NOT_YET] * 2 and later[list(cnn.AUGMENT_COLUMNS[3:])].isna().all().all()
    shown = cnn.augment_comparison_shown(table)
    assert shown.iloc[0]["tipping epoch (seen at)"] == "26 (28)"
    assert shown.iloc[1]["to the detection"] == "10 epochs, 42 min"
    assert shown.iloc[4]["G4 F1 (flag every image)"] == "no wrong label" and "nan" not in shown.to_string().lower()


def test_the_comparison_says_which_splits_are_not_here_yet(tmp_path):
    official = tmp_path / "cnn"
    shutil.copytree(COMMITTED_BATCH, official)
    noaug = _noaug_batch(tmp_path, splits=("worst",))
    table = cnn.augment_comparison(official, noaug)
    assert table["status"].tolist() == [cnn.RUN_FULL, cnn.RUN_STOPPED] + [cnn.RUN_FULL, cnn.RUN_NOT_YET] * 2
    text = cnn.augment_comparison_text(table)
    assert text.startswith("One seed each, so no verdict (the official protocol's number first): on worst, G4 F1 "
                           "0.767 against 0.734, the official protocol higher (flagging every image: 0.574)")
    assert "the official protocol closer to the truth by 1.5 points" in text
    assert "Not compared yet: aggre and clean (no augmentation: not run yet)." in text
    assert f"falls by {_row(table, 'worst', 'official')['fall']:.4f} with the official protocol" in text
    assert "too few epochs to tell a plateau from a turn" in text and "diagnostic" not in text
    with_evidence = cnn.augment_comparison_text(table, evidence=cnn.diagnostics())
    assert with_evidence.startswith(text) and "0.0005 on worst (a plateau) with the official protocol" in with_evidence
    assert "0.0254 on worst (a turn)" in with_evidence
    # a run removed: its row says so, the rest stays
    shutil.rmtree(noaug / WORST)
    table = cnn.augment_comparison(official, noaug)
    assert _row(table, "worst", "no augmentation")["status"] == cnn.RUN_NOT_YET
    assert _row(table, "worst", "official")["status"] == cnn.RUN_FULL
    assert cnn.augment_comparison_text(table) == ("Not compared: worst, aggre and clean (no augmentation: not run "
                                                  "yet).")
    # a folder of the other protocol is named, not read as this one
    with pytest.raises(ValueError, match="trained without augmentation, but it is read as the official protocol"):
        cnn.augment_comparison(COMMITTED_NOAUG, COMMITTED_NOAUG, splits=("worst",))


def test_a_complete_comparison_and_one_with_no_batch_at_all(tmp_path):
    noaug = _noaug_batch(tmp_path, splits=cnn.AUGMENT_SPLITS)
    table = cnn.augment_comparison(COMMITTED_BATCH, noaug)
    assert set(table["status"]) <= {cnn.RUN_FULL, cnn.RUN_STOPPED}
    text = cnn.augment_comparison_text(table)
    assert "Not compared" not in text and "; on aggre, G4 F1 0.600 against 0.734" in text
    assert "on clean, no label is wrong, so nothing to find; estimated noise 21.0% against 50.9% (true 0.0%)" in text
    assert "(the official protocol first)" in text
    # ties are ties
    tied = table.copy()
    worst = (tied["split"] == "worst") & (tied["protocol"] == "no augmentation")
    official = _row(table, "worst", "official")
    tied.loc[worst, ["g4_f1", "estimated_noise"]] = official["g4_f1"] + 0.004, official["estimated_noise"] - 0.5
    text = cnn.augment_comparison_text(tied)
    assert "the official protocol higher" not in text.split("; on aggre")[0]
    assert "a tie (within 0.01)" in text and "a tie (their errors within 1 point of each other)" in text
    # neither batch here (e.g. outside a clone of the repository): rows that say so
    missing = cnn.augment_comparison(tmp_path / "nowhere", tmp_path / "nor-here")
    assert missing["status"].tolist() == [cnn.BATCH_NOT_HERE] * 6
    assert cnn.augment_comparison_text(missing).startswith("Neither batch is here")


def test_the_augmentation_figure_draws_partial_complete_and_missing_comparisons(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkd_core.book import plots

    partial = cnn.augment_comparison(COMMITTED_BATCH, _noaug_batch(tmp_path / "a", splits=("worst",)))
    complete = cnn.augment_comparison(COMMITTED_BATCH, _noaug_batch(tmp_path / "b", splits=cnn.AUGMENT_SPLITS))
    missing = cnn.augment_comparison(tmp_path / "nowhere", tmp_path / "nor-here")
    for table, bars in ((partial, (3, 4, 4)), (complete, (4, 6, 6)), (missing, (0, 0, 0))):
        fig = plots.plot_augment_comparison(table)
        f1, error, epochs = fig.axes[:3]
        assert tuple(len(ax.patches) - (2 if ax is f1 else 0) for ax in (f1, error, epochs)) == bars
        texts = [t.get_text() for t in f1.texts]
        assert texts.count("not run yet") == (1 if table is partial else 0)
        assert texts.count("not here") == (6 if table is missing else 0)
        assert ("no wrong label" in texts) == (table is not missing)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[:2] == ["official protocol (crop + flip)", "no augmentation"]
        # the epochs panel: each run's epochs up to its detection, split by split, the official protocol first
        heights = [p.get_height() for p in epochs.patches if p.get_height() > 0]
        assert heights == table["epochs"].dropna().tolist()
        plt.close(fig)
