"""A run folder (``bkd_core.rundir``) that cannot be turned against its user: it is never written for another
run, one process writes at a time, nothing outside it is written through a link, a checkpoint runs no code,
damaged and missing files are named with what to do, and a killed writer's temporary files are removed.

The cases run through ``train_bkd`` / ``train_ce`` (how every run writes its folder) or :class:`RunDir` itself.
How a checkpoint is loaded on the CPU whatever the device is in test_train.py (gpu_check runs that file on CUDA);
that these errors reach the command line as one line is in test_cli_errors.py."""

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
from bkd_core.errors import DamagedFileError, RunDirError, UnsafeFileError
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


# -- identity: never written for another run ------------------------------------------------------------


def test_a_finished_run_is_returned_and_another_run_is_refused(data, tmp_path, monkeypatch):
    """With or without its checkpoint (committed runs have none), a finished run's folder is returned as it is
    for its own configuration and refused, unchanged, for another configuration or another kind of run."""
    from bkd_core import train as train_module

    run = tmp_path / "run"
    first = train_bkd(data, TINY, run, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(train_module.BKDTrainer, "train_epoch", lambda self: pytest.fail("retrained"))
        assert train_bkd(data, TINY, run, progress=False).metrics == first.metrics
    with pytest.raises(RunDirError, match="belongs to a different run"):
        train_bkd(data, TINY.replace(lr=0.05), run, progress=False)
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
    assert path.read_text() == "x"


@pytest.mark.parametrize("content", ["list", "folder"])
def test_a_config_json_that_is_no_config_is_named(data, tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    if content == "list":
        (run / "config.json").write_text("[1, 2]")
    else:
        (run / "config.json").mkdir()
    with pytest.raises((DamagedFileError, RunDirError), match="config.json"):
        train_bkd(data, TINY, run, progress=False)


@pytest.mark.parametrize("entry", ["epochs", "config.json", "checkpoint.pt", "metrics.json", "scores.npz"])
def test_a_symlink_inside_a_run_folder_is_refused_and_its_target_kept(data, tmp_path, entry):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    if entry == "epochs":
        elsewhere.mkdir()
    else:
        elsewhere.write_text("DATA\n")
    (run / entry).symlink_to(elsewhere)
    with pytest.raises(RunDirError, match=f"{entry}.*symbolic link"):
        train_bkd(data, TINY, run, progress=False)
    if entry == "epochs":
        assert list(elsewhere.iterdir()) == []  # no epoch file written outside the run folder
    else:
        assert elsewhere.read_text() == "DATA\n"


# -- one writer: the lock ----------------------------------------------------------------------------------


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


def _lock_target(kind: str, run: Path, tmp_path: Path) -> Path:
    """Put a hostile ``.lock`` of ``kind`` into ``run``; return the victim file it may point at."""
    victim = tmp_path / "victim"
    victim.write_text("DATA\n")
    lock = run / ".lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "hardlink":
        os.link(victim, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    return victim


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hardlink", "fifo", "folder"])
def test_a_hostile_lock_file_is_refused_and_nothing_outside_is_written(data, tmp_path, kind):
    """By :meth:`RunDir.lock` and through ``train_bkd`` alike (the probe's case: ``ln -s /tmp/victim r/.lock``,
    then ``python -m bkd_core train ... --out r``): refused before anything is opened for writing."""
    run = tmp_path / "run"
    run.mkdir()
    victim = _lock_target(kind, run, tmp_path)
    refused = r"\.lock .*not a regular file|\.lock .*link"
    with pytest.raises(RunDirError, match=refused):
        with RunDir(run).lock():
            pass
    with pytest.raises(RunDirError, match=refused):
        train_bkd(data, TINY, run, progress=False)
    assert victim.read_text() == "DATA\n"
    assert not (tmp_path / "nowhere").exists() and not (run / "epochs").exists()


def test_an_existing_lock_file_is_not_truncated(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("12345\n" + "x" * 200)
    with RunDir(run).lock():
        first_line = (run / ".lock").read_text().splitlines()[0].strip()
        assert first_line == str(os.getpid())
    assert (run / ".lock").stat().st_size >= 206


# -- no code from a checkpoint ---------------------------------------------------------------------------


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
    message = str(exc.value)
    assert str(run / "checkpoint.pt") in message and "nothing in it was run" in message and "Delete it" in message


# -- damaged and missing files ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated", "folder"])
def test_damaged_checkpoint_is_named_with_what_to_do(data, tmp_path, content):
    run = tmp_path / "run"
    train_bkd(data, TINY, run, progress=False)
    path = run / "checkpoint.pt"
    if content == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    (run / "metrics.json").unlink()
    with pytest.raises(DamagedFileError, match="is damaged") as exc:
        train_bkd(data, TINY, run, progress=False)
    assert str(path) in str(exc.value) and "Delete it to restart this run" in str(exc.value)


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
    with pytest.raises(DamagedFileError, match=r"epoch file .*epoch_001\.npz is damaged.*delete"):
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
    assert json.loads((run / "metrics.json").read_text())["detection_f1"] == first.metrics["detection_f1"]
    (run / "checkpoint.pt").unlink()
    scores.write_bytes(scores.read_bytes()[:100])
    with pytest.raises(DamagedFileError, match=r"scores\.npz is damaged"):
        train_bkd(data, TINY, run, progress=False)


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


def test_stale_temp_files_of_a_killed_writer_are_removed(data, tmp_path):
    run = tmp_path / "run"
    (run / "epochs").mkdir(parents=True)
    stale = [run / ".checkpoint.pt.a1b2_c3d.tmp", run / "epochs" / ".epoch_000.npz.zz99yy88.tmp"]
    keep = [run / "notes.tmp", run / ".hidden"]
    for path in stale + keep:
        path.write_text("x")
    train_ce(data, TINY, run, progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_a_damaged_array_file_is_named_and_closed(tmp_path):
    """A truncated .npz (a zip whose directory is gone) is one DamagedFileError naming it, and its file is closed
    at once, not left for the garbage collector to warn about during some later test."""
    import gc
    import warnings

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    np.savez(tmp_path / "whole.npz", a=np.zeros(1000))
    truncated = (tmp_path / "whole.npz").read_bytes()[:1000]
    (run.path / "metrics.json").write_text("{}")
    for name in ("scores.npz", "tipping_scores.npz"):
        (run.path / name).write_bytes(truncated)
    run.epoch_file(0).parent.mkdir()
    run.epoch_file(0).write_bytes(truncated)
    gc.collect()  # what earlier tests left warns now, not below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for read, name in ((run.load_outputs, "scores.npz"), (run.load_tipping_scores, "tipping_scores.npz"),
                           (lambda: run.load_epoch(0), run.epoch_file(0).name)):
            with pytest.raises(DamagedFileError, match=name):
                read()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and str(tmp_path) in str(w.message)]
