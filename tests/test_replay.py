"""Replaying a run's first epochs (``check OUT --replay-epochs K``): the trainer's ``stop_after_epochs``, the
comparison of the per-epoch curves, the refusals, the recorded check and what the results chapter says of it.

Tiny networks on synthetic data: every run takes seconds on one CPU thread.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bkd_core import cli
from bkd_core.batch import check as batch_check
from bkd_core.batch.check import (DIFFERS, IDENTICAL, REPLAY, REPLAYED, compare_curves, identical_codes,
                                  run_verdicts)
from bkd_core.batch.runner import cpu_model, run_one
from bkd_core.config import PROFILES, BKDConfig
from bkd_core.synthetic import make_synthetic_cifar_n
from bkd_core.train import train_bkd, train_ce

pd = pytest.importorskip("pandas")  # the batch and the results tables: book packages

RUN = "cifar10-synthetic-seed0"
OLDER = "0123456789ab"  # the code that made the recorded run, as far as the batch folder says
TINY = BKDConfig(model="small_cnn", model_widths=(8, 16, 16), epochs=4, batch_size=32, lr=0.02, lr_step=None,
                 augment=True, val_every=2, test_every=2, eval_batch_size=256, seed=0, tipping_fallback=0,
                 device="cpu")
OVERRIDES = {"model": "small_cnn", "model_widths": [8, 16, 16], "epochs": 3, "batch_size": 32, "augment": False,
             "lr_step": None, "tipping_fallback": 0}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_cifar_n(n_train=240, n_test=60, noise_rate=0.3, seed=3)


def _curves(run_dir: Path) -> dict:
    return json.loads((run_dir / "curves.json").read_text())


# ----------------------------------------------------------------------------------------------
# The trainer stops after K epochs without changing them
# ----------------------------------------------------------------------------------------------


def test_the_new_field_leaves_every_fingerprint_as_it_was():
    assert BKDConfig().fingerprint() == "d5a23ef7e167" and BKDConfig().fingerprint("ce") == "aeeba55c67fa"
    assert PROFILES["cnn"].fingerprint() == "de6c0a286d13" and PROFILES["features"].fingerprint() == "0e023d845ae3"
    for config in PROFILES.values():
        for method in ("bkd", "ce"):
            assert config.replace(stop_after_epochs=2).fingerprint(method) == config.fingerprint(method)
    assert BKDConfig().stop_after_epochs is None
    with pytest.raises(ValueError, match="stop_after_epochs must be None or >= 1"):
        BKDConfig(stop_after_epochs=0)


@pytest.mark.parametrize("train", [train_bkd, train_ce], ids=["bkd", "ce"])
def test_stop_after_epochs_gives_the_full_runs_first_epochs_and_a_rerun_goes_on(synthetic, tmp_path, train):
    """Stopped after 2 of 4 epochs (evaluated every 2nd: the 2nd is not, in the full run): the curves are the
    full run's first 2 bit for bit, and the same folder without the field ends as the uninterrupted run."""
    full = train(synthetic, TINY, tmp_path / "full", progress=False)
    cut = train(synthetic, TINY.replace(stop_after_epochs=2), tmp_path / "cut", progress=False)
    assert (cut.metrics["epochs"], cut.metrics["stopped_by"]) == (2, "stop_after_epochs")
    assert full.metrics["stopped_by"] == "epochs"
    assert compare_curves(_curves(tmp_path / "full"), _curves(tmp_path / "cut"), 2) == []
    assert _curves(tmp_path / "full")["test_acc"][1] is None  # the stop adds no evaluation the full run lacks
    assert len(_curves(tmp_path / "cut")["test_acc"]) == 1
    assert compare_curves(_curves(tmp_path / "full"), _curves(tmp_path / "cut"), 3)[0] == (
        "epoch: the replay has 2 epochs, not 3")
    resumed = train(synthetic, TINY, tmp_path / "cut", progress=False)
    assert (resumed.metrics["epochs"], resumed.metrics["stopped_by"]) == (4, "epochs")
    volatile = ("wall_time_s", "command")
    assert ({k: v for k, v in resumed.metrics.items() if k not in volatile}
            == {k: v for k, v in full.metrics.items() if k not in volatile})
    for key in set(full.arrays) - {"history_epoch_time"}:
        np.testing.assert_array_equal(resumed.arrays[key], full.arrays[key], err_msg=key)


