"""A method's stage of a batch run, read through BatchFolder (bkd_core.batch.folder): committed as soon as the method
has trained, before its run has finished; one reader checks it, and every caller reports a damaged file the same way."""

from __future__ import annotations

import pytest

from bkd_core.batch import BatchFolder, read_method_stage
from bkd_core.config import get_profile
from bkd_core.errors import DamagedFileError
from bkd_core.io import atomic_write_json

CONFIG = get_profile("features", seed=0, epochs=3)


def _method(folder, run, method, split, **extra):
    """A method's own metrics.json and config.json, as the trainer writes them when it finishes."""
    metrics = {"kind": method, "dataset": "cifar10", "split": split, "seed": 0, "estimated_noise_rate": 0.5,
               "tipping_epoch": 2, **extra}
    atomic_write_json(folder / run / method / "metrics.json", metrics)
    atomic_write_json(folder / run / method / "config.json", {"config": CONFIG.to_dict(), "identity": {"kind": method}})
    return metrics


def _batch(tmp_path):
    """A finished run (clean), a partial one (worst: BKD done, cross-entropy training), one stopped by its deadline."""
    folder = tmp_path / "batch"
    methods = {m: _method(folder, "cifar10-clean-seed0", m, "clean") for m in ("bkd", "ce")}
    atomic_write_json(folder / "cifar10-clean-seed0" / "metrics.json", {
        "dataset": "cifar10", "split": "clean", "seed": 0, "config": CONFIG.to_dict(), "methods": methods})
    _method(folder, "cifar10-worst-seed0", "bkd", "worst")
    (folder / "cifar10-worst-seed0" / "ce").mkdir()
    _method(folder, "cifar10-aggre-seed0", "bkd", "aggre", stopped_by="deadline")
    return BatchFolder(folder)


def test_a_stage_is_read_and_checked_whether_its_run_has_finished_or_not(tmp_path):
    batch = _batch(tmp_path)
    assert batch.stages() == {"cifar10-aggre-seed0": ("bkd",), "cifar10-clean-seed0": ("bkd", "ce"),
                              "cifar10-worst-seed0": ("bkd",)}
    stage = batch.method_stage("cifar10-worst-seed0", "bkd")
    assert stage.method == "bkd" and stage.config == CONFIG and stage.metrics["split"] == "worst"
    assert stage.path == batch.run_dir("cifar10-worst-seed0") / "bkd"
    assert stage.curves() is None and stage.tipping_scores() is None  # none written here
    assert not stage.stopped_by_deadline and batch.method_stage("cifar10-aggre-seed0", "bkd").stopped_by_deadline
    assert batch.method_stage("cifar10-worst-seed0", "ce") is None  # still training
    assert batch.method_stage("cifar10-rand1-seed0", "bkd") is None  # not started
    with pytest.raises(ValueError, match="not by a path"):
        batch.method_stage("../elsewhere", "bkd")
    assert BatchFolder(tmp_path / "nowhere").stages() == {}


def test_finished_stages_are_the_methods_of_unfinished_runs_not_stopped_by_their_deadline(tmp_path):
    found = [(run, method, stage.metrics["split"]) for run, method, stage in _batch(tmp_path).finished_stages()]
    assert found == [("cifar10-worst-seed0", "bkd", "worst")]
    assert list(BatchFolder(tmp_path / "nowhere").finished_stages()) == []


def test_a_stage_without_its_runs_dataset_split_and_seed_is_named(tmp_path):
    batch = _batch(tmp_path)
    _method(batch.path, "cifar10-worst-seed0", "bkd", "worst")
    path = batch.run_dir("cifar10-worst-seed0") / "bkd" / "metrics.json"
    atomic_write_json(path, {"kind": "bkd"})
    with pytest.raises(DamagedFileError, match="cifar10-worst-seed0/bkd holds a metrics.json without its run's "
                                               "dataset, split and seed"):
        list(batch.finished_stages())


@pytest.mark.parametrize("config", [None, {"identity": {}}, {"config": {"epochs": -3}}],
                         ids=["missing", "no config record", "invalid"])
def test_a_damaged_method_config_is_one_sentence_from_one_reader_whoever_asks(tmp_path, config):
    """The results table, the chapters' stage and the batch folder itself report it with the very same sentence."""
    pytest.importorskip("pandas")
    from bkd_core.book import cnn, results

    batch = _batch(tmp_path)
    path = batch.run_dir("cifar10-worst-seed0") / "bkd" / "config.json"
    if config is None:
        path.unlink()
    else:
        atomic_write_json(path, config)
    messages = []
    for ask in (lambda: batch.method_stage("cifar10-worst-seed0", "bkd"), lambda: list(batch.finished_stages()),
                lambda: read_method_stage(path.parent), lambda: results.collect_stages(batch.path),
                lambda: cnn.read_stage(path.parent), lambda: cnn.batch_state(batch.path).stage("worst")):
        with pytest.raises(DamagedFileError) as info:
            ask()
        messages.append(str(info.value))
    assert len(set(messages)) == 1, messages
    message = messages[0]
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "run the batch's command again" in message
    assert batch.method_stage("cifar10-clean-seed0", "bkd") is not None  # the other stages read as before
