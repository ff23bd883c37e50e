"""The epoch benchmark (``benchmarks/bench_epoch.py``) runs end to end on tiny sizes, so it cannot rot
silently, and its reconstruction of the official pipeline (``benchmarks/official_pipeline.py``) computes
what ``bkd_core.method`` computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bkd_core.method import agreement_probability, blind_distillation_loss

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    """The benchmark modules, imported from ``benchmarks/`` (as the script finds them), with no
    ``BENCH_*`` variant switch set."""
    for name in [k for k in os.environ if k.startswith("BENCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_epoch
    import official_pipeline

    return bench_epoch, official_pipeline


def test_one_tiny_repeat_of_the_benchmark(bench, tmp_path):
    bench_epoch, _ = bench
    env = {k: v for k, v in os.environ.items() if k != "BKD_DATA_DIR" and not k.startswith("BENCH_")}
    env["OMP_NUM_THREADS"] = os.environ.get("BKD_TEST_THREADS", "1")  # random images: no data needed
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_epoch.py"), "--model", "small_cnn", "--widths", "4", "8", "8",
         "--images", "64", "--batch-size", "32", "--warmup", "1", "--repeats", "1", "--workers", "0",
         "--data-only-repeats", "1", "--no-flops", "--no-rss", "--profile", "--profile-rows", "3",
         "--json", str(tmp_path / "bench.json")],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {k: len(v) for k, v in result["speeds"].items()} == {"official": 1, "bkd_core": 1}
    assert all(v > 0 for v in result["medians"].values()) and set(result["data_only"]) == {"official", "bkd_core"}
    # the phases of one real train_epoch: each timed call ran, the rest is what is left of the epoch
    phases = result["phases"]
    assert list(phases) == list(bench_epoch.PHASES)
    assert all(phases[p] > 0 for p in bench_epoch.PHASES[:4]) and phases[bench_epoch.PHASES[4]] > -1e-3
    assert "speed-up bkd_core / official (small_cnn)" in out.stdout.splitlines()[-1]


def test_official_step_computes_the_method_and_the_flop_count_runs(bench):
    bench_epoch, official = bench
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 8)
    pipe = official.OfficialPipeline(images, labels, "small_cnn", (4, 8, 8), batch_size=8, workers=0)
    image, target, index = pipe.dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and (target, index) == (labels[3], 3)

    x, y, idx = torch.randn(8, 3, 32, 32), torch.as_tensor(labels), torch.arange(8)
    with torch.no_grad():  # train mode, batch statistics: the same logits as inside the step
        z_t, z_s = pipe.teacher(x), pipe.student(x)
    expected = blind_distillation_loss(z_t, z_s, y) + F.cross_entropy(z_t, y)
    loss, max_student = pipe.step(x, y, idx)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(max_student, z_s.softmax(1).max(1).values.sum())
    torch.testing.assert_close(pipe.agreement, agreement_probability(z_t, z_s)[idx, y])
    assert bench_epoch.step_flops("small_cnn", (4, 8, 8), 8) > 0


def test_the_cnn_epoch_benchmark_runs_on_generated_images():
    """``benchmarks/cnn_epoch.py`` trains the `cnn` profile's pair on generated images and prints one row per
    variant with every epoch's time; a budget past phase 1 is refused in one sentence."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(BENCHMARKS / "cnn_epoch.py")
    out = subprocess.run([sys.executable, script, "--synthetic", "64", "--epochs", "2", "--threads", "1",
                          "--variants", "fp32"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 1 and len(rows[0].split("|")[2].split(",")) == 2  # two epoch times
    refused = subprocess.run([sys.executable, script, "--epochs", "9"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "give 1 to 5" in refused.stderr