def test_compare_curves_is_bit_for_bit_and_names_the_epoch_and_the_curve():
    recorded = {"epoch": [1.0, 2.0, 3.0], "loss": [2.5, 1.25, 1.0], "auc": [None, 0.5, 0.6],
                "epoch_time": [9.0, 9.0, 9.0]}
    same = {"epoch": [1.0, 2.0], "loss": [2.5, 1.25], "auc": [float("nan"), 0.5], "epoch_time": [1.0, 2.0]}
    assert compare_curves(recorded, same, 2) == []  # times left out, NaN and None alike
    assert compare_curves(recorded, {**same, "loss": [2.5, 1.25 + 2**-50]}, 2) == [
        f"epoch 2: loss: 1.25 != {1.25 + 2**-50!r}"]
    assert compare_curves(recorded, {**same, "loss": [2.5, -0.0]}, 2) == ["epoch 2: loss: 1.25 != -0.0"]
    assert compare_curves({**recorded, "loss": [0.0, 1.25]}, {**same, "loss": [-0.0, 1.25]}, 2) == [
        "epoch 1: loss: 0.0 != -0.0"]  # the bits differ
    extra = compare_curves(recorded, {**same, "fit": [0.1, 0.2]}, 2)
    assert extra == ["fit: in the replay, not recorded"]
    missing = {k: v for k, v in same.items() if k != "auc"}
    assert compare_curves(recorded, missing, 2) == ["auc: recorded, missing from the replay"]


# ----------------------------------------------------------------------------------------------
# check --replay-epochs on a batch run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_batch(synthetic, tmp_path_factory):
    """A batch of one run (BKD and cross-entropy, 3 epochs, one thread), made here and stamped as made by
    older code."""
    out = tmp_path_factory.mktemp("recorded") / "batch"
    run_one("cifar10", "synthetic", 0, out / RUN, profile="cnn", overrides=OVERRIDES, methods=("bkd", "ce"),
            threads=1, progress=False, loader=lambda *a, **k: synthetic)
    (out / "summary.json").write_text(json.dumps({"options": {"overrides": OVERRIDES, "threads": 1}, "runs": []}))
    _edit(out / RUN / "metrics.json", lambda run: run.update(code_hash=OLDER))
    return out


