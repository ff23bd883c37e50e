"""A killed batch leaves no process behind: SIGKILL ``python -m bkd_core reproduce`` while its run notebook
trains, and its pool worker and the worker's Jupyter kernel exit too (within seconds), so that no
second writer is left on the run folder. Uses the real run notebook on real CIFAR-10N (tiny sizes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.skipif(not os.environ.get("BKD_DATA_DIR"),
                                reason="BKD_DATA_DIR is not set: real CIFAR-10N data unavailable")


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_killed_batch_leaves_no_worker_or_kernel(tmp_path):
    out = tmp_path / "batch"
    settings = ["model_widths=(4,4,4)", "train_size=300", "test_size=100", "epochs=500", "val_every=100",
                "test_every=100"]
    argv = [sys.executable, "-m", "bkd_core", "reproduce", "--profile", "cnn", "--splits", "worst", "--seeds", "0",
            "--methods", "bkd", "--jobs", "1", "--threads", "1", "--no-progress", "--out", str(out)]
    for pair in settings:
        argv += ["--set", pair]
    batch = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        epochs = out / "cifar10-worst-seed0" / "bkd" / "epochs"
        assert _wait_for(lambda: epochs.is_dir() and any(epochs.glob("*.npz")), 180), "the run never started training"
        family = psutil.Process(batch.pid).children(recursive=True)
        kernels = [p for p in family if "ipykernel" in " ".join(p.cmdline())]
        assert kernels, [p.cmdline() for p in family]  # the worker and its kernel
        batch.send_signal(signal.SIGKILL)
        batch.wait(10)
        gone, alive = psutil.wait_procs(family, timeout=20)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        trained = len(list(epochs.glob("*.npz")))
        time.sleep(1.5)
        assert len(list(epochs.glob("*.npz"))) == trained  # nothing trains on
    finally:
        for p in [batch, *(c for c in psutil.Process(os.getpid()).children(recursive=True))]:
            try:
                p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError, OSError):
                pass
