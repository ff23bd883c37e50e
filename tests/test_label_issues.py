"""Tests of bkd_core.label_issues: the one-call BKD detector on feature vectors."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bkd_core import label_issues as li
from bkd_core import train
from bkd_core.config import BKDConfig
from bkd_core.errors import DivergedError
from bkd_core.label_issues import find_label_issues
from bkd_core.synthetic import make_synthetic_cifar_n


def _noisy_clusters(seed: int = 0, n_per: int = 150, classes: int = 4, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(classes, 16))
    clean = np.repeat(np.arange(classes), n_per)
    x = (centres[clean] + rng.normal(size=(len(clean), 16))).astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    given = clean.copy()
    flip = rng.random(len(clean)) < noise
    given[flip] = (clean[flip] + rng.integers(1, classes, flip.sum())) % classes
    return x, given, given != clean


def _auc(score_of_positive: np.ndarray, score_of_negative: np.ndarray) -> float:
    """P(a positive scores lower than a negative): the ranking AUC for 'lower = worse'."""
    diff = score_of_positive[:, None] - score_of_negative[None, :]
    return float((diff < 0).mean() + 0.5 * (diff == 0).mean())


def test_outputs_and_that_wrong_labels_score_lower():
    x, given, wrong = _noisy_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # whether the peak rule fires is not tested here
        res = find_label_issues(x, given, widths=(64,), epochs=12, batch_size=64, progress=False)
    n = len(given)
    assert res.label_issues.shape == (n,) and res.label_issues.dtype == bool
    assert res.label_quality.shape == (n,) and res.label_quality.dtype == np.float32
    assert ((res.label_quality >= 0) & (res.label_quality <= 1)).all()
    np.testing.assert_array_equal(np.sort(res.ranked_indices), np.arange(n))
    assert (np.diff(res.label_quality[res.ranked_indices]) >= 0).all()  # worst first
    assert set(np.unique(res.groups)) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(res.label_issues, res.label_quality < res.threshold)  # the default mask
    np.testing.assert_array_equal(res.g4, res.groups == 4)
    assert 0 <= res.tipping_epoch < len(res.epoch_statistic) <= 12
    assert res.estimated_noise_rate == pytest.approx(float((res.label_quality < res.threshold).mean()))
    # the older names read the same outputs
    assert res.noise_rate == res.estimated_noise_rate and res.ranked is res.ranked_indices
    # separated clusters, 30% wrong labels: the agreement score ranks wrong labels far below
    assert _auc(res.label_quality[wrong], res.label_quality[~wrong]) >= 0.85
    precision = (res.label_issues & wrong).sum() / max(res.label_issues.sum(), 1)
    assert precision >= 0.6  # flagging at random would give 0.3


def test_deterministic_and_flag_option():
    x, given, _ = _noisy_clusters(1, n_per=60)
    kwargs = dict(widths=(16,), epochs=8, batch_size=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = find_label_issues(x, given, flag="g4", **kwargs)
        b = find_label_issues(x, given, flag="g4", **kwargs)
        c = find_label_issues(x, given, **kwargs)  # the default mask
    np.testing.assert_array_equal(a.label_quality, b.label_quality)
    np.testing.assert_array_equal(c.label_issues, c.label_quality < c.threshold)
    assert c.label_issues.sum() >= a.label_issues.sum()  # G4 lies below the threshold
    # one training gives both masks: flag only chooses which one is label_issues
    np.testing.assert_array_equal(a.label_quality, c.label_quality)
    np.testing.assert_array_equal(a.g4, c.g4)
    np.testing.assert_array_equal(a.below_threshold, c.below_threshold)
    np.testing.assert_array_equal(a.label_issues, a.g4)
    np.testing.assert_array_equal(c.label_issues, c.below_threshold)
    np.testing.assert_array_equal(a.g4, a.groups == 4)
    np.testing.assert_array_equal(a.below_threshold, a.label_quality < a.threshold)
    assert (a.flag, c.flag) == ("g4", "below_threshold")
    assert a.separation > 0 and np.isfinite(a.separation)


@pytest.mark.parametrize("kwargs, match", [(dict(epochs=5), "epochs"), (dict(flag="all"), "flag"),
                                           (dict(num_classes=2), "labels must lie")])
def test_arguments_are_checked(kwargs, match):
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=match):
        find_label_issues(x, given, progress=False, **kwargs)
    with pytest.raises(ValueError, match="features must be"):
        find_label_issues(x, given[:-1], progress=False)


def test_non_finite_features_are_refused_with_the_row_count():
    x, given, _ = _noisy_clusters(n_per=5)
    x[3, 2], x[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match="NaN or infinite values in 2 of 20 rows"):
        find_label_issues(x, given, progress=False)


def test_a_diverging_training_stops_with_the_learning_rate_named():
    x, given, _ = _noisy_clusters(n_per=20)
    with pytest.raises(DivergedError, match=r"diverged in epoch \d+.*lr=1e\+06"):
        find_label_issues(1e3 * x, given, widths=(16,), epochs=8, batch_size=16, lr=1e6, progress=False)


def test_a_missing_cuda_device_is_refused_before_training():
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match="cuda:99"):
        find_label_issues(x, given, device="cuda:99", progress=False)


def _flat_then_rising(monkeypatch):
    """Make the student's statistic rise every epoch (no strict peak): the no-peak rule decides."""
    calls = iter(range(1000))
    real = li.tipping_point

    def no_peak(curve, **kwargs):
        curve = [0.1 * next(calls) for _ in curve]  # strictly increasing: never a peak
        return real(curve, **kwargs)

    monkeypatch.setattr(li, "tipping_point", no_peak)


