"""A diverging run ends in an error naming its epoch, batch and cause, and writes no result; a one-epoch
tipping window with the fallback still detects. (A run folder's own promises are in test_rundir.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bkd_core.config import BKDConfig
from bkd_core.errors import DivergedError
from bkd_core.synthetic import make_synthetic_cifar_n
from bkd_core.train import train_bkd

TINY = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=2, batch_size=64, lr_step=None, augment=False,
                 val_every=1, test_every=1, eval_batch_size=256, seed=0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_cifar_n(n_train=120, n_test=30, noise_rate=0.3, seed=2)


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


def test_tipping_window_one_with_fallback_detects(data, tmp_path):
    # the fallback fires at the epoch it names when the window is 1: its eval-pass scores must exist
    result = train_bkd(data, TINY.replace(epochs=3, tipping_window=1, tipping_fallback=0), tmp_path / "run",
                       progress=False)
    assert result.metrics["tipping_epoch"] == 0 and result.metrics["tipping_rule"] == "fallback"
    assert np.isfinite(result.label_quality).all() and result.arrays["groups"].shape == (len(data),)