@pytest.fixture
def batch(recorded_batch, tmp_path, synthetic, monkeypatch):
    """A copy of the recorded batch; the command line's loader gives the synthetic data."""
    out = tmp_path / "batch"
    shutil.copytree(recorded_batch, out)
    monkeypatch.setattr(batch_check, "load_cifar_n", lambda *a, **k: synthetic)
    return out


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_replay_of_an_unchanged_run_is_identical_and_reported_as_a_replay(batch, capsys):
    from bkd_core.book import results
    from bkd_core.provenance import code_hash

    before = _snapshot(batch / RUN)
    assert cli.main(["check", str(batch), "--replay-epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{RUN}: the first 2 epochs of bkd, ce identical to the recorded run" in out and "not a full rerun" in out
    assert _snapshot(batch / RUN) == before  # the recorded run is never written
    (check,) = results.read_code_checks(batch)
    assert (check["verdict"], check["kind"], check["identical"]) == (REPLAYED, REPLAY, False)
    assert (check["replayed_epochs"], check["methods"], check["differences"]) == (2, ["bkd", "ce"], [])
    assert (check["recorded_code_hash"], check["code_hash"], check["cpu"]) == (OLDER, code_hash(), cpu_model())
    assert check["compared"] == ["bkd/curves.json", "ce/curves.json"] and check["threads"] == 1
    assert run_verdicts(batch) == {RUN: REPLAYED}  # never IDENTICAL
    versions = results.code_versions(batch)
    assert versions["code"].tolist() == [results.CODE_REPLAYED]
    assert versions[["replayed_epochs", "replayed_methods"]].values.tolist() == [[2, "bkd ce"]]
    text = results.code_version_text(versions)
    assert f"1 of 1 by other code ({OLDER}; the training code changed since, now {code_hash()})" in text
    assert (f"the current code replayed the first 2 epochs of BKD and cross-entropy on {RUN} bit for bit on the "
            f"CPU model that made it ({cpu_model()})") in text
    assert "a replay, not a full rerun" in text and "came out identical" not in text
    # a full rerun's check and a replay's are kept side by side (one of each kind per run and codes)
    batch_check.BatchFolder(batch).add_code_check({"run": RUN, "recorded_code_hash": OLDER, "code_hash": code_hash(),
                                                   "identical": True, "verdict": IDENTICAL})
    assert len(results.read_code_checks(batch)) == 2 and run_verdicts(batch) == {RUN: IDENTICAL}


def test_a_replay_that_differs_names_the_epoch_and_the_curve(batch, monkeypatch, capsys):
    """A recorded value edited at epoch 2, and a computation changed from epoch 2 on: each is found, named by
    method, epoch and curve, and the run is not vouched for."""
    from bkd_core import train

    path = batch / RUN / "bkd" / "curves.json"
    _edit(path, lambda curves: curves["loss_ce"].__setitem__(1, curves["loss_ce"][1] * (1 + 2**-40)))
    edited = json.loads(path.read_text())["loss_ce"][1]
    assert cli.main(["check", str(batch), RUN, "--replay-epochs", "2", "--methods", "bkd", "--no-progress"]) == 1
    assert "0 of 1 replayed identically" in capsys.readouterr().out
    check = batch_check.BatchFolder(batch).code_checks()[-1]
    assert check["verdict"] == DIFFERS and len(check["differences"]) == 1
    assert check["differences"][0].startswith(f"bkd/curves.json: epoch 2: loss_ce: {edited!r} != ")
    assert run_verdicts(batch) == {RUN: ""}

    real = train.CETrainer.epoch_scalars

    def nudged(self, means):  # from the second epoch on, the loss is off in its last bits
        scalars = real(self, means)
        return {**scalars, "loss": scalars["loss"] * (1 + 1e-6)} if self.epoch >= 1 else scalars

    monkeypatch.setattr(train.CETrainer, "epoch_scalars", nudged)
    check = batch_check.replay_runs(batch, [RUN], epochs=3, methods=["ce"], progress=False)[0]
    assert check["verdict"] == DIFFERS
    assert [line.split(":")[:3] for line in check["differences"]] == [
        ["ce/curves.json", " epoch 2", " loss"], ["ce/curves.json", " epoch 3", " loss"]]
    assert len(batch_check.BatchFolder(batch).code_checks()) == 1  # the newer replay replaced the older
    assert run_verdicts(batch) == {RUN: ""}


def _refused(batch: Path, capsys, *args: str) -> str:
    before = _snapshot(batch)
    assert cli.main(["check", str(batch), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert _snapshot(batch) == before  # nothing trained, nothing recorded
    return err


def test_replays_that_cannot_hold_bit_for_bit_are_refused_before_anything_is_trained(batch, capsys, monkeypatch):
    monkeypatch.setattr(batch_check, "load_cifar_n", lambda *a, **k: pytest.fail("trained"))
    assert "more than the 3 epochs" in _refused(batch, capsys, "--replay-epochs", "4")
    assert "must be a whole number of epochs >= 1" in _refused(batch, capsys, "--replay-epochs", "0")
    assert "confident learning's fold runs are not replayed" in _refused(batch, capsys, "--replay-epochs", "1",
                                                                         "--methods", "cleanlab")
    assert "drop --threads" in _refused(batch, capsys, "--replay-epochs", "1", "--threads", "2")
    assert "drop --rerun" in _refused(batch, capsys, "--replay-epochs", "1", "--rerun", str(batch))
    assert "give it with --replay-epochs" in _refused(batch, capsys, RUN, "--methods", "bkd")
    assert "not a finished run" in _refused(batch, capsys, "cifar10-worst-seed9", "--replay-epochs", "1")
    metrics = batch / RUN / "metrics.json"
    original = metrics.read_text()
    _edit(metrics, lambda run: run["machine"].update(cpu="Another CPU model"))
    err = _refused(batch, capsys, "--replay-epochs", "1")
    assert "was made on the CPU model 'Another CPU model'" in err and "same CPU model only" in err
    _edit(metrics, lambda run: run["machine"].update(cpu=""))
    assert "records no CPU model" in _refused(batch, capsys, "--replay-epochs", "1")
    metrics.write_text(original)
    curves = batch / RUN / "bkd" / "curves.json"
    kept = curves.read_text()
    curves.write_text("[1, 2]")
    err = _refused(batch, capsys, "--replay-epochs", "1")
    assert "bkd/curves.json holds a list, not a run's per-epoch curves" in err
    curves.write_text(kept)
    (batch / RUN / "ce" / "curves.json").unlink()  # a run made before runs recorded their curves
    err = _refused(batch, capsys, "--replay-epochs", "1")
    assert "ce/curves.json is missing" in err and "rerun the whole run instead" in err
    assert not (batch / "code_checks.json").exists()


# ----------------------------------------------------------------------------------------------
# What a replay vouches for
# ----------------------------------------------------------------------------------------------


def test_identical_checks_never_chain_through_a_replay():
    replay = {"run": RUN, "kind": REPLAY, "recorded_code_hash": "aaaa", "code_hash": "bbbb", "identical": False,
              "verdict": REPLAYED}
    onwards = {"run": RUN, "recorded_code_hash": "bbbb", "code_hash": "cccc", "identical": True,
               "verdict": IDENTICAL}
    assert identical_codes([replay, onwards], RUN, "aaaa") == {"aaaa"}
    forged = {**replay, "verdict": IDENTICAL, "identical": True}  # a replay's check is never a link
    assert identical_codes([forged, onwards], RUN, "aaaa") == {"aaaa"}
    assert batch_check.replay_of([replay], RUN, "aaaa", "bbbb") is replay
    full_differs = {"run": RUN, "recorded_code_hash": "aaaa", "code_hash": "bbbb", "identical": False,
                    "verdict": DIFFERS}
    assert batch_check.replay_of([replay, full_differs], RUN, "aaaa", "bbbb") is None
    assert batch_check.replay_of([replay], RUN, "aaaa", "cccc") is None  # another code's replay


def test_code_version_text_sets_replayed_runs_apart():
    from bkd_core.book import results

    def row(run, code, epochs=None, methods=None):
        return {"run": run, "code_hash": "0123456789ab", "code": code, "replayed_epochs": epochs,
                "replayed_methods": methods, "replayed_cpu": "CPU model A" if epochs else None}

    rows = [row("worst", results.CODE_REPLAYED, 2, "bkd ce"), row("aggre", results.CODE_REPLAYED, 2, "bkd ce")]
    text = results.code_version_text(pd.DataFrame(rows), current="ba9876543210")
    assert text.startswith("Code version: 2 of 2 by other code (0123456789ab; the training code changed since, now "
                           "ba9876543210); the current code replayed the first 2 epochs of BKD and cross-entropy on "
                           "worst, aggre bit for bit on the CPU model that made them (CPU model A), a replay, not a "
                           "full rerun")
    assert "identical" not in text and "stale" not in text
    rows.append(row("clean", results.CODE_OTHER))
    rows[1] = row("aggre", results.CODE_REPLAYED, 1, "bkd")
    text = results.code_version_text(pd.DataFrame(rows), current="ba9876543210")
    assert "the first 2 epochs of BKD and cross-entropy on worst" in text
    assert "the first epoch of BKD on aggre bit for bit on the CPU model that made it" in text
    assert "the other 1 (clean) were not reproduced or replayed by the current code" in text


def test_a_batch_run_stopped_after_its_first_epochs_is_not_finished(tmp_path):
    """A batch run trained with ``--set stop_after_epochs=K`` goes on when the batch is run again without it,
    as one stopped by its deadline does."""
    from bkd_core.batch import BatchFolder

    path = tmp_path / RUN / "metrics.json"
    path.parent.mkdir()
    for stopped_by, finished in (("epochs", True), ("stop_after_epochs", False), ("deadline", False)):
        path.write_text(json.dumps({"methods": {"bkd": {"stopped_by": stopped_by}, "ce": {}}}))
        assert BatchFolder(tmp_path).is_finished(RUN, ("bkd", "ce")) is finished