@pytest.mark.parametrize("fallback, epoch, flagged", [("highest", None, True), (3, 3, True), (None, None, False)])
def test_the_no_peak_rule_is_the_trainers_and_a_keyword(monkeypatch, fallback, epoch, flagged):
    x, given, _ = _noisy_clusters(2, n_per=30)
    _flat_then_rising(monkeypatch)
    with pytest.warns(RuntimeWarning, match="did not fire"):
        res = find_label_issues(x, given, widths=(16,), epochs=7, batch_size=32, tipping_fallback=fallback,
                                progress=False)
    assert not res.tipping_found
    if fallback is None:  # the official code: phase 2 never starts, nothing is flagged
        assert res.tipping_epoch is None and res.tipping_rule is None and not res.label_issues.any()
        assert np.isnan(res.threshold) and len(res.epoch_statistic) == 7
    elif fallback == "highest":  # the default: the epoch of the highest statistic after all epochs
        assert res.tipping_rule == "highest" and len(res.epoch_statistic) == 7
        assert res.tipping_epoch == 6  # the highest of the (patched, rising) statistic
    else:  # an integer, as BKDConfig.tipping_fallback: taken after fallback + window epochs
        assert res.tipping_rule == "fallback" and res.tipping_epoch == epoch and len(res.epoch_statistic) == 5
    assert flagged == bool(res.label_issues.any() or res.below_threshold.any())


