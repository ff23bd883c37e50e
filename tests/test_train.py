"""Training end to end on the CPU: determinism, checkpoint/resume, outputs, detection on synthetic data,
and (with BKD_DATA_DIR set) a short run on real CIFAR-10N."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bkd_core.config import BKDConfig
from bkd_core.method import find_tipping_point
from bkd_core.synthetic import make_synthetic_cifar_n
from bkd_core.train import train_bkd, train_ce

TINY = BKDConfig(model="small_cnn", model_widths=(8, 16, 16), epochs=3, batch_size=64, lr=0.02, lr_step=None,
                 augment=True, val_every=1, test_every=1, eval_batch_size=256, seed=0)


@pytest.fixture(scope="module")
def tiny_data():
    return make_synthetic_cifar_n(n_train=240, n_test=60, noise_rate=0.3, seed=1)


def _arrays(run_dir):
    with np.load(run_dir / "scores.npz") as f:
        return {k: f[k] for k in f.files}


def _same_outputs(a, b):
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    for volatile in ("wall_time_s", "command"):
        ma.pop(volatile), mb.pop(volatile)
    assert ma == mb
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for key in xa:
        if key == "history_epoch_time":
            continue
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


def test_bkd_run_writes_documented_outputs(tiny_data, tmp_path):
    result = train_bkd(tiny_data, TINY, tmp_path / "run", progress=False)
    n = len(tiny_data)
    for name in ("config.json", "metrics.json", "scores.npz", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()
    arrays = _arrays(tmp_path / "run")
    assert arrays["label_issues"].dtype == bool and arrays["label_issues"].shape == (n,)
    assert arrays["label_quality"].shape == (n,)
    assert np.all(np.diff(arrays["label_quality"][arrays["ranked_indices"]]) >= 0)  # most suspicious first
    assert sorted(arrays["ranked_indices"]) == list(range(n))
    np.testing.assert_array_equal(arrays["indices"], tiny_data.indices)
    assert arrays["history_train_agreement"].dtype == np.float16
    assert arrays["history_train_agreement"].shape == (TINY.epochs, len(arrays["train_rows"]))
    assert arrays["history_mean_max_student"].shape == (TINY.epochs,)
    m = result.metrics
    for key in ("test_acc", "val_acc", "tipping_epoch", "estimated_noise_rate", "detection_precision",
                "detection_recall", "detection_f1", "wall_time_s", "device", "versions", "true_noise_rate"):
        assert key in m, key
    assert m["true_noise_rate"] == pytest.approx(tiny_data.noise_rate)
    assert 0 <= m["test_acc"] <= 100


def test_same_seed_same_results_and_other_seed_differs(tiny_data, tmp_path):
    cfg = TINY.replace(epochs=2)
    train_bkd(tiny_data, cfg, tmp_path / "a", progress=False)
    train_bkd(tiny_data, cfg, tmp_path / "b", progress=False)
    _same_outputs(tmp_path / "a", tmp_path / "b")
    train_bkd(tiny_data, cfg.replace(seed=1), tmp_path / "c", progress=False)
    assert not np.array_equal(_arrays(tmp_path / "a")["label_quality"], _arrays(tmp_path / "c")["label_quality"])


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("trainer", [train_bkd, train_ce])
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_data, tmp_path, monkeypatch, trainer):
    cfg = TINY.replace(epochs=8, tipping_fallback=3)  # the fallback guarantees phase 2 happens after the resume
    trainer(tiny_data, cfg, tmp_path / "straight", progress=False)

    from bkd_core import train as train_module
    base_save = train_module._Trainer.save_checkpoint

    def save_then_maybe_crash(self):
        base_save(self)
        if self.epoch == 5:
            raise _Interrupt
    monkeypatch.setattr(train_module._Trainer, "save_checkpoint", save_then_maybe_crash)
    with pytest.raises(_Interrupt):
        trainer(tiny_data, cfg, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(train_module._Trainer, "save_checkpoint", base_save)
    trainer(tiny_data, cfg, tmp_path / "resumed", progress=False)
    _same_outputs(tmp_path / "straight", tmp_path / "resumed")


def test_finished_run_is_returned_not_retrained(tiny_data, tmp_path, monkeypatch):
    cfg = TINY.replace(epochs=1)
    first = train_bkd(tiny_data, cfg, tmp_path / "run", progress=False)
    from bkd_core import train as train_module
    monkeypatch.setattr(train_module._BKDTrainer, "train_epoch", lambda self: pytest.fail("retrained"))
    again = train_bkd(tiny_data, cfg, tmp_path / "run", progress=False)
    assert again.metrics == first.metrics


def test_run_dir_of_another_config_is_refused(tiny_data, tmp_path):
    train_bkd(tiny_data, TINY.replace(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different run"):
        train_bkd(tiny_data, TINY.replace(epochs=1, lr=0.05), tmp_path / "run", progress=False)


def test_tipping_fallback_starts_phase_two_and_groups_the_training_set(tiny_data, tmp_path):
    cfg = TINY.replace(epochs=6, tipping_fallback=2, augment=False)
    result = train_bkd(tiny_data, cfg, tmp_path / "run", progress=False)
    phase = result.history["phase"]
    if result.tipping_epoch is None:
        pytest.fail("fallback did not fire")
    found = result.metrics["tipping_found_at_epoch"]
    assert found == result.tipping_epoch + cfg.tipping_window or result.tipping_epoch == 2
    expected_rule = "fallback" if find_tipping_point(result.history["mean_max_student"][: found + 1]) is None else "peak"
    assert result.metrics["tipping_rule"] == expected_rule
    assert np.all(phase[: found + 1] == 1) and np.all(phase[found + 1:] == 2)
    groups = result.arrays["groups"]
    assert set(np.unique(groups)) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(result.label_issues, groups == 4)
    # eval-pass scores exist up to the tipping epoch and not after it fired
    eval_hist = result.history["eval_agreement"].astype(np.float64)
    assert not np.isnan(eval_hist[: found]).any() and np.isnan(eval_hist[found + 1:]).all()


def test_synthetic_noise_is_detected_far_better_than_flagging_everything(tmp_path):
    # 400 images, 30% label noise, three data seeds: the teacher memorizes after ~10 epochs, the student's
    # confidence peaks, and the Otsu split of the agreement scores finds the noisy samples. Measured with the
    # native (AVX-512), AVX2 and default kernels: the peak rule fired at epochs 10-12 in every run; G4 F1 was
    # 0.52-0.76 against flag-all 0.45-0.46 (mean over the seeds 0.20-0.25 above it), below-threshold F1
    # 0.68-0.93 and the ranking AUC 0.90-0.99. A single run's G4 F1 moves with the CPU's float path (the
    # tipping epoch shifts by one or two), so the assertions hold over the seeds, each with a wide margin.
    from bkd_core.metrics import ranking_auc

    cfg = BKDConfig(model="small_cnn", model_widths=(32, 32, 64), epochs=16, batch_size=32, lr=0.02, lr_step=None,
                    augment=False, val_every=4, test_every=4, seed=0)
    runs = []
    for seed in range(3):
        data = make_synthetic_cifar_n(n_train=400, n_test=100, noise_rate=0.3, seed=seed, pixel_noise=60.0)
        result = train_bkd(data, cfg, tmp_path / f"run{seed}", progress=False)
        runs.append((result.metrics, ranking_auc(result.label_quality, data.is_noisy)))
    peaked = [m for m, _ in runs if m["tipping_rule"] == "peak"]  # no fallback configured
    assert len(peaked) >= 2, [m["tipping_epoch"] for m, _ in runs]
    for m in peaked:
        assert m["below_threshold_f1"] > m["flag_all_f1"] + 0.1, m
    assert np.mean([m["detection_f1"] - m["flag_all_f1"] for m in peaked]) > 0.1  # official mask: G4 only
    assert np.mean([abs(m["estimated_noise_rate"] - m["true_noise_rate"]) for m in peaked]) < 0.12
    assert all(auc > 0.75 for _, auc in runs), [auc for _, auc in runs]  # 0.5 is chance


def test_ce_baseline_records_memorization(tiny_data, tmp_path):
    result = train_ce(tiny_data, TINY, tmp_path / "ce", progress=False)
    memorized = result.history["train_predicts_label"]
    assert memorized.shape == (TINY.epochs, len(result.arrays["train_rows"]))
    assert set(np.unique(memorized.astype(np.float32))) <= {0.0, 1.0}
    assert "detection_f1" in result.metrics and "tipping_epoch" not in result.metrics


@pytest.mark.skipif(not os.environ.get("BKD_DATA_DIR"), reason="BKD_DATA_DIR is not set: real CIFAR-10N data unavailable")
def test_short_real_cifar10n_run(tmp_path):
    from bkd_core.data import load_cifar_n

    data = load_cifar_n("cifar10", "worst")
    cfg = TINY.replace(train_size=500, test_size=500, epochs=2)
    result = train_bkd(data, cfg, tmp_path / "real", progress=False)
    m = result.metrics
    assert m["num_samples"] == 500 and m["num_test"] == 500
    assert m["true_noise_rate"] == pytest.approx(data.subset(500, 0).noise_rate)
    assert 0.3 < m["true_noise_rate"] < 0.5  # worst: 40.2% overall
    assert m["test_acc"] > 10.0  # better than chance after two epochs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_run_matches_cpu_quality(tiny_data, tmp_path):
    cfg = TINY.replace(device="cuda", epochs=3)
    result = train_bkd(tiny_data, cfg, tmp_path / "gpu", progress=False)
    assert result.metrics["device"].startswith("cuda")
    assert result.metrics["test_acc"] > 10.0
    cpu = train_bkd(tiny_data, cfg.replace(device="cpu"), tmp_path / "cpu", progress=False)
    assert abs(result.metrics["test_acc"] - cpu.metrics["test_acc"]) < 25.0
