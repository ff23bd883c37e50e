"""Run directories that cannot be turned against their user: no code from a checkpoint, no silent
overwrite of another run, one writer at a time, a diverging run stopped, damaged files named, and
temporary files of a killed writer removed (``bkd_core.rundir`` through ``train_bkd`` / ``train_ce``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bkd_core.config import BKDConfig
from bkd_core.detectors.confident_learning import train_confident_learning
from bkd_core.errors import DamagedFileError, DivergedError, RunDirError, UnsafeFileError
from bkd_core.rundir import RunDir
from bkd_core.synthetic import make_synthetic_cifar_n
from bkd_core.train import train_bkd, train_ce

TINY = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=2, batch_size=64, lr_step=None, augment=False,
                 val_every=1, test_every=1, eval_batch_size=256, seed=0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_cifar_n(n_train=120, n_test=30, noise_rate=0.3, seed=2)


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (the lock file aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


class _Shell:
    """A pickle that runs a shell command when it is loaded (as a tampered checkpoint would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- no code from a checkpoint ---------------------------------------------------------------------


@pytest.mark.parametrize("trainer", [train_bkd, train_ce])
def test_code_carrying_checkpoint_runs_no_code(data, tmp_path, trainer):
    run = tmp_path / "run"
    trainer(data, TINY.replace(epochs=1), run, progress=False)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    marker = tmp_path / "code-ran"
    state["extra"] = {"payload": _Shell(marker)}
    torch.save(state, run / "checkpoint.pt")
    (run / "metrics.json").unlink()  # so the rerun must resume from the checkpoint
    with pytest.raises(UnsafeFileError, match=r"refused as unsafe: loading it would call (posix|os)\.system") as exc:
        trainer(data, TINY.replace(epochs=1), run, progress=False)
    assert not marker.exists()
    assert str(run / "checkpoint.pt") in str(exc.value) and "Delete it" in str(exc.value)


def test_checkpoint_holds_only_tensors_and_plain_data(data, tmp_path):
    train_bkd(data, TINY.replace(epochs=1, tipping_fallback=0, tipping_window=1), tmp_path / "run", progress=False)
    state = RunDir(tmp_path / "run").load_checkpoint(
        json.loads((tmp_path / "run" / "config.json").read_text())["identity"])
    tensors = [state["generator"], state["torch_rng"], *state["networks"]["teacher"].values()]
    assert all(t.device.type == "cpu" for t in tensors)  # a CUDA run's state lands on the CPU, as set_state needs
    assert state["generator"].dtype == torch.uint8


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated"])
def test_damaged_checkpoint_is_named_with_what_to_do(data, tmp_path, content):
    run = tmp_path / "run"
    train_bkd(data, TINY, run, progress=False)
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    (run / "metrics.json").unlink()
    with pytest.raises(DamagedFileError, match="is damaged") as exc:
        train_bkd(data, TINY, run, progress=False)
    assert str(path) in str(exc.value) and "restart this run" in str(exc.value)


# -- never write into another run's folder -----------------------------------------------------------


def test_finished_run_without_checkpoint_is_not_overwritten_by_another_config(data, tmp_path):
    run = tmp_path / "run"
    train_bkd(data, TINY, run, progress=False)
    (run / "checkpoint.pt").unlink()  # as committed runs are
    before = _digest(run)
    with pytest.raises(RunDirError, match="belongs to a different run"):
        train_bkd(data, TINY.replace(lr=0.05), run, progress=False)
    with pytest.raises(RunDirError, match="belongs to a different run"):
        train_ce(data, TINY, run, progress=False)
    assert _digest(run) == before
    again = train_bkd(data, TINY, run, progress=False)  # the same run is returned, not retrained
    assert again.metrics == json.loads((run / "metrics.json").read_text()) and again.networks == {}


def test_folder_with_run_files_but_no_config_is_refused(data, tmp_path):
    run = tmp_path / "batch-run"
    run.mkdir()
    (run / "metrics.json").write_text('{"methods": {}}\n')  # e.g. a reproduce run folder
    with pytest.raises(RunDirError, match="no config.json"):
        train_bkd(data, TINY, run, progress=False)
    assert (run / "metrics.json").read_text() == '{"methods": {}}\n'


def test_edited_config_json_is_refused(data, tmp_path):
    run = tmp_path / "run"
    train_ce(data, TINY, run, progress=False)
    stored = json.loads((run / "config.json").read_text())
    stored["config"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(stored))
    before = _digest(run)
    with pytest.raises(RunDirError, match="was edited after the run wrote it"):
        train_ce(data, TINY, run, progress=False)
    assert _digest(run) == before


def test_run_dir_that_is_a_file_is_refused(data, tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        train_bkd(data, TINY, path, progress=False)


def test_second_writer_is_refused_while_the_first_holds_the_lock(data, tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():  # another writer (flock locks are per open file, so this holds against this process too)
        with pytest.raises(RunDirError, match=r"another process \(pid \d+\) is writing"):
            train_bkd(data, TINY, run.path, progress=False)
        with pytest.raises(RunDirError, match="another process"):
            train_confident_learning(data, TINY, run.path, folds=2, progress=False)
    train_bkd(data, TINY, run.path, progress=False)  # released: now it trains


def test_read_only_folder_is_answered_before_training(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a non-root user sees in a read-only folder
    with pytest.raises(RunDirError, match="is not writable"):
        train_bkd(data, TINY, run, progress=False)
    assert not (run / "epochs").exists()


# -- a diverging run ends in an error ---------------------------------------------------------------


def test_diverging_run_stops_with_the_epoch_and_cause(data, tmp_path):
    with pytest.raises(DivergedError, match=r"diverged in epoch \d+, within batches 1-1 of 2: .*infinite or NaN"
                                            r".*lr=1e\+06") as exc:
        train_bkd(data, TINY.replace(lr=1e6, epochs=4), tmp_path / "run", progress=False)
    assert "lower lr" in str(exc.value) and "No result was written" in str(exc.value)
    epoch = int(str(exc.value).split("diverged in epoch ")[1].split(",")[0])
    assert not (tmp_path / "run" / "metrics.json").exists()
    saved = sorted((tmp_path / "run" / "epochs").glob("*.npz")) if (tmp_path / "run" / "epochs").exists() else []
    assert len(saved) == epoch - 1  # the diverged epoch is not saved: the checkpoint is the last finite one


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_a_non_finite_logit_stops_the_run_within_its_batch(data, tmp_path, monkeypatch, network):
    """One infinite logit of one network in the second epoch's second batch: the run stops right there, names
    that network and batch, and keeps the first epoch's checkpoint (no optimizer step ran on the bad batch)."""
    from bkd_core.train import BKDTrainer

    calls = {"n": 0}
    original = BKDTrainer.train_step

    def poisoned(self, pos, *, step=True):
        calls["n"] += 1
        if calls["n"] == 4:  # 108 training rows, batch 64: two batches an epoch
            forward = self.networks[network].forward
            self.networks[network].forward = lambda x: forward(x).index_fill(1, torch.tensor([0]), float("inf"))
            try:
                return original(self, pos, step=step)
            finally:
                del self.networks[network].forward
        return original(self, pos, step=step)

    monkeypatch.setattr(BKDTrainer, "train_step", poisoned)
    with pytest.raises(DivergedError) as exc:
        train_bkd(data, TINY.replace(epochs=3), tmp_path / "run", progress=False)
    message = str(exc.value)
    assert message.startswith(f"training diverged in epoch 2, within batches 2-2 of 2: the {network}'s logits")
    assert "checkpoint of epoch 1" in message and calls["n"] == 4
    assert sorted(p.name for p in (tmp_path / "run" / "epochs").glob("*.npz")) == ["epoch_000.npz"]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_finished_run_writes_its_curves_and_tipping_scores(data, tmp_path):
    from bkd_core.metrics import rank_auc

    cfg = TINY.replace(epochs=8, tipping_fallback=1, tipping_window=1)
    result = train_bkd(data, cfg, tmp_path / "run", progress=False)
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert curves["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0][:result.metrics["epochs"]]
    for key in ("mean_max_student", "loss", "test_acc", "fit_mislabelled", "fit_clean", "agreement_auc"):
        assert len(curves[key]) == len(curves["epoch"]), key
    assert all(0 <= v <= 1 for v in curves["fit_mislabelled"] + curves["fit_clean"])
    tip = result.metrics["tipping_epoch"]
    assert tip is not None
    with np.load(tmp_path / "run" / "tipping_scores.npz") as f:
        assert f["agreement"].dtype == np.float16
    agreement, is_noisy = RunDir(tmp_path / "run").load_tipping_scores()
    np.testing.assert_array_equal(is_noisy, data.is_noisy)
    np.testing.assert_allclose(agreement, result.label_quality, atol=1e-3)
    assert curves["agreement_auc"][tip] == pytest.approx(rank_auc(result.label_quality, data.is_noisy), abs=1e-9)
    (tmp_path / "run" / "tipping_scores.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DamagedFileError, match="tipping_scores.npz is damaged"):
        RunDir(tmp_path / "run").load_tipping_scores()


# -- damaged and missing files ------------------------------------------------------------------------


def _interrupted_run(data, run: Path, epochs: int = 3) -> BKDConfig:
    cfg = TINY.replace(epochs=epochs)
    train_bkd(data, cfg, run, progress=False)
    (run / "metrics.json").unlink()
    (run / "scores.npz").unlink()
    return cfg


def test_damaged_or_missing_epoch_file_is_found_at_resume(data, tmp_path):
    run = tmp_path / "run"
    cfg = _interrupted_run(data, run)
    epoch_file = run / "epochs" / "epoch_001.npz"
    epoch_file.write_bytes(epoch_file.read_bytes()[:50])
    with pytest.raises(DamagedFileError, match=r"epoch file .*epoch_001\.npz is damaged"):
        train_bkd(data, cfg, run, progress=False)
    epoch_file.unlink()
    with pytest.raises(DamagedFileError, match=r"epoch_001\.npz is missing.*delete"):
        train_bkd(data, cfg, run, progress=False)


def test_truncated_scores_of_a_finished_run_are_recomputed_from_its_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    first = train_bkd(data, TINY, run, progress=False)
    scores = run / "scores.npz"
    scores.write_bytes(scores.read_bytes()[:100])
    again = train_bkd(data, TINY, run, progress=False)
    np.testing.assert_array_equal(first.label_quality, again.label_quality)
    (run / "checkpoint.pt").unlink()
    scores.write_bytes(scores.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"scores\.npz is damaged"):
        train_bkd(data, TINY, run, progress=False)


def test_stale_temp_files_of_a_killed_writer_are_removed(data, tmp_path):
    run = tmp_path / "run"
    (run / "epochs").mkdir(parents=True)
    stale = [run / ".checkpoint.pt.a1b2_c3d.tmp", run / "epochs" / ".epoch_000.npz.zz99yy88.tmp"]
    keep = [run / "notes.tmp", run / ".hidden"]
    for path in stale + keep:
        path.write_text("x")
    train_ce(data, TINY, run, progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_tipping_window_one_with_fallback_detects(data, tmp_path):
    # the fallback fires at the epoch it names when the window is 1: its eval-pass scores must exist
    result = train_bkd(data, TINY.replace(epochs=3, tipping_window=1, tipping_fallback=0), tmp_path / "run",
                       progress=False)
    assert result.metrics["tipping_epoch"] == 0 and result.metrics["tipping_rule"] == "fallback"
    assert np.isfinite(result.label_quality).all() and result.arrays["groups"].shape == (len(data),)