def test_trainer_and_find_label_issues_take_the_same_step_on_the_same_batch(tmp_path, monkeypatch):
    """BKDTrainer.train_step and find_label_issues' step both go through method.bkd_step, and on the same
    networks and batch give the same losses, per-sample values and updated weights, bit for bit."""
    data = make_synthetic_cifar_n(n_train=120, n_test=20, num_classes=4, noise_rate=0.3, seed=3)
    config = BKDConfig(model="small_cnn", model_widths=(8, 8, 8), epochs=3, batch_size=32, augment=False,
                       lr_step=None, seed=0, device="cpu")
    trainer = train.BKDTrainer(data, config, tmp_path / "run", False)
    copies = {name: copy.deepcopy(net) for name, net in trainer.networks.items()}
    calls = []
    real_step = li.bkd_step

    def recording(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(train, "bkd_step", recording)
    monkeypatch.setattr(li, "bkd_step", recording)
    pos = torch.arange(32)
    x = trainer.batch_inputs(trainer.train_rows[pos], augment=False)
    y = trainer.train_labels[pos]
    values, _ = trainer.train_step(pos)
    optimizer, _ = train.build_optimizer(config, copies.values(), torch.device("cpu"))
    out = li._train_step(copies["teacher"], copies["student"], optimizer, x, y, config)
    assert len(calls) == 2  # one call of the shared step from each path
    mine, theirs = calls
    for key in ("loss", "cross_entropy", "compensation", "agreement", "student_confidence"):
        torch.testing.assert_close(getattr(mine, key), getattr(theirs, key), rtol=0, atol=0, msg=key)
    torch.testing.assert_close(values["train_agreement"], out.agreement, rtol=0, atol=0)
    for name, net in trainer.networks.items():
        for (key, a), b in zip(net.state_dict().items(), copies[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}.{key}")


# -- hostile inputs: one clear sentence before any training ------------------------------------
@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a network is built: every refusal below must come before any training."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(li, "build_networks", refuse)


def test_a_reversed_view_is_copied_and_gives_the_contiguous_result():
    x, given, _ = _noisy_clusters(4, n_per=20)
    kwargs = dict(widths=(8,), epochs=6, batch_size=32, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        view = find_label_issues(x[::-1], given[::-1], **kwargs)
        copied = find_label_issues(np.ascontiguousarray(x[::-1]), given[::-1].copy(), **kwargs)
        strided = find_label_issues(torch.from_numpy(np.asfortranarray(x)), torch.from_numpy(given), **kwargs)
        plain = find_label_issues(x, given, **kwargs)
    np.testing.assert_array_equal(view.label_quality, copied.label_quality)
    np.testing.assert_array_equal(strided.label_quality, plain.label_quality)


@pytest.mark.parametrize("features, labels, kwargs, match", [
    (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), {}, r"shape \(0, 4\): at least one sample"),
    (np.zeros((5, 0), np.float32), np.zeros(5, np.int64), {}, "at least one sample and one feature column"),
    (np.ones(5, np.float32), np.zeros(5, np.int64), {}, r"features must be \[N, D\]"),
    (np.array([["a", "b"]] * 4), np.arange(4) % 2, {}, "features must be numbers"),
    (np.full((4, 2), 1e39), np.arange(4) % 2, {}, r"beyond float32's range .* overflow to infinity"),
    (np.eye(4, 2), np.arange(4) % 2 * 1.0, {}, "labels must be integers"),
    (np.eye(4, 2), np.arange(4) - 1, {}, "labels must be class indices >= 0"),
], ids=["no rows", "no columns", "1-D", "strings", "float64 overflow", "float labels", "negative labels"])
def test_bad_features_and_labels_are_refused_before_training(no_training, features, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_label_issues(features, labels, progress=False, **kwargs)


def test_sparse_class_ids_are_refused_with_the_remapping(no_training):
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=r"4 distinct values between 0 and 3000.*map them to 0\.\.3"):
        find_label_issues(x, given * 1000, progress=False)
    compact = np.unique(given * 1000, return_inverse=True)[1]  # the remapping the message names
    np.testing.assert_array_equal(compact, given)


def test_huge_label_values_are_refused_without_allocating(no_training):
    x, given, _ = _noisy_clusters(n_per=5)
    huge = given.astype(np.int64) * 10**8
    with pytest.raises(ValueError, match="distinct values"):
        find_label_issues(x, huge, progress=False)
    with pytest.raises(ValueError, match="more than the 100,000 classes"):
        find_label_issues(x, huge, num_classes=3 * 10**8 + 1, progress=False)
    with pytest.raises(ValueError, match="labels must be class indices|distinct values"):
        find_label_issues(x, np.array([2**64 - 1] + [0] * 19, dtype=np.uint64), progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=2**70), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(epochs=None), "epochs must be an integer, got None"),
    (dict(epochs=7.0), "epochs must be an integer"),
    (dict(num_classes=4.7), "num_classes must be an integer, got 4.7"),
    (dict(num_classes=True), "num_classes must be an integer"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(tipping_window=None), "tipping_window must be an integer"),
    (dict(tipping_fallback="max"), "fallback must be None, 'highest' or an integer"),
])
def test_bad_options_are_refused_before_training(no_training, kwargs, match):
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=match):
        find_label_issues(x, given, progress=False, **kwargs)


