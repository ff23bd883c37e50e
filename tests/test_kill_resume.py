"""Kill and resume: a training process SIGKILLed at chosen points (mid-epoch, right after a checkpoint,
in the middle of writing the checkpoint, the scores or the metrics) and then rerun with the same run
directory ends with the same ``metrics.json`` and ``scores.npz`` as an uninterrupted run, and no file
is ever left truncated. Each process is a real subprocess killed by SIGKILL (with the test's torch threads)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, torch
    torch.set_num_threads(int(sys.argv[3]))  # the test process's thread count: the same float reductions
    from bkd_core import io, train
    run_dir, point = sys.argv[1], sys.argv[2]
    kind, _, arg = point.partition(":")
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if kind == "mid-epoch":  # during the n-th training step
        calls, loss = [0], train.bkd_step
        def counted(*a, **k):
            calls[0] += 1
            if calls[0] == int(arg):
                die()
            return loss(*a, **k)
        train.bkd_step = counted
    elif kind == "after-checkpoint":  # right after the checkpoint of epoch n was written
        save = train.Trainer.save_checkpoint
        def save_then_die(self):
            save(self)
            if self.epoch == int(arg):
                die()
        train.Trainer.save_checkpoint = save_then_die
    elif kind == "mid-write":  # half of the temporary file of NAME written, then killed
        npz, tsave = np.savez_compressed, torch.save
        def is_target(f):
            return arg in str(getattr(f, "name", f))
        def half_then_die(f):
            if hasattr(f, "write"):
                f.write(b"PK\\x03\\x04 half a file")
                f.flush()
            else:
                open(f, "wb").write(b"half a file")
            die()
        np.savez_compressed = lambda f, *a, **k: half_then_die(f) if is_target(f) else npz(f, *a, **k)
        torch.save = lambda obj, f, *a, **k: half_then_die(f) if is_target(f) else tsave(obj, f, *a, **k)
    elif kind == "before-replace":  # NAME's temporary file complete, killed before it replaces NAME
        replace = os.replace
        def replace_or_die(src, dst):
            if os.path.basename(dst) == arg:
                die()
            return replace(src, dst)
        io.os.replace = replace_or_die
""")

#: The run every process trains (the same data and configuration in the test process and the subprocesses).
CASE = textwrap.dedent("""
    from bkd_core.config import BKDConfig
    from bkd_core.synthetic import make_synthetic_cifar_n
    data = make_synthetic_cifar_n(n_train=160, n_test=40, noise_rate=0.3, seed=5)
    cfg = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=5, batch_size=32, lr_step=None, augment=True,
                    val_every=1, test_every=1, seed=0, tipping_fallback=1)
""")

#: Where each process of the chain is killed, in order (each one resumes what the one before left).
POINTS = ["mid-epoch:3", "after-checkpoint:1", "mid-write:checkpoint.pt", "mid-write:epoch_003",
          "mid-write:scores.npz", "before-replace:metrics.json"]


def _case():
    namespace: dict = {}
    exec(CASE, namespace)
    return namespace["data"], namespace["cfg"]


def _killed_at(run_dir: Path, point: str) -> int:
    script = SCRIPT + CASE + "train.train_bkd(data, cfg, run_dir, progress=False)\n"
    import torch

    threads = str(torch.get_num_threads())
    return subprocess.run([sys.executable, "-c", script, str(run_dir), point, threads], capture_output=True, text=True,
                          timeout=300).returncode


def _outputs(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for volatile in ("wall_time_s", "command"):
        metrics.pop(volatile)
    with np.load(run_dir / "scores.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "history_epoch_time"}
    return metrics, arrays


def _nothing_truncated(run_dir: Path) -> None:
    """Every file a run reads back is whole (temporary files aside: the next writer removes them)."""
    import torch

    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp") or path.name == ".lock":
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path) as f:
                [f[k] for k in f.files]
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)


def test_run_killed_again_and_again_resumes_to_the_uninterrupted_result(tmp_path):
    from bkd_core.train import train_bkd

    data, cfg = _case()
    train_bkd(data, cfg, tmp_path / "straight", progress=False)  # as many threads here as in the subprocesses
    straight = _outputs(tmp_path / "straight")
    run_dir = tmp_path / "run"
    epochs_before = -1
    for point in POINTS:
        assert _killed_at(run_dir, point) == -signal.SIGKILL, point  # it really was killed there
        assert not (run_dir / "metrics.json").exists(), point
        _nothing_truncated(run_dir)
        epochs = len(list((run_dir / "epochs").glob("*.npz")))
        assert epochs >= epochs_before, point  # each process resumed from the last one's checkpoint
        epochs_before = epochs
    assert list(run_dir.rglob("*.tmp"))  # the last kills left temporary files behind ...
    train_bkd(data, cfg, run_dir, progress=False)
    assert not list(run_dir.rglob("*.tmp"))  # ... which the next writer removed
    metrics, arrays = _outputs(run_dir)
    assert metrics == straight[0]
    assert arrays.keys() == straight[1].keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, straight[1][key], err_msg=key)