def test_zero_variance_features_are_warned_about():
    _, given, _ = _noisy_clusters(n_per=10)
    with pytest.warns(RuntimeWarning, match="identical .*zero variance"):
        try:
            find_label_issues(np.zeros((len(given), 3)), given, widths=(4,), epochs=6, batch_size=40,
                              progress=False)
        except ValueError as exc:  # the scores may be too few distinct values for an Otsu split
            assert "no split" in str(exc)


# -- inputs refused before anything is allocated or trained ---------------------------------------------------

def test_num_classes_far_above_what_the_labels_use_is_refused(no_training):
    x, given, _ = _noisy_clusters(n_per=5)  # 20 samples of 4 classes
    with pytest.raises(ValueError, match=r"num_classes=99,999 is far more than the labels need: they use 4 classes"):
        find_label_issues(x, given, num_classes=99_999, progress=False)
    with pytest.raises(ValueError, match="num_classes=9 is far more"):
        find_label_issues(x, given, num_classes=9, progress=False)
    with pytest.raises(AssertionError, match="training started"):  # a few classes without a sample are fine
        find_label_issues(x, given, num_classes=8, progress=False)


def test_labels_of_one_class_are_refused(no_training):
    x, _, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=r"labels hold one class only \(0\) in all 20 samples"):
        find_label_issues(x, np.zeros(20, np.int64), num_classes=2, progress=False)


def test_hidden_widths_that_cannot_fit_in_memory_are_refused(no_training):
    x, given, _ = _noisy_clusters(n_per=5)
    with pytest.raises(ValueError, match=r"widths=\(100000000,\) .* GiB .* more than this machine's .* GiB of memory"):
        find_label_issues(x, given, widths=(10**8,), device="cpu", progress=False)
    for bad in [(0,), (8.5,), "64", 64]:
        with pytest.raises(ValueError, match="width"):
            find_label_issues(x, given, widths=bad, device="cpu", progress=False)


def test_a_masked_array_is_refused_not_silently_unmasked(no_training):
    x, given, _ = _noisy_clusters(n_per=5)
    mask = np.zeros_like(x, dtype=bool)
    mask[3, 1] = True
    with pytest.raises(ValueError, match="features is a masked array with 1 masked entries"):
        find_label_issues(np.ma.masked_array(x, mask=mask), given, progress=False)
    with pytest.raises(ValueError, match="labels is a masked array with 2 masked entries"):
        find_label_issues(x, np.ma.masked_array(given, mask=np.arange(20) < 2), progress=False)
    with pytest.raises(AssertionError, match="training started"):  # nothing masked: read as its data
        find_label_issues(np.ma.masked_array(x), np.ma.masked_array(given), progress=False)


def test_find_label_issues_does_not_load_the_trainer():
    """find_label_issues builds its networks and optimizer from bkd_core.models, as the trainer does, without
    importing the trainer; the trainer's module still offers both under their old names."""
    code = ("import sys, bkd_core.label_issues, bkd_core.models as m; assert 'bkd_core.train' not in sys.modules; "
            "import bkd_core.train as t; assert (t.build_networks, t.build_optimizer) == "
            "(m.build_networks, m.build_optimizer)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
